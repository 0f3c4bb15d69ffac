"""Honest deadlines: a run out of time ends with its best partial answer marked
truncated (finish_reason "length", ponder.stop_reason "deadline") or, with nothing
usable, a 504 upstream_timeout; never an empty 200 that says "stop". Its hold is
released and its ledger row says what happened.

And a client that hangs up on a non-streamed request cancels its run: the upstream
call is abandoned, the hold released at once, the ledger row says cancelled (through
a real uvicorn server, since that is where ``http.disconnect`` comes from)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from ponder.backends.upstream_log import UsageAnomaly, current_upstream_report
from ponder.budget.quota import Limit
from ponder.config import ServerSettings
from ponder.ledger import Store
from ponder.server.app import create_app
from ponder.server.gateway import Gateway
from ponder.server.planning import plan
from ponder.server.protocol import ChatCompletionRequest
from ponder.types import Capabilities, Delta, Generation, GenRequest, Usage

USER = [{"role": "user", "content": "What is 2+2?"}]
# A hang guard, not a timing claim: a run that ignored its deadline would block here.
HANG_GUARD_S = 30.0


class HangingBackend:
    """Answers its first ``answered`` calls, then hangs (as a stalled upstream does).

    Streams yield ``streamed`` deltas and then hang.
    """

    name = "hanging"

    def __init__(self, answered: int = 0, streamed: int = 0) -> None:
        self.capabilities = Capabilities(native_n=True, continue_final=True)
        self.answered = answered
        self.streamed = streamed
        self.calls: list[GenRequest] = []
        self.cancelled = 0

    async def _hang(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def generate(self, req: GenRequest) -> list[Generation]:
        self.calls.append(req)
        if len(self.calls) > self.answered:
            await self._hang()
        usage = Usage(input=5, output=4)
        return [Generation(text="The answer is 4", usage=usage) for _ in range(req.n)]

    async def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        self.calls.append(req)
        for i in range(self.streamed):
            yield Delta(text=f"word{i} ")
        await self._hang()
        yield Delta(text="never")


def _gateway(backend: Any, store: Store, **settings: Any) -> tuple[Any, Gateway]:
    store.set_limit(Limit("session", "*", "tokens", "day", 10**9))
    gateway = Gateway(backend, ServerSettings(**settings), store=store)
    return create_app(backend, gateway=gateway), gateway


async def _post(app: Any, body: dict[str, Any]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await asyncio.wait_for(
            client.post(
                "/v1/chat/completions", json=body, headers={"x-ponder-session": "s"}, timeout=None
            ),
            HANG_GUARD_S,
        )


def _released(store: Store) -> bool:
    return store.counter("session", "s", "tokens", "day")[1] == 0


async def test_hung_upstream_with_nothing_back_is_a_504(store: Store) -> None:
    backend = HangingBackend(answered=0)
    app, _ = _gateway(backend, store)
    r = await _post(app, {"messages": USER, "ponder": {"deadline_s": 0.3}})
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert backend.cancelled == 1  # the hung call was abandoned, not left running
    assert _released(store)
    (row,) = store.rows()
    assert row.status == "error" and row.http_status == 504
    assert row.error_code == "upstream_timeout"


async def test_the_latency_class_default_deadline_applies_without_deadline_s(
    store: Store,
) -> None:
    backend = HangingBackend(answered=0)
    app, _ = _gateway(backend, store, deadline_interactive_s=0.3)
    r = await _post(app, {"messages": USER})
    assert r.status_code == 504, r.text
    assert _released(store)


async def test_partial_answer_at_the_deadline_is_truncated_with_its_reason(store: Store) -> None:
    # best_of_n with a greedy first call: that call answers, the sampled ones hang.
    backend = HangingBackend(answered=1)
    app, _ = _gateway(backend, store)
    body = {
        "messages": USER,
        "ponder": {
            "strategy": "best_of_n",
            "params": {"n": 3, "include_greedy": True},
            "deadline_s": 0.3,
        },
    }
    r = await _post(app, body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["choices"][0]["message"]["content"] == "The answer is 4"
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["ponder"]["truncated"] is True
    assert data["ponder"]["stop_reason"] == "deadline"
    assert r.headers["x-ponder-truncated"] == "true"
    assert _released(store)
    (row,) = store.rows()
    assert row.status == "ok" and row.truncated


async def test_stream_cut_by_the_deadline_ends_with_length(store: Store) -> None:
    backend = HangingBackend(streamed=2)
    app, _ = _gateway(backend, store)
    body = {"messages": USER, "stream": True, "ponder": {"deadline_s": 0.3}}
    r = await _post(app, body)
    assert r.status_code == 200
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in r.text.splitlines()
        if line.startswith("data: {")
    ]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "word0 word1 "
    finishes = [c["choices"][0].get("finish_reason") for c in chunks if c["choices"]]
    assert finishes[-1] == "length"
    assert _released(store)


async def test_stream_with_no_token_before_the_deadline_is_a_504(store: Store) -> None:
    backend = HangingBackend(streamed=0)
    app, _ = _gateway(backend, store)
    body = {"messages": USER, "stream": True, "ponder": {"deadline_s": 0.3}}
    r = await _post(app, body)
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert _released(store)


@pytest.mark.parametrize(
    ("extra", "headers", "latency", "deadline"),
    [
        ({}, {}, "interactive", 120.0),
        ({"ponder": {"latency": "async"}}, {}, "async", 1800.0),
        ({}, {"x-ponder-latency": "async"}, "async", 1800.0),
        ({"ponder": {"deadline_s": 5}}, {}, "interactive", 5.0),
        # deadline_s only shortens the class deadline.
        ({"ponder": {"deadline_s": 5000}}, {}, "interactive", 120.0),
    ],
)
def test_each_latency_class_has_its_default_deadline(
    extra: dict[str, Any], headers: dict[str, str], latency: str, deadline: float
) -> None:
    request = ChatCompletionRequest.model_validate({"messages": USER, **extra})
    p = plan(request, ServerSettings(), headers=headers)
    assert (p.latency, p.budget.deadline_s) == (latency, deadline)


def test_queued_jobs_default_to_the_async_deadline_and_the_cap_bounds_both() -> None:
    request = ChatCompletionRequest.model_validate({"messages": USER})
    assert plan(request, ServerSettings(), default_latency="async").budget.deadline_s == 1800.0
    capped = ServerSettings(request_timeout_s=60)
    assert plan(request, capped, default_latency="async").budget.deadline_s == 60.0


# --------------------------------------------------------------------------- disconnects


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _until(check: object, within_s: float = 5.0) -> bool:
    """Poll ``check()`` until true or ``within_s`` passed (a hang guard, not a timing)."""
    give_up = time.monotonic() + within_s
    while time.monotonic() < give_up:
        if check():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return bool(check())  # type: ignore[operator]


async def test_disconnect_cancels_a_non_streamed_run_and_releases_its_hold(store: Store) -> None:
    store.set_limit(Limit("session", "*", "tokens", "day", 10**9))
    backend = HangingBackend(answered=0)
    # The deadline is far away: only the disconnect can end this run in time.
    gateway = Gateway(backend, ServerSettings(), store=store)
    app = create_app(backend, gateway=gateway)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    serving = asyncio.create_task(server.serve())
    try:
        assert await _until(lambda: server.started)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            try:
                await client.post(
                    "/v1/chat/completions",
                    json={"messages": USER},
                    headers={"x-ponder-session": "s"},
                    timeout=httpx.Timeout(5.0, read=1.0),
                )
                raise AssertionError("the hung request answered")
            except httpx.ReadTimeout:
                pass
            # While the request hung its hold was there (it is the one being released).
            assert backend.calls
        assert await _until(lambda: store.counter("session", "s", "tokens", "day")[1] == 0)
        assert await _until(lambda: len(store.rows()) == 1)
        (row,) = store.rows()
        assert row.status == "cancelled"
        assert backend.cancelled == 1
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)


async def test_hold_is_held_while_the_client_waits(store: Store) -> None:
    """The counterpart: without a disconnect the hold stays while the run is going."""
    store.set_limit(Limit("session", "*", "tokens", "day", 10**9))
    backend = HangingBackend(answered=0)
    app = create_app(backend, gateway=Gateway(backend, ServerSettings(), store=store))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        request = asyncio.create_task(
            client.post(
                "/v1/chat/completions", json={"messages": USER}, headers={"x-ponder-session": "s"}
            )
        )
        assert await _until(lambda: bool(backend.calls))
        assert store.counter("session", "s", "tokens", "day")[1] > 0
        assert store.rows() == []
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)


# --------------------------------------------------------------------------- usage anomalies


class InflatingUpstream(HangingBackend):
    """Answers at once, and reports (as the upstream client does after clamping) that
    its upstream claimed far more tokens than the call could use."""

    async def generate(self, req: GenRequest) -> list[Generation]:
        report = current_upstream_report()
        assert report is not None, "the gateway records every call's upstream report"
        report.anomalies.append(
            UsageAnomaly(
                upstream="up",
                reported_prompt=5,
                reported_completion=100_000,
                allowed_prompt=600,
                allowed_completion=req.max_tokens,
            )
        )
        return [Generation(text="The answer is 4", usage=Usage(input=5, output=4))]


async def test_clamped_usage_is_on_the_row_and_alerted(store: Store) -> None:
    backend = InflatingUpstream()
    app, gateway = _gateway(backend, store)
    r = await _post(app, {"messages": USER, "max_tokens": 16})
    assert r.status_code == 200, r.text
    (row,) = store.rows()
    assert row.plan["upstream"]["usage_clamped"] == 100_000 - 16
    (alert,) = [a for a in gateway.alerts.sent if a.kind == "usage_anomaly"]
    assert alert.data["clamped_tokens"] == 100_000 - 16
    assert alert.data["request_id"] == row.id
