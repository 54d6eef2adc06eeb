"""Service settings, from the environment or a ``.env`` file (prefix ``TASK_AFFINITY_``; ``DATABASE_URL`` too)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TASK_AFFINITY_", env_file=".env", extra="ignore")

    home: Path = Field(Path(".task-affinity"), description="State folder: the SQLite database, uploads, artifacts.")
    database_url: str | None = Field(
        None, validation_alias=AliasChoices("TASK_AFFINITY_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL; default SQLite (WAL) in the state folder; postgresql+psycopg://... for PostgreSQL.",
    )
    data_root: Path | None = Field(None, description="Folder whose files manifests may name by path (none: no paths).")
    artifact_dir: Path | None = Field(None, description="Where job artifacts go (default: HOME/artifacts).")
    dataset_dir: Path | None = Field(None, description="Where uploaded datasets go (default: HOME/datasets).")
    upload_limit_mb: float = Field(200.0, gt=0, description="Largest accepted upload, compressed or decompressed "
                                   "(an NPZ's arrays count at their full size).")
    body_limit_mb: float = Field(1.0, gt=0, description="Largest request body of every JSON route (a manifest "
                                 "POSTed to /v1/jobs); larger bodies get 413.")
    max_tasks: int = Field(5000, ge=1, description="Most tasks per job.")
    max_subsets: int = Field(20000, ge=1, description="Most sampled subsets per job.")
    lease_seconds: float = Field(30.0, gt=0, description="A running job's lease; renewed by the worker's heartbeat.")
    max_attempts: int = Field(3, ge=1, description="Attempts before a job whose worker keeps dying is failed.")
    poll_seconds: float = Field(1.0, gt=0, description="How often an idle worker looks for queued jobs.")
    worker_nice: int = Field(10, ge=0, le=19, description="Niceness of worker processes, so the API stays "
                             "responsive on a machine whose cores the training saturates.")
    key_cache_seconds: float = Field(5.0, ge=0, description="How long a process trusts a checked API key "
                                     "(a revoked key is refused at once by the process that revoked it, "
                                     "by the others within this time).")
    compute_backend: Literal["manifest", "local", "ray"] = Field(
        "manifest", description="Where workers run a job's heavy stages: as its manifest says (compute.backend), "
                                "or always local / always on Ray.")
    ray_address: str | None = Field(None, description="Ray cluster for compute.backend=ray (default: RAY_ADDRESS, "
                                    "else a Ray instance on the worker's machine).")
    ray_addresses: str = Field("", description="Comma-separated Ray cluster addresses a manifest's compute.address "
                                               "may name (TASK_AFFINITY_RAY_ADDRESS is allowed too); any other is "
                                               "refused at submit. Empty: a manifest cannot choose a cluster.")
    ray_connect_seconds: float = Field(30.0, gt=0, description="How long a job waits to connect to its Ray cluster "
                                                               "before it fails.")
    worker_memory_mb: float = Field(4096.0, gt=0, description="Memory one job may use: a manifest whose estimated "
                                    "peak exceeds it is refused at submit (422), and the process running a job may "
                                    "grow by at most this much (RLIMIT_DATA), so an estimate that is wrong fails "
                                    "the job, not the machine.")
    max_job_hours: float = Field(24.0, gt=0, description="Longest a job may run: a manifest that could not finish "
                                 "within it even on a fast machine is refused at submit (422); a worker stops a job "
                                 "that reaches it (failed, with the reason).")
    allow_unestimated_kinds: bool = Field(False, description="Queue jobs whose data or model kind the server cannot "
                                          "estimate (a plug-in kind without an estimate): only the worker's memory "
                                          "and time limits then bound them. Off: such a manifest is refused (422).")
    worker_pool_file: Path | None = Field(None, description="Set by `serve` for its API processes: the state of its "
                                          "worker processes, which /readyz reports. Not an operator setting.")
    torch_threads: int | None = Field(
        None, ge=1, description="CPU threads per worker (default: torch's choice; `serve` splits the cores among "
                                "its workers). Oversubscribed cores make small models tens of times slower.")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'task_affinity.db').resolve()}"

    @property
    def artifacts(self) -> Path:
        return (self.artifact_dir or self.home / "artifacts").resolve()

    @property
    def datasets(self) -> Path:
        return (self.dataset_dir or self.home / "datasets").resolve()

    @property
    def allowed_ray_addresses(self) -> list[str]:
        listed = [a.strip() for a in self.ray_addresses.split(",") if a.strip()]
        return listed + ([self.ray_address] if self.ray_address and self.ray_address not in listed else [])

    @property
    def upload_limit_bytes(self) -> int:
        return int(self.upload_limit_mb * 1024 * 1024)

    @property
    def body_limit_bytes(self) -> int:
        return int(self.body_limit_mb * 1024 * 1024)


@lru_cache
def get_settings() -> Settings:
    return Settings()
