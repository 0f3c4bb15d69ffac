"""Anthropic's Messages API (``POST /v1/messages``) over the chat completion gateway.

- :func:`parse_messages_request` + :func:`to_chat_request`: an Anthropic request
  (system, content blocks, ``thinking``, ``tool_use`` / ``tool_result``,
  ``stop_sequences``, ``metadata``) -> :class:`ChatCompletionRequest`;
- :func:`from_chat_completion`: the completion -> an Anthropic ``Message``
  (thinking blocks only when the gateway returned reasoning, i.e. the caller
  asked for it and may see it);
- :class:`MessagesStream`: the ``chat.completion.chunk`` stream -> Anthropic's
  events (``message_start``, ``content_block_start/delta/stop`` with
  ``thinking_delta`` / ``text_delta`` / ``input_json_delta``, ``message_delta``
  with usage, ``message_stop``; progress chunks become ``ping``);
- :func:`error_body`: a :class:`PonderError` -> Anthropic's error shape;
  :func:`auth_headers`: ``x-api-key`` accepted as the gateway's bearer key.

Ignored on purpose: ``service_tier``, ``container``, ``mcp_servers``
and block ``cache_control`` (the embedded engine's prefix cache needs no hints).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ponder.errors import InvalidRequest, PonderError
from ponder.server.parsing import parse_model
from ponder.server.protocol import ChatCompletion, ChatCompletionRequest, PonderOptions

__all__ = [
    "MessagesRequest",
    "MessagesStream",
    "auth_headers",
    "error_body",
    "error_from_openai",
    "from_chat_completion",
    "parse_messages_request",
    "sse",
    "to_chat_request",
]

_UNSUPPORTED_BLOCKS = {
    "image": "images",
    "document": "PDF and image documents",
    "search_result": "search results",
}
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


# --------------------------------------------------------------------------- request


class _Thinking(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(default=None, ge=0, strict=True)


class _Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    # Server tools (web_search, bash...) have a type; custom tools have none or "custom".
    type: str | None = None


class _ToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class _Metadata(BaseModel):
    model_config = ConfigDict(extra="ignore")

    user_id: str | None = Field(default=None, max_length=256)


class MessagesRequest(BaseModel):
    """``POST /v1/messages`` as the ``anthropic`` SDK sends it."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int = Field(ge=1)
    messages: list[_Message] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    thinking: _Thinking | None = None
    tools: list[_Tool] | None = None
    tool_choice: _ToolChoice | None = None
    metadata: _Metadata | None = None
    # ponder's own extension, as on the chat surface.
    ponder: PonderOptions | None = None

    @field_validator("tools")
    @classmethod
    def _custom_tools_only(cls, v: list[_Tool] | None) -> list[_Tool] | None:
        for i, tool in enumerate(v or []):
            if tool.type not in (None, "custom"):
                raise ValueError(
                    f"tools[{i}] is the server tool {tool.type!r}, which this gateway does not "
                    "run; define it as a custom tool with an input_schema"
                )
        return v


def parse_messages_request(body: Any) -> MessagesRequest:
    """Validate a decoded body; a bad one raises :class:`InvalidRequest` naming the field."""
    return parse_model(MessagesRequest, body)


def _text_of(blocks: str | list[dict[str, Any]], where: str) -> str:
    """The text of a content that may only hold text blocks (system, tool results)."""
    if isinstance(blocks, str):
        return blocks
    texts = []
    for i, b in enumerate(blocks):
        kind = b.get("type")
        if kind in _UNSUPPORTED_BLOCKS:
            raise InvalidRequest(
                f"{where}[{i}] is a {kind} block: {_UNSUPPORTED_BLOCKS[kind]} are not supported "
                "(this gateway's models read text); send text blocks",
                param=f"{where}[{i}]",
            )
        if kind != "text" or not isinstance(b.get("text"), str):
            raise InvalidRequest(f"{where}[{i}] must be a text block", param=f"{where}[{i}]")
        texts.append(b["text"])
    return "\n".join(texts)


def _plain_document(block: dict[str, Any], where: str, number: int) -> dict[str, Any] | None:
    """A text document block as a ``ponder.documents`` entry; None for PDFs and images.

    Anthropic's plain-text sources: ``{"type": "text", "data": ...}`` and ``{"type":
    "content", "content": [text blocks]}``. They become untrusted reference data,
    delimited by the guardrails as documents sent to the chat surface are.
    """
    source = block.get("source")
    if not isinstance(source, dict):
        return None
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        text = source["data"]
    elif source.get("type") == "content" and source.get("content"):
        text = _text_of(source["content"], f"{where}.source.content")
    else:
        return None
    title = block.get("title") if isinstance(block.get("title"), str) else None
    context = block.get("context")
    if isinstance(context, str) and context:
        text = f"{context}\n\n{text}"
    return {"id": f"document-{number}", "title": title, "content": text}


def _chat_messages(req: MessagesRequest) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The chat messages, and the text documents the user messages carried."""
    out: list[dict[str, Any]] = []
    documents: list[dict[str, Any]] = []
    if req.system:
        out.append({"role": "system", "content": _text_of(req.system, "system")})
    for i, m in enumerate(req.messages):
        where = f"messages[{i}].content"
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
            continue
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for j, block in enumerate(m.content):
            kind = block.get("type")
            if kind == "text":
                texts.append(str(block.get("text", "")))
            elif kind in ("thinking", "redacted_thinking"):
                continue  # earlier thinking is not shown to the model again (as Anthropic does)
            elif kind == "tool_use" and m.role == "assistant":
                calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {
                            "name": block.get("name"),
                            "arguments": json.dumps(block.get("input", {})),
                        },
                    }
                )
            elif kind == "tool_result" and m.role == "user":
                content = block.get("content", "")
                text = _text_of(content, f"{where}[{j}].content") if content else ""
                if block.get("is_error"):
                    text = f"Error: {text}"
                out.append(
                    {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}
                )
            elif (
                kind == "document"
                and m.role == "user"
                and (doc := _plain_document(block, f"{where}[{j}]", len(documents) + 1))
            ):
                documents.append(doc)
            elif kind in _UNSUPPORTED_BLOCKS:
                _text_of([block], where)  # raises with the reason
            else:
                raise InvalidRequest(
                    f"{where}[{j}] has type {kind!r}, which a {m.role} message cannot carry here",
                    param=f"{where}[{j}]",
                )
        if texts or calls:
            message: dict[str, Any] = {"role": m.role, "content": "\n".join(texts) or None}
            if calls:
                message["tool_calls"] = calls
            out.append(message)
    return out, documents


def to_chat_request(req: MessagesRequest) -> ChatCompletionRequest:
    """The chat request that runs this Messages request on the governed path."""
    messages, documents = _chat_messages(req)
    body: dict[str, Any] = {
        "model": req.model,
        "messages": messages,
        "max_tokens": req.max_tokens,
        "stream": req.stream,
        # message_delta carries the usage: the chat stream must end with it.
        "stream_options": {"include_usage": True} if req.stream else None,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "stop": req.stop_sequences,
        "user": req.metadata.user_id if req.metadata else None,
        "ponder": req.ponder.model_dump(exclude_defaults=True) if req.ponder else None,
    }
    if documents:
        ponder = body["ponder"] or {}
        body["ponder"] = {**ponder, "documents": [*ponder.get("documents", []), *documents]}
    if req.thinking is not None and req.thinking.type != "adaptive":
        # "adaptive" leaves the thinking to the router, as a request that sets nothing.
        body["thinking"] = req.thinking.model_dump(exclude_none=True)
    if req.thinking is not None and req.thinking.type != "disabled":
        # Anthropic clients expect thinking blocks back; the gateway still returns them
        # only to callers with the reasoning scope (and allow_reasoning).
        body["ponder"] = {**(body["ponder"] or {}), "include_reasoning": True}
    if req.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.input_schema,
                },
            }
            for t in req.tools
        ]
    if req.tool_choice is not None:
        choice = req.tool_choice
        body["tool_choice"] = {
            "auto": "auto",
            "any": "required",
            "none": "none",
            "tool": {"type": "function", "function": {"name": choice.name}},
        }[choice.type]
        if choice.type == "tool" and not choice.name:
            raise InvalidRequest(
                'tool_choice {"type": "tool"} needs a name', param="tool_choice.name"
            )
        body["parallel_tool_calls"] = not choice.disable_parallel_tool_use
    return parse_model(ChatCompletionRequest, {k: v for k, v in body.items() if v is not None})


# --------------------------------------------------------------------------- response


def _usage(usage: Mapping[str, Any] | None) -> dict[str, int]:
    usage = usage or {}
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {
        "input_tokens": int(usage.get("prompt_tokens", 0)) - cached,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
        # Anthropic bills thinking as output: completion tokens = reasoning + visible.
        "output_tokens": int(usage.get("completion_tokens", 0)),
    }


def from_chat_completion(completion: ChatCompletion, *, model: str | None = None) -> dict[str, Any]:
    """An Anthropic ``Message`` for a finished chat completion."""
    choice = completion.choices[0]
    msg = choice.message
    content: list[dict[str, Any]] = []
    if msg.reasoning_content:
        # The gateway sets reasoning_content only for callers who asked and may see it.
        content.append({"type": "thinking", "thinking": msg.reasoning_content, "signature": ""})
    if msg.content:
        content.append({"type": "text", "text": msg.content})
    elif msg.refusal:
        content.append({"type": "text", "text": msg.refusal})
    for call in msg.tool_calls or []:
        try:
            arguments = json.loads(call.function.arguments)
        except json.JSONDecodeError:
            arguments = {"_raw": call.function.arguments}
        content.append(
            {"type": "tool_use", "id": call.id, "name": call.function.name, "input": arguments}
        )
    return {
        "id": completion.id.replace("chatcmpl-", "msg_", 1),
        "type": "message",
        "role": "assistant",
        "model": model or completion.model,
        "content": content,
        "stop_reason": "stop_sequence"
        if choice.stop_reason is not None
        else _STOP_REASONS.get(choice.finish_reason, "end_turn"),
        "stop_sequence": choice.stop_reason,
        "usage": _usage(completion.usage),
    }


def error_body(exc: PonderError) -> tuple[int, dict[str, Any]]:
    """(HTTP status, Anthropic error body) for a gateway error."""
    kind = _ERROR_TYPES.get(
        exc.status, "api_error" if exc.status >= 500 else "invalid_request_error"
    )
    return exc.status, {"type": "error", "error": {"type": kind, "message": exc.message}}


def error_from_openai(status: int, body: Mapping[str, Any]) -> dict[str, Any]:
    """Anthropic's error body for an error the gateway already shaped the OpenAI way."""
    error = body.get("error") or {}
    message = error.get("message") if isinstance(error, Mapping) else None
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message or "request failed"}}


def auth_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``x-api-key`` (how the anthropic SDK sends keys) as the gateway's bearer key."""
    out = {k.lower(): v for k, v in headers.items()}
    key = out.get("x-api-key")
    if key and "authorization" not in out:
        out["authorization"] = f"Bearer {key}"
    return out


# --------------------------------------------------------------------------- streaming


def sse(event: str, data: Mapping[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class MessagesStream:
    """Translates ``chat.completion.chunk`` dicts into Anthropic stream events.

    Feed every chunk the gateway produces (``feed``), then ``finish``; each
    yields ``(event, data)`` pairs (use :func:`sse` to write them).
    """

    def __init__(self, *, model: str, id: str | None = None) -> None:
        self.id = id or message_id()
        self.model = model
        self._started = False
        self._block: str | None = None  # "thinking", "text" or "tool_use"
        self._index = -1
        self._tool_blocks: dict[int, int] = {}  # chat tool-call index -> block index
        self._stop_reason = "end_turn"
        self._stop_sequence: str | None = None
        self._usage: dict[str, int] | None = None

    def _start(self) -> Iterator[tuple[str, dict[str, Any]]]:
        if not self._started:
            self._started = True
            yield (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": self.id,
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": 0, "output_tokens": 0},
                    },
                },
            )

    def _close(self) -> Iterator[tuple[str, dict[str, Any]]]:
        if self._block is not None:
            if self._block == "thinking":
                yield (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": self._index,
                        "delta": {"type": "signature_delta", "signature": ""},
                    },
                )
            yield "content_block_stop", {"type": "content_block_stop", "index": self._index}
            self._block = None

    def _open(self, kind: str, block: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from self._close()
        self._index += 1
        self._block = kind
        yield (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": self._index,
                "content_block": block,
            },
        )

    def _delta(self, delta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "content_block_delta", {
            "type": "content_block_delta",
            "index": self._index,
            "delta": delta,
        }

    def feed(self, chunk: Mapping[str, Any] | Any) -> Iterator[tuple[str, dict[str, Any]]]:
        if not isinstance(chunk, Mapping):
            chunk = chunk.model_dump(exclude_none=True)
        yield from self._start()
        if chunk.get("error"):
            # The gateway failed mid-stream: Anthropic's error event ends the stream.
            error = chunk["error"]
            status = 500 if error.get("type") in ("server_error", "upstream_error") else 400
            yield "error", error_from_openai(status, chunk)
            return
        if chunk.get("usage"):
            self._usage = _usage(chunk["usage"])
        choices = chunk.get("choices") or []
        if not choices and (chunk.get("ponder") or {}).get("progress"):
            yield "ping", {"type": "ping"}
        for choice in choices:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                if self._block != "thinking":
                    yield from self._open(
                        "thinking", {"type": "thinking", "thinking": "", "signature": ""}
                    )
                yield self._delta(
                    {"type": "thinking_delta", "thinking": delta["reasoning_content"]}
                )
            text = delta.get("content") or delta.get("refusal")
            if text:
                if self._block != "text":
                    yield from self._open("text", {"type": "text", "text": ""})
                yield self._delta({"type": "text_delta", "text": text})
            for call in delta.get("tool_calls") or []:
                fn = call.get("function") or {}
                if call.get("id") is not None:
                    yield from self._open(
                        "tool_use",
                        {"type": "tool_use", "id": call["id"], "name": fn.get("name"), "input": {}},
                    )
                    self._tool_blocks[call["index"]] = self._index
                if fn.get("arguments"):
                    yield self._delta({"type": "input_json_delta", "partial_json": fn["arguments"]})
            if choice.get("finish_reason"):
                self._stop_reason = _STOP_REASONS.get(choice["finish_reason"], "end_turn")
            if choice.get("stop_reason"):
                self._stop_reason, self._stop_sequence = "stop_sequence", choice["stop_reason"]

    def finish(self) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from self._start()
        yield from self._close()
        usage = self._usage or {"input_tokens": 0, "output_tokens": 0}
        yield (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": self._stop_reason, "stop_sequence": self._stop_sequence},
                "usage": usage,
            },
        )
        yield "message_stop", {"type": "message_stop"}

    @staticmethod
    def error(exc: PonderError) -> tuple[str, dict[str, Any]]:
        """The ``error`` event for a failure after the stream started."""
        return "error", error_body(exc)[1]
