"""Task grouping from an affinity matrix: the average-density SDP, a scalable low-rank solver,
rounding, choice of k and baselines. Entry point: :func:`cluster`."""
from .cluster import cluster
from .errors import SolverError
from .grouping import Grouping, partition_objective
from .validation import METHODS

__all__ = ["cluster", "Grouping", "SolverError", "METHODS", "partition_objective"]
