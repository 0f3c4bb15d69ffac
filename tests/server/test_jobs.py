"""The async latency class (POST /v1/jobs) and verdicts (strategy verifiers, POST /v1/feedback).

Runs the app in-process (httpx.ASGITransport, with its lifespan so the job worker
runs) against a real store, SQLite and PostgreSQL (see conftest.py), with the
shipped fake backends.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from ponder.backends.fake import FakeBackend, FunctionBackend, Reply
from ponder.budget.quota import Limit
from ponder.config import ServerSettings
from ponder.ledger import Store
from ponder.ledger import schema as s
from ponder.ledger.stats import class_stats
from ponder.server.app import create_app
from ponder.server.auth import Caller
from ponder.server.gateway import Gateway
from ponder.server.jobs import Job, JobQueue, Jobs, dead_on_this_host
from ponder.strategies import RunContext, finish, to_candidate
from ponder.types import GenRequest, Outcome, Problem
from ponder.verifiers.structured import RegexVerifier

QUESTION = "What is 2+2?"
ANSWER = Reply("The answer is 4", reasoning="two plus two makes four")
TERMINAL = {"succeeded", "failed", "cancelled"}


def body(content: str = QUESTION, **extra: Any) -> dict[str, Any]:
    return {"model": "fake", "messages": [{"role": "user", "content": content}], **extra}


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


class GatedBackend(FunctionBackend):
    """Answers only once ``gate`` is set, so a job can be caught while it runs."""

    def __init__(self) -> None:
        super().__init__(fn=lambda req, i: ANSWER, name="fake")
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def generate(self, req: GenRequest) -> list[Any]:
        self.entered.set()
        await self.gate.wait()
        return await super().generate(req)


@asynccontextmanager
async def serving(
    store: Store | None, backend: Any = None, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway, Jobs]]:
    """The app with its lifespan running (ASGITransport alone does not run it)."""
    backend = backend or FakeBackend([ANSWER])
    gateway = Gateway(backend, ServerSettings(**settings), store=store)
    app = create_app(backend, gateway=gateway)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
    ):
        yield client, gateway, app.state.jobs


async def wait_done(
    client: httpx.AsyncClient, job_id: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        r = await client.get(f"/v1/jobs/{job_id}", headers=headers)
        assert r.status_code == 200, r.text
        if r.json()["status"] in TERMINAL:
            return dict(r.json())
        assert time.monotonic() < deadline, f"job {job_id} still {r.json()['status']}"
        await asyncio.sleep(0.02)


def job_rows(store: Store) -> list[Any]:
    with store.engine.connect() as conn:
        return list(conn.execute(sa.select(s.jobs)))


# --------------------------------------------------------------------------- the queue over HTTP


async def test_a_job_runs_through_the_gateway_and_keeps_its_result(store: Store) -> None:
    async with serving(store) as (client, _, _):
        r = await client.post(
            "/v1/jobs", json=body(reasoning_effort="low", ponder={"include_reasoning": True})
        )
        assert r.status_code == 202, r.text
        queued = r.json()
        assert queued["object"] == "job" and queued["status"] == "queued"
        assert queued["id"].startswith("job_") and len(queued["id"]) >= 36
        assert r.headers["location"] == f"/v1/jobs/{queued['id']}"

        job = await wait_done(client, queued["id"])
    assert job["status"] == "succeeded" and job["http_status"] == 200 and job["error"] is None
    assert job["attempts"] == 1 and job["started_at"] <= job["finished_at"]
    result = job["result"]
    assert result["object"] == "chat.completion"
    assert result["choices"][0]["message"]["content"] == "The answer is 4"
    assert result["choices"][0]["message"]["reasoning_content"] == "two plus two makes four"
    assert result["usage"]["completion_tokens_details"]["reasoning_tokens"] == 5
    # The result is the run's chat.completion; its id is the job's ledger row.
    assert result["id"] == job["request_id"]
    (row,) = store.rows()
    assert row.id == job["request_id"] and row.status == "ok"
    assert (row.reasoning_tokens, row.output_tokens) == (5, 4)


@pytest.mark.parametrize(
    ("payload", "param", "says"),
    [
        (b"{not json", None, "not valid JSON"),
        ({"messages": []}, "messages", "at least one message"),
        (
            {"messages": [{"role": "user", "content": "hi"}], "stream": True},
            "stream",
            "cannot stream",
        ),
        (body(ponder={"strategy": "nope"}), "ponder.strategy", "unknown strategy"),
        (body(n=3, ponder={"strategy": "best_of_n"}), "n", "n=3 runs only with strategy direct"),
        (body(ponder={"bogus": 1}), "ponder.bogus", "unknown option"),
        (body(ponder={"params": {"database": "/etc/passwd"}}), "ponder.params.database", "policy"),
    ],
)
async def test_bad_input_is_a_400_and_stores_nothing(
    store: Store, payload: Any, param: str | None, says: str
) -> None:
    backend = FakeBackend([ANSWER])
    async with serving(store, backend) as (client, _, _):
        if isinstance(payload, bytes):
            r = await client.post(
                "/v1/jobs", content=payload, headers={"content-type": "application/json"}
            )
        else:
            r = await client.post("/v1/jobs", json=payload)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and says in error["message"]
        assert error["param"] == param
        listed = await client.get("/v1/jobs")
    assert listed.json()["data"] == []
    assert job_rows(store) == [] and store.rows() == [] and backend.calls == []


async def test_a_queued_job_can_be_cancelled_and_never_runs(store: Store) -> None:
    backend = FakeBackend([ANSWER])
    # No worker here: the job stays queued until it is cancelled.
    async with serving(store, backend, job_concurrency=0) as (client, _, _):
        job = (await client.post("/v1/jobs", json=body())).json()
        r = await client.delete(f"/v1/jobs/{job['id']}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert r.json()["finished_at"] is not None
        again = await client.delete(f"/v1/jobs/{job['id']}")
        assert again.status_code == 409
        assert "cancelled; only a queued job" in again.json()["error"]["message"]
    # A server with a worker on the same database does not run it either.
    async with serving(store, backend) as (client, _, jobs):
        await asyncio.sleep(0.2)
        assert (await client.get(f"/v1/jobs/{job['id']}")).json()["status"] == "cancelled"
    assert backend.calls == [] and store.rows() == []


async def test_a_running_job_cannot_be_cancelled(store: Store) -> None:
    backend = GatedBackend()
    async with serving(store, backend) as (client, _, _):
        job = (await client.post("/v1/jobs", json=body())).json()
        await asyncio.wait_for(backend.entered.wait(), 10)
        r = await client.delete(f"/v1/jobs/{job['id']}")
        assert r.status_code == 409 and "running" in r.json()["error"]["message"]
        backend.gate.set()
        done = await wait_done(client, job["id"])
    assert done["status"] == "succeeded"
    assert [row.id for row in store.rows()] == [done["request_id"]]


async def test_jobs_belong_to_the_key_that_queued_them(store: Store) -> None:
    _, alice = store.create_key("alice", team="ml")
    _, bob = store.create_key("bob")
    _, admin = store.create_key("root", scopes=["admin"])
    async with serving(store, job_concurrency=0) as (client, _, _):
        r = await client.post("/v1/jobs", json=body())
        assert r.status_code == 401  # same auth as the chat endpoint
        job = (await client.post("/v1/jobs", json=body(), headers=bearer(alice))).json()
        url = f"/v1/jobs/{job['id']}"

        for method in ("GET", "DELETE"):
            r = await client.request(method, url, headers=bearer(bob))
            assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
        missing = await client.get("/v1/jobs/job_doesnotexist", headers=bearer(bob))
        assert missing.json()["error"]["message"] == r.json()["error"]["message"].replace(
            job["id"], "job_doesnotexist"
        )  # someone else's job reads exactly like a missing one
        assert (await client.get("/v1/jobs", headers=bearer(bob))).json()["data"] == []

        mine = (await client.get("/v1/jobs", headers=bearer(alice))).json()["data"]
        assert [j["id"] for j in mine] == [job["id"]] and "result" not in mine[0]
        assert (await client.get(url, headers=bearer(alice))).json()["status"] == "queued"
        assert (await client.get(url, headers=bearer(admin))).status_code == 200
        bad = await client.get("/v1/jobs?limit=lots", headers=bearer(alice))
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"
        bad = await client.get("/v1/jobs?status=done", headers=bearer(alice))
        assert bad.status_code == 400 and "queued, running" in bad.json()["error"]["message"]
    (stored,) = job_rows(store)
    # The key's secret never reaches the table (only ponder's own headers are kept).
    assert alice not in repr(tuple(stored)) and stored.key_id is not None


async def test_quota_refusal_ends_the_job_failed_with_the_429_body_and_no_usage(
    store: Store,
) -> None:
    record, secret = store.create_key("alice")
    store.set_limit(Limit("key", record.id, "tokens", "day", 5))
    backend = FakeBackend([ANSWER])
    async with serving(store, backend) as (client, _, _):
        r = await client.post("/v1/jobs", json=body(max_tokens=100), headers=bearer(secret))
        assert r.status_code == 202  # quota is decided when the job runs
        job = await wait_done(client, r.json()["id"], bearer(secret))
    assert job["status"] == "failed" and job["http_status"] == 429
    assert job["error"]["code"] == "quota_exceeded" and job["result"] is None
    assert "tokens" in job["error"]["message"]
    assert backend.calls == [] and store.rows() == []
    assert store.counter("key", record.id, "tokens", "day") == (0, 0)


async def test_a_job_reserves_and_settles_quota_when_it_runs(store: Store) -> None:
    record, secret = store.create_key("alice")
    store.set_limit(Limit("key", record.id, "requests", "day", 10))
    async with serving(store, job_concurrency=0) as (client, _, _):
        r = await client.post("/v1/jobs", json=body(), headers=bearer(secret))
        assert r.status_code == 202
    assert store.counter("key", record.id, "requests", "day") == (0, 0)  # queued: no charge
    async with serving(store) as (client, _, _):
        job = await wait_done(client, r.json()["id"], bearer(secret))
    assert job["status"] == "succeeded"
    assert store.counter("key", record.id, "requests", "day") == (1, 0)
    (row,) = store.rows()
    assert row.key_id == record.id and row.user == "alice"


async def test_a_key_revoked_before_its_job_runs_runs_nothing(store: Store) -> None:
    record, secret = store.create_key("alice")
    _, admin = store.create_key("root", scopes=["admin"])
    backend = FakeBackend([ANSWER])
    async with serving(store, backend, job_concurrency=0) as (client, _, _):
        job = (await client.post("/v1/jobs", json=body(), headers=bearer(secret))).json()
    store.revoke_key(record.id)
    async with serving(store, backend) as (client, _, _):
        done = await wait_done(client, job["id"], bearer(admin))
    assert done["status"] == "failed" and done["http_status"] == 401
    assert "revoked" in done["error"]["message"]
    assert backend.calls == [] and store.rows() == []


async def test_pending_jobs_per_key_are_capped(store: Store) -> None:
    async with serving(store, job_concurrency=0, job_max_pending=2) as (client, _, _):
        for _ in range(2):
            assert (await client.post("/v1/jobs", json=body())).status_code == 202
        r = await client.post("/v1/jobs", json=body())
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_pending_jobs"
        first = (await client.get("/v1/jobs")).json()["data"][-1]
        await client.delete(f"/v1/jobs/{first['id']}")
        assert (await client.post("/v1/jobs", json=body())).status_code == 202
    assert len(job_rows(store)) == 3


async def test_enqueue_validates_the_route_without_counting_the_prompt_as_seen(
    store: Store,
) -> None:
    from ponder.config import RouterSettings
    from ponder.router.policy import Router
    from ponder.strategies import available_strategies

    router = Router(RouterSettings(), strategies=available_strategies())
    backend = FakeBackend([ANSWER])
    gateway = Gateway(backend, ServerSettings(job_concurrency=0), store=store, router=router)
    app = create_app(backend, gateway=gateway)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        r = await client.post("/v1/jobs", json=body(ponder={"preset": "no-such-preset"}))
        assert r.status_code == 400 and "unknown preset" in r.json()["error"]["message"]
        r = await client.post("/v1/jobs", json=body(), headers={"x-ponder-preset": "math"})
        assert r.status_code == 202
    # Queueing routed the prompt without remembering it...
    assert len(router.novelty) == 0
    (row,) = job_rows(store)
    assert json.loads(row.headers) == {"x-ponder-preset": "math"}
    worker = Jobs(gateway, concurrency=1)
    await worker.start()
    try:
        deadline = time.monotonic() + 20
        while (job := JobQueue(store).get(row.id)) is None or job.status not in TERMINAL:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    finally:
        await worker.stop()
    # ...the run remembered it, once, and planned with the kept preset header.
    assert job.status == "succeeded" and len(router.novelty) == 1
    (ledger_row,) = store.rows()
    assert ledger_row.task_class == "math"


async def test_jobs_need_the_store() -> None:
    async with serving(None) as (client, _, _):
        r = await client.post("/v1/jobs", json=body())
    assert r.status_code == 400 and "without a store" in r.json()["error"]["message"]


# --------------------------------------------------------------------------- claiming, crashes


def test_racing_workers_never_claim_the_same_job(store: Store) -> None:
    queue = JobQueue(store)
    ids = {queue.enqueue(Caller(), body(f"q{i}"), {}).id for i in range(60)}
    claimed: list[list[str]] = [[] for _ in range(6)]
    barrier = threading.Barrier(6)

    def work(i: int) -> None:
        barrier.wait()
        while batch := queue.claim(f"host:1:w{i}", 3):
            claimed[i].extend(j.id for j in batch)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [j for batch in claimed for j in batch]
    assert len(every) == len(set(every)) == 60 and set(every) == ids
    assert {r.status for r in job_rows(store)} == {"running"}
    assert {r.attempts for r in job_rows(store)} == {1}


async def test_two_servers_on_one_database_run_each_job_exactly_once(store: Store) -> None:
    runs: Counter[str] = Counter()

    def answer(req: GenRequest, i: int) -> Reply:
        runs[req.messages[-1].content] += 1
        return ANSWER

    queue = JobQueue(store)
    jobs_in = [queue.enqueue(Caller(), body(f"question {i}"), {}) for i in range(30)]
    servers = []
    for _ in range(2):
        backend = FunctionBackend(answer, name="fake")
        backend.delay_s = 0.01
        gateway = Gateway(backend, ServerSettings(job_concurrency=4), store=store)
        servers.append(Jobs(gateway, idle_poll_s=0.05))
    await asyncio.gather(*(j.start() for j in servers))
    try:
        deadline = time.monotonic() + 30
        while True:
            states = [await asyncio.to_thread(queue.get, j.id) for j in jobs_in]
            if all(j is not None and j.status in TERMINAL for j in states):
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        await asyncio.gather(*(j.stop() for j in servers))
    assert {j.status for j in states if j} == {"succeeded"}
    assert runs == Counter({f"question {i}": 1 for i in range(30)})
    rows = store.rows()
    assert len(rows) == 30 and {r.id for r in rows} == {j.request_id for j in jobs_in}


async def test_a_job_left_running_by_a_dead_server_runs_again_once(store: Store) -> None:
    queue = JobQueue(store, max_attempts=3)
    job = queue.enqueue(Caller(), body(), {})
    # Another host's server claimed it and stopped renewing its lease long ago.
    (held,) = queue.claim("elsewhere:123:dead", 1, now=time.time() - 3600)
    assert held.id == job.id
    async with serving(store) as (client, _, _):
        done = await wait_done(client, job.id)
    assert done["status"] == "succeeded" and done["attempts"] == 2
    # The interrupted first attempt is on the job.
    (earlier,) = done["history"]
    assert earlier["attempt"] == 1 and earlier["worker"] == "elsewhere:123:dead"
    assert earlier["reason"] == "its lease ran out"
    assert [r.id for r in store.rows()] == [job.request_id]


async def test_a_job_interrupted_too_often_fails_with_a_clear_error(store: Store) -> None:
    queue = JobQueue(store, max_attempts=2)
    job = queue.enqueue(Caller(), body(), {})
    long_ago = time.time() - 3600
    (held,) = queue.claim("elsewhere:123:dead", 1, now=long_ago)
    assert queue.sweep() == (1, 0)  # first interruption: back in the queue
    (held,) = queue.claim("elsewhere:123:dead", 1, now=long_ago)
    assert held.attempts == 2
    async with serving(store, job_max_attempts=2) as (client, _, _):
        done = await wait_done(client, job.id)
    assert done["status"] == "failed" and done["http_status"] == 500
    assert done["error"]["code"] == "job_interrupted" and "2 times" in done["error"]["message"]
    assert store.rows() == []


def test_a_dead_process_on_this_host_is_recognised() -> None:
    import os
    import socket
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    host = socket.gethostname()[:100]
    assert dead_on_this_host(f"{host}:{proc.pid}:abcd")
    assert not dead_on_this_host(f"{host}:{os.getpid()}:abcd")  # this process
    assert not dead_on_this_host(f"{host}:1:abcd")  # init is alive (or not ours: alive)
    assert not dead_on_this_host(f"other-host:{proc.pid}:abcd")  # only its lease can tell


def test_worker_ids_name_their_process_and_survive_pid_reuse() -> None:
    import subprocess
    import sys

    from ponder.ledger.owners import process_owner, process_start
    from ponder.server.jobs import worker_id

    mine = worker_id()
    assert mine.startswith(process_owner() + "/") and not dead_on_this_host(mine)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = f"{socket_host()}:{proc.pid}:{process_start(proc.pid)}"
        assert not dead_on_this_host(f"{owner}/abcd")
        # A live process with the recorded pid but another start time reused the pid.
        assert dead_on_this_host(f"{socket_host()}:{proc.pid}:1/abcd")
    finally:
        proc.kill()
        proc.wait()
    assert dead_on_this_host(f"{owner}/abcd")


def socket_host() -> str:
    import socket

    return socket.gethostname()[:100]


async def test_a_run_that_lost_its_claim_records_nothing(store: Store) -> None:
    queue = JobQueue(store)
    job = queue.enqueue(Caller(), body(), {})
    (mine,) = queue.claim("here:1:a", 1, now=time.time() - 3600)
    queue.sweep(now=time.time())  # the lease ran out: back in the queue
    (theirs,) = queue.claim("here:1:b", 1)
    gateway = Gateway(FakeBackend([ANSWER]), store=store)
    late = await gateway.chat(
        job.request,
        run_as=Caller(),
        request_id=job.request_id,
        on_settle=lambda conn, resp: queue.settle_in(mine, conn, resp),
    )
    assert getattr(late, "status", None) == 409 and late.body["error"]["code"] == "job_lost"
    assert store.rows() == []  # rolled back with the job update
    on_time = await gateway.chat(
        job.request,
        run_as=Caller(),
        request_id=job.request_id,
        on_settle=lambda conn, resp: queue.settle_in(theirs, conn, resp),
    )
    assert on_time.id == job.request_id  # type: ignore[union-attr]
    assert [r.id for r in store.rows()] == [job.request_id]
    final = queue.get(job.id)
    assert final is not None and final.status == "succeeded" and final.result is not None


async def test_shutdown_requeues_a_running_job_without_using_an_attempt(store: Store) -> None:
    backend = GatedBackend()
    gateway = Gateway(backend, ServerSettings(), store=store)
    jobs = Jobs(gateway, shutdown_grace_s=0.1)
    assert jobs.queue is not None
    job = jobs.queue.enqueue(Caller(), body(), {})
    await jobs.start()
    await asyncio.wait_for(backend.entered.wait(), 10)
    assert jobs.running == 1
    await jobs.stop()
    back = jobs.queue.get(job.id)
    assert back is not None and back.status == "queued" and back.attempts == 0
    assert store.rows() == []
    backend.gate.set()
    async with serving(store, backend) as (client, _, _):
        done = await wait_done(client, job.id)
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert len(store.rows()) == 1


def test_the_jobs_migration_upgrades_a_version_1_database(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        s.MIGRATIONS[0](conn)
        s.schema_info.create(conn, checkfirst=True)
        conn.execute(sa.insert(s.schema_info).values(id=1, version=1))
        assert not sa.inspect(conn).has_table("ponder_jobs")
    engine.dispose()
    store = Store(url)
    try:
        assert store.migrate() == s.SCHEMA_VERSION >= 2
        assert JobQueue(store).enqueue(Caller(), body(), {}).status == "queued"
    finally:
        store.close()


# --------------------------------------------------------------------------- verdicts


@dataclass
class Checked:
    """A third-party-style strategy with its own pass/fail verifier (the answer states 4)."""

    name: str = "checked"

    async def run(self, problem: Problem, ctx: RunContext) -> Outcome:
        gens = await ctx.generate(ctx.request(problem))
        candidates = [to_candidate(g) for g in gens]
        scores = await RegexVerifier(r".*\b4\b.*").score(problem, candidates)
        return finish(self.name, ctx, candidates, 0, scores)


@pytest.fixture
def checked_strategy(monkeypatch: pytest.MonkeyPatch) -> None:
    import ponder.strategies as strategies

    monkeypatch.setitem(strategies._BUILTIN, "checked", Checked)


@pytest.mark.usefixtures("checked_strategy")
async def test_the_strategys_verifier_verdict_is_recorded(store: Store) -> None:
    backend = FunctionBackend(
        lambda req, i: "It is 4" if "2+2" in req.messages[-1].content else "It is 5", name="fake"
    )
    async with serving(store, backend) as (client, _, _):
        ok = await client.post("/v1/chat/completions", json=body(ponder={"strategy": "checked"}))
        bad = await client.post(
            "/v1/chat/completions", json=body("What is 2+3?", ponder={"strategy": "checked"})
        )
        plain = await client.post("/v1/chat/completions", json=body())
        job = (await client.post("/v1/jobs", json=body(ponder={"strategy": "checked"}))).json()
        job = await wait_done(client, job["id"])
    verdicts = {r.id: r.verdict for r in store.rows()}
    assert verdicts[ok.json()["id"]] == "correct"
    assert verdicts[bad.json()["id"]] == "incorrect"
    # Direct has no verifier: a confident answer is not a verdict.
    assert verdicts[plain.json()["id"]] is None
    assert verdicts[job["request_id"]] == "correct"


async def test_feedback_records_the_callers_verdict_for_stats(store: Store) -> None:
    record, alice = store.create_key("alice")
    _, bob = store.create_key("bob")
    _, admin = store.create_key("root", scopes=["admin"])
    async with serving(store) as (client, _, _):
        first = await client.post("/v1/chat/completions", json=body(), headers=bearer(alice))
        second = await client.post("/v1/chat/completions", json=body(), headers=bearer(alice))
        rid = first.json()["id"]

        r = await client.post(
            "/v1/feedback", json={"request_id": rid, "verdict": "correct"}, headers=bearer(alice)
        )
        assert r.status_code == 200, r.text
        assert r.json() == {
            "object": "feedback",
            "request_id": rid,
            "verdict": "correct",
            "previous": None,
        }
        # Another key cannot grade (or learn about) alice's request.
        r = await client.post(
            "/v1/feedback", json={"request_id": rid, "verdict": "incorrect"}, headers=bearer(bob)
        )
        assert r.status_code == 404 and r.json()["error"]["param"] == "request_id"
        r = await client.post(
            "/v1/feedback",
            json={"request_id": second.json()["id"], "verdict": "incorrect"},
            headers=bearer(admin),
        )
        assert r.status_code == 200
        for wrong in (
            {"request_id": rid, "verdict": "great"},
            {"request_id": rid},
            {"request_id": rid, "verdict": "correct", "extra": 1},
            ["not", "an", "object"],
        ):
            r = await client.post("/v1/feedback", json=wrong, headers=bearer(alice))
            assert r.status_code == 400, wrong
        r = await client.post(
            "/v1/feedback",
            json={"request_id": "chatcmpl-nope", "verdict": "correct"},
            headers=bearer(alice),
        )
        assert r.status_code == 404
    rows = {r.id: r for r in store.rows()}
    assert rows[rid].verdict == "correct" and rows[second.json()["id"]].verdict == "incorrect"
    (general,) = class_stats(rows.values())
    assert (general.graded, general.correct) == (2, 1)
    assert general.cost_per_correct_usd == general.cost_usd  # one correct answer
    assert record.id == rows[rid].key_id


async def test_feedback_on_a_failed_request_is_refused(store: Store) -> None:
    def broken(req: GenRequest, i: int) -> Reply:
        raise RuntimeError("engine fell over")

    async with serving(store, FunctionBackend(broken, name="fake")) as (client, _, _):
        r = await client.post("/v1/chat/completions", json=body())
        assert r.status_code == 500
        (row,) = store.rows()
        fb = await client.post("/v1/feedback", json={"request_id": row.id, "verdict": "correct"})
    assert fb.status_code == 400 and "did not answer" in fb.json()["error"]["message"]
    assert store.rows()[0].verdict is None


def test_job_json_round_trips_through_the_table(store: Store) -> None:
    queue = JobQueue(store)
    caller = Caller(key_id=None, session="s1", scopes=frozenset({"reasoning"}))
    job = queue.enqueue(caller, body(), {"x-ponder-preset": "math"})
    stored = queue.get(job.id)
    assert isinstance(stored, Job) and stored == job
    assert json.loads(json.dumps(stored.public()))["status"] == "queued"


async def test_bad_ids_and_out_of_range_integers_are_4xx_and_store_nothing(store: Store) -> None:
    _, root = store.create_key("root", scopes=["admin"])
    _, secret = store.create_key("alice")
    async with serving(store) as (client, _, _):
        # A NUL byte names no job and no key (PostgreSQL text cannot even hold one).
        for method in ("GET", "DELETE"):
            r = await client.request(method, "/v1/jobs/job_%00x", headers=bearer(secret))
            assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
        r = await client.delete("/v1/admin/keys/key_%00x", headers=bearer(root))
        assert r.status_code == 404, r.text
        r = await client.post("/v1/admin/keys", json={"user": "a\x00b"}, headers=bearer(root))
        assert r.status_code == 400 and r.json()["error"]["param"] == "user", r.text
        # Integers past a 64-bit counter: refused before they reach the database.
        limit = {"scope": "user", "subject": "bob", "metric": "tokens", "window": "day"}
        for bad in ({**limit, "limit": 2**63}, {**limit, "subject": "b\x00b", "limit": 5}):
            r = await client.put("/v1/admin/quotas", json=bad, headers=bearer(root))
            assert r.status_code == 400, r.text
        assert store.limits() == []
        # A job whose worst case no counter can hold is refused at enqueue, not run to fail.
        for extra in ({"max_tokens": 2**63}, {"max_tokens": 1e30}, {"ponder": {"budget": 2**64}}):
            r = await client.post("/v1/jobs", json=body(**extra), headers=bearer(secret))
            assert r.status_code == 400, (extra, r.text)
        listed = await client.get("/v1/jobs", headers=bearer(secret))
        assert listed.status_code == 200 and listed.json()["data"] == []
        # The chat path refuses the same worst case before anything is reserved.
        r = await client.post(
            "/v1/chat/completions", json=body(max_tokens=2**63), headers=bearer(secret)
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens", r.text
    assert store.rows() == []


async def test_a_running_worker_requeues_the_jobs_of_a_sibling_that_died(store: Store) -> None:
    import subprocess
    import sys

    from ponder.ledger.owners import process_start

    gateway = Gateway(FakeBackend([ANSWER]), ServerSettings(), store=store)
    jobs = Jobs(gateway, lease_s=0.6, idle_poll_s=0.1)
    assert jobs.queue is not None
    # A live sibling on this host holds a job for an hour...
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    owner = f"{socket_host()}:{sibling.pid}:{process_start(sibling.pid)}"
    job = jobs.queue.enqueue(Caller(), body(), {})
    (held,) = JobQueue(store, lease_s=3600).claim(f"{owner}/abcd", 1)
    assert held.id == job.id
    await jobs.start()  # it is alive: its job stays with it
    try:
        assert (now := jobs.queue.get(job.id)) is not None and now.status == "running"
        # ...and is killed while this worker keeps running.
        sibling.kill()
        sibling.wait()
        deadline = time.monotonic() + 30
        while (found := jobs.queue.get(job.id)) is None or found.status not in TERMINAL:
            assert time.monotonic() < deadline, "the dead sibling's job was not requeued"
            await asyncio.sleep(0.05)
    finally:
        await jobs.stop()
    assert found.status == "succeeded" and found.attempts == 2
    assert [h["reason"] for h in found.history] == ["its server process died"]
