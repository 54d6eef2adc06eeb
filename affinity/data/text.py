"""Data kind ``text``: a CSV/Parquet table with a text column (or two, for pairs) and one label column per task.

Labels follow the table rules (binary 0/1 or regression, an empty cell = not labelled, the same
checks, split and errors); the texts stay strings here and the model kind turns them into its
inputs (a transformer tokenizes them once, affinity/transformer.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from affinity.data.files import read_frame, task_labels
from affinity.data.sentences import make_sentences
from affinity.data.table import DataError, TaskTable, check_labels
from affinity.manifest import DatasetSpec

TEXT_BUILTINS = {"text": make_sentences}


def _texts(frame: pd.DataFrame, column: str, field: str, name: str) -> list[str]:
    if column not in frame.columns:
        raise DataError(
            f"dataset.{field} {column!r} is not a column of {name}; its columns are {list(frame.columns)[:20]}"
        )
    values = frame[column]
    odd = values.map(lambda v: not (v is None or isinstance(v, (str, int, float, np.integer, np.floating))))
    if odd.any():
        row = int(np.flatnonzero(odd.to_numpy())[0])
        raise DataError(
            f"dataset.{field} column {column!r} holds a {type(values.iloc[row]).__name__} at row {row}, not a text; "
            "store the texts as strings"
        )
    blank = values.isna() | values.astype(str).str.strip().eq("")
    if blank.any():
        row = int(np.flatnonzero(blank.to_numpy())[0])
        raise DataError(
            f"dataset.{field} column {column!r} has {int(blank.sum())} empty texts (first at row {row}); "
            "fill them or drop those rows"
        )
    return values.astype(str).tolist()


def read_text(spec: DatasetSpec) -> TaskTable:
    """The texts and labels named by a manifest's dataset section (kind text), checked."""
    if spec.source in TEXT_BUILTINS:
        table = TEXT_BUILTINS[spec.source](spec.params)
    else:
        if spec.params:
            raise DataError("dataset.params applies to built-in datasets only; remove it for a file source")
        frame, name = read_frame(spec)
        if spec.text is None:
            raise DataError("dataset.text is required for a text file; name the column that holds the texts")
        if spec.text in [t.name for t in spec.tasks or []] or spec.text_pair in [t.name for t in spec.tasks or []]:
            raise DataError("dataset.text names a task column; a label column cannot be the text")
        first = _texts(frame, spec.text, "text", name)
        columns = [spec.text]
        if spec.text_pair is not None:
            second = _texts(frame, spec.text_pair, "text_pair", name)
            texts = [(a, b) for a, b in zip(first, second)]
            columns.append(spec.text_pair)
        else:
            texts = [(a,) for a in first]
        Y, names, types = task_labels(frame, spec, name)
        table = TaskTable(X=np.zeros((len(texts), 0)), Y=Y, task_names=names, task_types=types,
                          feature_names=columns, texts=texts, metadata={"source": name})
    if not table.texts:
        raise DataError("the dataset has no rows; give a table with at least one text per row")
    check_labels(table, spec.min_rows_per_task)
    return table
