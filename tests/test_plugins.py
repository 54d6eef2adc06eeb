"""Plug-ins: an installed package's data and model kinds, by entry point, run a job named in a manifest, from the
CLI and through the service (which checks a plug-in's file columns at submit, as for its own kinds)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service_processes import free_port, printed_key, service_env, start_server, stop

PLUGIN = Path(__file__).parent / "data" / "plugin_pkg"
CLI = [sys.executable, "-c", "from affinity.cli import app; app()"]

MANIFEST = {
    "dataset": {"kind": "rings", "source": "rings", "params": {"tasks": 6, "rows_per_task": 40}},
    "model": {"kind": "probe", "params": {"width": 8}},
    "training": {"epochs": 30, "patience": 10},
    "estimation": {"method": "grad_tag", "subset_size": 3, "num_subsets": 20, "projection_dim": 16},
    "grouping": {"selection": "affinity", "k": 2},
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The plug-in package installed into a folder of its own (on PYTHONPATH for the processes that use it)."""
    root = tmp_path_factory.mktemp("plugin")
    src, target = root / "plugin", root / "site"
    shutil.copytree(PLUGIN, src)  # pip builds in the source folder: keep the repository clean
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(src)], check=True, timeout=600,
                   capture_output=True)
    return target


def test_an_installed_plugin_runs_a_job_and_is_needed(tmp_path, site):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(MANIFEST))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([*CLI, "run", str(path), "--out", str(tmp_path / "out")], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    groups = json.loads((tmp_path / "out" / "groups.json").read_text())
    assert sorted(t for g in groups["groups"] for t in g) == [f"ring_{t}" for t in range(6)]
    assert json.loads((tmp_path / "out" / "affinity.json").read_text())["manifest"]["model"]["kind"] == "probe"

    # Without the package the kind is unknown: one line naming the field, nothing imported from the manifest.
    env.pop("PYTHONPATH")
    out = subprocess.run([*CLI, "run", str(path), "--out", str(tmp_path / "out2")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2
    assert "dataset.kind: 'rings' is not a data kind" in out.stderr and "Traceback" not in out.stderr


def test_the_service_checks_and_runs_plugin_kinds(tmp_path, site):
    env = service_env(tmp_path / "home", f"sqlite:///{tmp_path / 'store.db'}", TASK_AFFINITY_DATA_ROOT=str(tmp_path),
                      TASK_AFFINITY_ALLOW_UNESTIMATED_KINDS="true", OMP_NUM_THREADS="1",
                      PYTHONPATH=os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))
    port = free_port()
    server = start_server(env, port, tmp_path / "serve.log", workers=1)
    try:
        base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {printed_key(tmp_path / 'serve.log')}"}
        kinds = httpx.get(f"{base}/v1/schema/kinds", headers=auth).json()
        assert {"rings", "centered"} <= {k["name"] for k in kinds["data"]}
        rng = np.random.default_rng(0)
        X = rng.standard_normal((120, 2)) * [3.0, 0.5] + [10.0, -4.0]
        rows = ["x,y,side,far,odd"] + [f"{a},{b},{int(a > 10)},{int(abs(b + 4) > 0.4)},{i % 2}"
                                       for i, (a, b) in enumerate(X)]
        up = httpx.post(f"{base}/v1/datasets", headers=auth,
                        files={"file": ("points.csv", "\n".join(rows).encode())}).json()
        model = {"kind": "probe", "params": {"width": 8}}
        rest = {k: MANIFEST[k] for k in ("training", "estimation", "grouping")}

        def submit(dataset):
            return httpx.post(f"{base}/v1/jobs", headers=auth, json={"dataset": dataset, "model": model, **rest})

        # the plug-in's data kind reads a CSV: its columns are checked at submit, before anything is queued
        for dataset, field, value in [
            ({"kind": "centered", "source": up["id"], "tasks": ["side", "near"]}, "dataset.tasks[1].name", "near"),
            ({"kind": "centered", "source": up["id"], "tasks": ["side", "far"], "features": ["x", "z"]},
             "dataset.features[1]", "z"),
            ({"kind": "centered", "source": up["id"]}, "dataset.tasks", None),
            ({"kind": "rings", "source": up["id"], "tasks": ["side", "far"]}, "dataset.source", up["id"]),
        ]:
            r = submit(dataset)
            assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
            problems = r.json()["errors"]
            assert [(p["field"], p["value"]) for p in problems] == [(field, value)], problems
        assert "set dataset.kind to 'table' or 'text' or 'centered'" in submit(
            {"kind": "rings", "source": up["id"]}).json()["errors"][0]["message"]
        assert httpx.get(f"{base}/v1/jobs", headers=auth).json()["total"] == 0
        # a CSV job and a job the plug-in makes from its params both run
        ids = [submit({"kind": "centered", "source": up["id"], "tasks": ["side", "far", "odd"],
                       "features": ["x", "y"]}).json()["id"],
               submit(MANIFEST["dataset"]).json()["id"]]
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            jobs = [httpx.get(f"{base}/v1/jobs/{i}", headers=auth).json() for i in ids]
            if all(j["status"] in ("succeeded", "failed") for j in jobs):
                break
            time.sleep(0.5)
        assert [j["status"] for j in jobs] == ["succeeded", "succeeded"], [j.get("error") for j in jobs]
        groups = [httpx.get(f"{base}/v1/jobs/{i}/groups", headers=auth).json()["groups"] for i in ids]
        assert sorted(t for g in groups[0] for t in g) == ["far", "odd", "side"]
        assert sorted(t for g in groups[1] for t in g) == [f"ring_{t}" for t in range(6)]
    finally:
        stop(server)
