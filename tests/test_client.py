"""The Python client (api/client.py) against a real server process with one worker; docs/client.md's
example runs as written."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from api.client import (ApiProblem, Client, ClientError, Conflict, ConnectionFailed, InvalidRequest, JobFailed,
                        JobTimeout, NotFound, Unauthorized)
from conftest import TINY_JOB
from service_processes import free_port, served

ROOT = Path(__file__).resolve().parent.parent
WAIT = 240  # seconds: generous for a loaded 2-core machine; the jobs here take seconds
# A job long enough to still be queued or running when the test looks at it (it is cancelled).
SLOW_JOB = copy.deepcopy(TINY_JOB) | {"training": {"epochs": 5000, "patience": 5000, "batch_size": 8}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with served(tmp_path_factory.mktemp("client_server")) as running:
        yield running


@pytest.fixture
def client(server):
    url, key, _ = server
    with Client(url, key) as c:
        yield c


def test_submit_wait_affinity_groups_download(client, tmp_path, capsys):
    job = client.submit(copy.deepcopy(TINY_JOB))
    assert job.id.startswith("job_") and job.status in ("queued", "running")
    assert job.wait(progress=True, timeout=WAIT, poll=0.2) is job
    assert job.status == "succeeded" and job.progress == pytest.approx(1.0)
    assert job.id in capsys.readouterr().err  # the progress bar, on stderr

    matrix, tasks = job.affinity()
    assert isinstance(matrix, np.ndarray) and matrix.shape == (4, 4)
    assert tasks == [f"task_{i}" for i in range(4)]
    np.testing.assert_allclose(matrix, matrix.T)
    groups = job.groups()
    assert sorted(t for g in groups for t in g) == sorted(tasks) and len(groups) == 2
    assert groups == job.summary["groups"]

    paths = job.download(tmp_path / "out")
    names = {p.name for p in paths}
    assert {"affinity.json", "groups.json", "subsets.json", "heatmap.png", "model.pt", "gradients.npz"} <= names
    assert all(p.stat().st_size > 0 for p in paths)
    assert (tmp_path / "out" / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert job.artifact("summary.json").startswith(b"{")

    again = client.job(job.id)
    assert again.status == "succeeded" and again.id == job.id
    assert job.id in [j.id for j in client.jobs(status="succeeded")]


def test_upload_a_csv_and_run_a_job_on_it(client):
    ds = client.upload_dataset(ROOT / "examples" / "my_table.csv")
    assert ds["id"].startswith("ds_") and ds["format"] == "csv" and ds["rows"] == 400
    assert {"age", "churn", "spend"} <= set(ds["columns"])
    assert ds["id"] in [d["id"] for d in client.datasets()]

    job = client.submit({"dataset": {"source": ds["id"],
                                     "features": ["age", "income", "visits", "tenure", "score_a", "score_b"],
                                     "tasks": ["churn", "upgrade", "complaint", {"name": "spend", "type": "regression"}]},
                         "model": {"hidden": [8]}, "training": {"epochs": 20, "patience": 5},
                         "estimation": {"subset_size": 2, "num_subsets": 6, "projection_dim": 16},
                         "grouping": {"k": 2}})
    job.wait(progress=False, timeout=WAIT, poll=0.2)
    matrix, tasks = job.affinity()
    assert tasks == ["churn", "upgrade", "complaint", "spend"] and matrix.shape == (4, 4)
    assert sorted(t for g in job.groups() for t in g) == sorted(tasks)


def test_a_manifest_file_naming_a_local_table_uploads_it(client):
    job = client.submit(ROOT / "examples" / "my_table.yaml")
    try:
        assert job.manifest["dataset"]["source"].startswith("ds_")
    finally:
        job.cancel()


def test_errors_carry_the_servers_problem_detail(server, client, tiny_job):
    url, key, env = server
    with Client(url, None) as anonymous, pytest.raises(Unauthorized) as err:
        anonymous.jobs()
    assert err.value.status == 401 and "missing API key" in err.value.detail
    with Client(url, "ta_wrong_key_0000000000000000") as wrong, pytest.raises(Unauthorized) as err:
        wrong.job("job_x")
    assert "unknown or revoked API key" in err.value.detail and "unknown or revoked" in str(err.value)

    with pytest.raises(NotFound) as err:
        client.job("job_doesnotexist")
    assert err.value.status == 404 and "no job job_doesnotexist" in err.value.detail

    bad = tiny_job | {"estimation": {"num_subsets": -1}, "grouping": {"k": "many"}}
    with pytest.raises(InvalidRequest) as err:
        client.submit(bad)
    assert err.value.status == 422 and isinstance(err.value, ApiProblem)
    fields = {e["field"] for e in err.value.errors}
    assert {"estimation.num_subsets", "grouping.k"} <= fields, err.value.errors
    assert "estimation.num_subsets" in err.value.detail

    # results before the job has succeeded: 409; waiting for a cancelled job: JobFailed; a short wait: JobTimeout
    slow = client.submit(copy.deepcopy(SLOW_JOB))
    try:
        with pytest.raises(Conflict) as err:
            slow.affinity()
        assert err.value.status == 409 and "results exist once it has succeeded" in err.value.detail
        with pytest.raises(JobTimeout):
            slow.wait(progress=False, timeout=0.3, poll=0.1)
    finally:
        slow.cancel()
    with pytest.raises(JobFailed) as err:
        slow.wait(progress=False, timeout=WAIT, poll=0.2)
    assert slow.status == "cancelled" and "cancelled" in str(err.value)

    # another owner's job is not found
    other = subprocess.run([sys.executable, "-m", "affinity.cli", "keys", "create", "--name", "bob"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    with Client(url, other) as bob, pytest.raises(NotFound):
        bob.job(slow.id)

    # local problems: no server, no such manifest file
    with Client(f"http://127.0.0.1:{free_port()}", key) as nowhere, pytest.raises(ConnectionFailed) as err:
        nowhere.jobs()
    assert "cannot reach" in str(err.value)
    with pytest.raises(ClientError, match="manifest file .* does not exist"):
        client.submit("no/such/manifest.json")
    with pytest.raises(ClientError, match="cannot read dataset"):
        client.upload_dataset("no/such/table.csv")


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_docs_example_runs_as_written(server, tmp_path):
    url, key, _ = server
    blocks = _python_blocks((ROOT / "docs" / "client.md").read_text())
    assert len(blocks) >= 3 and "Client(os.environ[\"TASK_AFFINITY_SERVER\"]" in blocks[0]
    script = tmp_path / "example.py"
    script.write_text("\n".join(blocks))
    shutil.copy(ROOT / "examples" / "my_table.csv", tmp_path / "my_table.csv")
    env = {**os.environ, "TASK_AFFINITY_SERVER": url, "TASK_AFFINITY_KEY": key, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=WAIT * 2)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "(8, 8)" in out and "group 0:" in out and "group 1:" in out
    assert "'groups.json'" in out and (tmp_path / "results" / "affinity.json").is_file()
    assert "422" in out and "estimation.num_subsets" in out


def test_manifest_files_are_read_as_the_cli_reads_them(tmp_path):
    """The client reads a manifest file with the CLI's reader: a byte order mark is not part of it, a bad file is
    one line naming it (the same words as the CLI's), and the client imports no torch."""
    from api.client import load_manifest
    from affinity.manifest import ManifestError, read_manifest_file

    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + b'{"dataset": {"source": "planted"}}')
    assert load_manifest(bom) == {"dataset": {"source": "planted"}}
    for name, text in (("bad.yaml", "dataset: [source: planted"), ("bad.json", '{"dataset": '),
                       ("deep.json", "[" * 100_000 + "]" * 100_000)):
        (tmp_path / name).write_text(text)
        with pytest.raises(ClientError) as err:
            load_manifest(tmp_path / name)
        with pytest.raises(ManifestError) as cli:
            read_manifest_file(tmp_path / name)
        assert str(err.value) == str(cli.value) and "\n" not in str(err.value) and name in str(err.value)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ClientError, match="must hold a mapping"):
        load_manifest(tmp_path / "list.yaml")
    probe = "import sys; from api.client import load_manifest; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
