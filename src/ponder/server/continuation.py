"""continue_async: a fast interactive answer whose full plan goes on as a queued job."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

from ponder.errors import PonderError
from ponder.server.execution import RunState
from ponder.server.protocol import ChatCompletionRequest, ContinuedJob

__all__ = ["async_body", "continue_async"]

logger = logging.getLogger("ponder.server")


def async_body(body: Any) -> dict[str, Any]:
    """The request as a job that runs its full plan: not streamed, latency ``async``."""
    if isinstance(body, ChatCompletionRequest):
        data = body.model_dump(mode="json", exclude_unset=True)
    else:
        data = copy.deepcopy(dict(body))
    data["stream"] = False
    data.pop("stream_options", None)
    data["ponder"] = {**(data.get("ponder") or {}), "latency": "async"}
    return data


async def continue_async(
    jobs: Any, state: RunState, body: Any, headers: Mapping[str, str] | None
) -> None:
    """Queue the full plan of a fast answer as an async job (when the plan deferred one).

    A failure here (no job queue, too many pending jobs, the store down) never costs
    the caller the fast answer: it is recorded in ``state.job_error``.
    """
    deferred = state.plan.deferred
    if deferred is None or state.screened.refused is not None:
        return
    if jobs is None or getattr(jobs, "queue", None) is None:
        state.job_error = (
            "the full plan could not continue as a job: this gateway keeps no job queue "
            "(it needs the ledger: server.ledger = true)"
        )
        return
    try:
        job = await jobs.enqueue(state.caller, async_body(body), headers)
    except PonderError as exc:
        logger.warning("request %s: could not queue its full plan: %s", state.id, exc)
        state.job_error = f"the full plan could not continue as a job: {exc}"
        return
    state.job = ContinuedJob(
        id=job.id,
        url=f"/v1/jobs/{job.id}",
        strategy=str(deferred.get("strategy", "")),
        thinking_budget=deferred.get("thinking_budget") or None,
    )
