"""Quotas: what is limited, over which windows, and the guard that keeps a run inside
what was reserved for it.

A quota limit is ``(scope, subject, metric, window, limit)``: e.g. team ``ml`` may
spend 5,000,000 micro-dollars (``cost``) per ``day``. ``subject="*"`` applies the
limit to every subject of the scope separately (every session gets its own
100k tokens per day). The ``request`` window is a per-request cap, not a counter.

Before a run the gateway reserves the plan's worst case against every limit
that applies (atomically, in the store); after the run it settles to the actual
usage. :class:`QuotaGuard` is the backend wrapper that makes the worst case a
hard bound: no call of any strategy can use more tokens than were reserved.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, get_args

from ponder.backends.base import Backend
from ponder.errors import BudgetExhausted
from ponder.types import Capabilities, Delta, Generation, GenRequest, Message, Usage

__all__ = [
    "METRICS",
    "SCOPES",
    "WINDOWS",
    "Demand",
    "Limit",
    "Metric",
    "QuotaGuard",
    "Refusal",
    "Scope",
    "Window",
    "estimate_prompt_tokens",
    "window_bounds",
]

Scope = Literal["key", "user", "team", "session"]
# tokens = prompt + reasoning + output; cost in micro-dollars.
Metric = Literal["requests", "tokens", "reasoning_tokens", "cost"]
Window = Literal["minute", "day", "month", "request"]

SCOPES: tuple[Scope, ...] = get_args(Scope)
METRICS: tuple[Metric, ...] = get_args(Metric)
WINDOWS: tuple[Window, ...] = get_args(Window)


def window_bounds(window: Window, now: float) -> tuple[int, int]:
    """Start and end (epoch seconds, UTC) of the window containing ``now``."""
    if window == "minute":
        start = int(now // 60 * 60)
        return start, start + 60
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if window == "day":
        start = int(day.timestamp())
        return start, start + 86_400
    if window == "month":
        first = day.replace(day=1)
        nxt = (
            first.replace(year=first.year + 1, month=1)
            if first.month == 12
            else first.replace(month=first.month + 1)
        )
        return int(first.timestamp()), int(nxt.timestamp())
    # A per-request cap has no counter; it "resets" with every request.
    return int(now), int(now)


@dataclass(frozen=True)
class Limit:
    scope: Scope
    subject: str
    metric: Metric
    window: Window
    limit: int

    def describe(self) -> str:
        who = f"every {self.scope}" if self.subject == "*" else f"{self.scope} {self.subject!r}"
        unit = "micro-USD" if self.metric == "cost" else self.metric.replace("_", " ")
        per = "per request" if self.window == "request" else f"per {self.window}"
        return f"{who}: {self.limit} {unit} {per}"


@dataclass(frozen=True)
class Demand:
    """The worst case of one request, per metric (cost in micro-dollars)."""

    requests: int = 1
    tokens: int = 0
    reasoning_tokens: int = 0
    cost: int = 0

    def get(self, metric: Metric) -> int:
        value: int = getattr(self, metric)
        return value

    def as_dict(self) -> dict[str, int]:
        return {m: self.get(m) for m in METRICS}


@dataclass
class Refusal:
    """Why a reservation was refused: the limit, what is used, what was asked, when it resets."""

    limit: Limit
    subject: str
    used: int
    reserved: int
    requested: int
    resets_at: int

    def retry_after_s(self, now: float | None = None) -> int:
        if self.limit.window == "request":
            return 0
        return max(int(self.resets_at - (time.time() if now is None else now)) + 1, 1)

    def message(self) -> str:
        lim = self.limit
        if lim.window == "request":
            return (
                f"this request needs up to {self.requested} against the per-request cap "
                f"({lim.describe()}); lower max_tokens, ponder.budget or the thinking budget"
            )
        return (
            f"quota exceeded for {lim.scope} {self.subject!r} ({lim.describe()}): "
            f"{self.used} used and {self.reserved} reserved by requests in flight, this "
            f"request needs up to {self.requested}. It resets at "
            f"{datetime.fromtimestamp(self.resets_at, UTC).isoformat()}; retry then, or "
            "lower max_tokens / ponder.budget so the worst case fits"
        )


def estimate_prompt_tokens(backend: object, messages: Sequence[Message]) -> int:
    """An upper estimate of the prompt tokens of one call.

    Uses the backend's ``count_tokens`` when it has a synchronous one (plus room for
    the chat template); otherwise counts UTF-8 bytes, which bounds any byte-level
    tokenizer. An upstream's counter is a network call (async), too slow to make here.
    """
    count = getattr(backend, "count_tokens", None)
    if callable(count) and not inspect.iscoroutinefunction(count):
        return sum(int(count(m.content)) + 8 for m in messages) + 64
    return sum(len(m.content.encode("utf-8")) + 4 for m in messages)


@dataclass
class QuotaGuard:
    """Backend wrapper that keeps a run inside its reserved token allowance.

    Each call is admitted only when its worst case (estimated prompt plus
    ``n * max_tokens``) fits what is left; ``max_tokens`` is clipped to fit, and
    a call that cannot produce one token raises :class:`BudgetExhausted`
    (strategies catch it and return what they have). It also records the
    engine's wall time and the time to the first streamed token.
    """

    inner: Backend
    allowance: int | None = None
    # Summed over every call, prompt tokens included (what settlement charges).
    usage: Usage = field(default_factory=Usage)
    engine_s: float = 0.0
    first_token_at: float | None = None
    started: float = field(default_factory=time.monotonic)
    # The model tier of ``inner``; calls a strategy sends to other tiers (``generate_via``)
    # draw on the same allowance, and usage and engine time are also kept per tier so
    # each tier's tokens are priced at its own rate.
    tier: str | None = None
    tier_usage: dict[str, Usage] = field(default_factory=dict)
    tier_engine_s: dict[str, float] = field(default_factory=dict)
    name: str = field(init=False)
    capabilities: Capabilities = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.inner.name
        self.capabilities = self.inner.capabilities
        if self.tier is None:
            self.tier = self.name

    @property
    def used(self) -> int:
        return self.usage.total_tokens

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    def _admit(self, req: GenRequest, backend: Backend | None = None) -> GenRequest:
        if self.allowance is None:
            return req
        prompt = estimate_prompt_tokens(backend or self.inner, req.messages)
        left = self.allowance - self.used - prompt
        per_sample = left // req.n
        if per_sample < 1:
            raise BudgetExhausted(
                "the tokens reserved for this request are spent; "
                "raise ponder.budget or max_tokens (within your quota) for a longer run",
                reason="quota",
            )
        update: dict[str, object] = {}
        if req.max_tokens > per_sample:
            update["max_tokens"] = per_sample
        if req.thinking is not None and req.thinking.budget_tokens > per_sample:
            update["thinking"] = req.thinking.model_copy(
                update={
                    "budget_tokens": per_sample,
                    "min_tokens": min(req.thinking.min_tokens, per_sample),
                }
            )
        return req.model_copy(update=update) if update else req

    def _mark_first(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()

    def _spent(self, tier: str, usage: Usage | None, seconds: float) -> None:
        self.engine_s += seconds
        self.tier_engine_s[tier] = self.tier_engine_s.get(tier, 0.0) + seconds
        if usage is not None:
            self.usage = self.usage + usage
            self.tier_usage[tier] = self.tier_usage.get(tier, Usage()) + usage

    async def generate(self, req: GenRequest) -> list[Generation]:
        return await self.generate_via(self.inner, req)

    async def generate_via(
        self, backend: Backend, req: GenRequest, tier: str | None = None
    ) -> list[Generation]:
        """One call to ``backend`` (another model tier, named ``tier``) under this allowance."""
        label = tier or self.tier or self.name
        admitted = self._admit(req, backend)
        t0 = time.monotonic()
        try:
            gens = await backend.generate(admitted)
        except BaseException:
            self._spent(label, None, time.monotonic() - t0)
            raise
        self._spent(label, Usage.sum(g.usage for g in gens), time.monotonic() - t0)
        # Without streaming, the first token reaches the caller with the whole answer.
        self._mark_first()
        return gens

    async def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        admitted = self._admit(req)
        t0 = time.monotonic()
        usage: Usage | None = None
        # Until the engine reports usage, one token per non-empty delta (as the meter does).
        seen_reasoning = seen_output = 0
        try:
            async for delta in self.inner.stream(admitted):
                if delta.text or delta.reasoning:
                    self._mark_first()
                seen_reasoning += bool(delta.reasoning)
                seen_output += bool(delta.text)
                if delta.usage is not None:
                    usage = delta.usage
                yield delta
        finally:
            if usage is None:
                usage = Usage(
                    reasoning=seen_reasoning,
                    output=seen_output,
                    reasoning_estimated=seen_reasoning > 0,
                    output_estimated=seen_output > 0,
                )
            self._spent(self.tier or self.name, usage, time.monotonic() - t0)


def applicable(limits: Sequence[Limit], subjects: Mapping[Scope, str | None]) -> list[Limit]:
    """The limits that bind a caller with these subjects (wildcards included)."""
    out: list[Limit] = []
    for lim in limits:
        subject = subjects.get(lim.scope)
        if subject is not None and lim.subject in (subject, "*"):
            out.append(lim)
    return out
