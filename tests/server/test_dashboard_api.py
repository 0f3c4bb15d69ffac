"""The dashboard's admin JSON: admin only, and every number equals what the ledger holds.

In-process through httpx.ASGITransport, against SQLite and PostgreSQL (see
conftest.py), with the shipped fake backends.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from ponder.backends.fake import FunctionBackend, Reply
from ponder.budget.pricing import Price, PriceTable
from ponder.budget.quota import Demand, Limit, Refusal
from ponder.config import ServerSettings
from ponder.errors import BackendError
from ponder.ledger import LedgerRow, Store, schema
from ponder.ledger.queries import LedgerQueries, bucket_size
from ponder.ledger.stats import percentile
from ponder.router.savings import routing_report
from ponder.server.app import create_app
from ponder.server.dashboard import latest_eval, routes
from ponder.server.dashboard.routes import MAX_WINDOW_S
from ponder.server.gateway import Gateway
from ponder.types import GenRequest

ENDPOINTS = ("summary", "series", "requests", "quotas", "eval", "routing")
PRICE = Price(input=100.0, output=400.0, reasoning=800.0)  # USD per 1M tokens


def reply(req: GenRequest, index: int) -> Reply:
    prompt = req.messages[-1].content
    if "fail" in prompt:
        raise BackendError("the upstream is down; try again")
    return Reply(f"answer {index} to {prompt}", reasoning="let me think about this one " * 3)


def gateway_client(store: Store | None, **settings: Any) -> tuple[httpx.AsyncClient, Gateway]:
    backend = FunctionBackend(reply, name="fake")
    gateway = Gateway(
        backend,
        ServerSettings(**{"tier": "small", **settings}),
        store=store,
        prices=PriceTable(default=PRICE),
    )
    app = create_app(backend, gateway=gateway)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    return client, gateway


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "fake", "messages": [{"role": "user", "content": content}], **extra}


async def serve_some(client: httpx.AsyncClient, secret: str) -> None:
    """Requests of four strategies, a stream (TTFT) and one that fails upstream."""
    sends = [
        chat("What is 2+2?"),
        chat("Name a prime", max_tokens=40),
        chat("Pick a colour", ponder={"strategy": "self_consistency", "params": {"n": 3}}),
        chat("Think first", ponder={"strategy": "cot", "params": {"thinking_budget": 6}}),
        chat("Stream this please", stream=True),
        chat("please fail now"),
    ]
    for body in sends:
        r = await client.post("/v1/chat/completions", json=body, headers=bearer(secret))
        if "fail" in body["messages"][0]["content"]:
            assert r.status_code == 502, r.text
        else:
            assert r.status_code == 200, r.text


def tokens(row: LedgerRow) -> int:
    return row.input_tokens + row.cached_input_tokens + row.reasoning_tokens + row.output_tokens


async def get(client: httpx.AsyncClient, path: str, secret: str) -> dict[str, Any]:
    r = await client.get(f"/v1/admin/dashboard/{path}", headers=bearer(secret))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    data: dict[str, Any] = r.json()
    return data


# --------------------------------------------------------------------------- access


async def test_only_admin_keys_may_read_the_dashboard(store: Store) -> None:
    client, _ = gateway_client(store)
    async with client:
        # An open gateway (no key yet) has no admin: the dashboard stays closed.
        for name in ENDPOINTS:
            r = await client.get(f"/v1/admin/dashboard/{name}")
            assert r.status_code == 403, (name, r.text)
            assert "'admin' scope" in r.json()["error"]["message"]
        _, user = store.create_key("alice", scopes=["strategies", "reasoning"])
        _, admin = store.create_key("root", scopes=["admin"])
        for name in ENDPOINTS:
            path = f"/v1/admin/dashboard/{name}"
            assert (await client.get(path)).status_code == 401
            assert (await client.get(path, headers=bearer("pk-not-a-key"))).status_code == 401
            r = await client.get(path, headers=bearer(user))
            assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error", r.text
            assert (await client.get(path, headers=bearer(admin))).status_code == 200
        # The page itself holds no data: anyone may load it, its data needs the key.
        r = await client.get("/dashboard")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in r.headers["content-security-policy"]


async def test_without_a_store_the_dashboard_says_there_is_no_ledger() -> None:
    client, _ = gateway_client(None)
    async with client:
        r = await client.get("/v1/admin/dashboard/summary")
    assert r.status_code == 400
    assert "server.ledger" in r.json()["error"]["message"]


async def test_page_and_vendored_chart_js_are_served_and_nothing_else(store: Store) -> None:
    client, _ = gateway_client(store)
    async with client:
        page = (await client.get("/dashboard")).text
        for asset in ("dashboard.js", "dashboard.css", "vendor/chart.umd.min.js"):
            assert f"/dashboard/static/{asset}" in page
            r = await client.get(f"/dashboard/static/{asset}")
            assert r.status_code == 200 and len(r.content) > 1000, asset
        r = await client.get("/dashboard/static/vendor/chart.umd.min.js")
        assert "javascript" in r.headers["content-type"]
        assert b"Chart.js v4" in r.content[:200]
        for bad in ("../dashboard.py", "..%2Fdashboard.py", "nope.js"):
            assert (await client.get(f"/dashboard/static/{bad}")).status_code == 404


# --------------------------------------------------------------------------- numbers


async def test_summary_feed_and_series_equal_the_ledger(store: Store) -> None:
    client, _ = gateway_client(store)
    _, user = store.create_key("alice", team="ml", scopes=["strategies", "reasoning"])
    _, admin = store.create_key("root", scopes=["admin", "strategies"])
    async with client:
        await serve_some(client, user)
        await serve_some(client, admin)  # a second caller
        summary = await get(client, "summary", admin)
        feed = await get(client, "requests?limit=500", admin)
        series = await get(client, "series", admin)
    rows = store.rows()
    assert len(rows) == 12

    t = summary["totals"]
    assert t["requests"] == len(rows)
    assert t["ok"] == sum(r.status == "ok" for r in rows) == 10
    assert t["errors"] == 2
    for bucket in ("input_tokens", "cached_input_tokens", "reasoning_tokens", "output_tokens"):
        assert t[bucket] == sum(getattr(r, bucket) for r in rows), bucket
    assert t["total_tokens"] == sum(tokens(r) for r in rows)
    assert t["cost_micro"] == sum(r.cost_micro for r in rows) > 0
    assert t["cost_usd"] == pytest.approx(t["cost_micro"] / 1e6)
    latencies = [r.latency_ms for r in rows]
    ttfts = [r.ttft_ms for r in rows if r.ttft_ms is not None]
    assert ttfts, "the stream should have recorded a time to first token"
    assert t["latency_p50_ms"] == pytest.approx(percentile(latencies, 50))
    assert t["latency_p95_ms"] == pytest.approx(percentile(latencies, 95))
    assert t["ttft_p50_ms"] == pytest.approx(percentile(ttfts, 50))
    assert t["ttft_p95_ms"] == pytest.approx(percentile(ttfts, 95))

    by_strategy = {g["name"]: g for g in summary["by"]["strategy"]}
    assert {k: v["requests"] for k, v in by_strategy.items()} == Counter(r.strategy for r in rows)
    assert set(by_strategy) == {"direct", "self_consistency", "cot"}
    sc = [r for r in rows if r.strategy == "self_consistency"]
    assert by_strategy["self_consistency"]["total_tokens"] == sum(tokens(r) for r in sc)
    assert by_strategy["self_consistency"]["cost_micro"] == sum(r.cost_micro for r in sc)
    callers = {g["user"]: g for g in summary["by"]["caller"]}
    assert set(callers) == {"alice", "root"}
    assert callers["alice"]["team"] == "ml" and callers["alice"]["requests"] == 6
    assert callers["alice"]["cost_micro"] == sum(r.cost_micro for r in rows if r.user == "alice")
    assert [(g["name"], g["requests"]) for g in summary["by"]["tier"]] == [("small", 12)]
    classes = {g["name"]: g["requests"] for g in summary["by"]["task_class"]}
    assert classes == Counter(r.task_class for r in rows)

    # The feed: newest first, with the plan's budgets.
    newest = sorted(rows, key=lambda r: (-r.at, r.id))
    assert [x["id"] for x in feed["data"]] == [r.id for r in newest]
    by_id = {r.id: r for r in rows}
    for item in feed["data"]:
        row = by_id[item["id"]]
        assert item["reasoning_tokens"] == row.reasoning_tokens
        assert item["output_tokens"] == row.output_tokens
        assert item["cost_micro"] == row.cost_micro
        assert item["thinking_budget"] == row.plan["thinking_budget"]
        assert item["budget"] == row.plan["budget"]
        assert (item["status"], item["user"], item["tier"]) == (row.status, row.user, row.tier)
    assert any(x["thinking_budget"] == 6 for x in feed["data"])

    # The series: every row in exactly one bucket, percentiles per bucket.
    width = series["bucket_s"]
    buckets = series["buckets"]
    assert sum(b["requests"] for b in buckets) == len(rows)
    assert sum(b["total_tokens"] for b in buckets) == t["total_tokens"]
    assert sum(b["cost_micro"] for b in buckets) == t["cost_micro"]
    for b in buckets:
        inside = [r for r in rows if b["start"] <= r.at < b["start"] + width]
        assert b["requests"] == len(inside)
        if inside:
            assert b["latency_p95_ms"] == pytest.approx(
                percentile([r.latency_ms for r in inside], 95)
            )
        else:
            assert b["latency_p50_ms"] is None


async def test_window_counts_only_recent_requests(store: Store) -> None:
    client, _ = gateway_client(store)
    _, admin = store.create_key("root", scopes=["admin"])
    now = time.time()
    for i, age in enumerate((7200.0, 30.0, 10.0)):
        store.insert_row(
            LedgerRow(
                id=f"chatcmpl-{i}",
                task_class="math",
                strategy="direct",
                plan={"budget": None},
                status="ok",
                http_status=200,
                at=now - age,
                output_tokens=10 * (i + 1),
                cost_micro=1000 * (i + 1),
                latency_ms=100.0 * (i + 1),
            )
        )
    async with client:
        recent = await get(client, "summary?window_s=3600", admin)
        everything = await get(client, "summary", admin)
        series = await get(client, "series?window_s=3600", admin)
        for bad in ("0", "-5", "soon", "nan", "inf", "1e308", "1e12"):
            for view in ("summary", "series"):
                r = await client.get(
                    f"/v1/admin/dashboard/{view}?window_s={bad}", headers=bearer(admin)
                )
                assert r.status_code == 400 and r.json()["error"]["param"] == "window_s", bad
        # Ten years is the longest window; it is served, with the rows inside it.
        decade = await get(client, f"series?window_s={MAX_WINDOW_S}", admin)
        assert sum(b["requests"] for b in decade["buckets"]) == 3
        for bad in ("0", "501", "ten"):
            r = await client.get(f"/v1/admin/dashboard/requests?limit={bad}", headers=bearer(admin))
            assert r.status_code == 400 and r.json()["error"]["param"] == "limit", bad
    assert recent["totals"]["requests"] == 2
    assert recent["totals"]["output_tokens"] == 20 + 30
    assert recent["totals"]["cost_micro"] == 5000
    assert recent["totals"]["latency_p50_ms"] == 200.0
    assert everything["totals"]["requests"] == 3
    assert series["bucket_s"] == bucket_size(3600) == 60
    assert sum(b["requests"] for b in series["buckets"]) == 2


def routed(rid: str, at: float, cost: int, **extra: Any) -> LedgerRow:
    fields: dict[str, Any] = {"strategy": "direct", "tier": "small", **extra}
    return LedgerRow(
        id=rid, task_class="math", plan={"params": {}}, status="ok", http_status=200,
        at=at, cost_micro=cost, **fields,
    )  # fmt: skip


async def test_routing_has_escalation_and_what_routing_saved_per_class(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = gateway_client(store)
    _, admin = store.create_key("root", scopes=["admin"])
    now = time.time()
    store.insert_row(routed("old", now - 7200, 1000, strategy="cot"))
    for i in range(10):
        store.insert_row(routed(f"r{i}", now - 600 + i, 1000, verdict="correct"))
        shadow = routed(f"r{i}-shadow", now - 599 + i, 3000, tier="strong", verdict="correct")
        shadow.features = {"v": 1, "shadow_of": f"r{i}", "shadow_plan": "strong"}
        store.insert_row(shadow)
    async with client:
        recent = await get(client, "routing?window_s=3600&bucket_s=600", admin)
        everything = await get(client, "routing", admin)
        for bad in ("0", "soon", "inf", "1e12"):
            r = await client.get(
                f"/v1/admin/dashboard/routing?bucket_s={bad}", headers=bearer(admin)
            )
            assert r.status_code == 400 and r.json()["error"]["param"] == "bucket_s", bad
        # Kept for ROUTING_TTL_S: a new row shows up once it has passed.
        store.insert_row(routed("new", now, 1000))
        kept = await get(client, "routing?window_s=3600&bucket_s=600", admin)
        monkeypatch.setattr(routes, "ROUTING_TTL_S", 0.0)
        fresh = await get(client, "routing?window_s=3600&bucket_s=600", admin)
    assert kept == recent
    assert fresh["classes"][0]["requests"] == 11
    # Exactly the estimator's answer on the rows of the window.
    rows = [r for r in store.rows(since=recent["since"]) if r.id != "new"]
    expected = routing_report(rows, bucket_s=600)
    assert {k: v for k, v in recent.items() if k not in ("since", "generated_at")} == json.loads(
        json.dumps(expected)
    )
    (math,) = recent["classes"]
    assert math["requests"] == 10 and math["escalation_share"] == 0.0
    (strong,) = math["savings"]
    assert strong["pairs"] == 10 and strong["counterfactual_usd"]["value"] == pytest.approx(0.03)
    assert strong["quality_diff"]["value"] == 0.0
    (math_all,) = everything["classes"]
    assert math_all["requests"] == 11 and math_all["escalated"] == 1


async def test_shadow_runs_are_spend_apart_from_served_traffic(store: Store) -> None:
    """Totals, breakdowns and series count served requests; shadow spend is reported apart."""
    client, _ = gateway_client(store)
    _, admin = store.create_key("root", scopes=["admin"])
    now = time.time()
    served = [routed(f"r{i}", now - 60 + i, 1000, latency_ms=100.0 + i) for i in range(4)]
    # A served request whose recorded prompt holds the key's text is still served (its
    # JSON holds '"shadow_of"', which the text pre-test matches, but no such key).
    served[0].features = {"v": 1, "prompt": 'x"shadow_of'}
    for row in served:
        store.insert_row(row)
    for i in range(2):
        shadow = routed(f"r{i}-shadow", now - 59 + i, 5000, tier="strong", latency_ms=9000.0,
                        team="ponder-shadow")  # fmt: skip
        shadow.features = {"v": 1, "shadow_of": f"r{i}", "shadow_plan": "strong"}
        store.insert_row(shadow)
    async with client:
        summary = await get(client, "summary", admin)
        recent = await get(client, "summary?window_s=3600", admin)
        series = await get(client, "series", admin)
        feed = await get(client, "requests", admin)
    for view in (summary, recent):
        t = view["totals"]
        assert (t["requests"], t["cost_micro"]) == (4, 4000)
        assert t["latency_p95_ms"] == pytest.approx(percentile([r.latency_ms for r in served], 95))
        assert (t["shadow"]["requests"], t["shadow"]["cost_micro"]) == (2, 10_000)
        assert [(g["name"], g["requests"]) for g in view["by"]["task_class"]] == [("math", 4)]
        assert [g["name"] for g in view["by"]["tier"]] == ["small"]
        assert all(g["team"] != "ponder-shadow" for g in view["by"]["caller"])
    assert sum(b["requests"] for b in series["buckets"]) == 4
    assert sum(b["cost_micro"] for b in series["buckets"]) == 4000
    assert max(b["latency_p95_ms"] or 0 for b in series["buckets"]) < 9000
    # The feed lists every row, each shadow run with the request it shadows.
    links = {x["id"]: x["shadow_of"] for x in feed["data"]}
    assert links == {"r0": None, "r1": None, "r2": None, "r3": None,
                     "r0-shadow": "r0", "r1-shadow": "r1"}  # fmt: skip


async def test_an_empty_ledger_gives_zeros_and_no_percentiles(store: Store) -> None:
    client, _ = gateway_client(store)
    _, admin = store.create_key("root", scopes=["admin"])
    async with client:
        summary = await get(client, "summary", admin)
        series = await get(client, "series", admin)
        feed = await get(client, "requests", admin)
        quotas = await get(client, "quotas", admin)
        evals = await get(client, "eval", admin)
        routing = await get(client, "routing", admin)
    assert routing["classes"] == []
    t = summary["totals"]
    assert t["requests"] == t["total_tokens"] == t["cost_micro"] == 0
    assert t["latency_p50_ms"] is None and t["ttft_p95_ms"] is None
    assert all(groups == [] for groups in summary["by"].values())
    assert series["buckets"] and all(b["requests"] == 0 for b in series["buckets"])
    assert feed["data"] == []
    assert quotas["quotas"] == [] and quotas["alerts"] == []
    assert evals["configured"] is False and "eval_results_dir" in evals["message"]


async def test_quota_usage_per_caller_and_alerts(store: Store) -> None:
    client, gateway = gateway_client(store)
    _, alice = store.create_key("alice", scopes=["strategies"])
    _, bob = store.create_key("bob", scopes=["strategies"])
    _, admin = store.create_key("root", scopes=["admin"])
    store.set_limit(Limit("user", "alice", "requests", "day", 5))
    store.set_limit(Limit("user", "*", "tokens", "day", 1_000_000))
    store.set_limit(Limit("team", "nobody", "cost", "month", 50))
    store.set_limit(Limit("key", "*", "tokens", "request", 4096))
    async with client:
        for _ in range(4):
            r = await client.post("/v1/chat/completions", json=chat("hi"), headers=bearer(alice))
            assert r.status_code == 200
        r = await client.post("/v1/chat/completions", json=chat("hi"), headers=bearer(bob))
        assert r.status_code == 200
        data = await get(client, "quotas", admin)
    rows = store.rows()
    quotas = {(q["scope"], q["subject"], q["metric"], q["window"]): q for q in data["quotas"]}
    alice_requests = quotas[("user", "alice", "requests", "day")]
    assert alice_requests["used"] == 4 and alice_requests["limit"] == 5
    assert alice_requests["fraction"] == pytest.approx(0.8)
    assert alice_requests["state"] == "warning"
    # A wildcard limit shows one line per subject it counted.
    for who in ("alice", "bob"):
        q = quotas[("user", who, "tokens", "day")]
        assert q["limit_subject"] == "*" and q["state"] == "ok"
        assert q["used"] == sum(tokens(r) for r in rows if r.user == who)
        assert q["used"] == store.counter("user", who, "tokens", "day")[0]
    assert quotas[("team", "nobody", "cost", "month")]["used"] == 0
    assert quotas[("key", "*", "tokens", "request")]["state"] == "cap"
    assert quotas[("key", "*", "tokens", "request")]["used"] is None
    # The 4th request crossed 80% of alice's requests: that alert is on the dashboard.
    (alert,) = [a for a in data["alerts"] if a["kind"] == "quota_threshold"]
    assert alert["subject"] == "alice" and alert["threshold"] == 0.8
    assert [a.payload() for a in gateway.alerts.sent][-1] == data["alerts"][0]


def test_quota_state_when_the_limit_is_reached(store: Store) -> None:
    store.set_limit(Limit("user", "carol", "requests", "day", 2))
    held = store.reserve({"user": "carol"}, Demand(), ttl_s=60)
    assert not isinstance(held, Refusal)
    store.settle(held, Demand(requests=2), None)
    (q,) = LedgerQueries(store).quotas()
    assert (q["used"], q["state"], q["fraction"]) == (2, "exceeded", 1.0)


# --------------------------------------------------------------------------- eval


def record(
    config: str, strategy: str, n: int, item: str, correct: bool, tokens: int
) -> dict[str, Any]:
    params = {"n": n} if n > 1 else {}
    return {
        "config_key": config,
        "config": {"model": "m", "strategy": strategy, "params": params, "budget": None},
        "model": "m",
        "strategy": strategy,
        "item_id": item,
        "correct": correct,
        "usage": {
            "input": tokens // 2,
            "cached_input": 0,
            "reasoning": 0,
            "output": tokens - tokens // 2,
        },
        "latency_s": 0.1,
        "sample_verdicts": None,
    }


def write_run(directory: Path, grid: dict[str, tuple[str, int, list[bool], int]]) -> Path:
    directory.mkdir(parents=True)
    path = directory / "results.jsonl"
    with open(path, "w") as fh:
        for key, (strategy, n, verdicts, tokens) in grid.items():
            for i, ok in enumerate(verdicts):
                fh.write(json.dumps(record(key, strategy, n, f"item{i}", ok, tokens)) + "\n")
        fh.write('{"torn line')  # a killed run's last line is skipped, as ResultStore does
    return path


async def test_eval_curves_and_frontier_come_from_the_newest_run(
    store: Store, tmp_path: Path
) -> None:
    old = write_run(tmp_path / "runs" / "old", {"a": ("direct", 1, [True] * 4, 10)})
    new = write_run(
        tmp_path / "runs" / "new",
        {
            "direct": ("direct", 1, [True, True, False, False], 100),
            "cot": ("cot", 1, [True, True, False, False], 150),  # no better, dearer
            "sc2": ("self_consistency", 2, [True, True, True, False], 200),
            "sc4": ("self_consistency", 4, [True, True, True, False], 400),  # no better
            "sc8": ("self_consistency", 8, [True] * 4, 800),
        },
    )
    os.utime(old, (time.time() - 600, time.time() - 600))
    client, _ = gateway_client(store, eval_results_dir=tmp_path / "runs")
    _, admin = store.create_key("root", scopes=["admin"])
    async with client:
        data = await get(client, "eval", admin)
        again = await get(client, "eval", admin)
    assert again == data
    assert data["source"] == str(new) and data["records"] == 20
    curves = {c["name"]: c["points"] for c in data["curves"]}
    assert set(curves) == {"direct [m]", "cot [m]", "self_consistency [m]"}
    sc = curves["self_consistency [m]"]
    assert [(p["n"], p["tokens"], p["accuracy"]) for p in sc] == [
        (2, 200, 0.75),
        (4, 400, 0.75),
        (8, 800, 1.0),
    ]
    assert all(p["ci_low"] <= p["accuracy"] <= p["ci_high"] for p in sc)
    assert [p["config"] for p in data["frontier"]] == ["direct", "sc2", "sc8"]


def test_eval_falls_back_to_a_reports_summary_and_explains_bad_files(tmp_path: Path) -> None:
    from ponder.eval.metrics import summarize
    from ponder.eval.report import write_report

    records = [record("direct", "direct", 1, f"i{i}", i % 2 == 0, 50) for i in range(4)]
    records += [record("sc4", "self_consistency", 4, f"i{i}", True, 300) for i in range(4)]
    write_report(records, tmp_path / "report")
    data = latest_eval(tmp_path)
    assert data["source"] == str(tmp_path / "report" / "summary.json")
    assert [p["config"] for p in data["frontier"]] == ["direct", "sc4"]
    expected = {s.config: s.accuracy for s in summarize(records)}
    assert {p["config"]: p["accuracy"] for c in data["curves"] for p in c["points"]} == expected

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.jsonl").write_text('{"not": "an eval record"}\n')
    data = latest_eval(tmp_path / "bad")
    assert "curves" not in data and "not an eval results file" in data["message"]
    data = latest_eval(tmp_path / "missing")
    assert "curves" not in data and "ponder eval --out" in data["message"]


def test_reading_the_dashboard_never_waits_for_the_gateways_writes(store: Store) -> None:
    queries = LedgerQueries(store)
    row = LedgerRow(
        id="chatcmpl-held",
        task_class="chat",
        strategy="direct",
        plan={},
        status="ok",
        http_status=200,
        output_tokens=7,
    )
    # A settlement in progress holds the write lock (SQLite) until it commits.
    with store.engine.begin() as conn:
        conn.execute(sa.insert(schema.requests).values(**row.values()))
        started = time.monotonic()
        summary = queries.summary()
        # Not blocked (busy_timeout is 30 s), and the uncommitted row is not seen.
        assert time.monotonic() - started < 5
        assert summary["totals"]["requests"] == 0
    assert queries.summary()["totals"]["output_tokens"] == 7
