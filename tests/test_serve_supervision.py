"""`serve` supervises its embedded workers (issue 17, item 4): a killed worker was left `<defunct>`, never
restarted, /readyz still said 200 and new jobs stayed queued. Now it is reaped and restarted, and
/readyz reports the pool (503 while no worker is alive). A real `serve` process."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from service_processes import free_port, live_processes, printed_key, service_env, start_server, stop


def _workers_of(parent: int) -> list[int]:
    """Worker processes whose parent is ``parent`` (not zombies)."""
    return [pid for pid, stat, cmdline in live_processes() if int(stat[1]) == parent and b"worker" in cmdline]


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None  # gone: reaped


def _wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_worker_is_reaped_and_restarted_and_readyz_reports_the_pool(tmp_path, tiny_job):
    env = service_env(tmp_path / "home", f"sqlite:///{tmp_path / 'store.db'}")
    port, log = free_port(), tmp_path / "serve.log"
    server = start_server(env, port, log, workers=1)
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {printed_key(log)}"}
    try:
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 200 and ready.json()["workers"] == {"expected": 1, "alive": 1}
        (old,) = _wait(lambda: _workers_of(server.pid), 10, "the embedded worker")
        os.kill(old, signal.SIGKILL)
        # until it is restarted (1 s backoff) no worker is alive: readyz says so
        down = _wait(lambda: (r := httpx.get(f"{base}/readyz")).status_code == 503 and r, 3, "readyz to say 503")
        assert down.headers["content-type"].startswith("application/problem+json")
        assert "0 of 1" in down.json()["detail"]
        (new,) = _wait(lambda: [p for p in _workers_of(server.pid) if p != old], 10, "a new worker")
        assert _state(old) is None  # reaped, not <defunct>
        ready = _wait(lambda: (r := httpx.get(f"{base}/readyz")).status_code == 200 and r, 5, "readyz 200")
        assert ready.json()["workers"] == {"expected": 1, "alive": 1}
        assert "killed by SIGKILL" in log.read_text()
        # a job submitted afterwards runs on the restarted worker
        job = httpx.post(f"{base}/v1/jobs", json=tiny_job, headers=auth).json()
        done = _wait(lambda: (j := httpx.get(f"{base}/v1/jobs/{job['id']}", headers=auth).json())["status"]
                     in ("succeeded", "failed") and j, 60, "the job")
        assert done["status"] == "succeeded", done["error"]
    finally:
        stop(server)
    assert _workers_of(server.pid) == []


def test_readyz_without_workers_reports_an_empty_pool(tmp_path):
    env = service_env(tmp_path / "home", f"sqlite:///{tmp_path / 'store.db'}")
    port = free_port()
    server = start_server(env, port, tmp_path / "serve.log", workers=0)
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/readyz")
        assert r.status_code == 200 and r.json()["workers"] == {"expected": 0, "alive": 0}
    finally:
        stop(server)
