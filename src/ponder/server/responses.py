"""Responses out: the completion body, its ``x-ponder-*`` headers, and SSE framing."""

from __future__ import annotations

from ponder.budget.pricing import to_usd
from ponder.guardrails import Finding, refusal_message
from ponder.server.execution import RunState
from ponder.server.planning import Plan
from ponder.server.protocol import (
    AssistantMessage,
    ChatCompletion,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    ChunkDelta,
    OpenAIFinishReason,
    PonderInfo,
    logprobs_to_openai,
    tool_calls_to_openai,
)
from ponder.server.settlement import Settlement, tier_usage
from ponder.tools import with_tool_calls
from ponder.types import Generation, Outcome, ToolCall

__all__ = [
    "choices",
    "completion",
    "final_choice",
    "openai_finish",
    "pieces",
    "ponder_headers",
    "sse",
    "stream_headers",
    "with_calls",
]


def openai_finish(truncated: bool) -> OpenAIFinishReason:
    return "length" if truncated else "stop"


def _chosen_generation(outcome: Outcome) -> Generation | None:
    if outcome.chosen is None or not outcome.candidates:
        return None
    return outcome.candidates[outcome.chosen].generation


def with_calls(
    p: Plan,
    text: str,
    finish: str,
    calls: list[ToolCall] | None,
    stop_sequence: str | None = None,
) -> Generation:
    """``text`` with its calls: the engine's, else ``<tool_call>`` blocks parsed out of it
    (backends that return text only)."""
    gen = Generation(
        text=text,
        finish_reason=finish,  # type: ignore[arg-type]
        tool_calls=calls or None,
        stop_sequence=stop_sequence,
    )
    s = p.sampling
    if gen.tool_calls or not s.tools:
        return gen
    return with_tool_calls(gen, s.tools, s.tool_choice)


def _choice(
    p: Plan,
    index: int,
    gen: Generation,
    *,
    truncated: bool,
    reasoning: str | None,
    refused: Finding | None,
    logprobs: ChoiceLogprobs | None,
) -> Choice:
    calls = tool_calls_to_openai(gen.tool_calls) if gen.tool_calls and not refused else None
    finish: OpenAIFinishReason
    if refused:
        finish = "content_filter"
    elif calls and not truncated:
        finish = "tool_calls"
    else:
        finish = openai_finish(truncated)
    return Choice(
        index=index,
        message=AssistantMessage(
            # OpenAI sends null content for an answer that is only tool calls.
            content=None if calls and not gen.text.strip() else gen.text,
            reasoning_content=reasoning,
            refusal=refusal_message(refused) if refused else None,
            tool_calls=calls,
        ),
        finish_reason=finish,
        logprobs=logprobs,
        stop_reason=gen.stop_sequence if finish == "stop" else None,
    )


def choices(state: RunState, outcome: Outcome) -> list[Choice]:
    """The response's choices: the chosen answer, then (a request's n > 1) the other
    samples of the same call, each through the output guardrails."""
    p, refused = state.plan, state.screened.refused
    chosen = _chosen_generation(outcome)
    want_logprobs = p.sampling.logprobs
    first = with_calls(
        p,
        outcome.answer,
        chosen.finish_reason if chosen is not None else "stop",
        chosen.tool_calls if chosen is not None else None,
        chosen.stop_sequence if chosen is not None else None,
    )
    out = [
        _choice(
            p,
            0,
            first,
            truncated=outcome.truncated,
            reasoning=outcome.reasoning if p.include_reasoning else None,
            refused=refused,
            logprobs=logprobs_to_openai(chosen.logprobs) if want_logprobs and chosen else None,
        )
    ]
    if p.sampling.choices <= 1:
        return out
    others = [
        c.generation
        for i, c in enumerate(outcome.candidates)
        if i != outcome.chosen and c.generation is not None
    ]
    scanner = p.scanner if p.scanner is not None and p.scanner.active else None
    for index, gen in enumerate(others[: p.sampling.choices - 1], start=1):
        text, reasoning, found = gen.text, gen.reasoning, None
        if scanner is not None:
            scanned = scanner.scan(text)
            text, found = scanned.text, scanned.refused
            if p.include_reasoning and not found:
                thought = scanner.scan(reasoning)
                reasoning, found = thought.text, thought.refused
        out.append(
            _choice(
                p,
                index,
                with_calls(
                    p, "" if found else text, gen.finish_reason, gen.tool_calls, gen.stop_sequence
                ),
                truncated=gen.finish_reason not in ("stop", "tool_calls"),
                reasoning=(reasoning if not found else "") if p.include_reasoning else None,
                refused=found,
                logprobs=logprobs_to_openai(gen.logprobs) if want_logprobs else None,
            )
        )
    return out


def completion(
    state: RunState, outcome: Outcome, settlement: Settlement, model: str
) -> ChatCompletion:
    """The response body of a settled run (``outcome`` already through the guardrails)."""
    p = state.plan
    return ChatCompletion(
        id=state.id,
        model=model,
        choices=choices(state, outcome),
        usage=outcome.usage.to_openai(),
        ponder=PonderInfo(
            strategy=outcome.strategy,
            task_class=p.task_class,
            params=p.params,
            budget=p.budget.tokens,
            thinking_budget=p.thinking_budget,
            truncated=outcome.truncated,
            stop_reason=outcome.stop_reason,
            calls=outcome.calls,
            latency_s=round(outcome.latency_s, 4),
            n_candidates=len(outcome.candidates),
            cost_usd=to_usd(settlement.cost_micro),
            tier=state.tier,
            tier_usage=tier_usage(state, settlement.tier_costs),
            job=state.job,
            verification=state.verification,
            tree=(
                outcome.tree.model_dump(exclude_defaults=True)
                if p.include_reasoning and outcome.tree is not None
                else None
            ),
        ),
    )


def ponder_headers(completion: ChatCompletion) -> dict[str, str]:
    """The ``x-ponder-*`` response headers of a finished completion."""
    info = completion.ponder
    reasoning = int(completion.usage["completion_tokens_details"]["reasoning_tokens"])
    headers = {
        "x-ponder-request-id": completion.id,
        "x-ponder-class": info.task_class,
        "x-ponder-strategy": info.strategy,
        "x-ponder-thinking-budget": str(info.thinking_budget or 0),
        "x-ponder-reasoning-tokens": str(reasoning),
        "x-ponder-output-tokens": str(int(completion.usage["completion_tokens"]) - reasoning),
        "x-ponder-latency-ms": str(round(info.latency_s * 1000)),
        "x-ponder-truncated": "true" if info.truncated else "false",
    }
    if info.cost_usd is not None:
        headers["x-ponder-cost-usd"] = f"{info.cost_usd:.6f}"
    if info.tier is not None:
        headers["x-ponder-tier"] = info.tier
    if info.job is not None:
        headers["x-ponder-job-id"] = info.job.id
    return headers


def stream_headers(state: RunState) -> dict[str, str]:
    """What a stream's response headers say about its plan (sent before any chunk)."""
    p = state.plan
    return {
        "x-ponder-request-id": state.id,
        "x-ponder-class": p.task_class,
        "x-ponder-strategy": p.strategy,
        "x-ponder-thinking-budget": str(p.thinking_budget or 0),
        "x-ponder-tier": state.tier,
    }


def final_choice(
    state: RunState, truncated: bool, *, called: bool = False, stop_sequence: str | None = None
) -> ChunkChoice:
    """A stream's last choice: its finish reason (and the stop string that ended it, if
    one did), or the refusal that ended it."""
    refused = state.screened.refused
    if refused is not None:
        return ChunkChoice(
            delta=ChunkDelta(refusal=refusal_message(refused)), finish_reason="content_filter"
        )
    if called and not truncated:
        return ChunkChoice(finish_reason="tool_calls")
    finish = openai_finish(truncated)
    return ChunkChoice(
        finish_reason=finish, stop_reason=stop_sequence if finish == "stop" else None
    )


def sse(payload: str) -> str:
    return f"data: {payload}\n\n"


def pieces(text: str, size: int = 256) -> list[str]:
    """A finished answer as content deltas of at most ``size`` characters."""
    return [text[i : i + size] for i in range(0, len(text), size)]
