import numpy as np
import pandas as pd
import pytest

from affinity.data import DataError, load_dataset, read_table
from affinity.data.split import split_table
from affinity.manifest import DatasetSpec


def make_frame(rng, n=60):
    df = pd.DataFrame(rng.standard_normal((n, 3)), columns=["f1", "f2", "f3"])
    df["a"] = (df.f1 > 0).astype(float)
    df["b"] = (df.f2 > 0).astype(float)
    df.loc[df.index[::3], "b"] = np.nan  # not labelled for b
    df["r"] = df.f3 * 2.0
    return df


def spec(path, **kw):
    kw.setdefault("tasks", ["a", "b", {"name": "r", "type": "regression"}])
    return DatasetSpec(source=str(path), **kw)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "npz"])
def test_formats_give_the_same_table(tmp_path, rng, fmt):
    df = make_frame(rng)
    path = tmp_path / f"t.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "parquet":
        df.to_parquet(path)
    else:
        np.savez(path, X=df[["f1", "f2", "f3"]].to_numpy(), Y=df[["a", "b", "r"]].to_numpy())
    s = spec(path) if fmt != "npz" else DatasetSpec(source=str(path), tasks=["a", "b", {"name": "r", "type": "regression"}])
    table = read_table(s)
    assert table.X.shape == (60, 3) and table.Y.shape == (60, 3)
    assert np.isnan(table.Y[::3, 1]).all() and not np.isnan(table.Y[1::3, 1]).any()
    np.testing.assert_allclose(table.X, df[["f1", "f2", "f3"]].to_numpy(), atol=1e-12)
    assert table.task_types == ["binary", "binary", "regression"]


def test_content_not_name_decides_the_format(tmp_path, rng):
    df = make_frame(rng)
    path = tmp_path / "really_parquet.csv"
    df.to_parquet(path)
    assert read_table(spec(path)).X.shape == (60, 3)
    junk = tmp_path / "junk.csv"
    junk.write_bytes(b"\x00\x01\x02garbage")
    with pytest.raises(DataError, match="neither CSV text, Parquet nor NPZ"):
        read_table(spec(junk))


def write(tmp_path, df, name="t.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def test_missing_columns(tmp_path, rng):
    path = write(tmp_path, make_frame(rng))
    with pytest.raises(DataError, match=r"task columns \['zz'\] are not in t.csv"):
        read_table(spec(path, tasks=["a", "zz"]))
    with pytest.raises(DataError, match=r"feature columns \['f9'\] are not in t.csv"):
        read_table(spec(path, features=["f1", "f9"]))


def test_tasks_required_for_tables(tmp_path, rng):
    path = write(tmp_path, make_frame(rng))
    with pytest.raises(DataError, match="dataset.tasks is required"):
        read_table(DatasetSpec(source=str(path)))


def test_non_numeric_feature(tmp_path, rng):
    df = make_frame(rng)
    df["f2"] = ["x"] * len(df)
    with pytest.raises(DataError, match=r"feature columns \['f2'\] are not numeric \(e.g. 'f2' holds 'x'\)"):
        read_table(spec(write(tmp_path, df)))


def test_non_numeric_label(tmp_path, rng):
    df = make_frame(rng)
    df["a"] = df["a"].map({0.0: "no", 1.0: "yes"})
    with pytest.raises(DataError, match="task column 'a' holds non-numeric labels"):
        read_table(spec(write(tmp_path, df)))


def test_task_with_one_class(tmp_path, rng):
    df = make_frame(rng)
    df["a"] = 1.0
    with pytest.raises(DataError, match="binary task 'a' has only one class"):
        read_table(spec(write(tmp_path, df)))


def test_binary_labels_must_be_0_1(tmp_path, rng):
    df = make_frame(rng)
    df.loc[0, "a"] = 2.0
    with pytest.raises(DataError, match="binary task 'a' has labels \\[2.0\\] other than 0/1"):
        read_table(spec(write(tmp_path, df)))


def test_too_few_labelled_rows(tmp_path, rng):
    df = make_frame(rng)
    df.loc[df.index[5:], "a"] = np.nan
    with pytest.raises(DataError, match="task 'a' has 5 labelled rows, fewer than dataset.min_rows_per_task=10"):
        read_table(spec(write(tmp_path, df)))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_features(tmp_path, rng, bad):
    df = make_frame(rng)
    df.loc[7, "f3"] = bad
    path = tmp_path / "t.npz"
    np.savez(path, X=df[["f1", "f2", "f3"]].to_numpy(), Y=df[["a", "b", "r"]].to_numpy())
    with pytest.raises(DataError, match="feature 'x2' has a missing, NaN or infinite value at row 7"):
        read_table(DatasetSpec(source=str(path)))


def test_duplicate_task_names_in_npz(tmp_path, rng):
    df = make_frame(rng)
    path = tmp_path / "t.npz"
    np.savez(path, X=df[["f1", "f2"]].to_numpy(), Y=df[["a", "b"]].to_numpy(), task_names=np.array(["a", "a"]))
    with pytest.raises(DataError, match=r"duplicate task names \['a'\]"):
        read_table(DatasetSpec(source=str(path)))


def test_npz_without_arrays(tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, features=np.zeros((3, 2)))
    with pytest.raises(DataError, match="must hold arrays 'X'"):
        read_table(DatasetSpec(source=str(path)))


def test_unknown_source():
    with pytest.raises(DataError, match="neither a built-in dataset"):
        read_table(DatasetSpec(source="/nonexistent/table.csv", tasks=["a"]))


def test_split_is_seeded_stratified_and_disjoint(tmp_path, rng):
    table = read_table(spec(write(tmp_path, make_frame(rng, n=200))))
    a = split_table(table, 0.3, seed=1, by="task")
    b = split_table(table, 0.3, seed=1, by="task")
    c = split_table(table, 0.3, seed=2, by="task")
    assert (a.train == b.train).all() and (a.train != c.train).any()
    labelled = ~np.isnan(table.Y)
    assert not (a.train & a.val).any()
    assert ((a.train | a.val) == labelled).all()
    for j in (0, 1):  # stratified: each class is split at the same rate
        y = table.Y[:, j]
        for cls in (0.0, 1.0):
            rows = y == cls
            assert abs(a.val[rows, j].mean() - 0.3) < 0.05


def test_standardization_uses_train_rows_only(tmp_path, rng):
    table = read_table(spec(write(tmp_path, make_frame(rng, n=200))))
    s = split_table(table, 0.3, seed=0)
    fit = s.train.any(axis=1)
    np.testing.assert_allclose(s.feature_mean, table.X[fit].mean(axis=0))
    np.testing.assert_allclose(s.X[fit].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(s.X[fit].std(axis=0), 1, atol=1e-4)


def test_planted_builtin_has_ground_truth():
    data = load_dataset(DatasetSpec(source="planted", params={"tasks": 8, "groups": 2, "rows_per_task": 30}))
    assert data.n_tasks == 8
    assert sorted(len(g) for g in data.truth_groups) == [4, 4]
    assert sorted(sum(data.truth_groups, [])) == sorted(data.task_names)
    assert ((~np.isnan(data.Y)).sum(axis=1) == 1).all()  # one task per row


def test_planted_params_are_checked():
    with pytest.raises(DataError, match="not parameters of planted"):
        read_table(DatasetSpec(source="planted", params={"taks": 3}))
    with pytest.raises(DataError, match="groups=9 exceeds tasks=4"):
        read_table(DatasetSpec(source="planted", params={"tasks": 4, "groups": 9}))


def test_digits_builtin():
    table = read_table(DatasetSpec(source="digits"))
    assert table.X.shape == (1797, 64)
    assert table.task_names[:10] == [f"digit_{k}" for k in range(10)]
    assert {"even", "greater_than_4"} <= set(table.task_names)
    even = table.Y[:, table.task_names.index("even")]
    digit0 = table.Y[:, 0]
    assert (even[digit0 == 1] == 1).all()


def test_row_split_holds_out_whole_rows(tmp_path, rng):
    """split: row — a row is a training or a validation row for all of its tasks."""
    table = read_table(spec(write(tmp_path, make_frame(rng, n=200))))
    a = split_table(table, 0.3, seed=1, by="row")
    assert (a.train == split_table(table, 0.3, seed=1, by="row").train).all()
    assert (a.train != split_table(table, 0.3, seed=2, by="row").train).any()
    labelled = ~np.isnan(table.Y)
    assert ((a.train | a.val) == labelled).all() and not (a.train & a.val).any()
    assert not (a.train.any(axis=1) & a.val.any(axis=1)).any()  # no row on both sides
    held = a.val.any(axis=1).sum() / labelled.any(axis=1).sum()
    assert abs(held - 0.3) < 0.01
    assert (a.val.sum(axis=0) > 0).all() and (a.train.sum(axis=0) > 0).all()
    # The per-task split does put rows on both sides when rows carry several labels; auto does not.
    b = split_table(table, 0.3, seed=1, by="task")
    assert (b.train.any(axis=1) & b.val.any(axis=1)).any()
    assert (split_table(table, 0.3, seed=1).train == a.train).all()


def test_row_split_gives_every_task_a_validation_row(tmp_path, rng):
    """A task the random share of rows leaves without validation rows gets one of its rows moved."""
    frame = make_frame(rng, n=200)
    frame.loc[frame.index[12:], "a"] = np.nan  # task a labelled on 12 rows only
    table = read_table(spec(write(tmp_path, frame)))
    s = split_table(table, 0.01, seed=0, by="row")
    assert (s.val.sum(axis=0) >= 1).all() and (s.train.sum(axis=0) >= 1).all()
    assert not (s.train.any(axis=1) & s.val.any(axis=1)).any()
    assert ((s.train | s.val) == ~np.isnan(table.Y)).all()


def test_auto_split_is_per_task_when_every_row_labels_one_task():
    planted = load_dataset(DatasetSpec(source="planted", params={"tasks": 8, "groups": 2, "rows_per_task": 30}))
    table = read_table(DatasetSpec(source="planted", params={"tasks": 8, "groups": 2, "rows_per_task": 30}))
    assert (planted.val == split_table(table, 0.3, seed=0, by="task").val).all()
