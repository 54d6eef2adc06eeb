"""The job store: create, list, claim (atomically), lease, progress, finish, requeue.

Every state change is one conditional UPDATE (or ``SELECT … FOR UPDATE SKIP LOCKED`` on
PostgreSQL), so any number of workers and API processes can share one database.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api.tables import Dataset, Job, utcnow

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def plausible_id(value: str) -> bool:
    """Could be an id of this store: no NUL byte (PostgreSQL refuses one in a query: a 500), not
    longer than the id columns."""
    return "\x00" not in value and len(value) <= 40


class DatasetInUse(Exception):
    """Queued or running jobs still read this dataset."""

    def __init__(self, jobs: list[str]) -> None:
        super().__init__(", ".join(jobs))
        self.jobs = jobs


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


def _requeued(now: Any) -> dict[str, Any]:
    """Column values of a running job put back in the queue (released, or its lease expired)."""
    return dict(status="queued", worker_id=None, lease_until=None, updated_at=now, stage=None, progress=0.0,
                stage_progress=0.0, eta_seconds=None)


@dataclass(frozen=True)
class Claim:
    id: str
    owner: str
    manifest: dict[str, Any]
    attempts: int


class JobStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions: sessionmaker[Session] = sessionmaker(engine, expire_on_commit=False)

    # -- jobs: API side -------------------------------------------------------------------------
    def create_job(self, owner: str, manifest: dict[str, Any], dataset_id: str | None = None,
                   idempotency_key: str | None = None, request_hash: str | None = None) -> tuple[Job, bool]:
        """A new queued job, or (same key, same body) the job created before. Returns (job, created)."""
        if idempotency_key is not None:
            existing = self._by_idempotency(owner, idempotency_key)
            if existing is not None:
                return self._same_request(existing, request_hash), False
        job = Job(id=new_id("job"), owner=owner, status="queued", manifest=manifest, dataset_id=dataset_id,
                  idempotency_key=idempotency_key, request_hash=request_hash, progress=0.0, stage_progress=0.0,
                  attempts=0, cancel_requested=False)
        try:
            with self.sessions.begin() as s:
                s.add(job)
        except IntegrityError:
            existing = self._by_idempotency(owner, idempotency_key) if idempotency_key else None
            if existing is None:
                raise
            return self._same_request(existing, request_hash), False
        return job, True

    @staticmethod
    def _same_request(job: Job, request_hash: str | None) -> Job:
        if job.request_hash != request_hash:
            raise IdempotencyConflict(job.id)
        return job

    def _by_idempotency(self, owner: str, key: str) -> Job | None:
        with self.sessions() as s:
            return s.scalars(select(Job).where(Job.owner == owner, Job.idempotency_key == key)).first()

    def get_job(self, owner: str, job_id: str) -> Job | None:
        if not plausible_id(job_id):
            return None
        with self.sessions() as s:
            job = s.get(Job, job_id)
            return job if job is not None and job.owner == owner else None

    def list_jobs(self, owner: str, status: str | None, limit: int, offset: int) -> tuple[list[Job], int]:
        cond = [Job.owner == owner] + ([Job.status == status] if status else [])
        with self.sessions() as s:
            total = s.scalar(select(func.count()).select_from(Job).where(*cond)) or 0
            rows = s.scalars(select(Job).where(*cond).order_by(Job.created_at.desc(), Job.id.desc())
                             .limit(limit).offset(offset)).all()
            return list(rows), int(total)

    def request_cancel(self, owner: str, job_id: str) -> Job | None:
        """Queued → cancelled at once; running → flagged for the worker. Returns the job after."""
        now = utcnow()
        with self.sessions.begin() as s:
            s.execute(update(Job).where(Job.id == job_id, Job.owner == owner, Job.status == "queued")
                      .values(status="cancelled", finished_at=now, updated_at=now, stage=None))
            s.execute(update(Job).where(Job.id == job_id, Job.owner == owner, Job.status == "running")
                      .values(cancel_requested=True, updated_at=now))
        return self.get_job(owner, job_id)

    def delete_job(self, owner: str, job_id: str) -> bool:
        """Delete a job that is not running (a running job must be cancelled first)."""
        with self.sessions.begin() as s:
            job = s.get(Job, job_id)
            if job is None or job.owner != owner or job.status == "running":
                return False
            s.delete(job)
            return True

    # -- jobs: worker side ----------------------------------------------------------------------
    def claim(self, worker_id: str, lease_seconds: float) -> Claim | None:
        """Atomically take the oldest queued job and lease it to ``worker_id``."""
        now = utcnow()
        values = dict(status="running", worker_id=worker_id, lease_until=now + timedelta(seconds=lease_seconds),
                      attempts=Job.attempts + 1, started_at=now, updated_at=now, stage="starting",
                      progress=0.0, stage_progress=0.0, error=None)
        with self.sessions.begin() as s:
            if self.engine.dialect.name == "postgresql":
                job = s.scalars(select(Job).where(Job.status == "queued").order_by(Job.created_at, Job.id)
                                .limit(1).with_for_update(skip_locked=True)).first()
                if job is None:
                    return None
                attempts = s.execute(update(Job).where(Job.id == job.id).values(**values)
                                     .returning(Job.attempts)).scalar_one()
                return Claim(job.id, job.owner, job.manifest, attempts)
            oldest = (select(Job.id).where(Job.status == "queued").order_by(Job.created_at, Job.id)
                      .limit(1).scalar_subquery())
            row = s.execute(update(Job).where(Job.id == oldest, Job.status == "queued").values(**values)
                            .returning(Job.id, Job.owner, Job.manifest, Job.attempts)).first()
            return Claim(*row) if row else None

    def heartbeat(self, job_id: str, worker_id: str, lease_seconds: float,
                  progress: dict[str, Any] | None = None) -> bool | None:
        """Renew the lease (and record progress). Returns the cancel flag, or None if the lease is lost."""
        now = utcnow()
        values: dict[str, Any] = dict(lease_until=now + timedelta(seconds=lease_seconds), updated_at=now)
        if progress:
            values.update(progress)
        with self.sessions.begin() as s:
            row = s.execute(update(Job).where(Job.id == job_id, Job.worker_id == worker_id,
                                              Job.status == "running").values(**values)
                            .returning(Job.cancel_requested)).first()
        return None if row is None else bool(row[0])

    def finish(self, job_id: str, worker_id: str, status: str, error: str | None = None,
               summary: dict[str, Any] | None = None) -> bool:
        assert status in FINISHED
        now = utcnow()
        values: dict[str, Any] = dict(status=status, finished_at=now, updated_at=now, error=error,
                                      lease_until=None, eta_seconds=None)
        if status == "succeeded":
            values.update(progress=1.0, stage_progress=1.0, stage="done", summary=summary)
        with self.sessions.begin() as s:
            res = s.execute(update(Job).where(Job.id == job_id, Job.worker_id == worker_id,
                                              Job.status == "running").values(**values))
            return res.rowcount == 1

    def release(self, job_id: str, worker_id: str) -> bool:
        """Give a running job back to the queue (its worker is shutting down)."""
        now = utcnow()
        with self.sessions.begin() as s:
            res = s.execute(update(Job).where(Job.id == job_id, Job.worker_id == worker_id, Job.status == "running")
                            .values(**_requeued(now)))
            return res.rowcount == 1

    def requeue_expired(self, max_attempts: int) -> tuple[int, int]:
        """Jobs whose lease expired (worker died): requeue, or fail after ``max_attempts``."""
        now = utcnow()
        expired = [Job.status == "running", Job.lease_until < now]
        with self.sessions.begin() as s:
            failed = s.execute(update(Job).where(*expired, Job.attempts >= max_attempts).values(
                status="failed", finished_at=now, updated_at=now, lease_until=None,
                error=f"the worker running this job stopped responding {max_attempts} times (lease expired); "
                      "giving up — check the worker logs (out of memory?)")).rowcount
            requeued = s.execute(update(Job).where(*expired, Job.attempts < max_attempts)
                                 .values(**_requeued(now))).rowcount
            cancelled = s.execute(update(Job).where(Job.status == "queued", Job.cancel_requested.is_(True))
                                  .values(status="cancelled", finished_at=now, updated_at=now)).rowcount
        return requeued, failed + cancelled

    # -- datasets -------------------------------------------------------------------------------
    def add_dataset(self, ds: Dataset) -> Dataset:
        with self.sessions.begin() as s:
            s.add(ds)
        return ds

    def get_dataset(self, owner: str, dataset_id: str) -> Dataset | None:
        if not plausible_id(dataset_id):
            return None
        with self.sessions() as s:
            ds = s.get(Dataset, dataset_id)
            return ds if ds is not None and ds.owner == owner else None

    def list_datasets(self, owner: str, limit: int, offset: int) -> tuple[list[Dataset], int]:
        with self.sessions() as s:
            total = s.scalar(select(func.count()).select_from(Dataset).where(Dataset.owner == owner)) or 0
            rows = s.scalars(select(Dataset).where(Dataset.owner == owner)
                             .order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit).offset(offset)).all()
            return list(rows), int(total)

    def delete_dataset(self, owner: str, dataset_id: str) -> Dataset | None:
        """Delete a dataset; DatasetInUse if a queued or running job still needs it."""
        if not plausible_id(dataset_id):
            return None
        with self.sessions.begin() as s:
            ds = s.get(Dataset, dataset_id)
            if ds is None or ds.owner != owner:
                return None
            users = s.scalars(select(Job.id).where(Job.dataset_id == dataset_id,
                                                   Job.status.in_(("queued", "running")))).all()
            if users:
                raise DatasetInUse(list(users))
            s.delete(ds)
            return ds
