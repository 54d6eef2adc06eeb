"""Starting the real service processes (``task-affinity serve`` / ``worker``) for tests."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(home: Path, db_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"TASK_AFFINITY_HOME": str(home), "TASK_AFFINITY_DATABASE_URL": db_url,
                "TASK_AFFINITY_LEASE_SECONDS": "2", "TASK_AFFINITY_POLL_SECONDS": "0.2",
                "TASK_AFFINITY_TORCH_THREADS": "1"})
    env.update(extra)
    return env


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "affinity.cli", "worker"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def start_server(env: dict[str, str], port: int, log: Path, workers: int = 0, api_processes: int = 1
                 ) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "affinity.cli", "serve", "--port", str(port),
                             "--workers", str(workers), "--api-processes", str(api_processes)],
                            env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become ready: {log.read_text()[-2000:]}")


@contextmanager
def served(folder: Path, workers: int = 1) -> Iterator[tuple[str, str, dict[str, str]]]:
    """A `serve` process on SQLite in ``folder``: (base URL, the key it printed, its environment)."""
    env = service_env(folder / "home", f"sqlite:///{folder / 'store.db'}")
    port = free_port()
    log = folder / "server.log"
    proc = start_server(env, port, log, workers=workers)
    try:
        yield f"http://127.0.0.1:{port}", printed_key(log), env
    finally:
        stop(proc)


def printed_key(log: Path) -> str:
    match = re.search(r"\bta_[A-Za-z0-9_-]{20,}", log.read_text())
    assert match, log.read_text()
    return match.group(0)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def job_store(db_url: str):
    """A JobStore on ``db_url``, its schema migrated."""
    from api.db import make_engine, upgrade
    from api.store import JobStore

    engine = make_engine(db_url)
    upgrade(engine)
    return JobStore(engine)


def queue_jobs(store, manifest: dict, n: int = 1) -> list[str]:
    """``n`` jobs of ``manifest`` queued for owner alice, in a defined order (distinct created_at)."""
    from affinity.manifest import parse_manifest

    body = parse_manifest(manifest).model_dump(mode="json")
    ids = []
    for _ in range(n):
        job, _ = store.create_job("alice", body)
        ids.append(job.id)
        time.sleep(0.002)
    return ids


def wait_for(pred, timeout: float, what: str) -> None:
    """Poll ``pred`` every 0.1 s until it is true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def live_processes() -> Iterator[tuple[int, list[str], bytes]]:
    """(pid, the fields of /proc/pid/stat after the command name, cmdline) of every process but zombies."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if stat[0] != "Z":
            yield int(d.name), stat, cmdline
