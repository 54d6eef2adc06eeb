import numpy as np
import pytest

from affinity.affinities import pairwise_affinity
from affinity.subsets import CoverageError, check_coverage, pair_counts, sample_subsets


@pytest.mark.parametrize("balanced", [True, False])
def test_subsets_are_distinct_seeded_and_sized(balanced):
    a = sample_subsets(12, 4, 60, seed=3, balanced=balanced)
    assert a == sample_subsets(12, 4, 60, seed=3, balanced=balanced)
    assert len(set(a)) == 60 and all(len(s) == 4 and len(set(s)) == 4 for s in a)


def test_balanced_sampling_covers_pairs_evenly():
    n, size, count = 20, 5, 200
    bal = pair_counts(sample_subsets(n, size, count, 0, balanced=True), n)
    uni = pair_counts(sample_subsets(n, size, count, 0, balanced=False), n)
    off = ~np.eye(n, dtype=bool)
    assert bal[off].min() >= 1
    assert bal[off].std() < uni[off].std()


def test_exclude_and_exhaustion():
    all_pairs = sample_subsets(5, 2, 100, 0)
    assert len(all_pairs) == 10  # only C(5, 2) exist
    rest = sample_subsets(6, 3, 100, 0, exclude=set(sample_subsets(6, 3, 5, 0)))
    assert len(rest) == 15


def test_coverage_error_names_pair_and_fix():
    subsets = [(0, 1), (1, 2)]
    with pytest.raises(CoverageError, match=r"'a', 'c'.*raise estimation.num_subsets to at least 3"):
        check_coverage(pair_counts(subsets, 3), 1, ["a", "b", "c"], 2)
    check_coverage(pair_counts(subsets, 3), 0, ["a", "b", "c"], 2)


def test_pairwise_affinity_by_hand():
    subsets = [(0, 1), (0, 2), (0, 1)]
    losses = np.array([[0.5, 0.9], [0.8, 0.6], [0.7, 1.1]])
    base = np.array([1.0, 1.0, 1.0])
    T, C, self_gain = pairwise_affinity(subsets, losses, base, 3)
    # gain of 0 with 1: mean(0.5, 0.3) = 0.4; of 1 with 0: mean(0.1, -0.1) = 0
    assert T[0, 1] == pytest.approx(0.2) and T[1, 0] == pytest.approx(0.2)
    assert T[0, 2] == pytest.approx((0.2 + 0.4) / 2)
    assert T[1, 2] == 0.0 and C[1, 2] == 0 and C[0, 1] == 2
    assert np.diag(T).tolist() == [0.0, 0.0, 0.0]
    assert self_gain[0] == pytest.approx((0.5 + 0.2 + 0.3) / 3)


def test_regression_fit_recovers_pair_effects_that_the_mean_blurs():
    """Losses made of a task effect plus one effect per other member: the regression fit reads each pair's
    effect back (to the ridge's shrinkage); the mean over shared subsets mixes in the other members' effects."""
    from affinity.reliability import pair_specific
    from affinity.subsets import sample_subsets

    rng = np.random.default_rng(0)
    n = 12
    effect = rng.normal(0, 1, (n, n))
    np.fill_diagonal(effect, 0)
    subsets = sample_subsets(n, 4, 300, 0, balanced=True)
    task = rng.normal(0, 1, n)
    losses = np.array([[task[i] - sum(effect[i, j] for j in s if j != i) for i in s] for s in subsets])
    # with subsets of one size a task's effects are identified up to a constant (the members always number
    # size − 1): compare the pair-specific parts, which the advice clusters
    want = pair_specific((effect + effect.T) / 2)
    T, C, self_gain = pairwise_affinity(subsets, losses, np.zeros(n), n, "regression")
    err = np.abs(pair_specific(T) - want).max()
    assert err < 0.05
    mean, C_mean, gain_mean = pairwise_affinity(subsets, losses, np.zeros(n), n)
    assert np.abs(pair_specific(mean) - want).max() > 5 * err
    np.testing.assert_array_equal(C, C_mean)  # counts and self gains do not depend on the fit
    np.testing.assert_allclose(self_gain, gain_mean)
    with pytest.raises(ValueError, match="fit"):
        pairwise_affinity(subsets, losses, np.zeros(n), n, "median")
