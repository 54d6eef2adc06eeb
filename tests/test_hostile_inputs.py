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


# -- 7. NaN / Infinity in numeric fields: 422 naming the field, never stored ---------------------------

@pytest.mark.parametrize("path", ["training.lr", "training.weight_decay", "estimation.l2", "model.dropout",
                                  "dataset.val_fraction", "compute.cpus_per_task", "training.epochs",
                                  "estimation.num_subsets", "dataset.params.noise"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_422_naming_the_field(service, tiny_job, path, value):
    client, _, store, alice, _ = service
    put(tiny_job, path, value)
    p = assert_problem(post_raw(client, alice, tiny_job), 422, path)
    assert path in fields_of(p)
    assert stored_manifests(store) == []


def put(manifest: dict, path: str, value) -> None:
    """Set a dotted path (``model.hidden[0]`` replaces the list's first item)."""
    *parents, last = path.split(".")
    node = manifest
    for key in parents:
        node = node.setdefault(key, {})
    if last.endswith("[0]"):
        key = last[:-3]
        base = node.get(key)
        node[key] = [value, *base[1:]] if isinstance(base, list) and base else [value, value]
    else:
        node[last] = value


def numeric_fields() -> list[str]:
    """Every numeric field of the manifest's JSON Schema, found by walking it (``[0]``: a list's items)."""
    schema = Manifest.model_json_schema()
    defs = schema.get("$defs", {})

    def resolve(node: dict) -> dict:
        while "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
        return node

    def options(node: dict) -> list[dict]:
        node = resolve(node)
        return [resolve(o) for o in node.get("anyOf", [node])]

    found: list[str] = []

    def walk(node: dict, prefix: str) -> None:
        for name, prop in resolve(node).get("properties", {}).items():
            path = f"{prefix}{name}"
            opts = options(prop)
            if any(o.get("type") in ("integer", "number") for o in opts):
                found.append(path)
            for o in opts:
                if o.get("type") == "array" and any(i.get("type") in ("integer", "number")
                                                    for i in options(o.get("items", {}))):
                    found.append(f"{path}[0]")
                if o.get("type") == "object" and "properties" in o:
                    walk(o, f"{path}.")

    walk(schema, "")
    return found


PLANTED_PARAMS = ["tasks", "groups", "rows_per_task", "features", "noise", "spread", "shared", "seed"]
FUZZ_VALUES = [math.nan, math.inf, -math.inf, 1e308, 2**70, -1, -1e308]


def test_fuzz_every_numeric_field(service, tiny_job):
    """NaN, ±Infinity, huge and negative values in every numeric field of the schema and of the
    built-ins' params: each answer is a 4xx naming the field or a 201, never a 500; whatever was
    accepted is stored, and listed, as standard JSON."""
    client, _, store, alice, _ = service
    fields = numeric_fields()
    assert {"training.lr", "estimation.l2", "model.hidden[0]", "grouping.k", "compute.gpus_per_task",
            "training.connection_strength.schedule_epochs"} <= set(fields), fields
    cases = [(tiny_job, f) for f in fields] + [(tiny_job, f"dataset.params.{p}") for p in PLANTED_PARAMS]
    digits = {**copy.deepcopy(tiny_job), "dataset": {"source": "digits", "params": {"label_fraction": 0.5}}}
    cases += [(digits, f"dataset.params.{p}") for p in ("label_fraction", "seed")]
    accepted = 0
    for base, path in cases:
        for value in FUZZ_VALUES:
            body = copy.deepcopy(base)
            put(body, path, value)
            r = post_raw(client, alice, body)
            assert r.status_code == 201 or 400 <= r.status_code < 500, (path, value, r.status_code, r.text)
            answer = strict_json(r.content)
            if r.status_code == 201:
                accepted += 1
                continue
            assert r.headers["content-type"].startswith(PROBLEM), (path, value)
            stem = path.removesuffix("[0]")
            assert any(f.startswith(stem) for f in fields_of(answer)), (path, value, answer)
    assert accepted > 0  # the finite values some fields take (1e308 for weight_decay, -1 for nothing)
    assert_stored_jobs_are_standard_json(store)
    listed = client.get("/v1/jobs?limit=200", headers=alice)
    assert listed.status_code == 200 and strict_json(listed.content)["total"] == accepted


def test_nan_inside_builtin_params_is_never_stored(service, tiny_job):
    client, _, store, alice, _ = service
    tiny_job["dataset"]["params"]["noise"] = math.nan  # planted's own check let NaN through (NaN < 0 is false)
    p = assert_problem(post_raw(client, alice, tiny_job), 422, "dataset.params.noise", "finite")
    assert p["errors"][0]["value"] == "NaN"
    assert stored_manifests(store) == []


# -- 8. inputs that gave a 500 ---------------------------------------------------------------------------

def test_nul_byte_and_overlong_and_looping_sources_are_422(service):
    client, settings, store, alice, _ = service
    loop = settings.data_root / "loop.csv"
    loop.symlink_to(loop)
    for source in ["t\x00.csv", "ds_\x00", "a" * 300, "sub/" + "b" * 300 + "/x.csv", "loop.csv"]:
        p = assert_problem(client.post("/v1/jobs", json={"dataset": {"source": source, "tasks": ["y"]}},
                                       headers=alice), 422, "dataset.source")
        assert fields_of(p) == ["dataset.source"]
        assert str(settings.data_root) not in p["detail"]  # the server's own paths stay private
    assert stored_manifests(store) == []


def test_nul_bytes_in_ids_names_and_assets_are_404(service, tiny_job):
    client, settings, store, alice, _ = service
    job_id = succeeded_job(client, store, settings, alice, tiny_job, {"tasks": ["a", "b"], "matrix": [[0, 1], [1, 0]]})
    assert_problem(client.get(f"/v1/jobs/{job_id}/artifacts/a%00b", headers=alice), 404, "no artifact")
    assert_problem(client.get(f"/v1/jobs/{job_id}/artifacts/affinity.json%0A", headers=alice), 404)
    assert client.get(f"/v1/jobs/{job_id}/artifacts/affinity.json", headers=alice).status_code == 200
    assert_problem(client.get("/static/x%00.js"), 404, "no dashboard file")  # no key: the dashboard is public
    assert client.get("/static/app.js").status_code == 200
    assert_problem(client.get("/v1/jobs/job%00x", headers=alice), 404)
    assert_problem(client.delete("/v1/datasets/ds%00x", headers=alice), 404)


def test_deeply_nested_params_are_422(service):
    client, _, store, alice, _ = service
    deep: list = []
    for _ in range(900):
        deep = [deep]
    body = {"dataset": {"source": "planted", "params": {"tasks": 4, "junk": deep}}}
    p = assert_problem(post_raw(client, alice, body), 422, "dataset.params.junk", "nests more than")
    assert len(json.dumps(p)) < 10_000  # the echo is not the whole structure again
    # deeper than Python's JSON parser goes (it raises RecursionError)
    r = client.post("/v1/jobs", content=b'{"dataset": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                    headers={**alice, "content-type": "application/json"})
    assert_problem(r, 422, "too deeply")
    assert stored_manifests(store) == []


def test_cancel_racing_delete_is_404_not_500(service, tiny_job, monkeypatch):
    client, _, store, alice, _ = service
    # The DELETE lands between the cancel's read of the job and its update (seen 3 times in ~480 races).
    job_id = client.post("/v1/jobs", json=tiny_job, headers=alice).json()["id"]
    request_cancel = store.request_cancel

    def deleted_meanwhile(owner, jid):
        assert store.delete_job(owner, jid)
        return request_cancel(owner, jid)

    monkeypatch.setattr(store, "request_cancel", deleted_meanwhile)
    assert_problem(client.post(f"/v1/jobs/{job_id}/cancel", headers=alice), 404, "no job")
    monkeypatch.undo()
    # two DELETEs: the second one's job vanished after it was read; it is gone (404), not "running" (409)
    job_id = client.post("/v1/jobs", json=tiny_job, headers=alice).json()["id"]
    delete_job = store.delete_job

    def other_delete_first(owner, jid):
        assert delete_job(owner, jid)
        return delete_job(owner, jid)

    monkeypatch.setattr(store, "delete_job", other_delete_first)
    assert_problem(client.delete(f"/v1/jobs/{job_id}", headers=alice), 404, "no job")
    monkeypatch.undo()
    # and for real, from two threads: only 200, 204, 404 and 409
    statuses: list[int] = []
    ids = [client.post("/v1/jobs", json=tiny_job, headers=alice).json()["id"] for _ in range(25)]

    def hammer(method: str) -> None:
        for jid in ids:
            r = client.post(f"/v1/jobs/{jid}/cancel", headers=alice) if method == "cancel" else \
                client.delete(f"/v1/jobs/{jid}", headers=alice)
            statuses.append(r.status_code)

    threads = [threading.Thread(target=hammer, args=(m,)) for m in ("cancel", "delete")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(statuses) <= {200, 204, 404, 409}, statuses


# -- 5. TASK_AFFINITY_MAX_TASKS counts every dataset's tasks ----------------------------------------------

def test_max_tasks_counts_planted_params_and_npz_columns(service):
    client, settings, store, alice, _ = service
    limit = settings.max_tasks
    # dataset.tasks does not apply to a built-in: planted's params.tasks is what runs
    body = {"dataset": {"source": "planted", "tasks": ["a"], "params": {"tasks": limit + 1, "groups": 2}}}
    p = assert_problem(client.post("/v1/jobs", json=body, headers=alice), 422, "dataset.params.tasks", str(limit))
    assert fields_of(p) == ["dataset.params.tasks"] and "TASK_AFFINITY_MAX_TASKS" in p["detail"]
    body = {"dataset": {"source": "planted", "params": {"tasks": 1e5}}}
    assert_problem(client.post("/v1/jobs", json=body, headers=alice), 422, "dataset.params.tasks")
    # an uploaded NPZ: the columns of Y
    ds = upload(client, alice, "wide.npz", labelled_npz(rows=20, tasks=limit + 1))
    p = assert_problem(client.post("/v1/jobs", json={"dataset": {"source": ds["id"]}}, headers=alice), 422,
                       "dataset.source", str(limit), f"{limit + 1} tasks")
    # the same file named by path in the data root: its header is read, not its arrays
    (settings.data_root / "wide.npz").write_bytes(labelled_npz(rows=20, tasks=limit + 1))
    assert_problem(client.post("/v1/jobs", json={"dataset": {"source": "wide.npz"}}, headers=alice), 422,
                   "dataset.source", str(limit))
    # a CSV: dataset.tasks
    frame = pd.DataFrame({"f": range(20), **{f"t{i}": [i % 2] * 20 for i in range(limit + 1)}})
    ds = upload(client, alice, "wide.csv", frame.to_csv(index=False).encode())
    body = {"dataset": {"source": ds["id"], "tasks": [f"t{i}" for i in range(limit + 1)]}}
    assert_problem(client.post("/v1/jobs", json=body, headers=alice), 422, "dataset.tasks", str(limit))
    assert stored_manifests(store) == []


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


def test_parquet_counts_at_its_uncompressed_size(service):
    client, settings, _, alice, _ = service
    buf = io.BytesIO()
    pd.DataFrame({"f": np.zeros(400_000), "a": np.zeros(400_000)}).to_parquet(buf)  # 6.4 MB as numbers
    assert len(buf.getvalue()) < settings.upload_limit_bytes
    assert_problem(client.post("/v1/datasets", files={"file": ("z.parquet", buf.getvalue())}, headers=alice), 413,
                   "Parquet", str(settings.upload_limit_bytes))


# -- 9. checked at submit, not at the worker -----------------------------------------------------------------

@pytest.mark.parametrize("params, field", [
    ({"tasks": "8"}, "dataset.params.tasks"),
    ({"tasks": -3}, "dataset.params.tasks"),
    ({"groups": 0}, "dataset.params.groups"),
    ({"tasks": 4, "groups": 6}, "dataset.params.groups"),
    ({"noise": -1}, "dataset.params.noise"),
    ({"shared": 1.5}, "dataset.params.shared"),
    ({"rows_per_task": 2.5}, "dataset.params.rows_per_task"),
    ({"seed": "zero"}, "dataset.params.seed"),
    ({"seed": 2**40}, "dataset.params.seed"),
    ({"colour": "red"}, "dataset.params"),
])
def test_planted_params_are_checked_at_submit(service, params, field):
    client, _, store, alice, _ = service
    p = assert_problem(client.post("/v1/jobs", json={"dataset": {"source": "planted", "params": params}},
                                   headers=alice), 422, field)
    assert fields_of(p) == [field]
    assert stored_manifests(store) == []


@pytest.mark.parametrize("params, field", [
    ({"label_fraction": 0}, "dataset.params.label_fraction"),
    ({"label_fraction": "half"}, "dataset.params.label_fraction"),
    ({"label_fraction": True}, "dataset.params.label_fraction"),
    ({"seed": -1}, "dataset.params.seed"),
    ({"tasks": 3}, "dataset.params"),
])
def test_digits_params_are_checked_at_submit(service, params, field):
    client, _, _, alice, _ = service
    p = assert_problem(client.post("/v1/jobs", json={"dataset": {"source": "digits", "params": params}},
                                   headers=alice), 422, field)
    assert fields_of(p) == [field]


@pytest.mark.parametrize("dataset, field", [
    ({"source": "synthetic", "params": {"tasks": 1}}, "dataset.params.tasks"),
    ({"source": "synthetic", "params": {"mechanism": "bogus"}}, "dataset.params.mechanism"),
    ({"source": "synthetic", "params": {"tasks": 100, "groups": 2}}, "dataset.params.tasks"),  # over max_tasks
    ({"source": "yeast", "params": {"colour": 1}}, "dataset.params"),
])
def test_newer_builtins_params_are_checked_at_submit(service, dataset, field):
    client, _, _, alice, _ = service
    p = assert_problem(client.post("/v1/jobs", json={"dataset": dataset}, headers=alice), 422, field)
    assert fields_of(p) == [field]


def test_params_of_a_file_source_are_refused(service):
    client, _, _, alice, _ = service
    ds = upload(client, alice, "ok.npz", labelled_npz(rows=40, tasks=3))
    assert_problem(client.post("/v1/jobs", json={"dataset": {"source": ds["id"], "params": {"tasks": 3}}},
                               headers=alice), 422, "dataset.params", "built-in")


def test_k_above_the_task_count_is_refused(service, tiny_job):
    client, _, _, alice, _ = service
    for k in (5, [2, 9]):
        tiny_job["grouping"]["k"] = k  # planted with 4 tasks
        p = assert_problem(client.post("/v1/jobs", json=tiny_job, headers=alice), 422, "grouping.k", "4 tasks")
        assert fields_of(p) == ["grouping.k"]
    tiny_job["grouping"]["k"] = [2, 4]
    assert client.post("/v1/jobs", json=tiny_job, headers=alice).status_code == 201
    ds = upload(client, alice, "three.npz", labelled_npz(rows=40, tasks=3))
    body = {"dataset": {"source": ds["id"]}, "grouping": {"k": 4}}
    assert_problem(client.post("/v1/jobs", json=body, headers=alice), 422, "grouping.k", "3 tasks")
    body = {"dataset": {"source": ds["id"], "tasks": ["a", "b"]}}
    assert_problem(client.post("/v1/jobs", json=body, headers=alice), 422, "dataset.tasks", "3 columns")


@pytest.mark.parametrize("section", ["training", "estimation", "grouping", "dataset"])
@pytest.mark.parametrize("seed", [2**70, 2**40])
def test_seeds_past_what_the_engine_takes_are_refused(service, tiny_job, section, seed):
    client, _, store, alice, _ = service
    tiny_job.setdefault(section, {})["seed"] = seed
    p = assert_problem(client.post("/v1/jobs", json=tiny_job, headers=alice), 422, f"{section}.seed", "4294967295")
    assert fields_of(p) == [f"{section}.seed"]
    assert stored_manifests(store) == []


def test_single_task_datasets_are_refused_without_blaming_subset_size(service):
    client, _, _, alice, _ = service
    ds_npz = upload(client, alice, "one.npz", labelled_npz(rows=40, tasks=1))
    frame = pd.DataFrame({"f": range(40), "a": [0, 1] * 20, "b": [1, 0] * 20})
    ds_csv = upload(client, alice, "t.csv", frame.to_csv(index=False).encode())
    for dataset, field in [({"source": "planted", "params": {"tasks": 1, "groups": 1}}, "dataset.params.tasks"),
                           ({"source": ds_npz["id"]}, "dataset.source"),
                           ({"source": ds_csv["id"], "tasks": ["a"]}, "dataset.tasks")]:
        p = assert_problem(client.post("/v1/jobs", json={"dataset": dataset}, headers=alice), 422, field,
                           "at least 2 tasks")
        assert "subset_size" not in json.dumps(p)
    assert client.post("/v1/jobs", json={"dataset": {"source": ds_csv["id"], "tasks": ["a", "b"]}},
                       headers=alice).status_code == 201


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


# -- 11. CSV export: no formulas ------------------------------------------------------------------------

def test_affinity_csv_escapes_cells_that_start_like_formulas(service, tiny_job):
    client, settings, store, alice, _ = service
    names = ['=HYPERLINK("http://example.invalid","x")', "@SUM(1+1)", "+1", "-1", "\tx", "\ry", "plain"]
    n = len(names)
    matrix = [[-0.25 if i != j else 0.0 for j in range(n)] for i in range(n)]
    job_id = succeeded_job(client, store, settings, alice, tiny_job, {"tasks": names, "matrix": matrix})
    r = client.get(f"/v1/jobs/{job_id}/affinity?format=csv", headers=alice)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    frame = pd.read_csv(io.StringIO(r.text), index_col=0)
    escaped = ["'" + t for t in names[:-1]] + ["plain"]
    assert list(frame.columns) == escaped and list(frame.index) == escaped
    assert np.allclose(frame.to_numpy(), matrix)  # negative numbers are numbers, not escaped text
    # the JSON keeps the names as they are
    assert client.get(f"/v1/jobs/{job_id}/affinity", headers=alice).json()["tasks"] == names


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


# -- 2. a job's memory, estimated before it is queued --------------------------------------------------

MEMORY_HOGS = [  # each accepted before, then grew a worker past 8 GB (or died of MemoryError)
    ({"model": {"hidden": [65536, 65536]}}, "model.hidden"),
    ({"model": {"hidden": [65536] * 50}}, "model.hidden"),
    ({"dataset": {"source": "planted", "params": {"rows_per_task": 100_000_000}}}, "dataset.params.rows_per_task"),
    ({"dataset": {"source": "planted", "params": {"features": 1_000_000}}}, "dataset.params.features"),
    ({"dataset": {"source": "planted", "params": {"rows_per_task": 2000}},
      "estimation": {"method": "grad_tag", "projection_dim": 100_000}}, "estimation.projection_dim"),
    ({"model": {"hidden": [4096, 4096]}, "estimation": {"method": "exact", "exact_batch": 64}},
     "estimation.exact_batch"),
]


@pytest.mark.parametrize("change, field", MEMORY_HOGS)
def test_jobs_that_need_more_memory_than_the_server_allows_are_refused(service, change, field):
    client, settings, store, alice, _ = service
    body = {"dataset": {"source": "planted"}, **change}
    t0 = time.perf_counter()
    p = assert_problem(client.post("/v1/jobs", json=body, headers=alice), 422, "TASK_AFFINITY_WORKER_MEMORY_MB",
                       "estimated")
    assert time.perf_counter() - t0 < 2  # estimated, not tried
    assert field in fields_of(p), p
    assert f"{settings.worker_memory_mb / 1024:.1f} GB" in p["detail"]  # the server's limit, in the answer
    assert stored_manifests(store) == []


def test_the_memory_limit_is_a_setting_and_ordinary_jobs_pass(service_settings, tiny_job):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.keys import create_key

    mid = {"dataset": {"source": "planted", "params": {"rows_per_task": 2000}},
           "estimation": {"method": "grad_tag", "projection_dim": 2000}}  # ~2.2 GB estimated (1.9 GB measured)
    for limit, expected in ((4096.0, 201), (1024.0, 422)):
        app = create_app(service_settings.model_copy(update={"worker_memory_mb": limit}))
        headers = {"Authorization": f"Bearer {create_key(app.state.store.sessions, f'k{limit}').token}"}
        with TestClient(app, raise_server_exceptions=False) as client:
            assert client.post("/v1/jobs", json=tiny_job, headers=headers).status_code == 201
            assert client.post("/v1/jobs", json={"dataset": "planted"}, headers=headers).status_code == 201
            assert client.post("/v1/jobs", json={"dataset": "digits"}, headers=headers).status_code == 201
            r = client.post("/v1/jobs", json=mid, headers=headers)
            assert r.status_code == expected, r.text
            if expected == 422:
                assert "estimation.projection_dim" in fields_of(r.json()) and "1.0 GB" in r.json()["detail"]
        app.state.store.engine.dispose()


def test_uploaded_datasets_count_at_their_size(service):
    client, _, store, alice, _ = service
    ds = upload(client, alice, "tall.npz", labelled_npz(rows=15000, tasks=4))
    ok = {"dataset": {"source": ds["id"]}, "grouping": {"k": 2}}
    assert client.post("/v1/jobs", json=ok, headers=alice).status_code == 201
    big = {**ok, "estimation": {"method": "grad_tag", "projection_dim": 50_000}}  # 60,000 pairs × 50,000 × 4 bytes
    p = assert_problem(client.post("/v1/jobs", json=big, headers=alice), 422, "TASK_AFFINITY_WORKER_MEMORY_MB")
    assert "estimation.projection_dim" in fields_of(p)


def test_memory_estimate_follows_the_engine():
    """The estimate grows with what the engine allocates: more rows, a wider model, a larger d, more
    stacked copies; and the parts name the fields."""
    from affinity.manifest import parse_manifest
    from api.resources import builtin_shape, estimate_memory

    def est(raw):
        m = parse_manifest(raw)
        return estimate_memory(m, builtin_shape(m.dataset, m.dataset.params.get("tasks", 16)))

    base = est({"dataset": "planted"})
    assert 550 * 2**20 < base.total < 800 * 2**20  # measured: 574 MB peak
    d = est({"dataset": {"source": "planted", "params": {"rows_per_task": 2000}},
             "estimation": {"method": "grad_tag", "projection_dim": 2000}})
    assert 1.9 * 2**30 < d.total < 2.9 * 2**30 and d.biggest(1)[0][0] == "projected features"  # measured 1.9 GB
    wide = est({"dataset": "planted", "model": {"hidden": [4096, 4096]}, "estimation": {"method": "exact"}})
    assert wide.biggest(1)[0][0] == "stacked models" and "estimation.exact_batch" in wide.fields["stacked models"]
    assert est({"dataset": "planted", "model": {"hidden": [4096, 4096]}, "estimation": {"method": "exact",
                                                                                        "exact_batch": 4}}).total \
        < wide.total / 3


# -- 3. compute.address comes from the server's allow-list ------------------------------------------------

def test_a_ray_address_outside_the_allow_list_is_refused(service_settings, tiny_job):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.keys import create_key

    ray_job = {**tiny_job, "compute": {"backend": "ray", "address": "attacker.example:6379"}}
    for allowed, expected in (("", 422), ("head:6379, other:6379", 422), ("attacker.example:6379", 201)):
        app = create_app(service_settings.model_copy(update={"ray_addresses": allowed}))
        headers = {"Authorization": f"Bearer {create_key(app.state.store.sessions, 'k').token}"}
        with TestClient(app, raise_server_exceptions=False) as client:
            r = client.post("/v1/jobs", json=ray_job, headers=headers)
            if expected == 422:
                p = assert_problem(r, 422, "TASK_AFFINITY_RAY_ADDRESSES")
                assert fields_of(p) == ["compute.address"]
                assert ("head:6379" in p["detail"]) == bool(allowed)  # the clusters one may use, when there are some
                assert not any(json.loads(m)["compute"] == {**json.loads(m)["compute"], **ray_job["compute"]}
                               for m in stored_manifests(app.state.store))
            else:
                assert r.status_code == 201, r.text
            # no address: the server's own choice, always accepted; a local job's address is not used
            no_address = {**tiny_job, "compute": {"backend": "ray"}}
            assert client.post("/v1/jobs", json=no_address, headers=headers).status_code == 201
            unused = {**tiny_job, "compute": {"backend": "local", "address": "attacker.example:6379"}}
            assert client.post("/v1/jobs", json=unused, headers=headers).status_code == 201
        app.state.store.engine.dispose()


def test_jobs_that_could_not_finish_within_the_time_limit_are_refused(service):
    """Memory is not the only bound: 2000 subsets fine-tuned for 100,000 epochs each (no early stopping)
    fit in memory but would run for days even on a GPU."""
    client, settings, store, alice, _ = service
    forever = {"dataset": {"source": "planted", "params": {"rows_per_task": 2000}},
               "training": {"epochs": 100_000, "patience": 100_000},
               "estimation": {"method": "exact", "num_subsets": 2000}}
    p = assert_problem(client.post("/v1/jobs", json=forever, headers=alice), 422, "TASK_AFFINITY_MAX_JOB_HOURS",
                       f"{settings.max_job_hours:g}")
    assert {"training.epochs", "estimation.num_subsets"} <= set(fields_of(p)), p
    assert stored_manifests(store) == []
    # the same with early stopping (patience 15, the default) is an ordinary job
    forever["training"].pop("patience")
    assert client.post("/v1/jobs", json=forever, headers=alice).status_code == 201


def test_task_names_that_look_like_mathtext_draw_as_text(tmp_path):
    """Issue 17, item 9: a task named like a broken mathtext formula made the heatmap raise."""
    import numpy as np

    from affinity.plots import heatmap

    names = ["$\\frac{$", "a$b", "plain"]
    heatmap(np.eye(3), names, [[0, 1], [2]], tmp_path / "h.png", "t")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_the_time_estimate_counts_the_cross_fitted_agreements_base_models():
    from affinity.manifest import parse_manifest
    from api.resources import builtin_shape, estimate_seconds

    def est(grouping):
        m = parse_manifest({"dataset": "planted", "grouping": grouping})
        return estimate_seconds(m, builtin_shape(m.dataset, 16))

    off, every = est({}), est({"agreement_crossfit": "all"})
    assert "base model per fold" not in off.parts
    assert every.parts["base model per fold"] > 5 * off.parts["base training"]  # 10 folds of 63% of the rows
    assert "grouping.agreement_crossfit" in every.fields["base model per fold"]
    assert every.seconds > off.seconds
    # from T alone there is no agreement to cross-fit; with control the models are trained only when needed
    assert "base model per fold" not in est({"agreement_crossfit": "all", "candidates_from": "affinity"}).parts
    assert "base model per fold" not in est({"agreement_crossfit": "control"}).parts


def test_the_time_estimate_counts_the_consensus_base_models():
    from affinity.manifest import parse_manifest
    from api.resources import builtin_shape, estimate_seconds

    def est(grouping):
        m = parse_manifest({"dataset": "planted", "grouping": grouping})
        return estimate_seconds(m, builtin_shape(m.dataset, 16))

    off, on = est({}), est({"agreement_consensus": True})
    name = "base models from other seeds"
    assert name not in off.parts
    assert on.parts[name] == pytest.approx(2 * on.parts["base training"], rel=0.01)
    assert "grouping.agreement_consensus" in on.fields[name] and on.seconds > off.seconds
    assert name not in est({"agreement_consensus": True, "candidates_from": "affinity"}).parts
