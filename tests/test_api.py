"""The REST API in-process (TestClient), on SQLite and PostgreSQL: auth, ownership, jobs, datasets, results."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pandas as pd
import pytest

from api.worker import Worker

PROBLEM = "application/problem+json"


def assert_problem(r, status: int, *needles: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == status and body["detail"]
    for n in needles:
        assert n in json.dumps(body), (n, body)
    return body


def test_health_and_ready(service):
    client, *_ = service
    assert client.get("/healthz").json() == {"status": "ok", "database": None}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["database"] in ("sqlite", "postgresql")


def test_no_key_or_bad_key_is_401(service):
    client, *_ = service
    r = client.get("/v1/jobs")
    assert_problem(r, 401, "Bearer")
    assert r.headers["www-authenticate"] == "Bearer"
    assert_problem(client.get("/v1/jobs", headers={"Authorization": "Bearer ta_nope"}), 401, "unknown")


def test_revoked_key_is_401(service):
    from api.keys import create_key, revoke_key

    client, _, store, *_ = service
    key = create_key(store.sessions, "temp")
    h = {"Authorization": f"Bearer {key.token}"}
    assert client.get("/v1/jobs", headers=h).status_code == 200
    assert revoke_key(store.sessions, key.id)
    time.sleep(0.3)  # other processes trust a checked key for key_cache_seconds (0.2 s here)
    assert_problem(client.get("/v1/jobs", headers=h), 401)


def test_submit_poll_list_and_owner_isolation(service, tiny_job):
    client, _, _, alice, bob = service
    r = client.post("/v1/jobs", json=tiny_job, headers=alice)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued" and job["progress"] == 0.0 and r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["manifest"]["estimation"]["num_subsets"] == 12
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).json()["id"] == job["id"]
    # another owner sees nothing of it
    assert_problem(client.get(f"/v1/jobs/{job['id']}", headers=bob), 404)
    assert_problem(client.post(f"/v1/jobs/{job['id']}/cancel", headers=bob), 404)
    assert_problem(client.delete(f"/v1/jobs/{job['id']}", headers=bob), 404)
    assert client.get("/v1/jobs", headers=bob).json()["total"] == 0
    listed = client.get("/v1/jobs", headers=alice).json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == job["id"]


def test_list_is_paginated_and_filtered(service, tiny_job):
    client, _, _, alice, _ = service
    ids = [client.post("/v1/jobs", json=tiny_job, headers=alice).json()["id"] for _ in range(5)]
    client.post(f"/v1/jobs/{ids[0]}/cancel", headers=alice)
    page = client.get("/v1/jobs?limit=2&offset=1", headers=alice).json()
    assert page["total"] == 5 and len(page["items"]) == 2 and page["limit"] == 2
    assert [j["id"] for j in page["items"]] == list(reversed(ids))[1:3]
    cancelled = client.get("/v1/jobs?status=cancelled", headers=alice).json()
    assert [j["id"] for j in cancelled["items"]] == [ids[0]]
    assert_problem(client.get("/v1/jobs?status=bogus", headers=alice), 422, "status")
    assert_problem(client.get("/v1/jobs?limit=0", headers=alice), 422, "limit")


def test_bad_manifest_is_422_naming_each_field(service):
    client, _, _, alice, _ = service
    body = {"dataset": {"source": "planted"}, "estimation": {"num_subsets": 0, "projection_dim": "big"},
            "training": {"lr": -1}, "bogus": 1}
    p = assert_problem(client.post("/v1/jobs", json=body, headers=alice), 422)
    fields = {e["field"] for e in p["errors"]}
    assert {"estimation.num_subsets", "estimation.projection_dim", "training.lr", "bogus"} <= fields
    assert_problem(client.post("/v1/jobs", json={}, headers=alice), 422, "dataset")
    assert_problem(client.post("/v1/jobs", content=b"[1, 2]", headers={**alice, "content-type": "application/json"}),
                   422)
    assert_problem(client.post("/v1/jobs", content=b"{not json", headers={**alice, "content-type": "application/json"}),
                   422)


def test_server_limits_are_422(service, tiny_job):
    client, settings, _, alice, _ = service
    tiny_job["estimation"]["num_subsets"] = settings.max_subsets + 1
    assert_problem(client.post("/v1/jobs", json=tiny_job, headers=alice), 422, "estimation.num_subsets", "limit")
    tiny_job["estimation"]["num_subsets"] = 10
    tiny_job["dataset"]["params"]["tasks"] = settings.max_tasks + 1
    assert_problem(client.post("/v1/jobs", json=tiny_job, headers=alice), 422, "dataset.params.tasks")


@pytest.mark.parametrize("source", ["../secret.csv", "/etc/passwd", "sub/../../secret.csv", "link.csv"])
def test_paths_outside_the_data_root_are_refused(service, source):
    client, settings, _, alice, _ = service
    outside = settings.data_root.parent / "secret.csv"
    outside.write_text("a,b\n1,0\n")
    (settings.data_root / "link.csv").symlink_to(outside)
    body = {"dataset": {"source": source, "tasks": ["b"]}}
    assert_problem(client.post("/v1/jobs", json=body, headers=alice), 422, "dataset.source")


def test_path_inside_the_data_root_is_accepted(service):
    client, settings, _, alice, _ = service
    (settings.data_root / "t.csv").write_text("x,y,z\n1,0,1\n")
    r = client.post("/v1/jobs", json={"dataset": {"source": "t.csv", "tasks": ["y", "z"]}}, headers=alice)
    assert r.status_code == 201, r.text
    single = client.post("/v1/jobs", json={"dataset": {"source": "t.csv", "tasks": ["y"]}}, headers=alice)
    assert single.status_code == 422 and "at least 2 tasks" in single.text and "subset_size" not in single.text


def test_idempotency_key(service, tiny_job):
    client, _, _, alice, bob = service
    h = {**alice, "Idempotency-Key": "abc-1"}
    first = client.post("/v1/jobs", json=tiny_job, headers=h)
    again = client.post("/v1/jobs", json=tiny_job, headers=h)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert client.get("/v1/jobs", headers=alice).json()["total"] == 1
    tiny_job["grouping"]["k"] = 3
    assert_problem(client.post("/v1/jobs", json=tiny_job, headers=h), 409, "Idempotency-Key")
    # keys are per owner
    assert client.post("/v1/jobs", json=tiny_job, headers={**bob, "Idempotency-Key": "abc-1"}).status_code == 201


def test_cancel_and_delete(service, tiny_job):
    client, _, store, alice, _ = service
    job = client.post("/v1/jobs", json=tiny_job, headers=alice).json()
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert_problem(client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice), 409, "already cancelled")
    assert_problem(client.get(f"/v1/jobs/{job['id']}/groups", headers=alice), 409, "cancelled")
    assert client.delete(f"/v1/jobs/{job['id']}", headers=alice).status_code == 204
    assert_problem(client.get(f"/v1/jobs/{job['id']}", headers=alice), 404)
    # a running job must be cancelled before deletion; the flag reaches the worker
    job = client.post("/v1/jobs", json=tiny_job, headers=alice).json()
    claim = store.claim("w-test", 30)
    assert claim is not None and claim.id == job["id"]
    assert_problem(client.delete(f"/v1/jobs/{job['id']}", headers=alice), 409, "cancel it first")
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice).json()
    assert r["status"] == "running" and r["cancel_requested"]
    assert store.heartbeat(job["id"], "w-test", 30) is True


def test_job_runs_on_a_worker_and_results_are_served(service, tiny_job):
    client, settings, store, alice, bob = service
    job = client.post("/v1/jobs", json=tiny_job, headers=alice).json()
    assert_problem(client.get(f"/v1/jobs/{job['id']}/affinity", headers=alice), 409, "queued")
    assert Worker(settings, store, worker_id="w1").run_once()
    done = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()
    assert done["status"] == "succeeded", done
    assert done["progress"] == 1.0 and done["attempts"] == 1 and done["finished_at"]
    assert sorted(sum(done["summary"]["groups"], [])) == [f"task_{t}" for t in range(4)]
    aff = client.get(f"/v1/jobs/{job['id']}/affinity", headers=alice).json()
    matrix = np.array(aff["matrix"])
    assert matrix.shape == (4, 4) and np.allclose(matrix, matrix.T)
    frame = pd.read_csv(io.StringIO(client.get(f"/v1/jobs/{job['id']}/affinity?format=csv", headers=alice).text),
                        index_col=0)
    assert list(frame.columns) == aff["tasks"] and np.allclose(frame.to_numpy(), matrix)
    groups = client.get(f"/v1/jobs/{job['id']}/groups", headers=alice).json()
    assert groups["k"] == 2 and len(groups["groups"]) == 2
    subsets = client.get(f"/v1/jobs/{job['id']}/subsets", headers=alice).json()
    assert len(subsets["subsets"]) == 6  # 12 draws of pairs from 4 tasks: the 6 distinct pairs
    png = client.get(f"/v1/jobs/{job['id']}/heatmap.png", headers=alice)
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    model = client.get(f"/v1/jobs/{job['id']}/artifacts/model.pt", headers=alice)
    assert model.status_code == 200 and len(model.content) > 100
    assert client.get(f"/v1/jobs/{job['id']}/artifacts/gradients.npz", headers=alice).status_code == 200
    assert_problem(client.get(f"/v1/jobs/{job['id']}/artifacts/nope.bin", headers=alice), 404)
    assert_problem(client.get(f"/v1/jobs/{job['id']}/artifacts/..%2F..%2Fstore.db", headers=alice), 404)
    assert_problem(client.get(f"/v1/jobs/{job['id']}/groups", headers=bob), 404)


def test_a_job_with_bad_data_fails_with_the_reason(service):
    client, settings, store, alice, _ = service
    (settings.data_root / "t.csv").write_text("x,y,z\n" + "\n".join(f"{i},1,{i % 2}" for i in range(30)) + "\n")
    job = client.post("/v1/jobs", json={"dataset": {"source": "t.csv", "tasks": ["y", "z"]}}, headers=alice).json()
    assert Worker(settings, store, worker_id="w1").run_once()
    failed = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()
    assert failed["status"] == "failed" and "one class" in failed["error"] and "Traceback" not in failed["error"]


# -- datasets ----------------------------------------------------------------------------------------

def _table(n: int = 80) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3))
    return pd.DataFrame({"f0": x[:, 0], "f1": x[:, 1], "f2": x[:, 2], "a": (x[:, 0] > 0).astype(float),
                         "b": (x[:, 1] > 0).astype(float)})


def test_upload_csv_parquet_npz_and_run_on_it(service):
    client, settings, store, alice, bob = service
    frame = _table()
    csv_bytes = frame.to_csv(index=False).encode()
    r = client.post("/v1/datasets", files={"file": ("t.txt", csv_bytes, "application/octet-stream")}, headers=alice)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["format"] == "csv" and ds["rows"] == 80 and ds["columns"] == ["f0", "f1", "f2", "a", "b"]
    pq = io.BytesIO()
    frame.to_parquet(pq)
    r = client.post("/v1/datasets", files={"file": ("t.csv", pq.getvalue())}, headers=alice)
    assert r.status_code == 201 and r.json()["format"] == "parquet" and r.json()["rows"] == 80
    npz = io.BytesIO()
    np.savez(npz, X=frame[["f0", "f1", "f2"]].to_numpy(), Y=frame[["a", "b"]].to_numpy())
    r = client.post("/v1/datasets", files={"file": ("t.npz", npz.getvalue())}, headers=alice)
    assert r.status_code == 201 and r.json()["format"] == "npz" and r.json()["columns"][-1] == "task_1"
    listed = client.get("/v1/datasets", headers=alice).json()
    assert listed["total"] == 3
    assert client.get("/v1/datasets", headers=bob).json()["total"] == 0
    assert_problem(client.get(f"/v1/datasets/{ds['id']}", headers=bob), 404)
    # a job on the uploaded CSV; a wrong column is caught before queueing
    bad = {"dataset": {"source": ds["id"], "tasks": ["a", "nope"]}}
    assert_problem(client.post("/v1/jobs", json=bad, headers=alice), 422, "dataset.tasks[1].name")
    assert_problem(client.post("/v1/jobs", json={"dataset": {"source": ds["id"], "tasks": ["a"]}}, headers=bob),
                   422, "no uploaded dataset")
    body = {"dataset": {"source": ds["id"], "tasks": ["a", "b"]}, "model": {"hidden": [8]},
            "training": {"epochs": 3}, "estimation": {"num_subsets": 6, "subset_size": 2, "projection_dim": 8,
                                                      "min_pair_count": 0}, "grouping": {"k": 1}}
    job = client.post("/v1/jobs", json=body, headers=alice)
    assert job.status_code == 201, job.text
    assert_problem(client.delete(f"/v1/datasets/{ds['id']}", headers=alice), 409, job.json()["id"])  # queued job
    assert Worker(settings, store, worker_id="w1").run_once()
    done = client.get(f"/v1/jobs/{job.json()['id']}", headers=alice).json()
    assert done["status"] == "succeeded", done
    assert client.delete(f"/v1/datasets/{ds['id']}", headers=alice).status_code == 204
    assert_problem(client.get(f"/v1/datasets/{ds['id']}", headers=alice), 404)


def test_bad_uploads_are_4xx(service):
    client, settings, *_, alice, _ = service[0], service[1], service[2], service[3], service[4]
    too_big = b"a,b\n" + b"1,0\n" * (settings.upload_limit_bytes // 4 + 10)
    assert_problem(client.post("/v1/datasets", files={"file": ("big.csv", too_big)}, headers=alice), 413, "limit")
    assert_problem(client.post("/v1/datasets", files={"file": ("x.csv", b"\x00\x01\x02binary")}, headers=alice), 415)
    assert_problem(client.post("/v1/datasets", files={"file": ("x.npz", b"PK\x03\x04broken zip")}, headers=alice),
                   422, "NPZ")
    assert_problem(client.post("/v1/datasets", files={"file": ("x.parquet", b"PAR1garbage")}, headers=alice),
                   422, "PARQUET")
    assert_problem(client.post("/v1/datasets", files={"file": ("x.csv", b"")}, headers=alice), 422, "empty")
    assert_problem(client.post("/v1/datasets", files={"file": ("x.csv", "\u00e9,b\n1\n".encode("latin-1"))},
                               headers=alice), 422)
    assert_problem(client.post("/v1/datasets", headers=alice), 422, "file")
    assert client.get("/v1/datasets", headers=alice).json()["total"] == 0
    assert not any(p.name.startswith(".") for p in settings.datasets.rglob("*")) if settings.datasets.exists() else True


SUBMIT_IN_A_FRESH_PROCESS = """
import json, pathlib, sys, tempfile
from fastapi.testclient import TestClient
from api.app import create_app
from api.keys import create_key
from api.settings import Settings
tmp = pathlib.Path(tempfile.mkdtemp())
(tmp / "data_root").mkdir()
app = create_app(Settings(home=tmp / "home", database_url=f"sqlite:///{tmp}/db.sqlite", data_root=tmp / "data_root"))
headers = {"Authorization": f"Bearer {create_key(app.state.store.sessions, 'a').token}"}
with TestClient(app) as client:
    for job in json.loads(sys.argv[1]):
        print(client.post("/v1/jobs", json=job, headers=headers).status_code, end=" ")
print("torch" in sys.modules)
"""


def test_submitting_a_job_does_not_load_torch_into_the_service(tiny_job):
    # the service validates and sizes manifests of every kind (data kinds, time and memory estimates) without the
    # ML engine: torch is loaded only by the job processes
    import json
    import subprocess
    import sys

    text = json.loads(open("examples/text.json").read())
    bad = {**tiny_job, "model": {"kind": "nope"}}
    out = subprocess.run([sys.executable, "-c", SUBMIT_IN_A_FRESH_PROCESS, json.dumps([tiny_job, text, bad])],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["201", "201", "422", "False"]
