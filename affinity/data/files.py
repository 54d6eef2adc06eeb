"""Reading a user's wide table from CSV, Parquet or NPZ (content-checked, not trusted by name)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from affinity.data.table import DataError, TaskTable
from affinity.messages import first_line
from affinity.manifest import DatasetSpec

PARQUET_MAGIC = b"PAR1"
ZIP_MAGIC = b"PK\x03\x04"


def sniff_format(path: Path) -> str:
    """Detect csv / parquet / npz from the file's bytes."""
    with path.open("rb") as fh:
        head = fh.read(4096)
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    if head.startswith(ZIP_MAGIC):
        return "npz"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path.name} is UTF-16 text; save it as UTF-8 CSV (or give a .parquet or .npz file)")
    if b"\x00" in head:
        raise DataError(
            f"{path.name} is neither CSV text, Parquet nor NPZ (it holds NUL bytes: binary content of an unknown "
            "format, or UTF-16 text); give a UTF-8 .csv, a .parquet or an .npz file"
        )
    return "csv"


def _read_frame_file(path: Path, fmt: str) -> pd.DataFrame:
    """A CSV (UTF-8) or Parquet file as a frame; DataError naming the file when it cannot be read."""
    try:
        return pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read {path.name} as CSV: it is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                        f"position {exc.start}); save it as UTF-8") from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {path.name} as {fmt.upper()}: {first_line(exc)}") from None


def read_table_file(spec: DatasetSpec) -> TaskTable:
    path = Path(spec.source)
    if not path.is_file():
        raise DataError(
            f"dataset.source {spec.source!r} is neither a built-in dataset (planted, digits) nor an existing "
            "file; give a built-in name or the path to a .csv, .parquet or .npz file"
        )
    fmt = sniff_format(path)
    if fmt == "npz":
        return _read_npz(path, spec)
    frame = _read_frame_file(path, fmt)
    return _from_frame(frame, spec, path.name)


def read_frame(spec: DatasetSpec) -> tuple[pd.DataFrame, str]:
    """A CSV or Parquet file as a frame with string column names (NPZ refused: it has no columns)."""
    path = Path(spec.source)
    if not path.is_file():
        raise DataError(
            f"dataset.source {spec.source!r} is neither a built-in dataset nor an existing file; give a built-in "
            "name or the path to a .csv or .parquet file"
        )
    fmt = sniff_format(path)
    if fmt == "npz":
        raise DataError(f"dataset.source {path.name} is NPZ, which has no text columns; give a .csv or .parquet file")
    frame = _read_frame_file(path, fmt)
    frame.columns = [str(c) for c in frame.columns]
    return frame, path.name


def task_labels(frame: pd.DataFrame, spec: DatasetSpec, name: str) -> tuple[np.ndarray, list[str], list[str]]:
    """The label columns named by dataset.tasks as a float array (NaN = not labelled), with names and types."""
    columns = list(frame.columns)
    if spec.tasks is None:
        raise DataError(
            f"dataset.tasks is required for a table ({name}); list the label columns, e.g. "
            '"tasks": ["label_a", {"name": "price", "type": "regression"}]'
        )
    task_names = [t.name for t in spec.tasks]
    task_types = [t.type for t in spec.tasks]
    missing = [c for c in task_names if c not in columns]
    if missing:
        raise DataError(f"task columns {missing} are not in {name}; its columns are {columns[:20]}")
    for c in task_names:
        if not pd.api.types.is_numeric_dtype(frame[c]):
            coerced = pd.to_numeric(frame[c], errors="coerce")
            bad = frame[c].notna() & coerced.isna()
            if bad.any():
                raise DataError(
                    f"task column {c!r} holds non-numeric labels (e.g. {str(frame[c][bad].iloc[0])!r}); use 0/1 "
                    "for binary tasks, numbers for regression, and an empty cell for 'not labelled'"
                )
            frame[c] = coerced
    return frame[task_names].to_numpy(dtype=np.float64), task_names, task_types


def _from_frame(frame: pd.DataFrame, spec: DatasetSpec, name: str) -> TaskTable:
    frame.columns = columns = [str(c) for c in frame.columns]
    Y, task_names, task_types = task_labels(frame, spec, name)
    features = spec.features if spec.features is not None else [c for c in columns if c not in task_names]
    missing = [c for c in features if c not in columns]
    if missing:
        raise DataError(f"feature columns {missing} are not in {name}; its columns are {columns[:20]}")
    non_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        c = non_numeric[0]
        example = frame[c].dropna().astype(str).iloc[0] if frame[c].notna().any() else ""
        raise DataError(
            f"feature columns {non_numeric} are not numeric (e.g. {c!r} holds {example!r}); encode them as "
            "numbers or leave them out of dataset.features"
        )
    X = frame[features].to_numpy(dtype=np.float64)
    return TaskTable(X=X, Y=Y, task_names=task_names, task_types=task_types, feature_names=list(features),
                     metadata={"source": name})


def npz_task_names(spec: DatasetSpec, stored: list[str] | None, n_tasks: int, file: str) -> tuple[list[str], list[str]]:
    """The names and types of an NPZ's label columns (Y's): dataset.tasks (one entry per column), else the NPZ's
    own 'task_names', else task_0, task_1, … of dataset.task_type."""
    if spec.tasks is not None:
        if len(spec.tasks) != n_tasks:
            raise DataError(f"dataset.tasks lists {len(spec.tasks)} tasks but 'Y' in {file} has {n_tasks} columns; "
                            "give one entry per column of Y")
        return [t.name for t in spec.tasks], [t.type for t in spec.tasks]
    if stored is not None and len(stored) != n_tasks:
        raise DataError(f"{file}: 'task_names' has {len(stored)} names but 'Y' has {n_tasks} columns; give one "
                        "name per column")
    return stored or [f"task_{i}" for i in range(n_tasks)], [spec.task_type] * n_tasks


def _read_npz(path: Path, spec: DatasetSpec) -> TaskTable:
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            if not {"X", "Y"} <= keys:
                raise DataError(
                    f"{path.name} must hold arrays 'X' (rows × features) and 'Y' (rows × tasks, NaN = not "
                    f"labelled); it holds {sorted(keys)}"
                )
            X = np.asarray(npz["X"], dtype=np.float64)
            Y = np.asarray(npz["Y"], dtype=np.float64)
            stored_names = [str(s) for s in npz["task_names"]] if "task_names" in keys else None
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot read {path.name} as NPZ: {first_line(exc)}") from None
    if X.ndim != 2:
        raise DataError(f"{path.name}: X must be 2-D (rows × features), got shape {X.shape}")
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2:
        raise DataError(f"{path.name}: Y must be 2-D (rows × tasks), got shape {Y.shape}")
    names, types = npz_task_names(spec, stored_names, Y.shape[1], path.name)
    features = [f"x{i}" for i in range(X.shape[1])]
    return TaskTable(X=X, Y=Y, task_names=names, task_types=types, feature_names=features,
                     metadata={"source": path.name})
