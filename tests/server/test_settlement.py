"""Settlement: the row builder is pure; its effects are the Settler's, named and explicit."""

from __future__ import annotations

import dataclasses

from ponder.backends.fake import FakeBackend
from ponder.budget.pricing import Price, PriceTable
from ponder.config import ServerSettings
from ponder.server.auth import Caller
from ponder.server.execution import Execution, RunState
from ponder.server.gateway import Gateway
from ponder.server.parsing import parse_request
from ponder.server.planning import plan
from ponder.server.settlement import build_row


async def admitted_run(gateway: Gateway) -> RunState:
    request = parse_request({"model": "fake", "messages": [{"role": "user", "content": "2+2?"}]})
    p = plan(request, gateway.settings)
    admitted = await gateway.admission.admit(Caller(user="ana"), p, request_id="chatcmpl-t")
    state = RunState.start(admitted, gateway.tiers[admitted.tier])
    await Execution(state, gateway.tiers).outcome()
    return state


async def test_build_row_prices_the_run_and_changes_nothing() -> None:
    prices = PriceTable(default=Price(input=1.0, output=2.0))
    gateway = Gateway(FakeBackend(["The answer is 4"]), ServerSettings(), prices=prices)
    state = await admitted_run(gateway)
    usage = state.guard.usage
    kwargs = dict(
        status="ok",
        http_status=200,
        truncated=False,
        error_code=None,
        price_of=gateway.price_of,
        model="fake",
        features=None,
        ended=state.started + 0.25,
    )
    first, again = build_row(state, **kwargs), build_row(state, **kwargs)
    # Same state, same row (but for its wall-clock stamp): building it changed nothing.
    assert dataclasses.replace(first.row, at=0) == dataclasses.replace(again.row, at=0)
    assert (first.actual, first.tier_costs) == (again.actual, again.tier_costs)
    assert not state.settled
    assert first.cost_micro == usage.input * 1 + (usage.output + usage.reasoning) * 2 > 0
    assert first.actual.cost == first.cost_micro and first.actual.tokens == usage.total_tokens
    assert first.row.latency_ms == 250.0 and first.row.user == "ana"
    assert first.tier_costs == {state.tier: first.cost_micro}


async def test_settle_commits_marks_settled_and_observes() -> None:
    gateway = Gateway(FakeBackend(["The answer is 4"]), ServerSettings())
    state = await admitted_run(gateway)
    settlement = gateway.settler.price(state, status="ok", http_status=200, truncated=False)
    assert not state.settled and b'status="ok"' not in gateway.metrics_text()
    await gateway.settler.settle(state, settlement)
    assert state.settled
    assert b'status="ok"' in gateway.metrics_text()
    # An abandoned-stream settlement after that is a no-op: one row, one observation.
    gateway.settler.settle_abandoned(state, status="cancelled")
    assert b'status="cancelled"' not in gateway.metrics_text()
