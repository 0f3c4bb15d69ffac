"""``POST /v1/feedback``: a caller records whether one of its answers was right.

The verdict goes into the request's ledger row (``correct`` / ``incorrect``,
``null`` clears it), where ``ponder stats`` counts it for the cost per correct
answer. A verdict the strategy's own verifier recorded is overwritten: the
caller knows better. Only the key that made the request (or an admin) may grade
it; for anyone else the request does not exist.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ponder.errors import InvalidRequest, PonderError
from ponder.server.gateway import Gateway
from ponder.server.parsing import parse_model
from ponder.server.protocol import ErrorResult, error_result

__all__ = ["FeedbackBody", "record_feedback"]


class RequestNotFound(InvalidRequest):
    status = 404
    code = "request_not_found"


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The id of the chat.completion (a job's result id, or its request_id).
    request_id: str = Field(min_length=1, max_length=64)
    verdict: Literal["correct", "incorrect"] | None


async def record_feedback(
    gateway: Gateway, body: Any, headers: Mapping[str, str] | None
) -> dict[str, Any] | ErrorResult:
    try:
        store = gateway.store
        if store is None:
            raise InvalidRequest(
                "this gateway runs without a ledger (server.ledger = false): there is no "
                "request to record a verdict for"
            )
        caller = await gateway.authenticate(headers)
        fb = parse_model(FeedbackBody, body)
        row = await asyncio.to_thread(store.row, fb.request_id)
        admin = caller.key_id is not None and caller.may("admin")
        if row is None or not (admin or row.key_id == caller.key_id):
            raise RequestNotFound(
                f"no request {fb.request_id!r} made with this API key; give the id of a "
                "chat.completion it received",
                param="request_id",
            )
        if row.status != "ok":
            raise InvalidRequest(
                f"request {fb.request_id} did not answer (status {row.status!r}, HTTP "
                f"{row.http_status}); only answered requests can be graded",
                param="request_id",
            )
        await asyncio.to_thread(store.set_verdict, fb.request_id, fb.verdict)
    except PonderError as exc:
        return error_result(exc)
    return {
        "object": "feedback",
        "request_id": fb.request_id,
        "verdict": fb.verdict,
        "previous": row.verdict,
    }
