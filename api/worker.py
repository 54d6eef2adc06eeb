"""Workers: claim queued jobs, run them with a heartbeat-renewed lease, report progress, honour cancel.

A worker is one process running :meth:`Worker.run_forever`. It holds at most one job. A thread
renews the job's lease every few seconds and carries back the cancel flag; the stage code polls
that flag between batches (``Progress.check_cancelled``). If the lease is lost (the job was
requeued after this worker stalled), the worker drops the job without writing a status.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from affinity.progress import Cancelled, Progress, ProgressEvent
from api.settings import Settings
from api.store import Claim, JobStore
from api.submission import runnable_manifest

log = logging.getLogger("task_affinity.worker")

# Share of a job's time each stage takes on the default jobs (for the overall 0–1 progress).
STAGE_WEIGHTS = {
    "starting": (0.0, 0.0), "loading data": (0.0, 0.02), "base training": (0.02, 0.40),
    "projected gradients": (0.42, 0.25), "surrogate fits": (0.67, 0.25), "exact fine-tuning": (0.42, 0.50),
    "grouping": (0.92, 0.05), "writing artifacts": (0.97, 0.03),
}


def overall_progress(stage: str, fraction: float) -> float:
    start, width = STAGE_WEIGHTS.get(stage, (0.42, 0.50))
    return min(1.0, start + width * fraction)


class LeaseLost(Cancelled):
    """The job was taken away from this worker (its lease expired and it was requeued)."""


class Shutdown(Cancelled):
    """The worker process was asked to stop; its job goes back to the queue."""


class _Lease:
    """Heartbeat thread: renews the lease, publishes the latest progress, reads the cancel flag."""

    def __init__(self, store: JobStore, claim: Claim, worker_id: str, settings: Settings,
                 shutdown: threading.Event, parent_pid: int | None) -> None:
        self.store, self.claim, self.worker_id, self.settings = store, claim, worker_id, settings
        self.shutdown, self.parent_pid = shutdown, parent_pid
        self.interval = min(settings.lease_seconds / 3.0, 2.0)
        self.cancelled = False
        self.lost = False
        self._pending: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{claim.id}", daemon=True)

    def __enter__(self) -> "_Lease":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self, values: dict[str, Any]) -> None:
        with self._lock:
            self._pending = values

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        with self._lock:
            values, self._pending = self._pending, None
        try:
            flag = self.store.heartbeat(self.claim.id, self.worker_id, self.settings.lease_seconds, values)
        except Exception:  # a database hiccup: keep the job, try again next beat
            log.exception("heartbeat failed for %s", self.claim.id)
            return
        if flag is None:
            self.lost = True
        elif flag:
            self.cancelled = True

    def check(self) -> bool:
        if self.lost:
            raise LeaseLost(f"job {self.claim.id} was requeued after this worker lost its lease")
        if self.shutdown.is_set() or (self.parent_pid is not None and os.getppid() != self.parent_pid):
            raise Shutdown(f"worker {self.worker_id} is stopping")
        return self.cancelled


class Worker:
    def __init__(self, settings: Settings, store: JobStore, worker_id: str | None = None,
                 parent_pid: int | None = None) -> None:
        self.settings, self.store, self.parent_pid = settings, store, parent_pid
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.stop = threading.Event()

    def run_forever(self) -> None:
        stop = self.stop
        if self.settings.worker_nice:
            os.nice(self.settings.worker_nice)
        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        log.info("worker %s started", self.worker_id)
        while not stop.is_set():
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                log.info("worker %s: parent %d is gone; stopping", self.worker_id, self.parent_pid)
                break
            try:
                ran = self.run_once()
            except Exception:  # database down: wait and retry rather than die
                log.exception("worker loop error")
                ran = False
            if not ran:
                stop.wait(self.settings.poll_seconds)

    def run_once(self) -> bool:
        """Requeue expired jobs, claim one, run it. Returns whether a job was run."""
        self.store.requeue_expired(self.settings.max_attempts)
        claim = self.store.claim(self.worker_id, self.settings.lease_seconds)
        if claim is None:
            return False
        log.info("worker %s runs %s (attempt %d)", self.worker_id, claim.id, claim.attempts)
        self.run_job(claim)
        return True

    def run_job(self, claim: Claim) -> None:
        from affinity.pipeline import run_job

        out = self.settings.artifacts / claim.id
        with _Lease(self.store, claim, self.worker_id, self.settings, self.stop, self.parent_pid) as lease:
            last = [0.0]

            def on_progress(ev: ProgressEvent) -> None:
                now = time.monotonic()
                if now - last[0] < 0.25 and ev.fraction < 1.0:
                    return
                last[0] = now
                lease.report({"stage": ev.stage, "stage_progress": round(ev.fraction, 4),
                              "progress": round(overall_progress(ev.stage, ev.fraction), 4),
                              "eta_seconds": None if ev.eta is None else round(ev.eta, 1)})

            progress = Progress(on_progress, lease.check)
            try:
                manifest = runnable_manifest(claim.manifest, claim.owner, self.store, self.settings)
                if self.settings.compute_backend != "manifest":
                    manifest.compute.backend = self.settings.compute_backend
                if manifest.compute.backend == "ray" and self.settings.ray_address and not manifest.compute.address:
                    manifest.compute.address = self.settings.ray_address
                result = run_job(manifest, out, progress)
            except LeaseLost as exc:
                log.warning("%s", exc)
                return
            except Shutdown:
                self.store.release(claim.id, self.worker_id)
                log.info("worker %s stopping; job %s requeued", self.worker_id, claim.id)
                return
            except Cancelled:
                self.store.finish(claim.id, self.worker_id, "cancelled", error="cancelled by request")
                return
            except (ValueError, RuntimeError, OSError) as exc:
                log.info("job %s failed: %s", claim.id, exc)
                self.store.finish(claim.id, self.worker_id, "failed", error=str(exc))
                return
            except Exception as exc:  # a bug: keep the traceback in the worker log, not in the API
                log.error("job %s crashed:\n%s", claim.id, traceback.format_exc())
                self.store.finish(claim.id, self.worker_id, "failed",
                                  error=f"internal error ({type(exc).__name__}); see the worker log")
                return
            lease.beat()
            if lease.lost:
                return
            self.store.finish(claim.id, self.worker_id, "succeeded", summary=job_summary(result, out))

def job_summary(result: Any, out: Path) -> dict[str, Any]:
    names = result.data.task_names
    g = result.grouping
    return {
        "tasks": len(names), "rows": int(result.data.X.shape[0]), "features": int(result.data.X.shape[1]),
        "k": int(g.k), "groups": [[names[i] for i in members] for members in g.groups],
        "objective": float(g.objective), "estimator": result.estimate.method, "device": result.device,
        "backend": result.backend,
        "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        "artifacts": sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith(".")),
    }
