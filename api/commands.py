"""Service commands of the CLI: ``serve``, ``worker``, ``keys``."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Annotated

import typer

keys_app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke.")


def _store():
    from affinity.messages import first_line
    from api.db import engine_for
    from api.settings import get_settings
    from api.store import JobStore

    from pydantic import ValidationError
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    try:
        settings = get_settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        _fail(f"setting {'.'.join(map(str, err['loc'])).upper()}: {err['msg']} (check the TASK_AFFINITY_* environment)")
    try:
        return settings, JobStore(engine_for(settings.db_url))
    except (ArgumentError, NoSuchModuleError) as exc:
        _fail(f"DATABASE_URL {settings.db_url!r} is not a usable SQLAlchemy URL ({exc}); e.g. "
              "postgresql+psycopg://user:pass@host/db")
    except (DBAPIError, OSError) as exc:
        first = first_line(getattr(exc, "orig", exc)).strip()
        _fail(f"cannot open the database {settings.db_url.split('@')[-1]!r}: {first}")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(min=0, help="Embedded worker processes (0: run workers elsewhere).")] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
    api_processes: Annotated[int, typer.Option(min=1, help="API processes sharing the port (one handles a few "
                                                           "hundred polls/s; all state is in the database).")] = 1,
) -> None:
    """Run the API (and, by default, one embedded worker process, restarted if it dies)."""
    import uvicorn

    from api.app import create_app
    from api.keys import count_keys, create_key
    from api.pool import WorkerPool

    _logging()
    settings, store = _store()
    if count_keys(store.sessions) == 0:
        key = create_key(store.sessions, "default")
        typer.echo(f"No API key existed; created key '{key.name}' (shown once, keep it):\n  {key.token}", err=True)
    cmd = [sys.executable, "-m", "affinity.cli", "worker", "--parent-pid", str(os.getpid())]
    env = dict(os.environ)
    if workers and not settings.torch_threads:  # the API process needs little CPU; split the cores among workers
        env["TASK_AFFINITY_TORCH_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    # The pool's state, for /readyz in every API process (they read the setting from the environment).
    state_file = (settings.home / "run" / f"serve-{os.getpid()}-workers.json").resolve()
    os.environ["TASK_AFFINITY_WORKER_POOL_FILE"] = str(state_file)
    settings = settings.model_copy(update={"worker_pool_file": state_file})
    pool = WorkerPool(cmd, env, workers, state_file)
    pool.start()

    try:
        if api_processes > 1:
            # uvicorn's supervisor starts the processes, each building its app from the same
            # environment settings; on SIGTERM/SIGINT it stops them and returns here.
            uvicorn.run("api.app:create_app", factory=True, workers=api_processes, host=host, port=port,
                        log_level="info", access_log=access_log)
        else:
            app = create_app(settings)
            app.router.on_shutdown.append(pool.stop)  # runs before uvicorn re-raises SIGTERM/SIGINT
            uvicorn.run(app, host=host, port=port, log_level="info", access_log=access_log)
    finally:
        pool.stop()


def worker(
    parent_pid: Annotated[int | None, typer.Option(help="Stop when this process is gone (set by serve).")] = None,
) -> None:
    """Run a worker: claim queued jobs from the database and run them, until SIGTERM/SIGINT."""
    from api.worker import Worker

    _logging()
    settings, store = _store()
    w = Worker(settings, store, parent_pid=parent_pid)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: w.stop.set())
    w.run_forever()


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", "-n", help="A label for the key.")],
    owner: Annotated[str | None, typer.Option(help="Owner of the data (default: the name); keys of one owner "
                                                   "see the same jobs.")] = None,
) -> None:
    """Create an API key and print it (it is stored hashed and cannot be shown again)."""
    from api.keys import create_key

    _, store = _store()
    key = create_key(store.sessions, name, owner)
    typer.echo(key.token)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (id, name, owner, prefix, revoked)."""
    from api.keys import list_keys

    _, store = _store()
    for k in list_keys(store.sessions):
        state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
        typer.echo(f"{k.id}  {k.name}  owner={k.owner}  {k.prefix}…  {state}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="Key id from `keys list`.")]) -> None:
    """Revoke a key: requests with it get 401."""
    from api.keys import revoke_key

    _, store = _store()
    if not revoke_key(store.sessions, key_id):
        typer.echo(f"error: no active key {key_id}", err=True)
        raise typer.Exit(2)
    typer.echo(f"revoked {key_id}")


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(worker)
    app.add_typer(keys_app, name="keys")
    from api.remote_commands import register as register_remote

    register_remote(app)
