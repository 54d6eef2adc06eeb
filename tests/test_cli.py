"""The CLI: bad input gets one clear line on stderr and exit code 2, never a traceback."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from affinity.cli import app

runner = CliRunner()


def run_cli(*args):
    return runner.invoke(app, list(args))


def assert_clean_error(result, *fragments):
    assert result.exit_code == 2, result.output
    text = result.output
    assert "Traceback" not in text
    assert "error:" in text
    for f in fragments:
        assert f in text.replace("\n", " "), text


def test_schema_is_json():
    result = run_cli("schema")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["required"] == ["dataset"]


def test_example_prints_a_valid_manifest():
    result = run_cli("example", "digits")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["dataset"]["source"] == "digits"


def test_bad_manifest_value(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"dataset": "planted", "estimation": {"projection_dim": 0}}))
    assert_clean_error(run_cli("run", str(path), "--out", str(tmp_path / "o")), "estimation.projection_dim", "(got 0)")


def test_missing_manifest_file(tmp_path):
    assert_clean_error(run_cli("run", str(tmp_path / "none.yaml")), "does not exist")


def test_missing_column(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1,0\n2,1\n")
    (tmp_path / "m.json").write_text(json.dumps({"dataset": {"source": "t.csv", "tasks": ["label"]}}))
    assert_clean_error(run_cli("run", str(tmp_path / "m.json"), "--out", str(tmp_path / "o")),
                       "task columns ['label'] are not in t.csv")


def test_k_larger_than_tasks_fails_before_training(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"dataset": {"source": "planted", "params": {"tasks": 4, "groups": 2}},
                                                 "grouping": {"k": 9}}))
    assert_clean_error(run_cli("run", str(tmp_path / "m.json"), "--out", str(tmp_path / "o")),
                       "grouping.k=9 exceeds the number of tasks (4)")


def test_uncovered_pairs_are_refused(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"dataset": {"source": "planted", "params": {"tasks": 12, "groups": 3}},
                                                 "estimation": {"num_subsets": 3, "subset_size": 3}}))
    assert_clean_error(run_cli("run", str(tmp_path / "m.json"), "--out", str(tmp_path / "o")),
                       "raise estimation.num_subsets")


def test_console_script_error_has_no_traceback(tmp_path):
    """The installed entry point, as a user runs it."""
    exe = [sys.executable, "-m", "affinity.cli"]
    proc = subprocess.run([*exe, "run", str(tmp_path / "nope.json")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "does not exist" in proc.stderr


SMALL_JOB = {"dataset": {"source": "planted", "params": {"tasks": 6, "groups": 2, "rows_per_task": 60}},
             "model": {"hidden": [8, 1], "activation": "tanh"},
             "training": {"epochs": 40, "patience": 30},
             "estimation": {"subset_size": 3, "num_subsets": 10}}


def test_validate_and_evaluate_commands(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps(SMALL_JOB))
    result = run_cli("validate", str(tmp_path / "m.json"), "--subsets", "5", "--out", str(tmp_path / "v"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "v" / "validation.json").read_text())
    for key in ("median_rel_error", "mean_rel_error", "spearman", "pair_spearman", "gradtag_seconds",
                "exact_seconds", "time_ratio", "linearization"):
        assert key in report
    assert report["subsets"] == 5 and (tmp_path / "v" / "validation.png").exists()
    result = run_cli("evaluate", str(tmp_path / "m.json"), "--random-seeds", "2", "-e", "grad_tag", "-e", "scratch",
                     "--out", str(tmp_path / "e"))
    assert result.exit_code == 0, result.output
    ev = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    assert ev["test_fraction"] == 0.2
    assert set(ev["summary"]) == {"grad_tag", "scratch"}
    assert set(ev["groupings"]) >= {"grad_tag", "scratch", "one_model_for_all", "one_model_per_task", "planted"}
    for s in ev["summary"].values():
        assert {"test_loss", "regret", "percentile", "predicted_gain", "measured_gain"} <= set(s)
    assert "measured gain over one model for all" in " ".join(result.output.split())  # as the console wraps it
    assert (tmp_path / "e" / "evaluation.png").exists()
    bad = run_cli("evaluate", str(tmp_path / "m.json"), "-e", "nope")
    assert bad.exit_code == 2 and "--estimator 'nope'" in bad.output
