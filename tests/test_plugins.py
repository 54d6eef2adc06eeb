"""Plug-ins: an installed package's data and model kinds, by entry point, run a job named in a manifest."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

PLUGIN = Path(__file__).parent / "data" / "plugin_pkg"
CLI = [sys.executable, "-c", "from affinity.cli import app; app()"]

MANIFEST = {
    "dataset": {"kind": "rings", "source": "rings", "params": {"tasks": 6, "rows_per_task": 40}},
    "model": {"kind": "probe", "params": {"width": 8}},
    "training": {"epochs": 30, "patience": 10},
    "estimation": {"method": "grad_tag", "subset_size": 3, "num_subsets": 20, "projection_dim": 16},
    "grouping": {"selection": "affinity", "k": 2},
}


def test_an_installed_plugin_runs_a_job_and_is_needed(tmp_path):
    src, site = tmp_path / "plugin", tmp_path / "site"
    shutil.copytree(PLUGIN, src)  # pip builds in the source folder: keep the repository clean
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(src)], check=True, timeout=600,
                   capture_output=True)
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
