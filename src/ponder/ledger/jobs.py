"""The ``ponder_jobs`` table: queued chat completions, their claims, leases and results.

Blocking calls (run them in a worker thread from async code), all through the store's
transaction API. Claiming is one transaction: ``SELECT ... FOR UPDATE SKIP LOCKED`` then
a conditional ``UPDATE ... WHERE status = 'queued'`` on PostgreSQL, the database write
lock (``BEGIN IMMEDIATE``) on SQLite. Every later write about a job is conditional on
its claim (worker and attempt), so a worker that lost its claim changes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ponder.ledger import schema as s
from ponder.ledger.database import Transaction
from ponder.ledger.store import Store

__all__ = ["JOB_STATUSES", "Job", "JobEnd", "JobTable"]

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
_PENDING = ("queued", "running")


@dataclass(frozen=True)
class Job:
    id: str
    status: str
    created_at: float
    key_id: str | None
    user: str | None
    team: str | None
    session: str | None
    scopes: frozenset[str]
    request: dict[str, Any]
    headers: dict[str, str]
    request_id: str
    attempts: int = 0
    worker: str | None = None
    lease_until: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    http_status: int | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    # The earlier attempts that did not finish: attempt, worker, started_at, ended_at, reason.
    history: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_row(cls, row: Any) -> Job:
        return cls(
            id=row.id,
            status=row.status,
            created_at=row.created_at,
            key_id=row.key_id,
            user=row.user,
            team=row.team,
            session=row.session,
            scopes=frozenset(x for x in row.scopes.split(",") if x),
            request=json.loads(row.request),
            headers=json.loads(row.headers),
            request_id=row.request_id,
            attempts=row.attempts,
            worker=row.worker,
            lease_until=row.lease_until,
            started_at=row.started_at,
            finished_at=row.finished_at,
            http_status=row.http_status,
            result=None if row.result is None else json.loads(row.result),
            error=None if row.error is None else json.loads(row.error),
            history=tuple(json.loads(row.history)) if row.history else (),
        )

    def public(self, *, with_result: bool = True) -> dict[str, Any]:
        """The job as ``GET /v1/jobs/{id}`` shows it."""
        data: dict[str, Any] = {
            "id": self.id,
            "object": "job",
            "status": self.status,
            "model": self.request.get("model"),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempts": self.attempts,
            # Earlier attempts that were interrupted (a killed server) and run again.
            "history": list(self.history),
            # The id of the run's ledger row and chat.completion (for POST /v1/feedback).
            "request_id": self.request_id,
            "http_status": self.http_status,
            "error": None if self.error is None else self.error.get("error", self.error),
        }
        if with_result:
            data["result"] = self.result
        return data


@dataclass(frozen=True)
class JobEnd:
    """How a run ended: ``succeeded`` with its result, or ``failed`` with an error body."""

    status: str
    http_status: int
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    def values(self, now: float) -> dict[str, Any]:
        done: dict[str, Any] = {
            "status": self.status,
            "http_status": self.http_status,
            "finished_at": now,
            "lease_until": None,
        }
        if self.result is not None:
            done["result"] = json.dumps(self.result)
        if self.error is not None:
            done["error"] = json.dumps(self.error)
        return done


def _attempt(
    attempt: int, worker: str | None, started_at: float | None, now: float, reason: str
) -> dict[str, Any]:
    return {
        "attempt": attempt,
        "worker": worker,
        "started_at": started_at,
        "ended_at": now,
        "reason": reason,
    }


def _with(history: str | None, entry: dict[str, Any]) -> str:
    return json.dumps([*(json.loads(history) if history else []), entry])


def _held(job: Job) -> list[sa.ColumnElement[bool]]:
    t = s.jobs.c
    return [
        t.id == job.id,
        t.status == "running",
        t.worker == job.worker,
        t.attempts == job.attempts,
    ]


class JobTable:
    """Reads and conditional writes of ``ponder_jobs`` in one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, job: Job, *, max_pending: int) -> int:
        """Insert ``job`` unless its key already has ``max_pending`` unfinished jobs.

        Returns the unfinished jobs counted before: at least ``max_pending`` means
        nothing was inserted.
        """
        t = s.jobs
        with self.store.transaction() as tx:
            owner = t.c.key_id.is_(None) if job.key_id is None else t.c.key_id == job.key_id
            pending = int(
                tx.execute(
                    sa.select(sa.func.count()).where(owner, t.c.status.in_(_PENDING))
                ).scalar_one()
            )
            if pending >= max_pending:
                return pending
            tx.execute(
                sa.insert(t).values(
                    id=job.id,
                    status=job.status,
                    created_at=job.created_at,
                    key_id=job.key_id,
                    user=job.user,
                    team=job.team,
                    session=job.session,
                    scopes=",".join(sorted(job.scopes)),
                    request=json.dumps(job.request),
                    headers=json.dumps(job.headers),
                    request_id=job.request_id,
                    attempts=0,
                )
            )
        return pending

    def get(self, job_id: str) -> Job | None:
        if "\x00" in job_id:
            return None  # names no job (and PostgreSQL text cannot hold it)
        with self.store.transaction("read") as tx:
            row = tx.execute(sa.select(s.jobs).where(s.jobs.c.id == job_id)).first()
        return None if row is None else Job.from_row(row)

    def list_for(
        self, key_id: str | None, *, status: str | None = None, limit: int = 20
    ) -> list[Job]:
        """A key's jobs, newest first."""
        t = s.jobs
        q = sa.select(t).where(t.c.key_id.is_(None) if key_id is None else t.c.key_id == key_id)
        if status is not None:
            q = q.where(t.c.status == status)
        q = q.order_by(t.c.created_at.desc(), t.c.id).limit(limit)
        with self.store.transaction("read") as tx:
            return [Job.from_row(r) for r in tx.execute(q)]

    def cancel(self, job_id: str, now: float) -> bool:
        """Cancel a queued job; False when it is not queued (any more)."""
        if "\x00" in job_id:
            return False
        t = s.jobs
        with self.store.transaction() as tx:
            done = tx.execute(
                sa.update(t)
                .where(t.c.id == job_id, t.c.status == "queued")
                .values(status="cancelled", finished_at=now)
            )
        return done.rowcount == 1

    def claim(self, worker: str, limit: int, *, now: float, lease_s: float) -> list[Job]:
        """Up to ``limit`` of the oldest queued jobs, now running under ``worker``."""
        if limit <= 0:
            return []
        t = s.jobs
        with self.store.transaction() as tx:
            q = (
                sa.select(t.c.id)
                .where(t.c.status == "queued")
                .order_by(t.c.created_at, t.c.id)
                .limit(limit)
            )
            if self.store.dialect == "postgresql":
                # Rows another replica is claiming are skipped, not waited for.
                q = q.with_for_update(skip_locked=True)
            ids = list(tx.execute(q).scalars())
            if not ids:
                return []
            tx.execute(
                sa.update(t)
                .where(t.c.id.in_(ids), t.c.status == "queued")
                .values(
                    status="running",
                    worker=worker,
                    attempts=t.c.attempts + 1,
                    started_at=now,
                    lease_until=now + lease_s,
                )
            )
            rows = tx.execute(
                sa.select(t)
                .where(t.c.id.in_(ids), t.c.worker == worker, t.c.status == "running")
                .order_by(t.c.created_at, t.c.id)
            ).all()
        return [Job.from_row(r) for r in rows]

    @staticmethod
    def finish_in(tx: Transaction, job: Job, end: JobEnd) -> bool:
        """Record how ``job`` ended in ``tx`` (a settlement's); False when the claim is gone."""
        done = tx.execute(sa.update(s.jobs).where(*_held(job)).values(**end.values(time.time())))
        return done.rowcount == 1

    def finish(self, job: Job, end: JobEnd) -> bool:
        """Record how ``job`` ended in a transaction of its own; False when the claim is gone."""
        with self.store.transaction() as tx:
            return self.finish_in(tx, job, end)

    def release(
        self, job: Job, *, count_attempt: bool = False, reason: str = "store unavailable"
    ) -> bool:
        """Put a claimed job back in the queue (a clean shutdown does not count an attempt).

        A counted attempt is recorded in the job's history with ``reason``.
        """
        t = s.jobs
        values: dict[str, Any] = {
            "status": "queued",
            "worker": None,
            "lease_until": None,
            "attempts": t.c.attempts if count_attempt else t.c.attempts - 1,
        }
        if count_attempt:
            entry = _attempt(job.attempts, job.worker, job.started_at, time.time(), reason)
            values["history"] = json.dumps([*job.history, entry])
        with self.store.transaction() as tx:
            done = tx.execute(sa.update(t).where(*_held(job)).values(**values))
        return done.rowcount == 1

    def sweep(
        self,
        worker: str | None,
        *,
        dead: Callable[[str | None], bool],
        now: float,
        lease_s: float,
        max_attempts: int,
        interrupted: Callable[[int], dict[str, Any]],
    ) -> tuple[int, int]:
        """Renew ``worker``'s leases; requeue running jobs whose claim is stale.

        A claim is stale when its lease ran out or ``dead(worker)`` says its process
        is gone. A job already run ``max_attempts`` times fails instead, with the error
        body ``interrupted(attempts)``. Returns (requeued, failed).
        """
        t = s.jobs
        requeued = failed = 0
        with self.store.transaction() as tx:
            if worker is not None:
                tx.execute(
                    sa.update(t)
                    .where(t.c.worker == worker, t.c.status == "running")
                    .values(lease_until=now + lease_s)
                )
            running = tx.execute(
                sa.select(
                    t.c.id,
                    t.c.worker,
                    t.c.attempts,
                    t.c.lease_until,
                    t.c.started_at,
                    t.c.history,
                ).where(t.c.status == "running")
            ).all()
            for r in running:
                if r.worker == worker:
                    continue
                if dead(r.worker):
                    reason = "its server process died"
                elif r.lease_until is None or r.lease_until < now:
                    reason = "its lease ran out"
                else:
                    continue
                held = [t.c.id == r.id, t.c.status == "running", t.c.attempts == r.attempts]
                entry = _attempt(r.attempts, r.worker, r.started_at, now, reason)
                if r.attempts >= max_attempts:
                    values: dict[str, Any] = {
                        "status": "failed",
                        "http_status": 500,
                        "error": json.dumps(interrupted(r.attempts)),
                        "finished_at": now,
                        "lease_until": None,
                    }
                else:
                    values = {"status": "queued", "worker": None, "lease_until": None}
                values["history"] = _with(r.history, entry)
                if tx.execute(sa.update(t).where(*held).values(**values)).rowcount == 1:
                    if values["status"] == "queued":
                        requeued += 1
                    else:
                        failed += 1
        return requeued, failed
