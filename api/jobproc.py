"""One job in a process of its own, started by the worker that claimed it (api/worker.py).

Why a process per job:

- memory: the job process may grow by at most ``TASK_AFFINITY_WORKER_MEMORY_MB`` past its start
  (``RLIMIT_DATA``: private writable memory, what torch's and numpy's arrays take), so a job whose
  estimate was wrong fails with a clear error instead of taking the machine down, and everything
  it allocated is returned when it ends;
- Ray: the job connects to its cluster (with a timeout) and disconnects when it ends; no Ray state
  outlives the job, so the next job, perhaps another owner's with another cluster, starts clean;
- stopping: the worker can always stop a job, also while Ray connects or a stage is stuck in one
  long operation: it asks (``cancel`` or ``stop`` on the pipe, honoured at the next batch), then
  kills the process after a grace period.

The worker keeps the lease, the database and the job's status; the job process only computes. It
sends ``("progress", values)`` and, once, ``("result", kind, payload)`` with kind ``succeeded``
(payload: the summary), ``failed`` (the error), ``cancelled`` or ``shutdown`` (the job goes back to
the queue). It exits at once when the worker is gone (the pipe closes), so a job is never run by
an orphan next to the worker that took it over.

Processes are forked from a fork server that has imported the engine once (``multiprocessing``'s
``forkserver``): a job starts in milliseconds, in a process that has run nothing else.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affinity.progress import Cancelled, Progress, ProgressEvent

log = logging.getLogger("task_affinity.job")

EXIT_ORPHANED = 75  # the worker went away; the job is requeued when its lease expires

# Share of a job's time each stage takes on the default jobs (for the overall 0–1 progress).
STAGE_WEIGHTS = {
    "starting": (0.0, 0.0), "connecting to Ray": (0.0, 0.0), "loading data": (0.0, 0.02),
    "base training": (0.02, 0.23), "projected gradients": (0.25, 0.15), "surrogate fits": (0.40, 0.15),
    "exact fine-tuning": (0.25, 0.30), "training subsets from scratch": (0.25, 0.30),
    "grouping": (0.55, 0.02), "checking groupings": (0.57, 0.30), "checking random partitions": (0.87, 0.10),
    "writing artifacts": (0.97, 0.03),
}
# the check's passes: "checking groupings 3/10: fold 2, seed 1" (the candidates), then, where a split is chosen,
# "checking random partitions …" (the random control); pass i of m takes its share of the stage's band
CHECKING = re.compile(r"(checking groupings|checking random partitions) (\d+)/(\d+)")


def overall_progress(stage: str, fraction: float) -> float:
    checking = CHECKING.match(stage)
    if checking:
        i, m = int(checking.group(2)), int(checking.group(3))
        start, width = STAGE_WEIGHTS[checking.group(1)]
        return min(1.0, start + width * (i - 1 + fraction) / max(m, 1))
    start, width = STAGE_WEIGHTS.get(stage, (0.25, 0.30))
    return min(1.0, start + width * fraction)


class Shutdown(Cancelled):
    """The worker process was asked to stop; its job goes back to the queue."""


@dataclass(frozen=True)
class JobArgs:
    """What a job process needs (plain data: it is pickled to the process)."""

    job_id: str
    manifest: dict[str, Any]  # the runnable manifest (dataset source resolved), as JSON
    out: str
    ray: bool = False
    ray_address: str | None = None
    ray_connect_seconds: float = 30.0
    memory_mb: float | None = None  # how far the process may grow past its start; None: unlimited
    torch_threads: int | None = None


def progress_values(ev: ProgressEvent) -> dict[str, Any]:
    """A progress event as the job's status columns. The ETA is unknown (None) until the stage has
    advanced and once it is complete: a job that has not yet finished one epoch has no ETA, not 0."""
    advanced = 0.0 < ev.done < ev.total
    eta = ev.eta if advanced else None
    return {"stage": ev.stage, "stage_progress": round(ev.fraction, 4),
            "progress": round(overall_progress(ev.stage, ev.fraction), 4),
            "eta_seconds": None if eta is None else round(eta, 1)}


class Reporter:
    """Progress events to the worker: at most one per ``every`` seconds within a stage, but always the
    first of a new stage and the last of one. The job's overall progress never goes back: a stage that runs
    again (the cross-fitted agreement's folds after the check's, a stage a plug-in repeats) shows its own stage and
    stage progress while the overall figure holds until it passes the highest one reported."""

    def __init__(self, send: Any, every: float = 0.25) -> None:
        self.send, self.every = send, every
        self._stage: str | None = None
        self._at = 0.0
        self._high = 0.0

    def __call__(self, ev: ProgressEvent) -> None:
        now = time.monotonic()
        if ev.stage == self._stage and now - self._at < self.every and ev.fraction < 1.0:
            return
        self._stage, self._at = ev.stage, now
        values = progress_values(ev)
        self._high = values["progress"] = max(values["progress"], self._high)
        self.send(("progress", values))


class _Control:
    """The job process's side of the pipe: a thread reads the worker's requests (and notices when the
    worker is gone); while Ray connects, the same thread enforces the connection timeout."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.cancel = threading.Event()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._finished = False
        self._connect: tuple[float, str] | None = None  # (deadline, message) while ray.init runs
        threading.Thread(target=self._watch, name="job-control", daemon=True).start()

    def send(self, message: tuple) -> None:
        with self._lock:
            if self._finished:
                return
            if message[0] == "result":
                self._finished = True
            try:
                self.conn.send(message)
            except OSError:  # the worker is gone
                os._exit(EXIT_ORPHANED)

    def check(self) -> bool:
        """Progress's cancel check: raises Shutdown when the worker stops, True once cancelled."""
        if self.stop.is_set():
            raise Shutdown("the worker is stopping; the job goes back to the queue")
        return self.cancel.is_set()

    def connecting(self, seconds: float, message: str) -> None:
        self._connect = (time.monotonic() + seconds, message)

    def connected(self) -> None:
        self._connect = None

    def _watch(self) -> None:
        while True:
            try:
                if self.conn.poll(0.1):
                    request = self.conn.recv()
                    (self.cancel if request == "cancel" else self.stop).set()
            except (EOFError, OSError):
                os._exit(EXIT_ORPHANED)  # the worker died: the job is requeued, it must not run twice
            connect = self._connect
            if connect is None:
                continue
            # ray.init blocks the main thread, which cannot see a request or a deadline: end here.
            if self.stop.is_set():
                self._end("shutdown", None)
            elif self.cancel.is_set():
                self._end("cancelled", None)
            elif time.monotonic() > connect[0]:
                self._end("failed", connect[1])

    def _end(self, kind: str, payload: Any) -> None:
        self.send(("result", kind, payload))
        os._exit(0)


def data_in_use() -> int | None:
    """This process's private writable memory (VmData, bytes): what RLIMIT_DATA limits."""
    try:
        with open("/proc/self/status") as f:
            match = re.search(r"^VmData:\s+(\d+)\s+kB", f.read(), re.M)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def limit_memory(mb: float | None) -> int | None:
    """Let this process grow by at most ``mb`` MB of private writable memory from now (RLIMIT_DATA);
    returns the limit in bytes (None: not limited).

    RLIMIT_DATA, not RLIMIT_AS: the address space of a process with torch loaded is large and mostly
    not memory (libraries, thread stacks reserved; a Ray driver maps the whole object store), while
    every array torch or numpy allocates is private writable memory and counts. Set after Ray has
    connected, so Ray's own processes are not limited by it.
    """
    import resource

    if mb is None:
        return None
    now = data_in_use()
    if now is None:
        log.warning("cannot read this process's memory use; the job runs without a memory limit")
        return None
    limit = now + int(mb * 2**20)
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return limit


def out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text
                                              or "Cannot allocate memory" in text)


def memory_message(exc: BaseException, mb: float | None) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    limit = f"{mb:g} MB" if mb is not None else "the machine's memory"
    return (f"the job ran out of memory: a job may use {limit} (TASK_AFFINITY_WORKER_MEMORY_MB) and this one "
            f"needed more ({type(exc).__name__}: {first}); make the job smaller (model.hidden, "
            "estimation.projection_dim, estimation.exact_batch, estimation.memory_mb or the dataset) or ask the "
            "operator to raise TASK_AFFINITY_WORKER_MEMORY_MB")


def advice_summary(advice: dict[str, Any] | None) -> dict[str, Any]:
    """The advice in a job record: verdict, recommendation, predicted gain, reliability (``seed_sd``: how far one
    training of the recommended grouping strays from seed to seed, ``choice.seed_spread``)."""
    if not advice:
        return {}
    rel = advice.get("reliability") or {}
    control = advice.get("random_control") or {}
    over_alone = advice.get("split_over_alone") or {}
    return {"verdict": advice["verdict"], "recommendation": advice["recommendation"],
            "predicted_gain": advice.get("predicted_gain"),
            "reliability": {"split_half": (rel.get("split_half") or {}).get("spearman_brown"),
                            "stability_ari": (rel.get("stability") or {}).get("mean_ari"),
                            "vs_random_partitions": control.get("gain_over_random"),
                            "best_split_vs_one_model_per_task": over_alone.get("gain_over_alone"),
                            "seed_sd": (advice.get("training_noise") or {}).get("gain_sd")}}


def model_summary(result: Any) -> dict[str, Any]:
    """The base model in a job record: its kind, its parameters, those trained (and, where the model counts them,
    the adapters' and the heads'), and those whose gradients the estimator took."""
    model = result.model
    params = list(model.parameters())
    counts = model.trainable_counts() if callable(getattr(model, "trainable_counts", None)) else {}
    info = {"kind": result.manifest.model.kind, "parameters": sum(p.numel() for p in params),
            "trained": sum(p.numel() for p in params if p.requires_grad),
            **{k: int(v) for k, v in counts.items() if k in ("lora", "neck", "heads")}}
    differentiated = result.estimate.info.get("n_params")
    if differentiated is not None:
        info["differentiated"] = int(differentiated)
    return info


def job_summary(result: Any, out: Path) -> dict[str, Any]:
    names = result.data.task_names
    g = result.grouping
    tokens = result.data.metadata.get("tokens") if result.data.texts is not None else None
    return {
        "tasks": len(names), "rows": int(result.data.X.shape[0]),
        **({"tokens": int(tokens)} if tokens is not None else {"features": int(result.data.X.shape[1])}),
        "model": model_summary(result),
        "k": int(g.k), "groups": [[names[i] for i in members] for members in g.groups],
        "objective": float(g.objective), "estimator": result.estimate.method, "device": result.device,
        "backend": result.backend,
        **advice_summary(getattr(result, "advice", None)),
        "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        "artifacts": sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith(".")),
    }


def job_main(conn: Any, args: JobArgs) -> None:
    """The job process: run the job, send its result, exit."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    control = _Control(conn)
    for sig in (signal.SIGTERM, signal.SIGINT):  # e.g. a service manager stopping every process of the worker
        signal.signal(sig, lambda *_: control.stop.set())
    reporter = Reporter(control.send)
    progress = Progress(reporter, control.check)
    try:
        kind, payload = _run(args, control, progress)
    except Shutdown:
        kind, payload = "shutdown", None
    except Cancelled:
        kind, payload = "cancelled", None
    except Exception as exc:  # noqa: BLE001 - every failure becomes the job's error
        if control.stop.is_set():  # e.g. Ray's processes stopped with the worker: not the job's fault
            kind, payload = "shutdown", None
            log.info("job %s stopped with the worker: %s", args.job_id, exc)
        elif out_of_memory(exc):
            kind, payload = "failed", memory_message(exc, args.memory_mb)
            log.info("job %s ran out of memory: %s", args.job_id, exc)
        elif isinstance(exc, (ValueError, RuntimeError, OSError)):
            kind, payload = "failed", str(exc)
            log.info("job %s failed: %s", args.job_id, exc)
        else:  # a bug: the traceback goes to the worker's log, not to the API
            log.error("job %s crashed:\n%s", args.job_id, traceback.format_exc())
            kind, payload = "failed", f"internal error ({type(exc).__name__}); see the worker log"
    control.send(("result", kind, payload))
    if args.ray:
        from affinity.compute.ray_backend import disconnect

        try:
            disconnect()
        except Exception:  # noqa: BLE001 - the process ends anyway
            log.exception("ray.shutdown failed")


def _run(args: JobArgs, control: _Control, progress: Progress) -> tuple[str, Any]:
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    from affinity.manifest import Manifest
    from affinity.pipeline import run_job

    manifest = Manifest.model_validate(args.manifest)
    if args.ray:
        from affinity.compute.ray_backend import connect

        address = args.ray_address or os.environ.get("RAY_ADDRESS")
        what = f"connect to the Ray cluster at {address}" if address else "start a local Ray instance"
        progress.start("connecting to Ray", 1)
        control.connecting(args.ray_connect_seconds,
                           f"compute.backend 'ray': could not {what} within {args.ray_connect_seconds:g} s "
                           "(TASK_AFFINITY_RAY_CONNECT_SECONDS); check that the cluster is up and reachable from "
                           "the worker")
        connect(args.ray_address)  # puts back the SIGTERM/SIGINT handlers above, which ray.init replaces
        control.connected()
        progress.finish()
    limit_memory(args.memory_mb)
    out = Path(args.out)
    result = run_job(manifest, out, progress)
    return "succeeded", job_summary(result, out)
