"""Thin FastAPI routes over :class:`ponder.server.handlers.Gateway`.

Routes only move bytes: decode the body, call a handler, turn its value into a
response. All logic (and every error message) lives in the handlers.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ponder import __version__
from ponder.backends.base import Backend
from ponder.config import ServerSettings
from ponder.errors import PonderError
from ponder.server.handlers import (
    ErrorResult,
    Gateway,
    StreamResult,
    error_result,
    parse_json,
    ponder_headers,
)

__all__ = ["create_app"]


def _error(result: ErrorResult) -> JSONResponse:
    return JSONResponse(status_code=result.status, content=result.body)


async def _close(backend: Any) -> None:
    close = getattr(backend, "close", None)
    if close is None:
        return
    result = close()
    if inspect.isawaitable(result):
        await result


def create_app(backend: Backend, settings: ServerSettings | None = None) -> FastAPI:
    """An OpenAI-compatible app over ``backend``; settings default to ``ponder.toml`` + env."""
    if settings is None:
        from ponder.config import load_settings

        settings = load_settings().server
    gateway = Gateway(backend, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # The engine holds a model in memory (and maybe threads): free it on shutdown.
        await _close(backend)

    app = FastAPI(title="ponder", version=__version__, lifespan=lifespan)
    app.state.gateway = gateway

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown routes and wrong methods get OpenAI-shaped bodies too.
        return _error(
            ErrorResult(
                status=exc.status_code,
                body={
                    "error": {
                        "message": f"{request.method} {request.url.path}: {exc.detail}; "
                        "ponder serves POST /v1/chat/completions, GET /v1/models, GET /health",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "not_found" if exc.status_code == 404 else None,
                    }
                },
            )
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        # Decoded by hand (not a pydantic body parameter) so malformed JSON and
        # validation errors get OpenAI error bodies instead of FastAPI's 422.
        try:
            body = parse_json(await request.body())
        except PonderError as exc:
            return _error(error_result(exc))
        result = await gateway.chat(body)
        if isinstance(result, ErrorResult):
            return _error(result)
        if isinstance(result, StreamResult):
            return StreamingResponse(
                result.events,
                media_type="text/event-stream",
                headers={**result.headers, "cache-control": "no-cache"},
            )
        return JSONResponse(result.model_dump(mode="json"), headers=ponder_headers(result))

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return gateway.models().model_dump(mode="json")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return gateway.health()

    return app
