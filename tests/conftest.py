import numpy as np
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


# -- service fixtures: a fresh database per test, on SQLite and (when configured) PostgreSQL ----------
import os
import secrets
import uuid

POSTGRES_ENV = "TASK_AFFINITY_TEST_POSTGRES"  # e.g. postgresql+psycopg://ta:ta@127.0.0.1:5432/postgres


def _postgres_admin_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if os.environ.get("TASK_AFFINITY_REQUIRE_POSTGRES"):
            pytest.fail(f"{POSTGRES_ENV} is not set but TASK_AFFINITY_REQUIRE_POSTGRES is (CI): start PostgreSQL")
        pytest.skip(f"PostgreSQL tests need {POSTGRES_ENV} (a role that may CREATE DATABASE); .ci/run sets it")
    return url


def _postgres_database():
    """An empty PostgreSQL database, dropped afterwards: yields its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = make_url(_postgres_admin_url())
    name = f"ta_test_{uuid.uuid4().hex[:12]}"
    eng = create_engine(admin, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        from api.db import engine_for

        engine_for.cache_clear()
        with eng.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        eng.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A URL to an empty database that is dropped after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    yield from _postgres_database()


@pytest.fixture
def postgres_url():
    """A URL to an empty PostgreSQL database that is dropped after the test."""
    yield from _postgres_database()


@pytest.fixture
def service_settings(db_url, tmp_path):
    from api.settings import Settings

    data_root = tmp_path / "data_root"
    data_root.mkdir()
    return Settings(home=tmp_path / "home", database_url=db_url, data_root=data_root, upload_limit_mb=1.0,
                    max_tasks=64, max_subsets=2000, lease_seconds=5.0, poll_seconds=0.1,
                    key_cache_seconds=0.2)


@pytest.fixture
def service(service_settings):
    """(TestClient, settings, store, headers of owner A, headers of owner B)."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.keys import create_key

    app = create_app(service_settings)
    store = app.state.store
    a = create_key(store.sessions, "alice")
    b = create_key(store.sessions, "bob")
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, service_settings, store, {"Authorization": f"Bearer {a.token}"}, \
            {"Authorization": f"Bearer {b.token}"}
    store.engine.dispose()


TINY_JOB = {
    "dataset": {"source": "planted", "params": {"tasks": 4, "groups": 2, "rows_per_task": 60, "features": 6}},
    "model": {"hidden": [8], "activation": "tanh"},
    "training": {"epochs": 8, "patience": 3, "batch_size": 64},
    "estimation": {"method": "grad_tag", "num_subsets": 12, "subset_size": 2, "projection_dim": 16, "min_pair_count": 1},
    "grouping": {"k": 2, "method": "sdp"},
}


@pytest.fixture
def tiny_job():
    import copy

    return copy.deepcopy(TINY_JOB)
