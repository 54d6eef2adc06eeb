"""`task-affinity keys` and `serve` as processes: keys printed once, usable, listable, revocable."""

from __future__ import annotations

import subprocess
import sys

import httpx

from service_processes import free_port, service_env, start_server, stop


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "affinity.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_keys_create_list_revoke(tmp_path, db_url):
    env = service_env(tmp_path / "home", db_url, TASK_AFFINITY_KEY_CACHE_SECONDS="0")
    made = cli(env, "keys", "create", "--name", "ci-bot", "--owner", "team-a")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("ta_") and len(token) > 40
    listed = cli(env, "keys", "list").stdout
    assert "ci-bot" in listed and "owner=team-a" in listed and token not in listed and "active" in listed
    key_id = listed.split()[0]
    port = free_port()
    server = start_server(env, port, tmp_path / "serve.log")
    try:
        url = f"http://127.0.0.1:{port}/v1/jobs"
        assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert "ta_" not in (tmp_path / "serve.log").read_text()  # a key existed: none is created or printed
        revoked = cli(env, "keys", "revoke", key_id)
        assert revoked.returncode == 0 and "revoked" in revoked.stdout
        r = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json")
    finally:
        stop(server)
    again = cli(env, "keys", "revoke", key_id)
    assert again.returncode == 2 and "no active key" in again.stderr and "Traceback" not in again.stderr


def test_bad_service_settings_are_one_line_errors(tmp_path):
    for extra in ({"TASK_AFFINITY_DATABASE_URL": "postgresql+psycopg://x:y@127.0.0.1:1/db"},
                  {"TASK_AFFINITY_DATABASE_URL": "nonsense"}, {"TASK_AFFINITY_LEASE_SECONDS": "-1"}):
        env = service_env(tmp_path / "home", "sqlite:///unused.db")
        env.update(extra)
        done = cli(env, "keys", "list")
        assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
