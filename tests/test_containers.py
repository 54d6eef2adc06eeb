"""docker/ built and run for real, with README's container commands: a Debian bookworm base image made
with debootstrap and `docker import` (no image registry is reachable here), the CPU image built from it,
one container (health check, key, API), then the compose stack (PostgreSQL, API, two workers) running
README's service flow (examples/service_demo.sh: submit the built-in job, poll, fetch the groups), one
worker container killed mid-job (the job still finishes, exactly once), the API container restarted
(nothing lost), and everything torn down.

Needs a Docker engine, compose (`docker compose` or Debian's `docker-compose`) and debootstrap, as
root: `.ci/run` installs and starts them. Without an engine the tests fail; set
TASK_AFFINITY_SKIP_CONTAINERS=1 to skip them on a machine that has none.

pip inside the builds gets this machine's pip settings only from here: the package's dependencies are
collected into a wheel folder by the test's own pip (its configuration: index, CA bundle, local wheel
folder with the CPU torch wheel), served on loopback and passed as build args (PIP_NO_INDEX,
PIP_FIND_LINKS); the builds use the host network to reach it. The Dockerfiles carry none of it.

Seconds per step and image sizes go to runs/containers.json (`.ci/run` prints it)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from service_processes import free_port, printed_key, wait_for

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "task-affinity-test/bookworm"
IMAGE = "task-affinity:cpu"
COMPOSE_FILES = ["-f", "docker/compose.yaml", "-f", "docker/test/compose.test.yaml"]
MIRROR = "http://deb.debian.org/debian"
WHEEL_PORT = 47651
REPORT = ROOT / "runs" / "containers.json"
facts: dict[str, object] = {}


def record(key: str, value: object) -> None:
    facts[key] = value
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(facts, indent=1) + "\n")


def sh(cmd: list[str], timeout: float = 600, env: dict[str, str] | None = None, check: bool = True,
       **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-4000:]}")
    return proc


def timed(key: str, cmd: list[str], **kw) -> subprocess.CompletedProcess:
    start = time.monotonic()
    proc = sh(cmd, **kw)
    record(f"seconds_{key}", round(time.monotonic() - start, 1))
    return proc


def docker_engine() -> None:
    if os.environ.get("TASK_AFFINITY_SKIP_CONTAINERS"):
        pytest.skip("TASK_AFFINITY_SKIP_CONTAINERS is set")
    if not shutil.which("docker") or sh(["docker", "info"], timeout=60, check=False).returncode != 0:
        pytest.fail("no Docker engine answers `docker info`: install Debian's docker.io and start dockerd as root "
                    "(.ci/run does), or set TASK_AFFINITY_SKIP_CONTAINERS=1 to skip the container tests")


def compose_command() -> list[str]:
    """`docker compose` (Compose v2) where installed, else `docker-compose` (v1.29, Debian 12's package)."""
    if sh(["docker", "compose", "version"], timeout=60, check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor `docker-compose` is installed (.ci/run installs Debian's docker-compose)")


def image_exists(name: str) -> bool:
    return sh(["docker", "image", "inspect", name], timeout=60, check=False).returncode == 0


def image_mb(name: str) -> int:
    return round(int(sh(["docker", "image", "inspect", "-f", "{{.Size}}", name]).stdout.strip()) / 1e6)


def build_base_image(work: Path) -> None:
    """Debian bookworm with python3 and its venv module, by debootstrap and `docker import` (kept between
    runs on one machine: built only when the tag is missing)."""
    if image_exists(BASE_IMAGE):
        record("base_image", "reused")
        return
    if not shutil.which("debootstrap"):
        pytest.fail("debootstrap is not installed (.ci/run installs Debian's debootstrap)")
    rootfs = work / "rootfs"
    timed("debootstrap", ["debootstrap", "--variant=minbase", "--include=python3,python3-venv", "bookworm",
                          str(rootfs), MIRROR], timeout=900)
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for f in (rootfs / cache).glob("*"):
            if f.is_file():
                f.unlink()
    timed("docker_import", ["bash", "-c", f'tar -C "{rootfs}" -c . | docker import -c \'CMD ["bash"]\' - {BASE_IMAGE}'])
    sh(["rm", "-rf", str(rootfs)])
    record("base_image", "built")
    record("base_image_mb", image_mb(BASE_IMAGE))


def wheel_folder(work: Path) -> Path:
    """The image's Python dependencies as wheels, collected by this machine's pip with its configuration."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    folder = work / "wheels"
    timed("pip_wheels", [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(folder), *deps,
                         "setuptools>=68", "wheel"], timeout=1800)
    return folder


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The base image and the CPU image (README's build command plus this machine's pip settings);
    yields the build args the compose override needs."""
    docker_engine()
    work = tmp_path_factory.mktemp("containers")
    start = time.monotonic()
    build_base_image(work)
    folder = wheel_folder(work)
    handler = functools.partial(_Quiet, directory=str(folder))
    try:  # one port from run to run: the URL is a build arg, so the build cache holds across runs
        server = http.server.ThreadingHTTPServer(("127.0.0.1", WHEEL_PORT), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    links = f"http://127.0.0.1:{server.server_address[1]}/"
    # README: docker build -f docker/Dockerfile.cpu -t task-affinity:cpu .
    timed("build_cpu_image", ["docker", "build", "-f", "docker/Dockerfile.cpu", "-t", IMAGE, ".",
                              "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
                              "--build-arg", "PIP_NO_INDEX=1", "--build-arg", f"PIP_FIND_LINKS={links}"],
          timeout=3600)
    record("cpu_image_mb", image_mb(IMAGE))
    record("seconds_images", round(time.monotonic() - start, 1))
    try:
        yield {"TA_TEST_BASE_IMAGE": BASE_IMAGE, "TA_TEST_PIP_FIND_LINKS": links}
    finally:
        server.shutdown()


def health(container: str) -> str:
    return sh(["docker", "inspect", "-f", "{{.State.Health.Status}}", container], check=False).stdout.strip()


def test_one_container(built, tmp_path):
    """README's one-container commands: the image's health check turns healthy, the first start prints a
    key, the API answers it, and the process is not root."""
    name, volume, port = f"ta-test-{os.getpid()}", f"ta-test-{os.getpid()}", free_port()
    try:
        start = time.monotonic()
        # README: docker run -d --name task-affinity -p 8000:8000 -v task-affinity:/var/lib/task-affinity task-affinity:cpu
        sh(["docker", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", "-v",
            f"{volume}:/var/lib/task-affinity", IMAGE])
        wait_for(lambda: health(name) == "healthy", 180, "the container's HEALTHCHECK to pass")
        record("seconds_one_container_healthy", round(time.monotonic() - start, 1))
        log = tmp_path / "container.log"
        log.write_text(sh(["docker", "logs", name]).stdout)  # README: docker logs task-affinity 2>&1 | grep ta_
        key = printed_key(log)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert httpx.get(f"{url}/v1/jobs", headers={"Authorization": "Bearer ta_wrong"}).status_code == 401
        assert sh(["docker", "exec", name, "id", "-u"]).stdout.strip() == "10001"
        assert httpx.get(f"{url}/readyz").json()["workers"] == {"expected": 1, "alive": 1}
    finally:
        sh(["docker", "rm", "-f", name], check=False)
        sh(["docker", "volume", "rm", "-f", volume], check=False)


class Stack:
    """The compose project under test: README's compose commands with the test override and a project name."""

    def __init__(self, env: dict[str, str], project: str, logs: Path):
        self.env, self.project, self.logs = env, project, logs
        self.cmd = [*compose_command(), "-p", project, *COMPOSE_FILES]

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return sh([*self.cmd, *args], env=self.env, timeout=timeout, check=check, stdin=subprocess.DEVNULL)

    def containers(self, service: str) -> list[str]:
        return self("ps", "-q", service).stdout.split()

    def sql(self, query: str) -> str:
        return self("exec", "-T", "postgres", "psql", "-U", "task_affinity", "-d", "task_affinity", "-Atc",
                    query).stdout.strip()

    def save_logs(self) -> None:
        self.logs.write_text(self("logs", "--no-color", timeout=120, check=False).stdout)


def worker_log(container: str) -> str:
    return sh(["docker", "logs", container]).stdout


def test_compose_stack_worker_killed_api_restarted(built, tmp_path):
    port = free_port()
    project = f"tatest{os.getpid()}"
    env = dict(os.environ, **built, POSTGRES_PASSWORD="change-me", TASK_AFFINITY_PORT=str(port))
    stack = Stack(env, project, tmp_path / "compose.log")
    url = f"http://127.0.0.1:{port}"
    try:
        start = time.monotonic()
        # README: POSTGRES_PASSWORD=change-me docker compose -f docker/compose.yaml up -d --build
        timed("compose_up_build", [*stack.cmd, "up", "-d", "--build"], env=env, timeout=3600, stdin=subprocess.DEVNULL)
        # README: docker compose -f docker/compose.yaml up -d --scale worker=2
        stack("up", "-d", "--scale", "worker=2")
        wait_for(lambda: all(health(c) == "healthy" for c in stack.containers("api") + stack.containers("worker")),
                 240, "the API and both workers to be healthy")
        record("seconds_compose_healthy", round(time.monotonic() - start, 1))
        assert health(stack.containers("postgres")[0]) == "healthy"
        workers = stack.containers("worker")
        assert len(workers) == 2

        # README: docker compose -f docker/compose.yaml logs api | grep ta_
        api_log = tmp_path / "api.log"
        api_log.write_text(stack("logs", "--no-color", "api").stdout)
        key = printed_key(api_log)
        # README: docker compose -f docker/compose.yaml exec api task-affinity keys create --name alice
        alice = re.search(r"\bta_[A-Za-z0-9_-]{20,}", stack("exec", "-T", "api", "task-affinity", "keys", "create",
                                                              "--name", "alice").stdout).group(0)
        assert httpx.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {alice}"}).status_code == 200

        # README's service flow: examples/service_demo.sh submits the built-in job, polls it, fetches its groups
        groups_file = tmp_path / "groups.json"
        demo_out = (tmp_path / "demo.log").open("w+")
        demo = subprocess.Popen(["bash", "examples/service_demo.sh", url, "examples/planted.json", str(groups_file)],
                                cwd=ROOT, env=dict(os.environ, TASK_AFFINITY_KEY=key), stdout=demo_out,
                                stderr=subprocess.STDOUT, text=True)
        auth = {"Authorization": f"Bearer {key}"}
        job_start = time.monotonic()

        def running_job() -> dict | None:
            items = httpx.get(f"{url}/v1/jobs", headers=auth, timeout=10).json()["items"]
            return items[0] if items and items[0]["status"] == "running" and items[0]["progress"] > 0 else None

        wait_for(lambda: running_job() is not None, 600, "the job to run")
        job = running_job()
        job_id, progress = job["id"], job["progress"]
        host = stack.sql(f"SELECT worker_id FROM jobs WHERE id = '{job_id}'").rsplit("-", 1)[0]
        victim = next(c for c in workers if c.startswith(host))
        assert f"runs {job_id} (attempt 1)" in worker_log(victim)
        sh(["docker", "kill", victim])  # mid-job: its lease expires and the job is requeued for the other worker
        record("job_progress_when_killed", progress)

        if demo.wait(timeout=1200) != 0:
            demo_out.seek(0)
            raise AssertionError(f"service_demo.sh failed:\n{demo_out.read()}")
        record("seconds_job_with_a_kill", round(time.monotonic() - job_start, 1))
        job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth).json()
        assert job["status"] == "succeeded" and job["attempts"] == 2, job
        # exactly once: one job, run by the killed worker (attempt 1), then by one other (attempt 2), the one
        # whose finish is recorded
        runs = {c: re.findall(rf"runs {job_id} \(attempt (\d)\)", worker_log(c))
                for c in {*workers, *stack.containers("worker")}}
        assert sorted(a for found in runs.values() for a in found) == ["1", "2"], runs
        assert runs[victim][0] == "1", runs
        finisher = stack.sql(f"SELECT worker_id FROM jobs WHERE id = '{job_id}'").rsplit("-", 1)[0]
        assert runs[next(c for c in runs if c.startswith(finisher))][-1] == "2", (finisher, runs)
        record("killed_worker_restarted_by_docker", sh(["docker", "inspect", "-f", "{{.State.Running}}", victim]).stdout.strip())
        assert httpx.get(f"{url}/v1/jobs", headers=auth).json()["total"] == 1
        tasks = [t for g in json.loads(groups_file.read_text())["groups"] for t in g]
        assert len(tasks) == len(set(tasks)) == 16, tasks  # the built-in job's 16 tasks, each in one group
        results = {p: httpx.get(f"{url}/v1/jobs/{job_id}/{p}", headers=auth).content
                   for p in ("groups", "affinity", "heatmap.png")}

        # the API container restarted: keys, the job and its artifacts (database and shared volume) are all there
        start = time.monotonic()
        stack("restart", "api")
        wait_for(lambda: health(stack.containers("api")[0]) == "healthy", 240, "the API to be healthy again")
        record("seconds_api_restart_healthy", round(time.monotonic() - start, 1))
        for k in (key, alice):
            assert httpx.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {k}"}).status_code == 200
        again = httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth).json()
        assert {k: again[k] for k in ("status", "attempts", "finished_at", "summary")} == \
            {k: job[k] for k in ("status", "attempts", "finished_at", "summary")}
        assert httpx.get(f"{url}/v1/jobs", headers=auth).json()["total"] == 1
        assert results["groups"] == groups_file.read_bytes()
        for p, content in results.items():
            assert httpx.get(f"{url}/v1/jobs/{job_id}/{p}", headers=auth).content == content, p
    finally:
        stack.save_logs()
        start = time.monotonic()
        stack("down", "-v", "--remove-orphans", timeout=300, check=False)  # README: ... down -v
        record("seconds_compose_down", round(time.monotonic() - start, 1))
    left = sh(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"]).stdout.split()
    assert not left, f"containers left after down: {left}"
    assert not [v for v in sh(["docker", "volume", "ls", "-q"]).stdout.split() if v.startswith(f"{project}_")]
