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


def test_ranks_keep_the_order_of_the_pairs_and_put_two_scales_on_one():
    from candidate_sources import ranks

    M = np.array([[0.0, 5.0, -1.0], [5.0, 0.0, 100.0], [-1.0, 100.0, 0.0]])
    R = ranks(M)
    assert np.allclose(R, R.T) and np.allclose(np.diag(R), 1.0)
    assert R[0, 2] == 0.0 and R[0, 1] == 0.5 and R[1, 2] == 1.0
    assert np.allclose(ranks(1e-3 * M), R)  # a matrix on another scale ranks the same
