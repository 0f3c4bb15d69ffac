"""Anthropic's Messages API as a backend, over ponder's HTTP client (no SDK needed).

Thinking: ponder's ``ThinkingConfig.budget_tokens`` becomes extended thinking
``{"type": "enabled", "budget_tokens": b}`` with ``b`` raised to the API's
minimum of 1,024 and kept below ``max_tokens`` (``max_tokens`` still caps
thinking + answer, so ponder's token budget holds). Models that replace
``budget_tokens`` with adaptive thinking get ``{"type": "adaptive"}`` and an
``output_config.effort`` derived from the budget.

Thinking and redacted-thinking blocks are kept verbatim (signatures included)
on :class:`AnthropicGeneration`; :func:`assistant_turn` turns a generation
back into a message that carries them, as the API requires on tool turns.

Usage: Anthropic's ``output_tokens`` include the thinking, which it does not
count separately; ponder's ``reasoning`` is ``output_tokens`` minus the
estimated tokens of the visible text (both flagged estimated) when the answer
has thinking, else everything is ``output`` as reported. Reported usage above what
the call asked for (``max_tokens``; a prompt larger than its text) is clamped and
recorded as an anomaly, as for every HTTP backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import httpx
from pydantic import Field

from ponder.backends.openai_wire import ServerUsage, estimate_tokens
from ponder.backends.upstream_http import DEFAULT_READ_TIMEOUT_S, ClientKind, HttpUpstream
from ponder.backends.usage_attribution import UsageBounds, bound_usage, prompt_token_bound
from ponder.errors import InvalidRequest, UpstreamAnswerLost
from ponder.types import (
    Capabilities,
    Delta,
    FinishReason,
    Generation,
    GenRequest,
    Message,
    Usage,
)

__all__ = [
    "ANTHROPIC_VERSION",
    "AnthropicBackend",
    "AnthropicGeneration",
    "BlocksMessage",
    "assistant_turn",
    "effort_for_budget",
]

ANTHROPIC_VERSION = "2023-06-01"
MIN_THINKING_BUDGET = 1024
ThinkingMode = Literal["auto", "budget", "adaptive"]
# Models on which budget_tokens is deprecated in favour of adaptive thinking.
_ADAPTIVE = re.compile(r"claude-(opus|sonnet)-4-[6-9]|claude-[a-z]+-[5-9]|claude-[5-9]")


class AnthropicGeneration(Generation):
    """A generation with the raw content blocks (thinking signatures included)."""

    blocks: list[dict[str, Any]] = Field(default_factory=list)


class BlocksMessage(Message):
    """A message whose content is sent as these raw Anthropic blocks."""

    blocks: list[dict[str, Any]] = Field(default_factory=list)


def assistant_turn(gen: Generation) -> Message:
    """The assistant message to send back after ``gen`` (keeps its thinking blocks)."""
    blocks = gen.blocks if isinstance(gen, AnthropicGeneration) else []
    if blocks:
        return BlocksMessage(role="assistant", content=gen.text, blocks=blocks)
    return Message(role="assistant", content=gen.text)


def effort_for_budget(budget_tokens: int) -> str:
    """Adaptive-thinking effort for a token budget (a coarse, documented mapping)."""
    if budget_tokens <= 2048:
        return "low"
    if budget_tokens <= 16384:
        return "medium"
    return "high"


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _finish(stop_reason: object) -> FinishReason:
    return "length" if stop_reason == "max_tokens" else "stop"


class AnthropicBackend:
    """Claude over the Messages API."""

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str = "https://api.anthropic.com",
        name: str | None = None,
        thinking_mode: ThinkingMode = "auto",
        max_concurrency: int = 8,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float | None = DEFAULT_READ_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: ClientKind | None = None,
        token_counter: Callable[[str], Awaitable[int]] | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        self.model = model
        self.name = name or f"anthropic:{model}"
        if thinking_mode == "auto":
            thinking_mode = "adaptive" if _ADAPTIVE.search(model) else "budget"
        self.thinking_mode = thinking_mode
        headers = {"anthropic-version": ANTHROPIC_VERSION, **(extra_headers or {})}
        if api_key:
            headers["x-api-key"] = api_key
        self.http = HttpUpstream(
            base_url,
            name=self.name,
            headers=headers,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            max_connections=max(max_concurrency, 1) * 2,
            transport=transport,
            client=http_client,
        )
        self._sem = asyncio.Semaphore(max(max_concurrency, 1))
        self._count = token_counter
        self.capabilities = Capabilities(
            native_n=False,
            logprobs=False,
            thinking_budget=True,
            continue_final=True,  # prefill of the final assistant message
            prefix_cache=True,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _tokens(self, text: str) -> int:
        if self._count is not None:
            return await self._count(text)
        return estimate_tokens(text)

    # ------------------------------------------------------------ request

    def body(self, req: GenRequest) -> dict[str, Any]:
        """The Messages API request body for ``req`` (one sample)."""
        system = "\n\n".join(m.content for m in req.messages if m.role in ("system", "developer"))
        turns: list[dict[str, Any]] = []
        for m in req.messages:
            if m.role in ("system", "developer"):
                continue
            role = "assistant" if m.role == "assistant" else "user"
            content: Any = m.blocks if isinstance(m, BlocksMessage) and m.blocks else m.content
            turns.append({"role": role, "content": content})
        if not turns:
            raise InvalidRequest("Anthropic needs at least one user message", param="messages")
        if req.continue_final and turns[-1]["role"] != "assistant":
            raise InvalidRequest(
                "continue_final needs the last message to be a partial assistant message",
                param="messages",
            )
        if not req.continue_final and turns[-1]["role"] == "assistant":
            raise InvalidRequest(
                "the last message is from the assistant; set continue_final to continue it, "
                "or end with a user message",
                param="messages",
            )
        body: dict[str, Any] = {
            "model": req.model or self.model,
            "max_tokens": req.max_tokens,
            "messages": turns,
        }
        if system:
            body["system"] = system
        if req.stop:
            body["stop_sequences"] = list(req.stop)
        thinking = self._thinking(req, body)
        if not thinking:
            # Thinking fixes temperature at 1 and forbids top_k; without it they apply.
            body["temperature"] = min(req.temperature, 1.0)
            if req.top_k:
                body["top_k"] = req.top_k
            if req.top_p < 1.0:
                body["top_p"] = req.top_p
        elif req.top_p < 1.0:
            body["top_p"] = max(req.top_p, 0.95)
        return body

    def _thinking(self, req: GenRequest, body: dict[str, Any]) -> bool:
        cfg = req.thinking
        if cfg is None or cfg.budget_tokens <= 0:
            return False
        if req.continue_final:
            raise InvalidRequest(
                "Anthropic cannot continue a prefilled assistant message with thinking on; "
                "drop thinking or continue_final",
                param="thinking",
            )
        if self.thinking_mode == "adaptive":
            body["thinking"] = {"type": "adaptive"}
            body["output_config"] = {"effort": effort_for_budget(cfg.budget_tokens)}
            return True
        if req.max_tokens <= MIN_THINKING_BUDGET:
            # budget_tokens must be >= 1024 and < max_tokens: no room to think.
            return False
        budget = min(max(cfg.budget_tokens, MIN_THINKING_BUDGET), req.max_tokens - 1)
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        return True

    # ------------------------------------------------------------ response

    async def _usage(
        self, raw: dict[str, Any], text: str, thought: bool, req: GenRequest, body: dict[str, Any]
    ) -> Usage:
        created, read = (
            _count(raw.get("cache_creation_input_tokens")),
            _count(raw.get("cache_read_input_tokens")),
        )
        reported = ServerUsage(
            prompt=_count(raw.get("input_tokens")) + created + read,
            cached=read,
            completion=_count(raw.get("output_tokens")),
            reasoning=None,
        )
        checked, clamped = bound_usage(
            reported,
            # The body as sent (thinking blocks and their signatures count as input too).
            UsageBounds(prompt_token_bound(json.dumps(body, ensure_ascii=False)), req.max_tokens),
            1,
            upstream=self.name,
        )
        out = checked.completion
        usage = Usage(
            input=checked.prompt - checked.cached, cached_input=checked.cached, clamped=clamped
        )
        if not thought:
            return usage.model_copy(update={"output": out})
        visible = min(await self._tokens(text), out)
        return usage.model_copy(
            update={
                "reasoning": out - visible,
                "output": visible,
                "reasoning_estimated": True,
                "output_estimated": True,
            }
        )

    async def _one(self, req: GenRequest) -> AnthropicGeneration:
        async with self._sem:
            body = self.body(req)
            data = await self.http.post_json("/v1/messages", body, deadline=req.deadline)
        content = data.get("content")
        if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
            raise UpstreamAnswerLost(
                f"upstream {self.name} answered without content blocks",
                upstream=self.name,
                reason="no content",
            )
        text = "".join(str(b.get("text", "")) for b in content if b.get("type") == "text")
        reasoning = "\n".join(
            str(b.get("thinking", "")) for b in content if b.get("type") == "thinking"
        )
        thought = any(b.get("type") in ("thinking", "redacted_thinking") for b in content)
        return AnthropicGeneration(
            text=text,
            reasoning=reasoning,
            finish_reason=_finish(data.get("stop_reason")),
            usage=await self._usage(data.get("usage") or {}, text, thought, req, body),
            blocks=[b for b in content if isinstance(b, dict)],
        )

    async def generate(self, req: GenRequest) -> list[Generation]:
        # The API has no n: samples are concurrent requests (the prompt cache helps).
        gens = await asyncio.gather(*(self._one(req) for _ in range(req.n)))
        return list(gens)

    async def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        if req.n != 1:
            raise InvalidRequest("stream() produces one generation; use n=1", param="n")
        body = self.body(req)
        body["stream"] = True
        usage_raw: dict[str, Any] = {}
        text_parts: list[str] = []
        thought = False
        stop_reason: object = None
        finished = False
        events = self.http.post_sse("/v1/messages", body, deadline=req.deadline)
        # Closed here, in this task, however the loop ends (not later by the collector).
        async with self._sem, contextlib.aclosing(events):
            async for event in events:
                kind = event.get("type")
                if kind == "error":
                    err = event.get("error") or {}
                    etype = str(err.get("type", "error"))
                    # The request was accepted and has started: not resent.
                    raise UpstreamAnswerLost(
                        f"upstream {self.name} failed mid-stream: {err.get('message', etype)}",
                        upstream=self.name,
                        reason=str(err.get("message", etype)),
                    )
                if kind == "message_start":
                    usage_raw.update((event.get("message") or {}).get("usage") or {})
                elif kind == "content_block_start":
                    block = event.get("content_block") or {}
                    if block.get("type") in ("thinking", "redacted_thinking"):
                        thought = True
                elif kind == "content_block_delta":
                    d = event.get("delta") or {}
                    if d.get("type") == "thinking_delta" and d.get("thinking"):
                        yield Delta(reasoning=str(d["thinking"]))
                    elif d.get("type") == "text_delta" and d.get("text"):
                        text_parts.append(str(d["text"]))
                        yield Delta(text=str(d["text"]))
                elif kind == "message_delta":
                    stop_reason = (event.get("delta") or {}).get("stop_reason", stop_reason)
                    usage_raw.update(event.get("usage") or {})
                elif kind == "message_stop":
                    finished = True
                    break
        if not finished:
            raise UpstreamAnswerLost(
                f"upstream {self.name} ended the stream before message_stop (truncated)",
                upstream=self.name,
                reason="truncated stream",
            )
        usage = await self._usage(usage_raw, "".join(text_parts), thought, req, body)
        yield Delta(finish_reason=_finish(stop_reason), usage=usage)
