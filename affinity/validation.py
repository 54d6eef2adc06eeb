"""How close Grad-TAG is to the truth, on the user's own data.

The same split as ``evaluate``: test rows held out (affinity.outcome.held_out) before the
train/validation split, so both commands see the same training and validation rows.

On subsets that Grad-TAG was not fitted on, compare its estimated per-(subset, task) validation
losses with the losses after really fine-tuning θ* on each subset, and time both. Also check the
linearization itself: the network evaluated at θ* + P w against f(x; θ*) + g̃ᵀ w.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from affinity.artifacts import atomic_write_json
from affinity.devices import solve_dtype
from affinity.estimate import PairData
from affinity.estimators import exact
from affinity.estimators.grad_tag import estimate_from_features, gradient_features, make_projector
from affinity.manifest import Manifest
from affinity.models import task_outputs
from affinity.outcome import held_out
from affinity.pipeline import Prepared, context, prepare
from affinity.progress import Progress
from affinity.subsets import sample_subsets
from affinity.surrogates import fit_subsets, loss_derivatives


def held_out_subsets(prep: Prepared, manifest: Manifest, count: int) -> list[tuple[int, ...]]:
    size = len(prep.subsets[0])
    return sample_subsets(prep.data.n_tasks, size, count, manifest.estimation.seed + 7919,
                          balanced=True, exclude=set(prep.subsets))


def relative_errors(estimate: np.ndarray, truth: np.ndarray, ok: np.ndarray | None = None) -> np.ndarray:
    """|estimate − truth| / |truth| of the per-(subset, task) losses where both are finite (or where ``ok``)."""
    ok = np.isfinite(estimate) & np.isfinite(truth) if ok is None else ok
    return np.abs(estimate[ok] - truth[ok]) / np.abs(truth[ok])


def unchanged_losses(base_val_loss: np.ndarray, subsets: list[tuple[int, ...]], size: int) -> np.ndarray:
    """The estimate "fine-tuning changes nothing": each subset's tasks at θ*'s own validation loss, laid out as a
    ``SubsetTable``'s ``val_loss`` (NaN past a subset's size)."""
    out = np.full((len(subsets), size), np.nan)
    for i, s in enumerate(subsets):
        out[i, :len(s)] = base_val_loss[list(s)]
    return out


def linearization_check(prep: Prepared, manifest: Manifest, grads, subsets: list[tuple[int, ...]]) -> list[dict[str, Any]]:
    """For each subset: the network at θ* + P w against the linearized model, on the subset's validation pairs."""
    spec = manifest.estimation
    device = prep.device
    pairs = PairData.build(grads, np.nan_to_num(prep.data.Y), prep.data.train, prep.data.is_binary, device,
                           solve_dtype(device))
    W, _ = fit_subsets(pairs.train, subsets, spec.l2)
    names, projector = make_projector(prep.model, spec, device)
    params = dict(prep.model.named_parameters())
    base = {n: params[n].detach().clone() for n in names}
    is_val = prep.data.val[grads.rows, grads.tasks]
    out = []
    try:
        for s, w in zip(subsets, W):
            offset = 0
            with torch.no_grad():
                for n in names:  # θ* + P w, segment by segment of P's rows
                    k = base[n].numel()
                    delta = projector.rows(offset, offset + k).to(w.dtype) @ w
                    params[n].copy_(base[n] + delta.reshape(base[n].shape).to(base[n].dtype))
                    offset += k
                sel = np.flatnonzero(np.isin(grads.tasks, s) & is_val)
                rows = torch.as_tensor(grads.rows[sel], device=device)
                tasks = torch.as_tensor(grads.tasks[sel], device=device)
                net = task_outputs(prep.model, torch.as_tensor(prep.data.X, device=device)[rows], tasks).double()
            lin = torch.as_tensor(grads.base_output[sel] + grads.features[sel].astype(np.float64) @ w.double().cpu().numpy(),
                                  device=device)
            f0 = torch.as_tensor(grads.base_output[sel], device=device, dtype=torch.float64)
            y = torch.as_tensor(np.nan_to_num(prep.data.Y)[grads.rows[sel], grads.tasks[sel]], device=device,
                                dtype=torch.float64)
            binary = torch.as_tensor(prep.data.is_binary[grads.tasks[sel]], device=device)
            loss = lambda z: float(loss_derivatives(z, y, binary)[0].mean())
            out.append({
                "tasks": [prep.data.task_names[t] for t in s],
                "output_change_linear": float((lin - f0).abs().mean()),
                "output_change_network": float((net - f0).abs().mean()),
                "output_gap": float((net - lin).abs().mean()),
                "loss_base": loss(f0), "loss_linear": loss(lin), "loss_network": loss(net),
            })
    finally:
        with torch.no_grad():
            for n in names:
                params[n].copy_(base[n])
    return out


def scatter_plot(estimate: np.ndarray, truth: np.ndarray, subsets: list[tuple[int, ...]], names: list[str], path: Path) -> None:
    from affinity.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(6.5, 6))
    n = len(names)
    cmap = plt.get_cmap("tab20" if n > 10 else "tab10")
    for t in range(n):
        xs, ys = [], []
        for i, s in enumerate(subsets):
            if t in s:
                k = s.index(t)
                xs.append(truth[i, k])
                ys.append(estimate[i, k])
        ax.scatter(xs, ys, s=12, color=cmap(t % cmap.N), label=names[t] if n <= 20 else None, alpha=0.8)
    lo, hi = float(np.nanmin([truth, estimate])), float(np.nanmax([truth, estimate]))
    ax.plot([lo, hi], [lo, hi], color="black", lw=1)
    ax.set_xlabel("true validation loss (fine-tuned on the subset)")
    ax.set_ylabel("Grad-TAG estimate")
    ax.set_title("Grad-TAG vs exact, held-out subsets")
    if n <= 20:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)


def validate(manifest: Manifest, n_subsets: int, out_dir: Path | None = None, progress: Progress | None = None,
             linearization_subsets: int = 3) -> dict[str, Any]:
    progress = progress or Progress()
    manifest = held_out(manifest)  # the same rows held out as `evaluate` holds out (none of them is used here)
    prep = prepare(manifest, progress)
    spec = manifest.estimation
    held = held_out_subsets(prep, manifest, n_subsets)
    if not held:
        n, size = prep.data.n_tasks, len(prep.subsets[0])
        possible = math.comb(n, size)
        if possible > len(set(prep.subsets)):  # should not happen: sample_subsets found none left
            raise ValueError("every subset of this size was used for fitting; lower estimation.num_subsets")
        fix = ("validation needs at least 3 tasks" if n < 3 else
               f"lower estimation.subset_size below {n}" if size >= n else
               f"lower estimation.num_subsets below {possible} or estimation.subset_size")
        raise ValueError(f"all {possible} subsets of {size} of the {n} tasks were used for fitting, so none is left "
                         f"to validate on; {fix}")
    t0 = time.perf_counter()
    grads = gradient_features(prep.model, prep.data, spec, prep.device, progress)
    t_grads = time.perf_counter() - t0
    gt = estimate_from_features(grads, prep.data, spec, prep.device, held, progress)
    gradtag_seconds = t_grads + gt.seconds
    ex = exact.estimate(context(prep, manifest, progress), held)
    est_l, true_l = gt.table.val_loss, ex.table.val_loss
    ok = np.isfinite(est_l) & np.isfinite(true_l)
    rel = relative_errors(est_l, true_l)
    # The estimate "fine-tuning changes nothing" (θ*'s own loss): how far fine-tuning moves the losses at all.
    rel_unchanged = relative_errors(unchanged_losses(gt.base_val_loss, held, est_l.shape[1]), true_l, ok)
    iu = np.triu_indices(prep.data.n_tasks, 1)
    covered = (gt.counts[iu] > 0) & (ex.counts[iu] > 0)
    pair_rho = spearmanr(gt.matrix[iu][covered], ex.matrix[iu][covered]).statistic if covered.sum() > 2 else None
    report: dict[str, Any] = {
        "subsets": len(held),
        "subset_size": len(held[0]),
        "test_fraction": manifest.dataset.test_fraction,
        "median_rel_error": float(np.median(rel)),
        "mean_rel_error": float(np.mean(rel)),
        "unchanged_median_rel_error": float(np.median(rel_unchanged)),
        "spearman": float(spearmanr(est_l[ok], true_l[ok]).statistic),
        "pair_spearman": None if pair_rho is None else float(pair_rho),
        "gradtag_seconds": gradtag_seconds,
        "gradtag_gradient_seconds": t_grads,
        "exact_seconds": ex.seconds,
        "time_ratio": gradtag_seconds / ex.seconds,
        "base_training_seconds": prep.seconds["base_training"],
        "base_model": {"best_epoch": prep.training.best_epoch, "epochs_run": prep.training.epochs_run,
                       "mean_val_loss": prep.training.best_val_loss},
        "estimator": gt.info,
        "linearization": linearization_check(prep, manifest, grads, held[:linearization_subsets]),
        "per_subset": [
            {"tasks": [prep.data.task_names[t] for t in s],
             "gradtag": est_l[i, :len(s)].tolist(), "exact": true_l[i, :len(s)].tolist()}
            for i, s in enumerate(held)
        ],
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "validation.json", report)
        scatter_plot(est_l, true_l, held, prep.data.task_names, out_dir / "validation.png")
    return report
