"""Figures: the affinity heatmap with tasks ordered by group, and atomic PNG writing for all figures."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Write a figure as PNG atomically (temp file + rename) and release it."""
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def heatmap(matrix: np.ndarray, names: list[str], groups: list[list[int]], path: Path, title: str) -> None:
    """Affinity heatmap, rows and columns ordered by group, group boundaries drawn."""
    order = [i for g in groups for i in g]
    M = matrix[np.ix_(order, order)]
    n = len(order)
    size = min(4 + 0.25 * n, 30)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    lim = float(np.abs(M).max()) or 1.0
    im = ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    edge = 0
    for g in groups[:-1]:
        edge += len(g)
        ax.axhline(edge - 0.5, color="black", lw=1.2)
        ax.axvline(edge - 0.5, color="black", lw=1.2)
    if n <= 80:
        labels = [names[i] for i in order]
        # parse_math=False: a task name is text, never mathtext ("$\\frac{$" would not parse)
        ax.set_xticks(range(n), labels, rotation=90, fontsize=max(4, 9 - n // 15), parse_math=False)
        ax.set_yticks(range(n), labels, fontsize=max(4, 9 - n // 15), parse_math=False)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="affinity (base − estimated validation loss)")
    fig.tight_layout()
    save_figure(fig, path)
