"""Ray per job (issue 17, item 3), with real worker processes: a cluster that does not answer fails the
job after TASK_AFFINITY_RAY_CONNECT_SECONDS (it kept a worker retrying for 13 minutes, cancel ignored);
no Ray connection outlives its job (another owner's job ran on the first job's Ray instance); cancel
works while Ray connects; SIGTERM still requeues a job once Ray has installed its signal handlers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service_processes import job_store as _store, live_processes, queue_jobs, service_env, stop
from service_processes import wait_for as _wait

pytest.importorskip("ray", reason="ray is a dependency; install the package with pip install -e '.[dev]'")

NOWHERE = "127.0.0.1:9"  # allowed by the server's list below, but nothing answers there
TINY = {"dataset": {"source": "planted", "params": {"tasks": 4, "groups": 2, "rows_per_task": 60, "features": 6}},
        "model": {"hidden": [8]}, "training": {"epochs": 3},
        "estimation": {"method": "grad_tag", "num_subsets": 12, "subset_size": 2, "projection_dim": 16},
        "grouping": {"k": 2, "method": "spectral", "selection": "affinity"}}


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'store.db'}"


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    """A worker in a session of its own, so that it, its job process and the job's Ray processes can be
    signalled together, as a service manager stopping the worker's unit does."""
    return subprocess.Popen([sys.executable, "-m", "affinity.cli", "worker"], env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _session(sid: int) -> list[int]:
    """Processes of the session ``sid`` still there (zombies excepted)."""
    return [pid for pid, stat, _ in live_processes() if int(stat[3]) == sid]


def _queue(store, manifest: dict) -> str:
    return queue_jobs(store, manifest)[0]


def test_an_unanswering_cluster_fails_the_job_and_no_ray_state_crosses_jobs(db_url, tmp_path):
    store = _store(db_url)
    first = _queue(store, {**TINY, "compute": {"backend": "ray"}})  # a local Ray instance of its own
    second = _queue(store, {**TINY, "compute": {"backend": "ray", "address": NOWHERE}})
    third = _queue(store, TINY)
    env = service_env(tmp_path / "home", db_url, TASK_AFFINITY_RAY_ADDRESSES=NOWHERE,
                      TASK_AFFINITY_RAY_CONNECT_SECONDS="45")
    worker = _worker(env, tmp_path / "w.log")
    try:
        _wait(lambda: store.get_job("alice", first).status in ("succeeded", "failed"), 60, "the first job")
        # the next job may not wait the 45 s of a local Ray start: a shorter timeout from here on
        stop(worker)
        env["TASK_AFFINITY_RAY_CONNECT_SECONDS"] = "3"
        worker = _worker(env, tmp_path / "w.log")
        t0 = time.monotonic()
        _wait(lambda: store.get_job("alice", third).status in ("succeeded", "failed"), 40, "the other jobs")
    finally:
        stop(worker)
    a, b, c = (store.get_job("alice", i) for i in (first, second, third))
    assert a.status == "succeeded" and a.summary["backend"] == "ray", a.error
    # before: the second job silently ran on the first job's Ray instance (ray stayed initialized)
    assert b.status == "failed" and NOWHERE in b.error and "TASK_AFFINITY_RAY_CONNECT_SECONDS" in b.error, b.error
    assert "within 3 s" in b.error
    assert c.status == "succeeded" and c.summary["backend"] == "local", c.error
    assert time.monotonic() - t0 < 30


def test_cancel_while_ray_connects_and_sigterm_while_ray_runs(db_url, tmp_path):
    store = _store(db_url)
    connecting = _queue(store, {**TINY, "compute": {"backend": "ray", "address": NOWHERE}})
    slow = {"dataset": {"source": "planted", "params": {"tasks": 6, "groups": 2, "rows_per_task": 100,
                                                        "features": 8}},
            "model": {"hidden": [16]}, "training": {"epochs": 5},
            "estimation": {"method": "grad_tag", "num_subsets": 30, "subset_size": 3, "projection_dim": 16},
            "grouping": {"k": 2, "method": "spectral", "selection": "affinity"},
            "compute": {"backend": "ray", "shard_pairs": 10}}  # 60 gradient shards: Ray tasks for a while
    on_ray = _queue(store, slow)
    env = service_env(tmp_path / "home", db_url, TASK_AFFINITY_RAY_ADDRESSES=NOWHERE,
                      TASK_AFFINITY_RAY_CONNECT_SECONDS="120")
    worker = _worker(env, tmp_path / "w.log")
    try:
        _wait(lambda: store.get_job("alice", connecting).stage == "connecting to Ray", 30, "Ray to be connecting")
        store.request_cancel("alice", connecting)
        t0 = time.monotonic()
        _wait(lambda: store.get_job("alice", connecting).status == "cancelled", 10, "the cancel during connect")
        assert time.monotonic() - t0 < 8
        # the next job runs on a local Ray instance; once its Ray tasks run, Ray's SIGTERM handler would
        # have replaced the worker's: stop the worker's whole session, as a service manager does
        _wait(lambda: store.get_job("alice", on_ray).stage in ("projected gradients", "surrogate fits"), 90,
              "the job's stages on Ray")
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
    finally:
        stop(worker)
    job = store.get_job("alice", on_ray)
    assert job.status == "queued" and job.attempts == 1 and job.error is None, (job.status, job.error)
    assert "requeued" in (tmp_path / "w.log").read_text()
    # Ray's raylet and GCS take their time to exit on a loaded machine
    _wait(lambda: _session(worker.pid) == [], 60, "no process of the worker's session (job, Ray) left")
