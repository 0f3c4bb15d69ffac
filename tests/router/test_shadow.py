"""Shadow evaluation: a sampled verifiable request also runs a counterfactual plan in the
background, charged to the shadow subject only, its row linked to the original."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from ponder.backends.fake import FakeBackend, FunctionBackend, Reply
from ponder.budget.quota import Limit
from ponder.config import RouterSettings, ServerSettings, ShadowSettings
from ponder.ledger import Store
from ponder.router.policy import Router
from ponder.router.retrain import examples_from_rows
from ponder.router.shadow import ShadowSampler
from ponder.server.app import create_app
from ponder.server.gateway import Gateway
from ponder.strategies import available_strategies
from ponder.types import Generation, GenRequest

MATH = "What is 17*23? Answer with just the number."
LOOKUP = "What is the capital of France?"


@pytest.fixture(autouse=True)
def no_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PONDER_CONFIG", str(tmp_path / "none.toml"))


def make_gateway(store: Store, shadow: ShadowSettings) -> Gateway:
    backend = FakeBackend([Reply("The answer is 391")])
    router = Router(RouterSettings(shadow=shadow), strategies=available_strategies())
    return Gateway(backend, ServerSettings(require_auth=True), store=store, router=router)


def client_for(gateway: Gateway) -> httpx.AsyncClient:
    app = create_app(gateway.backend, gateway=gateway)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def ask(client: httpx.AsyncClient, secret: str, prompt: str) -> str:
    """One chat request as the key ``secret``; it must succeed. Its completion id."""
    r = await client.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": "m", "messages": [{"role": "user", "content": prompt}]},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def used(store: Store, scope: str, subject: str) -> tuple[int, int]:
    return store.counter(scope, subject, "tokens", "day")  # type: ignore[arg-type]


async def test_a_shadow_run_is_charged_to_its_own_subject_and_linked(store: Store) -> None:
    record, secret = store.create_key("alice", team="red")
    for scope, subject in (("key", record.id), ("user", "alice"), ("team", "red"),
                           ("team", "ponder-shadow")):  # fmt: skip
        store.set_limit(Limit(scope, subject, "tokens", "day", 1_000_000))  # type: ignore[arg-type]
    gateway = make_gateway(store, ShadowSettings(rate=1.0))
    async with client_for(gateway) as client:
        rid = await ask(client, secret, MATH)
        caller_after_request = {
            s: used(store, *s) for s in (("key", record.id), ("user", "alice"), ("team", "red"))
        }
        assert all(u > 0 and held == 0 for u, held in caller_after_request.values())
        await gateway.drain_shadows()
    # The shadow spent tokens, on the shadow subject only.
    assert {s: used(store, *s) for s in caller_after_request} == caller_after_request
    shadow_used, shadow_held = used(store, "team", "ponder-shadow")
    assert shadow_used > 0 and shadow_held == 0
    rows = {row.id: row for row in store.rows()}
    original, shadow = rows[rid], rows[f"{rid}-shadow"]
    assert len(rows) == 2 and gateway.shadow is not None and gateway.shadow.started == 1
    assert shadow.features is not None and shadow.features["shadow_of"] == original.id
    assert shadow.features["shadow_plan"] == "search"
    assert original.features is not None and "shadow_of" not in original.features
    assert (shadow.key_id, shadow.user, shadow.team) == (None, None, "ponder-shadow")
    assert shadow.task_class == original.task_class == "math"
    # The counterfactual of the single-tier gateway: search (self-consistency).
    assert (original.strategy, shadow.strategy) == ("cascade", "self_consistency")
    # The cascade records the rungs it ran (one: no escalation).
    assert original.plan["rungs_run"] == ["program"] and "rungs_run" not in shadow.plan
    assert shadow.cost_micro >= 0 and shadow.output_tokens > 0
    # Served-traffic stats leave the counterfactual out.
    from ponder.ledger.stats import class_stats

    (math_stats,) = class_stats(store.rows())
    assert math_stats.requests == 1 and math_stats.cost_usd == original.cost_micro / 1e6
    # Retraining reads them as one request under two plans.
    shadow.verdict = original.verdict = "correct"
    examples, _ = examples_from_rows([original, shadow])
    assert {(e.request, e.plan, e.shadow) for e in examples} == {
        (original.id, "program", False),
        (original.id, "search", True),
    }


async def test_with_a_list_of_plans_each_shadow_records_the_one_it_ran(store: Store) -> None:
    _, secret = store.create_key("dave")
    gateway = make_gateway(store, ShadowSettings(rate=1.0, plan=["search", "think"]))
    assert gateway.shadow is not None
    gateway.shadow.rng = random.Random(11)
    async with client_for(gateway) as client:
        for _ in range(8):
            await ask(client, secret, MATH)
            await gateway.drain_shadows()
    shadows = [r for r in store.rows() if (r.features or {}).get("shadow_of")]
    assert len(shadows) == 8
    ran = {(r.features or {})["shadow_plan"]: r.strategy for r in shadows}
    assert ran == {"search": "self_consistency", "think": "cot"}


async def test_classes_without_a_rate_or_a_verifier_get_no_shadow(store: Store) -> None:
    _, secret = store.create_key("bob")
    gateway = make_gateway(store, ShadowSettings(rate=1.0, classes={"lookup": 1.0, "math": 0.0}))
    async with client_for(gateway) as client:
        for prompt in (MATH, LOOKUP):  # math: rate 0; lookup: no verifier to learn from
            await ask(client, secret, prompt)
        await gateway.drain_shadows()
    assert len(store.rows()) == 2
    assert gateway.shadow is not None and gateway.shadow.started == 0
    # Off by default: no sampler at all.
    assert make_gateway(store, ShadowSettings()).shadow is None


def test_a_shadow_never_starts_while_interactive_traffic_or_another_shadow_runs() -> None:
    sampler = ShadowSampler(ShadowSettings(rate=1.0))
    sampler.interactive = 1
    assert not sampler.slot()
    sampler.interactive = 0
    assert sampler.slot()
    assert not sampler.slot()  # one at a time
    sampler.release()
    assert sampler.slot()
    assert (sampler.started, sampler.skipped_busy) == (2, 2)


def test_the_sample_follows_the_rate_and_skips_the_counterfactual_itself() -> None:
    sampler = ShadowSampler(ShadowSettings(rate=0.25), rng=random.Random(7))
    plan = SimpleNamespace(verifier=object(), route=object(), strategy="direct", tier=None,
                           params={}, task_class="math")  # fmt: skip
    picks = [sampler.pick(plan) for _ in range(4000)]
    assert set(picks) == {None, "search"}
    assert 0.22 < picks.count("search") / len(picks) < 0.28
    searched = SimpleNamespace(**{**vars(plan), "strategy": "self_consistency"})
    assert all(sampler.pick(searched) is None for _ in range(50))


def test_a_plan_that_needs_a_missing_tier_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="needs a tier named 'strong'"):
        ShadowSampler(ShadowSettings(rate=0.1, plan="strong"))
    with pytest.raises(ValueError, match="unknown plan 'biggest'"):
        ShadowSampler(ShadowSettings(rate=0.1, plan="biggest"))
    assert ShadowSampler(ShadowSettings(rate=0.1), tiers=["small", "strong"]).plan == "strong"


class SlowLookups(FunctionBackend):
    """Answers at once, except lookups, which wait until the test lets them finish
    (interactive traffic in flight, without depending on timing)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def generate(self, req: GenRequest) -> list[Generation]:
        if any("capital" in m.content for m in req.messages):
            self.entered.set()
            await self.release.wait()
        return await super().generate(req)


async def test_a_sampled_shadow_is_dropped_while_an_interactive_request_is_in_flight(
    store: Store,
) -> None:
    _, secret = store.create_key("carol")
    backend = SlowLookups(lambda req, i: Reply("The answer is 391"))
    router = Router(
        RouterSettings(shadow=ShadowSettings(rate=1.0)), strategies=available_strategies()
    )
    gateway = Gateway(backend, ServerSettings(require_auth=True), store=store, router=router)

    async with client_for(gateway) as client:
        # The math answer (sampled) ends while the lookup is still running.
        lookup = asyncio.create_task(ask(client, secret, LOOKUP))
        await asyncio.wait_for(backend.entered.wait(), timeout=30)
        await ask(client, secret, MATH)
        await gateway.drain_shadows()
        backend.release.set()
        await lookup
        assert gateway.shadow is not None
        assert (gateway.shadow.started, gateway.shadow.skipped_busy) == (0, 1)
        # With nothing else in flight the next sample runs.
        await ask(client, secret, MATH)
        await gateway.drain_shadows()
    assert (gateway.shadow.started, gateway.shadow.skipped_busy) == (1, 1)
    assert sum(1 for r in store.rows() if (r.features or {}).get("shadow_of")) == 1
    # The drop is visible where operators look: the shadow rate that reached the ledger.
    metrics = gateway.metrics_text().decode()
    assert 'ponder_shadow_runs_total{outcome="started"} 1.0' in metrics
    assert 'ponder_shadow_runs_total{outcome="skipped_busy"} 1.0' in metrics


async def test_with_shadows_on_a_chat_keeps_its_request_id_and_settlement_hook(
    store: Store,
) -> None:
    # The Responses surface stores conversations through on_settle: sampling shadows
    # must not drop it, nor the caller's request id.
    record, secret = store.create_key("bob", team="blue")
    gateway = make_gateway(store, ShadowSettings(rate=1.0))
    seen: list[str] = []
    result = await gateway.chat(
        {"model": "m", "messages": [{"role": "user", "content": LOOKUP}]},
        {"authorization": f"Bearer {secret}"},
        request_id="req-kept",
        on_settle=lambda conn, response: seen.append(response.id),
    )
    assert getattr(result, "id", None) == "req-kept"
    assert seen == ["req-kept"]
    assert store.row("req-kept") is not None
