"""Interactive requests never block on search; with ``continue_async`` the full plan runs
as an async job whose id comes back in the fast answer's ``ponder`` extension.

Runs the app in-process with its lifespan (so the job worker runs) against a real store
(SQLite and PostgreSQL, see conftest.py) and a scripted fake backend.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from ponder.backends.fake import FunctionBackend, Reply
from ponder.config import RouterSettings, ServerSettings
from ponder.ledger import Store
from ponder.router.policy import PolicyError, Router
from ponder.server.app import create_app
from ponder.server.gateway import Gateway
from ponder.strategies import available_strategies
from ponder.types import Generation, GenRequest

EXTRACT = "Extract the name and age fields from this text as JSON: Bob is 42."
PLAN = "Plan the milestones for migrating our billing service to a new database."
SEARCH = {"bucket": "use", "strategy": "best_of_n", "params": {"n": 3}}


class SearchGate(FunctionBackend):
    """Answers single samples at once; multi-sample (search) calls wait for ``gate``."""

    def __init__(self) -> None:
        super().__init__(fn=lambda req, i: Reply(f'{{"name": "Bob", "age": {40 + i}}}'))
        self.gate = asyncio.Event()
        self.search_started = asyncio.Event()

    async def generate(self, req: GenRequest) -> list[Generation]:
        if req.n > 1:
            self.search_started.set()
            await self.gate.wait()
        return await super().generate(req)


def router(**classes: dict[str, Any]) -> Router:
    settings = RouterSettings.model_validate({"classes": classes})
    return Router(settings, strategies=available_strategies())


@asynccontextmanager
async def serving(
    store: Store | None, route: Router, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, SearchGate]]:
    backend = SearchGate()
    gateway = Gateway(backend, ServerSettings(**settings), store=store, router=route)
    app = create_app(backend, gateway=gateway)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        yield client, backend


def body(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


async def wait_done(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return dict(job)
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
        await asyncio.sleep(0.02)


def final_ponder(stream_text: str) -> dict[str, Any]:
    events = [
        json.loads(line[6:])
        for line in stream_text.splitlines()
        if line.startswith("data: {") and '"ponder"' in line
    ]
    return dict(events[-1]["ponder"])


async def test_a_streamed_request_answers_directly_and_its_search_continues_as_a_job(
    store: Store,
) -> None:
    async with serving(store, router(extraction={**SEARCH, "continue_async": True})) as (
        client,
        backend,
    ):
        r = await client.post("/v1/chat/completions", json=body(EXTRACT, stream=True))
        assert r.status_code == 200, r.text
        # The fast answer came back while the search was (and still is) held up.
        assert r.headers["x-ponder-strategy"] == "direct"
        info = final_ponder(r.text)
        job = info["job"]
        assert job["strategy"] == "best_of_n" and job["url"] == f"/v1/jobs/{job['id']}"
        await asyncio.wait_for(backend.search_started.wait(), 10)
        assert not backend.gate.is_set()
        backend.gate.set()
        done = await wait_done(client, job["id"])
    assert done["status"] == "succeeded", done
    better = done["result"]
    assert better["ponder"]["strategy"] == "best_of_n" and better["ponder"]["n_candidates"] == 3
    assert better["ponder"]["job"] is None  # the job ran the full plan, nothing more
    assert [req.n for req in backend.calls] == [1, 3]
    rows = {r.id: r for r in store.rows()}
    fast = next(r for r in rows.values() if r.strategy == "direct")
    assert fast.plan["continued_as"]["id"] == job["id"]
    assert rows[done["request_id"]].strategy == "best_of_n"
    assert rows[done["request_id"]].task_class == fast.task_class == "extraction"


async def test_an_interactive_class_answers_fast_and_returns_the_job_id(store: Store) -> None:
    policy = {
        "bucket": "use",
        "strategy": "self_consistency",
        "params": {"n": 3},
        "latency": "interactive",
        "continue_async": True,
    }
    async with serving(store, router(planning=policy)) as (client, backend):
        r = await client.post("/v1/chat/completions", json=body(PLAN))
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["ponder"]["strategy"] == "direct"
        job_id = data["ponder"]["job"]["id"]
        assert r.headers["x-ponder-job-id"] == job_id
        assert data["ponder"]["job"]["strategy"] == "self_consistency"
        backend.gate.set()
        done = await wait_done(client, job_id)
    assert done["status"] == "succeeded", done
    assert done["result"]["ponder"]["strategy"] == "self_consistency"
    assert [req.n for req in backend.calls] == [1, 3]


async def test_without_continue_async_there_is_no_job(store: Store) -> None:
    async with serving(store, router(extraction=SEARCH)) as (client, backend):
        streamed = await client.post("/v1/chat/completions", json=body(EXTRACT, stream=True))
        backend.gate.set()
        # Not interactive: the search runs in the request itself.
        plain = await client.post("/v1/chat/completions", json=body(EXTRACT))
        jobs = (await client.get("/v1/jobs")).json()["data"]
    assert streamed.headers["x-ponder-strategy"] == "direct"
    assert final_ponder(streamed.text).get("job") is None
    assert plain.json()["ponder"]["strategy"] == "best_of_n"
    assert plain.json()["ponder"]["job"] is None and "x-ponder-job-id" not in plain.headers
    assert jobs == []


async def test_a_request_that_declares_async_latency_gets_the_full_plan_at_once(
    store: Store,
) -> None:
    interactive = {**SEARCH, "latency": "interactive", "continue_async": True}
    async with serving(store, router(extraction=interactive)) as (client, backend):
        backend.gate.set()
        r = await client.post(
            "/v1/chat/completions", json=body(EXTRACT), headers={"x-ponder-latency": "async"}
        )
        bad = await client.post("/v1/chat/completions", json=body(EXTRACT, ponder={"latency": "x"}))
        bad_header = await client.post(
            "/v1/chat/completions", json=body(EXTRACT), headers={"x-ponder-latency": "soon"}
        )
    assert r.json()["ponder"]["strategy"] == "best_of_n" and r.json()["ponder"]["job"] is None
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "ponder.latency"
    assert bad_header.status_code == 400
    assert bad_header.json()["error"]["param"] == "ponder.latency"
    assert "'soon'" in bad_header.json()["error"]["message"]


async def test_a_stream_that_declares_async_latency_streams_the_full_plan(store: Store) -> None:
    async with serving(store, router(extraction=SEARCH)) as (client, backend):
        backend.gate.set()
        r = await client.post(
            "/v1/chat/completions",
            json=body(EXTRACT, stream=True),
            headers={"x-ponder-latency": "async"},
        )
    assert r.status_code == 200, r.text
    # Not cut down to direct: the search ran, streamed as progress, then the answer.
    assert r.headers["x-ponder-strategy"] == "best_of_n"
    assert '"progress"' in r.text
    assert [req.n for req in backend.calls] == [3]


async def test_a_job_that_cannot_be_queued_never_costs_the_fast_answer(store: Store) -> None:
    # job_concurrency=0: this server only queues, so the first job stays pending.
    route = router(extraction={**SEARCH, "continue_async": True})
    async with serving(store, route, job_concurrency=0, job_max_pending=1) as (client, _):
        first = await client.post("/v1/chat/completions", json=body(EXTRACT, stream=True))
        second = await client.post("/v1/chat/completions", json=body(EXTRACT, stream=True))
    assert final_ponder(first.text)["job"] is not None
    assert second.status_code == 200 and "data: [DONE]" in second.text
    assert final_ponder(second.text).get("job") is None
    (row,) = [r for r in store.rows() if "continue_error" in r.plan]
    assert "unfinished jobs" in row.plan["continue_error"]


async def test_without_a_store_the_fast_answer_still_comes() -> None:
    async with serving(None, router(extraction={**SEARCH, "continue_async": True})) as (
        client,
        backend,
    ):
        r = await client.post("/v1/chat/completions", json=body(EXTRACT, stream=True))
    assert r.status_code == 200 and r.headers["x-ponder-strategy"] == "direct"
    assert final_ponder(r.text).get("job") is None
    assert [req.n for req in backend.calls] == [1]


def test_an_interactive_search_class_needs_continue_async() -> None:
    with pytest.raises(PolicyError, match="continue_async = true"):
        router(planning={**SEARCH, "latency": "interactive"})
    plan = router(planning={**SEARCH, "latency": "interactive", "continue_async": True}).plan_text(
        PLAN
    )
    assert (plan.strategy, plan.thinking_budget) == ("direct", 0)
    assert plan.deferred == {"strategy": "best_of_n", "params": {"n": 3}, "thinking_budget": 0}
    assert any("continues as an async job" in reason for reason in plan.reasons)


def test_route_explain_shows_what_continues_async(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ponder.cli import main

    config = tmp_path / "ponder.toml"
    config.write_text(
        "[router.classes.planning]\n"
        'bucket = "use"\nstrategy = "self_consistency"\nparams = { n = 4 }\n'
        'latency = "interactive"\ncontinue_async = true\n'
    )
    monkeypatch.setenv("PONDER_CONFIG", str(config))
    assert main(["route", "explain", PLAN]) == 0
    assert "continues async self_consistency {'n': 4}" in capsys.readouterr().out
    assert main(["route", "explain", PLAN, "--latency", "async", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["strategy"], plan["deferred"], plan["latency"]) == (
        "self_consistency",
        None,
        "async",
    )
