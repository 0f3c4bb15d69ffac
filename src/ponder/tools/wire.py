"""Tool specs from the OpenAI wire format, and tools and calls rendered into prompts."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

from ponder.errors import InvalidRequest
from ponder.types import (
    GenRequest,
    Message,
    ToolCall,
    ToolChoice,
    ToolSpec,
)

__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "hermes_messages",
    "hermes_system_prompt",
    "new_call_id",
    "prompt_tools",
    "template_messages",
    "template_tools",
    "tool_choice_from_openai",
    "tools_for_prompt",
    "tools_from_openai",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


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
