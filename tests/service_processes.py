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
