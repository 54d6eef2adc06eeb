"""Uploaded dataset files: streamed to disk under a size limit, their format found from the bytes."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from affinity.data.files import sniff_format
from affinity.data.table import DataError

SUFFIX = {"csv": ".csv", "parquet": ".parquet", "npz": ".npz"}


class UploadTooLarge(Exception):
    pass


class BadUpload(Exception):
    """The file is not a readable CSV, Parquet or NPZ table (status 415 for an unknown type, else 422)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Inspected:
    format: str
    rows: int
    columns: list[str]


def save_stream(src: BinaryIO, dest: Path, limit: int, chunk: int = 1 << 20) -> int:
    """Copy ``src`` to ``dest`` atomically; stop with UploadTooLarge past ``limit`` bytes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    size = 0
    try:
        with open(tmp, "wb") as out:
            while True:
                block = src.read(chunk)
                if not block:
                    break
                size += len(block)
                if size > limit:
                    raise UploadTooLarge(size)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return size


def inspect_file(path: Path) -> Inspected:
    """Format, row count and columns of a stored upload; BadUpload if it cannot be read as a table."""
    if path.stat().st_size == 0:
        raise BadUpload("the file is empty; upload a CSV, Parquet or NPZ table")
    try:
        fmt = sniff_format(path)
    except DataError as exc:
        raise BadUpload(str(exc), status=415) from None
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(path)
            return Inspected(fmt, int(meta.metadata.num_rows), [str(c) for c in meta.schema_arrow.names])
        if fmt == "npz":
            with np.load(path, allow_pickle=False) as npz:
                if not {"X", "Y"} <= set(npz.files):
                    raise BadUpload(f"an NPZ dataset must hold arrays 'X' and 'Y'; this one holds {sorted(npz.files)}")
                X, Y = npz["X"], npz["Y"]
            if X.ndim != 2 or Y.ndim not in (1, 2) or Y.shape[0] != X.shape[0]:
                raise BadUpload(f"NPZ arrays must be X (rows × features) and Y (rows × tasks) with equal rows; "
                                f"got X {X.shape}, Y {Y.shape}")
            n_tasks = 1 if Y.ndim == 1 else Y.shape[1]
            return Inspected(fmt, int(X.shape[0]), [f"x{i}" for i in range(X.shape[1])]
                             + [f"task_{i}" for i in range(n_tasks)])
        frame = pd.read_csv(path, encoding="utf-8")
    except BadUpload:
        raise
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadUpload(f"cannot read the file as {fmt.upper()}: {first}") from None
    except Exception as exc:  # pyarrow and zipfile raise their own types for corrupt files
        raise BadUpload(f"cannot read the file as {fmt.upper()}: {type(exc).__name__}") from None
    if frame.shape[1] < 2 or frame.shape[0] < 1:
        raise BadUpload(f"the CSV has {frame.shape[0]} rows and {frame.shape[1]} columns; a dataset needs feature "
                        "columns and at least one label column")
    return Inspected(fmt, int(frame.shape[0]), [str(c) for c in frame.columns])


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
