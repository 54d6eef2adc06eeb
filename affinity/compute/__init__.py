"""Where the heavy stages run: in this process (``local``) or as tasks on a Ray cluster (``ray``).

A stage is split into shards (rows of gradient pairs, batches of subsets) and a pure shard
function maps (shared inputs, shard) to arrays. Both backends run the same shard functions on the
same shards, so their results agree to floating-point tolerance. Shared inputs (the base model,
the data, the projected features) are put into Ray's object store once per stage, not once per
shard.
"""

from __future__ import annotations

from affinity.compute.base import Backend, LocalBackend
from affinity.manifest import ComputeSpec


def make_backend(spec: ComputeSpec | None) -> Backend:
    if spec is None or spec.backend == "local":
        return LocalBackend()
    from affinity.compute.ray_backend import RayBackend

    return RayBackend(spec)


__all__ = ["Backend", "LocalBackend", "make_backend"]
