"""A worker runs each job in a process of its own (api/jobproc.py): a job that needs more memory than the
server allows fails with a clear error, the worker goes on; a job's ETA is unknown until its stage has
advanced (issue 17, item 2). Real worker processes where the process matters."""

from __future__ import annotations

import time

import pytest

from service_processes import job_store as _store, queue_jobs, service_env, start_worker, stop
from service_processes import wait_for as _wait


def _queue(store, manifest: dict) -> str:
    return queue_jobs(store, manifest)[0]

TINY = {"dataset": {"source": "planted", "params": {"tasks": 4, "groups": 2, "rows_per_task": 60, "features": 6}},
        "model": {"hidden": [8]}, "training": {"epochs": 3},
        "estimation": {"method": "grad_tag", "num_subsets": 12, "subset_size": 2, "projection_dim": 16},
        "grouping": {"k": 2, "method": "spectral", "selection": "affinity"}}
# 1,000,000 rows × 100 features: the float64 inputs alone are 0.8 GB (queued past the API's estimate, as a
# job queued before a lower limit was set would be, or one whose estimate is wrong)
HOG = {"dataset": {"source": "planted", "params": {"tasks": 4, "groups": 2, "rows_per_task": 250_000,
                                                   "features": 100}}, "training": {"epochs": 1}}


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'store.db'}"


def test_a_job_past_the_memory_limit_fails_cleanly_and_the_worker_goes_on(db_url, tmp_path):
    store = _store(db_url)
    hog, tiny = _queue(store, HOG), _queue(store, TINY)
    env = service_env(tmp_path / "home", db_url, TASK_AFFINITY_WORKER_MEMORY_MB="400")
    worker = start_worker(env, tmp_path / "w.log")
    try:
        _wait(lambda: store.get_job("alice", tiny).status in ("succeeded", "failed"), 60, "both jobs")
        assert worker.poll() is None  # the worker survived its job's allocation failure
    finally:
        stop(worker)
    failed, done = store.get_job("alice", hog), store.get_job("alice", tiny)
    assert failed.status == "failed" and failed.attempts == 1, failed.error
    assert "ran out of memory" in failed.error and "400 MB" in failed.error, failed.error
    assert "TASK_AFFINITY_WORKER_MEMORY_MB" in failed.error and "Traceback" not in failed.error
    assert done.status == "succeeded", done.error  # the next job, on the same worker, is unaffected


def test_eta_is_unknown_until_a_stage_has_advanced(tmp_path, db_url):
    """The job once said 'base training, eta 0' while its first epoch had not ended: the status
    published by every heartbeat names the current stage, and has an ETA only within a stage that has
    advanced."""
    from api.settings import Settings
    from api.worker import Worker

    settings = Settings(home=tmp_path / "home", database_url=db_url, lease_seconds=0.9, worker_nice=0,
                        torch_threads=1)
    store = _store(db_url)
    slow_epochs = {"dataset": {"source": "planted", "params": {"tasks": 4, "groups": 2, "rows_per_task": 600,
                                                               "features": 8}},
                   "model": {"hidden": [256, 256]}, "training": {"epochs": 2, "batch_size": 1},
                   "estimation": {"method": "grad_tag", "num_subsets": 6, "subset_size": 2, "projection_dim": 8},
                   "grouping": {"k": 2, "method": "spectral", "selection": "affinity"}}
    job_id = _queue(store, slow_epochs)
    beats: list[dict] = []
    original = store.heartbeat

    def recording(job_id, worker_id, lease_seconds, progress=None):
        if progress:
            beats.append(dict(progress))
        return original(job_id, worker_id, lease_seconds, progress)

    store.heartbeat = recording
    assert Worker(settings, store, worker_id="w-eta").run_once()
    assert store.get_job("alice", job_id).status == "succeeded"
    training = [b for b in beats if b["stage"] == "base training"]
    assert any(b["stage_progress"] == 0 for b in training), beats  # seen while the first epoch ran
    for b in beats:
        if b["eta_seconds"] is not None:
            assert 0 < b["stage_progress"] < 1, b
    assert not any(b["stage"] == "loading data" and b["eta_seconds"] == 0 for b in beats), beats
    assert all(a["progress"] <= b["progress"] for a, b in zip(beats, beats[1:])), beats


def test_overall_progress_never_goes_back_when_a_stage_runs_again():
    """A stage that runs again (the cross-fitted agreement's control pass after the random partitions' pass, a stage a
    plug-in repeats) shows its own stage and stage progress, while the job's overall progress holds at the highest
    figure reached."""
    from affinity.progress import ProgressEvent
    from api.jobproc import Reporter

    sent: list[dict] = []
    report = Reporter(lambda message: sent.append(message[1]), every=0.0)
    for stage, done in (("grouping", 1), ("checking groupings 9/10: fold 9", 5),
                        ("checking groupings 10/10: fold 10", 10), ("checking groupings 1/10: fold 1", 5),
                        ("checking groupings 10/10: fold 10", 10), ("writing artifacts", 1)):
        report(ProgressEvent(stage, done, 10 if "checking" in stage else 1, 1.0))
    overall = [v["progress"] for v in sent]
    assert overall == sorted(overall) and overall[-1] == 1.0
    again = sent[3]
    assert again["stage"] == "checking groupings 1/10: fold 1" and again["stage_progress"] == 0.5
    assert again["progress"] == sent[2]["progress"] == 0.87  # the end of the candidates pass's band


def test_a_job_past_the_time_limit_is_stopped_and_failed(db_url, tmp_path):
    store = _store(db_url)
    endless = {**TINY, "training": {"epochs": 100_000, "patience": 100_000}}
    job_id = _queue(store, endless)
    env = service_env(tmp_path / "home", db_url, TASK_AFFINITY_MAX_JOB_HOURS="0.002")  # 7.2 s
    worker = start_worker(env, tmp_path / "w.log")
    try:
        _wait(lambda: store.get_job("alice", job_id).status != "queued", 20, "the job to start")
        started = time.monotonic()
        _wait(lambda: store.get_job("alice", job_id).stage == "base training", 60, "training to start")
        _wait(lambda: store.get_job("alice", job_id).status == "failed", 30, "the time limit")
        assert worker.poll() is None
    finally:
        stop(worker)
    job = store.get_job("alice", job_id)
    assert "TASK_AFFINITY_MAX_JOB_HOURS" in job.error and "0.002 h" in job.error, job.error
    assert time.monotonic() - started > 7  # not before the limit
    assert 0 < job.stage_progress < 0.5  # stopped in the middle of its 100,000 epochs
