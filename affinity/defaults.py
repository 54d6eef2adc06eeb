"""The built-in jobs: full manifests for the built-in datasets (examples/*.json are their dumps)."""

from __future__ import annotations

from typing import Any

from affinity.data.planted import DEFAULTS as PLANTED_DEFAULTS
from affinity.manifest import Manifest, parse_manifest

# Every built-in job uses the generic default model and training; only the data differ.
BUILTIN_JOBS: dict[str, dict[str, Any]] = {
    "planted": {
        "dataset": {"source": "planted", "params": dict(PLANTED_DEFAULTS)},
        "grouping": {"k": "auto"},
    },
    "digits": {
        "dataset": {"source": "digits", "params": {"label_fraction": 0.5, "seed": 0}},
        "estimation": {"subset_size": 5, "num_subsets": 400},
        "grouping": {"k": "auto"},
    },
}


def builtin_manifest(name: str = "planted") -> Manifest:
    if name not in BUILTIN_JOBS:
        raise ValueError(f"no built-in job {name!r}; choose one of {sorted(BUILTIN_JOBS)}")
    return parse_manifest(BUILTIN_JOBS[name])
