"""Execution: the one place a gateway run starts, and the state it changes as it goes.

Whether the caller waits for the answer, streams its tokens or streams progress
events, the run gets the same thing: a :class:`RunContext` over a metered view
of the run's :class:`~ponder.budget.quota.QuotaGuard`, with every model tier
reachable under the one reservation.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ponder.backends.base import Backend
from ponder.budget.metered import MeteredBackend
from ponder.budget.quota import QuotaGuard
from ponder.errors import InvalidRequest
from ponder.server.admission import Admitted
from ponder.server.auth import Caller
from ponder.server.output import Screened
from ponder.server.planning import Plan
from ponder.server.protocol import ContinuedJob
from ponder.strategies import RunContext
from ponder.strategies.base import Progress, ProgressTracker, StreamsTokens
from ponder.telemetry.trace import Tracer
from ponder.tools import with_tool_calls
from ponder.types import Delta, Generation, GenRequest, Outcome, Problem

__all__ = ["Execution", "RunState", "TierCalls", "ToolParsing", "with_tool_parsing"]


@dataclass
class RunState:
    """What changes while an admitted request runs (its plan never does)."""

    admitted: Admitted
    # The run's calls, kept inside the reservation; it holds the usage settlement charges.
    guard: QuotaGuard
    started: float = field(default_factory=time.monotonic)
    # The strategy's verifier's judgement of the answer, when it made one.
    verdict: str | None = None
    screened: Screened = field(default_factory=Screened)
    # continue_async: the job that runs the full plan, or why it could not be queued.
    job: ContinuedJob | None = None
    job_error: str | None = None
    # Set once the ledger row is written: an abandoned stream settles only if not.
    settled: bool = False

    @classmethod
    def start(cls, admitted: Admitted, backend: Backend) -> RunState:
        guard = QuotaGuard(
            with_tool_parsing(backend), allowance=admitted.allowance, tier=admitted.tier
        )
        return cls(admitted=admitted, guard=guard)

    @property
    def id(self) -> str:
        return self.admitted.id

    @property
    def plan(self) -> Plan:
        return self.admitted.plan

    @property
    def caller(self) -> Caller:
        return self.admitted.caller

    @property
    def tier(self) -> str:
        return self.admitted.tier


class ToolParsing:
    """A text-only backend whose generations get their ``<tool_call>`` blocks parsed
    into ``tool_calls`` (so strategies vote on calls whatever the engine)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.capabilities = inner.capabilities

    def __getattr__(self, attr: str) -> Any:
        # Token counting and the like stay the inner backend's.
        return getattr(self.inner, attr)

    async def generate(self, req: GenRequest) -> list[Generation]:
        gens = await self.inner.generate(req)
        if not req.tools:
            return gens
        return [with_tool_calls(g, req.tools, req.tool_choice) for g in gens]

    def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        # Streams are parsed by the gateway as they go (ToolCallStreamParser).
        return self.inner.stream(req)


def with_tool_parsing(backend: Backend) -> Backend:
    """``backend``, or a :class:`ToolParsing` over it when it does not parse calls itself."""
    if backend.capabilities.tools or isinstance(backend, ToolParsing):
        return backend
    return ToolParsing(backend)


class TierCalls:
    """Another model tier as a run's strategy sees it (``RunContext.tiers``): its calls
    are admitted against, and accounted in, the run's one reservation (``QuotaGuard``)."""

    def __init__(self, guard: QuotaGuard, tier: str, inner: Backend) -> None:
        self.guard = guard
        self.tier = tier
        self.inner = with_tool_parsing(inner)
        self.name = inner.name
        self.capabilities = inner.capabilities

    async def generate(self, req: GenRequest) -> list[Generation]:
        return await self.guard.generate_via(self.inner, req, tier=self.tier)

    async def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        # Strategies call other tiers whole; a stream here is one finished delta.
        (gen,) = await self.generate(req.model_copy(update={"n": 1}))
        yield Delta(
            text=gen.text, reasoning=gen.reasoning, finish_reason=gen.finish_reason, usage=gen.usage
        )


class Execution:
    """One run of a plan's strategy: its meter, its context, and the three ways to consume it.

    ``on_progress`` gets a :class:`Progress` snapshot after each model call or step
    (the progress stream); without it the run is traced but reports nothing.
    """

    def __init__(
        self,
        state: RunState,
        tiers: Mapping[str, Backend],
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        p = state.plan
        self.plan = p
        self.meter = MeteredBackend(state.guard, p.budget)
        self.tracker = ProgressTracker(p.instance, self.meter, on_progress) if on_progress else None
        self.ctx = RunContext(
            backend=self.meter,
            tracer=Tracer(self.tracker),
            sampling=p.sampling,
            tiers={name: TierCalls(state.guard, name, b) for name, b in tiers.items()},
        )
        self.problem = Problem(messages=p.messages)

    async def outcome(self) -> Outcome:
        """Run the strategy to its (anytime) outcome."""
        return await self.plan.instance.run(self.problem, self.ctx)

    def deltas(self) -> AsyncIterator[Delta]:
        """The answer's deltas as they are decoded (a :class:`StreamsTokens` strategy)."""
        instance = self.plan.instance
        if not isinstance(instance, StreamsTokens):
            raise InvalidRequest(f"strategy {self.plan.strategy!r} cannot stream its tokens")
        return instance.stream(self.problem, self.ctx)
