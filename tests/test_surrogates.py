import numpy as np
import pytest
import scipy.optimize
import torch

from affinity.surrogates import (evaluate_subsets, fit_subsets, loss_derivatives, mean_task_hessian, pack_loss,
                                 pack_slope, subset_objective, task_hessians)
from affinity.task_blocks import TaskBlock, pack_slots, pack_tasks


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


def reference_subset_fit(raw, s, l2):
    """``reference_fit`` on subset ``s`` of the per-task arrays ``raw`` ((G, f, y, binary) per task),
    each task weighted 1/|S| and its rows equally, as the solver does."""
    G = np.concatenate([raw[t][0] for t in s])
    f = np.concatenate([raw[t][1] for t in s])
    y = np.concatenate([raw[t][2] for t in s])
    binary = np.concatenate([np.full(len(raw[t][1]), raw[t][3]) for t in s])
    weight = np.concatenate([np.full(len(raw[t][1]), 1 / (len(s) * len(raw[t][1]))) for t in s])
    return reference_fit(G, f, y, binary, weight, l2)


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
        w_ref, f_ref = reference_subset_fit(raw, s, l2)
        assert abs(float(ours[b]) - f_ref) <= 1e-6 * abs(f_ref)  # the criterion
        assert float(ours[b]) <= f_ref + 1e-12  # and in fact at least as close
        np.testing.assert_allclose(W[b].numpy(), w_ref, rtol=1e-3, atol=1e-5)  # w is flat near the optimum when λ is small
    assert iters < 100


def test_metric_alone_and_lbfgs_agree(rng):
    blocks, _ = make_problem(rng, scale=2.0)  # far from the start: the curvature changes a lot
    subsets = [(0, 1, 2), (3, 4, 5), (0, 4)]
    w1, i1 = fit_subsets(blocks, subsets, 0.05, memory=0, tol=1e-13, max_iter=500)  # the start's metric only
    w2, i2 = fit_subsets(blocks, subsets, 0.05, tol=1e-13)  # the default: L-BFGS on that metric
    torch.testing.assert_close(w1, w2, rtol=1e-5, atol=1e-6)  # both stop at a 1e-13 Newton decrement
    assert i2 < i1  # the curvature pairs learn what the fixed metric misses


def test_packs_pad_sign_and_slot_the_tasks(rng):
    blocks, raw = make_problem(rng, n_tasks=6, rows=20)  # 20, 27, ..., 55 rows; tasks 4, 5 regression
    packs = pack_tasks(blocks, products=torch.float32, signed=True, slack=0.25)
    seen = sorted(int(t) for p in packs for t in p.tasks)
    assert seen == list(range(6))
    for p in packs:
        rows = [len(raw[t][1]) for t in p.tasks.tolist()]
        assert min(rows) >= 0.75 * max(rows) and p.G.shape[1] == max(rows)  # padding within the slack
        assert all(raw[t][3] == p.binary for t in p.tasks.tolist()) and p.signed
        for i, t in enumerate(p.tasks.tolist()):
            G, f, y, binary = raw[t]
            n = len(f)
            assert p.rows[i] == n and p.mask[i, :n].all() and not p.mask[i, n:].any()
            assert not p.G[i, n:].any() and not p.f[i, n:].any()  # padded rows add nothing
            # Signed rows: softplus(σz) is the logistic loss of z and sigmoid(σz)·σ its slope;
            # regression rows: the residual z − y, loss its square.
            w = torch.as_tensor(rng.standard_normal(G.shape[1]))
            z = torch.as_tensor(f + G @ w.numpy())
            v = (p.f[i, :n] + p.G[i, :n].double() @ w)[None, :, None]  # (k = 1, rows, m = 1)
            loss, d1, _ = loss_derivatives(z, torch.as_tensor(y), binary)
            sign = 1 - 2 * torch.as_tensor(y) if binary else torch.ones(n, dtype=torch.float64)
            pk = pack_tasks([blocks[t]], products=torch.float32, signed=True)[0]
            torch.testing.assert_close(pack_loss(pk, v).flatten(), loss, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(pack_slope(pk, v).flatten() * sign, d1, rtol=1e-5, atol=1e-6)
    subsets = [(0, 2), (1, 2, 5), (2, 4)]
    for s in pack_slots(packs, subsets):
        for i, t in enumerate(s.pack.tasks.tolist()):
            serves = [(b, sub.index(t)) for b, sub in enumerate(subsets) if t in sub]
            got = [(int(b), int(k)) for b, k in zip(s.index[i], s.position[i]) if b < len(subsets)]
            assert got == serves
            n = len(raw[t][1])
            expect = [1 / (len(subsets[b]) * n) for b, _ in serves]
            np.testing.assert_allclose(s.weight[i, :len(serves)].numpy(), expect)
            assert not s.weight[i, len(serves):].any()
    assert 3 not in [int(t) for s in pack_slots(packs, subsets) for t in s.pack.tasks]  # in no subset: dropped
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        pack_tasks([TaskBlock(blocks[0].G, blocks[0].f, blocks[0].y * 0.5, True)], signed=True)


def test_float32_products_reach_the_float64_optimum(rng):
    """Passes over the rows in float32 (the default), accumulated in float64: the same optimum."""
    blocks, _ = make_problem(rng, scale=2.0)
    subsets = [(0, 1, 2), (3, 4, 5), (0, 4), (1, 3, 5)]
    from affinity.surrogates import fit_packed, metric_basis
    metric, basis = metric_basis(mean_task_hessian(pack_tasks(blocks)))

    def fit(products):
        packs = [p.rotated(basis) for p in pack_tasks(blocks, products=products, signed=True)]
        return fit_packed(packs, subsets, 0.05, metric)[0] @ basis.T

    w64, w32 = fit(torch.float64), fit(torch.float32)
    o64, o32 = subset_objective(w64, blocks, subsets, 0.05), subset_objective(w32, blocks, subsets, 0.05)
    assert ((o32 - o64).abs() <= 1e-12 * o64.abs()).all()
    torch.testing.assert_close(w32, w64, rtol=1e-5, atol=1e-6)


def test_task_hessians_are_the_hessian_at_zero(rng):
    blocks, raw = make_problem(rng)
    H = task_hessians(blocks)
    for signed in (False, True):  # the metric: their mean, from the packs (signed rows change nothing)
        packs = pack_tasks(blocks, products=torch.float32, signed=signed)
        torch.testing.assert_close(mean_task_hessian(packs), H.mean(0), rtol=1e-5, atol=1e-7)  # G in float32
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
    """One metric for every batch and per-subset paths: the fitted w does not depend on which
    subsets share a batch (so every backend and memory setting agrees)."""
    blocks, _ = make_problem(rng, scale=2.0)
    subsets = [(0, 1, 2), (3, 4, 5), (0, 4), (1, 3, 5), (2, 5), (0, 1, 2, 3)]
    whole, _ = fit_subsets(blocks, subsets, 0.05)
    parts = torch.cat([fit_subsets(blocks, subsets[:2], 0.05)[0], fit_subsets(blocks, subsets[2:], 0.05)[0]])
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-7)  # rounding differs with the batch shape
    single = torch.cat([fit_subsets(blocks, [s], 0.05)[0] for s in subsets])
    torch.testing.assert_close(single, whole, rtol=1e-5, atol=1e-7)


def test_lbfgs_two_loop_is_the_bfgs_inverse_update(rng):
    """BatchedLBFGS.solve is H·g for H built by the BFGS inverse update from γ·diag(h), per problem;
    a pair without positive curvature leaves its problem's H alone."""
    from affinity.lbfgs import BatchedLBFGS
    B, d = 3, 6
    h = torch.as_tensor(rng.uniform(0.5, 2.0, d))
    lbfgs = BatchedLBFGS(h, B, memory=3)
    pairs = []
    for k in range(5):  # more than the memory: the oldest two are dropped
        A = [torch.as_tensor(np.diag(rng.uniform(1, 3, d))) for _ in range(B)]  # y = A s: positive curvature
        s = torch.as_tensor(rng.standard_normal((B, d)))
        if k == 4:
            s[1] = 0.0  # problem 1 did not move
        y = torch.stack([A[b] @ s[b] for b in range(B)])
        lbfgs.update(s, y)
        pairs.append((s, y))
    g = torch.as_tensor(rng.standard_normal((B, d)))
    got = lbfgs.solve(g)
    for b in range(B):
        kept = [(s[b], y[b]) for s, y in pairs[-3:] if s[b].abs().sum() > 0]
        s_new, y_new = kept[-1]
        H = torch.diag(h) * (s_new @ y_new) / (y_new @ (h * y_new))
        for s_k, y_k in kept:
            rho = 1 / (s_k @ y_k)
            V = torch.eye(d, dtype=torch.float64) - rho * torch.outer(y_k, s_k)
            H = V.T @ H @ V + rho * torch.outer(s_k, s_k)
        torch.testing.assert_close(got[b], H @ g[b], rtol=1e-10, atol=1e-12)
    lbfgs.reset()
    torch.testing.assert_close(lbfgs.solve(g), g * h)


def test_slot_sources_follow_the_kept_subsets(rng):
    """Re-laying out a batch for the subsets still iterating: every new slot reads the old slot of
    the same (task, subset)."""
    from affinity.task_blocks import slot_sources
    blocks, _ = make_problem(rng, n_tasks=6, rows=20)
    packs = pack_tasks(blocks, products=torch.float32, signed=True)
    subsets = [(0, 2), (1, 2, 5), (2, 4), (0, 1, 3), (3, 5), (4,)]
    old = pack_slots(packs, subsets)
    # Each old slot's column holds 1000·task + subset in every row.
    V = [(1000 * s.pack.tasks[:, None, None] + s.index[:, None, :]).expand(-1, s.pack.G.shape[1], -1).double()
         for s in old]
    kept = np.array([1, 3, 4])
    new = pack_slots(packs, [subsets[k] for k in kept])
    for s, (q, I, J) in zip(new, slot_sources(old, new, kept)):
        got = V[q][I, :, J].permute(0, 2, 1)
        for i, t in enumerate(s.pack.tasks.tolist()):
            for j, b in enumerate(s.index[i].tolist()):
                if b < len(kept):
                    assert (got[i, :, j] == 1000 * t + kept[b]).all()
    assert sorted(int(t) for s in new for t in s.pack.tasks) == [0, 1, 2, 3, 5]


def test_a_slow_subset_finishes_alone(rng):
    """Subsets that converge early leave the passes; the one still iterating gets the same fit
    as on its own."""
    blocks, _ = make_problem(rng, scale=3.0)
    easy = [(0,), (1,), (2,), (3,), (0, 1), (2, 3)]
    hard = [(0, 1, 2, 3, 4, 5)]
    l2 = 1e-3  # far from the start: many iterations
    together, _ = fit_subsets(blocks, easy + hard, l2)
    alone, _ = fit_subsets(blocks, hard, l2)
    torch.testing.assert_close(together[-1:], alone, rtol=1e-5, atol=1e-7)
    for k, s in enumerate(easy):
        torch.testing.assert_close(together[k:k + 1], fit_subsets(blocks, [s], l2)[0], rtol=1e-5, atol=1e-7)


def test_regression_targets_far_from_zero(rng):
    """Targets around 1e4 (not rescaled): the float32 passes work on residuals, so the fit still
    reaches the reference optimum."""
    d, l2 = 8, 0.01
    blocks, raw = [], []
    for t in range(3):
        G = rng.standard_normal((50, d))
        y = 1e4 + 10 * t + rng.standard_normal(50)
        f = y + rng.standard_normal(50)  # a base model that is close, as trained ones are
        raw.append((G, f, y, False))
        blocks.append(TaskBlock(torch.as_tensor(G), torch.as_tensor(f), torch.as_tensor(y), False))
    subsets = [(0, 1), (1, 2), (0, 1, 2)]
    W, _ = fit_subsets(blocks, subsets, l2)
    ours = subset_objective(W, blocks, subsets, l2)
    for b, s in enumerate(subsets):
        w_ref, f_ref = reference_subset_fit(raw, s, l2)
        assert abs(float(ours[b]) - f_ref) <= 1e-9 * abs(f_ref)
        np.testing.assert_allclose(W[b].numpy(), w_ref, rtol=1e-5, atol=1e-7)


def test_pair_data_blocks_hold_each_task_and_split(rng):
    """PairData.build: task t's training (validation) block is exactly its training (validation)
    pairs, in the pairs' order."""
    from affinity.estimate import PairData
    from affinity.gradients import GradientFeatures
    n, T = 2000, 13
    tasks, rows = rng.integers(0, T, n), rng.integers(0, 300, n)
    Y, train = rng.random((300, T)), rng.random((300, T)) < 0.7
    grads = GradientFeatures(features=rng.standard_normal((n, 4)).astype(np.float32),
                             base_output=rng.standard_normal(n).astype(np.float32), rows=rows, tasks=tasks, n_params=4)
    data = PairData.build(grads, Y, train, np.arange(T) % 2 == 0, torch.device("cpu"), torch.float64)
    is_train = train[rows, tasks]
    for t in range(T):
        for split, blocks in ((True, data.train), (False, data.val)):
            idx = np.flatnonzero((tasks == t) & (is_train == split))
            np.testing.assert_array_equal(blocks[t].G.numpy(), grads.features[idx])
            np.testing.assert_array_equal(blocks[t].y.numpy(), Y[rows[idx], t])
            assert blocks[t].binary == (t % 2 == 0)


def test_a_penalty_path_keeps_each_subsets_best_validation_fit(rng):
    """``estimation.l2_select: validation``: every subset's estimates are those of the penalty on the path (l2 × 1 …
    100, and no change at all) whose mean validation loss over the subset's tasks is lowest — each penalty's own
    fit, unchanged by the others, and θ*'s own losses where no fit beats them."""
    from affinity.estimate import PairData, grad_tag_table, penalty_path
    from affinity.gradients import GradientFeatures
    n, T = 3000, 6
    tasks, rows = rng.integers(0, T, n), rng.integers(0, 500, n)
    Y, train = (rng.random((500, T)) < 0.5).astype(float), rng.random((500, T)) < 0.6
    # Tasks 0–2 carry a signal in the features (fitting pays on validation), tasks 3–5 none (fitting overfits).
    G = rng.standard_normal((n, 8)).astype(np.float32)
    G[:, 0] += np.where(tasks < 3, Y[rows, tasks] - 0.5, 0.0).astype(np.float32)
    grads = GradientFeatures(features=G, base_output=np.zeros(n, np.float32), rows=rows, tasks=tasks, n_params=8)
    data = PairData.build(grads, Y, train, np.ones(T, bool), torch.device("cpu"), torch.float64)
    subsets = [(0, 1, 2), (3, 4, 5), (0, 3), (1, 4, 5)]
    path = penalty_path(0.01)
    assert path[0] == 0.01 and path[-2] == pytest.approx(1.0) and np.isinf(path[-1])
    each = [grad_tag_table(data, subsets, l2).val_loss for l2 in path[:-1]]
    base, _ = data.base_scores()
    each.append(np.array([[base[t] for t in s] + [np.nan] * (3 - len(s)) for s in subsets]))
    chosen = grad_tag_table(data, subsets, path).val_loss
    for i, s in enumerate(subsets):
        means = [np.nanmean(e[i]) for e in each]
        best = int(np.argmin(means))
        np.testing.assert_allclose(chosen[i, :len(s)], each[best][i, :len(s)], rtol=1e-10)
    assert np.nanmean(chosen[0]) < np.nanmean(each[-1][0])  # the signal's tasks: a fit beats θ*
    assert np.all(np.nanmean(chosen, axis=1) <= np.array([np.nanmean(e, axis=1) for e in each]).min(axis=0) + 1e-12)
