"""Graphs: SIGN features against a dense computation, the edge-list and node-table checks, the built-in graph."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from affinity.cli import app
from affinity.data.communities import make_communities
from affinity.data.graph import adjacency_from_edges
from affinity.data.table import DataError
from affinity.kinds import load_data
from affinity.manifest import ManifestError, parse_manifest
from affinity.sign import normalized_adjacency, propagate

runner = CliRunner()

# A small graph with a weighted edge, a repeated edge, a self-loop and an isolated node (5).
EDGES = [(0, 1, 1.0), (1, 2, 2.0), (2, 0, 1.0), (2, 3, 0.5), (3, 4, 1.0), (1, 2, 2.0), (4, 4, 3.0)]


def _dense_sign(A: np.ndarray, X: np.ndarray, hops: int) -> np.ndarray:
    M = A + np.eye(len(A))
    a_hat = np.diag(M.sum(1) ** -0.5) @ M @ np.diag(M.sum(0) ** -0.5)
    blocks, cur = [X], X
    for _ in range(hops):
        cur = a_hat @ cur
        blocks.append(cur)
    return np.concatenate(blocks, axis=1)


@pytest.mark.parametrize("directed", [False, True])
def test_sign_features_equal_dense_computation(directed):
    src = np.array([e[0] for e in EDGES])
    dst = np.array([e[1] for e in EDGES])
    w = np.array([e[2] for e in EDGES])
    A, loops = adjacency_from_edges(6, src, dst, w, directed)
    assert loops == 1
    dense = np.zeros((6, 6))
    for s, d, wt in EDGES:
        if s != d:
            dense[d, s] += wt  # row = the node the edge points to; repeated rows add up
    if not directed:
        dense = np.maximum(dense, dense.T)
    np.testing.assert_allclose(A.toarray(), dense)
    if not directed:
        np.testing.assert_allclose(normalized_adjacency(A).toarray(), normalized_adjacency(A).toarray().T, atol=1e-7)
    X = np.random.default_rng(0).standard_normal((6, 3))
    got = propagate(A, X, 3)
    assert got.shape == (6, 12) and got.dtype == np.float32
    np.testing.assert_allclose(got, _dense_sign(dense, X, 3), rtol=1e-5, atol=1e-6)
    # the isolated node 5 keeps its own features at every hop (its only edge is its own loop)
    np.testing.assert_allclose(got[5], np.tile(X[5], 4), rtol=1e-6)


def _files(tmp_path, edges=None, nodes=None, **dataset):
    edges = edges if edges is not None else pd.DataFrame(
        {"source": ["a", "b", "c", "d", "e"], "target": ["b", "c", "a", "e", "a"], "w": [1, 2, 1, 1, 1]})
    if nodes is None:
        rng = np.random.default_rng(0)
        ids = ["a", "b", "c", "d", "e", "f"] * 4
        ids = [f"{n}{i // 6}" if i >= 6 else n for i, n in enumerate(ids)]
        nodes = pd.DataFrame({"node": ids, "f1": rng.standard_normal(24), "f2": rng.standard_normal(24),
                              "t1": [0, 1] * 12, "t2": [1, 0, 0, 1] * 6})
    edges.to_csv(tmp_path / "edges.csv", index=False)
    nodes.to_csv(tmp_path / "nodes.csv", index=False)
    spec = {"dataset": {"kind": "graph", "source": "nodes.csv", "edges": "edges.csv", "tasks": ["t1", "t2"],
                        "min_rows_per_task": 4, **dataset},
            "model": {"hidden": [8]}, "training": {"epochs": 2}}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(spec))
    return path


def _load(path):
    from affinity.manifest import load_manifest

    return load_data(load_manifest(path))


def test_file_graph_loads_with_sign_features_and_graph_summary(tmp_path):
    data = _load(_files(tmp_path, edge_weight="w"))
    g = data.summary()["graph"]
    assert g == {"nodes": 24, "edges": 5, "directed": False, "isolated_nodes": 19, "self_loops_dropped": 0,
                 "features": "given"}
    assert data.X.shape == (24, 2 * 4) and data.feature_names[:3] == ["f1@0", "f2@0", "f1@1"]
    assert data.graph.adjacency[1, 0] == 1.0 and data.graph.adjacency[2, 1] == 2.0  # b–a weight 1, c–b weight 2


@pytest.mark.parametrize("edges, nodes_change, dataset, field, fix", [
    (pd.DataFrame({"source": ["a", "zz"], "target": ["b", "a"]}), None, {}, "dataset.edges",
     "'zz' in column 'source'"),
    (None, "duplicate", {}, "dataset.node_column", "duplicate node ids"),
    (pd.DataFrame({"from": ["a"], "to": ["b"]}), None, {}, "dataset.edge_columns", "its columns are"),
    (None, None, {"node_column": "id"}, "dataset.node_column", "'id' is not a column"),
    (pd.DataFrame({"source": ["a", "b"], "target": ["b", "c"], "w": [1.0, -2.0]}), None, {"edge_weight": "w"},
     "dataset.edge_weight", "not positive numbers"),
    (None, "no_features", {"feature_fallback": "error"}, "has no feature columns", "dataset.feature_fallback"),
    (pd.DataFrame({"source": ["a", None], "target": ["b", "c"]}), None, {}, "dataset.edge_columns 'source'",
     "missing node ids"),
])
def test_bad_edge_lists_and_node_tables_get_one_line_errors(tmp_path, edges, nodes_change, dataset, field, fix):
    nodes = None
    if nodes_change is not None:
        rng = np.random.default_rng(0)
        ids = [f"n{i}" for i in range(24)]
        ids[:3] = ["a", "b", "c"]
        if nodes_change == "duplicate":
            ids[5] = "b"
        nodes = pd.DataFrame({"node": ids, "t1": [0, 1] * 12, "t2": [1, 0, 0, 1] * 6})
        if nodes_change == "duplicate":
            nodes["f1"] = rng.standard_normal(24)
        edges = pd.DataFrame({"source": ["a", "b"], "target": ["b", "c"]})
    path = _files(tmp_path, edges, nodes, **dataset)
    with pytest.raises(DataError) as err:
        _load(path)
    message = str(err.value)
    assert field in message and fix in message and "\n" not in message
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_submit_and_worker_read_the_node_ids_by_the_same_rules(tmp_path):
    """check_edge_list (the API's check at submit, header only) refuses a node table with the same message as the
    worker's full read: a CSV without the node id column, an NPZ without Y; an NPZ without ids numbers its rows."""
    from affinity.data.graph import _node_table, check_edge_list, node_ids
    from affinity.manifest import load_manifest

    def refused(path) -> str:  # the one message of both reads
        with pytest.raises(DataError) as at_submit:
            check_edge_list(load_manifest(path).dataset)
        with pytest.raises(DataError) as at_read:
            _load(path)
        assert str(at_submit.value) == str(at_read.value)
        return str(at_read.value)

    path = _files(tmp_path, node_column="id")
    assert "dataset.node_column 'id'" in refused(path)
    np.savez(tmp_path / "nodes.npz", X=np.zeros((24, 2)))
    spec = json.loads(path.read_text())
    spec["dataset"].update(source="nodes.npz", node_column="node")
    spec["dataset"].pop("tasks")
    path.write_text(json.dumps(spec))
    assert "must hold 'Y'" in refused(path)
    np.savez(tmp_path / "nodes.npz", Y=np.zeros((24, 2)))
    ids, name = node_ids(load_manifest(path).dataset)
    assert name == "nodes.npz" and list(ids) == list(_node_table(load_manifest(path).dataset)[0])
    assert len(set(ids)) == 24


def test_node_table_without_features_falls_back_to_degree_or_random(tmp_path):
    nodes = pd.DataFrame({"node": [f"n{i}" for i in range(20)], "t1": [0, 1] * 10, "t2": [1, 0, 0, 1] * 5})
    nodes.loc[:2, "node"] = ["a", "b", "c"]
    edges = pd.DataFrame({"source": ["a", "a"], "target": ["b", "c"]})
    data = _load(_files(tmp_path, edges, nodes))
    assert data.graph.features == "degree"
    raw = data.X[:, 0] * data.feature_std[0] + data.feature_mean[0]
    np.testing.assert_allclose(raw[:4], np.log1p([2, 1, 1, 0]), rtol=1e-6, atol=1e-6)
    data = _load(_files(tmp_path, edges, nodes, feature_fallback="random"))
    assert data.graph.features == "random" and data.X.shape[1] == 32 * 4


def test_manifest_fields_of_the_graph_kind():
    m = parse_manifest({"dataset": "graph"})
    assert (m.dataset.kind, m.model.kind, m.model.hops) == ("graph", "sign", 3)
    with pytest.raises(DataError, match="dataset.edges is required"):
        load_data(parse_manifest({"dataset": {"kind": "graph", "source": __file__, "tasks": ["a"]}}))
    with pytest.raises(ManifestError, match="dataset.directed does not apply to dataset.kind 'table'"):
        parse_manifest({"dataset": {"source": "planted", "directed": True}})
    with pytest.raises(ManifestError, match="model.hops: does not apply to model.kind 'mlp'"):
        parse_manifest({"dataset": "planted", "model": {"hops": 2}})
    with pytest.raises(ManifestError, match="model.kind 'sign' takes dataset.kind 'graph'"):
        parse_manifest({"dataset": "planted", "model": {"kind": "sign"}})
    with pytest.raises(ManifestError, match="dataset.edges does not apply to the built-in graph"):
        parse_manifest({"dataset": {"source": "graph", "edges": "e.csv"}})
    with pytest.raises(ManifestError, match="model.pretrained: does not apply to model.kind 'sign'"):
        parse_manifest({"dataset": "graph", "model": {"pretrained": "x"}})


def test_builtin_graph_has_overlapping_communities_in_known_regions():
    t = make_communities({"regions": 3, "communities_per_region": 4, "nodes_per_region": 50, "labels_per_task": 40})
    assert t.n_tasks == 12 and len(t.truth_groups) == 3 and sorted(sum(t.truth_groups, [])) == sorted(t.task_names)
    A = t.graph.adjacency
    assert (A != A.T).nnz == 0 and A.diagonal().sum() == 0
    region = t.metadata["region_of_node"]
    members = [np.flatnonzero(t.Y[:, j] == 1) for j in range(t.n_tasks)]
    task_region = [int(np.unique(region[m])[0]) for m in members]  # a community's members lie in one region
    assert all(len(np.unique(region[m])) == 1 for m in members)
    # edges mostly stay inside a region; communities of one region share members
    rows, cols = A.nonzero()
    assert (region[rows] == region[cols]).mean() > 0.8
    name_region = dict(zip(t.task_names, task_region))
    assert all(len({name_region[n] for n in grp}) == 1 for grp in t.truth_groups)
    with pytest.raises(DataError, match="dataset.params.community_fraction"):
        make_communities({"community_fraction": 1.5})


def test_graph_job_runs_end_to_end(tmp_path):
    job = {"dataset": {"source": "graph", "params": {"regions": 3, "communities_per_region": 3,
                                                     "nodes_per_region": 60, "labels_per_task": 40}},
           "model": {"hidden": [16, 4], "hops": 2},
           "training": {"epochs": 20},
           "estimation": {"method": "grad_tag", "subset_size": 3, "num_subsets": 30, "projection_dim": 32},
           "grouping": {"k": 3, "selection": "affinity"}}
    path = tmp_path / "g.json"
    path.write_text(json.dumps(job))
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "180 nodes" in result.output and "isolated nodes" in result.output and "2 hops" in result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["dataset"]["features"] == 16 * 3 and summary["dataset"]["graph"]["nodes"] == 180
    assert summary["truth_ari"] is not None
