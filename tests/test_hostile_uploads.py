"""Hostile uploads and graph files at the API's edge: each request below was accepted only to fail in the
worker, passed a memory limit, or answered with a bare or huge message. Each must now be a 4xx problem naming
the field and the fix, decided before anything is queued (or, for a valid graph upload, a job).

The app runs in-process on SQLite (these tests probe the API's edge, not the database).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from affinity.manifest import ManifestError, load_manifest, parse_manifest

PROBLEM = "application/problem+json"
JOB = {"model": {"hidden": [8], "hops": 2}, "training": {"epochs": 2},
       "estimation": {"method": "grad_tag", "num_subsets": 6, "subset_size": 2, "projection_dim": 8,
                      "min_pair_count": 0},
       "grouping": {"k": 1, "selection": "affinity"}}
TABLE_JOB = {**JOB, "model": {"hidden": [8]}}


@pytest.fixture
def db_url(tmp_path):
    """SQLite only (overrides conftest's SQLite + PostgreSQL parameters)."""
    return f"sqlite:///{tmp_path / 'store.db'}"


def problem_of(r, status: int = 422) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    return r.json()


def fields_of(problem: dict) -> list[str]:
    return [e["field"] for e in problem.get("errors") or []]


def graph(n: int = 24) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    ids = [f"n{i}" for i in range(n)]
    nodes = pd.DataFrame({"node": ids, "f0": rng.normal(size=n), "f1": rng.normal(size=n),
                          "a": (np.arange(n) < n // 2).astype(float), "b": (np.arange(n) % 2).astype(float)})
    src = rng.integers(0, n, 60)
    edges = pd.DataFrame({"source": [ids[i] for i in src],
                          "target": [ids[j] for j in (src + rng.integers(1, 5, 60)) % n]})
    return nodes, edges


def jobs_stored(store) -> int:
    from sqlalchemy import text

    with store.engine.connect() as c:
        return c.execute(text("select count(*) from jobs")).scalar()


def test_edge_columns_are_checked_against_the_edge_list_at_submit(service):
    client, settings, store, alice, _ = service
    nodes, edges = graph()
    wrong = edges.rename(columns={"source": "from", "target": "to"}).to_csv(index=False).encode()
    up = client.post("/v1/datasets", headers=alice, files={"nodes": ("n.csv", nodes.to_csv(index=False).encode()),
                                                           "edges": ("e.csv", wrong)})
    assert up.status_code == 201, up.text
    ds = up.json()["id"]
    p = problem_of(client.post("/v1/jobs", headers=alice,
                               json={"dataset": {"kind": "graph", "source": ds, "tasks": ["a", "b"]}, **JOB}))
    assert fields_of(p) == ["dataset.edge_columns[0]", "dataset.edge_columns[1]"] and "'from'" in p["detail"], p
    p = problem_of(client.post("/v1/jobs", headers=alice, json={
        "dataset": {"kind": "graph", "source": ds, "tasks": ["a", "b"], "edge_columns": ["from", "to"],
                    "edge_weight": "w"}, **JOB}))
    assert fields_of(p) == ["dataset.edge_weight"], p
    nodes.to_csv(settings.data_root / "nodes.csv", index=False)
    (settings.data_root / "e.csv").write_bytes(wrong)
    p = problem_of(client.post("/v1/jobs", headers=alice, json={
        "dataset": {"kind": "graph", "source": "nodes.csv", "edges": "e.csv", "tasks": ["a", "b"]}, **JOB}))
    assert "dataset.edge_columns[0]" in fields_of(p), p
    assert jobs_stored(store) == 0


def test_edge_ids_are_checked_against_the_node_table_at_submit(service):
    client, settings, store, alice, _ = service
    nodes, edges = graph()

    def submit(edge_list: pd.DataFrame, **dataset):
        up = client.post("/v1/datasets", headers=alice, files={
            "nodes": ("n.csv", nodes.to_csv(index=False).encode()),
            "edges": ("e.csv", edge_list.to_csv(index=False).encode())})
        assert up.status_code == 201, up.text
        return client.post("/v1/jobs", headers=alice, json={
            "dataset": {"kind": "graph", "source": up.json()["id"], "tasks": ["a", "b"], **dataset}, **JOB})

    unknown = edges.copy()
    unknown.loc[7, "target"] = "zz"
    p = problem_of(submit(unknown))
    assert fields_of(p) == ["dataset.edges"], p
    assert "'zz' in column 'target', row 7" in p["detail"] and "not in the node table" in p["detail"], p
    missing = edges.copy()
    missing.loc[3, "source"] = np.nan  # an empty cell: NaN once read
    p = problem_of(submit(missing))
    assert fields_of(p) == ["dataset.edge_columns"], p
    assert "'source' has 1 missing node ids" in p["detail"] and "row 3" in p["detail"], p
    p = problem_of(submit(edges.assign(w=[1.0] * 59 + [0.0]), edge_weight="w"))
    assert fields_of(p) == ["dataset.edge_weight"] and "row 59" in p["detail"], p
    # a graph in the data root is checked as an upload is
    nodes.to_csv(settings.data_root / "nodes.csv", index=False)
    unknown.to_csv(settings.data_root / "edges.csv", index=False)
    p = problem_of(client.post("/v1/jobs", headers=alice, json={
        "dataset": {"kind": "graph", "source": "nodes.csv", "edges": "edges.csv", "tasks": ["a", "b"]}, **JOB}))
    assert fields_of(p) == ["dataset.edges"] and "'zz'" in p["detail"], p
    assert jobs_stored(store) == 0
    assert submit(edges).status_code == 201  # the valid edge list of the same node table is queued


def test_edge_ids_of_many_chunks_are_counted_and_placed_in_the_whole_file(service, monkeypatch):
    import affinity.data.graph

    client, settings, store, alice, _ = service
    monkeypatch.setattr(affinity.data.graph, "EDGE_CHUNK_ROWS", 7)  # 60 edges: 9 chunks
    nodes, edges = graph()
    edges.loc[[9, 30, 52], "source"] = ["x1", "x2", "x3"]
    nodes.to_csv(settings.data_root / "nodes.csv", index=False)
    edges.to_csv(settings.data_root / "edges.csv", index=False)
    job = {"dataset": {"kind": "graph", "source": "nodes.csv", "edges": "edges.csv", "tasks": ["a", "b"]}, **JOB}
    p = problem_of(client.post("/v1/jobs", headers=alice, json=job))
    assert "3 edges name nodes" in p["detail"] and "'x1' in column 'source', row 9" in p["detail"], p
    assert jobs_stored(store) == 0
    # data-root files larger than an upload may be are read by the worker alone (the API's time stays bounded)
    settings.upload_limit_mb = 1000 / 2**20
    assert client.post("/v1/jobs", headers=alice, json=job).status_code == 201


def test_the_built_in_graph_example_is_queued(service):
    client, settings, _, alice, _ = service
    settings.max_tasks = 5000  # the default: the example has 120 tasks, the test server allows 64
    manifest = json.loads((Path(__file__).parents[1] / "examples" / "graph.json").read_text())
    r = client.post("/v1/jobs", headers=alice, json=manifest)
    assert r.status_code == 201, r.text


def test_jobs_that_can_only_fail_are_refused_at_submit(service):
    client, settings, store, alice, _ = service
    nodes, _ = graph()
    nodes.to_csv(settings.data_root / "nodes.csv", index=False)
    p = problem_of(client.post("/v1/jobs", headers=alice, json={
        "dataset": {"kind": "graph", "source": "nodes.csv", "tasks": ["a", "b"]}, **JOB}))
    assert fields_of(p) == ["dataset.edges"] and "edge list" in p["detail"], p
    p = problem_of(client.post("/v1/jobs", headers=alice, json={"dataset": {"source": "nodes.csv"}, **TABLE_JOB}))
    assert fields_of(p) == ["dataset.tasks"] and "list the label columns" in p["detail"], p
    assert jobs_stored(store) == 0


def test_an_uploaded_graph_with_an_npz_node_table_runs(service):
    client, settings, store, alice, _ = service
    nodes, edges = graph()
    buf = io.BytesIO()
    np.savez(buf, X=nodes[["f0", "f1"]].to_numpy(), Y=nodes[["a", "b"]].to_numpy(),
             node=nodes.node.to_numpy().astype(str))
    up = client.post("/v1/datasets", headers=alice, files={"nodes": ("nodes.npz", buf.getvalue()),
                                                           "edges": ("edges.csv", edges.to_csv(index=False).encode())})
    assert up.status_code == 201, up.text
    r = client.post("/v1/jobs", headers=alice, json={
        "dataset": {"kind": "graph", "source": up.json()["id"], "min_rows_per_task": 4}, **JOB})
    assert r.status_code == 201, r.text


def test_a_data_root_csv_with_cr_line_ends_counts_its_rows(service):
    from api.resources import csv_rows

    _, settings, *_ = service
    header = ",".join([f"f{i}" for i in range(3)] + ["t"])
    line = "1,1,1,0"
    for name, sep in (("lf.csv", "\n"), ("cr.csv", "\r"), ("crlf.csv", "\r\n")):
        (settings.data_root / name).write_bytes((header + sep + sep.join([line] * 1000) + sep).encode())
        assert csv_rows(settings.data_root / name) == 1000, name
        assert csv_rows(settings.data_root / name, block=7) == 1000, name  # a \r\n split between two blocks


def test_uploads_with_no_rows_are_refused_whatever_the_format(service):
    client, _, _, alice, _ = service
    b = io.BytesIO()
    np.savez(b, X=np.ones((0, 2)), Y=np.ones((0, 2)))
    p = problem_of(client.post("/v1/datasets", headers=alice, files={"file": ("d.npz", b.getvalue())}))
    assert "no rows" in p["detail"], p
    b = io.BytesIO()
    pd.DataFrame({"a": [1.0], "t": [0.0], "u": [1.0]}).iloc[:0].to_parquet(b)
    p = problem_of(client.post("/v1/datasets", headers=alice, files={"file": ("d.parquet", b.getvalue())}))
    assert "no rows" in p["detail"], p


def test_a_csv_upload_is_read_in_chunks(service, monkeypatch):
    import api.uploads

    client, _, _, alice, _ = service
    monkeypatch.setattr(api.uploads, "CSV_CHUNK_CELLS", 10)  # 3 columns: chunks of 3 rows
    csv = "a,b,t\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(100))
    r = client.post("/v1/datasets", headers=alice, files={"file": ("d.csv", csv.encode())})
    assert r.status_code == 201, r.text
    assert r.json()["rows"] == 100 and r.json()["columns"] == ["a", "b", "t"], r.json()


def test_a_file_part_without_a_file_name_is_named_not_echoed(service):
    client, _, _, alice, _ = service
    secret = b"a,b,t\n1,2,0\nsecret-row,4,1\n"
    p = problem_of(client.post("/v1/datasets", headers=alice, files={"file": ("", secret)}))
    assert "is not a file" in p["detail"] and "secret-row" not in json.dumps(p), p


def test_a_bad_manifest_gets_a_bounded_answer(service):
    client, _, _, alice, _ = service
    r = client.post("/v1/jobs", headers=alice, json={"dataset": {"source": "planted", "tasks": list(range(5000))}})
    p = problem_of(r)
    assert len(p["errors"]) <= 21 and "more invalid fields not listed" in p["errors"][-1]["message"], p["errors"][-1]
    assert len(r.content) < 100_000
    r = client.post("/v1/jobs", headers=alice, json={"dataset": "planted", "x": "a" * 100_000})
    p = problem_of(r)
    assert len(r.content) < 150_000 and len(p["detail"]) < 2000, len(p["detail"])  # the value, once, in "value"


def test_edge_columns_naming_one_column_twice_are_refused():
    with pytest.raises(ManifestError, match=r"edge_columns.*'source' twice.*self-loop"):
        parse_manifest({"dataset": {"kind": "graph", "source": "n.csv", "edges": "e.csv", "tasks": ["a"],
                                    "edge_columns": ["source", "source"]}})


def test_a_deeply_nested_manifest_is_named(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ManifestError, match="deep.json nests arrays or objects too deeply"):
        load_manifest(path)


def test_validate_names_a_fix_that_exists(tmp_path):
    from typer.testing import CliRunner

    from affinity.cli import app

    spec = {"dataset": {"source": "planted", "params": {"tasks": 2, "groups": 1, "rows_per_task": 40,
                                                        "features": 4}},
            "model": {"hidden": [8]}, "training": {"epochs": 2}, "grouping": {"k": 1, "selection": "affinity"},
            "estimation": {"num_subsets": 1, "subset_size": 2, "projection_dim": 8, "min_pair_count": 0}}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(spec))
    result = CliRunner().invoke(app, ["validate", str(path), "--subsets", "3", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "validation needs at least 3 tasks" in result.output, result.output


def test_a_parquet_upload_with_a_damaged_data_page_is_refused(service):
    # the footer (schema, row count) reads fine; only decoding the pages finds the damage
    import pyarrow.parquet as pq

    client, store, _, alice, _ = service
    rng = np.random.default_rng(0)
    b = io.BytesIO()
    pd.DataFrame({"a": rng.normal(size=2000), "t": rng.integers(0, 2, 2000).astype(float)}).to_parquet(b)
    raw = bytearray(b.getvalue())
    page = pq.ParquetFile(io.BytesIO(bytes(raw))).metadata.row_group(0).column(0).data_page_offset
    raw[page + 40: page + 400] = bytes(x ^ 0xFF for x in raw[page + 40: page + 400])
    assert pq.ParquetFile(io.BytesIO(bytes(raw))).metadata.num_rows == 2000
    p = problem_of(client.post("/v1/datasets", headers=alice, files={"file": ("d.parquet", bytes(raw))}))
    assert p["detail"].startswith("cannot read the file as PARQUET") and "upload" in p["detail"], p
    # the intact file is accepted
    r = client.post("/v1/datasets", headers=alice, files={"file": ("d.parquet", b.getvalue())})
    assert r.status_code == 201, r.text


def test_an_upload_with_a_part_twice_or_an_unread_part_is_refused(service):
    client, store, _, alice, _ = service
    csv = b"a,t\n1,0\n2,1\n3,0\n"
    r = client.post("/v1/datasets", headers=alice, files=[("file", ("a.csv", csv)), ("file", ("b.csv", csv))])
    p = problem_of(r)
    assert "['file'] more than once" in p["detail"], p
    p = problem_of(client.post("/v1/datasets", headers=alice, files=[("file", ("a.csv", csv)),
                                                                     ("data", ("b.csv", csv))]))
    assert "['data']" in p["detail"] and "does not read" in p["detail"], p
    r = client.get("/v1/datasets", headers=alice)
    assert r.json()["total"] == 0  # nothing stored
    assert client.post("/v1/datasets", headers=alice, files={"file": ("a.csv", csv)}).status_code == 201
