"""Responses out: the completion body, its ``x-ponder-*`` headers, and SSE framing."""

from __future__ import annotations

from ponder.budget.pricing import to_usd
from ponder.guardrails import refusal_message
from ponder.server.execution import RunState
from ponder.server.protocol import (
    AssistantMessage,
    ChatCompletion,
    Choice,
    ChunkChoice,
    ChunkDelta,
    OpenAIFinishReason,
    PonderInfo,
)
from ponder.server.settlement import Settlement, tier_usage
from ponder.types import Outcome

__all__ = [
    "completion",
    "final_choice",
    "openai_finish",
    "pieces",
    "ponder_headers",
    "sse",
    "stream_headers",
]


def openai_finish(truncated: bool) -> OpenAIFinishReason:
    return "length" if truncated else "stop"


def completion(
    state: RunState, outcome: Outcome, settlement: Settlement, model: str
) -> ChatCompletion:
    """The response body of a settled run (``outcome`` already through the guardrails)."""
    p, refused = state.plan, state.screened.refused
    return ChatCompletion(
        id=state.id,
        model=model,
        choices=[
            Choice(
                message=AssistantMessage(
                    content=outcome.answer,
                    reasoning_content=outcome.reasoning if p.include_reasoning else None,
                    refusal=refusal_message(refused) if refused else None,
                ),
                finish_reason="content_filter" if refused else openai_finish(outcome.truncated),
            )
        ],
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


def final_choice(state: RunState, truncated: bool) -> ChunkChoice:
    """A stream's last choice: its finish reason, or the refusal that ended it."""
    refused = state.screened.refused
    if refused is not None:
        return ChunkChoice(
            delta=ChunkDelta(refusal=refusal_message(refused)), finish_reason="content_filter"
        )
    return ChunkChoice(finish_reason=openai_finish(truncated))


def sse(payload: str) -> str:
    return f"data: {payload}\n\n"


def pieces(text: str, size: int = 256) -> list[str]:
    """A finished answer as content deltas of at most ``size`` characters."""
    return [text[i : i + size] for i in range(0, len(text), size)]
