"""Model kind ``sign``: SIGN (Frasca et al., 2020) — propagated node features, then the MLP with per-task heads.

With ``A`` the graph's adjacency (row i = the edges into node i, affinity/data/graph.py) and
``I`` the identity, the propagation matrix is

    Â = D_r^-1/2 (A + I) D_c^-1/2,   D_r, D_c = the row and column sums of A + I

(the symmetric normalized adjacency D^-1/2 (A + I) D^-1/2 of GCN for an undirected graph, where
D_r = D_c). The model's input row of node i is [X, ÂX, Â²X, …, Â^k X]_i with k = ``model.hops``
and X the node features as the split standardized them (train-row statistics), computed once
with k sparse-dense products (scipy CSR; nothing of size nodes² is formed) before training.

Every row then is a fixed feature vector and the model is the plain MLP of affinity/models.py, so
every estimator, the per-sample gradients and the multitask optimizers apply unchanged. A row's
features see its neighbours' features (never their labels) up to k hops away.

``feature_names`` become the input columns (``x@0`` … ``x@k``); ``feature_mean`` and
``feature_std`` stay those of the raw node features (applied before propagation).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from affinity.data.table import DataError, SplitTable
from affinity.manifest import ModelSpec


def normalized_adjacency(adjacency: sp.spmatrix) -> sp.csr_matrix:
    """Â = D_r^-1/2 (A + I) D_c^-1/2 (float32 CSR)."""
    n = adjacency.shape[0]
    a = (sp.csr_matrix(adjacency, dtype=np.float64) + sp.identity(n, dtype=np.float64, format="csr")).tocsr()
    rows = np.asarray(a.sum(axis=1)).ravel()
    cols = np.asarray(a.sum(axis=0)).ravel()
    out = sp.diags(rows ** -0.5) @ a @ sp.diags(cols ** -0.5)
    return sp.csr_matrix(out, dtype=np.float32)


def propagate(adjacency: sp.spmatrix, X: np.ndarray, hops: int) -> np.ndarray:
    """[X, ÂX, …, Â^hops X] side by side (nodes × features·(hops + 1), float32)."""
    a_hat = normalized_adjacency(adjacency)
    blocks = [np.asarray(X, dtype=np.float32)]
    for _ in range(hops):
        blocks.append(np.asarray(a_hat @ blocks[-1], dtype=np.float32))
    return np.concatenate(blocks, axis=1)


def sign_inputs(data: SplitTable, spec: ModelSpec) -> SplitTable:
    """The split graph with its rows' features replaced by the SIGN features of ``spec.hops`` hops."""
    if data.graph is None:
        raise DataError("model.kind 'sign' takes graph datasets; set dataset.kind to 'graph' (or model.kind to 'mlp')")
    if data.graph.n_nodes != data.X.shape[0]:
        raise DataError(f"the graph has {data.graph.n_nodes} nodes but the dataset {data.X.shape[0]} rows; give one "
                        "node table row per node")
    X = propagate(data.graph.adjacency, data.X, spec.hops)
    names = [f"{n}@{h}" for h in range(spec.hops + 1) for n in data.feature_names]
    return replace(data, X=X, feature_names=names, metadata={**data.metadata, "hops": spec.hops})
