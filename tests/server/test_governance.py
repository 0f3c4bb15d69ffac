"""The governed gateway: auth, scopes, quotas with reservation, ledger, metrics, alerts.

Runs in-process through httpx.ASGITransport against a real store (SQLite and
PostgreSQL, see conftest.py) and the shipped fake backends.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from ponder.backends.fake import FakeBackend, FunctionBackend, Reply
from ponder.budget.pricing import Price, PriceTable
from ponder.budget.quota import Limit
from ponder.config import ServerSettings
from ponder.ledger import Store
from ponder.server.app import create_app
from ponder.server.gateway import Gateway
from ponder.telemetry.alerts import Alerts
from ponder.types import GenRequest

QUESTION = "What is 2+2?"  # 3 words, 12 bytes
ANSWER = Reply("The answer is 4", reasoning="two plus two makes four")  # 4 out, 5 reasoning


def governed(
    store: Store | None,
    backend: Any = None,
    *,
    prices: PriceTable | None = None,
    alerts: Alerts | None = None,
    **settings: Any,
) -> tuple[httpx.AsyncClient, Gateway]:
    backend = backend or FakeBackend([ANSWER])
    gateway = Gateway(
        backend, ServerSettings(**settings), store=store, prices=prices, alerts=alerts
    )
    app = create_app(backend, gateway=gateway)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    return client, gateway


def body(content: str = QUESTION, **extra: Any) -> dict[str, Any]:
    return {"model": "fake", "messages": [{"role": "user", "content": content}], **extra}


def bearer(secret: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}", **extra}


# --------------------------------------------------------------------------- auth


async def test_open_until_a_key_exists_then_keys_are_required(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client, _ = governed(store)
    async with client:
        # A fresh gateway needs no setup; OpenAI clients' placeholder keys are ignored.
        r = await client.post("/v1/chat/completions", json=body(), headers=bearer("unused"))
        assert r.status_code == 200
        _, secret = store.create_key("alice", team="ml")
        r = await client.post("/v1/chat/completions", json=body())
        assert r.status_code == 401
        assert "Authorization: Bearer" in r.json()["error"]["message"]
        r = await client.post("/v1/chat/completions", json=body(), headers=bearer("pk-wrong"))
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = await client.post("/v1/chat/completions", json=body(), headers=bearer(secret))
        assert r.status_code == 200
    assert secret not in caplog.text
    (row,) = [x for x in store.rows() if x.user == "alice"]
    assert row.team == "ml" and row.key_id is not None


async def test_require_auth_closes_a_gateway_without_keys(store: Store) -> None:
    client, _ = governed(store, require_auth=True)
    async with client:
        r = await client.post("/v1/chat/completions", json=body())
    assert r.status_code == 401


async def test_revoked_key_is_refused(store: Store) -> None:
    record, secret = store.create_key("alice")
    client, _ = governed(store)
    async with client:
        assert (
            await client.post("/v1/chat/completions", json=body(), headers=bearer(secret))
        ).status_code == 200
        store.revoke_key(record.id)
        r = await client.post("/v1/chat/completions", json=body(), headers=bearer(secret))
    assert r.status_code == 401


async def test_scopes_gate_strategies_and_reasoning(store: Store) -> None:
    _, plain = store.create_key("bob")
    _, power = store.create_key("carol", scopes=["strategies", "reasoning"])
    client, _ = governed(store)
    async with client:
        r = await client.post(
            "/v1/chat/completions",
            json=body(ponder={"strategy": "self_consistency"}),
            headers=bearer(plain),
        )
        assert r.status_code == 403
        assert "'strategies' scope" in r.json()["error"]["message"]
        asked = body(reasoning_effort="low", ponder={"include_reasoning": True})
        hidden = await client.post("/v1/chat/completions", json=asked, headers=bearer(plain))
        shown = await client.post("/v1/chat/completions", json=asked, headers=bearer(power))
    assert "reasoning_content" not in hidden.json()["choices"][0]["message"]
    assert shown.json()["choices"][0]["message"]["reasoning_content"] == ANSWER.reasoning


async def test_session_header_reaches_quota_and_ledger(store: Store) -> None:
    store.set_limit(Limit("session", "*", "requests", "day", 1))
    client, _ = governed(store)
    async with client:
        h = {"x-ponder-session": "s-1"}
        assert (
            await client.post("/v1/chat/completions", json=body(), headers=h)
        ).status_code == 200
        assert (
            await client.post("/v1/chat/completions", json=body(), headers=h)
        ).status_code == 429
        other = {"x-ponder-session": "s-2"}
        assert (
            await client.post("/v1/chat/completions", json=body(), headers=other)
        ).status_code == 200
        bad = await client.post(
            "/v1/chat/completions", json=body(), headers={"x-ponder-session": " "}
        )
    assert bad.status_code == 400
    assert sorted(r.session or "" for r in store.rows()) == ["s-1", "s-2"]


# --------------------------------------------------------------------------- quotas


async def test_refused_request_is_a_429_that_spends_nothing(store: Store) -> None:
    record, secret = store.create_key("alice", team="ml")
    store.set_limit(Limit("team", "ml", "tokens", "day", 30))
    client, _ = governed(store)
    async with client:
        r = await client.post(
            "/v1/chat/completions", json=body(max_tokens=50), headers=bearer(secret)
        )
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["code"] == "quota_exceeded"
    assert err["limit"] == {
        "scope": "team",
        "subject": "ml",
        "metric": "tokens",
        "window": "day",
        "limit": 30,
    }
    assert err["usage"]["used"] == 0 and err["usage"]["requested"] > 30
    assert isinstance(err["resets_at"], int)
    assert int(r.headers["retry-after"]) >= 1
    assert "lower max_tokens" in err["message"]
    assert store.counter("team", "ml", "tokens", "day") == (0, 0)
    assert store.rows() == []


async def test_minute_limits_are_rate_limits(store: Store) -> None:
    _, secret = store.create_key("alice")
    store.set_limit(Limit("user", "alice", "requests", "minute", 2))
    client, _ = governed(store)
    async with client:
        codes = [
            (await client.post("/v1/chat/completions", json=body(), headers=bearer(secret)))
            for _ in range(3)
        ]
    assert [c.status_code for c in codes] == [200, 200, 429]
    assert codes[2].json()["error"]["code"] == "rate_limit_exceeded"


async def test_200_concurrent_requests_never_overspend_the_quota(store: Store) -> None:
    """Acceptance: the quota admits only some; settled usage stays within it; the rest get 429."""
    _, secret = store.create_key("alice", team="ml")
    limit = 1_000
    store.set_limit(Limit("key", "*", "tokens", "day", limit))

    backend = FunctionBackend(lambda req, i: Reply("one two three four five six seven eight"))
    backend.delay_s = 0.01  # requests overlap while they hold their reservations
    client, _ = governed(store, backend)
    async with client:
        responses = await asyncio.gather(
            *(
                client.post(
                    "/v1/chat/completions", json=body(max_tokens=20), headers=bearer(secret)
                )
                for _ in range(200)
            )
        )
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 429}, codes
    ok = [r for r in responses if r.status_code == 200]
    for r in responses:
        if r.status_code == 429:
            assert r.json()["error"]["limit"]["limit"] == limit
    key_id = store.list_keys()[0].id
    used, reserved = store.counter("key", key_id, "tokens", "day")
    assert reserved == 0
    assert used <= limit
    rows = store.rows()
    assert {row.id for row in rows} == {r.json()["id"] for r in ok}
    assert used == sum(
        x.input_tokens + x.cached_input_tokens + x.reasoning_tokens + x.output_tokens for x in rows
    )
    assert used == sum(r.json()["usage"]["total_tokens"] for r in ok)


async def test_per_request_caps_clip_thinking_and_spend(store: Store) -> None:
    _, secret = store.create_key("alice", team="ml")
    store.set_limit(Limit("team", "ml", "reasoning_tokens", "request", 64))
    store.set_limit(Limit("user", "alice", "tokens", "request", 100))
    backend = FakeBackend([ANSWER])
    client, _ = governed(store, backend)
    async with client:
        r = await client.post(
            "/v1/chat/completions", json=body(reasoning_effort="high"), headers=bearer(secret)
        )
    assert r.status_code == 200
    assert r.json()["ponder"]["thinking_budget"] == 64
    (call,) = backend.calls
    assert call.thinking is not None and call.thinking.budget_tokens <= 64
    # The 100-token cap covers prompt (estimated at 16) + generation.
    assert r.json()["ponder"]["budget"] == 100 - 16
    assert call.max_tokens <= 84


async def test_cost_cap_and_prices_reach_ledger_and_headers(store: Store) -> None:
    _, secret = store.create_key("alice")
    prices = PriceTable(models={"fake": Price(input=1.0, output=2.0, reasoning=3.0)})
    store.set_limit(Limit("user", "alice", "cost", "request", 1_000))
    client, _ = governed(store, prices=prices)
    async with client:
        r = await client.post(
            "/v1/chat/completions", json=body(reasoning_effort="low"), headers=bearer(secret)
        )
    assert r.status_code == 200
    # 3 input x 1 + 4 output x 2 + 5 reasoning x 3 = 26 micro-USD.
    assert r.headers["x-ponder-cost-usd"] == "0.000026"
    assert r.json()["ponder"]["cost_usd"] == pytest.approx(26e-6)
    (row,) = store.rows()
    assert row.cost_micro == 26
    # The cap bought at most (1000 - 16 prompt x 1) / 3 generated tokens.
    assert r.json()["ponder"]["budget"] == (1_000 - 16) // 3


async def test_store_unreachable_fails_closed(store: Store, tmp_path: Path) -> None:
    client, gateway = governed(store)
    # Every request must be refused once the database is out of reach: SQLAlchemy's
    # engine points at a port where nothing listens, and the SQLite file at a
    # directory that is gone (an unmounted volume).
    store.close()
    store.engine = sa.create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:9/none", connect_args={"connect_timeout": 1}
    )
    if store.dialect == "sqlite":
        store._sqlite_path = str(tmp_path / "gone" / "ponder.db")  # noqa: SLF001
    async with client:
        r = await client.post("/v1/chat/completions", json=body())
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "store_unavailable"
    assert gateway.backend.calls == []  # type: ignore[attr-defined]


async def test_backend_error_settles_what_was_spent_and_records_the_error(store: Store) -> None:
    def broken(req: GenRequest, i: int) -> Reply:
        raise RuntimeError("engine fell over")

    client, _ = governed(store, FunctionBackend(broken))
    async with client:
        r = await client.post("/v1/chat/completions", json=body())
    assert r.status_code == 500
    (row,) = store.rows()
    assert row.status == "error" and row.http_status == 500


# --------------------------------------------------------------------------- streaming


async def test_stream_settles_before_the_last_chunk(store: Store) -> None:
    _, secret = store.create_key("alice")
    store.set_limit(Limit("user", "alice", "tokens", "day", 10_000))
    client, _ = governed(store)
    async with client:
        r = await client.post(
            "/v1/chat/completions",
            json=body(stream=True, stream_options={"include_usage": True}),
            headers=bearer(secret),
        )
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    (row,) = store.rows()
    assert row.id == r.headers["x-ponder-request-id"]
    assert row.output_tokens == 4 and row.ttft_ms is not None
    assert store.counter("user", "alice", "tokens", "day") == (7, 0)


async def test_abandoned_stream_still_settles(store: Store) -> None:
    store.set_limit(Limit("session", "*", "tokens", "day", 10_000))
    client, gateway = governed(store, FakeBackend([Reply("a b c d e f g h")]))
    result = await gateway.chat(body(stream=True), {"x-ponder-session": "s"})
    events = result.events  # type: ignore[union-attr]
    await anext(events)
    await anext(events)
    await events.aclose()  # the client went away
    (row,) = store.rows()
    assert row.status == "cancelled"
    assert store.counter("session", "s", "tokens", "day")[1] == 0
    await client.aclose()


# --------------------------------------------------------------------------- admin API


async def test_admin_api_manages_keys_and_quotas(store: Store) -> None:
    _, admin = store.create_key("root", scopes=["admin"])
    _, plain = store.create_key("bob")
    client, _ = governed(store)
    async with client:
        r = await client.post("/v1/admin/keys", json={"user": "x"}, headers=bearer(plain))
        assert r.status_code == 403
        r = await client.post(
            "/v1/admin/keys",
            json={"user": "dana", "team": "ml", "scopes": ["reasoning"]},
            headers=bearer(admin),
        )
        assert r.status_code == 201
        new = r.json()
        assert new["key"].startswith("pk-") and new["scopes"] == ["reasoning"]
        listed = (await client.get("/v1/admin/keys", headers=bearer(admin))).json()["data"]
        assert new["id"] in {k["id"] for k in listed}
        assert all("key" not in k for k in listed)

        q = {"scope": "team", "subject": "ml", "metric": "tokens", "window": "day", "limit": 500}
        assert (
            await client.put("/v1/admin/quotas", json=q, headers=bearer(admin))
        ).status_code == 200
        bad = await client.put(
            "/v1/admin/quotas", json={**q, "window": "week"}, headers=bearer(admin)
        )
        assert bad.status_code == 400 and "window" in bad.json()["error"]["message"]
        r = await client.post(
            "/v1/chat/completions", json=body(max_tokens=10), headers=bearer(new["key"])
        )
        assert r.status_code == 200
        shown = await client.get("/v1/admin/quotas?team=ml", headers=bearer(admin))
        (status,) = shown.json()["data"]
        assert status["limit"] == 500 and status["used"] == 7 and status["reserved"] == 0

        gone = await client.delete(f"/v1/admin/keys/{new['id']}", headers=bearer(admin))
        assert gone.status_code == 200
        again = await client.delete(f"/v1/admin/keys/{new['id']}", headers=bearer(admin))
        assert again.status_code == 404
        r = await client.post("/v1/chat/completions", json=body(), headers=bearer(new["key"]))
        assert r.status_code == 401


# --------------------------------------------------------------------------- metrics and alerts


async def test_metrics_endpoint_counts_tokens_by_bucket(store: Store) -> None:
    client, _ = governed(store)
    async with client:
        await client.post("/v1/chat/completions", json=body(reasoning_effort="low"))
        await client.post("/v1/chat/completions", json=body(messages=[]))
        text = (await client.get("/metrics")).text
    labels = 'caller="anonymous",strategy="cot",task_class="general",tier="fake"'
    assert f'ponder_tokens_total{{bucket="reasoning",{labels}}} 5.0' in text
    assert f'ponder_tokens_total{{bucket="output",{labels}}} 4.0' in text
    assert 'ponder_requests_total{caller="anonymous",status="ok",strategy="cot"' in text
    assert "ponder_request_latency_seconds_bucket" in text
    assert "ponder_time_to_first_token_seconds_count" in text
    assert 'ponder_refused_requests_total{caller="anonymous",code="invalid_request"} 1.0' in text


async def test_quota_threshold_alerts(store: Store) -> None:
    store.set_limit(Limit("session", "*", "requests", "day", 5))
    alerts = Alerts()
    client, _ = governed(store, alerts=alerts)
    async with client:
        codes = [
            (
                await client.post(
                    "/v1/chat/completions", json=body(), headers={"x-ponder-session": "s"}
                )
            ).status_code
            for _ in range(6)
        ]
    assert codes == [200] * 5 + [429]
    crossed = [(a.kind, a.data["threshold"], a.data["used"]) for a in alerts.sent]
    assert crossed == [("quota_threshold", 0.8, 4), ("quota_threshold", 1.0, 5)]


async def test_runaway_thinking_alert(store: Store) -> None:
    def think(req: GenRequest, i: int) -> Reply:
        words = 50 if "long" in req.messages[-1].content else 5
        return Reply("ok", reasoning=" ".join(["hmm"] * words))

    alerts = Alerts(min_class_samples=5)
    client, _ = governed(store, FunctionBackend(think), alerts=alerts)
    async with client:
        for _ in range(5):
            await client.post("/v1/chat/completions", json=body(reasoning_effort="low"))
        assert list(alerts.sent) == []
        await client.post("/v1/chat/completions", json=body("think long", reasoning_effort="low"))
    (alert,) = alerts.sent
    assert alert.kind == "runaway_thinking"
    assert alert.data["reasoning_tokens"] == 50 and alert.data["p95"] == 5
