import numpy as np
import pytest
import scipy.optimize
import torch

from affinity.surrogates import (TaskBlock, evaluate_subsets, fit_subsets, loss_derivatives, subset_objective,
                                 task_hessians)


def reference_fit(G, f, y, binary, weight, l2):
    """scipy's exact trust-region Newton on the same objective, one subset at a time."""

    def obj(w):
        z = f + G @ w
        loss = np.where(binary, np.logaddexp(0, z) - y * z, (z - y) ** 2)
        s = 1 / (1 + np.exp(-z))
        d1 = np.where(binary, s - y, 2 * (z - y))
        return (weight * loss).sum() + 0.5 * l2 * w @ w, G.T @ (weight * d1) + l2 * w

    def hess(w):
        s = 1 / (1 + np.exp(-(f + G @ w)))
        d2 = np.where(binary, s * (1 - s), 2.0)
        return G.T @ (G * (weight * d2)[:, None]) + l2 * np.eye(G.shape[1])

    res = scipy.optimize.minimize(obj, np.zeros(G.shape[1]), jac=True, hess=hess, method="trust-exact",
                                  options={"gtol": 1e-12})
    return res.x, res.fun


def make_problem(rng, n_tasks=6, rows=60, d=12, scale=1.0):
    binary = [True, True, True, True, False, False][:n_tasks]
    blocks, raw = [], []
    for t in range(n_tasks):
        G = rng.standard_normal((rows + t * 7, d)) * scale
        f = rng.standard_normal(len(G))
        y = (rng.random(len(G)) < 0.5).astype(float) if binary[t] else rng.standard_normal(len(G))
        raw.append((G, f, y, binary[t]))
        blocks.append(TaskBlock(torch.as_tensor(G), torch.as_tensor(f), torch.as_tensor(y), binary[t]))
    return blocks, raw


@pytest.mark.parametrize("l2", [1e-3, 0.1, 1.0])
def test_batched_fit_matches_scipy(rng, l2):
    blocks, raw = make_problem(rng)
    subsets = [(0, 1, 2), (1, 4, 5), (0, 3, 5), (2, 3, 4), (0, 5)]
    W, iters = fit_subsets(blocks, subsets, l2)
    ours = subset_objective(W, blocks, subsets, l2)
    for b, s in enumerate(subsets):
        G = np.concatenate([raw[t][0] for t in s])
        f = np.concatenate([raw[t][1] for t in s])
        y = np.concatenate([raw[t][2] for t in s])
        binary = np.concatenate([np.full(len(raw[t][1]), raw[t][3]) for t in s])
        weight = np.concatenate([np.full(len(raw[t][1]), 1 / (len(s) * len(raw[t][1]))) for t in s])
        w_ref, f_ref = reference_fit(G, f, y, binary, weight, l2)
        assert abs(float(ours[b]) - f_ref) <= 1e-6 * abs(f_ref)  # the criterion
        assert float(ours[b]) <= f_ref + 1e-12  # and in fact at least as close
        np.testing.assert_allclose(W[b].numpy(), w_ref, rtol=1e-3, atol=1e-5)  # w is flat near the optimum when λ is small
    assert iters < 100


def test_fixed_metric_and_exact_newton_agree(rng):
    blocks, _ = make_problem(rng, scale=2.0)  # far from the start: the metric changes a lot
    subsets = [(0, 1, 2), (3, 4, 5), (0, 4)]
    w1, i1 = fit_subsets(blocks, subsets, 0.05, refresh_ratio=None, tol=1e-13)  # the start's metric only
    w2, i2 = fit_subsets(blocks, subsets, 0.05, refresh_ratio=0.0, tol=1e-13)  # exact Newton from the second step
    w3, i3 = fit_subsets(blocks, subsets, 0.05, tol=1e-13)  # the default: L-BFGS on a shared metric
    torch.testing.assert_close(w1, w2, rtol=1e-5, atol=1e-6)  # all stop at a 1e-13 Newton decrement
    torch.testing.assert_close(w3, w2, rtol=1e-5, atol=1e-6)
    assert i2 < i1  # fresh metrics converge in fewer iterations


def test_task_hessians_are_the_hessian_at_zero(rng):
    blocks, raw = make_problem(rng)
    H = task_hessians(blocks)
    G, f, y, binary = raw[0]
    s = 1 / (1 + np.exp(-f))
    np.testing.assert_allclose(H[0].numpy(), (G * (s * (1 - s))[:, None]).T @ G / len(G), rtol=1e-10)
    G, f, y, binary = raw[4]
    assert not binary
    np.testing.assert_allclose(H[4].numpy(), 2 * G.T @ G / len(G), rtol=1e-10)


def test_evaluation_positions_follow_the_subsets(rng):
    blocks, _ = make_problem(rng, n_tasks=4)
    subsets = [(0, 2), (1, 2, 3)]
    W = torch.zeros(2, 12, dtype=torch.float64)
    loss, acc = evaluate_subsets(blocks, subsets, W)
    base = [float(loss_derivatives(b.f, b.y, b.binary)[0].mean()) for b in blocks]
    assert loss[0, :2].tolist() == pytest.approx([base[0], base[2]])
    assert np.isnan(loss[0, 2])
    assert loss[1].tolist() == pytest.approx([base[1], base[2], base[3]])
    assert np.isfinite(acc[1, :2]).all()


def test_batching_does_not_change_the_fit(rng):
    """The shared metric and the L-BFGS path depend on which subsets share a batch; the default
    tolerance makes the fitted w independent of it (so every backend and memory setting agrees)."""
    blocks, _ = make_problem(rng, scale=2.0)
    subsets = [(0, 1, 2), (3, 4, 5), (0, 4), (1, 3, 5), (2, 5), (0, 1, 2, 3)]
    whole, _ = fit_subsets(blocks, subsets, 0.05)
    parts = torch.cat([fit_subsets(blocks, subsets[:2], 0.05)[0], fit_subsets(blocks, subsets[2:], 0.05)[0]])
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-7)
    per_subset, _ = fit_subsets(blocks, subsets, 0.05, metric="subset")
    torch.testing.assert_close(per_subset, whole, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="metric='nope'"):
        fit_subsets(blocks, subsets, 0.05, metric="nope")
