"""CLI commands against a running server: ``submit``, ``status``, ``download`` (through :mod:`api.client`).

The server and key come from ``--server``/``--key`` or the environment (``TASK_AFFINITY_SERVER``,
``TASK_AFFINITY_KEY``). Every error ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator

import typer

SERVER_ENV, KEY_ENV = "TASK_AFFINITY_SERVER", "TASK_AFFINITY_KEY"

Server = Annotated[str | None, typer.Option("--server", "-s", envvar=SERVER_ENV, show_envvar=True,
                                            help="Base URL of the server, e.g. http://127.0.0.1:8000.")]
Key = Annotated[str | None, typer.Option("--key", "-k", envvar=KEY_ENV, show_envvar=True,
                                         help="API key (`task-affinity keys create` on the server prints one).")]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@contextmanager
def _client(server: str | None, key: str | None) -> Iterator["Client"]:  # noqa: F821
    """A client; every client error raised inside becomes one line on stderr and exit 2."""
    from api.client import ApiProblem, Client, ClientError

    if not server:
        raise _fail(f"no server: pass --server URL or set {SERVER_ENV}")
    if not server.startswith(("http://", "https://")):
        raise _fail(f"--server must be an http:// or https:// URL, not {server!r}")
    if not key:
        raise _fail(f"no API key: pass --key KEY or set {KEY_ENV}")
    try:
        with Client(server, key) as client:
            yield client
    except ApiProblem as exc:
        fields = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in exc.errors
                           if e.get("message") and e.get("message") not in exc.detail)
        raise _fail(f"{exc.status} {exc.detail}" + (f" ({fields})" if fields else "")) from None
    except ClientError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail("interrupted (the job goes on running on the server)") from None


def _pct(job) -> str:  # noqa: ANN001
    return f"{job.progress:.0%}"


def _describe(job) -> str:  # noqa: ANN001
    parts = [job.id, job.status]
    if job.status == "running":
        parts += [job.stage or "-", _pct(job)]
        if job.eta_seconds is not None:
            parts.append(f"ETA {job.eta_seconds:.0f} s")
    if job.error:
        parts.append(f"error: {job.error}")
    return "  ".join(parts)


def _print_groups(groups: list[list[str]]) -> None:
    for i, group in enumerate(groups):
        typer.echo(f"group {i}: {', '.join(group)}")


def submit(
    manifest: Annotated[str, typer.Argument(help="Manifest file (.json/.yaml). A dataset source naming a local "
                                                 "file is uploaded first.")],
    server: Server = None,
    key: Key = None,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Wait for the job (progress bar on stderr).")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="With --wait: download the artifacts here.")] = None,
    timeout: Annotated[float | None, typer.Option(min=0, help="With --wait: give up after this many seconds.")]
    = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Resubmitting with the same key and manifest "
                                                             "returns the same job.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Submit a manifest to a server; prints the job id (with --wait: the groups once it has finished)."""
    with _client(server, key) as client:
        job = client.submit(manifest, idempotency_key=idempotency_key)
        typer.echo(job.id)
        if not wait:
            if out is not None:
                raise _fail("--out needs --wait (or run `task-affinity download JOB_ID --out DIR` later)")
            return
        job.wait(progress=not quiet, timeout=timeout)
        _print_groups(job.groups())
        if out is not None:
            for path in job.download(out):
                typer.echo(f"wrote {path}")


def status(
    job_id: Annotated[str | None, typer.Argument(help="Job id; without it, the latest jobs.")] = None,
    server: Server = None,
    key: Key = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the server's JSON.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=200, help="Without JOB_ID: how many jobs.")] = 20,
) -> None:
    """Status of a job on a server (stage, progress, ETA, error; the groups once it has succeeded)."""
    with _client(server, key) as client:
        if job_id is None:
            jobs = client.jobs(limit=limit)
            if as_json:
                typer.echo(json.dumps([j.data for j in jobs], indent=2))
            for job in [] if as_json else jobs:
                typer.echo(_describe(job))
            return
        job = client.job(job_id)
        if as_json:
            typer.echo(json.dumps(job.data, indent=2))
            return
        typer.echo(_describe(job))
        if job.status == "succeeded":
            _print_groups(job.groups())


def download(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the artifacts.")],
    server: Server = None,
    key: Key = None,
) -> None:
    """Download a finished job's artifacts (affinity.json, groups.json, heatmap.png, model.pt, ...)."""
    with _client(server, key) as client:
        job = client.job(job_id)
        if job.status != "succeeded":
            reason = f": {job.error}" if job.error else ""
            raise _fail(f"job {job.id} is {job.status}{reason}; results exist once it has succeeded")
        for path in job.download(out):
            typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Against a server")(submit)
    app.command(rich_help_panel="Against a server")(status)
    app.command(rich_help_panel="Against a server")(download)
