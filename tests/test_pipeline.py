"""The main job end to end on the built-in planted data, as README's command runs it."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from affinity.cli import app
from affinity.defaults import builtin_manifest
from affinity.pipeline import run_job


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("planted")
    result = CliRunner().invoke(app, ["run", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_the_advice_splits_the_planted_tasks_and_says_how_sure_it_is(planted_run):
    out, printed = planted_run
    groups = json.loads((out / "groups.json").read_text())
    assert sorted(sum(groups["groups"], [])) == sorted(sum(groups["truth"]["groups"], []))
    assert groups["k"] == len(groups["groups"]) > 1 and groups["recommendation"] == "groups"
    advice = groups["advice"]
    ks = [c["k"] for c in advice["candidates"]]
    assert 1 in ks and 16 in ks and groups["k"] in ks  # one model for all and one per task were checked
    # the chosen candidate: T's groups or, with grouping.candidates_from both, maybe the output agreement's at that k
    assert advice["chosen_from"] in advice["candidates_from"]
    chosen = next(c for c in advice["candidates"] if c["k"] == groups["k"] and c["source"] == advice["chosen_from"])
    assert chosen["predicted_val_loss"] == min(c["predicted_val_loss"] for c in advice["candidates"]) or \
        chosen["predicted_val_loss"] <= min(c["predicted_val_loss"] for c in advice["candidates"]) + \
        advice["tolerance"] * advice["one_model_for_all_val_loss"]
    assert advice["in_sample_gain"] >= advice["min_gain"]  # a split is advised only if it is predicted to pay
    assert advice["min_gain_alone"] == 0.005  # the bars the choice used are echoed
    assert len(advice["selection_check"]["folds"]) == 10 and groups["predicted_gain"] is not None
    assert f"{groups['k']} groups" in groups["verdict"] and "over one model for all" in printed
    assert groups["truth"]["ari"] > 0.3  # the planted structure shows (merged pairs of groups count as partial)


def test_artifacts(planted_run):
    out, printed = planted_run
    aff = json.loads((out / "affinity.json").read_text())
    n = len(aff["tasks"])
    M = np.array(aff["matrix"])
    assert M.shape == (n, n) and np.allclose(M, M.T) and np.allclose(np.diag(M), 0)
    assert aff["method"] == "scratch" and aff["manifest"]["dataset"]["source"] == "planted"
    assert (np.array(aff["counts"])[~np.eye(n, dtype=bool)] >= 1).all()
    subsets = json.loads((out / "subsets.json").read_text())["subsets"]
    assert len(subsets) == aff["estimator"]["num_subsets"]
    assert set(subsets[0]["val_loss"]) == set(subsets[0]["tasks"])
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "gradients.npz").exists()  # grad_tag only
    import torch

    ckpt = torch.load(out / "model.pt", weights_only=False)
    assert ckpt["task_names"] == aff["tasks"]
    assert "ARI" in printed and "groups" in printed


def test_same_seed_same_result():
    m = builtin_manifest("planted")
    m.dataset.params.update({"tasks": 8, "groups": 2, "rows_per_task": 60})
    m.estimation.num_subsets = 40
    a, b = run_job(m), run_job(m)
    np.testing.assert_array_equal(a.estimate.matrix, b.estimate.matrix)
    assert a.grouping.groups == b.grouping.groups


def test_csv_example_runs(repo_root, tmp_path):
    result = CliRunner().invoke(app, ["run", str(repo_root / "examples" / "my_table.yaml"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    groups = json.loads((tmp_path / "groups.json").read_text())
    assert groups["k"] == 2 and groups["truth"] is None
    assert sorted(sum(groups["groups"], [])) == ["churn", "complaint", "spend", "upgrade"]


def test_bfloat16_projection_gives_the_same_groups():
    """estimation.projection_precision=bfloat16 end to end: the affinities move by far less than
    they separate the planted groups, and the groups are the same."""
    m = builtin_manifest("planted")
    m.dataset.params.update({"tasks": 8, "groups": 2, "rows_per_task": 60})
    m.estimation.num_subsets = 40
    m.estimation.method = "grad_tag"
    exact = run_job(m)
    m.estimation.projection_precision = "bfloat16"
    low = run_job(m)
    a, b = exact.estimate.matrix, low.estimate.matrix
    assert np.abs(a - b).max() <= 0.05 * np.abs(a).max()
    assert sorted(map(sorted, low.grouping.groups)) == sorted(map(sorted, exact.grouping.groups))
