"""The job worker: claims queued jobs, runs each through the gateway's chat path, renews
its leases, and puts interrupted jobs back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

from ponder.errors import InvalidRequest, PonderError, StoreUnavailable, openai_error_body
from ponder.ledger.jobs import Job
from ponder.ledger.owners import owner_is_dead, process_owner
from ponder.server.gateway import Gateway
from ponder.server.jobs.queue import JobLost, JobQueue
from ponder.server.protocol import ChatCompletion, ErrorResult, StreamResult, error_result

__all__ = ["JobWorker", "dead_on_this_host", "worker_id"]

logger = logging.getLogger("ponder.server.jobs")

_MIN_POLL_S = 0.05


def worker_id() -> str:
    """``host:pid:start/random``: unique per worker; its owner part says where it ran."""
    return f"{process_owner()}/{secrets.token_hex(4)}"


def dead_on_this_host(worker: str | None) -> bool:
    """True when ``worker`` ran on this host in a process that no longer exists.

    A pid reused by a newer process does not keep a dead worker alive (the start
    time differs). Ids of older versions (``host:pid:random``) are judged by pid.
    """
    if not worker:
        return True
    owner, slash, _ = worker.rpartition("/")
    if slash:
        return owner_is_dead(owner)
    host, _, _ = worker.rpartition(":")
    # pid-only: an owner without a recorded start time ("0").
    return owner_is_dead(f"{host}:0")


class JobWorker:
    """The background worker of one gateway: claims queued jobs and runs them.

    ``start()``/``stop()`` run it (the app's lifespan calls them).
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
                    # Also requeues jobs of a sibling on this host that died meanwhile.
                    await asyncio.to_thread(queue.sweep, self.worker_id, dead=dead_on_this_host)
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
                        body=openai_error_body(
                            f"internal error while running job {job.id}; see the server log",
                            type="server_error",
                            code="internal_error",
                        ),
                    ),
                )
