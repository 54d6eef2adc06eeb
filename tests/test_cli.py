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
