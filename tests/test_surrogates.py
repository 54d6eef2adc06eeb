import numpy as np
import pytest
import scipy.optimize
import torch

from affinity.surrogates import fit_batch, pad_subset_rows, surrogate_objective


def reference_fit(G, f, y, binary, weight, l2):
    """scipy's trust-region Newton on the same objective, one subset at a time."""

    def obj(w):
        z = f + G @ w
        loss = np.where(binary, np.logaddexp(0, z) - y * z, (z - y) ** 2)
        s = 1 / (1 + np.exp(-z))
        d1 = np.where(binary, s - y, 2 * (z - y))
        return (weight * loss).sum() + 0.5 * l2 * w @ w, G.T @ (weight * d1) + l2 * w

    def hess(w):
        z = f + G @ w
        s = 1 / (1 + np.exp(-z))
        d2 = np.where(binary, s * (1 - s), 2.0)
        return G.T @ (G * (weight * d2)[:, None]) + l2 * np.eye(G.shape[1])

    res = scipy.optimize.minimize(obj, np.zeros(G.shape[1]), jac=True, hess=hess, method="trust-exact",
                                  options={"gtol": 1e-12})
    return res.x, res.fun


@pytest.mark.parametrize("l2", [1e-3, 0.1, 1.0])
def test_batched_newton_matches_scipy(rng, l2):
    n_pairs, d, n_tasks = 400, 12, 6
    G = rng.standard_normal((n_pairs, d))
    tasks = rng.integers(0, n_tasks, n_pairs)
    binary_task = np.array([True, True, True, True, False, False])
    f = rng.standard_normal(n_pairs)
    y = np.where(binary_task[tasks], (rng.random(n_pairs) < 0.5).astype(float), rng.standard_normal(n_pairs))
    task_rows = [np.flatnonzero(tasks == t) for t in range(n_tasks)]
    subsets = [(0, 1, 2), (1, 4, 5), (0, 3, 5), (2, 3, 4)]
    padded = pad_subset_rows(subsets, task_rows, torch.device("cpu"), torch.float64)
    T = lambda a: torch.as_tensor(a)
    i = padded.index
    w, iters = fit_batch(T(G)[i], T(f)[i], T(y)[i], T(binary_task[tasks])[i], padded.weight, l2)
    ours = surrogate_objective(w, T(G)[i], T(f)[i], T(y)[i], T(binary_task[tasks])[i], padded.weight, l2)
    for b, s in enumerate(subsets):
        rows = np.concatenate([task_rows[t] for t in s])
        weight = np.concatenate([np.full(len(task_rows[t]), 1 / (len(s) * len(task_rows[t]))) for t in s])
        w_ref, f_ref = reference_fit(G[rows], f[rows], y[rows], binary_task[tasks][rows], weight, l2)
        assert abs(float(ours[b]) - f_ref) <= 1e-6 * abs(f_ref)
        assert float(ours[b]) <= f_ref + 1e-12
        np.testing.assert_allclose(w[b].numpy(), w_ref, rtol=1e-4, atol=1e-6)
    assert iters < 50


def test_padding_rows_do_not_count(rng):
    G = torch.as_tensor(rng.standard_normal((30, 4)))
    rows = [np.arange(0, 10), np.arange(10, 30)]
    padded = pad_subset_rows([(0,), (0, 1)], rows, torch.device("cpu"), torch.float64)
    assert padded.index.shape == (2, 30)
    assert float(padded.weight[0, 10:].abs().sum()) == 0.0
    torch.testing.assert_close(padded.weight.sum(1), torch.ones(2, dtype=torch.float64))


def test_per_task_hessians_assemble_the_subset_hessian(rng):
    from affinity.surrogates import _loss_derivatives, subset_hessians, task_hessians

    n_pairs, d = 300, 7
    T = lambda a: torch.as_tensor(a)
    G, f = T(rng.standard_normal((n_pairs, d))), T(rng.standard_normal(n_pairs))
    tasks = rng.integers(0, 5, n_pairs)
    binary = T(tasks < 3)
    y = T(np.where(tasks < 3, (rng.random(n_pairs) < 0.5).astype(float), rng.standard_normal(n_pairs)))
    task_rows = [np.flatnonzero(tasks == t) for t in range(5)]
    subsets = [(0, 3), (1, 2, 4)]
    padded = pad_subset_rows(subsets, task_rows, torch.device("cpu"), torch.float64)
    i = padded.index
    _, _, d2 = _loss_derivatives(f[i], y[i], binary[i])
    direct = torch.einsum("brd,br,bre->bde", G[i], padded.weight * d2, G[i])
    assembled = subset_hessians(task_hessians(G, f, y, binary, task_rows), subsets)
    torch.testing.assert_close(assembled, direct)
    w1, _ = fit_batch(G[i], f[i], y[i], binary[i], padded.weight, 0.05, assembled)
    w2, _ = fit_batch(G[i], f[i], y[i], binary[i], padded.weight, 0.05, None, refresh_after=0)  # full Newton
    torch.testing.assert_close(w1, w2, rtol=1e-5, atol=1e-6)  # both stop at a 1e-13 Newton decrement
