"""Execution: the one place a gateway run starts, and the state it changes as it goes.

Whether the caller waits for the answer, streams its tokens or streams progress
events, the run gets the same thing: a :class:`RunContext` over a metered view
of the run's :class:`~ponder.budget.quota.QuotaGuard`, with every model tier
reachable under the one reservation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ponder.backends.base import Backend
from ponder.backends.upstream_log import UpstreamReport, record_upstream
from ponder.budget.metered import MeteredBackend
from ponder.budget.quota import QuotaGuard
from ponder.errors import BudgetExhausted, InvalidRequest, UpstreamTimeout
from ponder.ledger.verdicts import outcome_verdict
from ponder.server.admission import Admitted
from ponder.server.auth import Caller
from ponder.server.output import Screened
from ponder.server.planning import Plan
from ponder.server.protocol import ContinuedJob
from ponder.strategies import RunContext
from ponder.strategies.base import Progress, ProgressTracker, StreamsTokens
from ponder.telemetry.trace import Tracer
from ponder.tools import answered_calls, repeats_answered_calls, with_tool_calls
from ponder.types import Delta, Generation, GenRequest, Message, Outcome, Problem
from ponder.verifiers.spec import build_verifier, verdict_of

__all__ = [
    "DEADLINE_GRACE_S",
    "DeadlineCalls",
    "Execution",
    "RunState",
    "TierCalls",
    "ToolParsing",
    "with_tool_parsing",
]

# How long past the deadline a call may still finish: engines get the deadline with
# every call (``GenRequest.deadline``) and stop on their own, returning their partial
# text; this is for the ones that cannot (a hung upstream, a stalled connection).
DEADLINE_GRACE_S = 1.0


@dataclass
class RunState:
    """What changes while an admitted request runs (its plan never does)."""

    admitted: Admitted
    # The run's calls, kept inside the reservation; it holds the usage settlement charges.
    guard: QuotaGuard
    started: float = field(default_factory=time.monotonic)
    # The strategy's verifier's judgement of the answer, when it made one.
    verdict: str | None = None
    # The chosen answer's check against the plan's verifier: {"verdict", "verifier"}.
    verification: dict[str, Any] | None = None
    # A cascade's rungs that ran, cheapest first (escalation share in ponder stats).
    rungs: list[str] | None = None
    screened: Screened = field(default_factory=Screened)
    # continue_async: the job that runs the full plan, or why it could not be queued.
    job: ContinuedJob | None = None
    job_error: str | None = None
    # Set once the ledger row is written: an abandoned stream settles only if not.
    settled: bool = False
    # Every upstream attempt of the run and every usage figure an upstream reported
    # beyond what its call could use (dropped from the usage, so never charged).
    upstream: UpstreamReport = field(default_factory=UpstreamReport)

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


def results_as_text(messages: Sequence[Message]) -> list[Message]:
    """The conversation with the current turn's tool calls and results folded into one
    user message that states them in words and asks for the answer."""
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    head, turn = list(messages[: last_user + 1]), messages[last_user + 1 :]
    calls = {c.id: c for m in turn if m.role == "assistant" for c in m.tool_calls or []}
    lines = []
    for m in turn:
        if m.role == "tool":
            call = calls.get(m.tool_call_id or "")
            name = f"{call.name}({call.arguments})" if call else "a tool"
            lines.append(f"- {name} returned: {m.content}")
        elif m.role == "assistant" and m.content.strip():
            head.append(Message(role="assistant", content=m.content))
    note = (
        "The tools were called; their results:\n" + "\n".join(lines) + "\n"
        "Answer the request above from these results, in plain words, without calling tools."
    )
    return [*head, Message(role="user", content=note)]


class ToolLoopGuard:
    """Small models often call a tool again with the very arguments whose result they were
    just given, instead of answering; an agent loop then never ends. When every call of
    every sample repeats a call answered in this turn, the request is asked again with
    tools off (``tool_choice: "none"``) and the turn's calls and results written out as
    plain text (a model shown call syntax tends to copy it), so it answers from them.

    Only under ``tool_choice: "auto"``: a required or named call stays the caller's.
    The second call goes through the same quota guard; if the reservation has no room
    for it, the first answer stands.
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.capabilities = inner.capabilities
        self.loops_broken = 0

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    async def generate(self, req: GenRequest) -> list[Generation]:
        gens = await self.inner.generate(req)
        if not req.tools or req.tool_choice != "auto":
            return gens
        answered = answered_calls(req.messages)
        if not answered or not all(repeats_answered_calls(g, answered, req.tools) for g in gens):
            return gens
        again = req.model_copy(
            update={
                "messages": results_as_text(req.messages),
                "tools": [],
                "tool_choice": "none",
                "constraint": None,
            }
        )
        try:
            retried = await self.inner.generate(again)
        except BudgetExhausted:
            return gens
        self.loops_broken += 1
        # The discarded answers were generated and charged: the caller's usage says so.
        spent = retried[0].usage
        for g in gens:
            spent = spent + g.usage
        return [retried[0].model_copy(update={"usage": spent}), *retried[1:]]

    def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
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


class DeadlineCalls:
    """A backend whose calls end at the run's deadline (plus :data:`DEADLINE_GRACE_S`).

    A call still running then is abandoned: ``on_expired`` runs (the meter records
    the deadline, so the outcome is marked truncated) and the call raises
    :class:`BudgetExhausted` with reason "deadline", which anytime strategies catch
    to return what they have. A stream that already produced text ends with a
    "deadline" finish instead; one with nothing yet raises :class:`UpstreamTimeout`.
    """

    def __init__(
        self,
        inner: Any,
        deadline: float | None,
        on_expired: Callable[[], None],
        report: UpstreamReport | None = None,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.capabilities = inner.capabilities
        self.deadline = deadline
        self.on_expired = on_expired
        # Where each call's upstream attempts and usage anomalies are collected.
        self.report = report

    @contextlib.contextmanager
    def _recorded(self) -> Iterator[None]:
        # One report per call step (a context variable set and reset in the same task,
        # also for a stream's steps), added to the run's.
        if self.report is None:
            yield
            return
        with record_upstream() as mine:
            try:
                yield
            finally:
                self.report.attempts.extend(mine.attempts)
                self.report.anomalies.extend(mine.anomalies)

    def _left(self) -> float | None:
        if self.deadline is None:
            return None
        return max(self.deadline + DEADLINE_GRACE_S - time.monotonic(), 0.0)

    def _expired(self) -> BudgetExhausted:
        self.on_expired()
        return BudgetExhausted(
            "the deadline passed while a model call was still running; allow more time "
            "(ponder.deadline_s, or the latency class's server deadline)",
            reason="deadline",
        )

    async def generate(self, req: GenRequest) -> list[Generation]:
        try:
            with self._recorded():
                async with asyncio.timeout(self._left()):
                    return await self.inner.generate(req)
        except TimeoutError:
            raise self._expired() from None
        except BudgetExhausted as exc:
            # The engine itself stopped at the deadline it was given: same outcome.
            if exc.reason == "deadline":
                self.on_expired()
            raise

    async def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        deltas = aiter(self.inner.stream(req))
        produced = False
        try:
            while True:
                try:
                    with self._recorded():
                        async with asyncio.timeout(self._left()):
                            delta = await anext(deltas)
                except StopAsyncIteration:
                    return
                except BudgetExhausted as exc:
                    if exc.reason == "deadline":
                        self.on_expired()
                    raise
                except TimeoutError:
                    self.on_expired()
                    if not produced:
                        raise UpstreamTimeout(
                            "no token arrived before the deadline; allow more time "
                            "(ponder.deadline_s) or retry later",
                            reason="deadline",
                        ) from None
                    yield Delta(text="", finish_reason="deadline")
                    return
                produced = produced or bool(delta.text or delta.reasoning)
                yield delta
        finally:
            closer = getattr(deltas, "aclose", None)
            if closer is not None:
                await closer()


async def _within(deadline: float | None, run: Awaitable[Outcome]) -> Outcome:
    """The run, stopped if it outlives its deadline by more than a call's grace (the
    strategy's own work, a verifier, must not hold the reservation forever either)."""
    left = None if deadline is None else deadline + 2 * DEADLINE_GRACE_S - time.monotonic()
    try:
        async with asyncio.timeout(left):
            return await run
    except TimeoutError:
        raise UpstreamTimeout(
            "the run did not finish before its deadline and had no answer yet; allow more "
            "time (ponder.deadline_s) or ask for less work",
            reason="deadline",
        ) from None


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
        self.state = state
        deadline = state.started + p.budget.deadline_s if p.budget.deadline_s is not None else None
        self.deadline = deadline
        self.expired = False

        def expired() -> None:
            self.expired = True
            self.meter.exhausted = "deadline"

        report = state.upstream
        calls = DeadlineCalls(ToolLoopGuard(state.guard), deadline, expired, report)
        self.meter = MeteredBackend(calls, p.budget)
        self.tracker = ProgressTracker(p.instance, self.meter, on_progress) if on_progress else None
        self.ctx = RunContext(
            backend=self.meter,
            tracer=Tracer(self.tracker),
            sampling=p.sampling,
            tiers={
                name: DeadlineCalls(TierCalls(state.guard, name, b), deadline, expired, report)
                for name, b in tiers.items()
            },
            verifier=build_verifier(p.verifier, state.guard) if p.verifier else None,
        )
        self.problem = Problem(messages=p.messages)

    async def outcome(self) -> Outcome:
        """Run the strategy to its (anytime) outcome, within the plan's deadline; the run
        state gets the answer's verdicts.

        Out of time, the run ends with its best partial answer, marked truncated with
        stop_reason "deadline", or with :class:`UpstreamTimeout` (504) when nothing
        usable came back: never an empty answer that looks finished.
        """
        try:
            out = await _within(self.deadline, self.plan.instance.run(self.problem, self.ctx))
        except BudgetExhausted as exc:
            if exc.reason != "deadline":
                raise
            raise UpstreamTimeout(
                f"the deadline passed before the model answered ({exc})", reason="deadline"
            ) from exc
        if self.expired or out.stop_reason == "deadline":
            if not (out.answer or "").strip():
                raise UpstreamTimeout(
                    "the deadline passed before the model produced any answer; allow more "
                    "time (ponder.deadline_s) or retry later",
                    reason="deadline",
                )
            out = out.model_copy(update={"truncated": True, "stop_reason": "deadline"})
        self.state.verdict = outcome_verdict(out)
        ran = [
            e.data.get("kind") for e in out.trace if e.name == "rung" and "skipped" not in e.data
        ]
        if ran:
            self.state.rungs = [str(kind) for kind in ran]
        if self.plan.verifier is not None:
            self.state.verification = verdict_of(out, self.plan.verifier)
        return out

    def deltas(self) -> AsyncIterator[Delta]:
        """The answer's deltas as they are decoded (a :class:`StreamsTokens` strategy)."""
        instance = self.plan.instance
        if not isinstance(instance, StreamsTokens):
            raise InvalidRequest(f"strategy {self.plan.strategy!r} cannot stream its tokens")
        return instance.stream(self.problem, self.ctx)
