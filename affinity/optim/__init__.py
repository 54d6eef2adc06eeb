"""Multitask optimizers: how the per-task losses of a batch become parameter updates.

``equal`` (mean of the losses), the torchjd aggregators (``torchjd_methods``) and connection
strength (``connection_strength``, with the task priority it learns in ``priority``), all behind
one interface (``base.MTLMethod``), chosen by name from ``training.mtl_method``.
"""

from __future__ import annotations

from collections.abc import Callable

from affinity.manifest import MTL_METHODS, TrainingSpec
from affinity.optim.base import MTLMethod, TaskBatch
from affinity.optim.connection_strength import ConnectionStrength
from affinity.optim.equal import EqualWeighting
from affinity.optim.torchjd_methods import AGGREGATORS, TorchJDMethod

METHODS: dict[str, Callable[[TrainingSpec], MTLMethod]] = {
    "equal": lambda spec: EqualWeighting(),
    **{name: (lambda spec, name=name: TorchJDMethod(name)) for name in AGGREGATORS},
    "connection_strength": ConnectionStrength.from_spec,
}
assert set(METHODS) == set(MTL_METHODS), "manifest.MTL_METHODS and optim.METHODS must list the same methods"


def make_method(name: str, spec: TrainingSpec | None = None) -> MTLMethod:
    """A fresh optimizer (per training run: some keep state) for ``training.mtl_method = name``."""
    if name not in METHODS:
        raise ValueError(f"training.mtl_method={name!r} is not known; use one of {sorted(METHODS)}")
    return METHODS[name](spec if spec is not None else TrainingSpec(mtl_method=name))


__all__ = ["METHODS", "MTLMethod", "TaskBatch", "make_method"]
