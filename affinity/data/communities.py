"""Built-in `graph`: a planted graph of overlapping communities, one binary node task per community.

Construction (all seeded from ``seed``; nothing is downloaded):

- nodes: ``regions`` regions of ``nodes_per_region`` nodes each;
- communities: ``communities_per_region`` per region, each a random ``community_fraction`` of its
  region's nodes of which a share ``core_share`` is drawn from the region's core (a random half
  of its nodes) and the rest from the other half, so the communities of one region overlap
  heavily (with the defaults two of them share about half of their members) and communities of
  different regions share none;
- edges (an overlapping stochastic block model, undirected, no self-loops): inside every
  community, each member gets about ``community_degree`` edges to other members (uniform random
  pairs of members); inside every region, about ``region_degree`` edges per node to random nodes
  of the region; anywhere, about ``background_degree`` edges per node to random nodes;
- node features: x = ``signal`` · Σ_{communities c ∋ node} v_c + ε, ε ~ N(0, I_features), with v_c
  a unit vector √shared · r_g + √(1 − shared) · e_c (r_g one per region, e_c one per community,
  random unit vectors): a node's own features say little about its communities, its
  neighbourhood's average says more (what SIGN's propagated features Â^k X see);
- tasks: community c's task labels ``labels_per_task`` nodes (or fewer when the community is
  small): half of them its members (label 1), a quarter non-members of its region and a quarter
  nodes of other regions (label 0); the other nodes are not labelled for it.

Truth: the regions (communities that overlap and share a region are related; they also share
the region's feature direction r_g). Tasks are named ``comm_000``, ``comm_001``, ... and assigned
to regions by a seeded permutation, so neither a name nor a position reveals a region.

``tasks × nodes`` label cells are held densely (NaN = not labelled, float32): 120 tasks on 3,000
nodes by default; the scale benchmark's 2,000 tasks on 100,000 nodes hold 200M cells (0.8 GB).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from affinity.data.graph import Graph, adjacency_from_edges
from affinity.data.table import DataError, TaskTable

DEFAULTS: dict[str, Any] = {
    "regions": 10,
    "communities_per_region": 12,
    "nodes_per_region": 300,
    "community_fraction": 0.4,
    "core_share": 0.8,
    "community_degree": 3.0,
    "region_degree": 4.0,
    "background_degree": 2.0,
    "features": 16,
    "signal": 1.0,
    "shared": 0.5,
    "labels_per_task": 200,
    "seed": 0,
}

MAX_CELLS = 400_000_000  # nodes × tasks of the label matrix (float32)


def community_params(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters with defaults filled in, checked; DataError names the bad one and the fix."""
    if not isinstance(params, dict):
        raise DataError(f"dataset.params must be a mapping of parameter names to values, not {type(params).__name__}")
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise DataError(f"dataset.params {sorted(unknown)} are not parameters of graph; accepted: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    for key, low in (("regions", 1), ("communities_per_region", 1), ("nodes_per_region", 10), ("features", 1),
                     ("labels_per_task", 8), ("seed", 0)):
        v = p[key]
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
            raise DataError(f"dataset.params.{key}={v!r} must be a whole number ≥ {low}")
        p[key] = int(v)
    for key in ("community_fraction", "core_share", "community_degree", "region_degree", "background_degree", "signal", "shared"):
        v = p[key]
        if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool) or not math.isfinite(v) \
                or v < 0:
            raise DataError(f"dataset.params.{key}={v!r} must be a finite number ≥ 0")
        p[key] = float(v)
    if not 0 < p["community_fraction"] < 1:
        raise DataError(f"dataset.params.community_fraction={p['community_fraction']} must be in (0, 1): the share "
                        "of its region's nodes a community holds")
    if p["core_share"] > 1:
        raise DataError(f"dataset.params.core_share={p['core_share']} must be in [0, 1]")
    if p["shared"] > 1:
        raise DataError(f"dataset.params.shared={p['shared']} must be in [0, 1]")
    size = int(round(p["community_fraction"] * p["nodes_per_region"]))
    if size < 4 or p["nodes_per_region"] - size < 2:
        raise DataError(f"dataset.params give communities of {size} of {p['nodes_per_region']} nodes; a community "
                        "needs ≥ 4 members and ≥ 2 non-members in its region (change community_fraction or "
                        "nodes_per_region)")
    tasks = p["regions"] * p["communities_per_region"]
    if tasks < 2:
        raise DataError("dataset.params give 1 task; use more regions or communities_per_region")
    if p["regions"] < 2:
        raise DataError("dataset.params.regions=1: the negatives of other regions need at least 2 regions")
    cells = tasks * p["regions"] * p["nodes_per_region"]
    if cells > MAX_CELLS:
        raise DataError(f"dataset.params give {tasks} tasks × {p['regions'] * p['nodes_per_region']} nodes = {cells} "
                        f"label cells, more than {MAX_CELLS}; use fewer regions, communities or nodes")
    return p


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _pairs_within(rng: np.random.Generator, members: np.ndarray, degree: float) -> tuple[np.ndarray, np.ndarray]:
    """About ``degree`` edges per member to other members, as uniform random pairs."""
    count = rng.poisson(len(members) * degree / 2)
    return rng.choice(members, count), rng.choice(members, count)


def make_communities(params: dict[str, Any]) -> TaskTable:
    p = community_params(params)
    streams = np.random.SeedSequence(p["seed"]).spawn(5)
    assign, member_rng, edge_rng, feat_rng, label_rng = (np.random.default_rng(s) for s in streams)
    n_regions, per_region, per = p["regions"], p["communities_per_region"], p["nodes_per_region"]
    n_tasks, n_nodes = n_regions * per_region, n_regions * per
    size = int(round(p["community_fraction"] * per))
    region_of_task = np.empty(n_tasks, dtype=np.int64)
    region_of_task[assign.permutation(n_tasks)] = np.repeat(np.arange(n_regions), per_region)
    region_of_node = np.repeat(np.arange(n_regions), per)
    core = [member_rng.permutation(per) for _ in range(n_regions)]  # each region's first half: its core
    members = []
    for g in region_of_task:
        n_core = min(int(round(p["core_share"] * size)), per // 2)
        n_core = max(n_core, size - (per - per // 2))
        picked = np.concatenate([member_rng.choice(core[g][:per // 2], n_core, replace=False),
                                 member_rng.choice(core[g][per // 2:], size - n_core, replace=False)])
        members.append(g * per + np.sort(picked))
    src, dst = [], []
    for m in members:
        s, d = _pairs_within(edge_rng, m, p["community_degree"])
        src.append(s)
        dst.append(d)
    for g in range(n_regions):
        s, d = _pairs_within(edge_rng, np.arange(g * per, (g + 1) * per), p["region_degree"])
        src.append(s)
        dst.append(d)
    s, d = _pairs_within(edge_rng, np.arange(n_nodes), p["background_degree"])
    src.append(s)
    dst.append(d)
    adjacency, loops = adjacency_from_edges(n_nodes, np.concatenate(src), np.concatenate(dst), None, False)
    dim = p["features"]
    region_dir, own_dir = _unit(feat_rng, n_regions, dim), _unit(feat_rng, n_tasks, dim)
    directions = math.sqrt(p["shared"]) * region_dir[region_of_task] + math.sqrt(1 - p["shared"]) * own_dir
    X = feat_rng.standard_normal((n_nodes, dim))
    for t, m in enumerate(members):
        X[m] += p["signal"] * directions[t]
    Y = np.full((n_nodes, n_tasks), np.nan, dtype=np.float32)
    half = p["labels_per_task"] // 2
    for t, m in enumerate(members):
        g = region_of_task[t]
        inside = np.setdiff1d(np.arange(g * per, (g + 1) * per), m, assume_unique=True)
        pos = label_rng.choice(m, min(half, len(m)), replace=False)
        n_near = min((p["labels_per_task"] - len(pos)) // 2, len(inside))
        near = label_rng.choice(inside, n_near, replace=False)
        n_far = p["labels_per_task"] - len(pos) - n_near
        far = label_rng.choice(n_nodes - per, n_far, replace=False)
        far = far + np.where(far >= g * per, per, 0)  # skip region g's block
        Y[pos, t] = 1.0
        Y[near, t] = 0.0
        Y[far, t] = 0.0
    width = max(3, len(str(n_tasks - 1)))
    names = [f"comm_{t:0{width}d}" for t in range(n_tasks)]
    truth = [[names[t] for t in range(n_tasks) if region_of_task[t] == g] for g in range(n_regions)]
    return TaskTable(
        X=X, Y=Y, task_names=names, task_types=["binary"] * n_tasks, feature_names=[f"x{i}" for i in range(dim)],
        truth_groups=truth, graph=Graph(adjacency, False, "given", loops),
        metadata={"source": "graph", "params": p, "region_of_node": region_of_node},
    )


GRAPH_BUILTINS = {"graph": make_communities}
