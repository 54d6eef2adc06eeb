"""The cross-fitted check (affinity/crossfit.py): each k scored on rows its groups were not built from."""

import numpy as np
import pytest
import torch

from affinity.crossfit import crossfit_scores, halves
from affinity.data import load_dataset
from affinity.group_check import check_groupings, cv_folds
from affinity.manifest import parse_manifest
from affinity.training import TensorData


def _data(stop="share", folds=4):
    m = parse_manifest({"dataset": {"source": "synthetic", "test_fraction": 0.2,
                                    "params": {"mechanism": "pooling", "tasks": 6, "groups": 2,
                                               "rows_per_task": 60, "seed": 1}},
                        "training": {"epochs": 20, "patience": 4},
                        "grouping": {"folds": folds, "check_stop": stop}})
    data = load_dataset(m.dataset)
    return m, data, TensorData.from_split(data, "cpu")


@pytest.mark.parametrize("stop", ["share", "fold", "validation"])
def test_halves_are_the_check_folds_cut_in_two(stop):
    m, _, t = _data(stop)
    parts, first = halves(t, m)
    assert first == 2
    views = cv_folds(t, 4, m.grouping.seed, stop)
    for h, part in enumerate(parts):
        mine = views[:first] if h == 0 else views[first:]
        rows = torch.stack([v.test.any(1) for v in mine]).any(0)
        assert (part.train == (t.train & rows[:, None])).all()
        # the check scores no validation row with validation stopping: then each half keeps them all
        assert (part.val == (t.val if stop == "validation" else t.val & rows[:, None])).all()
        assert not (part.train | part.val)[:, :].logical_and(t.test).any()
        assert (part.train.sum(0) > 0).all()  # every task has training rows in each half
    assert not (parts[0].train & parts[1].train).any()


def test_each_half_groups_are_scored_on_the_other_half_folds_only():
    """The groups built on half 0's rows are scored on half 1's folds and the other way round; the affinity
    is estimated on one half's rows only; one model for all and one per task are the plain check's."""
    m, data, t = _data()
    n = data.n_tasks
    seen = []
    # a stand-in estimator: remembers the rows it was given, and makes half 0 pair tasks (0,1)(2,3)(4,5),
    # half 1 pair (0,5)(1,2)(3,4)
    pairs = [[(0, 1), (2, 3), (4, 5)], [(0, 5), (1, 2), (3, 4)]]

    def reestimate(part):
        seen.append(part)
        return len(seen) - 1

    def cluster(h, k):
        assert k == 3
        return [list(p) for p in pairs[h]]

    scores, built = crossfit_scores(data, t, m, [1, 3, n], reestimate, cluster)
    parts, first = halves(t, m)
    assert len(seen) == 2
    for got, want in zip(seen, parts):
        assert (got.train == want.train).all() and (got.val == want.val).all()
    assert built == {3: [[list(p) for p in pairs[0]], [list(p) for p in pairs[1]]]}
    plain = check_groupings(data, t, m, {1: [list(range(n))], n: [[i] for i in range(n)],
                                         "half0": [list(p) for p in pairs[0]],
                                         "half1": [list(p) for p in pairs[1]]})
    np.testing.assert_allclose(scores[1].loss, plain[1].loss)
    np.testing.assert_allclose(scores[n].loss, plain[n].loss)
    np.testing.assert_allclose(scores[3].loss[:first], plain["half1"].loss[:first])
    np.testing.assert_allclose(scores[3].loss[first:], plain["half0"].loss[first:])
    assert np.isfinite(scores[3].loss).all()


def test_a_job_with_the_crossfitted_check_records_it():
    """grouping.crossfit in a whole job: the advice says which check it ran and how far the halves' groups
    agree; on unrelated tasks it finds no reliable structure."""
    from affinity.pipeline import run_job

    raw = {"dataset": {"source": "synthetic", "params": {"mechanism": "unrelated", "tasks": 8, "rows_per_task": 60,
                                                         "seed": 0}},
           "estimation": {"num_subsets": 60}, "grouping": {"crossfit": True, "folds": 4}}
    result = run_job(parse_manifest(raw))
    advice = result.advice
    assert advice["check"] == "crossfit"
    inner = [c["k"] for c in advice["candidates"] if 1 < c["k"] < 8]
    assert inner and set(advice["crossfit"]["half_agreement"]) == {str(k) for k in inner}
    assert advice["verdict"].startswith("no reliable structure"), advice["verdict"]
    plain = run_job(parse_manifest({**raw, "grouping": {"folds": 4}}))
    assert plain.advice["check"] == "same rows" and plain.advice["crossfit"] is None
