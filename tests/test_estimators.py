"""Competing estimators against hand computations and the sequential reference."""

import numpy as np
import pytest
import torch

from affinity.finetune import finetune_shard, finetune_subsets, sequential_finetune
from affinity.manifest import parse_manifest
from affinity.pipeline import context, prepare
from affinity.progress import Progress
from affinity.estimators import ESTIMATORS
from affinity.estimators.gradient_cosine import task_gradients
from affinity.estimators.tag_lookahead import LookaheadRecorder
from affinity.losses import masked_task_means, pointwise_loss

SMALL = {"dataset": {"source": "planted", "params": {"tasks": 6, "groups": 2, "rows_per_task": 40}},
         "model": {"hidden": [8, 1], "activation": "tanh"},
         "training": {"epochs": 15, "batch_size": 64},
         "estimation": {"subset_size": 3, "num_subsets": 10}}


@pytest.fixture(scope="module")
def prepared():
    m = parse_manifest(SMALL)
    return m, prepare(m, Progress())


def test_batched_exact_equals_sequential_fine_tuning(prepared):
    m, prep = prepared
    subsets = prep.subsets[:5]
    batched = finetune_subsets(prep.model, prep.tensors, subsets, m.training, batch_subsets=3)
    sequential = sequential_finetune(prep.model, prep.tensors, subsets, m.training)
    np.testing.assert_allclose(batched, sequential, rtol=1e-4, atol=1e-5)


def test_test_losses_are_computed_only_when_asked_and_alike_on_both_paths():
    """Subset models' held-out test losses: the stacked path and the one-at-a-time path (models with buffers,
    other mtl methods) give the same, each task's own test rows; the estimators, which read validation losses
    only, do not pay for a pass over the test rows."""
    m = parse_manifest({**SMALL, "dataset": {**SMALL["dataset"], "test_fraction": 0.2}})
    prep = prepare(m, Progress())
    model, data, subsets = prep.model, prep.tensors, prep.subsets[:3]
    assert bool(data.test.any())
    val, test = finetune_subsets(model, data, subsets, m.training, batch_subsets=3, return_test=True)
    assert np.isfinite(test).all() and test.shape == val.shape
    model.register_buffer("unused", torch.zeros(1))  # a buffer sends the shard down the one-at-a-time path
    try:
        one_val, one_test = finetune_subsets(model, data, subsets, m.training, batch_subsets=3, return_test=True)
        without = finetune_shard(model, data, m.training, None, False, subsets)
    finally:
        del model._buffers["unused"]
    np.testing.assert_allclose(one_val, val, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(one_test, test, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(without[0], val, rtol=1e-4, atol=1e-5)
    assert np.isnan(without[1]).all()
    # and the stacked path (the buffer gone) without test losses
    assert np.isnan(finetune_shard(model, data, m.training, None, False, subsets)[1]).all()


def test_exact_estimate_has_the_grad_tag_outputs(prepared):
    m, prep = prepared
    est = ESTIMATORS["exact"](context(prep, m, Progress()))
    assert est.method == "exact"
    assert est.table.val_loss.shape == (10, 3) and np.isfinite(est.table.val_loss).all()
    assert est.matrix.shape == (6, 6) and np.allclose(est.matrix, est.matrix.T)
    assert (est.counts[~np.eye(6, dtype=bool)] >= 1).all()


def test_gradient_cosine_against_autograd(prepared):
    m, prep = prepared
    G = task_gradients(context(prep, m, Progress()))
    model, data = prep.model, prep.tensors
    rows = torch.nonzero(data.train.any(1)).squeeze(1)
    for t in (0, 4):
        model.zero_grad()
        losses, _ = masked_task_means(pointwise_loss(model(data.X[rows]), data.Y[rows], data.binary), data.train[rows])
        losses[t].backward()
        ref = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(G[t], ref, rtol=1e-4, atol=1e-6)
    est = ESTIMATORS["gradient_cosine"](context(prep, m, Progress()))
    Gn = G / G.norm(dim=1, keepdim=True)
    assert est.matrix[0, 4] == pytest.approx(float(Gn[0] @ Gn[4]), rel=1e-5)
    assert np.diag(est.matrix).tolist() == [0.0] * 6


def test_lookahead_by_hand(prepared):
    m, prep = prepared
    model, data = prep.model, prep.tensors
    x, y, mask = data.X[:64], data.Y[:64], data.train[:64]
    rec = LookaheadRecorder(6, lr=0.05, every=1, binary=data.binary)
    rec(model, x, y, mask)

    def losses(mdl):
        return masked_task_means(pointwise_loss(mdl(x), y, data.binary), mask)[0]

    import copy

    base = losses(model).detach()
    for j in range(6):
        if mask[:, j].sum() == 0:
            continue
        ahead = copy.deepcopy(model)
        ahead.zero_grad()
        losses(ahead)[j].backward()
        with torch.no_grad():
            for p in ahead.parameters():
                p -= 0.05 * p.grad
        after = losses(ahead).detach()
        for i in range(6):
            if mask[:, i].sum() > 0:
                assert rec.sums[i, j] == pytest.approx(float(1 - after[i] / base[i]), rel=1e-4, abs=1e-7)


def test_tag_lookahead_estimator_records_during_training():
    m = parse_manifest({**SMALL, "estimation": {**SMALL["estimation"], "method": "tag_lookahead", "lookahead_every": 3}})
    prep = prepare(m, Progress())
    est = ESTIMATORS["tag_lookahead"](context(prep, m, Progress()))
    assert est.info["recorded_steps"] >= 1
    assert np.allclose(est.matrix, est.matrix.T) and np.isfinite(est.matrix).all()
    assert est.table is None


def test_grad_tag_with_the_penalty_chosen_on_validation(prepared):
    """``estimation.l2_select: validation`` reaches the surrogate fits: every subset's estimates are no worse on
    the validation rows (mean over its tasks) than the fixed penalty's or θ*'s own, and the choice is recorded."""
    from affinity.estimators.grad_tag import estimate_from_features, gradient_features

    m, prep = prepared
    grads = gradient_features(prep.model, prep.data, m.estimation, prep.device)
    fixed = estimate_from_features(grads, prep.data, m.estimation, prep.device, prep.subsets)
    spec = m.estimation.model_copy(update={"l2_select": "validation"})
    chosen = estimate_from_features(grads, prep.data, spec, prep.device, prep.subsets)
    assert chosen.info["l2_select"] == "validation" and fixed.info["l2_select"] == "fixed"
    base = np.array([[fixed.base_val_loss[t] for t in s] for s in prep.subsets])
    per_subset = chosen.table.val_loss.mean(axis=1)
    assert np.all(per_subset <= fixed.table.val_loss.mean(axis=1) + 1e-9)
    assert np.all(per_subset <= base.mean(axis=1) + 1e-9)


def test_the_penalty_path_counts_in_the_time_estimate():
    """The server's time bound charges the path's extra fits to the surrogate stage and names the field."""
    from affinity.footprint import DatasetShape, mlp_seconds

    shape = DatasetShape(2000, 40, 20, 8000)
    fixed = mlp_seconds(parse_manifest({"dataset": {"source": "planted"}, "estimation": {"method": "grad_tag"}}), shape)
    path = mlp_seconds(parse_manifest({"dataset": {"source": "planted"},
                                       "estimation": {"method": "grad_tag", "l2_select": "validation"}}), shape)
    assert path.parts["surrogate fits"] == pytest.approx(2 * fixed.parts["surrogate fits"])
    assert path.seconds > fixed.seconds and "estimation.l2_select" in path.fields["surrogate fits"]
