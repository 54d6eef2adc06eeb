import re

import numpy as np
import pytest

from affinity.data.real import make_yeast
from affinity.data.synthetic import DEFAULTS, MECHANISMS, make_synthetic, plan, synthetic_params
from affinity.data.table import DataError, check_table

SMALL = {"tasks": 8, "groups": 2, "rows_per_task": 30, "features": 10}


def small(mechanism, **kw):
    p = {**SMALL, "mechanism": mechanism, **kw}
    if mechanism == "unrelated":
        p.pop("groups")
    if mechanism == "mixed":
        p.setdefault("unrelated", 3)
    return p


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_every_mechanism_builds_a_valid_deterministic_table(mechanism):
    a = make_synthetic(small(mechanism, seed=3))
    check_table(a, 10)
    assert a.task_names == [f"task_{t:02d}" for t in range(8)]
    assert a.feature_names == [f"x{i}" for i in range(10)]
    assert a.metadata["source"] == "synthetic" and a.metadata["params"]["mechanism"] == mechanism
    b = make_synthetic(small(mechanism, seed=3))
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.Y, b.Y)
    assert a.truth_groups == b.truth_groups
    again = make_synthetic(a.metadata["params"])  # the recorded parameters rebuild the table
    np.testing.assert_array_equal(a.Y, again.Y)
    c = make_synthetic(small(mechanism, seed=4))
    assert not np.array_equal(a.X, c.X)


def test_defaults_are_small_and_valid():
    table = make_synthetic({})
    check_table(table, 10)
    assert table.X.shape == (DEFAULTS["tasks"] * DEFAULTS["rows_per_task"], DEFAULTS["features"]) == (1200, 20)
    assert table.n_tasks == 20 and len(table.truth_groups) == 4


@pytest.mark.parametrize("mechanism", [m for m in MECHANISMS if m != "unrelated"])
def test_truth_groups_partition_the_tasks_and_names_hide_them(mechanism):
    table = make_synthetic({"mechanism": mechanism, "seed": 1})
    groups = table.truth_groups
    members = sorted(sum(groups, []))
    assert members == sorted(table.task_names)
    assert all(re.fullmatch(r"task_\d\d", n) for n in table.task_names)
    index = {n: i for i, n in enumerate(table.task_names)}
    as_sets = {frozenset(index[n] for n in g) for g in groups}
    k = DEFAULTS["groups"]
    modulo = {frozenset(t for t in range(table.n_tasks) if t % k == g) for g in range(k)}
    assert as_sets != modulo  # a seeded permutation, not t % groups
    big = [g for g in groups if len(g) > 1]
    assert len(big) == k
    if mechanism == "mixed":
        assert sum(len(g) == 1 for g in groups) == DEFAULTS["unrelated"]
    else:
        assert sorted(len(g) for g in groups) == [5, 5, 5, 5]


def test_unrelated_has_no_truth_and_no_groups_param():
    assert make_synthetic({"mechanism": "unrelated", "tasks": 6}).truth_groups is None
    with pytest.raises(DataError, match=r"dataset\.params\.groups does not apply"):
        make_synthetic({"mechanism": "unrelated", "groups": 3})


def test_pooling_rows_are_disjoint_and_shared_rows_are_dense():
    pooled = make_synthetic(small("pooling"))
    labelled = ~np.isnan(pooled.Y)
    assert (labelled.sum(axis=1) == 1).all()
    assert (labelled.sum(axis=0) == 30).all() and pooled.X.shape[0] == 8 * 30
    shared = make_synthetic(small("shared_rows"))
    assert shared.X.shape == (30, 10) and not np.isnan(shared.Y).any()


def test_binary_labels_are_balanced_before_noise():
    table = make_synthetic(small("pooling", noise=0.0))
    rates = np.nanmean(table.Y, axis=0)
    assert np.allclose(rates, 0.5)


def test_regression_targets_are_real_valued():
    table = make_synthetic(small("regression", noise=0.1))
    assert table.task_types == ["regression"] * 8
    y = table.Y[~np.isnan(table.Y)]
    assert not np.isin(y, (0.0, 1.0)).all()
    assert 0.5 < y.std() < 1.5
    assert make_synthetic({"mechanism": "regression"}).metadata["params"]["noise"] == 0.5
    assert make_synthetic({}).metadata["params"]["noise"] == 0.1


def test_conflict_pairs_have_opposite_teachers_and_groups_agree():
    p = synthetic_params(small("conflict", groups=4, spread=0.0, tasks=8))
    pl = plan(p)
    X = np.random.default_rng(0).standard_normal((200, 10))
    f = np.stack([t(X) for t in pl.teachers], axis=1)
    for g in range(4):
        members = np.flatnonzero(pl.group_of == g)
        partners = np.flatnonzero(pl.group_of == (g ^ 1))
        np.testing.assert_allclose(f[:, members], f[:, members[:1]].repeat(len(members), 1), atol=1e-9)
        np.testing.assert_allclose(f[:, members[0]], -f[:, partners[0]], atol=1e-9)


def test_spread_makes_group_members_differ():
    pl = plan(synthetic_params(small("pooling", spread=0.5)))
    X = np.random.default_rng(0).standard_normal((500, 10))
    f = np.stack([t(X) for t in pl.teachers], axis=1)
    corr = np.corrcoef(f.T)
    same = pl.group_of[:, None] == pl.group_of[None, :]
    off = ~np.eye(len(f.T), dtype=bool)
    assert corr[same & off].mean() > 0.5 > abs(corr[~same]).mean()


@pytest.mark.parametrize("params, field", [
    ({"mechanism": "nope"}, "mechanism"),
    ({"tasks": 0}, "tasks"),
    ({"tasks": 2.5}, "tasks"),
    ({"groups": True}, "groups"),
    ({"groups": 11}, "groups"),
    ({"rows_per_task": 5}, "rows_per_task"),
    ({"features": 3}, "subspace"),
    ({"noise": 0.5}, "noise"),
    ({"noise": "a lot"}, "noise"),
    ({"mechanism": "regression", "noise": -1}, "noise"),
    ({"spread": -0.1}, "spread"),
    ({"spread": float("nan")}, "spread"),
    ({"seed": -1}, "seed"),
    ({"mechanism": "conflict", "groups": 3}, "groups"),
    ({"mechanism": "mixed", "unrelated": 20}, "unrelated"),
    ({"mechanism": "pooling", "unrelated": 2}, "unrelated"),
    ({"test_rows_per_task": -3}, "test_rows_per_task"),
    ({"test_rows_per_task": 2.5}, "test_rows_per_task"),
])
def test_bad_params_name_the_field(params, field):
    with pytest.raises(DataError, match=rf"dataset\.params\.{field}\b"):
        make_synthetic(params)


def test_unknown_param_is_refused():
    with pytest.raises(DataError, match=r"\['colour'\] are not parameters of synthetic"):
        make_synthetic({"colour": 1})


def test_yeast_loads_with_the_expected_shape():
    table = make_yeast({})
    check_table(table, 10)
    assert table.X.shape == (2417, 103) and table.Y.shape == (2417, 14)
    assert table.task_names[0] == "Class1" and table.feature_names[-1] == "Att103"
    assert not np.isnan(table.Y).any() and np.isin(table.Y, (0.0, 1.0)).all()
    sparse = make_yeast({"label_fraction": 0.1, "seed": 2})
    check_table(sparse, 10)
    share = (~np.isnan(sparse.Y)).mean(axis=0)
    assert np.allclose(share, 0.1, atol=0.01)
    np.testing.assert_array_equal(sparse.Y, make_yeast({"label_fraction": 0.1, "seed": 2}).Y)
    with pytest.raises(DataError, match=r"dataset\.params\.label_fraction"):
        make_yeast({"label_fraction": 0})
    with pytest.raises(DataError, match=r"are not parameters of yeast"):
        make_yeast({"rows": 3})


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_extra_test_rows_leave_the_table_and_its_split_unchanged(mechanism):
    """test_rows_per_task draws more rows of the same tasks and marks them as test rows: the other rows, their
    labels and the train/validation/test split of them are those of the table without extra rows."""
    from affinity.data.split import split_table

    base = make_synthetic(small(mechanism, seed=5))
    more = make_synthetic(small(mechanism, seed=5, test_rows_per_task=40))
    n = len(base.X)
    np.testing.assert_array_equal(more.X[:n], base.X)
    np.testing.assert_array_equal(more.Y[:n], base.Y)
    assert base.test_rows is None and not more.test_rows[:n].any() and more.test_rows[n:].all()
    extra = ~np.isnan(more.Y[n:])
    assert (extra.sum(axis=0) == 40).all()
    if mechanism != "regression":  # cut at the table rows' median: balanced up to the label noise
        assert abs(np.nanmean(more.Y[n:]) - 0.5) < 0.1
    a = split_table(base, 0.3, 5, test_fraction=0.2)
    b = split_table(more, 0.3, 5, test_fraction=0.2)
    for mask in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(b, mask)[:n], getattr(a, mask))
    np.testing.assert_array_equal(b.test[n:], extra)  # every extra labelled cell is a test cell
    assert not (b.train[n:] | b.val[n:]).any()
    np.testing.assert_allclose(b.feature_mean, a.feature_mean)  # standardized on the same training rows


def test_planted_extra_test_rows_leave_its_rows_unchanged():
    from affinity.data.planted import make_planted

    base, more = make_planted({"seed": 2, "tasks": 6, "groups": 2}), make_planted(
        {"seed": 2, "tasks": 6, "groups": 2, "test_rows_per_task": 30})
    n = len(base.X)
    np.testing.assert_array_equal(more.X[:n], base.X)
    np.testing.assert_array_equal(more.Y[:n], base.Y)
    assert more.test_rows.sum() == 6 * 30 and (~np.isnan(more.Y[n:])).sum(axis=0).tolist() == [30] * 6
    with pytest.raises(DataError, match="test_rows_per_task"):
        make_planted({"test_rows_per_task": -1})
