"""OpenAI's Responses API (``POST /v1/responses``) over the chat completion gateway.

- :func:`parse_responses_request` + :func:`to_chat_request`: ``input`` (a string
  or items: messages, ``function_call``, ``function_call_output``),
  ``instructions``, ``reasoning: {effort, summary}``, flat function ``tools``,
  ``text.format`` and the conversation of ``previous_response_id`` (looked up
  by the caller, see :func:`stored_conversation`) -> :class:`ChatCompletionRequest`;
- :func:`from_chat_completion`: the completion -> a ``Response`` (reasoning
  item with a summary when reasoning was returned, message item, function
  calls, usage with ``output_tokens_details.reasoning_tokens``);
- :class:`ResponsesStream`: the chunk stream -> ``response.created``,
  ``response.output_item.added``, ``response.reasoning_summary_text.delta``,
  ``response.output_text.delta``, ``response.function_call_arguments.delta``,
  ... ``response.completed``;
- :func:`error_body`: OpenAI's error body (the same as the chat surface's).

The reasoning "summary" is the model's reasoning text itself: ponder has no
summarizer, and it is shown under the same rule as ``reasoning_content``.
Token logprobs come with ``top_logprobs`` or ``include:
["message.output_text.logprobs"]`` (not streamed). Ignored on purpose: ``store`` (a
response is always kept for ``previous_response_id``), other ``include`` values,
``truncation``, ``service_tier``, ``background``; a 400: built-in tools other than
functions, and ``conversation`` (no Conversations API objects here).
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ponder.errors import InvalidRequest, PonderError
from ponder.server.parsing import parse_model
from ponder.server.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    PonderOptions,
    ReasoningEffort,
)

__all__ = [
    "ResponsesRequest",
    "ResponsesStream",
    "error_body",
    "from_chat_completion",
    "parse_responses_request",
    "response_id",
    "sse",
    "stored_conversation",
    "to_chat_request",
]

_UNSUPPORTED_PARTS = {"input_image": "images", "input_file": "files", "input_audio": "audio"}


def response_id() -> str:
    return f"resp_{secrets.token_hex(12)}"


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# --------------------------------------------------------------------------- request


class _Reasoning(BaseModel):
    model_config = ConfigDict(extra="ignore")

    effort: ReasoningEffort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class _Format(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class _Text(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: _Format | None = None


class ResponsesRequest(BaseModel):
    """``POST /v1/responses`` as the ``openai`` SDK sends it."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    reasoning: _Reasoning | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    text: _Text | None = None
    previous_response_id: str | None = Field(default=None, max_length=200)
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    user: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    include: list[str] | None = None
    # The Conversations API's server-side state: not kept here (see _no_conversation).
    conversation: Any = None
    ponder: PonderOptions | None = None

    @field_validator("conversation")
    @classmethod
    def _no_conversation(cls, v: Any) -> Any:
        if v is not None:
            raise InvalidRequest(
                "conversation: this gateway keeps no Conversations API objects; continue a "
                "conversation with previous_response_id, or send its turns in input",
                param="conversation",
            )
        return v

    def wants_logprobs(self) -> bool:
        """Token logprobs on the output text: ``top_logprobs`` or OpenAI's include flag."""
        return self.top_logprobs is not None or "message.output_text.logprobs" in (
            self.include or []
        )


def parse_responses_request(body: Any) -> ResponsesRequest:
    """Validate a decoded body; a bad one raises :class:`InvalidRequest` naming the field."""
    return parse_model(ResponsesRequest, body)


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string or a list of content parts", param=where)
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _UNSUPPORTED_PARTS:
            raise InvalidRequest(
                f"{where}[{i}] is {kind!r}: {_UNSUPPORTED_PARTS[kind]} are not supported "
                "(this gateway's models read text); send input_text parts",
                param=f"{where}[{i}]",
            )
        if kind not in ("input_text", "output_text", "text") or not isinstance(
            part.get("text"), str
        ):
            raise InvalidRequest(f"{where}[{i}] must be an input_text part", param=f"{where}[{i}]")
        texts.append(part["text"])
    return "\n".join(texts)


def _input_messages(items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses input items as chat messages (calls join the assistant turn before them)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequest(
                    f"{where}.role must be user, assistant, system or developer",
                    param=f"{where}.role",
                )
            out.append(
                {
                    "role": role,
                    "content": _content_text(item.get("content", ""), f"{where}.content"),
                }
            )
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant":
                last["tool_calls"] = [call]
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output", "")
            text = output if isinstance(output, str) else _content_text(output, f"{where}.output")
            out.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
        elif kind == "reasoning":
            continue  # earlier reasoning is not shown to the model again
        else:
            raise InvalidRequest(
                f"{where} has type {kind!r}; input items may be messages, function_call and "
                "function_call_output",
                param=f"{where}.type",
            )
    return out


def _chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, t in enumerate(tools):
        if t.get("type") != "function":
            raise InvalidRequest(
                f"tools[{i}] has type {t.get('type')!r}; this gateway runs function tools only",
                param=f"tools[{i}].type",
            )
        fn = {
            k: t[k] for k in ("name", "description", "parameters", "strict") if t.get(k) is not None
        }
        out.append({"type": "function", "function": fn})
    return out


def _chat_tool_choice(choice: str | dict[str, Any]) -> Any:
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise InvalidRequest(
                'tool_choice must be "auto", "none", "required" or {"type": "function", "name": ...}',
                param="tool_choice",
            )
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def stored_conversation(
    chat: ChatCompletionRequest, completion: ChatCompletion
) -> list[dict[str, Any]]:
    """What to keep under a response's id: its conversation including the answer.

    A later request with ``previous_response_id`` passes this back to
    :func:`to_chat_request` as ``history``. Instructions are not kept (as in
    OpenAI, they apply to one response only).
    """
    messages = [
        m.model_dump(exclude_none=True)
        for m in chat.messages
        if m.role not in ("system", "developer")
    ]
    message = completion.choices[0].message
    answer: dict[str, Any] = {"role": "assistant", "content": message.content}
    if message.tool_calls:
        answer["tool_calls"] = [c.model_dump() for c in message.tool_calls]
    return [*messages, answer]


def to_chat_request(
    req: ResponsesRequest, *, history: Sequence[Mapping[str, Any]] | None = None
) -> ChatCompletionRequest:
    """The chat request that runs this Responses request on the governed path.

    ``history`` is the :func:`stored_conversation` of ``previous_response_id``;
    the caller looks it up (and answers 404 when it is unknown or not the caller's).
    """
    if req.previous_response_id is not None and history is None:
        raise InvalidRequest(
            f"previous_response_id {req.previous_response_id!r} was given but its conversation "
            "was not loaded",
            param="previous_response_id",
        )
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    messages += [dict(m) for m in history or []]
    messages += _input_messages(req.input)
    body: dict[str, Any] = {
        "model": req.model,
        "messages": messages,
        "max_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "stream": req.stream,
        "stream_options": {"include_usage": True} if req.stream else None,
        "reasoning_effort": req.reasoning.effort if req.reasoning else None,
        "parallel_tool_calls": req.parallel_tool_calls,
        "user": req.user,
        "metadata": req.metadata,
        "ponder": req.ponder.model_dump(exclude_defaults=True) if req.ponder else None,
    }
    if req.wants_logprobs():
        body["logprobs"] = True
        body["top_logprobs"] = req.top_logprobs or None
    if req.reasoning is not None and req.reasoning.summary is not None:
        # A summary is the reasoning shown: asked for the same way as on the chat surface
        # (and still only given to callers with the reasoning scope).
        ponder = dict(body["ponder"] or {})
        ponder["include_reasoning"] = True
        body["ponder"] = ponder
    if req.tools:
        body["tools"] = _chat_tools(req.tools)
    if req.tool_choice is not None:
        body["tool_choice"] = _chat_tool_choice(req.tool_choice)
    fmt = req.text.format if req.text else None
    if fmt is not None and fmt.type != "text":
        if fmt.type == "json_object":
            body["response_format"] = {"type": "json_object"}
        else:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": fmt.name or "output",
                    "schema": fmt.json_schema or {},
                    "strict": fmt.strict,
                },
            }
    return parse_model(ChatCompletionRequest, {k: v for k, v in body.items() if v is not None})


# --------------------------------------------------------------------------- response


def _usage(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    usage = usage or {}
    return {
        "input_tokens": int(usage.get("prompt_tokens", 0)),
        "input_tokens_details": {
            "cached_tokens": int(
                (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            ),
            # There is no prompt cache to write to (newer SDKs require the field).
            "cache_write_tokens": 0,
        },
        "output_tokens": int(usage.get("completion_tokens", 0)),
        "output_tokens_details": {
            "reasoning_tokens": int(
                (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
            )
        },
        "total_tokens": int(usage.get("total_tokens", 0)),
    }


def _envelope(req: ResponsesRequest, rid: str, model: str, created: int) -> dict[str, Any]:
    tool_choice: Any = req.tool_choice if req.tool_choice is not None else "auto"
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "model": model,
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "metadata": req.metadata or {},
        "output": [],
        "parallel_tool_calls": req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "reasoning": req.reasoning.model_dump() if req.reasoning else None,
        "temperature": req.temperature,
        "text": {"format": req.text.format.model_dump(by_alias=True, exclude_none=True)}
        if req.text and req.text.format
        else {"format": {"type": "text"}},
        "tool_choice": tool_choice,
        "tools": req.tools or [],
        "top_p": req.top_p,
        "max_output_tokens": req.max_output_tokens,
        "usage": None,
    }


def _reasoning_item(text: str, item_id: str | None = None) -> dict[str, Any]:
    return {
        "id": item_id or _item_id("rs"),
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}],
    }


def _message_item(
    text: str,
    item_id: str | None = None,
    status: str = "completed",
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": []}
    if logprobs is not None:
        part["logprobs"] = logprobs
    return {
        "id": item_id or _item_id("msg"),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [part],
    }


def _logprobs(choice: Choice) -> list[dict[str, Any]] | None:
    """The chat choice's token logprobs in the Responses API's shape."""
    content = choice.logprobs.content if choice.logprobs is not None else None
    # The chat entries (token, logprob, bytes, top_logprobs) are the Responses shape too.
    return None if content is None else [t.model_dump(mode="json") for t in content]


def _call_item(
    call_id: str, name: str, arguments: str, item_id: str | None = None
) -> dict[str, Any]:
    return {
        "id": item_id or _item_id("fc"),
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }


def _status(finish: str | None) -> tuple[str, dict[str, str] | None]:
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def from_chat_completion(
    completion: ChatCompletion, req: ResponsesRequest, *, id: str | None = None
) -> dict[str, Any]:
    """A ``Response`` for a finished chat completion."""
    choice = completion.choices[0]
    msg = choice.message
    output: list[dict[str, Any]] = []
    if msg.reasoning_content:
        output.append(_reasoning_item(msg.reasoning_content))
    if msg.content or msg.refusal:
        logprobs = _logprobs(choice) if req.wants_logprobs() else None
        output.append(_message_item(msg.content or msg.refusal or "", logprobs=logprobs))
    for call in msg.tool_calls or []:
        output.append(_call_item(call.id, call.function.name, call.function.arguments))
    out = _envelope(req, id or response_id(), completion.model, completion.created)
    status, incomplete = _status(choice.finish_reason)
    out.update(
        status=status, incomplete_details=incomplete, output=output, usage=_usage(completion.usage)
    )
    return out


def error_body(exc: PonderError) -> tuple[int, dict[str, Any]]:
    """(HTTP status, OpenAI error body): the Responses API errors like chat completions."""
    return exc.status, exc.to_openai()


# --------------------------------------------------------------------------- streaming


def sse(event: str, data: Mapping[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class ResponsesStream:
    """Translates ``chat.completion.chunk`` dicts into Responses stream events.

    Items are opened as their first delta arrives (reasoning, then the message,
    then each function call) and closed when the next one opens or at the end.
    """

    def __init__(self, req: ResponsesRequest, *, model: str, id: str | None = None) -> None:
        self.response = _envelope(req, id or response_id(), model, int(time.time()))
        self._seq = 0
        self._started = False
        self._open: dict[str, Any] | None = None  # the output item being streamed
        self._text = ""
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None

    def _event(self, kind: str, **data: Any) -> tuple[str, dict[str, Any]]:
        event = {"type": kind, "sequence_number": self._seq, **data}
        self._seq += 1
        return kind, event

    def _start(self) -> Iterator[tuple[str, dict[str, Any]]]:
        if not self._started:
            self._started = True
            # Snapshots: the events may be serialized after later items are added.
            yield self._event("response.created", response=copy.deepcopy(self.response))
            yield self._event("response.in_progress", response=copy.deepcopy(self.response))

    @property
    def _index(self) -> int:
        return len(self.response["output"])

    def _close(self) -> Iterator[tuple[str, dict[str, Any]]]:
        item = self._open
        if item is None:
            return
        self._open = None
        at = {"item_id": item["id"], "output_index": self._index}
        if item["type"] == "reasoning":
            part: dict[str, Any] = {"type": "summary_text", "text": self._text}
            yield self._event(
                "response.reasoning_summary_text.done", **at, summary_index=0, text=self._text
            )
            yield self._event(
                "response.reasoning_summary_part.done", **at, summary_index=0, part=part
            )
            item = _reasoning_item(self._text, item["id"])
        elif item["type"] == "message":
            part = {"type": "output_text", "text": self._text, "annotations": []}
            yield self._event(
                "response.output_text.done", **at, content_index=0, text=self._text, logprobs=[]
            )
            yield self._event("response.content_part.done", **at, content_index=0, part=part)
            item = _message_item(self._text, item["id"])
        else:
            yield self._event("response.function_call_arguments.done", **at, arguments=self._text)
            item = _call_item(item["call_id"], item["name"], self._text, item["id"])
        yield self._event("response.output_item.done", output_index=self._index, item=item)
        self.response["output"].append(item)

    def _begin(self, item: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from self._close()
        self._open = item
        self._text = ""
        yield self._event("response.output_item.added", output_index=self._index, item=item)
        at = {"item_id": item["id"], "output_index": self._index}
        if item["type"] == "reasoning":
            yield self._event(
                "response.reasoning_summary_part.added",
                **at,
                summary_index=0,
                part={"type": "summary_text", "text": ""},
            )
        elif item["type"] == "message":
            yield self._event(
                "response.content_part.added",
                **at,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": []},
            )

    def feed(self, chunk: Mapping[str, Any] | Any) -> Iterator[tuple[str, dict[str, Any]]]:
        if not isinstance(chunk, Mapping):
            chunk = chunk.model_dump(exclude_none=True)
        yield from self._start()
        if chunk.get("error"):
            error = chunk["error"]
            yield self._event(
                "error",
                code=error.get("code"),
                message=error.get("message"),
                param=error.get("param"),
            )
            return
        if chunk.get("usage"):
            self._usage = _usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                if self._open is None or self._open["type"] != "reasoning":
                    yield from self._begin(
                        {"id": _item_id("rs"), "type": "reasoning", "summary": []}
                    )
                self._text += delta["reasoning_content"]
                yield self._event(
                    "response.reasoning_summary_text.delta",
                    item_id=self._open["id"] if self._open else "",
                    output_index=self._index,
                    summary_index=0,
                    delta=delta["reasoning_content"],
                )
            text = delta.get("content") or delta.get("refusal")
            if text:
                if self._open is None or self._open["type"] != "message":
                    yield from self._begin(
                        {
                            "id": _item_id("msg"),
                            "type": "message",
                            "role": "assistant",
                            "status": "in_progress",
                            "content": [],
                        }
                    )
                self._text += text
                yield self._event(
                    "response.output_text.delta",
                    item_id=self._open["id"] if self._open else "",
                    output_index=self._index,
                    content_index=0,
                    delta=text,
                    logprobs=[],
                )
            for call in delta.get("tool_calls") or []:
                fn = call.get("function") or {}
                if call.get("id") is not None:
                    yield from self._begin(
                        {
                            "id": _item_id("fc"),
                            "type": "function_call",
                            "call_id": call["id"],
                            "name": fn.get("name"),
                            "arguments": "",
                            "status": "in_progress",
                        }
                    )
                if fn.get("arguments") and self._open is not None:
                    self._text += fn["arguments"]
                    yield self._event(
                        "response.function_call_arguments.delta",
                        item_id=self._open["id"],
                        output_index=self._index,
                        delta=fn["arguments"],
                    )
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]

    def finish(self) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from self._start()
        yield from self._close()
        status, incomplete = _status(self._finish)
        self.response.update(status=status, incomplete_details=incomplete, usage=self._usage)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        yield self._event(kind, response=copy.deepcopy(self.response))

    def error(self, exc: PonderError) -> tuple[str, dict[str, Any]]:
        """The ``error`` event for a failure after the stream started."""
        return self._event("error", code=exc.code, message=exc.message, param=exc.param)
