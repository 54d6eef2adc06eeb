"""Hostile but ordinary key holders (issue 17): every request below used to give a 500, load a zip bomb,
pass a server limit or be accepted only to fail at the worker. Each must now be a 4xx problem naming the
field and the fix, decided before anything is stored or queued.

The app runs in-process on SQLite (these tests probe the API's edge, not the database).
"""

from __future__ import annotations

import copy
import io
import json
import math
import threading
import time
import tracemalloc
import zipfile

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from affinity.manifest import Manifest

PROBLEM = "application/problem+json"


@pytest.fixture
def db_url(tmp_path):
    """SQLite only (overrides conftest's SQLite + PostgreSQL parameters)."""
    return f"sqlite:///{tmp_path / 'store.db'}"


def strict_json(raw: str | bytes):
    """Parse standard JSON only: NaN, Infinity and -Infinity are not JSON."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(raw, parse_constant=refuse)


def assert_problem(r, status: int, *needles: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = strict_json(r.content)
    assert body["status"] == status and body["detail"]
    for n in needles:
        assert n in json.dumps(body, ensure_ascii=False), (n, body)
    return body


def fields_of(problem: dict) -> list[str]:
    return [e["field"] for e in problem.get("errors") or []]


def post_raw(client, headers, body: object):
    """POST a manifest as Python's json.dumps writes it: NaN and ±Infinity become bare tokens, as a
    careless client (or JavaScript's JSON5-ish tools) would send them."""
    return client.post("/v1/jobs", content=json.dumps(body).encode(),
                       headers={**headers, "content-type": "application/json"})


def stored_manifests(store) -> list[str]:
    with store.engine.connect() as conn:
        return [row[0] for row in conn.execute(text("SELECT manifest FROM jobs"))]


def assert_stored_jobs_are_standard_json(store) -> None:
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT json_valid(manifest), manifest FROM jobs")).all()
    for valid, raw in rows:
        assert valid == 1, raw[:200]
        strict_json(raw)


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def upload(client, headers, name: str, content: bytes) -> dict:
    r = client.post("/v1/datasets", files={"file": (name, content)}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def labelled_npz(rows: int, tasks: int) -> bytes:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, 3))
    Y = (rng.random((rows, tasks)) > 0.5).astype(float)
    return npz_bytes(X=X, Y=Y[:, 0] if tasks == 1 else Y)


def succeeded_job(client, store, settings, headers, tiny_job, affinity: dict) -> str:
    """A job run to success as a worker would leave it: claimed, its affinity.json written, finished."""
    job_id = client.post("/v1/jobs", json=tiny_job, headers=headers).json()["id"]
    claim = store.claim("w-test", 30)
    assert claim is not None and claim.id == job_id
    folder = settings.artifacts / job_id
    folder.mkdir(parents=True)
    (folder / "affinity.json").write_text(json.dumps(affinity))
    assert store.finish(job_id, "w-test", "succeeded", summary={"groups": []})
    return job_id


# -- 6. body limit on every JSON route ---------------------------------------------------------------------

def test_json_bodies_over_the_limit_are_413(service, tiny_job):
    client, settings, store, alice, _ = service
    limit = 1024 * 1024  # the default
    big = {"dataset": {"source": "planted", "params": {"junk": "x" * (2 * limit)}}}
    p = assert_problem(client.post("/v1/jobs", json=big, headers=alice), 413, str(limit), "TASK_AFFINITY_BODY_LIMIT_MB")
    assert "errors" not in p
    # without a Content-Length (chunked): counted as it arrives
    payload = json.dumps(big).encode()
    chunks = (payload[i:i + 65536] for i in range(0, len(payload), 65536))
    assert_problem(client.post("/v1/jobs", content=chunks, headers={**alice, "content-type": "application/json"}),
                   413, str(limit))
    # before authentication: an anonymous client cannot make the API read it either
    assert_problem(client.post("/v1/jobs", json=big), 413)
    job_id = client.post("/v1/jobs", json=tiny_job, headers=alice).json()["id"]
    assert_problem(client.post(f"/v1/jobs/{job_id}/cancel", json=big, headers=alice), 413)
    assert [json.loads(m)["dataset"]["params"] for m in stored_manifests(store)] == [tiny_job["dataset"]["params"]]


def test_body_limit_is_a_setting(service_settings, tiny_job):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.keys import create_key

    settings = service_settings.model_copy(update={"body_limit_mb": 0.01})
    app = create_app(settings)
    headers = {"Authorization": f"Bearer {create_key(app.state.store.sessions, 'a').token}"}
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/v1/jobs", json=tiny_job, headers=headers).status_code == 201
        tiny_job["dataset"]["tasks"] = [f"t{i:05d}" for i in range(2000)]  # ~20 KB
        assert_problem(client.post("/v1/jobs", json=tiny_job, headers=headers), 413, str(settings.body_limit_bytes))
        # an upload keeps its own limit (the upload limit, 1 MB here)
        csv = pd.DataFrame({"f": range(2000), "a": [0, 1] * 1000, "b": [1, 0] * 1000}).to_csv(index=False).encode()
        assert len(csv) > settings.body_limit_bytes
        assert client.post("/v1/datasets", files={"file": ("t.csv", csv)}, headers=headers).status_code == 201
        # and a chunked upload past it stops at the limit, as it arrives
        head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="t.csv"\r\n\r\na,b\n'
        chunks = iter([head] + [b"1,0\n" * 100_000] * 4 + [b"\r\n--x--\r\n"])
        assert_problem(client.post("/v1/datasets", content=chunks,
                                   headers={**headers, "content-type": "multipart/form-data; boundary=x"}), 413,
                       str(settings.upload_limit_bytes))
    app.state.store.engine.dispose()


# -- 1. NPZ zip bombs: headers read, arrays not unpacked ---------------------------------------------------

def test_npz_zip_bomb_is_refused_from_its_headers(service):
    client, settings, store, alice, _ = service
    bomb = npz_bytes(X=np.zeros((6000, 6000)), Y=np.zeros((6000, 1)))  # 288 MB of float64 in ~280 KB
    assert len(bomb) < settings.upload_limit_bytes  # within the byte limit: only its contents are big
    tracemalloc.start()
    start = time.perf_counter()
    r = client.post("/v1/datasets", files={"file": ("bomb.npz", bomb)}, headers=alice)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    p = assert_problem(r, 413, str(settings.upload_limit_bytes), "(6000, 6000)", "decompress")
    assert peak < 16 * 2**20, f"checking the upload allocated {peak / 2**20:.0f} MB"
    assert elapsed < 2.0, elapsed
    assert "TASK_AFFINITY_UPLOAD_LIMIT_MB" in p["detail"]
    assert client.get("/v1/datasets", headers=alice).json()["total"] == 0
    assert not any(settings.datasets.rglob("*.npz")) if settings.datasets.exists() else True


def test_npz_uploads_are_checked_member_by_member(service):
    client, _, _, alice, _ = service
    # a compressed NPZ within the limit is fine, and its shape is read from the headers
    ds = upload(client, alice, "ok.npz", labelled_npz(rows=40, tasks=3))
    assert ds["rows"] == 40 and ds["columns"] == ["x0", "x1", "x2", "task_0", "task_1", "task_2"]
    # a member whose header promises more data than it holds
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (100, 3)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("X.npy", b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + b"\x00" * 80)
        y = io.BytesIO()
        np.save(y, np.zeros(100))
        zf.writestr("Y.npy", y.getvalue())
    assert_problem(client.post("/v1/datasets", files={"file": ("short.npz", buf.getvalue())}, headers=alice),
                   422, "truncated")
    # arrays that are not numbers
    assert_problem(client.post("/v1/datasets", files={"file": ("s.npz", npz_bytes(X=np.array([["a"]]), Y=np.zeros(1)))},
                               headers=alice), 422, "dtype")
    assert_problem(client.post("/v1/datasets", files={"file": ("n.npz", npz_bytes(Z=np.zeros(3)))}, headers=alice),
                   422, "'X' and 'Y'")


# -- 10. a body that is not JSON --------------------------------------------------------------------------

def test_malformed_json_says_where(service):
    client, _, _, alice, _ = service
    h = {**alice, "content-type": "application/json"}
    p = assert_problem(client.post("/v1/jobs", content=b'{"dataset": {"source": x}}', headers=h), 422,
                       "not valid JSON", "line 1, column 24")
    assert fields_of(p) == ["body"] and p["errors"][0]["value"] is None
    p = assert_problem(client.post("/v1/jobs", content=b'{\n  "dataset": {\n    "source": "planted",\n  }\n}',
                                   headers=h), 422, "not valid JSON", "line 4, column 3")
    assert fields_of(p) == ["body"]
    assert_problem(client.post("/v1/jobs", content=b'{"dataset": "\xff\xfe"}', headers=h), 422, "not UTF-8")


# -- 12. 405 names the allowed methods ------------------------------------------------------------------

@pytest.mark.parametrize("method, path, allowed", [
    ("PUT", "/v1/jobs", ["GET", "POST"]),
    ("PATCH", "/v1/jobs/job_x", ["GET", "DELETE"]),
    ("GET", "/v1/jobs/job_x/cancel", ["POST"]),
    ("DELETE", "/healthz", ["GET"]),
    ("PUT", "/v1/datasets/ds_x", ["GET", "DELETE"]),
])
def test_405_names_the_allowed_methods(service, method, path, allowed):
    client, *_ = service
    p = assert_problem(client.request(method, path), 405)
    assert r_allow(client.request(method, path)) == allowed
    assert p["detail"].endswith("use " + " or ".join(allowed))


def r_allow(response) -> list[str]:
    return [m.strip() for m in response.headers["allow"].split(",")]
