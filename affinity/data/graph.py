"""Data kind ``graph``: a node table (node ids, feature columns, one label column per task) and an edge list.

Rows are nodes, in the node table's order; labels follow the table rules (binary 0/1 or
regression, an empty cell = not labelled, the same checks, split and errors), so a community task
is a label column that is 1 for members, 0 for the non-members it labels and empty elsewhere.

The edge list (``dataset.edges``: CSV, Parquet, or NPZ with an array ``edges`` of shape edges × 2)
names two node ids per edge (``dataset.edge_columns``) and optionally a positive weight
(``dataset.edge_weight``). It becomes a sparse adjacency matrix ``A`` (scipy CSR, float32, rows ×
rows) in which row i holds the edges into node i:

- undirected (default): an edge links both ways; an edge listed in both directions is one edge
  (the larger of its two weights);
- directed: edges point source → target, ``A[target, source] = weight`` (a node aggregates the
  features of the nodes pointing to it, as in PyTorch Geometric);
- repeated rows of one edge add their weights (without weights, an edge is 1 however often it is
  listed); self-loops are dropped (SIGN adds every node's own loop itself).

Errors name the field: an edge naming a node that is not in the node table, duplicate node ids,
missing ids, weights that are not positive numbers. A node table without feature columns gets
``dataset.feature_fallback``: one feature log(1 + degree) (default), 32 seeded standard normal
features, or an error. Isolated nodes (no edge) are kept and counted (``Graph.summary``, in
summary.json under dataset.graph).

Memory: the edge columns are read alone (``usecols``), mapped to row numbers as int64 and held
once as a COO triple before the CSR; a million edges take tens of MB.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from affinity.data.files import sniff_format, task_labels
from affinity.data.table import DataError, TaskTable, check_table
from affinity.manifest import DatasetSpec

RANDOM_FEATURES = 32  # feature_fallback "random": standard normal features per node


@dataclass
class Graph:
    """The edges between a dataset's rows: ``adjacency`` (rows × rows, CSR, float32, no self-loops; row i = the
    edges into node i, symmetric when undirected)."""

    adjacency: sp.csr_matrix
    directed: bool = False
    features: str = "given"  # given | degree | random (dataset.feature_fallback, when the node table had none)
    self_loops_dropped: int = 0

    @property
    def n_nodes(self) -> int:
        return int(self.adjacency.shape[0])

    @property
    def n_edges(self) -> int:
        nnz = int(self.adjacency.nnz)
        return nnz if self.directed else nnz // 2

    def degree(self) -> np.ndarray:
        """Edges per node (in and out for a directed graph), weights ignored."""
        a = self.adjacency
        deg = np.diff(a.indptr).astype(np.int64)
        if self.directed:
            deg = deg + np.bincount(a.indices, minlength=a.shape[0])
        return deg

    def summary(self) -> dict[str, Any]:
        return {"nodes": self.n_nodes, "edges": self.n_edges, "directed": self.directed,
                "isolated_nodes": int((self.degree() == 0).sum()), "self_loops_dropped": self.self_loops_dropped,
                "features": self.features}


def adjacency_from_edges(n: int, source: np.ndarray, target: np.ndarray, weight: np.ndarray | None,
                         directed: bool) -> tuple[sp.csr_matrix, int]:
    """The CSR adjacency of edges given as row numbers (see the module notes), and the number of self-loops dropped."""
    loops = source == target
    if loops.any():
        keep = ~loops
        source, target = source[keep], target[keep]
        weight = None if weight is None else weight[keep]
    w = np.ones(len(source), dtype=np.float32) if weight is None else weight.astype(np.float32)
    a = sp.coo_matrix((w, (target, source)), shape=(n, n)).tocsr()  # row = the node the edge points to
    a.sum_duplicates()
    if weight is None:
        a.data[:] = 1.0
    if not directed:
        a = a.maximum(a.T).tocsr()
    a.sort_indices()
    return a.astype(np.float32), int(loops.sum())


def _ids(values: pd.Series | np.ndarray, what: str, field: str) -> np.ndarray:
    """Node ids as int64 when they are whole numbers, else as strings; missing ids refused."""
    s = pd.Series(values)
    if s.isna().any():
        row = int(np.flatnonzero(s.isna().to_numpy())[0])
        raise DataError(f"{field} has {int(s.isna().sum())} missing node ids in {what} (first at row {row}); "
                        "give every row a node id")
    if pd.api.types.is_integer_dtype(s):
        return s.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(s) and np.all(np.mod(s.to_numpy(), 1) == 0):
        return s.to_numpy().astype(np.int64)
    return s.astype(str).to_numpy(dtype=object)


def _common(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two id arrays in one type (strings when either is not whole numbers)."""
    if a.dtype == object or b.dtype == object:
        return a.astype(str).astype(object), b.astype(str).astype(object)
    return a, b


def _read_frame(path: Path, field: str, columns: list[str] | None = None) -> pd.DataFrame:
    fmt = sniff_format(path)
    try:
        frame = pd.read_parquet(path, columns=columns) if fmt == "parquet" else pd.read_csv(path, usecols=columns)
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{field}: cannot read {path.name} as {fmt.upper()}: {str(exc).splitlines()[0]}") from None
    frame.columns = [str(c) for c in frame.columns]
    return frame


def file_header(path: Path, field: str) -> list[str]:
    """The column names of a CSV or Parquet file, without reading its rows."""
    try:
        if sniff_format(path) == "parquet":
            import pyarrow.parquet as pq

            return [str(c) for c in pq.ParquetFile(path).schema_arrow.names]
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except DataError:
        raise
    except Exception as exc:  # pandas and pyarrow raise their own types for unreadable files
        raise DataError(f"{field}: cannot read the columns of {path.name}: {str(exc).splitlines()[0]}") from None


def _existing(path_text: str, field: str, what: str) -> Path:
    path = Path(path_text)
    if not path.is_file():
        raise DataError(f"{field} {path_text!r} is not an existing file; give the path to the {what} "
                        "(.csv, .parquet or .npz)")
    return path


def read_edges(spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(source ids, target ids, weights or None) of ``dataset.edges``."""
    path = _existing(spec.edges or "", "dataset.edges", "edge list")
    src_col, dst_col = spec.edge_columns
    if sniff_format(path) == "npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "edges" not in npz.files:
                    raise DataError(f"dataset.edges {path.name} must hold an array 'edges' (edges × 2 node ids); it "
                                    f"holds {sorted(npz.files)}")
                edges = np.asarray(npz["edges"])
                wname = spec.edge_weight
                if wname is not None and wname not in npz.files:
                    raise DataError(f"dataset.edge_weight {wname!r} is not an array of {path.name}; it holds "
                                    f"{sorted(npz.files)}")
                weight = None if wname is None else np.asarray(npz[wname], dtype=np.float64)
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise DataError(f"dataset.edges: cannot read {path.name} as NPZ: {str(exc).splitlines()[0]}") from None
        if edges.ndim != 2 or edges.shape[1] != 2:
            raise DataError(f"dataset.edges {path.name}: 'edges' must have shape (edges, 2), got {edges.shape}")
        if weight is not None and weight.shape != (len(edges),):
            raise DataError(f"dataset.edge_weight {spec.edge_weight!r} has shape {weight.shape}; give one weight "
                            f"per edge ({len(edges)})")
        src, dst = edges[:, 0], edges[:, 1]
        where = path.name
    else:
        wanted = [src_col, dst_col] + ([spec.edge_weight] if spec.edge_weight else [])
        header = file_header(path, "dataset.edges")
        missing = [c for c in wanted if c not in header]
        if missing:
            field = "dataset.edge_weight" if missing == [spec.edge_weight] else "dataset.edge_columns"
            raise DataError(f"{field}: {missing} not columns of {path.name}; its columns are {list(header)[:20]}")
        frame = _read_frame(path, "dataset.edges", wanted)
        src, dst = frame[src_col].to_numpy(), frame[dst_col].to_numpy()
        weight = None
        if spec.edge_weight:
            weight = pd.to_numeric(frame[spec.edge_weight], errors="coerce").to_numpy(dtype=np.float64)
        where = path.name
    if weight is not None:
        bad = ~(np.isfinite(weight) & (weight > 0))
        if bad.any():
            raise DataError(f"dataset.edge_weight {spec.edge_weight!r} has {int(bad.sum())} weights that are not "
                            f"positive numbers in {where} (first at row {int(np.flatnonzero(bad)[0])}); give every "
                            "edge a weight > 0 or drop those edges")
    src = _ids(src, where, f"dataset.edge_columns {src_col!r}")
    dst = _ids(dst, where, f"dataset.edge_columns {dst_col!r}")
    return src, dst, weight


def _node_table(spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray | None, list[str], np.ndarray, list[str], list[str], str]:
    """(node ids, features or None, feature names, labels, task names, task types, file name) of the node table."""
    path = _existing(spec.source, "dataset.source", "node table")
    if sniff_format(path) == "npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                keys = set(npz.files)
                if "Y" not in keys:
                    raise DataError(f"dataset.source {path.name} must hold 'Y' (nodes × tasks, NaN = not labelled) "
                                    f"and optionally 'X' and {spec.node_column!r}; it holds {sorted(keys)}")
                Y = np.asarray(npz["Y"], dtype=np.float64)
                Y = Y[:, None] if Y.ndim == 1 else Y
                X = np.asarray(npz["X"], dtype=np.float64) if "X" in keys else None
                ids = np.asarray(npz[spec.node_column]) if spec.node_column in keys else np.arange(len(Y))
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise DataError(f"dataset.source: cannot read {path.name} as NPZ: {str(exc).splitlines()[0]}") from None
        if Y.ndim != 2 or (X is not None and (X.ndim != 2 or len(X) != len(Y))) or len(ids) != len(Y):
            raise DataError(f"dataset.source {path.name}: X must be nodes × features, Y nodes × tasks and "
                            f"{spec.node_column!r} one id per node; got X {None if X is None else X.shape}, "
                            f"Y {Y.shape}, ids {np.shape(ids)}")
        if spec.tasks is not None and len(spec.tasks) != Y.shape[1]:
            raise DataError(f"dataset.tasks lists {len(spec.tasks)} tasks but Y in {path.name} has {Y.shape[1]} "
                            "columns; give one entry per column of Y")
        names = [t.name for t in spec.tasks] if spec.tasks else [f"task_{i}" for i in range(Y.shape[1])]
        types = [t.type for t in spec.tasks] if spec.tasks else [spec.task_type] * Y.shape[1]
        if X is not None and X.shape[1] == 0:
            X = None
        features = [] if X is None else [f"x{i}" for i in range(X.shape[1])]
        return _ids(ids, path.name, "dataset.node_column"), X, features, Y, names, types, path.name
    frame = _read_frame(path, "dataset.source")
    if spec.node_column not in frame.columns:
        raise DataError(f"dataset.node_column {spec.node_column!r} is not a column of {path.name}; its columns are "
                        f"{list(frame.columns)[:20]}; name the column holding the node ids")
    Y, names, types = task_labels(frame, spec, path.name)
    if spec.node_column in names:
        raise DataError(f"dataset.node_column {spec.node_column!r} is also a task; the node ids cannot be labels")
    features = spec.features if spec.features is not None else [
        c for c in frame.columns if c not in names and c != spec.node_column]
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise DataError(f"dataset.features {missing} are not columns of {path.name}; its columns are "
                        f"{list(frame.columns)[:20]}")
    if spec.node_column in features:
        raise DataError(f"dataset.features lists the node id column {spec.node_column!r}; leave it out")
    non_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        raise DataError(f"dataset.features {non_numeric} are not numeric in {path.name}; encode them as numbers or "
                        "leave them out of dataset.features")
    X = frame[features].to_numpy(dtype=np.float64) if features else None
    return _ids(frame[spec.node_column], path.name, "dataset.node_column"), X, list(features), Y, names, types, path.name


def fallback_features(how: str, degree: np.ndarray, seed: int) -> tuple[np.ndarray, list[str]]:
    """Node features for a node table without any: log(1 + degree), or seeded standard normal columns."""
    if how == "degree":
        return np.log1p(degree.astype(np.float64))[:, None], ["log_degree"]
    rng = np.random.default_rng([seed, 0x6EA])
    return rng.standard_normal((len(degree), RANDOM_FEATURES)), [f"random_{i}" for i in range(RANDOM_FEATURES)]


def read_graph_files(spec: DatasetSpec) -> TaskTable:
    """The node table ``dataset.source`` and edge list ``dataset.edges`` as a TaskTable with its Graph."""
    if spec.edges is None:
        raise DataError("dataset.edges is required for a graph; give the path to the edge list (dataset.source is "
                        "the node table)")
    ids, X, features, Y, names, types, node_file = _node_table(spec)
    index = pd.Index(ids)
    if not index.is_unique:
        dup = index[index.duplicated()]
        raise DataError(f"dataset.node_column {spec.node_column!r} has {len(dup)} duplicate node ids in {node_file} "
                        f"(e.g. {dup[0]!r}); give every node one row")
    src, dst, weight = read_edges(spec)
    rows = []
    for ends, column in ((src, spec.edge_columns[0]), (dst, spec.edge_columns[1])):
        node_ids, ends = _common(ids, ends)
        pos = pd.Index(node_ids).get_indexer(ends)
        unknown = pos < 0
        if unknown.any():
            first = int(np.flatnonzero(unknown)[0])
            raise DataError(
                f"dataset.edges: {int(unknown.sum())} edges name nodes that are not in the node table (e.g. "
                f"{ends[first]!r} in column {column!r}, row {first}); add those nodes to {node_file} or drop the edges")
        rows.append(pos.astype(np.int64))
    adjacency, loops = adjacency_from_edges(len(ids), rows[0], rows[1], weight, spec.directed)
    graph = Graph(adjacency, spec.directed, "given", loops)
    if X is None:
        if spec.feature_fallback == "error":
            raise DataError(f"dataset.source {node_file} has no feature columns; add them (dataset.features) or set "
                            "dataset.feature_fallback to 'degree' or 'random'")
        X, features = fallback_features(spec.feature_fallback, graph.degree(), spec.seed)
        graph.features = spec.feature_fallback
    return TaskTable(X=X, Y=Y, task_names=names, task_types=types, feature_names=features, graph=graph,
                     metadata={"source": node_file, "edges": Path(spec.edges or "").name, "node_ids": ids})


def read_graph(spec: DatasetSpec) -> TaskTable:
    """The graph named by a manifest's dataset section (kind graph: a built-in or two files), checked."""
    from affinity.data.communities import GRAPH_BUILTINS

    if spec.source in GRAPH_BUILTINS:
        table = GRAPH_BUILTINS[spec.source](spec.params)
    else:
        if spec.params:
            raise DataError("dataset.params applies to built-in datasets only; remove it for a file source")
        table = read_graph_files(spec)
    check_table(table, spec.min_rows_per_task)
    return table
