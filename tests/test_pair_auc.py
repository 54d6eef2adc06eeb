"""benchmarks/pair_auc.py: T's pair AUC against planted groups."""

import sys
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))

from pair_auc import pair_auc  # noqa: E402


def test_pair_auc_reads_planted_structure_and_its_absence():
    names = ["a", "b", "c", "d"]
    truth = [["a", "b"], ["c", "d"]]
    T = np.zeros((4, 4))
    T[0, 1] = T[2, 3] = 1.0  # one direction is enough: the pair score is T[i, j] + T[j, i]
    assert pair_auc(T, names, truth) == 1.0
    assert pair_auc(-T, names, truth) == 0.0
    assert pair_auc(np.zeros((4, 4)), names, truth) == 0.5
