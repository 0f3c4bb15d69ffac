"""GPU tiers on ``ray.serve.llm``: the OpenAI-compatible backend over a deployment handle."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx

from ponder.backends.base import Backend
from ponder.config import TierSettings
from ponder.errors import openai_error_body

__all__ = ["ServeLLMTransport", "vllm_tier_backend"]


def _as_error(item: Any) -> tuple[int, dict[str, Any]] | None:
    """(status, OpenAI error body) when ``item`` is vLLM's ErrorResponse, else None."""
    # Matched by name: importing vLLM's protocol types would tie the gateway to vLLM.
    if type(item).__name__ != "ErrorResponse":
        return None
    err = getattr(item, "error", None) or item  # newer vLLM nests an ErrorInfo
    code = getattr(err, "code", None)
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    message = str(getattr(err, "message", item))
    body = openai_error_body(
        message,
        type=str(getattr(err, "type", "server_error")),
        # OpenAI's code is a string (vLLM puts the HTTP status there).
        code=None if code is None else str(code),
    )
    return status, body


def _dump(item: Any) -> Any:
    if hasattr(item, "model_dump"):
        return item.model_dump(mode="json", exclude_none=True)
    return item


def _sse(item: Any) -> bytes:
    """One streamed item of an LLMServer as server-sent-event bytes."""
    if isinstance(item, bytes):
        item = item.decode("utf-8")
    if isinstance(item, str):
        # LLMServer already formats stream chunks as "data: {...}\n\n".
        text = item if item.startswith("data:") else f"data: {item}"
        return (text if text.endswith("\n\n") else text.rstrip("\n") + "\n\n").encode("utf-8")
    error = _as_error(item)
    payload = error[1] if error is not None else _dump(item)
    return f"data: {json.dumps(payload)}\n\n".encode()


def _items(batch: Any) -> list[Any]:
    # Streams come batched (a list of chunks per yield) unless batching is off.
    return list(batch) if isinstance(batch, list) else [batch]


class _HandleStream(httpx.AsyncByteStream):
    def __init__(self, first: Any, rest: Any) -> None:
        self.first, self.rest = first, rest
        self.finished = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        done = False
        for item in _items(self.first):
            chunk = _sse(item)
            done = done or chunk.strip() == b"data: [DONE]"
            yield chunk
        try:
            async for batch in self.rest:
                for item in _items(batch):
                    chunk = _sse(item)
                    done = done or chunk.strip() == b"data: [DONE]"
                    yield chunk
        except Exception as exc:
            # A torn stream, as a dropped connection would be: the backend retries or reports.
            raise httpx.ReadError(f"ray.serve.llm stream failed: {exc}") from exc
        self.finished = True
        if not done:
            yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        if not self.finished:
            self.finished = True
            self.rest.cancel()


class ServeLLMTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose far end is a ``ray.serve.llm`` LLMServer deployment handle.

    The OpenAI-compatible backend (flavor ``vllm``) builds its usual requests (thinking
    budgets, continuation, logprobs, ``n``); this transport turns ``POST
    /v1/chat/completions`` and ``/v1/completions`` into ``LLMServer.chat`` /
    ``completions`` handle calls and their results back into HTTP responses. Other
    routes (``/tokenize``) answer 404, and the backend estimates instead.
    """

    _ROUTES = (("/chat/completions", "chat"), ("/completions", "completions"))

    def __init__(
        self, handle: Any, *, request_types: Mapping[str, Callable[..., Any]] | None = None
    ) -> None:
        self.handle = handle
        self._types = dict(request_types) if request_types is not None else None

    def _request_type(self, method: str) -> Callable[..., Any]:
        if self._types is None:
            from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

            self._types = {"chat": ChatCompletionRequest, "completions": CompletionRequest}
        return self._types[method]

    @staticmethod
    def _json(status: int, body: Any, request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, request=request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        method = next((m for suffix, m in self._ROUTES if path.endswith(suffix)), None)
        if method is None or request.method != "POST":
            return self._json(
                404,
                openai_error_body(
                    f"{request.method} {path} is not served by a ray.serve.llm deployment "
                    "(only POST chat/completions and completions)",
                    type="invalid_request_error",
                    code="not_found",
                ),
                request,
            )
        try:
            body = json.loads(await request.aread())
            payload = self._request_type(method)(**body)
        except Exception as exc:  # bad JSON or a request vLLM's protocol refuses
            return self._json(
                400,
                openai_error_body(f"invalid request: {exc}", type="invalid_request_error"),
                request,
            )
        results = getattr(self.handle.options(stream=True), method).remote(payload)
        try:
            first = await anext(results)
        except StopAsyncIteration:
            return self._json(
                502,
                openai_error_body("ray.serve.llm returned no response", type="server_error"),
                request,
            )
        except Exception as exc:
            cause = getattr(exc, "cause", None) or exc
            try:
                from ray.exceptions import RayTaskError

                engine_failed = isinstance(exc, RayTaskError)
            except ImportError:  # pragma: no cover
                engine_failed = False
            if engine_failed:
                return self._json(
                    500, openai_error_body(f"vLLM failed: {cause}", type="server_error"), request
                )
            # The deployment is unreachable (replica died, no replicas): like a refused connection.
            raise httpx.ConnectError(f"ray.serve.llm deployment unavailable: {exc}") from exc
        head = _items(first)[0] if _items(first) else first
        error = _as_error(head)
        if error is not None:
            results.cancel()
            return self._json(error[0], error[1], request)
        if not body.get("stream"):
            return self._json(200, _dump(first), request)
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            stream=_HandleStream(first, results),
            request=request,
        )


def vllm_tier_backend(name: str, tier: TierSettings, handle: Any) -> Backend:
    """The gateway's backend for a ``vllm`` tier: OpenAI-compatible (vLLM flavor) over Serve."""
    from ponder.backends.openai_compat import OpenAICompatBackend

    max_len = tier.options.get("max_model_len")
    return OpenAICompatBackend(
        # Never dialled: the transport carries the requests; the URL only names the tier.
        f"http://ray-serve-llm.{name}/v1",
        tier.model,
        flavor="vllm",
        name=tier.model,
        chat_template=tier.options.get("chat_template"),
        max_context=int(max_len) if max_len else None,
        transport=ServeLLMTransport(handle),
    )
