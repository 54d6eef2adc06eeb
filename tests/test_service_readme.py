"""README's service flow, run as written: start `task-affinity serve`, POST the built-in manifest with
curl (examples/service_demo.sh), poll, download the groups."""

from __future__ import annotations

import json
import subprocess

from service_processes import free_port, printed_key, service_env, start_server, stop


def test_readme_service_flow_with_curl(tmp_path, repo_root):
    env = service_env(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'db.sqlite'}")
    env.pop("TASK_AFFINITY_TORCH_THREADS")  # as a user runs it: serve splits the cores among its workers
    port = free_port()
    log = tmp_path / "serve.log"
    server = start_server(env, port, log, workers=1)
    try:
        key = printed_key(log)  # printed once, on first start
        out = tmp_path / "groups.json"
        done = subprocess.run(["bash", str(repo_root / "examples" / "service_demo.sh"), f"http://127.0.0.1:{port}",
                               str(repo_root / "examples" / "planted.json"), str(out)],
                              env={**env, "TASK_AFFINITY_KEY": key}, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "succeeded" in done.stdout
        groups = json.loads(out.read_text())
        assert groups["k"] == len(groups["groups"]) > 1 and groups["recommendation"] == "groups"
        assert "over one model for all" in groups["verdict"] and groups["predicted_gain"] is not None
        assert groups["truth"]["ari"] > 0.3
    finally:
        stop(server)
    # a second start finds the key and prints none
    server = start_server(env, port, tmp_path / "serve2.log", workers=0)
    stop(server)
    assert "ta_" not in (tmp_path / "serve2.log").read_text()


def test_the_flow_through_two_api_processes_on_one_port(tmp_path, repo_root):
    """`serve --api-processes 2`: two uvicorn processes share the port (all state is in the
    database), the same flow succeeds through them, and SIGTERM stops them all."""
    import os
    import re

    env = service_env(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'db.sqlite'}")
    port = free_port()
    log = tmp_path / "serve.log"
    server = start_server(env, port, log, workers=1, api_processes=2)
    try:
        key = printed_key(log)
        out = tmp_path / "groups.json"
        done = subprocess.run(["bash", str(repo_root / "examples" / "service_demo.sh"), f"http://127.0.0.1:{port}",
                               str(repo_root / "examples" / "planted.json"), str(out)],
                              env={**env, "TASK_AFFINITY_KEY": key}, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        groups = json.loads(out.read_text())
        assert groups["k"] == len(groups["groups"]) and groups["verdict"]
        api = set(re.findall(r"Started server process \[(\d+)\]", log.read_text()))
        assert len(api) == 2, log.read_text()[-3000:]
    finally:
        stop(server)
    assert server.returncode == 0, log.read_text()[-3000:]
    for pid in api:  # the supervisor took its API processes down with it
        try:
            os.kill(int(pid), 0)
            alive = True
        except ProcessLookupError:
            alive = False
        assert not alive, pid
