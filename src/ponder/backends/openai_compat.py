"""Any OpenAI-compatible HTTP server as a backend: vLLM, SGLang, llama.cpp, Ollama, OpenAI.

One pooled ``httpx.AsyncClient`` per backend. ``flavor`` names the server so
that its extensions are used where they exist:

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
  client-side cap for servers with no native control (think until the budget,
  force the end of thinking, then ask for the answer);
- reasoning is read from ``reasoning_content`` / ``reasoning`` or from
  ``<think>`` tags in the text. Usage comes from the server; reasoning tokens
  it does not report are estimated by tokenizing the reasoning text (via the
  server's tokenize endpoint where it has one) and flagged estimated.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from ponder.backends import http11
from ponder.errors import ContextOverflow, InvalidRequest, UpstreamError, UpstreamTimeout
from ponder.types import (
    Capabilities,
    Delta,
    FinishReason,
    Generation,
    GenRequest,
    Message,
    ThinkingConfig,
    TokenLogprob,
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
_Mode = Literal["split", "reasoning", "text"]

SCRATCHPAD = (
    "Before answering, think step by step inside {open} ... {close}. "
    "After {close}, give only the final answer."
)
ASK_FOR_ANSWER = "Stop thinking now. Give your final answer."
# Statuses after which the same request may succeed (529: Anthropic "overloaded").
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (about four characters per token)."""
    return math.ceil(len(text) / 4) if text else 0


# ---------------------------------------------------------------------------- HTTP


def _reason(body: bytes) -> str:
    """The upstream's own words from an error body (OpenAI, Anthropic or FastAPI shape)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            for key in ("message", "detail", "msg"):
                if isinstance(err.get(key), str):
                    return str(err[key])
        if isinstance(err, str):
            return err
        if "detail" in data:
            return json.dumps(data["detail"])[:500]
    return text[:500]


def _retry_after(resp: httpx.Response | http11.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


class HttpUpstream:
    """A pooled async HTTP client for one upstream that maps every failure to an error value."""

    def __init__(
        self,
        base_url: str,
        *,
        name: str,
        headers: dict[str, str] | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float | None = None,
        max_connections: int = 32,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers or {},
            # Total and first-token limits are the guard's; here only the socket-level ones.
            timeout=httpx.Timeout(None, connect=connect_timeout_s, read=read_timeout_s),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )
        self._urls: dict[str, httpx.URL] = {}
        # Plain-http upstreams (self-hosted servers) get the lean client for JSON calls;
        # streams, https and proxied setups stay on httpx.
        self.lean: http11.Http11Pool | None = None
        if transport is None and http11.usable_for(self.base_url):
            self.lean = http11.Http11Pool(
                self.base_url,
                headers=headers,
                connect_timeout_s=connect_timeout_s,
                read_timeout_s=read_timeout_s,
                max_connections=max_connections,
            )

    async def aclose(self) -> None:
        if self.lean is not None:
            await self.lean.aclose()
        await self.client.aclose()

    def _url(self, path: str) -> httpx.URL:
        # A relative path is parsed and merged with base_url on every request; the
        # absolute URL of each route is built once instead.
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(f"{self.base_url}/{path.lstrip('/')}")
        return url

    def _error(self, exc: Exception) -> UpstreamError:
        where = f"upstream {self.name} ({self.base_url})"
        if isinstance(exc, httpx.ConnectTimeout | http11.ConnectTimeout):
            return UpstreamTimeout(
                f"{where} did not accept a connection in time; check that it is running",
                upstream=self.name,
                reason=str(exc) or "connect timeout",
                retryable=True,
            )
        if isinstance(exc, httpx.TimeoutException | http11.ReadTimeout):
            return UpstreamTimeout(
                f"{where} stopped sending data (read timeout)",
                upstream=self.name,
                reason=str(exc) or "read timeout",
                retryable=True,
            )
        if isinstance(exc, httpx.ConnectError | http11.ConnectFailed):
            return UpstreamError(
                f"{where} is unreachable: {exc}; check its address and that it is running",
                upstream=self.name,
                reason=str(exc),
                retryable=True,
            )
        if isinstance(exc, httpx.TransportError | http11.Dropped):
            return UpstreamError(
                f"{where} dropped the connection: {exc or type(exc).__name__}",
                upstream=self.name,
                reason=str(exc) or type(exc).__name__,
                retryable=True,
            )
        return UpstreamError(f"{where} failed: {exc}", upstream=self.name, reason=str(exc))

    def _status_error(self, resp: httpx.Response | http11.Response, body: bytes) -> UpstreamError:
        reason = _reason(body)
        status = resp.status_code
        low = reason.lower()
        if status == 400 and ("context length" in low or "maximum context" in low):
            raise ContextOverflow(
                f"the prompt does not fit upstream {self.name}'s context: {reason}",
                param="messages",
            )
        return UpstreamError(
            f"upstream {self.name} answered {status}: {reason}",
            upstream=self.name,
            upstream_status=status,
            reason=reason,
            retryable=status in RETRYABLE_STATUSES,
            retry_after_s=_retry_after(resp),
        )

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        resp: httpx.Response | http11.Response
        try:
            if self.lean is not None:
                resp = await self.lean.post(path, json.dumps(body).encode())
            else:
                resp = await self.client.post(self._url(path), json=body)
            content = resp.content
        except (httpx.HTTPError, http11.Http11Error) as exc:
            raise self._error(exc) from exc
        if resp.status_code >= 400:
            raise self._status_error(resp, content)
        return self._json_object(
            content,
            not_json=f"a body that is not JSON: {content[:200]!r}",
            not_object="JSON that is not an object",
            reason="malformed JSON",
        )

    async def post_sse(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yield the JSON payload of each server-sent event; ``{"[DONE]": True}`` at ``[DONE]``."""
        try:
            async with self.client.stream("POST", self._url(path), json=body) as resp:
                if resp.status_code >= 400:
                    raise self._status_error(resp, await resp.aread())
                data_lines: list[str] = []
                async for line in resp.aiter_lines():
                    if line.startswith("data:"):
                        data_lines.append(line[5:].strip())
                    elif not line.strip() and data_lines:
                        yield self._event("\n".join(data_lines))
                        data_lines = []
                if data_lines:
                    yield self._event("\n".join(data_lines))
        except httpx.HTTPError as exc:
            raise self._error(exc) from exc

    def _event(self, payload: str) -> dict[str, Any]:
        if payload == "[DONE]":
            return {"[DONE]": True}
        return self._json_object(
            payload,
            not_json=f"a stream event that is not JSON: {payload[:200]!r}",
            not_object="a stream event that is not an object",
            reason="malformed JSON in stream",
        )

    def _json_object(
        self, text: str | bytes, *, not_json: str, not_object: str, reason: str
    ) -> dict[str, Any]:
        """Parse an upstream JSON object; anything else is a retryable upstream error."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UpstreamError(
                f"upstream {self.name} sent {not_json}",
                upstream=self.name,
                reason=reason,
                retryable=True,
            ) from exc
        if not isinstance(data, dict):
            raise UpstreamError(
                f"upstream {self.name} sent {not_object}",
                upstream=self.name,
                reason=reason,
                retryable=True,
            )
        return data


# ---------------------------------------------------------------------------- text


def split_think(
    text: str, open_tag: str = "<think>", close_tag: str = "</think>"
) -> tuple[str, str]:
    """``(reasoning, answer)`` from text that may hold a ``<think>`` block.

    A close tag without an open one counts too: chat templates of thinking
    models often put the open tag into the prompt. An unclosed thought is all
    reasoning.
    """
    stripped = text.lstrip()
    if stripped.startswith(open_tag):
        rest = stripped[len(open_tag) :]
        if close_tag in rest:
            thought, answer = rest.split(close_tag, 1)
            return thought.strip(), answer.lstrip()
        return rest.strip(), ""
    if close_tag in text:
        thought, answer = text.split(close_tag, 1)
        return thought.strip(), answer.lstrip()
    return "", text


class ThinkSplitter:
    """Incremental :func:`split_think` for streams; holds back partial tags."""

    def __init__(self, open_tag: str = "<think>", close_tag: str = "</think>") -> None:
        self.open_tag, self.close_tag = open_tag, close_tag
        self.state: Literal["start", "thinking", "answer"] = "start"
        self.buf = ""
        self._answer_started = False

    def feed(self, chunk: str) -> tuple[str, str]:
        self.buf += chunk
        reasoning = text = ""
        if self.state == "start":
            head = self.buf.lstrip()
            if head.startswith(self.open_tag):
                self.state, self.buf = "thinking", head[len(self.open_tag) :].lstrip()
            elif self.open_tag.startswith(head):
                return "", ""  # could still become the open tag
            else:
                self.state = "answer"
        if self.state == "thinking":
            if self.close_tag in self.buf:
                thought, rest = self.buf.split(self.close_tag, 1)
                reasoning, self.buf, self.state = thought, rest.lstrip(), "answer"
            else:
                keep = _partial_suffix(self.buf, self.close_tag)
                reasoning, self.buf = (
                    self.buf[: len(self.buf) - keep],
                    self.buf[len(self.buf) - keep :],
                )
                return reasoning, ""
        if self.state == "answer":
            text, self.buf = self.buf, ""
            if not self._answer_started:
                text = text.lstrip()
                self._answer_started = bool(text)
        return reasoning, text

    def flush(self) -> tuple[str, str]:
        rest, self.buf = self.buf, ""
        if self.state == "thinking":
            return rest, ""
        return "", rest


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-k:]):
            return k
    return 0


def render_chat(messages: Sequence[Message], template: str, *, continue_final: bool) -> str:
    """Render messages to a prompt for the raw completions endpoint.

    ``template`` is ``"chatml"`` (Qwen, many others) or Jinja source using the
    usual ``messages`` / ``add_generation_prompt`` variables (needs jinja2).
    With ``continue_final`` the last (assistant) message is left open.
    """
    msgs = list(messages)
    partial = msgs.pop().content if continue_final else None
    if template == "chatml":
        out = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in msgs)
        out += "<|im_start|>assistant\n"
    else:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        out = env.from_string(template).render(
            messages=[{"role": m.role, "content": m.content} for m in msgs],
            add_generation_prompt=True,
        )
    return out + (partial or "")


def _scratchpad(messages: list[Message], cfg: ThinkingConfig) -> list[Message]:
    instruction = SCRATCHPAD.format(open=cfg.open_tag, close=cfg.close_tag)
    if messages and messages[0].role == "system":
        return [
            Message(role="system", content=f"{messages[0].content}\n\n{instruction}"),
            *messages[1:],
        ]
    return [Message(role="system", content=instruction), *messages]


def effort_for_budget(budget_tokens: int) -> str:
    """OpenAI ``reasoning_effort`` for a token budget (a coarse, documented mapping)."""
    if budget_tokens <= 1024:
        return "low"
    if budget_tokens <= 8192:
        return "medium"
    return "high"


# ---------------------------------------------------------------------------- parsing


@dataclass
class _Choice:
    text: str
    reasoning: str
    finish: FinishReason
    logprobs: list[TokenLogprob] | None
    # Output tokens known exactly for this choice (from its logprobs), if any.
    tokens: int | None = None


@dataclass
class _ServerUsage:
    prompt: int
    cached: int
    completion: int
    reasoning: int | None


def _finish(value: object) -> FinishReason:
    return "length" if value == "length" else "stop"


def _server_usage(data: dict[str, Any]) -> _ServerUsage | None:
    u = data.get("usage")
    if not isinstance(u, dict) or "completion_tokens" not in u:
        return None
    pdet = u.get("prompt_tokens_details") or {}
    cdet = u.get("completion_tokens_details") or {}
    reasoning = cdet.get("reasoning_tokens") if isinstance(cdet, dict) else None
    return _ServerUsage(
        prompt=int(u.get("prompt_tokens") or 0),
        cached=int((pdet.get("cached_tokens") if isinstance(pdet, dict) else 0) or 0),
        completion=int(u.get("completion_tokens") or 0),
        reasoning=int(reasoning) if isinstance(reasoning, int) else None,
    )


def _chat_logprobs(lp: object) -> list[TokenLogprob] | None:
    if not isinstance(lp, dict) or not isinstance(lp.get("content"), list):
        return None
    return [
        TokenLogprob(
            token=str(t.get("token", "")),
            logprob=float(t.get("logprob", 0.0)),
            top={str(a["token"]): float(a["logprob"]) for a in t.get("top_logprobs") or []},
        )
        for t in lp["content"]
    ]


def _completion_logprobs(lp: object) -> list[TokenLogprob] | None:
    if not isinstance(lp, dict) or not isinstance(lp.get("tokens"), list):
        return None
    tops = lp.get("top_logprobs") or [None] * len(lp["tokens"])
    return [
        TokenLogprob(
            token=str(tok),
            logprob=float(val if val is not None else 0.0),
            top={str(k): float(v) for k, v in (top or {}).items()},
        )
        for tok, val, top in zip(lp["tokens"], lp.get("token_logprobs") or [], tops, strict=False)
    ]


# ---------------------------------------------------------------------------- backend


_PROFILES: dict[str, tuple[bool | None, ThinkingControl, Continuation]] = {
    # flavor: (native n, thinking control, continuation)
    "vllm": (True, "vllm", "chat"),
    "sglang": (True, "sglang", "chat"),
    "openai": (True, "openai", "none"),
    "ollama": (False, "client", "none"),
    "llama_cpp": (None, "client", "completions"),  # completions once a chat_template is given
    "generic": (None, "client", "none"),
}


class OpenAICompatBackend:
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
        read_timeout_s: float | None = None,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
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
            try:
                resp = await self.http.client.post(root + path, json=body)
                data = resp.json()
                if resp.status_code == 200 and isinstance(data, dict):
                    if isinstance(data.get("count"), int):
                        return int(data["count"])
                    if isinstance(data.get("tokens"), list):
                        return len(data["tokens"])
            except (httpx.HTTPError, ValueError):
                pass
            self._tokenize_broken = True
        return estimate_tokens(text)

    async def _prompt_estimate(self, messages: Sequence[Message]) -> int:
        # A few tokens of chat-template framing per message.
        return sum([await self.count_tokens(m.content) + 4 for m in messages])

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
        return body

    def _chat_body(self, req: GenRequest, messages: Sequence[Message]) -> dict[str, Any]:
        body = self._sampling(req)
        body["messages"] = [{"role": m.role, "content": m.content} for m in messages]
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
    ) -> tuple[list[_Choice], _ServerUsage | None]:
        """One request; returns up to ``req.n`` choices (a server may return fewer)."""
        completions = self._use_completions(req, messages)
        if completions:
            body = self._completion_body(req, messages)
            path = "/completions"
        else:
            body = self._chat_body(req, messages)
            path = "/chat/completions"
        async with self._sem:
            data = await self.http.post_json(path, body)
        raw = data.get("choices")
        if not isinstance(raw, list) or not raw:
            raise UpstreamError(
                f"upstream {self.name} answered without choices: {json.dumps(data)[:200]}",
                upstream=self.name,
                reason="no choices",
                retryable=True,
            )
        out: list[_Choice] = []
        for c in sorted(raw, key=lambda c: int(c.get("index", 0)))[: req.n]:
            if completions:
                text, reasoning = str(c.get("text") or ""), ""
                lps = _completion_logprobs(c.get("logprobs"))
            else:
                msg = c.get("message") or {}
                text = str(msg.get("content") or "")
                reasoning = str(msg.get("reasoning_content") or msg.get("reasoning") or "")
                lps = _chat_logprobs(c.get("logprobs"))
            if lps is not None and not req.top_logprobs:
                for t in lps:
                    t.top = {}
            out.append(
                _Choice(
                    text=text,
                    reasoning=reasoning,
                    finish=_finish(c.get("finish_reason")),
                    logprobs=lps if req.logprobs else None,
                    tokens=len(lps) if lps is not None else None,
                )
            )
        return out, _server_usage(data)

    async def _sample(
        self, req: GenRequest, messages: Sequence[Message], mode: _Mode = "split"
    ) -> list[tuple[_Choice, Usage]]:
        """``req.n`` choices, each with its usage: native ``n`` where it works, else concurrent calls."""
        results: list[tuple[_Choice, Usage]] = []
        if req.n == 1 or self.native_n is not False:
            choices, usage = await self._call(req, messages)
            results.extend(await self._attribute(choices, usage, messages, mode))
            if len(choices) < req.n and self.native_n is None:
                self.native_n = False  # the server ignores n; stop asking
                self.capabilities = self.capabilities.model_copy(update={"native_n": False})
        missing = req.n - len(results)
        if missing > 0:

            async def one(i: int) -> list[tuple[_Choice, Usage]]:
                # Distinct seeds, or seeded samples would all be the same.
                seed = None if req.seed is None else req.seed + i
                sub = req.model_copy(update={"n": 1, "seed": seed})
                choices, usage = await self._call(sub, messages)
                return await self._attribute(choices, usage, messages, mode)

            start = len(results)
            for part in await asyncio.gather(*(one(start + k) for k in range(missing))):
                results.extend(part)
        return results[: req.n]

    async def _attribute(
        self,
        choices: list[_Choice],
        usage: _ServerUsage | None,
        messages: Sequence[Message],
        mode: _Mode,
    ) -> list[tuple[_Choice, Usage]]:
        """Split one call's usage over its choices; the prompt goes to the first.

        ``mode`` says what the generated text is: ``split`` (reasoning fields or
        ``<think>`` tags mark the thinking), ``reasoning`` (all of it is thinking,
        for the client-side cap) or ``text`` (all of it is answer).
        """
        for ch in choices:
            if mode == "split" and not ch.reasoning:
                thought, answer = split_think(ch.text)
                if thought:
                    ch.reasoning, ch.text = thought, answer
            elif mode == "reasoning":
                head = ch.text.lstrip()
                body = head[len("<think>") :] if head.startswith("<think>") else ch.text
                ch.reasoning, ch.text = ch.reasoning + body, ""
        if usage is None:
            prompt = await self._prompt_estimate(messages)
            out = []
            for i, ch in enumerate(choices):
                r = await self.count_tokens(ch.reasoning)
                exact = ch.tokens is not None and not ch.reasoning
                o = int(ch.tokens or 0) if exact else await self.count_tokens(ch.text)
                out.append(
                    (
                        ch,
                        Usage(
                            input=prompt if i == 0 else 0,
                            reasoning=r,
                            output=o,
                            input_estimated=True,
                            reasoning_estimated=r > 0,
                            output_estimated=not exact,
                        ),
                    )
                )
            return out
        # The reported total is kept exactly; over several choices it is split by their
        # token counts (from logprobs) or else in proportion to their length.
        if len(choices) == 1:
            per = [usage.completion]
        elif all(c.tokens is not None for c in choices):
            per = _split_total(usage.completion, [int(c.tokens or 0) for c in choices])
        else:
            per = _split_total(
                usage.completion, [await self.count_tokens(c.reasoning + c.text) for c in choices]
            )
        r_split = (
            _split_total(usage.reasoning, [await self.count_tokens(c.reasoning) for c in choices])
            if usage.reasoning is not None
            else None
        )
        out = []
        for i, ch in enumerate(choices):
            est = False
            if r_split is not None:
                r = min(r_split[i], per[i])
            elif mode == "reasoning":
                r = per[i]
            elif ch.reasoning:
                # Not reported: tokenize the reasoning text; the output is the rest.
                r, est = min(await self.count_tokens(ch.reasoning), per[i]), True
            else:
                r = 0
            out.append(
                (
                    ch,
                    Usage(
                        input=max(usage.prompt - usage.cached, 0) if i == 0 else 0,
                        cached_input=usage.cached if i == 0 else 0,
                        reasoning=r,
                        output=per[i] - r,
                        reasoning_estimated=est,
                        output_estimated=est,
                    ),
                )
            )
        return out

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
        messages = list(req.messages)
        if req.thinking is not None and req.thinking.prompted and self._prompts_for_thinking():
            messages = _scratchpad(messages, req.thinking)
        return [
            Generation(
                text=ch.text,
                reasoning=ch.reasoning,
                finish_reason=ch.finish,
                usage=u,
                logprobs=ch.logprobs,
            )
            for ch, u in await self._sample(req, messages)
        ]

    def _prompts_for_thinking(self) -> bool:
        # Servers with native thinking control serve models that think on their own.
        return self.thinking_control == "client"

    def _cap_plan(self, req: GenRequest) -> tuple[ThinkingConfig, int, list[Message]]:
        cfg = req.thinking
        assert cfg is not None
        # Keep room for the answer, as the embedded engine does.
        reserve = max(min(req.max_tokens // 4, 64), 1)
        cap = max(min(cfg.budget_tokens, req.max_tokens - reserve), 0)
        messages = _scratchpad(list(req.messages), cfg) if cfg.prompted else list(req.messages)
        return cfg, cap, messages

    def _think_call(
        self, req: GenRequest, messages: list[Message], cfg: ThinkingConfig, thought: str, cap: int
    ) -> tuple[GenRequest, list[Message]]:
        """The request that thinks (on) from ``thought``, stopping at the close tag."""
        sub = req.model_copy(
            update={
                "max_tokens": cap,
                "stop": [cfg.close_tag],
                "logprobs": False,
                "thinking": None,
                "continue_final": self.continuation != "none",
            }
        )
        if self.continuation == "none":
            return sub, messages
        prefix = f"{cfg.open_tag}\n{thought}"
        return sub, [*messages, Message(role="assistant", content=prefix)]

    def _answer_call(
        self, req: GenRequest, messages: list[Message], cfg: ThinkingConfig, thought: str, left: int
    ) -> tuple[GenRequest, list[Message]]:
        """The request that writes the answer after a closed (or forcibly closed) thought."""
        closed = f"{cfg.open_tag}\n{thought.strip()}\n{cfg.close_tag}\n\n"
        sub = req.model_copy(
            update={
                "n": 1,
                "max_tokens": max(left, 1),
                "thinking": None,
                "continue_final": self.continuation != "none",
            }
        )
        if self.continuation != "none":
            return sub, [*messages, Message(role="assistant", content=closed)]
        return sub, [
            *messages,
            Message(role="assistant", content=closed),
            Message(role="user", content=ASK_FOR_ANSWER),
        ]

    async def _generate_capped(self, req: GenRequest) -> list[Generation]:
        """Client-side thinking cap for servers with no native control."""
        cfg, cap, messages = self._cap_plan(req)
        if cap < 8:
            # Too small a budget to open and close a thought: answer directly.
            return await self.generate(req.model_copy(update={"thinking": None}))
        sub, msgs = self._think_call(req, messages, cfg, "", cap)
        first = await self._sample(sub, msgs, "reasoning")

        async def finish_one(choice: _Choice, usage: Usage) -> Generation:
            thought, total = choice.reasoning, usage
            extensions = 0
            # s1-style: a thought closed too early is extended with "Wait".
            while (
                choice.finish == "stop"
                and total.reasoning < cfg.min_tokens
                and extensions < cfg.max_extensions
                and self.continuation != "none"
                and cap - total.reasoning > 0
            ):
                extensions += 1
                thought = f"{thought.rstrip()}\n{cfg.extend_with}"
                sub2, msgs2 = self._think_call(
                    req.model_copy(update={"n": 1}), messages, cfg, thought, cap - total.reasoning
                )
                ((choice, more),) = await self._sample(sub2, msgs2, "reasoning")
                thought += choice.reasoning
                total = total + more
            sub3, msgs3 = self._answer_call(
                req, messages, cfg, thought, req.max_tokens - total.reasoning
            )
            ((answer, ausage),) = await self._sample(sub3, msgs3, "text")
            return Generation(
                text=answer.text,
                reasoning=thought.strip(),
                finish_reason=answer.finish,
                usage=total + ausage,
                logprobs=answer.logprobs,
            )

        return list(await asyncio.gather(*(finish_one(c, u) for c, u in first)))

    # ------------------------------------------------------------ stream

    async def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        if req.n != 1:
            raise InvalidRequest("stream() produces one generation; use n=1", param="n")
        if self._client_cap(req):
            async for d in self._stream_capped(req):
                yield d
            return
        messages = list(req.messages)
        if req.thinking is not None and req.thinking.prompted and self._prompts_for_thinking():
            messages = _scratchpad(messages, req.thinking)
        async for d in self._stream_once(req, messages, mode="split"):
            yield d

    async def _stream_once(
        self,
        req: GenRequest,
        messages: Sequence[Message],
        *,
        mode: _Mode,
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
        usage: _ServerUsage | None = None
        done = False
        async with self._sem:
            async for event in self.http.post_sse(path, body):
                if event.get("[DONE]"):
                    done = True
                    break
                if "error" in event:
                    err = event["error"]
                    reason = err.get("message", err) if isinstance(err, dict) else err
                    raise UpstreamError(
                        f"upstream {self.name} failed mid-stream: {reason}",
                        upstream=self.name,
                        reason=str(reason),
                        retryable=True,
                    )
                usage = _server_usage(event) or usage
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
                        finish = _finish(c["finish_reason"])
        if mode == "split":
            r, t = splitter.flush()
            if r or t:
                reasoning_parts.append(r)
                text_parts.append(t)
                yield Delta(reasoning=r, text=t)
        if finish is None and not done:
            raise UpstreamError(
                f"upstream {self.name} ended the stream before it finished (truncated)",
                upstream=self.name,
                reason="truncated stream",
                retryable=True,
            )
        choice = _Choice(
            text="".join(text_parts),
            reasoning="".join(reasoning_parts),
            finish=finish or "stop",
            logprobs=None,
        )
        ((_, u),) = await self._attribute([choice], usage, messages, mode)
        yield Delta(finish_reason=choice.finish, usage=u)

    async def _stream_capped(self, req: GenRequest) -> AsyncIterator[Delta]:
        cfg, cap, messages = self._cap_plan(req)
        if cap < 8:
            async for d in self.stream(req.model_copy(update={"thinking": None})):
                yield d
            return
        sub, msgs = self._think_call(req, messages, cfg, "", cap)
        thought_parts: list[str] = []
        think_usage = Usage()
        async for d in self._stream_once(sub, msgs, mode="reasoning"):
            if d.usage is not None:
                think_usage = d.usage
            elif d.reasoning:
                piece = d.reasoning
                if not thought_parts and self.continuation == "none":
                    piece = piece.replace(cfg.open_tag, "", 1)
                thought_parts.append(piece)
                yield Delta(reasoning=piece)
        thought = "".join(thought_parts)
        sub2, msgs2 = self._answer_call(
            req, messages, cfg, thought, req.max_tokens - think_usage.completion_tokens
        )
        async for d in self._stream_once(sub2, msgs2, mode="text"):
            if d.usage is not None:
                yield Delta(finish_reason=d.finish_reason, usage=think_usage + d.usage)
            else:
                yield d


def _split_total(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` that sum exactly to it."""
    if not weights:
        return []
    wsum = sum(weights)
    if wsum == 0:
        base = [total // len(weights)] * len(weights)
        base[0] += total - sum(base)
        return base
    parts = [total * w // wsum for w in weights]
    order = sorted(range(len(weights)), key=lambda i: -(total * weights[i] % wsum))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts
