"""Admission: who is calling, what they may choose, the plan's worst case, the reservation.

Everything here happens before a model is called, so a refusal (400, 401, 403,
429) costs the caller nothing and leaves no ledger row.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ponder.backends.base import Backend
from ponder.budget.pricing import MICRO, Price
from ponder.budget.quota import Demand, Limit, Refusal, applicable, estimate_prompt_tokens
from ponder.config import ServerSettings
from ponder.errors import Forbidden, InvalidRequest, QuotaExceeded
from ponder.ledger.store import Reservation, Store
from ponder.server.auth import ANONYMOUS_SCOPES, Authenticator, Caller
from ponder.server.planning import Plan
from ponder.server.protocol import MAX_QUOTA_LIMIT, ChatCompletionRequest
from ponder.strategies import get_strategy, work_of
from ponder.types import Budget

__all__ = ["Admission", "Admitted", "dearest", "offload", "quota_error"]

_T = TypeVar("_T")


async def offload(store: Store | None, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Call a blocking store function: inline for SQLite, in a worker thread otherwise."""
    if store is None or store.dialect == "sqlite":
        # A SQLite transaction of this gateway takes tens of microseconds (WAL, no
        # fsync per commit): handing it to a worker thread and back cost ~0.6 ms of
        # CPU per hop, several times the call, and three hops a request.
        return fn(*args, **kwargs)
    # PostgreSQL calls wait on network round trips: keep the loop free meanwhile.
    return await asyncio.to_thread(fn, *args, **kwargs)


@dataclass(frozen=True)
class Admitted:
    """A request let in: its final plan, its worst case and the quota held for it."""

    id: str
    caller: Caller
    plan: Plan
    demand: Demand
    reservation: Reservation | None
    # The tier it runs on (the plan's, else the gateway's default).
    tier: str
    # Every model call is admitted against this many tokens (None: no hold to respect).
    allowance: int | None = field(default=None)


def quota_error(refusal: Refusal) -> QuotaExceeded:
    lim = refusal.limit
    return QuotaExceeded(
        refusal.message(),
        limit={
            "scope": lim.scope,
            "subject": refusal.subject,
            "metric": lim.metric,
            "window": lim.window,
            "limit": lim.limit,
        },
        usage={"used": refusal.used, "reserved": refusal.reserved, "requested": refusal.requested},
        resets_at=None if lim.window == "request" else refusal.resets_at,
        retry_after_s=None if lim.window == "request" else refusal.retry_after_s(),
        code="rate_limit_exceeded" if lim.window == "minute" else None,
    )


def dearest(prices: Sequence[Price]) -> Price:
    """Rates at least those of every price in ``prices`` (a bound for any mix of them)."""
    if len(prices) == 1:
        return prices[0]
    return Price(
        input=max(x.input for x in prices),
        output=max(x.output for x in prices),
        cached_input=max(x.cached_input_rate for x in prices),
        reasoning=max(x.reasoning_rate for x in prices),
        gpu_second=max(x.gpu_second for x in prices),
    )


class Admission:
    """Caller, scopes, per-request caps and the atomic reservation of a plan's worst case."""

    def __init__(
        self,
        *,
        store: Store | None,
        settings: ServerSettings,
        auth: Authenticator,
        tiers: Mapping[str, Backend],
        default_tier: str,
        price_of: Callable[[str], Price],
    ) -> None:
        self.store = store
        self.settings = settings
        self.auth = auth
        self.tiers = tiers
        self.default_tier = default_tier
        self.price_of = price_of

    @property
    def anonymous_scopes(self) -> frozenset[str]:
        if self.settings.allow_reasoning:
            return ANONYMOUS_SCOPES
        return frozenset({"strategies"})

    async def authenticate(self, headers: Mapping[str, str] | None) -> Caller:
        scopes = self.anonymous_scopes
        return await offload(self.store, self.auth.authenticate, headers, anonymous_scopes=scopes)

    async def caller_and_limits(
        self, headers: Mapping[str, str] | None
    ) -> tuple[Caller, list[Limit] | None]:
        """authenticate() and the quota limits in one call: a chat request needs both,
        and each hop to a worker thread costs the loop a wake-up."""
        scopes = self.anonymous_scopes

        def both() -> tuple[Caller, list[Limit] | None]:
            caller = self.auth.authenticate(headers, anonymous_scopes=scopes)
            return caller, None if self.store is None else self.store.limits()

        return await offload(self.store, both)

    @staticmethod
    def check_scopes(caller: Caller, request: ChatCompletionRequest) -> None:
        opts = request.ponder
        if (opts.strategy or opts.params) and not caller.may("strategies"):
            raise Forbidden(
                f"key {caller.label} may not choose strategies (ponder.strategy / ponder.params); "
                "drop them and use reasoning_effort, or ask an admin for the 'strategies' scope",
                param="ponder.strategy" if opts.strategy else "ponder.params",
            )

    def reach(self, p: Plan) -> list[str]:
        """The tiers a run may call: its own, and those its strategy declares (a cascade's)."""
        tier = p.tier or self.default_tier
        extra = [t for t in work_of(p.instance).tiers if t in self.tiers and t != tier]
        return [tier, *extra]

    async def admit(
        self,
        caller: Caller,
        p: Plan,
        *,
        request_id: str,
        limits: list[Limit] | None = None,
    ) -> Admitted:
        """Bound the plan to the caller's caps and reserve its worst case (or raise 429)."""
        p, demand = await self.bound(p, caller, limits)
        reservation = await self.reserve(caller, demand, p, limits)
        held = reservation is not None and bool(reservation.items)
        return Admitted(
            id=request_id,
            caller=caller,
            plan=p,
            demand=demand,
            reservation=reservation,
            tier=p.tier or self.default_tier,
            allowance=demand.tokens if held else None,
        )

    async def bound(
        self, p: Plan, caller: Caller, limits: list[Limit] | None = None
    ) -> tuple[Plan, Demand]:
        """The plan's worst case, after clipping it to the caller's per-request caps."""
        caps: dict[str, int] = {}
        if self.store is not None:
            if limits is None:
                limits = await offload(self.store, self.store.limits)
            for lim in applicable(limits, caller.subjects()):
                if lim.window == "request":
                    caps[lim.metric] = min(caps.get(lim.metric, lim.limit), lim.limit)
        work = work_of(p.instance)
        # A request's n > 1: that many answers per call, each up to max_tokens.
        samples, calls = max(work.samples, 1) * p.sampling.choices, max(work.calls, 1)
        reach = self.reach(p)
        prompt = max(estimate_prompt_tokens(self.tiers[t], p.messages) for t in reach) * calls
        gen = p.budget.tokens if p.budget.tokens is not None else samples * p.sampling.max_tokens
        # The cap that last lowered the generated-token budget, if any.
        clipped_by: str | None = None
        deadline = p.budget.deadline_s

        cap = caps.get("reasoning_tokens")
        if cap is not None and p.thinking_budget and p.thinking_budget * samples > cap:
            per_sample = cap // samples
            params = {**p.params, "thinking_budget": per_sample}
            p = dataclasses.replace(
                p,
                params=params,
                instance=get_strategy(p.strategy, **params),
                thinking_budget=per_sample,
            )
        cap = caps.get("tokens")
        if cap is not None and prompt + gen > cap:
            gen, clipped_by = cap - prompt, "tokens"
        cap = caps.get("cost")
        # Any tier the run may call can be the one that spends: bound by the dearest rates.
        price = dearest([self.price_of(t) for t in reach])
        if cap is not None:
            token_rates = price.input or price.output or price.reasoning_rate
            if price.gpu_second > 0 and deadline is not None:
                gpu_allow = cap // 2 if token_rates else cap
                deadline = min(deadline, gpu_allow / (price.gpu_second * MICRO))
            gpu_worst = math.ceil((deadline or 0) * price.gpu_second * MICRO)
            afford = price.tokens_for_micro(cap - gpu_worst, prompt)
            if afford is not None and afford < gen:
                gen, clipped_by = afford, "cost"
        if clipped_by is not None and gen < 1:
            raise QuotaExceeded(
                f"the per-request {clipped_by} cap ({caps[clipped_by]}) leaves no room to "
                f"generate after the prompt (about {prompt} tokens); shorten the prompt or "
                "ask an admin to raise the cap",
                limit={"metric": clipped_by, "window": "request", "limit": caps[clipped_by]},
                usage={"used": 0, "reserved": 0, "requested": prompt},
                resets_at=None,
                retry_after_s=None,
            )
        if clipped_by is not None or deadline != p.budget.deadline_s:
            tokens = gen if clipped_by is not None else p.budget.tokens
            p = dataclasses.replace(p, budget=Budget(tokens=tokens, deadline_s=deadline))
        thinking = p.thinking_budget
        demand = Demand(
            requests=1,
            tokens=prompt + gen,
            reasoning_tokens=min(gen, thinking * samples) if thinking else 0,
            cost=price.worst_case_micro(prompt, gen, deadline or 0.0),
        )
        too_big = {m: v for m, v in demand.as_dict().items() if v > MAX_QUOTA_LIMIT}
        if too_big:
            # Sums of this against quota counters would overflow the store's 64-bit
            # columns. Here, not in admit: queued jobs are bounded at enqueue too.
            metric, value = next(iter(too_big.items()))
            raise InvalidRequest(
                f"the request's worst case ({value} {metric}) is beyond what any quota can "
                "hold; lower max_tokens, ponder.budget or the strategy's sample count",
                param="max_tokens",
            )
        return p, demand

    async def reserve(
        self, caller: Caller, demand: Demand, p: Plan, limits: list[Limit] | None = None
    ) -> Reservation | None:
        if self.store is None:
            return None
        deadline = p.budget.deadline_s or max(
            self.settings.deadline_interactive_s, self.settings.deadline_async_s
        )
        ttl = deadline + 60.0
        result = await offload(
            self.store, self.store.reserve, caller.subjects(), demand, ttl_s=ttl, limits=limits
        )
        if isinstance(result, Refusal):
            raise quota_error(result)
        return result
