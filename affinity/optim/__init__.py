"""Multitask optimizers: how the per-task losses of a batch become one parameter update."""

from __future__ import annotations

from affinity.optim.equal import EqualWeighting
from affinity.optim.base import MTLMethod

METHODS: dict[str, type[MTLMethod]] = {"equal": EqualWeighting}


def make_method(name: str) -> MTLMethod:
    if name not in METHODS:
        raise ValueError(f"training.mtl_method={name!r} is not known; use one of {sorted(METHODS)}")
    return METHODS[name]()


__all__ = ["METHODS", "MTLMethod", "make_method"]
