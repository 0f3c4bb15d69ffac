"""Wire schemas of the OpenAI-compatible gateway.

Requests accept what the official ``openai`` client sends (unknown top-level
fields are ignored, so new client versions keep working) plus one extension
object, ``ponder``, that clients pass with ``extra_body={"ponder": {...}}``.
Schemas check shapes and ranges only; what a request *means* (which strategy,
which budget) is decided in :mod:`ponder.server.planning`.

Errors are values here too: :class:`ErrorResult` (HTTP status + OpenAI error
body, built by :func:`ponder.errors.openai_error_body` and nowhere else).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from ponder.errors import InvalidRequest, PonderError, openai_error_body
from ponder.server.protocol_tools import (
    ChoiceLogprobs,
    ChunkToolCall,
    FunctionCall,
    FunctionParam,
    NamedToolChoice,
    ResponseFormat,
    TokenLogprobInfo,
    ToolParam,
    WireToolCall,
    logprobs_to_openai,
    tool_calls_to_openai,
)
from ponder.types import OutputConstraint, Role, ToolCall, ToolChoice, ToolSpec

__all__ = [
    "MAX_DEADLINE_S",
    "MAX_QUOTA_LIMIT",
    "MAX_TOKENS",
    "AssistantMessage",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "Choice",
    "ChoiceLogprobs",
    "ChunkChoice",
    "ChunkDelta",
    "ChunkToolCall",
    "ContinuedJob",
    "DocumentParam",
    "ErrorResult",
    "FunctionCall",
    "FunctionParam",
    "KeyCreate",
    "ModelCard",
    "ModelList",
    "OpenAIFinishReason",
    "PonderInfo",
    "PonderOptions",
    "PonderProgress",
    "NamedToolChoice",
    "QuotaSet",
    "ReasoningEffort",
    "ResponseFormat",
    "StreamOptions",
    "StreamProgress",
    "StreamResult",
    "ThinkingParam",
    "TokenLogprobInfo",
    "ToolParam",
    "WireToolCall",
    "completion_id",
    "error_result",
    "internal_error",
    "logprobs_to_openai",
    "openai_error_body",
    "tool_calls_to_openai",
]

logger = logging.getLogger("ponder.server")

# Upper bounds of numeric fields, so every sum the reservation makes fits in a 64-bit
# store column: token counts (max_tokens, budgets, thinking) fit a signed 32-bit int,
# as in OpenAI's API; quota limits fit a JSON-safe integer (2^53 - 1).
MAX_TOKENS = 2**31 - 1
MAX_QUOTA_LIMIT = 2**53 - 1
# A week: longer than any latency class waits.
MAX_DEADLINE_S = 7 * 24 * 3600.0

ReasoningEffort = Literal["none", "minimal", "low", "medium", "high"]
OpenAIFinishReason = Literal["stop", "length", "content_filter", "tool_calls"]
_UNSUPPORTED_PARTS = {
    "image_url": "images",
    "input_image": "images",
    "image": "images",
    "input_audio": "audio",
    "audio": "audio",
    "file": "files",
    "input_file": "files",
}


def completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


def _now() -> int:
    return int(time.time())


# --------------------------------------------------------------------------- requests


class ChatMessage(BaseModel):
    """One message as OpenAI clients send it; content parts are joined into plain text."""

    model_config = ConfigDict(extra="ignore")

    role: Role
    # Assistant messages that only carry tool calls have no content.
    content: str | None = None
    tool_calls: list[WireToolCall] | None = None
    # A "tool" message answers the call with this id.
    tool_call_id: str | None = Field(default=None, max_length=200)
    name: str | None = Field(default=None, max_length=200)

    @field_validator("content", mode="before")
    @classmethod
    def _join_parts(cls, v: Any) -> Any:
        if v is None or isinstance(v, str):
            return v
        if not isinstance(v, list):
            raise ValueError("must be a string or a list of content parts")
        texts: list[str] = []
        for i, part in enumerate(v):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in _UNSUPPORTED_PARTS:
                raise ValueError(
                    f"part {i} is {kind!r}: {_UNSUPPORTED_PARTS[kind]} are not supported "
                    "(this gateway's models read text); send only text parts "
                    '({"type": "text", "text": "..."})'
                )
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(
                    f"part {i} has type {kind!r}; only text parts "
                    '({"type": "text", "text": "..."}) are supported'
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise ValueError(f"part {i} needs a string 'text'")
            texts.append(text)
        return "\n".join(texts)

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self

    def core_tool_calls(self) -> list[ToolCall]:
        return [c.to_core() for c in self.tool_calls or []]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(default=False, strict=True)


class ThinkingParam(BaseModel):
    """Anthropic-style ``thinking``: ``{"type": "enabled", "budget_tokens": 2048}``."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["enabled", "disabled"]
    # Optional here (Anthropic requires it); the handler supplies a default when missing.
    # strict: JSON true must not count as a 1-token budget.
    budget_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS, strict=True)


class DocumentParam(BaseModel):
    """One entry of ``ponder.documents``: content the model may use but never obey."""

    model_config = ConfigDict(extra="ignore")

    content: str
    id: str | None = Field(default=None, max_length=200)
    title: str | None = Field(default=None, max_length=500)


class PonderOptions(BaseModel):
    """The ``ponder`` extension: pick and bound the test-time-compute strategy."""

    # Our own namespace: a misspelled key is an error, not a silently ignored option.
    model_config = ConfigDict(extra="forbid")

    strategy: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    # Generated tokens (reasoning + output) over all internal calls of the strategy.
    # strict: JSON true or "5" must not silently become a token count.
    budget: int | None = Field(default=None, ge=0, le=MAX_TOKENS, strict=True)
    thinking_budget: int | None = Field(default=None, ge=0, le=MAX_TOKENS, strict=True)
    deadline_s: float | None = Field(default=None, gt=0, le=MAX_DEADLINE_S)
    include_reasoning: bool = Field(default=False, strict=True)
    # A routing preset / task class (chat, codegen, ...); also the x-ponder-preset header.
    preset: str | None = None
    # The model tier to run on (a [tiers.<name>] name); also a tier named as ``model``.
    tier: str | None = None
    # "interactive": answer fast, never search; "async": the caller can wait for the full
    # plan. Also the x-ponder-latency header; wins over the class policy.
    latency: Literal["interactive", "async"] | None = None
    # Untrusted reference material (retrieved passages, files): delimited as data.
    documents: list[DocumentParam] = Field(default_factory=list)
    # A verifier for the answer, e.g. {"type": "tests", "tests": [...]}; see
    # ponder.verifiers.spec (validated when the request is planned).
    verifier: dict[str, Any] | None = None


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage]
    # strict: as in OpenAI's API, JSON true is not 1 and "yes" is not a boolean.
    n: int = Field(default=1, ge=1, le=128, strict=True)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS, strict=True)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS, strict=True)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, strict=True)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, strict=True)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1, strict=True)
    stop: list[str] | None = None
    stream: bool = Field(default=False, strict=True)
    stream_options: StreamOptions | None = None
    reasoning_effort: ReasoningEffort | None = None
    thinking: ThinkingParam | None = None
    tools: list[ToolParam] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # Not in OpenAI's API; vLLM's and Anthropic's top-k (-1 or 0: off, as in vLLM).
    top_k: int | None = Field(default=None, ge=-1, le=MAX_TOKENS, strict=True)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, strict=True)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, strict=True)
    # Token id (as a JSON key) -> bias in [-100, 100], as in OpenAI's API.
    logit_bias: dict[str, float] | None = Field(default=None, max_length=1024)
    # Parts of OpenAI's API this gateway cannot serve: refused with what to send instead,
    # never silently dropped (see _unsupported).
    functions: list[Any] | None = None
    function_call: Any = None
    audio: Any = None
    modalities: list[str] | None = None
    web_search_options: Any = None
    # Recorded, not used for routing: OpenAI's end-user id and free-form tags.
    user: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = None
    ponder: PonderOptions = Field(default_factory=PonderOptions)

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        self._unsupported()
        self.logit_bias_ids()
        # Names, duplicates, schemas and tool_choice against tools (raise with the field).
        self.tool_specs()
        self.tool_choice_value()
        self.output_constraint()
        return self

    def _unsupported(self) -> None:
        if self.functions is not None or self.function_call is not None:
            raise InvalidRequest(
                "functions and function_call are OpenAI's deprecated form of tools; send "
                'tools: [{"type": "function", "function": {...}}] and tool_choice instead',
                param="functions" if self.functions is not None else "function_call",
            )
        if self.audio is not None or "audio" in (self.modalities or []):
            raise InvalidRequest(
                "audio output is not supported: this gateway's models answer in text "
                '(send modalities: ["text"] or leave it out)',
                param="audio" if self.audio is not None else "modalities",
            )
        if self.web_search_options is not None:
            raise InvalidRequest(
                "web_search_options: this gateway runs no built-in web search; give the "
                "model a search function in tools, or the documents in ponder.documents",
                param="web_search_options",
            )

    def logit_bias_ids(self) -> dict[int, float]:
        """``logit_bias`` with integer token ids (a bad id or bias raises a 400)."""
        out: dict[int, float] = {}
        for key, bias in (self.logit_bias or {}).items():
            if not key.isdigit():
                raise InvalidRequest(
                    f"logit_bias: keys are token ids, got {key!r}", param="logit_bias"
                )
            if isinstance(bias, bool) or not -100 <= bias <= 100:
                raise InvalidRequest(
                    f"logit_bias[{key!r}]: a bias is in [-100, 100], got {bias!r}",
                    param="logit_bias",
                )
            out[int(key)] = float(bias)
        return out

    def tool_specs(self) -> list[ToolSpec]:
        """The functions the model may call (a malformed schema raises a 400)."""
        from ponder.tools import tools_from_openai

        if not self.tools:
            return []
        return tools_from_openai([t.model_dump(exclude_none=True) for t in self.tools])

    def tool_choice_value(self) -> ToolChoice:
        """``auto`` / ``none`` / ``required`` / a function name (``auto`` when unset)."""
        from ponder.tools import tool_choice_from_openai

        choice = self.tool_choice
        raw = choice.model_dump() if isinstance(choice, NamedToolChoice) else choice
        return tool_choice_from_openai(raw, self.tool_specs())

    def output_constraint(self) -> OutputConstraint | None:
        """What ``response_format`` requires of the answer (``None`` for plain text)."""
        from ponder.structured import constraint_from_response_format

        if self.response_format is None:
            return None
        return constraint_from_response_format(
            self.response_format.model_dump(by_alias=True, exclude_none=True)
        )

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, v: Any) -> Any:
        # A before-validator instead of ``str | list[str]`` so a wrong type gets
        # one readable message rather than one per union member.
        if v is None:
            return None
        if isinstance(v, str):
            return [v]
        if isinstance(v, list) and all(isinstance(s, str) for s in v):
            return v
        raise ValueError("must be a string or a list of strings")

    @field_validator("ponder", mode="before")
    @classmethod
    def _ponder_null(cls, v: Any) -> Any:
        return {} if v is None else v


# --------------------------------------------------------------------------- responses


def _without_unset(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``data`` without those optional ``keys`` that are None: OpenAI leaves them out."""
    for key in keys:
        if data.get(key) is None:
            data.pop(key, None)
    return data


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    # None when the answer is only tool calls (as OpenAI sends it).
    content: str | None
    # Present only when the caller asked for it and may see it.
    reasoning_content: str | None = None
    # Why the answer was withheld (finish_reason "content_filter"), as in OpenAI.
    refusal: str | None = None
    tool_calls: list[WireToolCall] | None = None

    @model_serializer(mode="wrap")
    def _drop_hidden(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_unset(handler(self), ("reasoning_content", "refusal", "tool_calls"))


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: OpenAIFinishReason
    logprobs: ChoiceLogprobs | None = None
    # vLLM's extension: the stop string that ended the answer (None: end of turn,
    # length or a tool call; then left out, keeping OpenAI's shape). The Anthropic
    # surface reports it as stop_sequence.
    stop_reason: str | None = None

    @model_serializer(mode="wrap")
    def _drop_unset_stop(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_unset(handler(self), ("stop_reason",))


class ContinuedJob(BaseModel):
    """The async job running a request's full plan after its fast interactive answer."""

    id: str
    url: str
    strategy: str
    thinking_budget: int | None = None


class PonderInfo(BaseModel):
    """What ponder did for this request (an extension clients may ignore)."""

    strategy: str
    task_class: str = "general"
    params: dict[str, Any] = Field(default_factory=dict)
    budget: int | None = None
    thinking_budget: int | None = None
    truncated: bool = False
    stop_reason: str | None = None
    calls: int = 0
    latency_s: float = 0.0
    n_candidates: int = 0
    # Priced from the server's price table (0 when no price is configured).
    cost_usd: float | None = None
    # The model tier that ran the request; per tier usage and cost when the strategy
    # also called other tiers (a cascade escalating to a stronger one).
    tier: str | None = None
    tier_usage: dict[str, Any] | None = None
    # An interactive answer whose full plan continues as an async job (GET job.url).
    job: ContinuedJob | None = None
    # The strategy's search tree (text, scores, tokens, chosen path); only for
    # callers who asked for reasoning and may see it.
    tree: dict[str, Any] | None = None
    # The chosen answer's check: {"verdict": pass|fail|unknown, "verifier": name}.
    verification: dict[str, Any] | None = None


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[Choice]
    # Built by ``ponder.types.Usage.to_openai`` (completion tokens = reasoning + output).
    usage: dict[str, Any]
    ponder: PonderInfo


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    refusal: str | None = None
    tool_calls: list[ChunkToolCall] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta = Field(default_factory=ChunkDelta)
    finish_reason: OpenAIFinishReason | None = None
    logprobs: ChoiceLogprobs | None = None
    stop_reason: str | None = None  # as Choice.stop_reason, on the finishing chunk


class StreamProgress(BaseModel):
    """How far a multi-sample strategy has got (streamed before its answer)."""

    # "started", "sampling" (a generation call finished), a step event
    # ("beam_step", "rung", "vote"...), "chosen", or "running" (a heartbeat).
    phase: str
    samples: int = 0
    samples_planned: int | None = None
    steps: int = 0
    steps_planned: int | None = None
    calls: int = 0
    # Generated tokens (reasoning + output) so far, and the request's token budget.
    tokens: int = 0
    budget: int | None = None
    elapsed_s: float = 0.0


class PonderProgress(BaseModel):
    """The ``ponder`` object of a progress chunk (its choice has an empty delta)."""

    progress: StreamProgress


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed completion (serialize with ``exclude_none``)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: dict[str, Any] | None = None
    ponder: PonderInfo | PonderProgress | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "ponder"
    # The tier behind this id: {"tier", "model", "default"}.
    ponder: dict[str, Any] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --------------------------------------------------------------------------- admin


class KeyCreate(BaseModel):
    """``POST /v1/admin/keys``."""

    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1, max_length=200)
    team: str | None = Field(default=None, max_length=200)
    scopes: list[Literal["reasoning", "strategies", "admin"]] = Field(default_factory=list)
    name: str = Field(default="", max_length=200)


class QuotaSet(BaseModel):
    """``PUT /v1/admin/quotas``: ``limit: null`` removes the limit."""

    model_config = ConfigDict(extra="forbid")

    scope: Literal["key", "user", "team", "session"]
    subject: str = Field(min_length=1, max_length=200)
    metric: Literal["requests", "tokens", "reasoning_tokens", "cost"]
    window: Literal["minute", "day", "month", "request"]
    limit: int | None = Field(ge=0, le=MAX_QUOTA_LIMIT, strict=True)


# --------------------------------------------------------------------------- results


@dataclass
class ErrorResult:
    """An error as a value: HTTP status and OpenAI error body."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamResult:
    """A started stream: server-sent event strings and the headers known up front."""

    events: AsyncIterator[str]
    headers: dict[str, str] = field(default_factory=dict)


def error_result(exc: PonderError) -> ErrorResult:
    return ErrorResult(status=exc.status, body=exc.to_openai(), headers=exc.headers())


def internal_error(exc: BaseException) -> ErrorResult:
    """A 500 error value for an unexpected exception (logged with its traceback)."""
    logger.exception("unexpected error while handling a request")
    detail = f"{type(exc).__name__}: {exc}"[:300]
    return ErrorResult(
        status=500,
        body=openai_error_body(
            f"internal error while running the request ({detail}); "
            "the server is still up: retry, and report it if it persists",
            type="server_error",
            code="internal_error",
        ),
    )
