"""The async latency class: ``POST /v1/jobs`` queues a chat completion, a worker runs it.

A job is a row of ``ponder_jobs`` in the gateway's own database (SQLite or
PostgreSQL), written before ``POST /v1/jobs`` answers, so it survives a crash
or a restart. Its body is validated at enqueue exactly as the chat endpoint
would (bad input is a 400 and stores nothing); quota is reserved, settled and
written to the ledger when the job *runs*, through the same
:meth:`Gateway.chat` path as an interactive request, so a job refused for quota
ends ``failed`` with the 429 body and has spent nothing.

Guarantees:

- **One run at a time.** Claiming is one transaction: ``SELECT ... FOR UPDATE
  SKIP LOCKED`` then a conditional ``UPDATE ... WHERE status = 'queued'`` on
  PostgreSQL, the database write lock (``BEGIN IMMEDIATE``) on SQLite. Every
  later write about the job is conditional on the claim (worker and attempt),
  so a worker that lost its claim changes nothing.
- **Once in the ledger.** The job's result is written by a callback *inside the
  settlement transaction* that writes its ledger row (whose id is the job's
  ``request_id``): a job has its row if and only if it has its result.
- **Crashes.** A running job holds a lease that its worker renews; when the
  lease runs out (or, at startup, when the process that held it is gone from
  this host) it goes back to the queue, at most ``job_max_attempts`` runs in
  all. A job interrupted by a clean shutdown goes back without using an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ponder.errors import InvalidRequest, PonderError, StoreUnavailable, Unauthorized
from ponder.ledger import schema as s
from ponder.ledger.store import Store
from ponder.server.auth import Caller
from ponder.server.gateway import Gateway
from ponder.server.parsing import parse_request
from ponder.server.planning import plan
from ponder.server.protocol import (
    ChatCompletion,
    ErrorResult,
    StreamResult,
    completion_id,
    error_result,
)

__all__ = [
    "JOB_STATUSES",
    "Job",
    "JobLost",
    "JobQueue",
    "Jobs",
]

logger = logging.getLogger("ponder.server.jobs")

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
_PENDING = ("queued", "running")
_MIN_POLL_S = 0.05


class JobNotFound(InvalidRequest):
    status = 404
    code = "job_not_found"


class JobConflict(InvalidRequest):
    status = 409
    code = "job_not_cancellable"


class TooManyJobs(PonderError):
    status = 429
    type = "rate_limit_error"
    code = "too_many_pending_jobs"


class JobLost(PonderError):
    """This worker no longer holds the job (its lease ran out and it was requeued)."""

    status = 409
    type = "server_error"
    code = "job_lost"


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
            # The id of the run's ledger row and chat.completion (for POST /v1/feedback).
            "request_id": self.request_id,
            "http_status": self.http_status,
            "error": None if self.error is None else self.error.get("error", self.error),
        }
        if with_result:
            data["result"] = self.result
        return data


def _terminal(response: ChatCompletion | ErrorResult, now: float) -> dict[str, Any]:
    if isinstance(response, ErrorResult):
        return {
            "status": "failed",
            "http_status": response.status,
            "error": json.dumps(response.body),
            "finished_at": now,
            "lease_until": None,
        }
    return {
        "status": "succeeded",
        "http_status": 200,
        "result": json.dumps(response.model_dump(mode="json")),
        "finished_at": now,
        "lease_until": None,
    }


def _interrupted(attempts: int) -> dict[str, Any]:
    return {
        "error": {
            "message": f"the job was interrupted {attempts} times (the server running it "
            "stopped) and is not retried again; submit it again if it is safe to",
            "type": "server_error",
            "param": None,
            "code": "job_interrupted",
        }
    }


class JobQueue:
    """The ``ponder_jobs`` table: blocking calls (run them in a worker thread from async code)."""

    def __init__(self, store: Store, *, lease_s: float = 30.0, max_attempts: int = 3) -> None:
        self.store = store
        self.lease_s = lease_s
        self.max_attempts = max_attempts

    # ---- enqueue and read

    def enqueue(
        self,
        caller: Caller,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        *,
        max_pending: int = 1000,
        now: float | None = None,
    ) -> Job:
        now = time.time() if now is None else now
        job = Job(
            id="job_" + secrets.token_hex(16),
            status="queued",
            created_at=now,
            key_id=caller.key_id,
            user=caller.user,
            team=caller.team,
            session=caller.session,
            scopes=caller.scopes,
            request=dict(body),
            headers=dict(headers),
            request_id=completion_id(),
        )
        t = s.jobs
        with self.store.transaction() as conn:
            owner = t.c.key_id.is_(None) if caller.key_id is None else t.c.key_id == caller.key_id
            pending = conn.execute(
                sa.select(sa.func.count()).where(owner, t.c.status.in_(_PENDING))
            ).scalar_one()
            if pending >= max_pending:
                raise TooManyJobs(
                    f"{caller.label} already has {pending} unfinished jobs (the limit is "
                    f"{max_pending}); wait for some to finish or cancel queued ones "
                    "(DELETE /v1/jobs/{id})"
                )
            conn.execute(
                sa.insert(t).values(
                    id=job.id,
                    status=job.status,
                    created_at=now,
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
        return job

    def get(self, job_id: str) -> Job | None:
        with self.store.transaction() as conn:
            row = conn.execute(sa.select(s.jobs).where(s.jobs.c.id == job_id)).first()
        return None if row is None else Job.from_row(row)

    def list_for(
        self, key_id: str | None, *, status: str | None = None, limit: int = 20
    ) -> list[Job]:
        """A caller's jobs, newest first."""
        t = s.jobs
        q = sa.select(t).where(t.c.key_id.is_(None) if key_id is None else t.c.key_id == key_id)
        if status is not None:
            q = q.where(t.c.status == status)
        q = q.order_by(t.c.created_at.desc(), t.c.id).limit(limit)
        with self.store.transaction() as conn:
            return [Job.from_row(r) for r in conn.execute(q)]

    def cancel(self, job_id: str, now: float | None = None) -> bool:
        """Cancel a queued job; False when it is not queued (any more)."""
        t = s.jobs
        with self.store.transaction() as conn:
            done = conn.execute(
                sa.update(t)
                .where(t.c.id == job_id, t.c.status == "queued")
                .values(status="cancelled", finished_at=time.time() if now is None else now)
            )
        return done.rowcount == 1

    # ---- the worker's side

    def claim(self, worker: str, limit: int, now: float | None = None) -> list[Job]:
        """Up to ``limit`` of the oldest queued jobs, now running under ``worker``."""
        if limit <= 0:
            return []
        now = time.time() if now is None else now
        t = s.jobs
        with self.store.transaction() as conn:
            q = (
                sa.select(t.c.id)
                .where(t.c.status == "queued")
                .order_by(t.c.created_at, t.c.id)
                .limit(limit)
            )
            if self.store.dialect == "postgresql":
                # Rows another replica is claiming are skipped, not waited for.
                q = q.with_for_update(skip_locked=True)
            ids = list(conn.execute(q).scalars())
            if not ids:
                return []
            conn.execute(
                sa.update(t)
                .where(t.c.id.in_(ids), t.c.status == "queued")
                .values(
                    status="running",
                    worker=worker,
                    attempts=t.c.attempts + 1,
                    started_at=now,
                    lease_until=now + self.lease_s,
                )
            )
            rows = conn.execute(
                sa.select(t)
                .where(t.c.id.in_(ids), t.c.worker == worker, t.c.status == "running")
                .order_by(t.c.created_at, t.c.id)
            ).all()
        return [Job.from_row(r) for r in rows]

    @staticmethod
    def _held(job: Job) -> list[sa.ColumnElement[bool]]:
        t = s.jobs.c
        return [
            t.id == job.id,
            t.status == "running",
            t.worker == job.worker,
            t.attempts == job.attempts,
        ]

    def settle_in(
        self, job: Job, conn: sa.Connection, response: ChatCompletion | ErrorResult
    ) -> None:
        """Write the job's outcome inside the ledger's settlement transaction.

        Raises :class:`JobLost` (rolling back the ledger row too) when this claim no
        longer holds, so a job whose lease was taken over is recorded by one run only.
        """
        done = conn.execute(
            sa.update(s.jobs).where(*self._held(job)).values(**_terminal(response, time.time()))
        )
        if done.rowcount != 1:
            raise JobLost(
                f"job {job.id} was taken back from this worker before it finished (its lease "
                "ran out); another run records it"
            )

    def finish(self, job: Job, response: ChatCompletion | ErrorResult) -> bool:
        """Record the outcome of a run that wrote no ledger row (e.g. refused for quota)."""
        with self.store.transaction() as conn:
            done = conn.execute(
                sa.update(s.jobs).where(*self._held(job)).values(**_terminal(response, time.time()))
            )
        return done.rowcount == 1

    def release(self, job: Job, *, count_attempt: bool = False) -> bool:
        """Put a claimed job back in the queue (a clean shutdown does not count an attempt)."""
        t = s.jobs
        with self.store.transaction() as conn:
            done = conn.execute(
                sa.update(t)
                .where(*self._held(job))
                .values(
                    status="queued",
                    worker=None,
                    lease_until=None,
                    attempts=t.c.attempts if count_attempt else t.c.attempts - 1,
                )
            )
        return done.rowcount == 1

    def sweep(
        self,
        worker: str | None = None,
        *,
        dead: Callable[[str | None], bool] = lambda _: False,
        now: float | None = None,
    ) -> tuple[int, int]:
        """Renew ``worker``'s leases; requeue running jobs whose claim is stale.

        A claim is stale when its lease ran out or ``dead(worker)`` says its process
        is gone. A job already run ``max_attempts`` times fails instead. Returns
        (requeued, failed).
        """
        now = time.time() if now is None else now
        t = s.jobs
        requeued = failed = 0
        with self.store.transaction() as conn:
            if worker is not None:
                conn.execute(
                    sa.update(t)
                    .where(t.c.worker == worker, t.c.status == "running")
                    .values(lease_until=now + self.lease_s)
                )
            running = conn.execute(
                sa.select(t.c.id, t.c.worker, t.c.attempts, t.c.lease_until).where(
                    t.c.status == "running"
                )
            ).all()
            for r in running:
                if r.worker == worker:
                    continue
                if r.lease_until is not None and r.lease_until >= now and not dead(r.worker):
                    continue
                held = [t.c.id == r.id, t.c.status == "running", t.c.attempts == r.attempts]
                if r.attempts >= self.max_attempts:
                    values: dict[str, Any] = {
                        "status": "failed",
                        "http_status": 500,
                        "error": json.dumps(_interrupted(r.attempts)),
                        "finished_at": now,
                        "lease_until": None,
                    }
                else:
                    values = {"status": "queued", "worker": None, "lease_until": None}
                if conn.execute(sa.update(t).where(*held).values(**values)).rowcount == 1:
                    if values["status"] == "queued":
                        requeued += 1
                    else:
                        failed += 1
        return requeued, failed

    def caller_for(self, job: Job) -> Caller:
        """Who the job runs as: the key that queued it, as that key is now."""
        if job.key_id is None:
            return Caller(session=job.session, scopes=job.scopes)
        record = self.store.get_key(job.key_id)
        if record is None or not record.active:
            raise Unauthorized(
                f"the API key that queued job {job.id} was revoked before the job ran; "
                "nothing was run or charged"
            )
        return Caller(
            key_id=record.id,
            user=record.user,
            team=record.team,
            session=job.session,
            scopes=record.scopes,
        )


# --------------------------------------------------------------------------- worker identity


def worker_id() -> str:
    """``host:pid:random``: unique per worker, and says where its process ran."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{secrets.token_hex(4)}"


def dead_on_this_host(worker: str | None) -> bool:
    """True when ``worker`` ran on this host in a process that no longer exists."""
    if not worker:
        return True
    parts = worker.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname()[:100]:
        return False  # another host: only its lease can say it is gone
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists but belongs to someone else (EPERM): alive
    return False


# --------------------------------------------------------------------------- routing preview


class _PeekNovelty:
    """A novelty tracker that scores without remembering (the run will remember)."""

    def __init__(self, tracker: Any) -> None:
        self._tracker = tracker

    def score(self, text: str, remember: bool = True) -> float:
        return float(self._tracker.score(text, remember=False))


def _previewing(router: Any) -> Any:
    # Planning at enqueue validates the route (an unknown preset is a 400), but must
    # not count the prompt as seen: the run plans it again and would find it "known".
    if router is None or not hasattr(router, "novelty"):
        return router
    preview = copy.copy(router)
    preview.novelty = _PeekNovelty(router.novelty)
    return preview


def _kept_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    # Only ponder's own request headers (x-ponder-preset...), never credentials.
    return {
        k.lower(): v
        for k, v in (headers or {}).items()
        if k.lower().startswith("x-ponder-") and k.lower() != "x-ponder-session"
    }


# --------------------------------------------------------------------------- service


class Jobs:
    """``/v1/jobs`` handlers and the background worker of one gateway.

    ``start()``/``stop()`` run the worker (the app's lifespan calls them); the
    handlers return a JSON-able dict or an :class:`ErrorResult`, like the gateway's.
    """

    def __init__(
        self,
        gateway: Gateway,
        *,
        concurrency: int | None = None,
        lease_s: float | None = None,
        max_attempts: int | None = None,
        max_pending: int | None = None,
        idle_poll_s: float = 2.0,
        shutdown_grace_s: float = 10.0,
    ) -> None:
        settings = gateway.settings
        self.gateway = gateway
        self.concurrency = settings.job_concurrency if concurrency is None else concurrency
        self.max_pending = settings.job_max_pending if max_pending is None else max_pending
        self.idle_poll_s = idle_poll_s
        self.shutdown_grace_s = shutdown_grace_s
        self.queue: JobQueue | None = None
        if gateway.store is not None:
            self.queue = JobQueue(
                gateway.store,
                lease_s=settings.job_lease_s if lease_s is None else lease_s,
                max_attempts=settings.job_max_attempts if max_attempts is None else max_attempts,
            )
        self.worker_id = worker_id()
        self._running: dict[asyncio.Task[None], Job] = {}
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    def _queue(self) -> JobQueue:
        if self.queue is None:
            raise InvalidRequest(
                "this gateway runs without a store (server.ledger = false), so it cannot keep "
                "jobs; use POST /v1/chat/completions, or enable the ledger"
            )
        return self.queue

    # ---- handlers

    async def _owned(self, job_id: str, headers: Mapping[str, str] | None) -> Job:
        queue = self._queue()
        caller = await self.gateway.authenticate(headers)
        job = await asyncio.to_thread(queue.get, job_id)
        admin = caller.key_id is not None and caller.may("admin")
        if job is None or not (admin or job.key_id == caller.key_id):
            # Someone else's job is answered exactly like a missing one.
            raise JobNotFound(f"no job {job_id!r} for this API key; list yours with GET /v1/jobs")
        return job

    async def submit(
        self, body: Any, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any] | ErrorResult:
        """``POST /v1/jobs``: validate as the chat endpoint does, then queue."""
        try:
            queue = self._queue()
            gw = self.gateway
            caller = await gw.authenticate(headers)
            request = parse_request(body)
            if request.stream:
                raise InvalidRequest(
                    "a job cannot stream: its result is kept and read with GET /v1/jobs/{id}. "
                    "Send stream=false, or use POST /v1/chat/completions to stream",
                    param="stream",
                )
            gw._check_scopes(caller, request)
            plan(
                request,
                gw.settings,
                router=_previewing(gw.router),
                caller=caller,
                headers=headers,
                tiers=gw.tier_models,
            )
            job = await asyncio.to_thread(
                queue.enqueue, caller, body, _kept_headers(headers), max_pending=self.max_pending
            )
        except PonderError as exc:
            return error_result(exc)
        self.wake()
        return job.public()

    async def enqueue(
        self, caller: Caller, body: dict[str, Any], headers: Mapping[str, str] | None = None
    ) -> Job:
        """Queue ``body`` for ``caller``, already authenticated and validated by the gateway
        (the full plan of an interactive answer, ``continue_async``); raises PonderError."""
        queue = self._queue()
        job = await asyncio.to_thread(
            queue.enqueue, caller, body, _kept_headers(headers), max_pending=self.max_pending
        )
        self.wake()
        return job

    async def get(
        self, job_id: str, headers: Mapping[str, str] | None
    ) -> dict[str, Any] | ErrorResult:
        try:
            job = await self._owned(job_id, headers)
        except PonderError as exc:
            return error_result(exc)
        return job.public()

    async def list_jobs(
        self,
        headers: Mapping[str, str] | None,
        *,
        status: str | None = None,
        limit: int | str = 20,
    ) -> dict[str, Any] | ErrorResult:
        """The caller's jobs, newest first, without their results (GET a job for that)."""
        try:
            queue = self._queue()
            caller = await self.gateway.authenticate(headers)
            if status is not None and status not in JOB_STATUSES:
                raise InvalidRequest(
                    f"status must be one of {', '.join(JOB_STATUSES)}, got {status!r}",
                    param="status",
                )
            try:
                count = int(limit)
            except ValueError:
                count = 0
            if not 1 <= count <= 100:
                raise InvalidRequest(
                    f"limit must be an integer 1-100, got {limit!r}", param="limit"
                )
            jobs = await asyncio.to_thread(
                queue.list_for, caller.key_id, status=status, limit=count
            )
        except PonderError as exc:
            return error_result(exc)
        return {"object": "list", "data": [j.public(with_result=False) for j in jobs]}

    async def cancel(
        self, job_id: str, headers: Mapping[str, str] | None
    ) -> dict[str, Any] | ErrorResult:
        """``DELETE /v1/jobs/{id}``: a queued job is cancelled; a started one cannot be."""
        try:
            job = await self._owned(job_id, headers)
            queue = self._queue()
            if not await asyncio.to_thread(queue.cancel, job.id):
                now = await asyncio.to_thread(queue.get, job.id)
                state = now.status if now is not None else job.status
                raise JobConflict(
                    f"job {job.id} is {state}; only a queued job can be cancelled"
                    + (
                        " (a running job finishes and is charged as usual)"
                        if state == "running"
                        else ""
                    )
                )
            cancelled = await asyncio.to_thread(queue.get, job.id)
        except PonderError as exc:
            return error_result(exc)
        assert cancelled is not None
        return cancelled.public()

    # ---- the worker

    def wake(self) -> None:
        """Look at the queue now (a job was queued in this process, or a slot freed)."""
        if self._wake is not None:
            self._wake.set()

    @property
    def running(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        """Requeue jobs of dead processes and start draining the queue (no-op without one)."""
        if self.queue is None or self.concurrency <= 0 or self._loop_task is not None:
            return
        self._stopping = False
        self._wake = asyncio.Event()
        try:
            requeued, failed = await asyncio.to_thread(
                self.queue.sweep, self.worker_id, dead=dead_on_this_host
            )
        except PonderError:
            logger.exception("could not recover interrupted jobs; the worker retries")
        else:
            if requeued or failed:
                logger.warning(
                    "jobs interrupted by a stopped server: %d requeued, %d failed (attempts "
                    "used up)",
                    requeued,
                    failed,
                )
        self._loop_task = asyncio.create_task(self._loop(), name="ponder-jobs")

    async def stop(self) -> None:
        """Stop claiming; let running jobs finish for a grace period, requeue the rest."""
        if self._loop_task is None:
            return
        self._stopping = True
        self.wake()
        await self._loop_task
        self._loop_task = None
        running = dict(self._running)
        if not running:
            return
        _, pending = await asyncio.wait(running, timeout=self.shutdown_grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        assert self.queue is not None
        for task in pending:
            job = running[task]
            try:
                # Conditional on the claim: a result that committed meanwhile stays.
                if await asyncio.to_thread(self.queue.release, job):
                    logger.info("job %s interrupted by shutdown, queued again", job.id)
            except PonderError:
                logger.exception("could not requeue job %s; its lease will", job.id)

    async def _loop(self) -> None:
        assert self.queue is not None and self._wake is not None
        queue, wake = self.queue, self._wake
        idle = _MIN_POLL_S
        next_sweep = time.monotonic() + queue.lease_s / 3
        while not self._stopping:
            if time.monotonic() >= next_sweep:
                try:
                    await asyncio.to_thread(queue.sweep, self.worker_id)
                except Exception as exc:  # the store may be down: keep the worker alive
                    logger.warning("job lease renewal failed: %s: %s", type(exc).__name__, exc)
                next_sweep = time.monotonic() + queue.lease_s / 3
            free = self.concurrency - len(self._running)
            claimed: list[Job] = []
            if free > 0:
                try:
                    claimed = await asyncio.to_thread(queue.claim, self.worker_id, free)
                except Exception as exc:  # retried with the idle backoff below
                    logger.warning("could not claim jobs: %s: %s", type(exc).__name__, exc)
            for job in claimed:
                task = asyncio.create_task(self._execute(job), name=f"ponder-job-{job.id}")
                self._running[task] = job
                task.add_done_callback(self._finished)
            # Busy slots: wait for one to free up. Empty queue: back off to idle_poll_s.
            idle = _MIN_POLL_S if claimed else min(idle * 2, self.idle_poll_s)
            until_sweep = max(next_sweep - time.monotonic(), 0.0)
            full = len(self._running) >= self.concurrency
            timeout = until_sweep if full else min(idle, until_sweep)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)
            wake.clear()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self.wake()

    async def _execute(self, job: Job) -> None:
        assert self.queue is not None
        queue = self.queue
        try:
            try:
                caller = await asyncio.to_thread(queue.caller_for, job)
            except StoreUnavailable:
                raise
            except PonderError as exc:
                await asyncio.to_thread(queue.finish, job, error_result(exc))
                return
            response = await self.gateway.chat(
                job.request,
                job.headers,
                run_as=caller,
                request_id=job.request_id,
                on_settle=lambda conn, resp: queue.settle_in(job, conn, resp),
            )
            if isinstance(response, ChatCompletion):
                return  # its result committed with its ledger row
            if isinstance(response, StreamResult):  # refused at enqueue; never expected
                await response.events.aclose()  # type: ignore[attr-defined]
                response = ErrorResult(
                    status=500,
                    body=InvalidRequest("a job cannot stream", param="stream").to_openai(),
                )
            code = response.body.get("error", {}).get("code")
            if code == JobLost.code:
                logger.warning("job %s: %s", job.id, response.body["error"]["message"])
                return
            if code == StoreUnavailable.code and job.attempts < queue.max_attempts:
                # Nothing was recorded: run it again once the store answers.
                await asyncio.to_thread(queue.release, job, count_attempt=True)
                return
            # Refused before it ran (quota, scopes...): no ledger row, record the refusal.
            # A no-op when the failure was settled with its ledger row already.
            await asyncio.to_thread(queue.finish, job, response)
        except asyncio.CancelledError:
            raise
        except StoreUnavailable as exc:
            logger.warning("job %s left to its lease, the store failed: %s", job.id, exc)
        except Exception:
            logger.exception("job %s failed unexpectedly", job.id)
            with contextlib.suppress(PonderError):
                await asyncio.to_thread(
                    queue.finish,
                    job,
                    ErrorResult(
                        status=500,
                        body={
                            "error": {
                                "message": f"internal error while running job {job.id}; "
                                "see the server log",
                                "type": "server_error",
                                "param": None,
                                "code": "internal_error",
                            }
                        },
                    ),
                )
