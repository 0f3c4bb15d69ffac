"""The strategy protocol, the run context and the helpers every strategy shares.

A strategy is a small readable object with ``async run(problem, ctx) -> Outcome``.
It talks only to ``ctx.backend`` (a metered :class:`Backend`) and ``ctx.verifier``;
it never imports an engine. Strategies are *anytime*: when the metering wrapper
raises :class:`BudgetExhausted` they return the best answer found so far,
marked truncated.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ponder.budget.metered import MeteredBackend
from ponder.telemetry.trace import Tracer
from ponder.types import (
    Candidate,
    GenRequest,
    Generation,
    Outcome,
    Problem,
    Score,
    ThinkingConfig,
)
from ponder.verifiers.answers import extract_answer
from ponder.verifiers.base import Verifier

__all__ = ["RunContext", "SamplingDefaults", "Strategy", "finish", "to_candidate"]


@dataclass
class SamplingDefaults:
    """Per-run sampling settings a strategy starts from (the request may set them)."""

    max_tokens: int = 512
    temperature: float | None = None  # None: the strategy's own default
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass
class RunContext:
    backend: MeteredBackend
    verifier: Verifier | None = None
    tracer: Tracer = field(default_factory=Tracer)
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    started: float = field(default_factory=time.monotonic)

    def request(
        self,
        problem: Problem,
        *,
        n: int = 1,
        temperature: float = 0.0,
        thinking: ThinkingConfig | None = None,
        **overrides: Any,
    ) -> GenRequest:
        s = self.sampling
        fields: dict[str, Any] = {
            "messages": problem.messages,
            "n": n,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature if s.temperature is not None else temperature,
            "top_p": s.top_p,
            "top_k": s.top_k,
            "seed": s.seed,
            "stop": list(s.stop),
            "thinking": thinking,
        }
        fields.update(overrides)
        return GenRequest(**fields)

    async def generate(self, req: GenRequest) -> list[Generation]:
        t0 = time.monotonic()
        gens = await self.backend.generate(req)
        self.tracer.event(
            "generate",
            n=len(gens),
            max_tokens=req.max_tokens,
            thinking_budget=req.thinking.budget_tokens if req.thinking else None,
            latency_s=round(time.monotonic() - t0, 4),
            usage=[g.usage.model_dump(exclude_defaults=True) for g in gens],
            finish=[g.finish_reason for g in gens],
        )
        return gens


@runtime_checkable
class Strategy(Protocol):
    name: str

    async def run(self, problem: Problem, ctx: RunContext) -> Outcome: ...


def to_candidate(gen: Generation) -> Candidate:
    return Candidate(
        text=gen.text,
        reasoning=gen.reasoning,
        answer=extract_answer(gen.text),
        generation=gen,
        truncated=gen.finish_reason in ("length", "deadline", "budget"),
    )


def finish(
    name: str,
    ctx: RunContext,
    candidates: Sequence[Candidate],
    chosen: int | None,
    scores: Sequence[Score] = (),
) -> Outcome:
    """Build the outcome from what the run has; usage comes from the meter, never the strategy."""
    best = candidates[chosen] if chosen is not None and candidates else None
    meter = ctx.backend
    truncated = meter.exhausted is not None or (best is not None and best.truncated)
    stop_reason = meter.exhausted or (
        best.generation.finish_reason if best is not None and best.generation else None
    )
    ctx.tracer.event("chosen", index=chosen, candidates=len(candidates))
    return Outcome(
        answer=best.text if best is not None else "",
        reasoning=best.reasoning if best is not None else "",
        strategy=name,
        candidates=list(candidates),
        scores=list(scores),
        chosen=chosen,
        usage=meter.usage,
        latency_s=time.monotonic() - ctx.started,
        truncated=truncated,
        stop_reason=stop_reason,
        calls=meter.calls,
        trace=list(ctx.tracer.events),
    )
