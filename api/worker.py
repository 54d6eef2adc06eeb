"""Workers: claim queued jobs, run each in a process of its own under a heartbeat-renewed lease,
report progress, honour cancel.

A worker is one process running :meth:`Worker.run_forever`. It holds at most one job, which runs
in a job process (api/jobproc.py: memory-limited, its own Ray connection, killable). A thread
renews the job's lease every few seconds and carries back the cancel flag; the worker passes a
cancel or stop on to the job process, which stops at its next batch, and kills it if it has not
stopped within ``GRACE_SECONDS``. If the lease is lost (the job was requeued after this worker
stalled), the worker stops the job process and writes no status.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from typing import Any

from affinity.progress import Cancelled
from api.jobproc import STAGE_WEIGHTS, JobArgs, Shutdown, job_main, job_summary, overall_progress  # noqa: F401
from api.settings import Settings
from api.store import Claim, JobStore
from api.submission import ray_address, runnable_manifest

log = logging.getLogger("task_affinity.worker")

GRACE_SECONDS = 10.0  # a job process asked to stop (cancel, shutdown, lost lease) is killed after this


class LeaseLost(Cancelled):
    """The job was taken away from this worker (its lease expired and it was requeued)."""


_context: Any = None
_context_lock = threading.Lock()


def job_context() -> Any:
    """The multiprocessing context of job processes: a fork server that has imported the engine."""
    global _context
    with _context_lock:
        if _context is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["api.jobproc", "affinity.pipeline"])
            _context = ctx
        return _context


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
        if self.stopping():
            raise Shutdown(f"worker {self.worker_id} is stopping")
        return self.cancelled

    def stopping(self) -> bool:
        return self.shutdown.is_set() or (self.parent_pid is not None and os.getppid() != self.parent_pid)

    def request(self) -> str | None:
        """What the job process must be asked: 'lost', 'stop', 'cancel' or nothing."""
        if self.lost:
            return "lost"
        if self.stopping():
            return "stop"
        return "cancel" if self.cancelled else None


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
        log.info("worker %s started", self.worker_id)
        try:  # the fork server imports the engine now, not when the first job arrives
            job_context()
            from multiprocessing import forkserver

            forkserver.ensure_running()
        except Exception:  # noqa: BLE001 - the first job starts it, or says why it cannot
            log.exception("could not start the job fork server")
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
        out = self.settings.artifacts / claim.id
        with _Lease(self.store, claim, self.worker_id, self.settings, self.stop, self.parent_pid) as lease:
            try:
                manifest = runnable_manifest(claim.manifest, claim.owner, self.store, self.settings)
                if self.settings.compute_backend != "manifest":
                    manifest.compute.backend = self.settings.compute_backend
                on_ray = manifest.compute.backend == "ray"
                address = ray_address(manifest, self.settings) if on_ray else None
            except (ValueError, OSError) as exc:
                log.info("job %s failed: %s", claim.id, exc)
                self.store.finish(claim.id, self.worker_id, "failed", error=str(exc))
                return
            except Exception as exc:  # a bug: the traceback in the worker log, not in the API
                log.exception("job %s crashed before it started", claim.id)
                self.store.finish(claim.id, self.worker_id, "failed",
                                  error=f"internal error ({type(exc).__name__}); see the worker log")
                return
            args = JobArgs(job_id=claim.id, manifest=manifest.model_dump(mode="json"), out=str(out), ray=on_ray,
                           ray_address=address, ray_connect_seconds=self.settings.ray_connect_seconds,
                           memory_mb=self.settings.worker_memory_mb, torch_threads=self.settings.torch_threads)
            kind, payload, asked, exitcode = self._run_process(args, lease, self.settings.max_job_hours * 3600)
            if asked == "lost" or lease.lost:
                log.warning("job %s was requeued after this worker lost its lease", claim.id)
                return
            if kind == "succeeded":
                lease.beat()
                if not lease.lost:
                    self.store.finish(claim.id, self.worker_id, "succeeded", summary=payload)
            elif kind == "shutdown" or asked == "stop":  # stopping: whatever else happened, requeue
                self.store.release(claim.id, self.worker_id)
                log.info("worker %s stopping; job %s requeued", self.worker_id, claim.id)
            elif asked == "timeout":
                hours = self.settings.max_job_hours
                self.store.finish(claim.id, self.worker_id, "failed",
                                  error=f"the job ran longer than this server's limit of {hours:g} h per job "
                                        "(TASK_AFFINITY_MAX_JOB_HOURS) and was stopped; make it smaller (fewer "
                                        "epochs, subsets or candidate groupings, a smaller model or dataset) or "
                                        "ask the operator to raise the limit")
            elif kind == "cancelled" or (kind is None and asked == "cancel"):
                self.store.finish(claim.id, self.worker_id, "cancelled", error="cancelled by request")
            elif kind == "failed":
                self.store.finish(claim.id, self.worker_id, "failed", error=str(payload))
            else:
                error = died_message(exitcode, self.settings.worker_memory_mb)
                log.error("job %s: %s", claim.id, error)
                self.store.finish(claim.id, self.worker_id, "failed", error=error)

    def _run_process(self, args: JobArgs, lease: _Lease, limit_seconds: float
                     ) -> tuple[str | None, Any, str | None, int | None]:
        """Run the job process to its end: (result kind, payload, what it was asked, exit code).
        A job running past ``limit_seconds`` is asked to stop ('timeout')."""
        ctx = job_context()
        conn, child_conn = ctx.Pipe()
        proc = ctx.Process(target=job_main, args=(child_conn, args), name=f"task-affinity-job-{args.job_id}")
        proc.start()
        child_conn.close()
        deadline = time.monotonic() + limit_seconds
        kind: str | None = None
        payload: Any = None
        asked: str | None = None
        since = 0.0  # when the process was asked to stop, or sent its result
        closed = False
        try:
            while True:
                if closed:
                    proc.join(0.2)
                else:
                    try:
                        until = time.monotonic() + 0.2
                        while conn.poll(max(0.0, until - time.monotonic())):
                            message = conn.recv()
                            if message[0] == "progress":
                                lease.report(message[1])
                            elif message[0] == "result" and kind is None:
                                kind, payload = message[1], message[2]
                                since = time.monotonic()
                    except (EOFError, OSError):
                        closed = True
                if not proc.is_alive():
                    break
                now = time.monotonic()
                if kind is None and asked is None:
                    asked = lease.request() or ("timeout" if now > deadline else None)
                    if asked is not None:
                        since = now
                        try:
                            conn.send("stop" if asked in ("stop", "lost") else "cancel")
                        except OSError:
                            pass
                elif now - since > GRACE_SECONDS:
                    log.warning("job %s: its process did not stop within %.0f s; killing it", args.job_id,
                                GRACE_SECONDS)
                    proc.kill()
                    proc.join()
                    break
        finally:
            if proc.is_alive():  # this worker is failing: never leave a job process behind
                proc.kill()
            proc.join()
            conn.close()
        if kind is None and asked is None:
            asked = lease.request()
        return kind, payload, asked, proc.exitcode


def died_message(exitcode: int | None, memory_mb: float) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = (f"; most likely the machine ran out of memory (the kernel's OOM killer), although a job may use "
                f"{memory_mb:g} MB (TASK_AFFINITY_WORKER_MEMORY_MB): lower that setting to what the machine has "
                "per worker, or make the job smaller") if exitcode == -signal.SIGKILL else ""
        return f"the job's process was killed by {name}{hint}"
    return f"the job's process ended (exit code {exitcode}) without a result; see the worker log"
