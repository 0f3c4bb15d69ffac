"""Tool calls checked against their schemas, voted on, and constrained by a grammar."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ponder.errors import InvalidRequest
from ponder.tools.parsing import bare_tool_call, parse_tool_calls
from ponder.tools.wire import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, tools_for_prompt
from ponder.types import (
    Generation,
    Message,
    OutputConstraint,
    ToolCall,
    ToolChoice,
    ToolSpec,
)

__all__ = [
    "answered_calls",
    "repeats_answered_calls",
    "argument_errors",
    "call_errors",
    "generation_is_valid",
    "generation_vote_key",
    "tool_call_constraint",
    "tool_call_key",
    "with_tool_calls",
]

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


def answered_calls(messages: Sequence[Message]) -> set[tuple[str, str]]:
    """The calls (as :func:`tool_call_key`) of the current turn that already have a result:
    assistant calls after the last user message whose id a ``tool`` message answers."""
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    turn = messages[last_user + 1 :]
    results = {m.tool_call_id for m in turn if m.role == "tool" and m.tool_call_id}
    return {
        tool_call_key(call)
        for m in turn
        if m.role == "assistant"
        for call in m.tool_calls or []
        if call.id in results
    }


def repeats_answered_calls(
    gen: Generation, answered: set[tuple[str, str]], tools: Sequence[ToolSpec] = ()
) -> bool:
    """Whether every call ``gen`` makes is one whose result the conversation already has.

    An answer with no parsed calls whose every line is a bare call to one of ``tools``
    (a small model repeating itself as text) counts as making those calls.
    """
    calls: list[ToolCall] = list(gen.tool_calls or [])
    if not calls and tools:
        lines = [line for line in gen.text.splitlines() if line.strip()]
        parsed = [bare_tool_call(line, tools) for line in lines]
        calls = [c for c in parsed if c is not None] if lines and all(parsed) else []
    return bool(calls) and all(tool_call_key(c) in answered for c in calls)
