"""benchmarks/candidate_sources.py: a source matrix's pair AUC against planted groups."""

import sys
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))

from candidate_sources import pair_auc  # noqa: E402


def test_pair_auc_reads_planted_structure_and_its_absence():
    labels = np.array([0, 0, 1, 1])
    M = np.zeros((4, 4))
    M[0, 1] = M[1, 0] = M[2, 3] = M[3, 2] = 1.0
    assert pair_auc(M, labels) == 1.0
    assert pair_auc(-M, labels) == 0.0
    assert pair_auc(np.zeros((4, 4)), labels) == 0.5
    M[0, 2] = M[2, 0] = 2.0  # one cross-group pair above both same-group pairs: 2 of the 2 × 4 comparisons lost
    assert pair_auc(M, labels) == 0.75
