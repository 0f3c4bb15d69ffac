"""Settlement: price what a run spent, write its ledger row, then tell metrics and alerts.

:func:`build_row` is pure: it reads a run's state and returns the row and the
actual demand, nothing else. The effects are named and explicit in
:class:`Settler`: ``commit`` (the store: settle the reservation and insert the row
in one transaction), ``observe`` (metrics, alerts, traces), and ``settle``, which
does both and marks the run settled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ponder.budget.pricing import Price, to_usd
from ponder.budget.quota import Demand
from ponder.errors import PonderError
from ponder.ledger.store import Crossing, LedgerRow, Store
from ponder.router.policy import Router
from ponder.server.admission import offload
from ponder.server.execution import RunState
from ponder.server.output import count_guardrails, guardrail_record
from ponder.server.planning import Plan
from ponder.server.protocol import ErrorResult, error_result, internal_error
from ponder.telemetry.alerts import Alert, Alerts
from ponder.telemetry.metrics import GatewayMetrics
from ponder.telemetry.otel import OtelTracer
from ponder.types import Usage

__all__ = ["Settlement", "Settler", "build_row", "ledger_features", "tier_costs", "tier_usage"]

logger = logging.getLogger("ponder.server")

# Called inside the settlement transaction (a queued job commits its result with its row).
Also = Callable[[Any], None]


@dataclass(frozen=True)
class Settlement:
    """A finished run, priced: its ledger row, what it actually used, its cost per tier."""

    row: LedgerRow
    actual: Demand
    tier_costs: dict[str, int]

    @property
    def cost_micro(self) -> int:
        return self.row.cost_micro


def tier_costs(state: RunState, price_of: Callable[[str], Price]) -> dict[str, int]:
    """Micro-dollars per tier the run called (its own tier even when it called none)."""
    guard = state.guard
    used = {state.tier, *guard.tier_usage, *guard.tier_engine_s}
    return {
        t: price_of(t).cost_micro(guard.tier_usage.get(t, Usage()), guard.tier_engine_s.get(t, 0.0))
        for t in sorted(used)
    }


def tier_usage(state: RunState, costs: dict[str, int]) -> dict[str, Any] | None:
    """Per tier usage and cost, when a run called more than one tier (else None)."""
    guard = state.guard
    if len(set(guard.tier_usage) | {state.tier}) < 2:
        return None
    return {
        t: {**u.to_openai(), "cost_usd": to_usd(costs.get(t, 0))}
        for t, u in guard.tier_usage.items()
    }


def _tier_record(state: RunState, costs: dict[str, int]) -> dict[str, Any]:
    """What the ledger row's plan adds about tiers, a cascade's rungs and a continued job."""
    record: dict[str, Any] = {}
    by_tier = tier_usage(state, costs)
    if by_tier is not None:
        record["tiers"] = by_tier
    if state.rungs is not None:
        record["rungs_run"] = state.rungs
    if state.job is not None:
        record["continued_as"] = state.job.model_dump()
    elif state.job_error is not None:
        record["continue_error"] = state.job_error
    return record


def ledger_features(
    p: Plan, router: Router | None, verification: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The router's view of the request, for ``ponder route train --from-ledger``.

    Never the prompt text unless the operator set ``router.record_prompts``.
    """
    route = p.route
    if route is None or router is None:
        return None
    data: dict[str, Any] = {
        "v": 1,
        "features": route.features.as_dict(),
        "score": route.score,
        "scorer": route.scorer,
        "bucket": route.bucket,
    }
    if router.settings.record_prompts:
        data["text"] = p.prompt
    if verification is not None:
        data["verification"] = verification
    if p.shadow_of is not None:
        data["shadow_of"] = p.shadow_of
        if p.shadow_plan is not None:
            data["shadow_plan"] = p.shadow_plan
    return data


def build_row(
    state: RunState,
    *,
    status: str,
    http_status: int,
    truncated: bool,
    error_code: str | None,
    price_of: Callable[[str], Price],
    model: str,
    features: dict[str, Any] | None,
    ended: float,
) -> Settlement:
    """The ledger row and actual demand of a run that ended at ``ended`` (monotonic)."""
    p, guard = state.plan, state.guard
    usage = guard.usage
    # Each tier's tokens and engine time at that tier's price.
    costs = tier_costs(state, price_of)
    cost = sum(costs.values())
    ttft = guard.ttft_s
    row = LedgerRow(
        id=state.id,
        task_class=p.task_class,
        strategy=p.strategy,
        plan={
            "params": p.params,
            "budget": p.budget.tokens,
            "deadline_s": p.budget.deadline_s,
            "thinking_budget": p.thinking_budget,
            "max_tokens": p.sampling.max_tokens,
            "stream": p.stream,
            "reserved": state.admitted.demand.as_dict(),
            **guardrail_record(p, state.screened),
            **_tier_record(state, costs),
            **_upstream_record(state),
        },
        status=status,
        http_status=http_status,
        key_id=state.caller.key_id,
        user=state.caller.user,
        team=state.caller.team,
        session=state.caller.session,
        tier=state.tier,
        model=model,
        error_code=error_code or ("content_filter" if state.screened.refused else None),
        input_tokens=usage.input,
        cached_input_tokens=usage.cached_input,
        reasoning_tokens=usage.reasoning,
        output_tokens=usage.output,
        estimated=usage.input_estimated or usage.reasoning_estimated or usage.output_estimated,
        cost_micro=cost,
        engine_s=guard.engine_s,
        latency_ms=(ended - state.started) * 1000,
        ttft_ms=None if ttft is None else ttft * 1000,
        truncated=truncated,
        verdict=state.verdict,
        features=features,
    )
    actual = Demand(
        requests=1, tokens=usage.total_tokens, reasoning_tokens=usage.reasoning, cost=cost
    )
    return Settlement(row=row, actual=actual, tier_costs=costs)


def _upstream_record(state: RunState) -> dict[str, Any]:
    """The run's upstream attempts, errors and dropped usage, when it reached an upstream."""
    report = state.upstream
    if not report.attempts and not report.anomalies:
        return {}
    return {"upstream": report.summary()}


class Settler:
    """The settlement effects of the gateway: store, metrics, alerts, traces."""

    def __init__(
        self,
        *,
        store: Store | None,
        metrics: GatewayMetrics,
        alerts: Alerts,
        otel: OtelTracer | None,
        thresholds: Sequence[float],
        price_of: Callable[[str], Price],
        model_of: Callable[[str], str],
        router: Router | None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.alerts = alerts
        self.otel = otel
        self.thresholds = tuple(thresholds)
        self.price_of = price_of
        self.model_of = model_of
        self.router = router

    def price(
        self,
        state: RunState,
        *,
        status: str,
        http_status: int,
        truncated: bool,
        error_code: str | None = None,
    ) -> Settlement:
        """:func:`build_row` for this gateway's prices, models and router (no effects)."""
        return build_row(
            state,
            status=status,
            http_status=http_status,
            truncated=truncated,
            error_code=error_code,
            price_of=self.price_of,
            model=self.model_of(state.tier),
            features=ledger_features(state.plan, self.router, state.verification),
            ended=time.monotonic(),
        )

    def commit(
        self, state: RunState, settlement: Settlement, also: Also | None = None
    ) -> list[Crossing]:
        """Settle the reservation to actual usage and insert the row (one transaction)."""
        if self.store is None:
            return []
        reservation = state.admitted.reservation
        if reservation is None:
            self.store.insert_row(settlement.row, also=also)
            return []
        return self.store.settle(
            reservation, settlement.actual, settlement.row, thresholds=self.thresholds, also=also
        )

    def observe(
        self, state: RunState, settlement: Settlement, crossings: Sequence[Crossing]
    ) -> None:
        """Metrics, the runaway, quota and usage-anomaly alerts, the trace of a settled run."""
        p, usage, row = state.plan, state.guard.usage, settlement.row
        clamped = state.upstream.clamped_tokens
        for attempt in state.upstream.attempts:
            self.metrics.upstream_attempts.labels(state.tier, attempt.error or "ok").inc()
        if clamped:
            self.metrics.usage_clamped.labels(state.tier).inc(clamped)
            self.alerts.emit(
                Alert(
                    "usage_anomaly",
                    f"request {state.id}: upstreams reported {clamped} tokens more than "
                    f"its calls could use (tier {state.tier!r}); they were not charged",
                    {"request_id": state.id, "tier": state.tier, "clamped_tokens": clamped},
                )
            )
        count_guardrails(self.metrics, p, state.screened)
        costs = settlement.tier_costs
        by_tier = None
        if len(costs) > 1:
            by_tier = {
                t: (state.guard.tier_usage.get(t, Usage()), to_usd(c)) for t, c in costs.items()
            }
        self.metrics.observe(
            task_class=p.task_class,
            tier=state.tier,
            strategy=p.strategy,
            caller=state.caller.label,
            status=row.status,
            usage=usage,
            cost_usd=to_usd(row.cost_micro),
            latency_s=row.latency_ms / 1000,
            ttft_s=None if row.ttft_ms is None else row.ttft_ms / 1000,
            by_tier=by_tier,
        )
        if row.status == "ok":
            self.alerts.request_finished(
                task_class=p.task_class,
                reasoning_tokens=usage.reasoning,
                request_id=state.id,
                caller=state.caller.label,
            )
        for c in crossings:
            self.alerts.quota_crossed(
                scope=c.limit.scope,
                subject=c.subject,
                metric=c.limit.metric,
                window=c.limit.window,
                limit=c.limit.limit,
                used=c.used,
                threshold=c.threshold,
            )
        if self.otel is not None:
            self.otel.record(row, usage)

    async def settle(
        self, state: RunState, settlement: Settlement, also: Also | None = None
    ) -> None:
        """Commit (before the caller hears back), mark the run settled, observe it."""
        crossings = await offload(self.store, self.commit, state, settlement, also)
        state.settled = True
        self.observe(state, settlement, crossings)

    def settle_abandoned(self, state: RunState, *, status: str) -> None:
        """Blocking settlement of a stream the client abandoned (no await is safe there)."""
        if state.settled:
            return
        settlement = self.price(
            state, status=status, http_status=499, truncated=True, error_code="client_closed"
        )
        try:
            crossings = self.commit(state, settlement)
        except PonderError:
            logger.exception("could not settle abandoned request %s", state.id)
            state.settled = True
            return
        state.settled = True
        self.observe(state, settlement, crossings)

    async def fail(
        self,
        state: RunState,
        exc: BaseException,
        on_settle: Callable[[Any, ErrorResult], None] | None = None,
    ) -> ErrorResult:
        """A run that failed: settle what it spent, then report the error as a value."""
        result = error_result(exc) if isinstance(exc, PonderError) else internal_error(exc)
        also: Also | None = None
        if on_settle is not None:
            hook = on_settle

            def also(conn: Any) -> None:
                hook(conn, result)

        code = result.body["error"].get("code")
        if result.status in (502, 503, 504):
            self.alerts.upstream_error(state.tier, str(result.body["error"]["message"])[:200])
        settlement = self.price(
            state,
            status="error",
            http_status=result.status,
            truncated=True,
            error_code=str(code) if code else None,
        )
        try:
            await self.settle(state, settlement, also)
        except PonderError as store_exc:
            return error_result(store_exc)
        return result
