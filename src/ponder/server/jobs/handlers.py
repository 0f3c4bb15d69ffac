"""The ``/v1/jobs`` handlers: validate and queue, read, list and cancel a caller's jobs.

Each returns a JSON-able dict or an :class:`ErrorResult`, like the gateway's handlers.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from ponder.errors import InvalidRequest, PonderError
from ponder.ledger.jobs import JOB_STATUSES, Job
from ponder.ledger.store import check_demand
from ponder.server.auth import Caller
from ponder.server.jobs.queue import JobConflict, JobNotFound
from ponder.server.jobs.worker import JobWorker
from ponder.server.parsing import parse_request
from ponder.server.planning import check_capabilities, plan
from ponder.server.protocol import ErrorResult, error_result

__all__ = ["Jobs"]


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


class Jobs(JobWorker):
    """``/v1/jobs`` handlers and the background worker of one gateway."""

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
            gw.admission.check_scopes(caller, request)
            planned = plan(
                request,
                gw.settings,
                router=_previewing(gw.router),
                caller=caller,
                headers=headers,
                tiers=gw.tier_models,
            )
            # A plan its tier's backend cannot run is refused now, as on the chat path.
            tier = planned.tier or gw.tier
            check_capabilities(dataclasses.replace(planned, tier=tier), gw.tiers[tier].capabilities)
            # Its worst case too: a job the quota store could never hold is refused now,
            # not accepted and then failed when it runs.
            _, demand = await gw.admission.bound(planned, caller)
            check_demand(demand)
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
