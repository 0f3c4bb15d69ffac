"""Tool calls out of finished or streamed model text (Hermes ``<tool_call>`` blocks)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ponder.text import holdback
from ponder.tools.wire import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, new_call_id
from ponder.types import (
    ToolCall,
    ToolSpec,
)

__all__ = ["ParsedToolCalls", "ToolCallStreamParser", "bare_tool_call", "parse_tool_calls"]

_BLOCK = re.compile(
    re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|$)", re.S
)

# --------------------------------------------------------------------------- parsing


@dataclass
class ParsedToolCalls:
    """What a generation said: its prose, its calls, and blocks that failed to parse."""

    content: str
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _call_from_json(body: str, tools: Sequence[ToolSpec] | None) -> ToolCall:
    body = body.strip()
    try:
        value, end = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError as e:
        raise ValueError(f"the call is not valid JSON ({e.msg})") from e
    if body[end:].strip():
        raise ValueError("the call has text after its JSON object")
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise ValueError('the call must be a JSON object with a "name"')
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        # Some models write the arguments as a JSON string, as the OpenAI wire does.
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as e:
            raise ValueError("the call's arguments are not valid JSON") from e
    if not isinstance(arguments, dict):
        raise ValueError("the call's arguments must be a JSON object")
    if tools is not None and value["name"] not in {t.name for t in tools}:
        raise ValueError(f"the model called {value['name']!r}, which is not in tools")
    return ToolCall(id=new_call_id(), name=value["name"], arguments=json.dumps(arguments))


def parse_tool_calls(text: str, tools: Sequence[ToolSpec] | None = None) -> ParsedToolCalls:
    """Split generated text into prose and ``<tool_call>`` calls.

    An unterminated last block (the model ran out of tokens) is still parsed. A
    block that is not a well-formed call stays in the content and is reported in
    ``errors``, so nothing the model wrote is lost. With ``tools``, a call to an
    unknown function is such an error.
    """
    calls: list[ToolCall] = []
    errors: list[str] = []
    prose: list[str] = []
    last = 0
    for match in _BLOCK.finditer(text):
        try:
            call = _call_from_json(match.group(1), tools)
        except ValueError as e:
            errors.append(str(e))
            continue
        prose.append(text[last : match.start()])
        last = match.end()
        calls.append(call)
    prose.append(text[last:])
    if not calls and not errors and tools:
        bare = bare_tool_call(text, tools)
        if bare is not None:
            return ParsedToolCalls(content="", calls=[bare])
    content = "".join(prose).strip() if calls else text
    return ParsedToolCalls(content=content, calls=calls, errors=errors)


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def bare_tool_call(text: str, tools: Sequence[ToolSpec]) -> ToolCall | None:
    """A call written without the ``<tool_call>`` tags (small models often do this).

    Only a whole answer that is one JSON object (optionally in a code fence) with
    a ``name`` among ``tools`` and object ``arguments`` counts, so an ordinary
    JSON answer is not mistaken for a call.
    """
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    if not body.startswith("{"):
        return None
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or set(value) != {"name", "arguments"}:
        return None
    try:
        return _call_from_json(body, tools)
    except ValueError:
        return None


class ToolCallStreamParser:
    """Streams prose through and turns ``<tool_call>`` blocks into calls as they close.

    ``feed`` returns the prose that is certainly not part of a tool call (text
    that might be the start of ``<tool_call>`` is held back) and the calls that
    completed; ``finish`` flushes what is left. With ``tools``, an answer that
    starts like a bare JSON call (``{`` or a code fence) is held until the end
    and checked with :func:`bare_tool_call`.
    """

    def __init__(self, tools: Sequence[ToolSpec] | None = None) -> None:
        self._tools = tools
        self._buffer = ""
        self._in_call = False
        self._emitted = False
        self._holding_bare = False
        self.calls: list[ToolCall] = []
        self.errors: list[str] = []

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        self._buffer += text
        if self._tools and not self._emitted and not self._in_call:
            head = self._buffer.lstrip()
            if not head:
                return "", []
            if head[0] == "{" or head.startswith("`"):
                self._holding_bare = True
                return "", []
        prose, done = self._feed()
        self._emitted = self._emitted or bool(prose) or bool(done)
        return prose, done

    def _feed(self) -> tuple[str, list[ToolCall]]:
        prose: list[str] = []
        done: list[ToolCall] = []
        while True:
            if not self._in_call:
                start = self._buffer.find(TOOL_CALL_OPEN)
                if start < 0:
                    keep = holdback(self._buffer, [TOOL_CALL_OPEN])
                    prose.append(self._buffer[: len(self._buffer) - keep])
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    break
                prose.append(self._buffer[:start])
                self._buffer = self._buffer[start + len(TOOL_CALL_OPEN) :]
                self._in_call = True
            end = self._buffer.find(TOOL_CALL_CLOSE)
            if end < 0:
                break
            body, self._buffer = self._buffer[:end], self._buffer[end + len(TOOL_CALL_CLOSE) :]
            self._in_call = False
            call_or_text = self._close(body)
            if isinstance(call_or_text, ToolCall):
                done.append(call_or_text)
            else:
                prose.append(call_or_text)
        return "".join(prose), done

    def finish(self) -> tuple[str, list[ToolCall]]:
        if self._holding_bare and self._tools:
            self._holding_bare = False
            if TOOL_CALL_OPEN not in self._buffer:
                bare = bare_tool_call(self._buffer, self._tools)
                if bare is not None:
                    self._buffer = ""
                    self.calls.append(bare)
                    return "", [bare]
            prose, done = self._feed()
            rest, more = self._finish_rest()
            return prose + rest, done + more
        return self._finish_rest()

    def _finish_rest(self) -> tuple[str, list[ToolCall]]:
        rest, self._buffer = self._buffer, ""
        if not self._in_call:
            return rest, []
        self._in_call = False
        call_or_text = self._close(rest)
        if isinstance(call_or_text, ToolCall):
            return "", [call_or_text]
        return call_or_text, []

    def _close(self, body: str) -> ToolCall | str:
        try:
            call = _call_from_json(body, self._tools)
        except ValueError as e:
            self.errors.append(str(e))
            return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"
        self.calls.append(call)
        return call
