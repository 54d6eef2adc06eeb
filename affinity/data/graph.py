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
missing ids, weights that are not positive numbers. The edge list's checks are one function
(``edge_rows``), run by the worker and, on the node ids alone (``check_edge_list``), by the API at
submit, so a bad edge list is refused before its job is queued. A node table without feature columns gets
``dataset.feature_fallback``: one feature log(1 + degree) (default), 32 seeded standard normal
features, or an error. Isolated nodes (no edge) are kept and counted (``Graph.summary``, in
summary.json under dataset.graph).

Memory: the edge columns are read alone, ``EDGE_CHUNK_ROWS`` edges at a time, mapped to row
numbers as int64 and held once as a COO triple before the CSR; a million edges take tens of MB.
The check at submit keeps no chunk, so the API holds one chunk and the node ids at a time.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from affinity.data.files import sniff_format, task_labels
from affinity.data.table import DataError, TaskTable, check_table
from affinity.messages import first_line
from affinity.manifest import DatasetSpec

RANDOM_FEATURES = 32  # feature_fallback "random": standard normal features per node
EDGE_CHUNK_ROWS = 1 << 19  # edges read and checked at a time, by the worker and at submit alike


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
        raise DataError(_missing_ids(field, int(s.isna().sum()), what, int(np.flatnonzero(s.isna().to_numpy())[0])))
    if pd.api.types.is_integer_dtype(s):
        return s.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(s) and np.all(np.mod(s.to_numpy(), 1) == 0):
        return s.to_numpy().astype(np.int64)
    return s.astype(str).to_numpy(dtype=object)


def _missing_ids(field: str, count: int, what: str, row: int) -> str:
    return f"{field} has {count} missing node ids in {what} (first at row {row}); give every row a node id"


def _read_frame(path: Path, field: str, columns: list[str] | None = None) -> pd.DataFrame:
    fmt = sniff_format(path)
    try:
        frame = pd.read_parquet(path, columns=columns) if fmt == "parquet" else pd.read_csv(path, usecols=columns)
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{field}: cannot read {path.name} as {fmt.upper()}: {first_line(exc)}") from None
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
        raise DataError(f"{field}: cannot read the columns of {path.name}: {first_line(exc)}") from None


def _existing(path_text: str, field: str, what: str) -> Path:
    path = Path(path_text)
    if not path.is_file():
        raise DataError(f"{field} {path_text!r} is not an existing file; give the path to the {what} "
                        "(.csv, .parquet or .npz)")
    return path


def edge_column_problems(spec: DatasetSpec, path: Path) -> list[tuple[str, Any, str]]:
    """(field, value, message) of each column (CSV, Parquet) or array (NPZ) the manifest names that the edge list
    ``path`` lacks (dataset.edge_columns[i], dataset.edge_weight; dataset.edges for an NPZ without 'edges'), from
    its header alone. Read by the worker (``edge_rows``) and at submit (api/submission.py)."""
    npz = sniff_format(path) == "npz"
    if npz:
        try:
            with zipfile.ZipFile(path) as zf:
                header = sorted(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
        except (OSError, zipfile.BadZipFile) as exc:
            raise DataError(f"dataset.edges: cannot read {path.name} as NPZ: {first_line(exc)}") from None
        wanted = [("dataset.edges", "edges")]
    else:
        header = file_header(path, "dataset.edges")
        wanted = [(f"dataset.edge_columns[{i}]", c) for i, c in enumerate(spec.edge_columns)]
    if spec.edge_weight is not None:
        wanted.append(("dataset.edge_weight", spec.edge_weight))
    has = f"its {'arrays' if npz else 'columns'} are {header[:20]}"
    return [(field, name, f"{path.name} must hold an array 'edges' (edges × 2 node ids); {has}" if name == "edges"
             else f"{name!r} is not {'an array' if npz else 'a column'} of {path.name}; {has}")
            for field, name in wanted if name not in header]



def _edge_chunks(spec: DatasetSpec, path: Path, rows: int) -> Iterator[tuple[Any, Any, np.ndarray | None]]:
    """(source ids, target ids, weights or None) of the edge list ``path``, ``rows`` edges at a time, as read (no
    check); its columns were checked (``edge_column_problems``)."""
    src_col, dst_col = spec.edge_columns
    fmt = sniff_format(path)
    if fmt == "npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                edges = np.asarray(npz["edges"])
                weight = None if spec.edge_weight is None else np.asarray(npz[spec.edge_weight], dtype=np.float64)
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise DataError(f"dataset.edges: cannot read {path.name} as NPZ: {first_line(exc)}") from None
        if edges.ndim != 2 or edges.shape[1] != 2:
            raise DataError(f"dataset.edges {path.name}: 'edges' must have shape (edges, 2), got {edges.shape}")
        if weight is not None and weight.shape != (len(edges),):
            raise DataError(f"dataset.edge_weight {spec.edge_weight!r} has shape {weight.shape}; give one weight "
                            f"per edge ({len(edges)})")
        for start in range(0, len(edges), rows):
            yield (edges[start:start + rows, 0], edges[start:start + rows, 1],
                   None if weight is None else weight[start:start + rows])
        return
    columns = [src_col, dst_col] + ([spec.edge_weight] if spec.edge_weight else [])
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            frames: Any = (b.to_pandas() for b in pq.ParquetFile(path).iter_batches(batch_size=rows, columns=columns))
        else:
            frames = pd.read_csv(path, usecols=columns, chunksize=rows)
        with closing(frames):
            for frame in frames:
                weight = None if not spec.edge_weight else \
                    pd.to_numeric(frame[spec.edge_weight], errors="coerce").to_numpy(dtype=np.float64)
                yield frame[src_col].to_numpy(), frame[dst_col].to_numpy(), weight
    except Exception as exc:  # pandas and pyarrow raise their own types for unreadable files
        raise DataError(f"dataset.edges: cannot read {path.name} as {fmt.upper()}: {first_line(exc)}") from None


@dataclass
class _Tally:
    """The edges failing one check, over every chunk of an edge list: how many, and the first (row, value)."""

    count: int = 0
    row: int = -1
    value: Any = None

    def add(self, bad: np.ndarray, start: int, values: Any) -> None:
        n = int(bad.sum())
        if n and not self.count:
            i = int(np.flatnonzero(bad)[0])
            self.row, self.value = start + i, values[i].item() if hasattr(values[i], "item") else values[i]
        self.count += n


def node_index(ids: np.ndarray, spec: DatasetSpec, node_file: str) -> pd.Index:
    """The node ids as an index, refused when one is given twice."""
    index = pd.Index(ids)
    if not index.is_unique:
        dup = index[index.duplicated()]
        raise DataError(f"dataset.node_column {spec.node_column!r} has {len(dup)} duplicate node ids in {node_file} "
                        f"(e.g. {dup[0]!r}); give every node one row")
    return index


def edge_rows(spec: DatasetSpec, ids: np.ndarray, node_file: str,
              rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """The edge list ``dataset.edges`` as (source rows, target rows, weights or None) of the node table whose node
    ids are ``ids`` (read from ``node_file``), one chunk of ``rows`` edges (default EDGE_CHUNK_ROWS) at a time.

    Every check of an edge list is here, run by the worker (``read_graph_files``) and at submit
    (``check_edge_list``): unique node ids, the named columns, every weight a positive number, every id present and
    a node of the table. The chunks are read to the end and a DataError naming the field, the count of bad edges
    in the whole file and the first of them comes after the last chunk: use the chunks only once all are read.
    """
    rows = rows or EDGE_CHUNK_ROWS
    index = node_index(ids, spec, node_file)
    as_text: pd.Index | None = None  # the ids as strings, for edge ids that are not all whole numbers
    path = _existing(spec.edges or "", "dataset.edges", "edge list")
    problems = edge_column_problems(spec, path)
    if problems:
        raise DataError("; ".join(f"{field}: {message}" for field, _, message in problems))
    weights, missing, unknown = _Tally(), (_Tally(), _Tally()), (_Tally(), _Tally())
    start = 0
    for src, dst, weight in _edge_chunks(spec, path, rows):
        if weight is not None:
            weights.add(~(np.isfinite(weight) & (weight > 0)), start, weight)
        ends_rows = []
        for k, (ends, column) in enumerate(((src, spec.edge_columns[0]), (dst, spec.edge_columns[1]))):
            na = pd.isna(ends)
            missing[k].add(na, start, ends)
            if na.any():
                continue
            ends = _ids(ends, path.name, f"dataset.edge_columns {column!r}")
            if ends.dtype == object or ids.dtype == object:
                as_text = pd.Index(ids.astype(str)) if as_text is None else as_text
                pos = as_text.get_indexer(ends.astype(str))
            else:
                pos = index.get_indexer(ends)
            unknown[k].add(pos < 0, start, ends)
            ends_rows.append(pos.astype(np.int64))
        start += len(src)
        if len(ends_rows) == 2:
            yield ends_rows[0], ends_rows[1], weight
    if weights.count:
        raise DataError(f"dataset.edge_weight {spec.edge_weight!r} has {weights.count} weights that are not positive "
                        f"numbers in {path.name} (first at row {weights.row}); give every edge a weight > 0 or drop "
                        "those edges")
    for tally, column in zip(missing, spec.edge_columns):
        if tally.count:
            raise DataError(_missing_ids(f"dataset.edge_columns {column!r}", tally.count, path.name, tally.row))
    for tally, column in zip(unknown, spec.edge_columns):
        if tally.count:
            raise DataError(f"dataset.edges: {tally.count} edges name nodes that are not in the node table (e.g. "
                            f"{tally.value!r} in column {column!r}, row {tally.row}); add those nodes to {node_file} "
                            "or drop the edges")


def check_edge_list(spec: DatasetSpec) -> None:
    """The checks of ``edge_rows`` on the edge list and the node ids of ``dataset.source``, without reading the
    rest of the node table or keeping any edge: what the API runs at submit. DataError naming the field."""
    ids, node_file = node_ids(spec)
    for _ in edge_rows(spec, ids, node_file):
        pass


def _no_labels(spec: DatasetSpec, path: Path, keys: set[str]) -> DataError:
    return DataError(f"dataset.source {path.name} must hold 'Y' (nodes × tasks, NaN = not labelled) and optionally "
                     f"'X' and {spec.node_column!r}; it holds {sorted(keys)}")


def _no_node_column(spec: DatasetSpec, path: Path, columns: list[str]) -> DataError:
    return DataError(f"dataset.node_column {spec.node_column!r} is not a column of {path.name}; its columns are "
                     f"{columns[:20]}; name the column holding the node ids")


def node_ids(spec: DatasetSpec) -> tuple[np.ndarray, str]:
    """The node ids of the node table ``dataset.source`` (its id column or array alone; for an NPZ without one,
    the row numbers of its Y, from the array's header) and its file name, as ``_node_table`` finds them."""
    path = _existing(spec.source, "dataset.source", "node table")
    if sniff_format(path) == "npz":
        try:
            with zipfile.ZipFile(path) as zf:
                keys = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
                ids, y_shape = None, None
                if spec.node_column in keys:
                    with np.load(path, allow_pickle=False) as npz:
                        ids = np.asarray(npz[spec.node_column])
                elif "Y" in keys:
                    with zf.open("Y.npy") as f:
                        version = np.lib.format.read_magic(f)
                        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                else np.lib.format.read_array_header_2_0)
                        y_shape = read(f)[0]
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise DataError(f"dataset.source: cannot read {path.name} as NPZ: {first_line(exc)}") from None
        if ids is None and y_shape is None:
            raise _no_labels(spec, path, keys)
        if ids is None:
            ids = np.arange(y_shape[0] if y_shape else 0)  # a Y of no dimension: the worker names the shape
        return _ids(ids, path.name, "dataset.node_column"), path.name
    header = file_header(path, "dataset.source")
    if spec.node_column not in header:
        raise _no_node_column(spec, path, header)
    frame = _read_frame(path, "dataset.source", [spec.node_column])
    return _ids(frame[spec.node_column], path.name, "dataset.node_column"), path.name


def _node_table(spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray | None, list[str], np.ndarray, list[str], list[str], str]:
    """(node ids, features or None, feature names, labels, task names, task types, file name) of the node table."""
    path = _existing(spec.source, "dataset.source", "node table")
    if sniff_format(path) == "npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                keys = set(npz.files)
                if "Y" not in keys:
                    raise _no_labels(spec, path, keys)
                Y = np.asarray(npz["Y"], dtype=np.float64)
                Y = Y[:, None] if Y.ndim == 1 else Y
                X = np.asarray(npz["X"], dtype=np.float64) if "X" in keys else None
                ids = np.asarray(npz[spec.node_column]) if spec.node_column in keys else np.arange(len(Y))
        except DataError:
            raise
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise DataError(f"dataset.source: cannot read {path.name} as NPZ: {first_line(exc)}") from None
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
        raise _no_node_column(spec, path, list(frame.columns))
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
    chunks = list(edge_rows(spec, ids, node_file))
    src = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros(0, np.int64)
    dst = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros(0, np.int64)
    weight = np.concatenate([c[2] for c in chunks]) if chunks and spec.edge_weight else None
    adjacency, loops = adjacency_from_edges(len(ids), src, dst, weight, spec.directed)
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
