"""The job queue as the gateway sees it: callers, chat responses and the errors of ``/v1/jobs``.

The table itself (claims, leases, conditional writes) is :mod:`ponder.ledger.jobs`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from ponder.errors import InvalidRequest, PonderError, Unauthorized, openai_error_body
from ponder.ledger.database import Transaction
from ponder.ledger.jobs import Job, JobEnd, JobTable
from ponder.ledger.store import Store
from ponder.server.auth import Caller
from ponder.server.protocol import ChatCompletion, ErrorResult, completion_id

__all__ = ["JobConflict", "JobLost", "JobNotFound", "JobQueue", "TooManyJobs"]


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


def _end(response: ChatCompletion | ErrorResult) -> JobEnd:
    if isinstance(response, ErrorResult):
        return JobEnd("failed", response.status, error=response.body)
    return JobEnd("succeeded", 200, result=response.model_dump(mode="json"))


def _interrupted(attempts: int) -> dict[str, Any]:
    return openai_error_body(
        f"the job was interrupted {attempts} times (the server running it stopped) and is "
        "not retried again; submit it again if it is safe to",
        type="server_error",
        code="job_interrupted",
    )


class JobQueue:
    """Queued chat completions of one store: blocking calls (run them in a worker thread)."""

    def __init__(self, store: Store, *, lease_s: float = 30.0, max_attempts: int = 3) -> None:
        self.store = store
        self.table = JobTable(store)
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
        pending = self.table.add(job, max_pending=max_pending)
        if pending >= max_pending:
            raise TooManyJobs(
                f"{caller.label} already has {pending} unfinished jobs (the limit is "
                f"{max_pending}); wait for some to finish or cancel queued ones "
                "(DELETE /v1/jobs/{id})"
            )
        return job

    def get(self, job_id: str) -> Job | None:
        return self.table.get(job_id)

    def list_for(
        self, key_id: str | None, *, status: str | None = None, limit: int = 20
    ) -> list[Job]:
        """A caller's jobs, newest first."""
        return self.table.list_for(key_id, status=status, limit=limit)

    def cancel(self, job_id: str, now: float | None = None) -> bool:
        """Cancel a queued job; False when it is not queued (any more)."""
        return self.table.cancel(job_id, time.time() if now is None else now)

    # ---- the worker's side

    def claim(self, worker: str, limit: int, now: float | None = None) -> list[Job]:
        """Up to ``limit`` of the oldest queued jobs, now running under ``worker``."""
        now = time.time() if now is None else now
        return self.table.claim(worker, limit, now=now, lease_s=self.lease_s)

    def settle_in(self, job: Job, tx: Transaction, response: ChatCompletion | ErrorResult) -> None:
        """Write the job's outcome inside the ledger's settlement transaction.

        Raises :class:`JobLost` (rolling back the ledger row too) when this claim no
        longer holds, so a job whose lease was taken over is recorded by one run only.
        """
        if not self.table.finish_in(tx, job, _end(response)):
            raise JobLost(
                f"job {job.id} was taken back from this worker before it finished (its lease "
                "ran out); another run records it"
            )

    def finish(self, job: Job, response: ChatCompletion | ErrorResult) -> bool:
        """Record the outcome of a run that wrote no ledger row (e.g. refused for quota)."""
        return self.table.finish(job, _end(response))

    def release(self, job: Job, *, count_attempt: bool = False) -> bool:
        """Put a claimed job back in the queue (a clean shutdown does not count an attempt)."""
        return self.table.release(job, count_attempt=count_attempt)

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
        return self.table.sweep(
            worker,
            dead=dead,
            now=time.time() if now is None else now,
            lease_s=self.lease_s,
            max_attempts=self.max_attempts,
            interrupted=_interrupted,
        )

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
