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

from ponder.tools.checks import (
    answered_calls,
    argument_errors,
    call_errors,
    generation_is_valid,
    generation_vote_key,
    repeats_answered_calls,
    tool_call_constraint,
    tool_call_key,
    with_tool_calls,
)
from ponder.tools.parsing import (
    ParsedToolCalls,
    ToolCallStreamParser,
    bare_tool_call,
    parse_tool_calls,
)
from ponder.tools.wire import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    hermes_messages,
    hermes_system_prompt,
    new_call_id,
    prompt_tools,
    template_messages,
    template_tools,
    tool_choice_from_openai,
    tools_for_prompt,
    tools_from_openai,
)

__all__ = [
    "answered_calls",
    "repeats_answered_calls",
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
