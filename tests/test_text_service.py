"""Text jobs through the service: the memory and time of a transformer job estimated before it is queued
(refused past the server's limits, 422 naming the field), plug-in kinds without an estimate refused unless
the server allows them, and text datasets uploaded and run like tables.

The app runs in-process on SQLite (these tests probe the API's edge, not the database).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from affinity.kinds import MODEL_KINDS, ModelKind

EXAMPLE = json.loads((Path(__file__).parent.parent / "examples" / "text.json").read_text())


@pytest.fixture
def db_url(tmp_path):
    """SQLite only (overrides conftest's SQLite + PostgreSQL parameters)."""
    return f"sqlite:///{tmp_path / 'store.db'}"


def problem_of(r, status: int = 422) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    return r.json()


def fields_of(p: dict) -> list[str]:
    return [e["field"] for e in p.get("errors") or []]


def stored(store) -> int:
    with store.engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM jobs")).scalar()


def text_csv(rows_per_task: int = 12, tasks: int = 3) -> bytes:
    """A small CSV of texts: one column of sentences, one label column per task (empty = not labelled)."""
    rng = np.random.default_rng(0)
    words = ["red", "blue", "dog", "car", "happy", "sad", "park", "kitchen"]
    n = rows_per_task * tasks
    frame = pd.DataFrame({"sentence": [" ".join(rng.choice(words, 6)) for _ in range(n)],
                          "id": np.arange(n)})
    for t in range(tasks):
        y = np.full(n, np.nan)
        y[t * rows_per_task:(t + 1) * rows_per_task] = rng.integers(0, 2, rows_per_task)
        frame[f"label_{t}"] = y
    return frame.to_csv(index=False).encode()


# -- A. the estimate of a transformer job ----------------------------------------------------------------

TEXT_HOGS = [  # each would grow a worker past the default 4 GB
    ({"estimation": {"chunk_rows": 4096, "memory_mb": 65536}}, "estimation.chunk_rows"),
    ({"estimation": {"method": "exact", "exact_batch": 2000, "num_subsets": 2000}}, "estimation.exact_batch"),
    ({"training": {"batch_size": 4096}, "dataset": {"params": {"rows_per_task": 1000}}}, "training.batch_size"),
    ({"dataset": {"params": {"rows_per_task": 2_000_000}}}, "dataset.params.rows_per_task"),
]


@pytest.mark.parametrize("change, field", TEXT_HOGS)
def test_text_jobs_past_the_memory_limit_are_refused_before_queueing(service, change, field):
    client, settings, store, alice, _ = service
    body = json.loads(json.dumps(EXAMPLE))
    for section, values in change.items():
        body[section] = {**body[section], **{k: ({**body[section][k], **v} if isinstance(v, dict) else v)
                                             for k, v in values.items()}}
    t0 = time.perf_counter()
    p = problem_of(client.post("/v1/jobs", json=body, headers=alice))
    assert time.perf_counter() - t0 < 10  # estimated from the model's config and headers, not tried
    assert "TASK_AFFINITY_WORKER_MEMORY_MB" in p["detail"] and "estimated" in p["detail"], p
    assert field in fields_of(p), p
    assert all(e["message"].startswith(e["field"]) for e in p["errors"])
    assert stored(store) == 0


def test_the_builtin_text_job_passes_and_the_limit_is_a_setting(service_settings):
    """examples/text.json peaks at 1,448 MB RSS (measured): accepted at 4 GB, refused at 1 GB."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.keys import create_key

    for limit, expected in ((4096.0, 201), (1024.0, 422)):
        app = create_app(service_settings.model_copy(update={"worker_memory_mb": limit}))
        headers = {"Authorization": f"Bearer {create_key(app.state.store.sessions, f'k{limit}').token}"}
        with TestClient(app, raise_server_exceptions=False) as client:
            r = client.post("/v1/jobs", json=EXAMPLE, headers=headers)
            assert r.status_code == expected, r.text
            if expected == 422:
                assert "1.0 GB" in r.json()["detail"] and "model.max_length" in fields_of(r.json())
        app.state.store.engine.dispose()


def test_text_jobs_that_could_not_finish_in_time_are_refused(service):
    client, settings, store, alice, _ = service
    body = {**EXAMPLE, "training": {**EXAMPLE["training"], "epochs": 100_000, "patience": 100_000},
            "estimation": {**EXAMPLE["estimation"], "method": "exact", "num_subsets": 2000, "exact_batch": 1},
            "dataset": {**EXAMPLE["dataset"], "params": {**EXAMPLE["dataset"]["params"], "rows_per_task": 2000}}}
    p = problem_of(client.post("/v1/jobs", json=body, headers=alice))
    assert "TASK_AFFINITY_MAX_JOB_HOURS" in p["detail"] and "training.epochs" in fields_of(p), p
    assert stored(store) == 0


# Peak RSS of real runs (MB) of examples/text.json with these changes, measured on CPU with the built-in MiniLM
# (the job run in-process, RSS sampled every 20 ms; the exact one also by /usr/bin/time: 1,284 MB).
# The first four without the check of candidate groupings (grouping.selection: affinity); the default job checks
# them (/usr/bin/time: 1,461,652 kB).
AFFINITY = {"grouping": {"selection": "affinity"}}
MEASURED = [
    (AFFINITY, None, 1147),
    ({**AFFINITY, "training": {"batch_size": 256}}, None, 1581),
    ({**AFFINITY, "estimation": {"method": "exact", "num_subsets": 16, "exact_batch": 16}}, None, 1284),
    # the same tasks with each text six times as long (up to 110 tokens), max_length 128
    ({**AFFINITY, "model": {"max_length": 128}}, 110, 2471),
    ({}, None, 1448),
]


def _estimate(change=None, tokens=None):
    from affinity.manifest import parse_manifest
    from api.resources import builtin_shape, estimate_memory

    raw = json.loads(json.dumps(EXAMPLE))
    for section, values in (change or {}).items():
        raw[section].update(values)
    m = parse_manifest(raw)
    shape = builtin_shape(m.dataset, 0)
    if tokens is not None:
        shape.tokens = tokens
    return m, shape, estimate_memory(m, shape)


@pytest.mark.parametrize("change, tokens, peak_mb", MEASURED)
def test_the_transformer_estimate_is_never_below_measured_runs(change, tokens, peak_mb):
    """Never below the measured peak, at most 1.6 times above it."""
    _, _, estimate = _estimate(change, tokens)
    assert peak_mb * 2**20 <= estimate.total <= 1.6 * peak_mb * 2**20, (estimate.mb, estimate.parts)


def test_the_transformer_estimate_follows_the_engine():
    from affinity.transformer_footprint import architecture
    from api.resources import estimate_seconds

    m, shape, base = _estimate()
    assert _estimate({"estimation": {"chunk_rows": 256, "memory_mb": 4096}})[2].total > base.total
    assert _estimate({"model": {"max_length": 32}}, tokens=None)[2].total \
        < _estimate({"model": {"max_length": 64}}, tokens=64)[2].total
    exact = _estimate({**AFFINITY, "estimation": {"method": "exact"}})[2]
    assert "stacked fine-tunes" in exact.parts and "estimation.exact_batch" in exact.fields["stacked fine-tunes"]
    assert _estimate({**AFFINITY, "estimation": {"method": "exact", "exact_batch": 100}})[2].total > exact.total
    # the adapters' size from the safetensors headers: rank 8 on query and value of 6 layers of width 384
    a = architecture(m.model)
    assert (a.hidden, a.layers, a.heads, a.ffn) == (384, 6, 12, 1536)
    assert a.lora == 6 * 2 * 8 * (384 + 384) and 22_000_000 < a.params < 23_000_000
    assert 0 < estimate_seconds(m, shape).seconds < 49.8  # a lower bound: the run took 49.8 s on one core


def test_the_adapter_count_equals_the_built_model(tmp_path):
    from affinity.kinds import load_data, make_model
    from affinity.manifest import parse_manifest
    from affinity.transformer_footprint import architecture

    m = parse_manifest({"dataset": {"source": "text", "params": {"groups": 2, "per_group": 1, "unrelated": 0,
                                                                 "rows_per_task": 10}},
                        "model": {"lora_rank": 4, "target_modules": ["query", "key", "dense"]}})
    model = make_model(m.model, load_data(m), 0)
    assert architecture(m.model).lora == model.trainable_counts()["lora"]


def test_a_missing_pretrained_folder_is_refused_at_submit(service):
    client, settings, store, alice, _ = service
    body = {**EXAMPLE, "model": {**EXAMPLE["model"], "pretrained": "no/such/model"}}
    p = problem_of(client.post("/v1/jobs", json=body, headers=alice))
    assert fields_of(p) == ["model.pretrained"] and "no such folder in the server's data root" in p["detail"], p
    (settings.data_root / "empty_model").mkdir()  # inside the root, but not a model folder
    body = {**EXAMPLE, "model": {**EXAMPLE["model"], "pretrained": "empty_model"}}
    p = problem_of(client.post("/v1/jobs", json=body, headers=alice))
    assert fields_of(p) == ["model.pretrained"] and "config.json" in p["detail"], p
    assert stored(store) == 0


def test_a_pretrained_folder_must_lie_in_the_data_root(service, tmp_path):
    """A manifest may not make the server read (or unpickle) a model folder elsewhere on its disks."""
    import shutil

    from affinity.transformer_folder import builtin_model_folder
    from api.submission import runnable_manifest

    client, settings, store, alice, _ = service
    packaged = builtin_model_folder()
    outside = tmp_path / "elsewhere" / "minilm"
    outside.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
                 "special_tokens_map.json"):
        shutil.copy(packaged / name, outside / name)
    for where in (str(outside), "../elsewhere/minilm", "/etc"):
        body = {**EXAMPLE, "model": {**EXAMPLE["model"], "pretrained": where}}
        p = problem_of(client.post("/v1/jobs", json=body, headers=alice))
        assert fields_of(p) == ["model.pretrained"] and "outside the server's data root" in p["detail"], (where, p)
    (settings.data_root / "escape").symlink_to(outside, target_is_directory=True)
    body = {**EXAMPLE, "model": {**EXAMPLE["model"], "pretrained": "escape"}}
    p = problem_of(client.post("/v1/jobs", json=body, headers=alice))
    assert "outside the server's data root" in p["detail"], p
    assert stored(store) == 0
    # the same folder inside the root is accepted (its config and weight headers estimated), and the worker
    # runs it from the root
    shutil.copytree(outside, settings.data_root / "models" / "minilm")
    body = {**EXAMPLE, "model": {**EXAMPLE["model"], "pretrained": "models/minilm"}}
    r = client.post("/v1/jobs", json=body, headers=alice)
    assert r.status_code in (201, 202), r.text
    assert stored(store) == 1
    m = runnable_manifest(body, "alice", store, settings)
    assert Path(m.model.pretrained) == (settings.data_root / "models" / "minilm").resolve()


# -- plug-in kinds: a declared estimate, or the server's consent -----------------------------------------

def _plugin_kind(monkeypatch, **hooks):
    monkeypatch.setitem(MODEL_KINDS, "probe", ModelKind("probe", ("table",), MODEL_KINDS["mlp"].build, **hooks))


def test_a_plugin_kind_without_an_estimate_is_refused_unless_the_server_allows_it(service_settings, tiny_job,
                                                                                  monkeypatch):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.keys import create_key

    _plugin_kind(monkeypatch)
    body = {**tiny_job, "model": {"kind": "probe"}}
    for allow, expected in ((False, 422), (True, 201)):
        app = create_app(service_settings.model_copy(update={"allow_unestimated_kinds": allow}))
        headers = {"Authorization": f"Bearer {create_key(app.state.store.sessions, f'k{allow}').token}"}
        with TestClient(app, raise_server_exceptions=False) as client:
            r = client.post("/v1/jobs", json=body, headers=headers)
            assert r.status_code == expected, r.text
            if expected == 422:
                p = r.json()
                assert fields_of(p) == ["model.kind"] and "TASK_AFFINITY_ALLOW_UNESTIMATED_KINDS" in p["detail"]
                assert stored(app.state.store) == 0
            # the built-in kinds are estimated either way
            assert client.post("/v1/jobs", json=tiny_job, headers=headers).status_code == 201
        app.state.store.engine.dispose()


def test_a_plugin_kinds_declared_estimate_decides(service, tiny_job, monkeypatch):
    from affinity.footprint import MemoryEstimate, TimeEstimate

    client, _, store, alice, _ = service
    need = {"bytes": 2**40}

    def memory(manifest, shape):
        return MemoryEstimate(need["bytes"], {"probe weights": need["bytes"]}, {"probe weights": ("model.params",)})

    def seconds(manifest, shape):
        return TimeEstimate(1.0, {"probe": 1.0}, {"probe": ("model.params",)})

    _plugin_kind(monkeypatch, memory=memory, seconds=seconds)
    body = {**tiny_job, "model": {"kind": "probe", "params": {"width": 10**9}}}
    p = problem_of(client.post("/v1/jobs", json=body, headers=alice))
    assert fields_of(p) == ["model.params"] and "1024.0 GB" in p["detail"], p
    need["bytes"] = 2**20
    assert client.post("/v1/jobs", json=body, headers=alice).status_code == 201

    def broken(manifest, shape):
        raise KeyError("width")

    _plugin_kind(monkeypatch, memory=broken, seconds=seconds)
    p = problem_of(client.post("/v1/jobs", json=body, headers=alice))
    assert fields_of(p) == ["model.kind"] and "fix the plug-in" in p["detail"], p


# -- B. text datasets upload and run like tables ---------------------------------------------------------

def test_kinds_are_listed_for_the_form(service, monkeypatch):
    client, *_ = service
    kinds = client.get("/v1/schema/kinds").json()
    data = {k["name"]: k for k in kinds["data"]}
    models = {k["name"]: k for k in kinds["models"]}
    assert {"table", "text"} <= set(data) and {"mlp", "transformer"} <= set(models)
    assert data["text"]["columns"] == [{"field": "text", "many": False}, {"field": "text_pair", "many": False}]
    assert models["transformer"]["accepts"] == ["text"] and models["transformer"]["estimated"]
    assert models["transformer"]["settings"]["model"]["kind"] == "transformer"  # the built-in text job's settings
    _plugin_kind(monkeypatch)  # a kind added to the registry shows up without touching the form
    models = {k["name"]: k for k in client.get("/v1/schema/kinds").json()["models"]}
    assert models["transformer"]["fields"]["pretrained"] == "all-MiniLM-L6-v2"
    assert models["transformer"]["fields"]["max_length"] == 32 and models["mlp"]["fields"]["hidden"] == [64, 64]
    assert models["probe"] == {"name": "probe", "accepts": ["table"], "settings": {}, "fields": {},
                               "estimated": False}


def test_a_text_csv_uploads_and_runs_like_a_table(service):
    from api.worker import Worker

    client, settings, store, alice, _ = service
    r = client.post("/v1/datasets", files={"file": ("texts.csv", text_csv())}, headers=alice)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["columns"] == ["sentence", "id", "label_0", "label_1", "label_2"] and ds["rows"] == 36
    tasks = [{"name": f"label_{t}", "type": "binary"} for t in range(3)]
    job = {"dataset": {"kind": "text", "source": ds["id"], "text": "sentence", "tasks": tasks},
           "model": {"kind": "transformer", "max_length": 16, "lora_rank": 4},
           "training": {"epochs": 2, "batch_size": 32, "patience": 2},
           "estimation": {"method": "grad_tag", "params": "encoder", "num_subsets": 6, "subset_size": 2,
                          "projection_dim": 16, "chunk_rows": 32},
           "grouping": {"selection": "affinity", "k": 2}}
    # a text column that is not in the upload: refused at submit, naming the field
    bad = {**job, "dataset": {**job["dataset"], "text": "body"}}
    p = problem_of(client.post("/v1/jobs", json=bad, headers=alice))
    assert fields_of(p) == ["dataset.text"] and "sentence" in p["detail"]
    # an NPZ of arrays is not a table of texts: refused at submit (the text kind reads CSV or Parquet tables)
    import io

    npz = io.BytesIO()
    np.savez(npz, X=np.zeros((36, 2)), Y=np.zeros((36, 3)))
    arrays = client.post("/v1/datasets", files={"file": ("arrays.npz", npz.getvalue())}, headers=alice).json()
    p = problem_of(client.post("/v1/jobs", json={**job, "dataset": {**job["dataset"], "source": arrays["id"]}},
                               headers=alice))
    assert fields_of(p) == ["dataset.source"] and "a CSV table or a Parquet table" in p["detail"] \
        and "set dataset.kind to 'table'" in p["detail"], p
    # 4096 tokens per text: more than the encoder's 512 positions (its config), refused at submit
    long = {**job, "model": {**job["model"], "max_length": 4096}}
    p = problem_of(client.post("/v1/jobs", json=long, headers=alice))
    assert "model.max_length" in fields_of(p) and "use at most 512" in p["detail"], p
    submitted = client.post("/v1/jobs", json=job, headers=alice)
    assert submitted.status_code == 201, submitted.text
    assert Worker(settings, store, worker_id="w1").run_once()
    done = client.get(f"/v1/jobs/{submitted.json()['id']}", headers=alice).json()
    assert done["status"] == "succeeded", done
    s = done["summary"]
    assert s["rows"] == 36 and s["tasks"] == 3 and 0 < s["tokens"] <= 16 and "features" not in s
    assert sorted(sum(s["groups"], [])) == ["label_0", "label_1", "label_2"]
    m = s["model"]
    assert m["kind"] == "transformer" and 22_000_000 < m["parameters"] < 23_000_000
    assert m["lora"] == 6 * 2 * 4 * (384 + 384) and m["heads"] == 3 * 385
    assert m["trained"] == m["lora"] + m["heads"] and m["differentiated"] == m["lora"]  # params: encoder
    affinity = client.get(f"/v1/jobs/{done['id']}/affinity", headers=alice).json()
    assert affinity["tasks"] == ["label_0", "label_1", "label_2"] and np.isfinite(affinity["matrix"]).all()
