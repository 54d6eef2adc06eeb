"""Exceptions raised by the solver package."""


class SolverError(RuntimeError):
    """A numerical solver did not reach an optimal status (e.g. ``optimal_inaccurate``,
    ``infeasible``, iteration limit, solver crash); no result is returned in that case."""
