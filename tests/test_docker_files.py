"""docker/, the files themselves (tests/test_containers.py builds and runs them): every command the
images and compose run is a real `task-affinity` command with options and values it accepts (run with
--help through the installed entry point, and parsed by the CLI itself); every TASK_AFFINITY_* variable
set is a setting and parses; health checks hit real endpoints; the images pin pyproject's torch."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILES = ("Dockerfile.cpu", "Dockerfile.cuda")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def dockerfile(name: str) -> str:
    return (DOCKER / name).read_text().replace("\\\n", " ")


def instructions(name: str, keyword: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^{keyword}\s+(.*)$", dockerfile(name), flags=re.M)]


def dockerfile_env(name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in instructions(name, "ENV"):
        for item in shlex.split(line):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def image_commands(compose: dict) -> dict[str, list[str]]:
    commands = {f"{name} CMD": json.loads(instructions(name, "CMD")[-1]) for name in DOCKERFILES}
    commands |= {f"compose {name}": svc["command"] for name, svc in compose["services"].items() if "command" in svc}
    return commands


def entry_point() -> list[str]:
    """The `task-affinity` console script the package installs (the images run the same one)."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["task-affinity"] == "affinity.cli:app"
    script = Path(sys.executable).parent / "task-affinity"
    return [str(script)] if script.exists() else [sys.executable, "-m", "affinity.cli"]


def test_every_command_is_a_real_cli_command(compose):
    import typer

    from affinity.cli import app

    commands = image_commands(compose)
    assert {"compose api", "compose worker", "Dockerfile.cpu CMD", "Dockerfile.cuda CMD"} <= set(commands)
    cli = typer.main.get_command(app)
    for where, command in commands.items():
        assert command[0] == "task-affinity", (where, command)
        name, args = command[1], command[2:]
        assert name in cli.commands, f"{where}: no command {name!r}"
        cli.commands[name].make_context(name, list(args))  # parses options and converts values, as at run time

    # and through the installed entry point, in a process of its own, as the containers start it
    unique = {tuple(c[1:]) for c in commands.values()}
    procs = {args: subprocess.Popen([*entry_point(), *args, "--help"], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for args in unique}
    for args, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, (args, out[-2000:])
        assert "Usage:" in out


def test_compose_services(compose):
    services = compose["services"]
    assert {"postgres", "api", "worker"} <= set(services)
    assert {"pgdata", "artifacts"} <= set(compose["volumes"])

    pg = services["postgres"]
    assert pg["image"] == "postgres:15"
    assert any(v.endswith(":/var/lib/postgresql/data") and v.startswith("pgdata:") for v in pg["volumes"])
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])

    api, worker = services["api"], services["worker"]
    assert api["command"][:2] == ["task-affinity", "serve"]
    serve = api["command"]
    assert serve[serve.index("--workers") + 1] == "0" and serve[serve.index("--host") + 1] == "0.0.0.0"
    port = serve[serve.index("--port") + 1] if "--port" in serve else "8000"
    assert any(str(p).endswith(f":{port}") for p in api["ports"])
    check = " ".join(api["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in check
    assert worker["command"] == ["task-affinity", "worker"]
    assert "ports" not in worker and "container_name" not in worker  # scalable: `--scale worker=N`
    for svc in (api, worker):
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert worker["depends_on"]["api"]["condition"] == "service_healthy"


def test_health_checks_hit_real_routes(compose, tmp_path):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.settings import Settings

    check = " ".join(compose["services"]["api"]["healthcheck"]["test"])
    path = re.search(r"https?://[^/'\"]+(/[\w/]+)", check).group(1)
    app = create_app(Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'db.sqlite'}"))
    with TestClient(app) as client:
        assert client.get(path).status_code == 200
    app.state.store.engine.dispose()


def test_environment_variables_are_settings(compose, monkeypatch):
    from api.settings import Settings

    known = set()
    for name, field in Settings.model_fields.items():
        known.add(f"TASK_AFFINITY_{name.upper()}")
        alias = field.validation_alias
        known.update(getattr(alias, "choices", []) or ([alias] if isinstance(alias, str) else []))

    sources = {f"compose {n}": s.get("environment", {}) for n, s in compose["services"].items() if n != "postgres"}
    sources |= {name: dockerfile_env(name) for name in DOCKERFILES}
    for where, env in sources.items():
        for key in env:
            if key.startswith("TASK_AFFINITY_") or key == "DATABASE_URL":
                assert key in known, f"{where}: {key} is not a setting of api/settings.py"

    # compose's values parse as settings (with its default for ${POSTGRES_PASSWORD:-...})
    for key, value in compose["services"]["worker"]["environment"].items():
        monkeypatch.setenv(key, re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value)))
    settings = Settings()
    assert settings.db_url.startswith("postgresql+psycopg://") and "@postgres:5432/" in settings.db_url
    home = compose["services"]["worker"]["environment"]["TASK_AFFINITY_HOME"]
    assert str(settings.home) == home
    for svc in ("api", "worker"):  # the state folder (uploads, artifacts) is the shared volume
        assert f"artifacts:{home}" in compose["services"][svc]["volumes"]


def test_images_pin_pyprojects_torch_and_copy_the_packages():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(d for d in deps if d.startswith("torch=="))
    version = torch_pin.split("==")[1]
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}

    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in dockerfile("Dockerfile.cpu")
    assert "ARG TORCH_INDEX=https://pypi.org/simple" in dockerfile("Dockerfile.cuda")  # PyPI's Linux wheel: CUDA
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for name in DOCKERFILES:
        assert f"ARG TORCH_VERSION={version}" in dockerfile(name), f"{name} must install {torch_pin}"
        assert '"torch==${TORCH_VERSION}"' in dockerfile(name)
        # multi-stage from BASE_IMAGE (default the public Python image), a non-root user, a health check
        assert instructions(name, "FROM") == ["${BASE_IMAGE} AS build", "build AS package", "${BASE_IMAGE}"]
        assert "ARG BASE_IMAGE=python:3.11-slim" in dockerfile(name)
        assert instructions(name, "USER") == ["affinity"] and len(instructions(name, "HEALTHCHECK")) == 1
        copied = set()
        for line in instructions(name, "COPY"):
            if line.startswith("--from="):  # from the build stage, not the repository
                continue
            *sources, _ = line.split()
            for src in sources:
                assert (ROOT / src).exists(), f"{name} copies {src}, which is not in the repository"
                copied.add(src)
        assert packages <= copied, f"{name} must copy every package: {packages - copied}"
        assert all(f"!{src.rstrip('/')}" in {i.rstrip("/") for i in ignore} for src in copied)
        assert dockerfile_env(name)["TASK_AFFINITY_HOME"] == "/var/lib/task-affinity"
