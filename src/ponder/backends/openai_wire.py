"""The OpenAI wire format as the HTTP backends read and write it: parsing, prompts, mappings.

Pure functions over JSON-like data: choices, usage and logprobs out of a response,
a chat prompt rendered for the raw completions endpoint, and the coarse mappings
(finish reason, reasoning effort, a tokenizer-free token estimate).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ponder.types import (
    FinishReason,
    GenRequest,
    Message,
    TokenLogprob,
    ToolCall,
    ToolSpec,
)

__all__ = [
    "Choice",
    "ServerUsage",
    "effort_for_budget",
    "estimate_tokens",
    "finish_reason",
    "parse_choices",
    "render_chat",
    "server_usage",
    "wire_messages",
    "wire_tools",
]


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (about four characters per token)."""
    return math.ceil(len(text) / 4) if text else 0


def effort_for_budget(budget_tokens: int) -> str:
    """OpenAI ``reasoning_effort`` for a token budget (a coarse, documented mapping)."""
    if budget_tokens <= 1024:
        return "low"
    if budget_tokens <= 8192:
        return "medium"
    return "high"


@dataclass
class Choice:
    """One choice of a response, before its usage is attributed."""

    text: str
    reasoning: str
    finish: FinishReason
    logprobs: list[TokenLogprob] | None
    # Output tokens known exactly for this choice (from its logprobs), if any.
    tokens: int | None = None
    # The calls the upstream returned in ``message.tool_calls``.
    tool_calls: list[ToolCall] = field(default_factory=list)
    # vLLM's ``stop_reason`` when it names a stop string (a token id is not one).
    stop_sequence: str | None = None


@dataclass
class ServerUsage:
    """Usage as the server reported it for one call (all choices together)."""

    prompt: int
    cached: int
    completion: int
    reasoning: int | None


def finish_reason(value: object) -> FinishReason:
    if value == "tool_calls":
        return "tool_calls"
    return "length" if value == "length" else "stop"


def wire_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages as an OpenAI-compatible server takes them, tool calls and results included."""
    out: list[dict[str, Any]] = []
    for m in messages:
        d: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.role == "assistant" and m.tool_calls:
            d["content"] = m.content or None
            d["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in m.tool_calls
            ]
        if m.role == "tool" and m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        out.append(d)
    return out


def wire_tools(req: GenRequest) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``response_format`` of a chat body (passed through)."""
    body: dict[str, Any] = {}
    if req.tools:
        body["tools"] = [_tool(t) for t in req.tools]
        choice = req.tool_choice
        body["tool_choice"] = (
            choice
            if choice in ("auto", "none", "required")
            else {"type": "function", "function": {"name": choice}}
        )
    c = req.constraint
    if c is not None and c.kind == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif c is not None and c.kind == "json_schema" and c.json_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": c.json_schema},
        }
    return body


def _tool(t: ToolSpec) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": t.name, "description": t.description, "parameters": t.parameters}
    if t.strict:
        fn["strict"] = True
    return {"type": "function", "function": fn}


def _tool_calls(raw: object) -> list[ToolCall]:
    calls = []
    for i, c in enumerate(raw if isinstance(raw, list) else []):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            continue
        args = fn.get("arguments")
        text = args if isinstance(args, str) else json.dumps(args if args is not None else {})
        calls.append(ToolCall(id=str(c.get("id") or f"call_{i}"), name=fn["name"], arguments=text))
    return calls


def _count(value: object) -> int:
    # A negative or non-integer count from a server is no count at all.
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def server_usage(data: dict[str, Any]) -> ServerUsage | None:
    u = data.get("usage")
    if not isinstance(u, dict) or "completion_tokens" not in u:
        return None
    pdet = u.get("prompt_tokens_details") or {}
    cdet = u.get("completion_tokens_details") or {}
    reasoning = cdet.get("reasoning_tokens") if isinstance(cdet, dict) else None
    return ServerUsage(
        prompt=_count(u.get("prompt_tokens")),
        cached=_count(pdet.get("cached_tokens") if isinstance(pdet, dict) else 0),
        completion=_count(u.get("completion_tokens")),
        reasoning=_count(reasoning) if isinstance(reasoning, int) else None,
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


def parse_choices(
    raw: list[Any], *, n: int, completions: bool, logprobs: bool, top_logprobs: int
) -> list[Choice]:
    """Up to ``n`` choices of a chat (or raw completions) response, in index order."""
    out: list[Choice] = []
    for c in sorted(raw, key=lambda c: int(c.get("index", 0)))[:n]:
        calls = []
        if completions:
            text, reasoning = str(c.get("text") or ""), ""
            lps = _completion_logprobs(c.get("logprobs"))
        else:
            msg = c.get("message") or {}
            text = str(msg.get("content") or "")
            reasoning = str(msg.get("reasoning_content") or msg.get("reasoning") or "")
            lps = _chat_logprobs(c.get("logprobs"))
            calls = _tool_calls(msg.get("tool_calls"))
        if lps is not None and not top_logprobs:
            for t in lps:
                t.top = {}
        out.append(
            Choice(
                text=text,
                reasoning=reasoning,
                finish=finish_reason(c.get("finish_reason")),
                logprobs=lps if logprobs else None,
                tokens=len(lps) if lps is not None else None,
                tool_calls=calls,
                stop_sequence=c["stop_reason"] if isinstance(c.get("stop_reason"), str) else None,
            )
        )
    return out


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
