"""Uploaded dataset files: streamed to disk under a size limit, their format found from the bytes."""

from __future__ import annotations

import math
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from affinity.data.files import sniff_format
from affinity.data.table import DataError

SUFFIX = {"csv": ".csv", "parquet": ".parquet", "npz": ".npz", "images": ".npz"}  # images: an NPZ of images


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


REWRITE = "the file is damaged or not of this format: write it again and upload it"


def reason(exc: BaseException) -> str:
    """A library's error as one printable line of at most 200 characters (a corrupt file's bytes can reach the
    message)."""
    first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return "".join(c if c.isprintable() else "?" for c in first)[:200].strip()


def inspect_file(path: Path, limit: int | None = None) -> Inspected:
    """``_inspect_file``, refused when the table has no rows (a Parquet or NPZ table is checked as a CSV is)."""
    info = _inspect_file(path, limit)
    if info.rows < 1:
        raise BadUpload(f"the {info.format.upper()} table has no rows; upload a table with one row per example")
    return info


def _inspect_file(path: Path, limit: int | None = None) -> Inspected:
    """Format, row count and columns of a stored upload; BadUpload if it cannot be read as a table.

    ``limit`` bounds the decompressed size too (413): an NPZ's arrays or a Parquet file's row groups
    at their full size, found from headers and metadata without unpacking them.
    """
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
            # Its size once read: the columns' uncompressed pages, or the float64 table the engine makes of it
            # (dictionary and run-length encodings keep a column of zeros a few bytes long on disk).
            md = meta.metadata
            pages = sum(md.row_group(i).column(j).total_uncompressed_size
                        for i in range(md.num_row_groups) for j in range(md.num_columns))
            unpacked = max(pages, md.num_rows * md.num_columns * 8)
            if limit is not None and unpacked > limit:
                raise BadUpload(f"the Parquet table ({md.num_rows} rows × {md.num_columns} columns) decompresses to "
                                f"{unpacked} bytes, over this server's upload limit of {limit} bytes "
                                "(TASK_AFFINITY_UPLOAD_LIMIT_MB); upload fewer rows or columns, or ask the operator to "
                                "raise the limit", status=413)
            # every page decoded once, a batch of about CSV_CHUNK_CELLS cells at a time: a corrupt data page (the
            # footer reads fine) is refused here, not in the worker (a CSV is parsed whole at upload too)
            for _ in meta.iter_batches(batch_size=max(1, CSV_CHUNK_CELLS // max(1, md.num_columns))):
                pass
            return Inspected(fmt, int(meta.metadata.num_rows), [str(c) for c in meta.schema_arrow.names])
        if fmt == "npz":
            arrays = check_npz(path, limit)
            if "images" in arrays:  # data kind images: the columns are the images and the tasks of Y
                if "Y" not in arrays:
                    raise BadUpload(f"an images NPZ must hold 'Y' (N × tasks, NaN = not labelled) beside 'images'; "
                                    f"this one holds {sorted(arrays)}")
                images, Y = arrays["images"].shape, arrays["Y"].shape
                return Inspected("images", images[0], ["images"] + [f"task_{i}" for i in range(npz_tasks(Y))])
            X, Y = arrays["X"].shape, arrays["Y"].shape
            return Inspected(fmt, X[0], [f"x{i}" for i in range(X[1])] + [f"task_{i}" for i in range(npz_tasks(Y))])
        rows, columns = csv_shape(path)
    except BadUpload:
        raise
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise BadUpload(f"cannot read the file as {fmt.upper()}: {reason(exc)}; {REWRITE}") from None
    except Exception as exc:  # pyarrow and zipfile raise their own types for corrupt files
        raise BadUpload(f"cannot read the file as {fmt.upper()}: {type(exc).__name__}: {reason(exc)}; "
                        f"{REWRITE}") from None
    if len(columns) < 2 or rows < 1:
        raise BadUpload(f"the CSV has {rows} rows and {len(columns)} columns; a dataset needs feature "
                        "columns and at least one label column")
    return Inspected(fmt, rows, columns)


CSV_CHUNK_CELLS = 1 << 20  # cells parsed at a time: the API's memory stays bounded whatever the upload's size


def csv_shape(path: Path) -> tuple[int, list[str]]:
    """Rows and column names of a CSV, parsed in chunks of about CSV_CHUNK_CELLS cells (a whole 200 MB upload
    parsed at once took about ten times its size in the API process)."""
    columns = [str(c) for c in pd.read_csv(path, encoding="utf-8", nrows=0).columns]
    rows = 0
    with pd.read_csv(path, encoding="utf-8", chunksize=max(1, CSV_CHUNK_CELLS // max(1, len(columns)))) as reader:
        for chunk in reader:
            rows += len(chunk)
    return rows, columns


def inspect_edges(path: Path, limit: int | None = None) -> Inspected:
    """Format, edge count and columns of a stored edge list (a graph's second file): a CSV or Parquet table of at
    least two columns, or an NPZ holding 'edges' (edges × 2 node ids, numbers); BadUpload otherwise."""
    if path.stat().st_size == 0:
        raise BadUpload("the edge list is empty; upload a CSV, Parquet or NPZ edge list")
    try:
        fmt = sniff_format(path)
    except DataError as exc:
        raise BadUpload(str(exc), status=415) from None
    if fmt != "npz":
        info = _inspect_file(path, limit) if fmt == "parquet" else None
        if info is None:
            try:
                rows, columns = csv_shape(path)
            except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
                raise BadUpload(f"cannot read the edge list as CSV: {reason(exc)}") from None
            info = Inspected(fmt, rows, columns)
        if len(info.columns) < 2:
            raise BadUpload(f"the edge list has the columns {info.columns}; it needs two node-id columns "
                            "(dataset.edge_columns, default source and target)")
        return info
    try:
        with zipfile.ZipFile(path) as zf:
            names = [i.filename[:-4] for i in zf.infolist() if i.filename.endswith(".npy")]
            if "edges" not in names:
                raise BadUpload(f"an NPZ edge list must hold an array 'edges' (edges × 2 node ids); this one holds "
                                f"{sorted(names)}")
            with zf.open("edges.npy") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
            unpacked = sum(i.file_size for i in zf.infolist())
    except BadUpload:
        raise
    except Exception as exc:  # zipfile and numpy raise their own types for corrupt files
        raise BadUpload(f"cannot read the edge list as NPZ: {type(exc).__name__}") from None
    if len(shape) != 2 or shape[1] != 2 or dtype.hasobject or dtype.kind not in "biu":
        raise BadUpload(f"the NPZ array 'edges' must be edges × 2 whole-number node ids; got {tuple(shape)} {dtype}")
    if limit is not None and unpacked > limit:
        raise BadUpload(f"the NPZ edge list decompresses to {unpacked} bytes, over this server's upload limit of "
                        f"{limit} bytes (TASK_AFFINITY_UPLOAD_LIMIT_MB)", status=413)
    return Inspected(fmt, int(shape[0]), sorted(names))


@dataclass(frozen=True)
class NpyMember:
    """One array of an NPZ as its .npy header tells it."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    header_bytes: int
    info: zipfile.ZipInfo

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def npz_tasks(y_shape: tuple[int, ...]) -> int:
    return 1 if len(y_shape) == 1 else y_shape[1]


def npz_members(path: Path) -> dict[str, NpyMember]:
    """The .npy headers (shape, dtype) of the arrays in an NPZ, read from the zip member streams: only
    the first bytes of each member are decompressed. BadUpload if it is not an NPZ of X and Y as a
    dataset needs them (X rows × features, Y rows or rows × tasks, numeric)."""
    members: dict[str, NpyMember] = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[:-4]
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise BadUpload(f"{name}.npy is in .npy format version {version}; save the arrays with "
                                    "numpy.savez or numpy.savez_compressed")
                members[name] = NpyMember(name, tuple(int(n) for n in shape), dtype, f.tell(), info)
    if "images" in members:
        return _image_members(members)
    if not {"X", "Y"} <= set(members):
        raise BadUpload(f"an NPZ dataset must hold arrays 'X' and 'Y' (a table) or 'images' and 'Y' (images); this "
                        f"one holds {sorted(members)}")
    X, Y = members["X"], members["Y"]
    if len(X.shape) != 2 or len(Y.shape) not in (1, 2) or Y.shape[0] != X.shape[0]:
        raise BadUpload(f"NPZ arrays must be X (rows × features) and Y (rows × tasks) with equal rows; "
                        f"got X {X.shape}, Y {Y.shape}")
    for m in (X, Y):
        if m.dtype.hasobject or m.dtype.kind not in "biuf":
            raise BadUpload(f"NPZ array {m.name} has dtype {m.dtype}; a dataset's arrays are numbers (float or int)")
    return members


def _image_members(members: dict[str, NpyMember]) -> dict[str, NpyMember]:
    """An images NPZ (affinity/data/images.py): 'images' N×C×H×W (or N×H×W), 'Y' N × tasks (or N), an optional
    'mask' of Y's shape; numeric. BadUpload naming the array otherwise."""
    images = members["images"]
    if len(images.shape) not in (3, 4) or 0 in images.shape:
        raise BadUpload(f"'images' must be N×C×H×W (or N×H×W for one channel), got shape {images.shape}")
    if images.dtype.hasobject or images.dtype.kind not in "biuf":
        raise BadUpload(f"NPZ array images has dtype {images.dtype}; give uint8 or float pixels")
    if "Y" not in members:  # labels in a table (dataset.labels): a data-root file only
        return members
    Y = members["Y"]
    if len(Y.shape) not in (1, 2) or Y.shape[0] != images.shape[0]:
        raise BadUpload(f"'Y' must be N × tasks with one row per image; got 'images' {images.shape}, 'Y' {Y.shape}")
    mask = members.get("mask")
    if mask is not None and (mask.shape != Y.shape or mask.dtype.kind not in "bui"):
        raise BadUpload(f"'mask' must be boolean with the shape of 'Y' {Y.shape}; got {mask.shape} {mask.dtype}")
    if Y.dtype.hasobject or Y.dtype.kind not in "biuf":
        raise BadUpload(f"NPZ array Y has dtype {Y.dtype}; give numbers (NaN = not labelled)")
    return members


def image_shape(members: dict[str, NpyMember]) -> tuple[int, int, int]:
    """(channels, height, width) of an images NPZ's 'images'."""
    shape = members["images"].shape
    return (1, *shape[1:]) if len(shape) == 3 else shape[1:]


def check_npz(path: Path, limit: int | None) -> dict[str, NpyMember]:
    """``npz_members``, refused (413) when the arrays' decompressed size exceeds ``limit``; then each
    member is streamed through in small blocks (its CRC checked, its length matched to its header),
    so a corrupt or truncated archive is refused now and memory stays bounded whatever the size."""
    members = npz_members(path)
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        unpacked = max(sum(i.file_size for i in infos), sum(m.nbytes + m.header_bytes for m in members.values()))
        if limit is not None and unpacked > limit:
            shapes = ", ".join(f"{m.name} {m.shape} {m.dtype}" for m in members.values() if m.name in ("X", "images", "Y"))
            raise BadUpload(f"the NPZ's arrays decompress to {unpacked} bytes ({shapes}), over this server's upload "
                            f"limit of {limit} bytes (TASK_AFFINITY_UPLOAD_LIMIT_MB); upload fewer rows or "
                            "features, or ask the operator to raise the limit", status=413)
        for m in members.values():
            if m.header_bytes + m.nbytes != m.info.file_size:
                raise BadUpload(f"{m.name}.npy holds {m.info.file_size - m.header_bytes} bytes of data but its header "
                                f"says {m.shape} {m.dtype} ({m.nbytes} bytes); the file is truncated or corrupt")
        for info in infos:
            with zf.open(info) as f:
                while f.read(1 << 20):
                    pass
    return members


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
