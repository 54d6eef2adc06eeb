"""The Ray backend on a real local Ray cluster (a head and one more node, each its own raylet on
loopback): the same results as the local backend, a killed Ray worker's task retried, cancellation."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from affinity.manifest import parse_manifest
from affinity.pipeline import run_job
from affinity.progress import Cancelled, Progress

ray = pytest.importorskip("ray", reason="ray is a dependency; install the package with pip install -e '.[dev]'")

JOB = {
    "dataset": {"source": "planted", "params": {"tasks": 6, "groups": 2, "rows_per_task": 80, "features": 8}},
    "model": {"hidden": [16], "activation": "tanh"},
    "training": {"epochs": 20, "patience": 20, "batch_size": 64},
    "estimation": {"method": "grad_tag", "num_subsets": 30, "subset_size": 3, "projection_dim": 32, "subset_batch": 8,
                   "exact_batch": 4},
    "grouping": {"k": 2, "method": "sdp"},
    "compute": {"shard_pairs": 200},
}


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def manifest(backend: str, cluster=None, **estimation):
    m = copy.deepcopy(JOB)
    m["estimation"].update(estimation)
    m["compute"]["backend"] = backend
    if cluster is not None:
        m["compute"]["address"] = cluster.address
    return parse_manifest(m)


def test_cluster_has_two_nodes(cluster):
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    assert ray.cluster_resources()["CPU"] == 2


@pytest.mark.parametrize("method", ["grad_tag", "exact"])
def test_ray_gives_the_local_result(cluster, method, tmp_path):
    local = run_job(manifest("local", method=method), tmp_path / "local")
    remote = run_job(manifest("ray", cluster, method=method), tmp_path / "ray")
    np.testing.assert_allclose(remote.estimate.matrix, local.estimate.matrix, rtol=1e-5, atol=1e-7)
    assert remote.grouping.groups == local.grouping.groups
    if method == "grad_tag":
        np.testing.assert_allclose(remote.gradients.features, local.gradients.features, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(remote.estimate.table.val_loss, local.estimate.table.val_loss, rtol=1e-6)


def test_group_models_on_ray_equal_local(cluster):
    from affinity.group_models import train_groups
    from affinity.pipeline import prepare

    groups = [[0, 2, 4], [1, 3, 5]]
    m_local, m_ray = manifest("local"), manifest("ray", cluster)
    p_local, p_ray = prepare(m_local, Progress()), prepare(m_ray, Progress())
    a = train_groups(p_local.data, p_local.tensors, m_local, groups, Progress(), p_local.backend)
    b = train_groups(p_ray.data, p_ray.tensors, m_ray, groups, Progress(), p_ray.backend)
    np.testing.assert_allclose(b, a, rtol=1e-5)


def _ray_workers(name: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"ray::{name}"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_a_killed_ray_worker_is_retried_and_the_job_succeeds(cluster, tmp_path):
    reference = run_job(manifest("local"), tmp_path / "local")
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:  # kill -9 the first worker process seen running a shard of either Grad-TAG stage
        while not stop.is_set() and not killed:
            for pid in _ray_workers("(gradient_shard|surrogate_shard)"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.01)

    m = manifest("ray", cluster)
    # Many short tasks, so one is running when the killer looks (a shard takes milliseconds: with
    # 40 pairs per shard the killer missed them once in a session).
    m.compute.shard_pairs = 10
    t = threading.Thread(target=killer)
    t.start()
    try:
        result = run_job(m, tmp_path / "ray")
    finally:
        stop.set()
        t.join()
    assert killed, "no Ray worker was seen running a gradient or surrogate shard"
    np.testing.assert_allclose(result.estimate.matrix, reference.estimate.matrix, rtol=1e-5, atol=1e-7)


def test_cancelling_cancels_the_pending_ray_tasks(cluster):
    import sys

    from ray import cloudpickle

    from affinity.compute.ray_backend import RayBackend

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test module
    flag = threading.Event()
    backend = RayBackend(manifest("ray", cluster).compute)
    progress = Progress(callback=lambda ev: flag.set() if ev.done >= 1 else None, cancelled=flag.is_set)
    progress.start("sleepy", 20)
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        backend.map(_sleepy_shard, (), list(range(20)), progress)
    assert time.monotonic() - t0 < 10  # 20 shards of 1 s on 2 CPUs would take 10 s
    time.sleep(1.5)
    assert _ray_workers("_sleepy_shard") == []  # the running tasks were killed, the queued ones dropped


def _sleepy_shard(i: int, progress=None) -> int:
    time.sleep(1.0)
    return i


def test_a_service_worker_runs_a_job_on_ray_with_lease_and_progress(cluster, tmp_path):
    from api.db import make_engine, upgrade
    from api.settings import Settings
    from api.store import JobStore
    from api.worker import Worker

    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", compute_backend="ray",
                        ray_address=cluster.address, lease_seconds=3.0, worker_nice=0)
    engine = make_engine(settings.db_url)
    upgrade(engine)
    store = JobStore(engine)
    body = copy.deepcopy(JOB)
    body["compute"]["shard_pairs"] = 40
    job, _ = store.create_job("alice", parse_manifest(body).model_dump(mode="json"))
    beats: list[dict] = []
    original = store.heartbeat

    def recording(job_id, worker_id, lease_seconds, progress=None):
        if progress:
            beats.append(progress)
        return original(job_id, worker_id, lease_seconds, progress)

    store.heartbeat = recording
    assert Worker(settings, store, worker_id="w-ray").run_once()
    done = store.get_job("alice", job.id)
    assert done.status == "succeeded", done.error
    assert done.manifest["compute"]["backend"] == "local"  # the stored manifest; the server setting chose Ray
    assert done.summary["backend"] == "ray"
    assert beats and all(0 <= b["progress"] <= 1 for b in beats)  # the lease heartbeat carried progress


def test_a_text_job_on_ray_gives_the_local_result(cluster, tmp_path):
    # a transformer with LoRA (the text kind) through the same backend: its projected gradients sharded over the
    # cluster's workers, the matrix and groups those of the local backend
    from test_text import TINY

    def text(backend):
        m = copy.deepcopy(TINY)
        m["compute"] = {"backend": backend, "shard_pairs": 20, **({"address": cluster.address} if backend == "ray" else {})}
        return parse_manifest(m)

    local = run_job(text("local"), tmp_path / "local")
    remote = run_job(text("ray"), tmp_path / "ray")
    np.testing.assert_allclose(remote.gradients.features, local.gradients.features, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(remote.estimate.matrix, local.estimate.matrix, rtol=1e-4, atol=1e-6)
    assert remote.grouping.groups == local.grouping.groups
