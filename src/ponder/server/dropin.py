"""Anthropic's Messages API and OpenAI's Responses API on the gateway's one governed path.

Each handler translates its request into a chat request (``ponder.server.surfaces``),
runs it through :meth:`Gateway.chat` (auth, plan, reserve, run, settle, ledger row,
metrics: nothing here decides or charges anything) and translates the answer,
its stream or its error back into the surface's wire format.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ponder.errors import InvalidRequest, PonderError
from ponder.server.admission import offload
from ponder.server.gateway import Gateway
from ponder.server.protocol import ChatCompletion, ChatCompletionRequest, ErrorResult, StreamResult
from ponder.server.responses import ponder_headers
from ponder.server.surfaces import anthropic_messages as anthropic
from ponder.server.surfaces import chat_chunks
from ponder.server.surfaces import responses_api as responses

__all__ = ["ResponseNotFound", "SurfaceResult", "messages", "responses_create"]


class ResponseNotFound(InvalidRequest):
    status = 404
    code = "response_not_found"


@dataclass
class SurfaceResult:
    """What a surface answers: a JSON body, or a stream of SSE strings (``events``)."""

    status: int = 200
    body: dict[str, Any] | None = None
    events: AsyncIterator[str] | None = None
    headers: dict[str, str] = field(default_factory=dict)


Translate = Callable[[dict[str, Any]], Iterator[tuple[str, dict[str, Any]]]]


async def _translated(
    chat: AsyncIterator[str],
    feed: Translate,
    finish: Callable[[], Iterator[tuple[str, dict[str, Any]]]],
    sse: Callable[[str, Mapping[str, Any]], str],
) -> AsyncIterator[str]:
    try:
        async for chunk in chat_chunks(chat):
            for event, data in feed(chunk):
                yield sse(event, data)
            if chunk.get("error"):
                return  # the surface's error event ends its stream
        for event, data in finish():
            yield sse(event, data)
    finally:
        # A client that goes away closes the chat stream too: the gateway settles it.
        aclose = getattr(chat, "aclose", None)
        if aclose is not None:
            await aclose()


# --------------------------------------------------------------------------- /v1/messages


def _anthropic_error(result: ErrorResult) -> SurfaceResult:
    return SurfaceResult(
        status=result.status,
        body=anthropic.error_from_openai(result.status, result.body),
        headers=result.headers,
    )


async def messages(gateway: Gateway, body: Any, headers: Mapping[str, str]) -> SurfaceResult:
    """``POST /v1/messages``: ``x-api-key`` auth, Anthropic-shaped answers and errors."""
    try:
        req = anthropic.parse_messages_request(body)
        chat = anthropic.to_chat_request(req)
    except PonderError as exc:
        status, error = anthropic.error_body(exc)
        return SurfaceResult(status=status, body=error, headers=exc.headers())
    result = await gateway.chat(chat, anthropic.auth_headers(headers))
    if isinstance(result, ErrorResult):
        return _anthropic_error(result)
    model = req.model or gateway.backend.name
    if isinstance(result, StreamResult):
        stream = anthropic.MessagesStream(model=model)
        return SurfaceResult(
            events=_translated(result.events, stream.feed, stream.finish, anthropic.sse),
            headers=result.headers,
        )
    return SurfaceResult(
        body=anthropic.from_chat_completion(result, model=model), headers=ponder_headers(result)
    )


async def count_message_tokens(
    gateway: Gateway, body: Any, headers: Mapping[str, str]
) -> SurfaceResult:
    """``POST /v1/messages/count_tokens``: the Messages request's input tokens, nothing run."""
    if isinstance(body, dict) and "max_tokens" not in body:
        body = {**body, "max_tokens": 1}  # not part of a count request; irrelevant to it
    try:
        chat = anthropic.to_chat_request(anthropic.parse_messages_request(body))
        tokens = await gateway.count_input_tokens(chat, anthropic.auth_headers(headers))
    except PonderError as exc:
        status, error = anthropic.error_body(exc)
        return SurfaceResult(status=status, body=error, headers=exc.headers())
    return SurfaceResult(body={"input_tokens": tokens})


# --------------------------------------------------------------------------- /v1/responses


async def _history(
    gateway: Gateway, previous: str | None, caller_key: str | None
) -> list[dict[str, Any]] | None:
    if previous is None:
        return None
    store = gateway.store
    stored = None
    if store is not None:
        stored = await offload(store, store.get_conversation, previous, caller_key)
    if stored is None:
        raise ResponseNotFound(
            f"previous_response_id {previous!r}: no stored response with that id for this "
            "API key (responses are kept per key)",
            param="previous_response_id",
        )
    return stored


async def responses_create(
    gateway: Gateway, body: Any, headers: Mapping[str, str]
) -> SurfaceResult:
    """``POST /v1/responses``; the conversation is kept for ``previous_response_id``."""
    rid = responses.response_id()
    try:
        req = responses.parse_responses_request(body)
        caller, _ = await gateway.admission.caller_and_limits(headers)
        chat = responses.to_chat_request(
            req, history=await _history(gateway, req.previous_response_id, caller.key_id)
        )
    except PonderError as exc:
        status, error = responses.error_body(exc)
        return SurfaceResult(status=status, body=error, headers=exc.headers())
    on_settle = _keep_conversation(gateway, rid, chat, caller.key_id)
    result = await gateway.chat(chat, headers, on_settle=on_settle)
    if isinstance(result, ErrorResult):
        return SurfaceResult(status=result.status, body=result.body, headers=result.headers)
    model = req.model or gateway.backend.name
    if isinstance(result, StreamResult):
        stream = responses.ResponsesStream(req, model=model, id=rid)
        return SurfaceResult(
            events=_translated(result.events, stream.feed, stream.finish, responses.sse),
            headers=result.headers,
        )
    return SurfaceResult(
        body=responses.from_chat_completion(result, req, id=rid), headers=ponder_headers(result)
    )


async def responses_input_tokens(
    gateway: Gateway, body: Any, headers: Mapping[str, str]
) -> SurfaceResult:
    """``POST /v1/responses/input_tokens``: the request's input tokens, nothing run."""
    try:
        req = responses.parse_responses_request(body)
        caller = await gateway.authenticate(headers)
        chat = responses.to_chat_request(
            req, history=await _history(gateway, req.previous_response_id, caller.key_id)
        )
        tokens = await gateway.count_input_tokens(chat, headers)
    except PonderError as exc:
        status, error = responses.error_body(exc)
        return SurfaceResult(status=status, body=error, headers=exc.headers())
    return SurfaceResult(body={"object": "response.input_tokens", "input_tokens": tokens})


def _keep_conversation(
    gateway: Gateway, rid: str, chat: ChatCompletionRequest, key_id: str | None
) -> Callable[[Any, ChatCompletion | ErrorResult], None] | None:
    store = gateway.store
    if store is None or chat.stream:
        return None

    def keep(conn: Any, response: ChatCompletion | ErrorResult) -> None:
        if isinstance(response, ChatCompletion):
            conversation = responses.stored_conversation(chat, response)
            store.put_conversation(conn, rid, key_id, json.dumps(conversation))

    return keep
