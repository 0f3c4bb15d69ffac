"""Thin FastAPI routes over :class:`ponder.server.gateway.Gateway`.

Routes only move bytes: decode the body, call a handler, turn its value into a
response. All logic (and every error message) lives in the gateway's phases.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import Receive, Send
from starlette.types import Scope as AsgiScope

from ponder import __version__
from ponder.backends.base import Backend
from ponder.budget.quota import Scope
from ponder.config import ServerSettings
from ponder.errors import InvalidRequest, PonderError
from ponder.server.dropin import (
    SurfaceResult,
    count_message_tokens,
    messages,
    responses_create,
    responses_input_tokens,
)
from ponder.server.feedback import FeedbackBody, record_feedback
from ponder.server.gateway import Gateway
from ponder.server.jobs import Jobs
from ponder.server.parsing import MAX_BODY_BYTES, parse_json
from ponder.server.protocol import (
    ChatCompletionRequest,
    ErrorResult,
    KeyCreate,
    QuotaSet,
    StreamResult,
    error_result,
    internal_error,
    openai_error_body,
)
from ponder.server.responses import ponder_headers
from ponder.server.surfaces.anthropic_messages import (
    error_from_openai as anthropic_error_from_openai,
)
from ponder.telemetry.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

__all__ = ["REQUEST_BODIES", "create_app"]

logger = logging.getLogger("ponder.server")

# A drop-in surface's handler: (gateway, decoded body, headers) -> what to answer.
Surface = Callable[[Gateway, Any, Mapping[str, str]], Awaitable[SurfaceResult]]


def _error(result: ErrorResult) -> JSONResponse:
    return JSONResponse(status_code=result.status, content=result.body, headers=result.headers)


def _json(result: dict[str, Any] | ErrorResult, status: int = 200) -> JSONResponse:
    if isinstance(result, ErrorResult):
        return _error(result)
    return JSONResponse(result, status_code=status)


async def _body(request: Request) -> Any:
    try:
        raw = await _read_body(request.receive)
        if raw is None:  # the client went away: nobody reads the answer
            raise InvalidRequest("the client disconnected before sending the whole body")
        return parse_json(raw)
    except PonderError as exc:
        return error_result(exc)


async def _close(backend: Any) -> None:
    close = getattr(backend, "close", None)
    if close is None:
        return
    result = close()
    if inspect.isawaitable(result):
        await result


async def _sweep_stale_holds(gateway: Gateway, every_s: float = 60.0) -> None:
    """Release, every minute, quota holds whose request's process died.

    Startup releases them too, but a replica that dies while others keep
    serving would otherwise pin its callers' quota until some process restarts.
    """
    store = gateway.store
    assert store is not None
    while True:
        await asyncio.sleep(every_s)
        try:
            released = await asyncio.to_thread(store.release_stale)
        except Exception:  # the ledger may be briefly unreachable: try again later
            logger.exception("releasing stale quota holds failed")
            continue
        if released:
            logger.warning("released %d expired quota reservations", released)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client went away first.

    Stops reading past :data:`MAX_BODY_BYTES` (returning what it has, which
    ``parse_json`` refuses with a 413) so a huge body is never held in memory whole.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES or not message.get("more_body", False):
            return b"".join(chunks)


class _RefuseMalformed:
    """ASGI middleware: refuse, before any route runs, what no route can serve.

    A NUL byte in the query (a user name, a filter) would reach the store, which
    cannot hold it (PostgreSQL text); a declared body over the size bound is refused
    without being read.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self._problem(scope)
            if problem is not None:
                status, message = problem
                code = "request_too_large" if status == 413 else "invalid_request"
                response = _error(
                    ErrorResult(
                        status=status,
                        body=openai_error_body(message, type="invalid_request_error", code=code),
                    )
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _problem(scope: AsgiScope) -> tuple[int, str] | None:
        # (A NUL in a path id names nothing: its route answers 404 for it.)
        query: bytes = scope.get("query_string", b"")
        if b"%00" in query or b"\x00" in query:
            return 400, "the request query contains a NUL (%00) character"
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                if value.isdigit() and int(value) > MAX_BODY_BYTES:
                    return 413, f"request body is larger than {MAX_BODY_BYTES} bytes"
                break
        return None


async def _chat_response(gateway: Gateway, raw: bytes, headers: Any) -> Response:
    """POST /v1/chat/completions from the raw body to the response."""
    try:
        result = await gateway.chat(parse_json(raw), headers)
    except PonderError as exc:  # malformed JSON
        return _error(error_result(exc))
    except Exception as exc:  # the handler catches its own; never drop a connection
        return _error(internal_error(exc))
    if isinstance(result, ErrorResult):
        return _error(result)
    if isinstance(result, StreamResult):
        return StreamingResponse(
            result.events,
            media_type="text/event-stream",
            headers={**result.headers, "cache-control": "no-cache"},
        )
    # The model serializes itself to JSON bytes (in Rust): no dict, no json.dumps.
    return Response(
        result.model_dump_json(), media_type="application/json", headers=ponder_headers(result)
    )


class _ChatEndpoint:
    """``POST /v1/chat/completions`` as a bare ASGI endpoint of a Starlette ``Route``.

    The chat route is the gateway's hot path and needs none of FastAPI's per-route
    machinery (a Request object, dependency solving, a JSONResponse that re-encodes a
    dict the model could serialize itself): on a 2-core machine those cost about as
    much CPU as the upstream call. As a route (not a shortcut in front of the app) it
    still runs inside the middleware stack, so CORS, tracing and the like see it.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        raw = await _read_body(receive)
        if raw is None:
            return
        # A client that hangs up before its answer cancels the run, so its quota hold is
        # released at once (a stream's response watches for that itself once it starts).
        chat = asyncio.ensure_future(_chat_response(self.gateway, raw, Headers(scope=scope)))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({chat, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Whichever did not finish stops here (both, if this request is cancelled).
            for task in (chat, gone):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        if chat.cancelled():
            return
        await chat.result()(scope, receive, send)


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone away (``http.disconnect``)."""
    while (await receive())["type"] != "http.disconnect":
        pass


# The JSON bodies routes read themselves (raw bytes, so bad input gets an OpenAI error,
# not FastAPI's 422): published in the OpenAPI document for clients and fuzzers.
REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("/v1/chat/completions", "post"): ChatCompletionRequest,
    ("/v1/jobs", "post"): ChatCompletionRequest,
    ("/v1/admin/keys", "post"): KeyCreate,
    ("/v1/admin/quotas", "put"): QuotaSet,
    ("/v1/feedback", "post"): FeedbackBody,
}


def _publish_request_bodies(app: FastAPI) -> None:
    """Make ``app.openapi()`` document the request bodies of :data:`REQUEST_BODIES`."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        for (path, method), model in REQUEST_BODIES.items():
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(schema.pop("$defs", {}))
            components[model.__name__] = schema
            doc["paths"][path][method]["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}
                    }
                },
            }
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    backend: Backend,
    settings: ServerSettings | None = None,
    *,
    gateway: Gateway | None = None,
) -> FastAPI:
    """An OpenAI-compatible app over ``backend``; settings default to ``ponder.toml`` + env.

    Pass a ready :class:`Gateway` (with a store, prices, alerts) to govern it;
    without one the app has no auth, quotas or ledger (library and test use).
    """
    if gateway is None:
        if settings is None:
            from ponder.config import load_settings

            settings = load_settings().server
        gateway = Gateway(backend, settings)
    # POST /v1/jobs and the worker that drains the queue (server.job_concurrency).
    jobs = Jobs(gateway)
    # Interactive answers queue their full plan here (router continue_async).
    gateway.jobs = jobs

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if gateway.store is not None:
            # Holds of requests whose process was killed would otherwise block quota.
            released = gateway.store.release_stale()
            if released:
                logger.warning("released %d reservations left by a previous process", released)
            gateway.store.checkpoint_in_background()
        await jobs.start()
        gateway.start_retraining()  # [router.retrain] every; cancelled by gateway.aclose
        sweeper = asyncio.create_task(_sweep_stale_holds(gateway)) if gateway.store else None
        yield
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        # Running jobs get a grace period; the rest go back to the queue.
        await jobs.stop()
        await gateway.alerts.drain()
        if gateway.store is not None:
            gateway.store.stop_background_checkpoint()
        # The engine holds a model in memory (and maybe threads): free it on shutdown.
        await _close(backend)
        await gateway.aclose()

    app = FastAPI(title="ponder", version=__version__, lifespan=lifespan)
    # Ahead of FastAPI's routes: a POST here never reaches the documented route below;
    # another method matches both partially and gets the 405 of the first.
    app.router.routes.insert(
        0, Route("/v1/chat/completions", _ChatEndpoint(gateway), methods=["POST"])
    )
    app.state.gateway = gateway
    app.add_middleware(_RefuseMalformed)
    app.state.jobs = jobs

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown routes and wrong methods get OpenAI-shaped bodies too.
        return _error(
            ErrorResult(
                status=exc.status_code,
                body=openai_error_body(
                    f"{request.method} {request.url.path}: {exc.detail}; "
                    "ponder serves POST /v1/chat/completions, POST /v1/messages, "
                    "POST /v1/messages/count_tokens, POST /v1/responses, "
                    "POST /v1/responses/input_tokens, POST/GET /v1/jobs, "
                    "POST /v1/feedback, GET /v1/models, GET /health, GET /metrics, "
                    "GET /dashboard and the admin API under /v1/admin",
                    type="invalid_request_error",
                    code="not_found" if exc.status_code == 404 else None,
                ),
            )
        )

    # The same handler as a FastAPI route, for the OpenAPI schema (the Route above
    # answers every POST).
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _chat_response(gateway, await request.body(), request.headers)

    # ---- the same governed path behind other APIs' wire formats

    async def _surface(result: SurfaceResult) -> Response:
        if result.events is not None:
            return StreamingResponse(
                result.events,
                media_type="text/event-stream",
                headers={**result.headers, "cache-control": "no-cache"},
            )
        return JSONResponse(result.body, status_code=result.status, headers=result.headers)

    async def _anthropic(request: Request, handler: Surface) -> Response:
        """An Anthropic-shaped route: its body errors and failures in Anthropic's shape."""
        body = await _body(request)
        if isinstance(body, ErrorResult):
            return JSONResponse(
                anthropic_error_from_openai(body.status, body.body),
                status_code=body.status,
                headers=body.headers,
            )
        try:
            return await _surface(await handler(gateway, body, request.headers))
        except Exception as exc:  # never drop a connection
            failed = internal_error(exc)
            return JSONResponse(
                anthropic_error_from_openai(failed.status, failed.body), status_code=failed.status
            )

    async def _openai(request: Request, handler: Surface) -> Response:
        body = await _body(request)
        if isinstance(body, ErrorResult):
            return _error(body)
        try:
            return await _surface(await handler(gateway, body, request.headers))
        except Exception as exc:  # never drop a connection
            return _error(internal_error(exc))

    @app.post("/v1/messages")
    async def anthropic_messages(request: Request) -> Response:
        return await _anthropic(request, messages)

    @app.post("/v1/messages/count_tokens")
    async def anthropic_count_tokens(request: Request) -> Response:
        return await _anthropic(request, count_message_tokens)

    @app.post("/v1/responses")
    async def openai_responses(request: Request) -> Response:
        return await _openai(request, responses_create)

    @app.post("/v1/responses/input_tokens")
    async def openai_responses_input_tokens(request: Request) -> Response:
        return await _openai(request, responses_input_tokens)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return gateway.models().model_dump(mode="json")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return gateway.health()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gateway.metrics_text(), media_type=METRICS_CONTENT_TYPE)

    @app.post("/v1/admin/keys")
    async def create_key(request: Request) -> Response:
        body = await _body(request)
        if isinstance(body, ErrorResult):
            return _error(body)
        return _json(await gateway.admin_create_key(body, request.headers), status=201)

    @app.get("/v1/admin/keys")
    async def list_keys(request: Request, include_revoked: bool = False) -> Response:
        return _json(
            await gateway.admin_list_keys(request.headers, include_revoked=include_revoked)
        )

    @app.delete("/v1/admin/keys/{key_id}")
    async def revoke_key(key_id: str, request: Request) -> Response:
        return _json(await gateway.admin_revoke_key(key_id, request.headers))

    @app.put("/v1/admin/quotas")
    async def set_quota(request: Request) -> Response:
        body = await _body(request)
        if isinstance(body, ErrorResult):
            return _error(body)
        return _json(await gateway.admin_set_quota(body, request.headers))

    @app.get("/v1/admin/quotas")
    async def show_quota(
        request: Request,
        key: str | None = None,
        user: str | None = None,
        team: str | None = None,
        session: str | None = None,
    ) -> Response:
        subjects: dict[Scope, str | None] = {
            "key": key,
            "user": user,
            "team": team,
            "session": session,
        }
        return _json(await gateway.admin_show_quota(request.headers, subjects))

    # ---- async latency class (ponder.server.jobs) and answer feedback

    @app.post("/v1/jobs")
    async def submit_job(request: Request) -> Response:
        body = await _body(request)
        if isinstance(body, ErrorResult):
            return _error(body)
        result = await jobs.submit(body, request.headers)
        if isinstance(result, ErrorResult):
            return _error(result)
        return JSONResponse(
            result, status_code=202, headers={"location": f"/v1/jobs/{result['id']}"}
        )

    @app.get("/v1/jobs")
    async def list_jobs(request: Request, status: str | None = None, limit: str = "20") -> Response:
        # limit as text: a bad value gets an OpenAI error body, not FastAPI's 422.
        return _json(await jobs.list_jobs(request.headers, status=status, limit=limit))

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str, request: Request) -> Response:
        return _json(await jobs.get(job_id, request.headers))

    @app.delete("/v1/jobs/{job_id}")
    async def cancel_job(job_id: str, request: Request) -> Response:
        return _json(await jobs.cancel(job_id, request.headers))

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> Response:
        body = await _body(request)
        if isinstance(body, ErrorResult):
            return _error(body)
        return _json(await record_feedback(gateway, body, request.headers))

    # GET /dashboard (the page) and its admin JSON under /v1/admin/dashboard/.
    from ponder.server.dashboard import dashboard_router

    app.include_router(dashboard_router(gateway))
    _publish_request_bodies(app)

    return app
