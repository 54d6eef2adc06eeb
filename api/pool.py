"""The worker processes `serve` runs: started, watched, restarted when one dies, and reported by /readyz.

A supervisor thread in the `serve` process polls its workers every ``poll`` seconds. A worker that
exited (killed, crashed, out of memory) is reaped at once (no `<defunct>` process stays behind) and
started again after a backoff: 1 s after the first death, doubling up to ``max_backoff`` while
workers keep dying within ``stable_seconds`` of their start, back to 1 s once one has run that long.

The pool's state is a small JSON file (``TASK_AFFINITY_WORKER_POOL_FILE``, set by `serve` for its
API processes, which may be several): how many workers are expected and their process ids. An API
process counts the alive ones itself from /proc, so /readyz is right even between two polls of the
supervisor, and a process id reused by another program does not count.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("task_affinity.serve")

WORKER_MARK = b"worker"  # in the command line of every worker process serve starts


class WorkerPool:
    def __init__(self, cmd: list[str], env: dict[str, str], size: int, state_file: Path | None, poll: float = 0.5,
                 min_backoff: float = 1.0, max_backoff: float = 60.0, stable_seconds: float = 60.0) -> None:
        self.cmd, self.env, self.size, self.state_file = cmd, env, size, state_file
        self.poll, self.min_backoff, self.max_backoff = poll, min_backoff, max_backoff
        self.stable_seconds = stable_seconds
        self.procs: list[subprocess.Popen | None] = [None] * size
        self.started_at = [0.0] * size
        self.restart_at = [0.0] * size
        self.failures = [0] * size
        self.restarts = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="worker-pool", daemon=True)

    def start(self) -> None:
        with self._lock:
            for slot in range(self.size):
                self._start(slot)
            self._write()
        if self.size:
            self._thread.start()

    def _start(self, slot: int) -> None:
        self.procs[slot] = subprocess.Popen(self.cmd, env=self.env)
        self.started_at[slot] = time.monotonic()

    def _supervise(self) -> None:
        while not self._stopping.wait(self.poll):
            with self._lock:
                if self._stopping.is_set():
                    return
                changed = False
                now = time.monotonic()
                for slot, proc in enumerate(self.procs):
                    if proc is not None and proc.poll() is not None:  # poll() reaps it
                        lived = now - self.started_at[slot]
                        self.failures[slot] = 1 if lived >= self.stable_seconds else self.failures[slot] + 1
                        delay = min(self.max_backoff, self.min_backoff * 2 ** (self.failures[slot] - 1))
                        log.error("worker process %d exited (%s) after %.0f s; restarting it in %.0f s", proc.pid,
                                  describe_exit(proc.returncode), lived, delay)
                        self.procs[slot] = None
                        self.restart_at[slot] = now + delay
                        changed = True
                    elif proc is None and now >= self.restart_at[slot]:
                        self._start(slot)
                        self.restarts += 1
                        log.info("worker process %d started (restart %d)", self.procs[slot].pid, self.restarts)
                        changed = True
                if changed:
                    self._write()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop supervising, then terminate the workers (SIGTERM: each puts its job back in the queue)."""
        self._stopping.set()
        with self._lock:
            procs = [p for p in self.procs if p is not None]
            for p in procs:
                if p.poll() is None:
                    p.terminate()
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)

    def _write(self) -> None:
        if self.state_file is None:
            return
        state = {"expected": self.size, "pids": [p.pid for p in self.procs if p is not None],
                 "supervisor": os.getpid()}
        tmp = self.state_file.with_name(f".{self.state_file.name}.tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_file)


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def alive(pid: int) -> bool:
    """The process exists, is not a zombie, and is a worker (its id was not reused by something else)."""
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():  # no procfs: ask the kernel whether the id exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
    return state not in ("Z", "X", "x") and WORKER_MARK in cmdline


def pool_status(state_file: Path | None) -> dict[str, Any] | None:
    """{"expected": N, "alive": M} of the pool `serve` runs, or None when this process is not part of one."""
    if state_file is None:
        return None
    try:
        state = json.loads(Path(state_file).read_text())
    except (OSError, ValueError):
        return {"expected": None, "alive": 0}
    return {"expected": int(state.get("expected", 0)), "alive": sum(alive(int(p)) for p in state.get("pids", []))}
