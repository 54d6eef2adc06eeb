"""`task-affinity submit / status / download` against a real server process; errors are one line, exit 2."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from affinity.cli import app
from conftest import TINY_JOB
from service_processes import free_port, served

WAIT = 240


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with served(tmp_path_factory.mktemp("remote_cli_server")) as (url, key, _):
        yield url, key


def cli(*args: str, env: dict[str, str] | None = None):
    """In process (fast); stdout and stderr apart."""
    return CliRunner().invoke(app, list(args), env={"TASK_AFFINITY_SERVER": None, "TASK_AFFINITY_KEY": None,
                                                   **(env or {})})


def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_submit_wait_status_download(server, tmp_path):
    url, key = server
    manifest = tmp_path / "tiny.json"
    manifest.write_text(json.dumps(TINY_JOB))

    # the real entry point, in its own process: submit and wait, then the artifacts
    done = subprocess.run([sys.executable, "-m", "affinity.cli", "submit", str(manifest), "--server", url,
                           "--key", key, "--wait", "--out", str(tmp_path / "out"), "--timeout", str(WAIT)],
                          capture_output=True, text=True, timeout=WAIT + 60)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    job_id = lines[0]
    assert job_id.startswith("job_")
    assert sum(line.startswith("group ") for line in lines) == 2
    assert (tmp_path / "out" / "groups.json").is_file() and (tmp_path / "out" / "affinity.json").is_file()
    assert job_id in done.stderr  # the progress bar

    env = {"TASK_AFFINITY_SERVER": url, "TASK_AFFINITY_KEY": key}
    status = cli("status", job_id, env=env)
    assert status.exit_code == 0, status.stderr
    assert status.stdout.startswith(f"{job_id}  succeeded") and "group 0: " in status.stdout
    data = json.loads(cli("status", job_id, "--json", env=env).stdout)
    assert data["id"] == job_id and data["status"] == "succeeded"
    listing = cli("status", env=env)
    assert listing.exit_code == 0 and job_id in listing.stdout

    got = cli("download", job_id, "--out", str(tmp_path / "again"), env=env)
    assert got.exit_code == 0, got.stderr
    assert (tmp_path / "again" / "heatmap.png").is_file() and (tmp_path / "again" / "model.pt").is_file()
    assert json.loads((tmp_path / "again" / "groups.json").read_text()) == \
        json.loads((tmp_path / "out" / "groups.json").read_text())

    quick = cli("submit", str(manifest), env=env)  # without --wait: the id only
    assert quick.exit_code == 0 and quick.stdout.strip().startswith("job_")
    assert cli("status", quick.stdout.strip(), env=env).exit_code == 0


def test_errors_are_one_line_and_exit_2(server, tmp_path):
    url, key = server
    env = {"TASK_AFFINITY_SERVER": url, "TASK_AFFINITY_KEY": key}
    good = tmp_path / "tiny.json"
    good.write_text(json.dumps(TINY_JOB))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(copy.deepcopy(TINY_JOB) | {"estimation": {"num_subsets": -1}}))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")

    one_line_error(cli("status", "job_x"), "no server", "TASK_AFFINITY_SERVER")
    one_line_error(cli("status", "job_x", "--server", url), "no API key", "TASK_AFFINITY_KEY")
    one_line_error(cli("status", "job_x", "--server", "127.0.0.1:1", "--key", key), "http://")
    one_line_error(cli("status", "job_x", env={**env, "TASK_AFFINITY_KEY": "ta_wrong_000000000000000000"}),
                   "401", "unknown or revoked API key")
    one_line_error(cli("status", "job_nope", env=env), "404", "no job job_nope")
    one_line_error(cli("download", "job_nope", "--out", str(tmp_path / "x"), env=env), "404")
    one_line_error(cli("submit", str(bad), env=env), "422", "estimation.num_subsets")
    one_line_error(cli("submit", str(broken), env=env), "not valid JSON")
    one_line_error(cli("submit", str(tmp_path / "missing.json"), env=env), "missing.json' does not exist")
    one_line_error(cli("status", "job_x", env={**env, "TASK_AFFINITY_SERVER": f"http://127.0.0.1:{free_port()}"}),
                   "cannot reach")

    slow = copy.deepcopy(TINY_JOB) | {"training": {"epochs": 5000, "patience": 5000, "batch_size": 8}}
    slow_path = tmp_path / "slow.json"
    slow_path.write_text(json.dumps(slow))
    job_id = cli("submit", str(slow_path), env=env).stdout.strip()
    try:
        one_line_error(cli("download", job_id, "--out", str(tmp_path / "y"), env=env), job_id,
                       "results exist once it has succeeded")
        one_line_error(cli("submit", str(good), "--wait", "--timeout", "0.5", "--quiet", env=env), "still")
    finally:
        from api.client import Client

        with Client(url, key) as client:
            for job in client.jobs():
                if job.status in ("queued", "running"):
                    job.cancel()

    # a real process: the same one line, no traceback
    done = subprocess.run([sys.executable, "-m", "affinity.cli", "status", "job_nope", "--server", url, "--key", key],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.strip() == "error: 404 no job job_nope", done.stderr
