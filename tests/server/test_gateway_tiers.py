"""Model tiers in the gateway: the plan's tier gets the call, a cascade escalates to a
stronger tier under one reservation, every tier's tokens are priced at its own rate.

Runs the app in-process (httpx.ASGITransport) against a real store (SQLite and
PostgreSQL, see conftest.py) with one scripted fake backend per tier.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ponder.backends.fake import FunctionBackend, Reply
from ponder.budget.pricing import Price, PriceTable
from ponder.budget.quota import Limit, estimate_prompt_tokens
from ponder.config import RouterSettings, ServerSettings
from ponder.ledger import Store
from ponder.router.policy import Router
from ponder.server.app import create_app
from ponder.server.gateway import Gateway
from ponder.strategies import available_strategies
from ponder.types import GenRequest, Message, Usage

QUESTION = "What is 6 times 7?"
CODE = "Write a Python function that returns the nth Fibonacci number."
# USD per 1M tokens = micro-dollars per token: the strong tier costs ten times more.
SMALL_PRICE = Price(input=1.0, output=2.0)
LARGE_PRICE = Price(input=10.0, output=20.0)


def small_reply(req: GenRequest, i: int) -> Reply:
    # Unsure (exp(-3) = 0.05): a cascade escalates past it.
    return Reply("Answer: 41", logprob=-3.0)


def large_reply(req: GenRequest, i: int) -> Reply:
    return Reply("Answer: 42 because six sevens are forty two", logprob=-0.01)


def make_router() -> Router:
    settings = RouterSettings.model_validate(
        {"classes": {"codegen": {"bucket": "use", "strategy": "direct", "tier": "large"}}}
    )
    return Router(settings, strategies=available_strategies(), tiers=["small", "large"])


def tiered(store: Store | None, **settings: Any) -> tuple[httpx.AsyncClient, Gateway]:
    small = FunctionBackend(small_reply, name="small-model")
    large = FunctionBackend(large_reply, name="large-model")
    gateway = Gateway(
        small,
        ServerSettings(tier="small", **settings),
        store=store,
        prices=PriceTable(models={"small": SMALL_PRICE, "large": LARGE_PRICE}),
        router=make_router(),
        tiers={"small": small, "large": large},
        tier_models={"small": "small-model", "large": "large-model"},
    )
    app = create_app(small, gateway=gateway)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    return client, gateway


def calls(gateway: Gateway, tier: str) -> list[GenRequest]:
    backend = gateway.tiers[tier]
    assert isinstance(backend, FunctionBackend)
    return backend.calls


def metric_samples(gateway: Gateway) -> dict[tuple[str, ...], float]:
    """(sample name, tier[, bucket]) -> value, summed over the other labels."""
    out: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(gateway.metrics_text().decode()):
        for sample in family.samples:
            if sample.name not in METRICS:
                continue
            key = (sample.name, sample.labels["tier"])
            if "bucket" in sample.labels:
                key += (sample.labels["bucket"],)
            out[key] = out.get(key, 0.0) + sample.value
    return out


METRICS = ("ponder_requests_total", "ponder_tokens_total", "ponder_cost_usd_total")


def body(content: str = QUESTION, **extra: Any) -> dict[str, Any]:
    return {"model": "anything", "messages": [{"role": "user", "content": content}], **extra}


def usage_of(openai_usage: dict[str, Any]) -> Usage:
    reasoning = openai_usage["completion_tokens_details"]["reasoning_tokens"]
    return Usage(
        input=openai_usage["prompt_tokens"],
        reasoning=reasoning,
        output=openai_usage["completion_tokens"] - reasoning,
    )


async def test_the_plan_s_tier_gets_the_call_and_is_priced_and_recorded(store: Store) -> None:
    client, gateway = tiered(store)
    async with client:
        routed = await client.post("/v1/chat/completions", json=body(CODE))
        default = await client.post("/v1/chat/completions", json=body(QUESTION))
    assert routed.status_code == 200, routed.text
    assert routed.headers["x-ponder-class"] == "codegen"
    assert routed.headers["x-ponder-tier"] == "large"
    data = routed.json()
    assert data["model"] == "large-model" and data["ponder"]["tier"] == "large"
    assert [len(calls(gateway, t)) for t in ("small", "large")] == [1, 1]
    assert calls(gateway, "large")[0].messages[-1].content == CODE
    assert calls(gateway, "small")[0].messages[-1].content == QUESTION
    assert default.headers["x-ponder-tier"] == "small"
    assert default.json()["model"] == "small-model"

    rows = {r.id: r for r in store.rows()}
    big, small = rows[data["id"]], rows[default.json()["id"]]
    assert (big.tier, big.model, small.tier, small.model) == (
        "large", "large-model", "small", "small-model"
    )  # fmt: skip
    assert big.cost_micro == LARGE_PRICE.cost_micro(usage_of(data["usage"]))
    assert small.cost_micro == SMALL_PRICE.cost_micro(usage_of(default.json()["usage"]))
    assert data["ponder"]["cost_usd"] == pytest.approx(big.cost_micro / 1e6)
    assert data["ponder"]["tier_usage"] is None  # one tier: no breakdown
    metrics = gateway.metrics_text().decode()
    assert 'task_class="codegen",tier="large"' in metrics


async def test_a_request_names_a_tier_by_ponder_tier_tier_name_or_tier_model() -> None:
    client, gateway = tiered(None)
    async with client:
        by_option = await client.post("/v1/chat/completions", json=body(ponder={"tier": "large"}))
        by_name = await client.post("/v1/chat/completions", json={**body(), "model": "large"})
        by_model = await client.post(
            "/v1/chat/completions", json={**body(), "model": "large-model"}
        )
        # A model no tier serves keeps the default tier (clients always send some name).
        other = await client.post("/v1/chat/completions", json={**body(), "model": "gpt-4o"})
        # An explicit tier wins over the router's class policy (codegen -> large).
        explicit = await client.post(
            "/v1/chat/completions", json=body(CODE, ponder={"tier": "small"})
        )
    tiers = [r.headers["x-ponder-tier"] for r in (by_option, by_name, by_model, other, explicit)]
    assert tiers == ["large", "large", "large", "small", "small"]
    assert len(calls(gateway, "large")) == 3 and len(calls(gateway, "small")) == 2


async def test_streams_run_on_their_tier_too() -> None:
    client, gateway = tiered(None)
    async with client:
        r = await client.post(
            "/v1/chat/completions", json=body(stream=True, ponder={"tier": "large"})
        )
    assert r.status_code == 200 and r.headers["x-ponder-tier"] == "large"
    assert '"model":"large-model"' in r.text and '"tier":"large"' in r.text
    assert len(calls(gateway, "large")) == 1 and not calls(gateway, "small")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"ponder": {"tier": "huge"}}, "ponder.tier"),
        (
            {"ponder": {"strategy": "cascade", "params": {"strong_tier": "huge"}}},
            "ponder.params.strong_tier",
        ),
    ],
)
async def test_an_unknown_tier_is_a_400_before_anything_is_reserved(
    store: Store, extra: dict[str, Any], param: str
) -> None:
    _, secret = store.create_key("alice", scopes=["strategies"])
    store.set_limit(Limit("user", "alice", "tokens", "day", 10_000))
    client, gateway = tiered(store)
    async with client:
        r = await client.post(
            "/v1/chat/completions",
            json=body(**extra),
            headers={"authorization": f"Bearer {secret}"},
        )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param
    assert "'huge'" in error["message"] and "small, large" in error["message"]
    assert store.rows() == []
    assert store.counter("user", "alice", "tokens", "day") == (0, 0)
    assert not calls(gateway, "small") and not calls(gateway, "large")


async def test_models_lists_every_tier() -> None:
    client, _ = tiered(None)
    async with client:
        models = (await client.get("/v1/models")).json()["data"]
    assert [(m["id"], m["ponder"]["model"], m["ponder"]["default"]) for m in models] == [
        ("small", "small-model", True),
        ("large", "large-model", False),
    ]


CASCADE = {"strategy": "cascade", "params": {"strong_tier": "large", "rungs": ["direct", "tier"]}}


async def test_a_cascade_escalates_to_the_strong_tier_and_both_are_accounted(
    store: Store,
) -> None:
    _, secret = store.create_key("alice", scopes=["strategies"])
    store.set_limit(Limit("user", "alice", "tokens", "day", 100_000))
    client, gateway = tiered(store)
    async with client:
        r = await client.post(
            "/v1/chat/completions",
            json=body(ponder={**CASCADE, "budget": 200}),
            headers={"authorization": f"Bearer {secret}"},
        )
    assert r.status_code == 200, r.text
    data = r.json()
    # Tier 1 answered unsure, so the cascade climbed to tier 2, whose answer is returned.
    (first,) = calls(gateway, "small")
    (second,) = calls(gateway, "large")
    assert first.thinking is None and second.thinking is not None
    assert data["choices"][0]["message"]["content"].startswith("Answer: 42")
    assert data["ponder"]["tier"] == "small"  # the run's own tier; it escalated from there

    by_tier = data["ponder"]["tier_usage"]
    assert set(by_tier) == {"small", "large"}
    small_usage, large_usage = usage_of(by_tier["small"]), usage_of(by_tier["large"])
    assert small_usage.output == 2 and large_usage.output == 8  # words of each reply
    total = usage_of(data["usage"])
    assert total.total_tokens == small_usage.total_tokens + large_usage.total_tokens
    expected = SMALL_PRICE.cost_micro(small_usage) + LARGE_PRICE.cost_micro(large_usage)
    assert expected > SMALL_PRICE.cost_micro(total)  # tier 2 really is priced higher

    (row,) = store.rows()
    assert row.tier == "small" and row.cost_micro == expected
    assert row.input_tokens + row.output_tokens + row.reasoning_tokens == total.total_tokens
    assert set(row.plan["tiers"]) == {"small", "large"}
    assert row.plan["tiers"]["large"]["cost_usd"] == pytest.approx(
        LARGE_PRICE.cost_micro(large_usage) / 1e6
    )
    # One reservation, settled to what both tiers used.
    assert store.counter("user", "alice", "tokens", "day") == (total.total_tokens, 0)
    # Metrics: one request (under the run's tier), each tier's tokens and cost under its own.
    samples = metric_samples(gateway)
    assert samples[("ponder_requests_total", "small")] == 1
    assert ("ponder_requests_total", "large") not in samples
    assert samples[("ponder_tokens_total", "large", "output")] == 8
    assert samples[("ponder_tokens_total", "small", "output")] == 2
    assert samples[("ponder_cost_usd_total", "large")] == pytest.approx(
        LARGE_PRICE.cost_micro(large_usage) / 1e6
    )


async def test_the_reservation_is_priced_at_the_dearest_tier_the_run_may_call(
    store: Store,
) -> None:
    client, _ = tiered(store)
    async with client:
        r = await client.post("/v1/chat/completions", json=body(ponder={**CASCADE, "budget": 50}))
    assert r.status_code == 200, r.text
    (row,) = store.rows()
    prompt = estimate_prompt_tokens(
        FunctionBackend(small_reply), [Message(role="user", content=QUESTION)]
    )
    assert row.plan["reserved"]["cost"] == LARGE_PRICE.worst_case_micro(prompt, 50, 0.0)


async def test_the_strong_tier_never_exceeds_the_request_budget() -> None:
    client, gateway = tiered(None)
    async with client:
        r = await client.post("/v1/chat/completions", json=body(ponder={**CASCADE, "budget": 5}))
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["usage"]["completion_tokens"] <= 5
    (second,) = calls(gateway, "large")
    assert second.max_tokens <= 5 - 2  # what tier 1's two words left


TOML = """
[server]
tier = "small"

[tiers.small]
backend = "fake"
model = "small-model"
options = { replies = ["small answer"], name = "small-model" }

[tiers.large]
backend = "fake"
model = "large-model"
options = { replies = ["large answer here"], name = "large-model" }
price = { input = 10.0, output = 20.0 }

[router.classes.codegen]
bucket = "use"
strategy = "direct"
tier = "large"
"""


async def test_serve_builds_every_configured_tier(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from ponder import cli

    config = tmp_path / "ponder.toml"
    config.write_text(TOML)
    monkeypatch.setenv("PONDER_CONFIG", str(config))
    built: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: built.update(app=app))
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert cli.main(["serve", "--db", db]) == 0
    app = built["app"]
    gateway: Gateway = app.state.gateway
    assert list(gateway.tiers) == ["small", "large"] and gateway.tier == "small"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        models = (await c.get("/v1/models")).json()["data"]
        routed = await c.post("/v1/chat/completions", json=body(CODE))
        plain = await c.post("/v1/chat/completions", json=body())
    assert [m["id"] for m in models] == ["small", "large"]
    assert routed.json()["choices"][0]["message"]["content"] == "large answer here"
    assert routed.json()["model"] == "large-model"
    assert plain.json()["choices"][0]["message"]["content"] == "small answer"
    # [tiers.large].price applies to the large tier only (the small one is free).
    assert routed.json()["ponder"]["cost_usd"] == pytest.approx(
        LARGE_PRICE.cost_micro(usage_of(routed.json()["usage"])) / 1e6
    )
    assert plain.json()["ponder"]["cost_usd"] == 0
    assert gateway.store is not None
    assert sorted((r.tier, r.model) for r in gateway.store.rows()) == [
        ("large", "large-model"),
        ("small", "small-model"),
    ]
    await gateway.aclose()
    gateway.store.close()


async def test_a_streamed_cascade_reaches_the_strong_tier_too() -> None:
    client, gateway = tiered(None)
    async with client:
        r = await client.post(
            "/v1/chat/completions", json=body(stream=True, ponder={**CASCADE, "budget": 200})
        )
    assert r.status_code == 200 and r.headers["x-ponder-strategy"] == "cascade"
    assert "Answer: 42" in r.text and '"progress"' in r.text
    assert len(calls(gateway, "small")) == 1 and len(calls(gateway, "large")) == 1
