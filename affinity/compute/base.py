"""The backend interface and the in-process backend."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from affinity.progress import Progress


class ShardProgress(Progress):
    """Progress inside one shard run in-process: forwards advances and cancel checks to the stage's."""

    def __init__(self, parent: Progress) -> None:
        super().__init__()
        self._parent = parent

    def start(self, stage: str, total: float) -> None:  # the stage is already started by the caller
        self._parent.check_cancelled()

    def advance(self, amount: float = 1.0) -> None:
        self._parent.advance(amount)

    def finish(self) -> None:
        pass

    def check_cancelled(self) -> None:
        self._parent.check_cancelled()


class Backend(Protocol):
    name: str

    def parallelism(self) -> int:
        """How many shards can run at once (to size shards)."""
        ...

    def map(self, fn: Callable[..., Any], shared: Sequence[Any], shards: Sequence[Any], progress: Progress,
            amounts: Sequence[float] | None = None, gpu: bool = False) -> list[Any]:
        """``[fn(*shared, shard) for shard in shards]``, advancing ``progress`` by ``amounts[i]`` per shard.

        In-process, ``fn`` is also given ``progress=`` (a ShardProgress) for finer updates and
        cancel checks; remotely, progress advances as shards complete and cancellation cancels
        the shards still pending.
        """
        ...


def shard_batch(backend: Backend, items: int, preferred: int) -> int:
    """Items per shard: ``preferred``, made small enough that a parallel backend gets two shards per worker."""
    workers = backend.parallelism()
    if workers > 1:
        return max(1, min(preferred, -(-items // (2 * workers))))
    return preferred


class LocalBackend:
    name = "local"

    def parallelism(self) -> int:
        return 1

    def map(self, fn: Callable[..., Any], shared: Sequence[Any], shards: Sequence[Any], progress: Progress,
            amounts: Sequence[float] | None = None, gpu: bool = False) -> list[Any]:
        sub = ShardProgress(progress)
        out = []
        for shard in shards:
            out.append(fn(*shared, shard, progress=sub))
            progress.check_cancelled()
        return out
