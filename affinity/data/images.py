"""Data kind ``images``: an NPZ of images (N×C×H×W) with labels, or a folder of image files with a label table.

The images become ``X`` of shape (rows, channels, height, width): uint8 images scaled to [0, 1],
float images as given, then (``dataset.standardize``, the default) standardized per pixel with the
training rows' statistics by the common split (affinity/data/split.py). Labels follow the table
rules (binary 0/1 or regression, NaN or a False mask entry = not labelled, the same checks, split
and errors).

- **NPZ** (``dataset.source``): an array ``images`` (N×C×H×W, or N×H×W for one channel; uint8 or
  float) and either an array ``Y`` (N × tasks, or N for one task; NaN = not labelled) with optional
  ``mask`` (the shape of Y; False = not labelled) and ``task_names``, or a label table
  (``dataset.labels``) with one row per image, in order, and the columns of ``dataset.tasks``.
- **Folder** (``dataset.source`` a directory): a label table (``dataset.labels``, CSV or Parquet)
  whose column ``dataset.image_column`` (default ``file``) names each row's image file in the folder
  (PNG, JPEG, ... — what Pillow reads), with the columns of ``dataset.tasks``. Every image must have
  the same size; grey images have one channel, colour images three (grey ones are then repeated).
- **Built-in** ``digits``: scikit-learn's 8×8 digits (affinity/data/digits.py) as single-channel
  images, pixel values scaled from 0–16 to [0, 1], with the same tasks and params.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affinity.data.digits import make_digits
from affinity.data.files import npz_task_names, sniff_format, task_labels
from affinity.data.table import DataError, TaskTable, check_labels
from affinity.messages import first_line
from affinity.manifest import DatasetSpec

GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def digit_images(params: dict[str, Any]) -> TaskTable:
    """The built-in digits (same tasks, params and labels) as 1×8×8 images in [0, 1]."""
    table = make_digits(params)
    X = table.X.reshape(-1, 1, 8, 8) / 16.0
    return TaskTable(X=X, Y=table.Y, task_names=table.task_names, task_types=table.task_types,
                     feature_names=["pixels"], metadata={**table.metadata, "image_shape": [1, 8, 8]})


IMAGE_BUILTINS = {"digits": digit_images}


def read_images(spec: DatasetSpec) -> TaskTable:
    """The images and labels named by a manifest's dataset section (kind images), checked."""
    if spec.source in IMAGE_BUILTINS:
        table = IMAGE_BUILTINS[spec.source](spec.params)
    else:
        if spec.params:
            raise DataError("dataset.params applies to built-in datasets only; remove it for a file source")
        path = Path(spec.source)
        if path.is_dir():
            table = _read_folder(path, spec)
        elif path.is_file():
            if sniff_format(path) != "npz":
                raise DataError(
                    f"dataset.source {path.name} is not an NPZ; for kind images give an .npz holding 'images' "
                    "(N×C×H×W) or a folder of image files with dataset.labels"
                )
            table = _read_npz(path, spec)
        else:
            raise DataError(
                f"dataset.source {spec.source!r} is neither a built-in image dataset ({', '.join(IMAGE_BUILTINS)}) "
                "nor an existing .npz file or folder; give one of them"
            )
    check_labels(table, spec.min_rows_per_task)
    return table


def _pixels(images: np.ndarray, name: str) -> np.ndarray:
    """``images`` as float64 (rows, C, H, W): rank and values checked, uint8 scaled to [0, 1]."""
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise DataError(
            f"{name}: 'images' must be N×C×H×W (or N×H×W for one channel), got shape {images.shape}; "
            "save one image per row"
        )
    if images.shape[0] == 0 or 0 in images.shape[1:]:
        raise DataError(f"{name}: 'images' has shape {images.shape}; give at least one image of at least 1×1 pixels")
    if images.dtype.kind not in "buif":
        raise DataError(f"{name}: 'images' has dtype {images.dtype}; give uint8 or float pixel values")
    X = images.astype(np.float64) / (255.0 if images.dtype == np.uint8 else 1.0)
    bad = ~np.isfinite(X).reshape(len(X), -1).all(axis=1)
    if bad.any():
        raise DataError(
            f"{name}: 'images' has NaN or infinite pixels in {int(bad.sum())} images (first: row "
            f"{int(np.flatnonzero(bad)[0])}); pixels must be finite"
        )
    return X


def _table(X: np.ndarray, Y: np.ndarray, names: list[str], types: list[str], source: str) -> TaskTable:
    return TaskTable(X=X, Y=Y, task_names=names, task_types=types, feature_names=["pixels"],
                     metadata={"source": source, "image_shape": [int(n) for n in X.shape[1:]]})


def _read_npz(path: Path, spec: DatasetSpec) -> TaskTable:
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            if "images" not in keys:
                raise DataError(
                    f"{path.name} holds no array 'images' (it holds {sorted(keys)}); an images NPZ holds 'images' "
                    "(N×C×H×W) and 'Y' (N × tasks), or give dataset.kind 'table' for an X/Y table"
                )
            X = _pixels(npz["images"], path.name)
            Y = np.asarray(npz["Y"], dtype=np.float64) if "Y" in keys else None
            mask = np.asarray(npz["mask"]) if "mask" in keys else None
            stored = [str(s) for s in npz["task_names"]] if "task_names" in keys else None
    except (ValueError, OSError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"cannot read {path.name} as NPZ: {first_line(exc)}") from None
    n = X.shape[0]
    if Y is not None and spec.labels is not None:
        raise DataError(f"dataset.labels is given but {path.name} holds 'Y' too; give the labels once (remove one)")
    if Y is None:
        if spec.labels is None:
            raise DataError(
                f"{path.name} has no labels: add an array 'Y' (N × tasks, NaN = not labelled) or give dataset.labels "
                "(a label table, one row per image)"
            )
        frame, name = _label_frame(spec)
        if len(frame) != n:
            raise DataError(
                f"dataset.labels {name} has {len(frame)} rows but 'images' in {path.name} has {n}; give one label row "
                "per image, in order"
            )
        Y, names, types = task_labels(frame, spec, name)
        return _table(X, Y, names, types, path.name)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2:
        raise DataError(f"{path.name}: 'Y' must be N × tasks (or N for one task), got shape {Y.shape}")
    if Y.shape[0] != n:
        raise DataError(f"{path.name}: 'Y' has {Y.shape[0]} rows but 'images' has {n}; give one label row per image")
    if mask is not None:
        if mask.ndim == 1:
            mask = mask[:, None]
        if mask.shape != Y.shape:
            raise DataError(f"{path.name}: 'mask' has shape {mask.shape} but 'Y' has {Y.shape}; give one entry per label")
        if mask.dtype.kind not in "bui" or not np.isin(mask, (0, 1)).all():
            raise DataError(f"{path.name}: 'mask' must be boolean (True = labelled), got dtype {mask.dtype}")
        Y = np.where(mask.astype(bool), Y, np.nan)
    names, types = npz_task_names(spec, stored, Y.shape[1], path.name)
    return _table(X, Y, names, types, path.name)


def _label_frame(spec: DatasetSpec) -> tuple[pd.DataFrame, str]:
    """dataset.labels read as a frame with string column names."""
    path = Path(spec.labels or "")
    if not path.is_file():
        raise DataError(f"dataset.labels {spec.labels!r} is not a file; give the path to a .csv or .parquet label table")
    fmt = sniff_format(path)
    if fmt == "npz":
        raise DataError(f"dataset.labels {path.name} is NPZ; give a .csv or .parquet label table")
    try:
        frame = pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"dataset.labels: cannot read {path.name} as {fmt.upper()}: {first_line(exc)}") \
            from None
    frame.columns = [str(c) for c in frame.columns]
    return frame, path.name


def _read_folder(folder: Path, spec: DatasetSpec) -> TaskTable:
    from PIL import Image, UnidentifiedImageError

    if spec.labels is None:
        raise DataError(
            "dataset.labels is required for a folder of images; give a .csv or .parquet table with a column "
            f"{spec.image_column!r} (dataset.image_column) naming each image file and one column per task"
        )
    frame, name = _label_frame(spec)
    column = spec.image_column
    if column not in frame.columns:
        raise DataError(
            f"dataset.image_column {column!r} is not a column of {name}; its columns are {list(frame.columns)[:20]}"
        )
    if spec.tasks is not None and column in [t.name for t in spec.tasks]:
        raise DataError("dataset.tasks names the image column; a label column cannot be the image file")
    if len(frame) == 0:
        raise DataError(f"dataset.labels {name} has no rows; give one row per image")
    root = folder.resolve()
    images, first = [], None
    for row, file in enumerate(frame[column].astype(str)):
        path = (root / file).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise DataError(
                f"dataset.labels row {row}: image file {file!r} is not in {folder}; give file names relative to "
                "dataset.source"
            )
        try:
            with Image.open(path) as im:
                im.load()
                mode = "L" if im.mode in GREY_MODES else "RGB"
                pixels = np.asarray(im.convert(mode))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(
                f"{file} (dataset.labels row {row}) is not an image file Pillow can read ({type(exc).__name__}); "
                "give PNG, JPEG, BMP, TIFF or another image format"
            ) from None
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        if first is None:
            first = (file, pixels.shape[1:])
        elif pixels.shape[1:] != first[1]:
            h, w = pixels.shape[1:]
            raise DataError(
                f"image {file!r} is {w}×{h} pixels but {first[0]!r} is {first[1][1]}×{first[1][0]}; give images of "
                "one size (resize them first)"
            )
        images.append(pixels)
    channels = max(p.shape[0] for p in images)
    X = _pixels(np.stack([np.repeat(p, channels // p.shape[0], axis=0) for p in images]), folder.name)
    Y, names, types = task_labels(frame, spec, name)
    return _table(X, Y, names, types, folder.name)
