"""Any OpenAI-compatible HTTP server as a backend: vLLM, SGLang, llama.cpp, Ollama, OpenAI.

One pooled HTTP client per backend (:class:`~ponder.backends.upstream_http.HttpUpstream`:
aiohttp, or httpx with a custom transport). ``flavor`` names the server so that its
extensions are used where they exist:

- ``n`` samples in one request where the server honours it (vLLM/SGLang share
  the prompt's prefix cache); otherwise, or when a server silently returns
  fewer choices (llama-cpp-python does), the missing samples are requested
  concurrently;
- continuation of a partial assistant message: ``continue_final_message`` on
  vLLM/SGLang, or the raw completions endpoint with a client-side chat template
  (``chat_template="chatml"`` or Jinja source) for servers whose chat endpoint
  cannot continue;
- thinking: vLLM ``thinking_token_budget`` with Qwen3's
  ``chat_template_kwargs.enable_thinking``, OpenAI ``reasoning_effort``, or a
  client-side cap for servers with no native control
  (:mod:`~ponder.backends.client_cap`);
- reasoning is read from ``reasoning_content`` / ``reasoning`` or from
  ``<think>`` tags in the text. Usage comes from the server, checked against what
  the call asked for (:mod:`~ponder.backends.usage_attribution`); reasoning tokens
  it does not report are estimated by tokenizing the reasoning text (via the
  server's tokenize endpoint where it has one) and flagged estimated.

Each call goes to the upstream once: a failure comes back as an error that says
whether it is safe to send again (see :mod:`~ponder.backends.upstream_http`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal

import httpx

from ponder.backends.client_cap import ClientThinkingCap
from ponder.backends.openai_wire import (
    Choice,
    ServerUsage,
    effort_for_budget,
    estimate_tokens,
    finish_reason,
    parse_choices,
    render_chat,
    server_usage,
    wire_messages,
    wire_tools,
)
from ponder.backends.scratchpad import ThinkSplitter, scratchpad_messages, split_think
from ponder.backends.upstream_http import DEFAULT_READ_TIMEOUT_S, ClientKind, HttpUpstream
from ponder.backends.usage_attribution import (
    Mode,
    UsageBounds,
    attribute,
    prompt_token_bound,
)
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
    "HttpUpstream",
    "OpenAICompatBackend",
    "ThinkSplitter",
    "effort_for_budget",
    "estimate_tokens",
    "render_chat",
    "split_think",
]

Flavor = Literal["generic", "vllm", "sglang", "llama_cpp", "ollama", "openai"]
ThinkingControl = Literal["vllm", "sglang", "openai", "client", "none"]
Continuation = Literal["chat", "completions", "none"]
TokenCounter = Callable[[str], Awaitable[int]]

_PROFILES: dict[str, tuple[bool | None, ThinkingControl, Continuation]] = {
    # flavor: (native n, thinking control, continuation)
    "vllm": (True, "vllm", "chat"),
    "sglang": (True, "sglang", "chat"),
    "openai": (True, "openai", "none"),
    "ollama": (False, "client", "none"),
    "llama_cpp": (None, "client", "completions"),  # completions once a chat_template is given
    "generic": (None, "client", "none"),
}


class OpenAICompatBackend(ClientThinkingCap):
    """A backend over an OpenAI-compatible ``/v1`` HTTP API."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str | None = None,
        *,
        api_key: str | None = None,
        flavor: Flavor = "generic",
        name: str | None = None,
        native_n: bool | None = None,
        thinking_control: ThinkingControl | None = None,
        continuation: Continuation | None = None,
        chat_template: str | None = None,
        max_concurrency: int = 8,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float | None = DEFAULT_READ_TIMEOUT_S,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: ClientKind | None = None,
        token_counter: TokenCounter | None = None,
        stream_usage: bool = True,
        max_context: int | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if flavor not in _PROFILES:
            raise InvalidRequest(
                f"unknown flavor {flavor!r}; choose one of: {', '.join(sorted(_PROFILES))}"
            )
        p_n, p_think, p_cont = _PROFILES[flavor]
        self.flavor = flavor
        self.model = model
        self.name = name or f"openai_compat:{model or flavor}"
        # None = try n and top up when the server returns fewer choices.
        self.native_n = p_n if native_n is None else native_n
        self.thinking_control: ThinkingControl = thinking_control or p_think
        if continuation is None:
            # The completions endpoint needs the model's chat template on this side.
            continuation = p_cont if p_cont == "chat" or chat_template else "none"
        if continuation == "completions" and chat_template is None:
            raise InvalidRequest(
                "continuation='completions' renders prompts here and needs a chat_template "
                "('chatml' or Jinja source)",
                param="chat_template",
            )
        self.continuation: Continuation = continuation
        self.chat_template = chat_template or "chatml"
        self.stream_usage = stream_usage
        self.extra_body = dict(extra_body or {})
        hdrs = dict(headers or {})
        if api_key:
            hdrs["Authorization"] = f"Bearer {api_key}"
        self.http = HttpUpstream(
            base_url,
            name=self.name,
            headers=hdrs,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            max_connections=max(max_concurrency, 1) * 2,
            transport=transport,
            client=http_client,
        )
        self._sem = asyncio.Semaphore(max(max_concurrency, 1))
        self._token_counter = token_counter
        self._tokenize_broken = False
        self.capabilities = Capabilities(
            native_n=self.native_n is True,
            logprobs=True,
            thinking_budget=self.thinking_control != "none",
            continue_final=self.continuation != "none",
            prefix_cache=flavor in ("vllm", "sglang", "llama_cpp"),
            max_context=max_context,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    # ------------------------------------------------------------ token counts

    async def count_tokens(self, text: str) -> int:
        """Tokens in ``text``: the server's tokenizer where it has one, else an estimate."""
        if not text:
            return 0
        if self._token_counter is not None:
            return await self._token_counter(text)
        path, body = None, {}
        if self.flavor in ("vllm", "sglang"):
            path, body = "/tokenize", {"model": self.model, "prompt": text}
        elif self.flavor == "llama_cpp":
            path, body = "/extras/tokenize/count", {"input": text}
        if path is not None and not self._tokenize_broken:
            # The tokenize routes live beside /v1, not under it.
            root = self.http.base_url.removesuffix("/v1")
            data = await self.http.post_aux(root + path, body)
            if isinstance(data, dict):
                if isinstance(data.get("count"), int):
                    return int(data["count"])
                if isinstance(data.get("tokens"), list):
                    return len(data["tokens"])
            self._tokenize_broken = True
        return estimate_tokens(text)

    async def _prompt_estimate(self, messages: Sequence[Message]) -> int:
        # A few tokens of chat-template framing per message.
        return sum([await self.count_tokens(m.content) + 4 for m in messages])

    async def _attribute(
        self,
        choices: list[Choice],
        usage: ServerUsage | None,
        req: GenRequest,
        messages: Sequence[Message],
        mode: Mode,
    ) -> list[tuple[Choice, Usage]]:
        """Usage per choice, checked against what ``req`` could use (see usage_attribution)."""
        return await attribute(
            choices,
            usage,
            mode,
            count_tokens=self.count_tokens,
            prompt_estimate=lambda: self._prompt_estimate(messages),
            bounds=UsageBounds(
                prompt=prompt_token_bound(messages), completion_per_choice=req.max_tokens
            ),
            upstream=self.name,
        )

    # ------------------------------------------------------------ request bodies

    def _sampling(self, req: GenRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"temperature": req.temperature, "top_p": req.top_p}
        if self.model or req.model:
            body["model"] = req.model or self.model
        if self.flavor == "openai":
            body["max_completion_tokens"] = req.max_tokens
        else:
            body["max_tokens"] = req.max_tokens
            if req.top_k:
                body["top_k"] = req.top_k
            if req.ignore_eos:
                body["ignore_eos"] = True
        if req.seed is not None:
            body["seed"] = req.seed
        if req.stop:
            body["stop"] = list(req.stop)
        if req.presence_penalty:
            body["presence_penalty"] = req.presence_penalty
        if req.frequency_penalty:
            body["frequency_penalty"] = req.frequency_penalty
        if req.logit_bias:
            body["logit_bias"] = {str(t): b for t, b in req.logit_bias.items()}
        return body

    def _chat_body(self, req: GenRequest, messages: Sequence[Message]) -> dict[str, Any]:
        body = self._sampling(req)
        body["messages"] = wire_messages(messages)
        body.update(wire_tools(req))
        if req.n > 1:
            body["n"] = req.n
        if req.logprobs:
            body["logprobs"] = True
            # Some servers (llama-cpp-python) return no logprobs without top_logprobs.
            body["top_logprobs"] = max(req.top_logprobs, 1)
        if req.continue_final:
            body["add_generation_prompt"] = False
            body["continue_final_message"] = True
        self._native_thinking(req, body)
        body.update(self.extra_body)
        return body

    def _native_thinking(self, req: GenRequest, body: dict[str, Any]) -> None:
        cfg = req.thinking
        on = cfg is not None and cfg.budget_tokens > 0
        if self.thinking_control in ("vllm", "sglang"):
            # Qwen3-style hybrid templates read this switch; other templates ignore it.
            body["chat_template_kwargs"] = {"enable_thinking": on}
            if on and cfg is not None:
                if self.thinking_control == "vllm":
                    body["thinking_token_budget"] = cfg.budget_tokens
                else:
                    body["chat_template_kwargs"]["thinking_budget"] = cfg.budget_tokens
        elif self.thinking_control == "openai" and on and cfg is not None:
            body["reasoning_effort"] = effort_for_budget(cfg.budget_tokens)

    def _completion_body(self, req: GenRequest, messages: Sequence[Message]) -> dict[str, Any]:
        body = self._sampling(req)
        body["prompt"] = render_chat(messages, self.chat_template, continue_final=True)
        if req.n > 1:
            body["n"] = req.n
        if req.logprobs:
            body["logprobs"] = max(req.top_logprobs, 1)
        body.update(self.extra_body)
        return body

    # ------------------------------------------------------------ one HTTP call

    def _use_completions(self, req: GenRequest, messages: Sequence[Message]) -> bool:
        if not req.continue_final:
            return False
        if messages[-1].role != "assistant":
            raise InvalidRequest(
                "continue_final needs the last message to be a partial assistant message",
                param="messages",
            )
        if self.continuation == "none":
            raise InvalidRequest(
                f"backend {self.name} cannot continue a partial assistant message; "
                "configure continuation='completions' with a chat_template, or use a "
                "vLLM/SGLang flavor",
                param="continue_final",
            )
        return self.continuation == "completions"

    async def _call(
        self, req: GenRequest, messages: Sequence[Message]
    ) -> tuple[list[Choice], ServerUsage | None]:
        """One request; returns up to ``req.n`` choices (a server may return fewer)."""
        completions = self._use_completions(req, messages)
        if completions:
            body = self._completion_body(req, messages)
            path = "/completions"
        else:
            body = self._chat_body(req, messages)
            path = "/chat/completions"
        async with self._sem:
            data = await self.http.post_json(path, body, deadline=req.deadline)
        raw = data.get("choices")
        if not isinstance(raw, list) or not raw or not all(isinstance(c, dict) for c in raw):
            raise UpstreamAnswerLost(
                f"upstream {self.name} answered without choices: {json.dumps(data)[:200]}",
                upstream=self.name,
                reason="no choices",
            )
        choices = parse_choices(
            raw,
            n=req.n,
            completions=completions,
            logprobs=req.logprobs,
            top_logprobs=req.top_logprobs,
        )
        return choices, server_usage(data)

    async def _sample(
        self, req: GenRequest, messages: Sequence[Message], mode: Mode = "split"
    ) -> list[tuple[Choice, Usage]]:
        """``req.n`` choices, each with its usage: native ``n`` where it works, else concurrent calls."""
        results: list[tuple[Choice, Usage]] = []
        if req.n == 1 or self.native_n is not False:
            choices, usage = await self._call(req, messages)
            results.extend(await self._attribute(choices, usage, req, messages, mode))
            if len(choices) < req.n and self.native_n is None:
                self.native_n = False  # the server ignores n; stop asking
                self.capabilities = self.capabilities.model_copy(update={"native_n": False})
        missing = req.n - len(results)
        if missing > 0:

            async def one(i: int) -> list[tuple[Choice, Usage]]:
                # Distinct seeds, or seeded samples would all be the same.
                seed = None if req.seed is None else req.seed + i
                sub = req.model_copy(update={"n": 1, "seed": seed})
                choices, usage = await self._call(sub, messages)
                return await self._attribute(choices, usage, sub, messages, mode)

            start = len(results)
            for part in await asyncio.gather(*(one(start + k) for k in range(missing))):
                results.extend(part)
        return results[: req.n]

    # ------------------------------------------------------------ generate

    def _client_cap(self, req: GenRequest) -> bool:
        return (
            self.thinking_control == "client"
            and req.thinking is not None
            and req.thinking.budget_tokens > 0
            and not req.continue_final
        )

    async def generate(self, req: GenRequest) -> list[Generation]:
        if self._client_cap(req):
            return await self._generate_capped(req)
        messages = self._messages(req)
        return [
            Generation(
                text=ch.text,
                reasoning=ch.reasoning,
                finish_reason=ch.finish,
                usage=u,
                logprobs=ch.logprobs,
                tool_calls=ch.tool_calls or None,
                stop_sequence=ch.stop_sequence if ch.stop_sequence in req.stop else None,
            )
            for ch, u in await self._sample(req, messages)
        ]

    def _messages(self, req: GenRequest) -> list[Message]:
        messages = list(req.messages)
        # Servers with native thinking control serve models that think on their own.
        if req.thinking is not None and req.thinking.prompted and self.thinking_control == "client":
            messages = scratchpad_messages(messages, req.thinking)
        return messages

    # ------------------------------------------------------------ stream

    async def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        if req.n != 1:
            raise InvalidRequest("stream() produces one generation; use n=1", param="n")
        if self._client_cap(req):
            async for d in self._stream_capped(req):
                yield d
            return
        async for d in self._stream_once(req, self._messages(req), mode="split"):
            yield d

    async def _stream_once(
        self,
        req: GenRequest,
        messages: Sequence[Message],
        *,
        mode: Mode,
    ) -> AsyncIterator[Delta]:
        """Stream one call; ``mode`` as in :meth:`_attribute`.

        The last delta carries the finish reason and the usage (estimated where the
        server reports none).
        """
        completions = self._use_completions(req, messages)
        if completions:
            body, path = self._completion_body(req, messages), "/completions"
        else:
            body, path = self._chat_body(req, messages), "/chat/completions"
        body["stream"] = True
        body.pop("n", None)
        if self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        splitter = ThinkSplitter()
        reasoning_parts: list[str] = []
        text_parts: list[str] = []
        finish: FinishReason | None = None
        stop_sequence: str | None = None
        usage: ServerUsage | None = None
        done = False
        events = self.http.post_sse(path, body, deadline=req.deadline)
        # Closed here, in this task, however the loop ends (not later by the collector).
        async with self._sem, contextlib.aclosing(events):
            async for event in events:
                if event.get("[DONE]"):
                    done = True
                    break
                if "error" in event:
                    err = event["error"]
                    reason = err.get("message", err) if isinstance(err, dict) else err
                    raise UpstreamAnswerLost(
                        f"upstream {self.name} failed mid-stream: {reason}",
                        upstream=self.name,
                        reason=str(reason),
                    )
                usage = server_usage(event) or usage
                for c in event.get("choices") or []:
                    if completions:
                        content, r = str(c.get("text") or ""), ""
                    else:
                        d = c.get("delta") or {}
                        content = str(d.get("content") or "")
                        r = str(d.get("reasoning_content") or d.get("reasoning") or "")
                    if mode == "split":
                        r2, t = splitter.feed(content)
                        r += r2
                    elif mode == "reasoning":
                        r, t = r + content, ""
                    else:
                        t = content
                    if r or t:
                        reasoning_parts.append(r)
                        text_parts.append(t)
                        yield Delta(reasoning=r, text=t)
                    if c.get("finish_reason"):
                        finish = finish_reason(c["finish_reason"])
                    if c.get("stop_reason") in req.stop:  # vLLM names the stop string
                        stop_sequence = c["stop_reason"]
        if mode == "split":
            r, t = splitter.flush()
            if r or t:
                reasoning_parts.append(r)
                text_parts.append(t)
                yield Delta(reasoning=r, text=t)
        if finish is None and not done:
            raise UpstreamAnswerLost(
                f"upstream {self.name} ended the stream before it finished (truncated)",
                upstream=self.name,
                reason="truncated stream",
            )
        choice = Choice(
            text="".join(text_parts),
            reasoning="".join(reasoning_parts),
            finish=finish or "stop",
            logprobs=None,
        )
        ((_, u),) = await self._attribute([choice], usage, req, messages, mode)
        yield Delta(finish_reason=choice.finish, usage=u, stop_sequence=stop_sequence)
