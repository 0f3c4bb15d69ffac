"""Tool calling: OpenAI tool specs in, Hermes-style prompts, parsed and validated calls out.

The embedded models (Qwen2.5 and most open chat models since) call tools the
Hermes way: the chat template lists the functions inside ``<tools>``, and the
model answers with one ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
block per call. This module is the engine-independent half of that:

- :func:`tools_from_openai` / :func:`tool_choice_from_openai`: the wire format
  checked into :class:`~ponder.types.ToolSpec` (a bad one is a 400);
- :func:`template_messages` / :func:`template_tools`: what a Jinja chat template
  expects (``tools``, assistant ``tool_calls``, ``tool`` messages), and
  :func:`hermes_messages` for templates and upstreams without tool support;
- :func:`parse_tool_calls` and :class:`ToolCallStreamParser`: calls out of
  finished or streamed text;
- :func:`argument_errors`: the arguments against the function's JSON Schema;
- :func:`tool_call_constraint`: a grammar that makes a required call
  well-formed and schema-valid token by token;
- :func:`tool_call_key`: what multi-sample strategies vote on.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ponder.errors import InvalidRequest
from ponder.types import (
    Generation,
    GenRequest,
    Message,
    OutputConstraint,
    ToolCall,
    ToolChoice,
    ToolSpec,
)

__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "ParsedToolCalls",
    "ToolCallStreamParser",
    "argument_errors",
    "bare_tool_call",
    "call_errors",
    "generation_is_valid",
    "generation_vote_key",
    "hermes_messages",
    "hermes_system_prompt",
    "new_call_id",
    "parse_tool_calls",
    "prompt_tools",
    "template_messages",
    "template_tools",
    "tool_call_constraint",
    "tool_call_key",
    "tool_choice_from_openai",
    "tools_for_prompt",
    "tools_from_openai",
    "with_tool_calls",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_BLOCK = re.compile(
    re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|$)", re.S
)


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


# --------------------------------------------------------------------------- wire format


def tools_from_openai(tools: Any, *, param: str = "tools") -> list[ToolSpec]:
    """``[{"type": "function", "function": {"name", "description", "parameters", "strict"}}]``."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest(f"{param} must be a list of tools", param=param)
    specs: list[ToolSpec] = []
    for i, tool in enumerate(tools):
        where = f"{param}[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            raise InvalidRequest(
                f"{where} has type {kind!r}; only function tools "
                '({"type": "function", "function": {...}}) are supported',
                param=where,
            )
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise InvalidRequest(f"{where}.function must be an object with a 'name'", param=where)
        specs.append(_spec(fn, where=f"{where}.function"))
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidRequest(f"{param} names {duplicates[0]!r} more than once", param=param)
    return specs


def _spec(fn: dict[str, Any], *, where: str) -> ToolSpec:
    from pydantic import ValidationError

    from ponder.structured.formats import check_schema

    parameters = fn.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise InvalidRequest(f"{where}.parameters must be a JSON Schema object", param=where)
    check_schema(parameters, param=f"{where}.parameters")
    try:
        return ToolSpec(
            name=fn.get("name"),  # type: ignore[arg-type]  # pydantic reports a missing name
            description=fn.get("description") or "",
            parameters=parameters,
            strict=bool(fn.get("strict") or False),
        )
    except ValidationError as e:
        field_name = ".".join(str(p) for p in e.errors()[0]["loc"])
        raise InvalidRequest(
            f"{where}.{field_name}: {e.errors()[0]['msg']} (names are 1-64 letters, digits, "
            "'_', '.' or '-')",
            param=f"{where}.{field_name}",
        ) from e


def tool_choice_from_openai(
    choice: Any, tools: Sequence[ToolSpec], *, param: str = "tool_choice"
) -> ToolChoice:
    """``"auto"`` / ``"none"`` / ``"required"`` / ``{"type": "function", "function": {"name"}}``."""
    if choice is None:
        return "auto"
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else choice.get("name")
        if choice.get("type") not in ("function", "tool") or not isinstance(name, str):
            raise InvalidRequest(
                f'{param} must be "auto", "none", "required" or '
                '{"type": "function", "function": {"name": ...}}',
                param=param,
            )
        if name not in {t.name for t in tools}:
            raise InvalidRequest(f"{param} names {name!r}, which is not in tools", param=param)
        return name
    if choice not in ("auto", "none", "required"):
        raise InvalidRequest(
            f'{param} must be "auto", "none", "required" or a named function, not {choice!r}',
            param=param,
        )
    if choice == "required" and not tools:
        raise InvalidRequest(f'{param} is "required" but no tools were given', param=param)
    return str(choice)


def tools_for_prompt(tools: Sequence[ToolSpec], choice: ToolChoice) -> list[ToolSpec]:
    """The tools the model is shown: none for ``"none"``, only the named one when named."""
    if choice == "none":
        return []
    if choice not in ("auto", "required"):
        return [t for t in tools if t.name == choice]
    return list(tools)


# --------------------------------------------------------------------------- prompts


def template_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """The ``tools`` variable of a chat template (OpenAI's shape, as HF templates expect)."""
    out: list[dict[str, Any]] = []
    for t in tools:
        fn: dict[str, Any] = {
            "name": t.name,
            "description": t.description,
            "parameters": t.parameters,
        }
        out.append({"type": "function", "function": fn})
    return out


def _arguments_value(arguments: str) -> Any:
    # Templates write arguments with ``tojson``: a dict renders as the model wrote it,
    # a string would be quoted twice.
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


def template_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages as a Jinja chat template expects them (with tool calls and tool results)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        d: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            d["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": _arguments_value(c.arguments)},
                }
                for c in m.tool_calls
            ]
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            d["name"] = m.name
        out.append(d)
    return out


def prompt_tools(
    messages: Sequence[Message], req: GenRequest, template_source: str
) -> tuple[list[Message], list[dict[str, Any]] | None]:
    """The messages and ``tools`` variable to render ``req`` with a Jinja chat template.

    A template that knows tools (it mentions ``tools``) gets them as they are; for
    one that does not, tools, calls and results are written into the messages.
    """
    tools = tools_for_prompt(req.tools, req.tool_choice)
    if "tools" in template_source:
        return list(messages), template_tools(tools) or None
    if tools or any(m.tool_calls or m.role == "tool" for m in messages):
        return hermes_messages(messages, tools), None
    return list(messages), None


def hermes_system_prompt(tools: Sequence[ToolSpec]) -> str:
    """The tool instructions Qwen2.5's template writes, for templates that have none."""
    listed = "\n".join(json.dumps(t) for t in template_tools(tools))
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{listed}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments "
        f"within {TOOL_CALL_OPEN}{TOOL_CALL_CLOSE} XML tags:\n{TOOL_CALL_OPEN}\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n' + TOOL_CALL_CLOSE
    )


def _call_block(call: ToolCall) -> str:
    body = json.dumps({"name": call.name, "arguments": _arguments_value(call.arguments)})
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def hermes_messages(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> list[Message]:
    """The conversation in plain user/assistant/system turns, tools written out as text.

    For chat templates (or upstreams) that know nothing of tools: the tool list
    joins the system message, calls become ``<tool_call>`` blocks and results
    become user turns with ``<tool_response>`` blocks, as Qwen2.5's template does.
    """
    out: list[Message] = []
    rest = list(messages)
    if tools:
        system = hermes_system_prompt(tools)
        if rest and rest[0].role in ("system", "developer"):
            system = f"{rest.pop(0).content}\n\n{system}"
        out.append(Message(role="system", content=system))
    for m in rest:
        if m.role == "tool":
            block = f"<tool_response>\n{m.content}\n</tool_response>"
            if out and out[-1].role == "user" and out[-1].content.startswith("<tool_response>"):
                out[-1] = Message(role="user", content=f"{out[-1].content}\n{block}")
            else:
                out.append(Message(role="user", content=block))
        elif m.tool_calls:
            parts = [m.content] if m.content else []
            parts += [_call_block(c) for c in m.tool_calls]
            out.append(Message(role="assistant", content="\n".join(parts)))
        else:
            out.append(Message(role=m.role, content=m.content))
    return out


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
                    keep = _partial_suffix(self._buffer, TOOL_CALL_OPEN)
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


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


# --------------------------------------------------------------------------- checking


def argument_errors(tool: ToolSpec, arguments: str) -> list[str]:
    """Why ``arguments`` (JSON text) do not fit the tool's parameter schema (empty if they do)."""
    from ponder.structured.formats import validation_errors

    return validation_errors(
        arguments, OutputConstraint(kind="json_schema", json_schema=tool.parameters)
    )


def call_errors(calls: Sequence[ToolCall], tools: Sequence[ToolSpec]) -> list[str]:
    """Every problem with a set of calls: unknown functions and invalid arguments."""
    by_name = {t.name: t for t in tools}
    errors: list[str] = []
    for call in calls:
        tool = by_name.get(call.name)
        if tool is None:
            errors.append(f"{call.name}: not one of the tools")
            continue
        errors += [f"{call.name}: {e}" for e in argument_errors(tool, call.arguments)]
    return errors


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def tool_call_key(call: ToolCall) -> tuple[str, str]:
    """(name, canonical arguments): two calls that do the same thing vote together.

    Key order, whitespace and ``2.0`` vs ``2`` do not matter; unparsable
    arguments vote as their raw text.
    """
    try:
        value = _canonical(json.loads(call.arguments))
    except json.JSONDecodeError:
        return call.name, call.arguments.strip()
    return call.name, json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------- grammar


def _call_schema(tool: ToolSpec) -> dict[str, Any]:
    arguments = dict(tool.parameters)
    arguments.setdefault("type", "object")
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": arguments},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def tool_call_constraint(
    tools: Sequence[ToolSpec], choice: ToolChoice, *, parallel: bool = True
) -> OutputConstraint | None:
    """A grammar for the answer when a call is required (``None`` for ``auto`` / ``none``).

    The answer is one ``<tool_call>`` block (or several, with ``parallel``) whose
    JSON names one of the allowed tools and carries arguments valid for it.
    ``auto`` is not constrained: the model may answer in prose, and its calls
    are parsed and checked afterwards.
    """
    if choice in ("auto", "none"):
        return None
    allowed = tools_for_prompt(tools, choice)
    if not allowed:
        raise InvalidRequest(f"tool_choice names {choice!r}, which is not in tools")
    schemas = [_call_schema(t) for t in allowed]
    body = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    calls = 'call ("\\n" call)*' if parallel else "call"
    grammar = (
        f"start: {calls}\n"
        f'call: "{TOOL_CALL_OPEN}\\n" body "\\n{TOOL_CALL_CLOSE}"\n'
        f"body: %json {json.dumps(body)}\n"
    )
    return OutputConstraint(kind="lark", grammar=grammar)


def with_tool_calls(gen: Generation, tools: Sequence[ToolSpec], choice: ToolChoice) -> Generation:
    """``gen`` with its ``<tool_call>`` blocks moved into ``tool_calls`` (for text-only engines).

    The finish reason becomes ``tool_calls`` when at least one call parsed;
    without tools (or with ``tool_choice: "none"``) the generation is unchanged.
    """
    if not tools or choice == "none":
        return gen
    parsed = parse_tool_calls(gen.text, tools_for_prompt(tools, choice))
    if not parsed.calls:
        return gen
    finish = "tool_calls" if gen.finish_reason == "stop" else gen.finish_reason
    return gen.model_copy(
        update={"text": parsed.content, "tool_calls": parsed.calls, "finish_reason": finish}
    )


def generation_vote_key(gen: Generation) -> tuple[tuple[str, str], ...] | None:
    """What a multi-sample strategy votes on for a generation that called tools.

    The ordered (name, canonical arguments) of its calls; ``None`` for a prose
    answer (vote on the answer text as before).
    """
    if not gen.tool_calls:
        return None
    return tuple(tool_call_key(c) for c in gen.tool_calls)


def generation_is_valid(
    gen: Generation,
    tools: Sequence[ToolSpec],
    choice: ToolChoice = "auto",
    constraint: OutputConstraint | None = None,
) -> bool:
    """Schema validity as a verifier signal: calls fit their tools, JSON fits its schema.

    A required call that is missing, a call with invalid arguments, or a
    structured answer that does not validate makes the sample invalid.
    """
    from ponder.structured.formats import validation_errors

    if gen.tool_calls:
        return not call_errors(gen.tool_calls, tools_for_prompt(tools, choice))
    if tools and choice not in ("auto", "none"):
        return False
    if constraint is not None and constraint.kind != "lark":
        return not validation_errors(gen.text, constraint)
    return True
