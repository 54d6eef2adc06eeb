"""docs/library.md runs exactly as written, and finds the two kinds of tasks it builds."""

import re

import numpy as np
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "library.md"


def test_library_doc_runs_as_written():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 2
    scope: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), scope)
    result = scope["result"]
    assert result.matrix.shape == (6, 6) and len(result.subsets) == 20
    a, b = [0, 2, 4], [1, 3, 5]
    within_a = result.matrix[a][:, a][~np.eye(3, dtype=bool)].mean()
    assert within_a > result.matrix[a][:, b].mean() + 0.02  # the tasks on the first coordinate help each other most
