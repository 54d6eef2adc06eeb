"""The cross-validated check of candidate groupings (affinity/group_check.py)."""

import numpy as np
import pytest
import torch

from affinity.data import load_dataset
from affinity.group_check import check_groupings, cv_folds
from affinity.group_models import train_groups
from affinity.manifest import parse_manifest
from affinity.training import TensorData


def _data(test_fraction=0.2, **params):
    m = parse_manifest({"dataset": {"source": "synthetic", "test_fraction": test_fraction,
                                    "params": {"mechanism": "pooling", "tasks": 6, "groups": 2,
                                               "rows_per_task": 60, "seed": 0, **params}},
                        "training": {"epochs": 30, "patience": 5},
                        "grouping": {"folds": 4, "check_seeds": 1}})
    data = load_dataset(m.dataset)
    return m, data, TensorData.from_split(data, "cpu")


def test_folds_score_every_row_once_and_never_touch_test_rows():
    _, data, t = _data()
    folds = cv_folds(t, 4, seed=0)
    cells = t.train | t.val
    scored = torch.stack([f.test for f in folds]).sum(0)
    assert (scored == cells.int()).all()  # every training/validation cell scored exactly once
    for f in folds:
        assert not ((f.train | f.val | f.test) & t.test).any()  # held-out test rows in no fold
        assert not (f.train & f.val).any() and not (f.train & f.test).any() and not (f.val & f.test).any()
        # whole rows: a row is on one side only, for all of its tasks
        sides = torch.stack([f.train.any(1), f.val.any(1), f.test.any(1)]).int().sum(0)
        assert (sides <= 1).all()
    # each task's rows spread evenly over the folds
    per_task = torch.stack([f.test.sum(0) for f in folds]).float()
    assert (per_task.max(0).values - per_task.min(0).values <= 1).all()


def test_folds_that_stop_on_the_validation_rows():
    """check_stop validation: the training rows are cut into folds and scored once each; every view stops on
    all the validation rows (those the final models stop on) and trains on the other folds."""
    _, data, t = _data()
    folds = cv_folds(t, 4, seed=0, stop="validation")
    scored = torch.stack([f.test for f in folds]).sum(0)
    assert (scored == t.train.int()).all()
    for f in folds:
        assert (f.val == t.val).all()
        assert (f.train == (t.train & ~f.test)).all()
        assert not ((f.train | f.val | f.test) & t.test).any()
    per_task = torch.stack([f.test.sum(0) for f in folds]).float()
    assert (per_task.max(0).values - per_task.min(0).values <= 1).all()


def test_folds_that_stop_on_the_validation_share():
    """check_stop share: the training and validation rows are cut into folds and scored once each; every
    view stops on as many folds as the validation rows' share (3 of 10 at 0.3) and trains on the rest."""
    _, data, t = _data()
    folds = cv_folds(t, 10, seed=0, stop="share")
    cells = t.train | t.val
    assert (torch.stack([f.test for f in folds]).sum(0) == cells.int()).all()
    share = float(t.val.sum()) / float(cells.sum())
    for f in folds:
        assert not (f.train & f.val).any() and not (f.train & f.test).any() and not (f.val & f.test).any()
        assert ((f.train | f.val | f.test) == cells).all()
        assert float(f.val.sum()) / float(cells.sum()) == pytest.approx(0.3, abs=0.02)
    assert share == pytest.approx(0.3, abs=0.02)
    # each row stops 3 of the 10 views: the three folds before its own
    assert (torch.stack([f.val for f in folds]).sum(0) == 3 * cells.int()).all()
    # with 4 folds: one stopping fold (round(0.3 × 4) = 1), as "fold" does
    for a, b in zip(cv_folds(t, 4, seed=0, stop="share"), cv_folds(t, 4, seed=0, stop="fold")):
        assert (a.val == b.val).all() and (a.train == b.train).all()


def test_shared_rows_stay_whole():
    _, data, t = _data(mechanism="shared_rows")
    for f in cv_folds(t, 4, seed=1):
        assert not (f.train.any(1) & f.test.any(1)).any() and not (f.val.any(1) & f.test.any(1)).any()


def test_each_distinct_group_is_trained_once_per_fold_and_scored_like_a_direct_training():
    m, data, t = _data()
    groupings = {1: [[0, 1, 2, 3, 4, 5]], 2: [[0, 2, 4], [1, 3, 5]], 3: [[0, 2, 4], [1], [3, 5]]}
    scores = check_groupings(data, t, m, groupings)
    assert set(scores) == {1, 2, 3}
    assert scores[2].by_seed is None and scores[2].seed_totals() is None  # one check seed: nothing more kept
    assert scores[2].loss.shape == (4, 6)
    # the group [0, 2, 4] is shared by k = 2 and k = 3: the same model, the same losses
    np.testing.assert_array_equal(scores[2].loss[:, [0, 2, 4]], scores[3].loss[:, [0, 2, 4]])
    # fold 0 of k = 2 equals training that grouping directly on fold 0's view
    view = cv_folds(t, 4, m.grouping.seed, m.grouping.check_stop)[0]
    _, direct = train_groups(data, view, m, groupings[2])
    np.testing.assert_allclose(scores[2].loss[0], direct, rtol=1e-5)
    # the pooled task loss is the row-weighted mean over folds
    w = scores[2].rows
    np.testing.assert_allclose(scores[2].task_loss(), (scores[2].loss * w).sum(0) / w.sum(0))


def test_each_check_seed_is_kept_and_their_mean_is_the_score():
    m, data, t = _data()
    m = m.model_copy(update={"grouping": m.grouping.model_copy(update={"check_seeds": 2, "folds": 2})})
    groupings = {1: [[0, 1, 2, 3, 4, 5]], 2: [[0, 2, 4], [1, 3, 5]]}
    scores = check_groupings(data, t, m, groupings)
    seeds = scores[2].by_seed
    assert seeds.shape == (2, 2, 6)
    np.testing.assert_allclose(seeds.mean(axis=0), scores[2].loss, rtol=1e-6)
    assert not np.allclose(seeds[0], seeds[1])  # two trainings, two initializations
    # seed 1 of fold 0 is that seed's training of the grouping on fold 0's view
    view = cv_folds(t, 2, m.grouping.seed, m.grouping.check_stop)[0]
    second = m.model_copy(update={"training": m.training.model_copy(update={"seed": m.training.seed + 1})})
    _, direct = train_groups(data, view, second, groupings[2])
    np.testing.assert_allclose(seeds[1, 0], direct, rtol=1e-5)
    # a fold's summed loss per seed, as total([f]) reads the mean's
    totals = scores[2].seed_totals()
    np.testing.assert_allclose(totals.mean(axis=0), [scores[2].total([f]) for f in range(2)], rtol=1e-6)
