"""Property tests: rounding and cluster always return exactly k non-empty groups covering all tasks."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from solver import METHODS, cluster
from solver.rounding import round_kmeans


def is_partition(labels: np.ndarray, n: int, k: int) -> bool:
    return labels.shape == (n,) and sorted(set(labels.tolist())) == list(range(k))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 25), data=st.data())
def test_rounding_returns_k_groups(n: int, data) -> None:
    k = data.draw(st.integers(1, n))
    r = data.draw(st.integers(1, 6))
    seed = data.draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    kind = data.draw(st.sampled_from(["random", "constant", "few_distinct"]))
    if kind == "random":
        U = rng.random((n, r))
    elif kind == "constant":
        U = np.ones((n, r))
    else:
        U = rng.integers(0, 2, size=(n, 1)) * np.ones((1, r))
    T = rng.standard_normal((n, n))
    labels = round_kmeans(U, (T + T.T) / 2, k, n_init=2, seed=seed)
    assert is_partition(labels, n, k)


@settings(max_examples=10, deadline=None)
@given(n=st.integers(2, 12), data=st.data())
def test_cluster_returns_k_groups(n: int, data) -> None:
    k = data.draw(st.integers(1, n))
    method = data.draw(st.sampled_from(METHODS))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    T = rng.standard_normal((n, n))
    g = cluster((T + T.T) / 2, k, method=method, n_init=2)
    assert is_partition(g.labels, n, k) and g.k == k
    assert sorted(i for grp in g.groups for i in grp) == list(range(n))
