"""Shards as Ray tasks with declared CPU/GPU resources, retried by Ray when their worker dies.

``compute.address`` (or the ``RAY_ADDRESS`` environment variable) names an existing cluster;
without either, a Ray instance local to this machine is started. Shared inputs go into the object
store once per stage (``ray.put``); each task receives references, which Ray resolves on the node
(numpy arrays zero-copy). Progress advances as tasks complete; a cancelled job cancels the
tasks still pending (``ray.cancel(force=True)``).

``connect``/``disconnect`` are what the service's job processes use (api/jobproc.py): one
connection per job, made before the job starts (with a timeout enforced by the job process) and
shut down when it ends. ``ray.init`` installs Ray's own SIGTERM/SIGINT handlers in the driver;
``connect`` puts the caller's back, so a worker stopping still requeues its job.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

from affinity.messages import first_line
from affinity.manifest import ComputeSpec
from affinity.progress import Cancelled, Progress

log = logging.getLogger("task_affinity.ray")


def connect(address: str | None) -> None:
    """``ray.init`` at ``address`` (None: RAY_ADDRESS, else a local instance), keeping the caller's
    SIGTERM and SIGINT handlers. It blocks until Ray answers (Ray retries an unreachable address for
    minutes): callers that need a deadline enforce it around this call."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    main = threading.current_thread() is threading.main_thread()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 ignore_reinit_error=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local Ray instance"
        raise RuntimeError(f"compute.backend='ray': cannot connect to {where}: "
                           f"{first_line(exc)}; check compute.address / "
                           "RAY_ADDRESS") from None
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


def disconnect() -> None:
    """``ray.shutdown()`` if this process is connected: nothing of a job's Ray session outlives it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


class RayBackend:
    name = "ray"

    def __init__(self, spec: ComputeSpec) -> None:
        try:
            import ray
        except ImportError:  # pragma: no cover - ray is a dependency
            raise RuntimeError("compute.backend='ray' needs the ray package; pip install 'ray==2.60.0'") from None
        self.ray, self.spec = ray, spec
        self._remote: dict[tuple[Callable[..., Any], bool], Any] = {}
        if not ray.is_initialized():
            connect(spec.address)

    def parallelism(self) -> int:
        cpus = self.ray.cluster_resources().get("CPU", 1.0)
        return max(1, int(cpus // self.spec.cpus_per_task))

    def _task(self, fn: Callable[..., Any], gpu: bool) -> Any:
        key = (fn, gpu)
        if key not in self._remote:
            self._remote[key] = self.ray.remote(fn).options(
                num_cpus=self.spec.cpus_per_task, num_gpus=self.spec.gpus_per_task if gpu else 0,
                max_retries=self.spec.max_retries, retry_exceptions=False, name=fn.__name__)
        return self._remote[key]

    def map(self, fn: Callable[..., Any], shared: Sequence[Any], shards: Sequence[Any], progress: Progress,
            amounts: Sequence[float] | None = None, gpu: bool = False) -> list[Any]:
        ray = self.ray
        task = self._task(fn, gpu)
        refs_shared = [ray.put(obj) for obj in shared]  # once per stage, not once per shard
        refs = [task.remote(*refs_shared, shard) for shard in shards]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                for ref in ready:
                    i = index[ref]
                    results[i] = ray.get(ref)
                    progress.advance(amounts[i] if amounts is not None else 1.0)
                progress.check_cancelled()
        except Cancelled:
            for ref in pending:
                ray.cancel(ref, force=True, recursive=True)
            raise
        except ray.exceptions.RayError as exc:
            for ref in pending:
                ray.cancel(ref, force=True, recursive=True)
            cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None else exc
            lines = [ln for ln in str(cause).splitlines() if ln.strip()]
            raise RuntimeError(f"a Ray task of stage {fn.__name__} failed: {type(cause).__name__}: "
                               f"{lines[-1] if lines else cause!r}") from None
        return results
