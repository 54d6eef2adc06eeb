"""Graphs through the service: nodes and edges uploaded in one request, jobs on them, estimates and refusals."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd

from api.worker import Worker

PROBLEM = "application/problem+json"


def assert_problem(r, status: int, *needles: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    for n in needles:
        assert n in json.dumps(body), (n, body)
    return body


def _graph(n: int = 60) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(0)
    ids = [f"n{i}" for i in range(n)]
    half = np.arange(n) < n // 2
    nodes = pd.DataFrame({"node": ids, "f0": rng.normal(size=n), "f1": rng.normal(size=n),
                          "a": half.astype(float), "b": (np.arange(n) % 2).astype(float)})
    src = rng.integers(0, n, 200)
    dst = np.where(rng.random(200) < 0.8, (src + rng.integers(1, 5, 200)) % n, rng.integers(0, n, 200))
    edges = pd.DataFrame({"source": [ids[i] for i in src], "target": [ids[j] for j in dst]})
    return nodes.to_csv(index=False).encode(), edges.to_csv(index=False).encode()


JOB = {"model": {"hidden": [8], "hops": 2}, "training": {"epochs": 3},
       "estimation": {"method": "grad_tag", "num_subsets": 6, "subset_size": 2, "projection_dim": 8,
                      "min_pair_count": 0},
       "grouping": {"k": 1, "selection": "affinity"}}


def test_graph_upload_in_one_request_and_a_job_on_it(service):
    client, settings, store, alice, bob = service
    nodes, edges = _graph()
    pq = io.BytesIO()
    pd.read_csv(io.BytesIO(edges)).to_parquet(pq)
    r = client.post("/v1/datasets", files={"nodes": ("nodes.csv", nodes), "edges": ("edges.parquet", pq.getvalue())},
                    headers=alice)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["format"] == "graph" and ds["rows"] == 60 and ds["columns"] == ["node", "f0", "f1", "a", "b"]
    assert ds["filename"] == "nodes.csv + edges.parquet"
    # the graph is read as one, with its own edges
    bad_kind = {"dataset": {"source": ds["id"], "tasks": ["a", "b"]}, **JOB, "model": {"hidden": [8]}}
    assert_problem(client.post("/v1/jobs", json=bad_kind, headers=alice), 422, "dataset.kind", "'graph'")
    with_edges = {"dataset": {"kind": "graph", "source": ds["id"], "edges": "e.csv", "tasks": ["a", "b"]}, **JOB}
    assert_problem(client.post("/v1/jobs", json=with_edges, headers=alice), 422, "dataset.edges")
    bad_id = {"dataset": {"kind": "graph", "source": ds["id"], "node_column": "id", "tasks": ["a", "b"]}, **JOB}
    assert_problem(client.post("/v1/jobs", json=bad_id, headers=alice), 422, "dataset.node_column")
    body = {"dataset": {"kind": "graph", "source": ds["id"], "tasks": ["a", "b"]}, **JOB}
    job = client.post("/v1/jobs", json=body, headers=alice)
    assert job.status_code == 201, job.text
    assert Worker(settings, store, worker_id="w1").run_once()
    done = client.get(f"/v1/jobs/{job.json()['id']}", headers=alice).json()
    assert done["status"] == "succeeded", done
    summary = client.get(f"/v1/jobs/{job.json()['id']}/artifacts/summary.json", headers=alice).json()
    assert summary["dataset"]["graph"]["nodes"] == 60 and summary["dataset"]["features"] == 2 * 3
    assert client.delete(f"/v1/datasets/{ds['id']}", headers=alice).status_code == 204


def test_bad_graph_uploads_are_4xx(service):
    client, settings, _, alice, _ = service
    nodes, edges = _graph()
    assert_problem(client.post("/v1/datasets", files={"nodes": ("n.csv", nodes)}, headers=alice), 422,
                   "'nodes' and 'edges'")
    assert_problem(client.post("/v1/datasets", files={"file": ("n.csv", nodes), "edges": ("e.csv", edges)},
                               headers=alice), 422, "'nodes' and 'edges'")
    assert_problem(client.post("/v1/datasets", files={"nodes": ("n.csv", nodes), "edges": ("e.csv", b"only\n1\n")},
                               headers=alice), 422, "edges:", "two node-id columns")
    npz = io.BytesIO()
    np.savez(npz, pairs=np.zeros((3, 2), dtype=np.int64))
    assert_problem(client.post("/v1/datasets", files={"nodes": ("n.csv", nodes), "edges": ("e.npz", npz.getvalue())},
                               headers=alice), 422, "edges:", "'edges'")
    assert client.get("/v1/datasets", headers=alice).json()["total"] == 0
    # a table upload is not a graph
    table = client.post("/v1/datasets", files={"file": ("t.csv", nodes)}, headers=alice).json()
    body = {"dataset": {"kind": "graph", "source": table["id"], "tasks": ["a", "b"]}, **JOB}
    assert_problem(client.post("/v1/jobs", json=body, headers=alice), 422, "dataset.source", "'nodes' and 'edges'")


def test_graph_jobs_are_estimated_and_refused_by_name(service, tmp_path):
    from affinity.manifest import parse_manifest
    from api.resources import builtin_shape, estimate_memory, estimate_seconds

    client, settings, _, alice, _ = service
    m = parse_manifest({"dataset": "graph"})
    shape = builtin_shape(m.dataset, 120, m.model)
    assert (shape.rows, shape.features, shape.tasks, shape.pairs) == (3000, 64, 120, 24000) and shape.edges > 20000
    assert 0.6e9 < estimate_memory(m, shape).total < 2e9 and estimate_seconds(m, shape).seconds > 0
    huge = {"dataset": {"source": "graph", "params": {"regions": 4, "communities_per_region": 10,
                                                     "nodes_per_region": 250000}}}
    body = assert_problem(client.post("/v1/jobs", json=huge, headers=alice), 422, "TASK_AFFINITY_WORKER_MEMORY_MB")
    assert any(e["field"].startswith("dataset.params.") for e in body["errors"])
    assert_problem(client.post("/v1/jobs", json={"dataset": {"source": "graph", "params": {"regions": 0}}},
                               headers=alice), 422, "dataset.params.regions")
    # an edge list is never read beside a built-in (it would escape the data root)
    beside = {"dataset": {"kind": "graph", "source": "graph", "edges": "/etc/hostname", "tasks": ["a"]}, **JOB}
    assert_problem(client.post("/v1/jobs", json=beside, headers=alice), 422, "dataset.edges", "built-in")
    beside["dataset"]["source"] = "planted"  # a table built-in is no graph's nodes either
    assert_problem(client.post("/v1/jobs", json=beside, headers=alice), 422, "'planted' is a built-in of another kind")
    # a graph in the data root: its edge list must lie there too
    nodes, edges = _graph()
    (settings.data_root / "nodes.csv").write_bytes(nodes)
    (tmp_path / "outside.csv").write_bytes(edges)
    outside = {"dataset": {"kind": "graph", "source": "nodes.csv", "edges": str(tmp_path / "outside.csv"),
                           "tasks": ["a", "b"]}, **JOB}
    assert_problem(client.post("/v1/jobs", json=outside, headers=alice), 422, "dataset.edges", "outside")
    without = {"dataset": {"kind": "graph", "source": "nodes.csv", "tasks": ["a", "b"]}, **JOB}
    assert_problem(client.post("/v1/jobs", json=without, headers=alice), 422, "dataset.edges", "is required")
    (settings.data_root / "edges.csv").write_bytes(edges)
    inside = {"dataset": {"kind": "graph", "source": "nodes.csv", "edges": "edges.csv", "tasks": ["a", "b"]}, **JOB}
    r = client.post("/v1/jobs", json=inside, headers=alice)
    assert r.status_code == 201, r.text
    small = {"dataset": {"source": "graph", "params": {"regions": 3, "communities_per_region": 4}}, **JOB}
    assert client.post("/v1/jobs", json=small, headers=alice).status_code == 201


def test_the_python_client_uploads_a_local_graph_with_its_job(service, tmp_path):
    from api.client import Client

    client, settings, store, alice, _ = service
    nodes, edges = _graph()
    (tmp_path / "nodes.csv").write_bytes(nodes)
    (tmp_path / "edges.csv").write_bytes(edges)
    manifest = {"dataset": {"kind": "graph", "source": "nodes.csv", "edges": "edges.csv", "tasks": ["a", "b"]}, **JOB}
    (tmp_path / "graph.json").write_text(json.dumps(manifest))
    import httpx

    class InProcess(httpx.BaseTransport):  # the app behind the TestClient, answers read whole
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = client._transport.handle_request(request)
            response.read()
            return httpx.Response(response.status_code, headers=response.headers, content=response.content)

    key = alice["Authorization"].split()[1]
    with Client("http://testserver", key, transport=InProcess()) as c:
        job = c.submit(tmp_path / "graph.json")
        (ds,) = c.datasets()
    assert ds["format"] == "graph" and ds["filename"] == "nodes.csv + edges.csv" and ds["rows"] == 60
    stored = client.get(f"/v1/jobs/{job.id}", headers=alice).json()
    assert stored["status"] == "queued"
    assert Worker(settings, store, worker_id="w1").run_once()
    assert client.get(f"/v1/jobs/{job.id}", headers=alice).json()["status"] == "succeeded"
