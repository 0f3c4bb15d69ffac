"""The strategy protocol, the run context and the helpers every strategy shares.

A strategy is a small readable object with ``async run(problem, ctx) -> Outcome``.
It talks only to ``ctx.backend`` (a :class:`MeteredCalls`: a backend that counts
and caps) and ``ctx.verifier``; it never imports an engine. Strategies are
*anytime*: when the metering wrapper raises :class:`BudgetExhausted` they return
the best answer found so far, marked truncated (``with ctx.anytime(): ...``).

Two optional protocols tell the gateway more than ``run``: :class:`DeclaresWork`
(``work()``: the most a run asks of the engines, which the quota reservation
covers) and :class:`StreamsTokens` (``stream()``: the answer is one generation
that can be sent as it is decoded).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ponder.backends.base import Backend
from ponder.errors import BudgetExhausted, InvalidRequest
from ponder.strategies.tree import flat_tree
from ponder.telemetry.trace import Tracer
from ponder.tools import generation_vote_key
from ponder.types import (
    Budget,
    Candidate,
    Capabilities,
    Delta,
    Generation,
    GenRequest,
    Outcome,
    OutputConstraint,
    Problem,
    Score,
    ThinkingConfig,
    ToolChoice,
    ToolSpec,
    TraceEvent,
    TraceNode,
    Usage,
)
from ponder.verifiers.answers import extract_answer, extract_code
from ponder.verifiers.base import Verifier

__all__ = [
    "STEP_EVENTS",
    "DeclaresWork",
    "MeteredCalls",
    "Progress",
    "ProgressTracker",
    "RunContext",
    "SamplingDefaults",
    "Strategy",
    "StreamsTokens",
    "Work",
    "answer_key",
    "check_int",
    "check_temperature",
    "finish",
    "planned_work",
    "streams_tokens",
    "to_candidate",
    "work_of",
]


@runtime_checkable
class MeteredCalls(Protocol):
    """The backend a strategy sees: a :class:`Backend` that sums usage over every call
    and caps them to the run's budget (``ponder.budget.metered.MeteredBackend``)."""

    name: str
    capabilities: Capabilities
    budget: Budget
    usage: Usage
    calls: int
    started: float
    # Why the run stopped early ("budget", "deadline"), None while it has not.
    exhausted: str | None

    @property
    def remaining_tokens(self) -> int | None: ...

    async def generate(self, req: GenRequest) -> list[Generation]: ...

    async def generate_via(self, backend: Backend, req: GenRequest) -> list[Generation]: ...

    def stream(self, req: GenRequest) -> AsyncIterator[Delta]: ...


def check_int(owner: str, name: str, value: object, minimum: int) -> None:
    """Raise :class:`InvalidRequest` unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidRequest(
            f"{owner}: {name} must be an integer >= {minimum}, got {value!r}", param=name
        )


def check_temperature(owner: str, value: object, name: str = "temperature") -> None:
    """Raise :class:`InvalidRequest` unless ``value`` is a finite number >= 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidRequest(f"{owner}: {name} must be a number >= 0, got {value!r}", param=name)


@dataclass
class SamplingDefaults:
    """Per-run sampling settings a strategy starts from (the request may set them)."""

    max_tokens: int = 512
    temperature: float | None = None  # None: the strategy's own default
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    # What the caller's request adds to every generation of the run: per-token
    # logprobs, functions the model may call, and a grammar the answer must follow.
    logprobs: bool = False
    top_logprobs: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: ToolChoice = "auto"
    constraint: OutputConstraint | None = None
    # Independent answers per call for strategies that return one generation
    # (a request's ``n``); strategies that pass ``n`` themselves are not affected.
    choices: int = 1

    def __post_init__(self) -> None:
        owner = "sampling"
        check_int(owner, "max_tokens", self.max_tokens, 1)
        if self.temperature is not None:
            check_temperature(owner, self.temperature)
        if (
            isinstance(self.top_p, bool)
            or not isinstance(self.top_p, int | float)
            or not 0 < self.top_p <= 1
        ):
            raise InvalidRequest(
                f"{owner}: top_p must be in (0, 1], got {self.top_p!r}", param="top_p"
            )
        check_int(owner, "top_k", self.top_k, 0)
        if self.seed is not None:
            check_int(owner, "seed", self.seed, -(2**63))
        if isinstance(self.stop, str) or not all(isinstance(s, str) for s in self.stop):
            raise InvalidRequest(
                f"{owner}: stop must be a list of strings, got {self.stop!r}", param="stop"
            )


@dataclass
class RunContext:
    backend: MeteredCalls
    verifier: Verifier | None = None
    tracer: Tracer = field(default_factory=Tracer)
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    started: float = field(default_factory=time.monotonic)
    # Other model tiers a strategy may escalate to (e.g. a cascade), by tier name.
    # Unmetered here: ``generate(req, tier=...)`` charges them to ``backend``'s budget.
    tiers: dict[str, Backend] = field(default_factory=dict)

    def request(
        self,
        problem: Problem,
        *,
        n: int | None = None,
        temperature: float = 0.0,
        thinking: ThinkingConfig | None = None,
        **overrides: Any,
    ) -> GenRequest:
        s = self.sampling
        fields: dict[str, Any] = {
            "messages": problem.messages,
            "n": n if n is not None else s.choices,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature if s.temperature is not None else temperature,
            "top_p": s.top_p,
            "top_k": s.top_k,
            "seed": s.seed,
            "stop": list(s.stop),
            "thinking": thinking,
            "logprobs": s.logprobs,
            "top_logprobs": s.top_logprobs,
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
            "logit_bias": dict(s.logit_bias),
            "tools": list(s.tools),
            "tool_choice": s.tool_choice,
            "constraint": s.constraint,
        }
        fields.update(overrides)
        return GenRequest(**fields)

    def anytime(self) -> contextlib.AbstractContextManager[None]:
        """Run the block until the budget or deadline runs out, then carry on quietly.

        The meter records why it stopped (``backend.exhausted``), so :func:`finish`
        still marks the outcome truncated; the strategy returns what it has so far.
        """
        return contextlib.suppress(BudgetExhausted)

    def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        """One metered call whose deltas arrive as the engine decodes them."""
        return self.backend.stream(req)

    async def generate(self, req: GenRequest, tier: str | None = None) -> list[Generation]:
        """One metered call; ``tier`` sends it to ``tiers[tier]`` under the same budget."""
        t0 = time.monotonic()
        gens = await (self._on_tier(tier, req) if tier is not None else self.backend.generate(req))
        self.tracer.event(
            "generate",
            tier=tier,
            n=len(gens),
            max_tokens=req.max_tokens,
            thinking_budget=req.thinking.budget_tokens if req.thinking else None,
            latency_s=round(time.monotonic() - t0, 4),
            usage=[g.usage.model_dump(exclude_defaults=True) for g in gens],
            finish=[g.finish_reason for g in gens],
        )
        return gens

    async def _on_tier(self, tier: str, req: GenRequest) -> list[Generation]:
        backend = self.tiers.get(tier)
        if backend is None:
            raise InvalidRequest(
                f"no model tier {tier!r} in this run; available: {sorted(self.tiers) or 'none'}",
                param="tier",
            )
        # Only the engine differs: one budget and one usage cover every tier.
        return await self.backend.generate_via(backend, req)


# Trace events that close one step of a multi-step strategy -> the field with its
# 0-based index (DVTS numbers its steps from 1: its first step is the opening wave).
STEP_EVENTS: dict[str, str] = {
    "beam_step": "depth",
    "dvts_step": "depth",
    "tot_level": "level",
    "mcts_iteration": "iteration",
    "critique": "round",
    "rung": "index",
}


@dataclass
class Progress:
    """Where a running strategy is: samples and steps done (of planned), tokens so far."""

    phase: str
    samples: int = 0
    samples_planned: int | None = None
    steps: int = 0
    steps_planned: int | None = None
    calls: int = 0
    # Generated tokens (reasoning + output) over every call so far.
    tokens: int = 0
    budget: int | None = None
    elapsed_s: float = 0.0


def planned_work(strategy: object) -> tuple[int | None, int | None]:
    """(samples, steps) a strategy plans at most, from its parameters; None when open-ended.

    A strategy may declare ``planned_samples`` / ``planned_steps`` itself; otherwise
    the built-in parameter names are read (``max_samples``, ``n``, ``max_steps``,
    ``depth``, ``iterations``, ``rounds``, a cascade's rungs).
    """

    def number(*names: str) -> int | None:
        for name in names:
            value = getattr(strategy, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    steps = number("planned_steps", "max_steps", "depth", "iterations", "rounds")
    plan = getattr(strategy, "plan", None)
    if steps is None and getattr(strategy, "name", None) == "cascade" and callable(plan):
        rungs = plan()
        return sum(getattr(r, "n", 1) for r in rungs), len(rungs)
    samples = number("planned_samples", "max_samples")
    if samples is None and steps is None:
        # Sample-and-select strategies: n samples; for search, n is paths per step.
        samples = number("n")
    return samples, steps


class ProgressTracker:
    """A :class:`Tracer` listener that reports a run's progress after each event.

    Use it as ``RunContext(tracer=Tracer(ProgressTracker(strategy, meter, callback)))``;
    ``callback`` gets a :class:`Progress` per generation call, step or decision.
    """

    def __init__(
        self,
        strategy: object,
        meter: MeteredCalls,
        on_progress: Callable[[Progress], None],
    ) -> None:
        self.meter = meter
        self.on_progress = on_progress
        self.samples_planned, self.steps_planned = planned_work(strategy)
        self.samples = 0
        self.steps = 0
        self.phase = "started"

    def snapshot(self) -> Progress:
        m = self.meter
        return Progress(
            phase=self.phase,
            samples=self.samples,
            samples_planned=self.samples_planned,
            steps=self.steps,
            steps_planned=self.steps_planned,
            calls=m.calls,
            tokens=m.usage.completion_tokens,
            budget=m.budget.tokens,
            elapsed_s=round(time.monotonic() - m.started, 3),
        )

    def __call__(self, event: TraceEvent) -> None:
        name, data = event.name, event.data
        if name == "generate":
            self.samples += int(data.get("n") or 0)
            self.phase = "sampling"
        elif name in STEP_EVENTS:
            index = data.get(STEP_EVENTS[name])
            if isinstance(index, int):
                self.steps = max(self.steps, index + 1)
            self.phase = name
        elif name == "chosen":
            self.phase = "chosen"
        else:
            self.phase = name
        self.on_progress(self.snapshot())


@runtime_checkable
class Strategy(Protocol):
    name: str

    async def run(self, problem: Problem, ctx: RunContext) -> Outcome: ...


@dataclass(frozen=True)
class Work:
    """The most one run asks of the engines; the gateway reserves quota for it."""

    # Generations of up to max_tokens each (unless a token budget caps them all).
    samples: int = 1
    # Model calls, each of which sends the prompt again.
    calls: int = 1
    # Other model tiers the run may call (a cascade's strong tier).
    tiers: tuple[str, ...] = ()


@runtime_checkable
class DeclaresWork(Protocol):
    """A strategy that says how much work a run does at most (default: one call)."""

    def work(self) -> Work: ...


@runtime_checkable
class StreamsTokens(Protocol):
    """A strategy whose answer is one generation, streamed as it is decoded."""

    def stream(self, problem: Problem, ctx: RunContext) -> AsyncIterator[Delta]: ...


def work_of(strategy: object) -> Work:
    """What ``strategy`` declares with ``work()``; one sample in one call otherwise."""
    return strategy.work() if isinstance(strategy, DeclaresWork) else Work()


def streams_tokens(strategy: object) -> bool:
    """Whether a strategy (an instance or its class) streams its answer token by token."""
    if isinstance(strategy, type):
        return callable(getattr(strategy, "stream", None))
    return isinstance(strategy, StreamsTokens)


def answer_key(text: str, task: str | None = None) -> str | None:
    """What a candidate votes under: its final answer, or for code tasks its normalized code."""
    if task == "code":
        code = extract_code(text).strip()
        return "\n".join(line.rstrip() for line in code.splitlines() if line.strip()) or None
    return extract_answer(text)


def to_candidate(gen: Generation, task: str | None = None) -> Candidate:
    calls = generation_vote_key(gen)
    return Candidate(
        text=gen.text,
        reasoning=gen.reasoning,
        # Samples that called tools vote on (name, canonical arguments) of their calls.
        answer=json.dumps(calls) if calls is not None else answer_key(gen.text, task),
        generation=gen,
        # Anything but a natural stop (or a finished tool call) is an unfinished answer.
        truncated=gen.finish_reason not in ("stop", "tool_calls"),
    )


def finish(
    name: str,
    ctx: RunContext,
    candidates: Sequence[Candidate],
    chosen: int | None,
    scores: Sequence[Score] = (),
    tree: TraceNode | None = None,
) -> Outcome:
    """Build the outcome from what the run has; usage comes from the meter, never the strategy.

    Without a ``tree`` the run is recorded as a root with one node per candidate.
    """
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
        tree=tree if tree is not None else flat_tree(candidates, scores, chosen),
    )
