"""The fault suite: real sockets, a misbehaving upstream, and what reaches it.

``FaultUpstream`` is a raw asyncio HTTP/1.1 server started in the test. Each request
carries a marker in its prompt, and the server counts how many times it *received*
each marker (a reception is a complete request read off the socket, which is what a
billing upstream charges for), then misbehaves as scripted: 500, 429, hang, reset,
close after reading, malformed JSON, a truncated body, a truncated or silent stream,
inflated usage. The backend runs as the gateway runs it: built from a tier's settings
(guard, retries, breaker) by :class:`~ponder.backends.tiers.Tiers`, over both HTTP
clients (http11, aiohttp, httpx). Bounds on time are generous (a loaded CI machine), never tight timings.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from ponder.backends.openai_compat import OpenAICompatBackend
from ponder.backends.upstream_log import record_upstream
from ponder.config import ServerSettings, TierSettings
from ponder.errors import (
    BudgetExhausted,
    UpstreamAnswerLost,
    UpstreamError,
    UpstreamReadTimeout,
    UpstreamTimeout,
)
from ponder.guard import Tiers
from ponder.types import GenRequest, Message

# None: the default choice (ponder's http11 client for plain-http JSON calls, aiohttp for
# streams); then each client pinned for every call.
CLIENTS = [None, "aiohttp", "httpx"]
RETRIES = 2  # the default: 1 + 2 attempts at most, as the OpenAI SDK


def completion(text: str = "pong", *, prompt: int = 3, completion_tokens: int = 1) -> bytes:
    return json.dumps(
        {
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt + completion_tokens,
            },
        }
    ).encode()


def _chunk(content: str, finish: str | None = None) -> bytes:
    event = {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]}
    return f"data: {json.dumps(event)}\n\n".encode()


class FaultUpstream:
    """A real HTTP/1.1 server on loopback that misbehaves per request, counting receptions.

    ``script`` is the behaviour of successive receptions (the last one repeats).
    """

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.receptions: Counter[str] = Counter()
        self.total = 0
        self.server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}/v1"

    async def __aenter__(self) -> FaultUpstream:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self._handlers):
            task.cancel()  # hung replies end with the test
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                body = json.loads(await reader.readexactly(length))
                marker = body["messages"][-1]["content"]
                self.receptions[marker] += 1
                mode = self.script[min(self.total, len(self.script) - 1)]
                self.total += 1
                if not await self._reply(mode, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the test is over
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _reply(self, mode: str, w: asyncio.StreamWriter) -> bool:
        """Answer one request as ``mode`` says; False when the connection is done."""

        def send(status: str, body: bytes, extra: str = "", ctype: str = "application/json"):
            w.write(
                f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\n"
                f"content-length: {len(body)}\r\n{extra}\r\n".encode()
                + body
            )

        if mode == "ok":
            send("200 OK", completion())
        elif mode == "inflated":  # a hostile upstream's usage report
            send("200 OK", completion(prompt=50_000, completion_tokens=100_000))
        elif mode == "500":
            send("500 Internal Server Error", b'{"error":{"message":"CUDA out of memory"}}')
        elif mode == "429":
            send(
                "429 Too Many Requests", b'{"error":{"message":"slow down"}}', "retry-after: 0\r\n"
            )
        elif mode == "204":  # bodiless: a client must not wait for a body (or for EOF)
            w.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif mode == "malformed":
            send("200 OK", b'{"choices": [{"index": 0, "mess')
        elif mode == "hang":
            await asyncio.sleep(3600)
        elif mode == "reset":
            w.transport.abort()
            return False
        elif mode == "close":  # read the request, then close without a word
            return False
        elif mode == "truncated":  # promises more body than it sends, then closes
            w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500")
            w.write(b"\r\n\r\n" + completion()[:40])
            await w.drain()
            return False
        elif mode == "stream_ok":
            w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
            w.write(_chunk("po") + _chunk("ng", "stop") + b"data: [DONE]\n\n")
            await w.drain()
            return False
        elif mode == "stream_truncated":
            w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n" + _chunk("po"))
            await w.drain()
            return False
        elif mode == "stream_hang":
            w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n" + _chunk("po"))
            await w.drain()
            await asyncio.sleep(3600)
        else:  # pragma: no cover - a typo in a test
            raise AssertionError(mode)
        await w.drain()
        return True


def tier(url: str, client: str | None, **options: Any) -> TierSettings:
    return TierSettings(
        backend="openai_compat",
        model="m",
        base_url=url,
        connect_timeout_s=1.0,
        retries=RETRIES,
        retry_base_delay_s=0.01,
        options={"http_client": client, **options},
    )


def guarded(url: str, client: str | None, **options: Any) -> Any:
    """The tier's backend exactly as the gateway builds it: guard, retries, breaker."""
    return Tiers({"up": tier(url, client, **options)}).backend("up")


def ask(**kw: Any) -> tuple[str, GenRequest]:
    marker = f"request {uuid.uuid4()}"
    return marker, GenRequest(messages=[Message(role="user", content=marker)], **kw)


# ---------------------------------------------------------------- what may be resent


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [("500", 502, "upstream_error"), ("429", 429, "upstream_rate_limited")],
)
async def test_a_refusal_is_resent_at_most_retries_times(client, fault, status, code):
    async with FaultUpstream([fault]) as up:
        backend = guarded(up.url, client)
        marker, req = ask()
        with record_upstream() as report, pytest.raises(UpstreamError) as info:
            await backend.generate(req)
    assert up.receptions[marker] == 1 + RETRIES
    assert (info.value.status, info.value.code) == (status, code)
    # Every attempt is visible, with the upstream's status.
    summary = report.summary()
    assert summary["attempts"] == 1 + RETRIES
    assert [e["status"] for e in summary["errors"]] == [int(fault)] * (1 + RETRIES)


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_refusal_then_success_costs_one_answer(client):
    async with FaultUpstream(["429", "ok"]) as up:
        backend = guarded(up.url, client)
        marker, req = ask()
        with record_upstream() as report:
            (gen,) = await backend.generate(req)
    assert gen.text == "pong" and up.receptions[marker] == 2
    assert report.summary()["attempts"] == 2 and len(report.errors) == 1


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("fault", ["reset", "close", "malformed", "truncated"])
async def test_an_answer_lost_after_the_upstream_read_the_request_is_never_resent(client, fault):
    async with FaultUpstream([fault, "ok"]) as up:
        backend = guarded(up.url, client)
        marker, req = ask()
        with record_upstream() as report, pytest.raises(UpstreamAnswerLost) as info:
            await backend.generate(req)
    assert up.receptions[marker] == 1
    assert info.value.status == 502 and not info.value.retryable
    assert report.summary()["attempts"] == 1
    assert report.errors[0].error == "upstream_answer_lost"


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_close_on_a_pooled_connection_is_not_resent_over_the_other_idle_ones(client):
    """With eight idle keep-alive connections, a request whose connection is closed after
    the upstream read it is not tried again on the next pooled connection."""
    async with FaultUpstream(["ok"] * 8 + ["close", "ok"]) as up:
        backend = guarded(up.url, client)
        await asyncio.gather(*(backend.generate(ask()[1]) for _ in range(8)))
        marker, req = ask()
        with pytest.raises(UpstreamAnswerLost):
            await backend.generate(req)
    assert up.receptions[marker] == 1


@pytest.mark.parametrize("client", CLIENTS)
async def test_an_unreachable_upstream_is_retried_since_nothing_was_sent(client):
    async with FaultUpstream(["ok"]) as up:
        url = up.url
    backend = guarded(url, client)
    with record_upstream() as report, pytest.raises(UpstreamError, match="unreachable") as info:
        await backend.generate(ask()[1])
    assert info.value.retryable and info.value.status == 502
    assert report.summary()["attempts"] == 1 + RETRIES


# ---------------------------------------------------------------- honest timeouts


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_hung_upstream_ends_in_a_504_within_the_read_timeout(client):
    async with FaultUpstream(["hang", "ok"]) as up:
        backend = guarded(up.url, client, read_timeout_s=0.5)
        marker, req = ask()
        t0 = time.monotonic()
        with pytest.raises(UpstreamReadTimeout) as info:
            await backend.generate(req)
        took = time.monotonic() - t0
    assert 0.4 <= took < 5.0
    assert (info.value.status, info.value.code) == (504, "upstream_timeout")
    assert up.receptions[marker] == 1  # it read the request: not sent again


@pytest.mark.parametrize("client", CLIENTS)
async def test_the_backend_alone_ends_a_hung_call_at_the_requests_deadline(client):
    async with FaultUpstream(["hang"]) as up:
        backend = OpenAICompatBackend(up.url, http_client=client)
        marker, req = ask(deadline=time.monotonic() + 0.5)
        t0 = time.monotonic()
        with pytest.raises(UpstreamTimeout) as info:
            await backend.generate(req)
        took = time.monotonic() - t0
        await backend.aclose()
    assert 0.4 <= took < 5.0 and info.value.status == 504
    assert info.value.reason == "deadline" and up.receptions[marker] == 1


@pytest.mark.parametrize("client", CLIENTS)
async def test_under_the_guard_the_deadline_is_the_runs_anytime_stop(client):
    """The run's own deadline is the guard's to report: strategies stop and answer with
    what they have (the gateway marks that truncated); nothing was resent meanwhile."""
    async with FaultUpstream(["hang"]) as up:
        backend = guarded(up.url, client)
        marker, req = ask(deadline=time.monotonic() + 0.5)
        t0 = time.monotonic()
        with pytest.raises(BudgetExhausted) as info:
            await backend.generate(req)
        took = time.monotonic() - t0
    assert 0.4 <= took < 5.0 and info.value.reason == "deadline"
    assert up.receptions[marker] == 1


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_stream_that_goes_silent_ends_in_a_504_not_a_finished_answer(client):
    async with FaultUpstream(["stream_hang", "stream_ok"]) as up:
        backend = guarded(up.url, client, read_timeout_s=0.5)
        marker, req = ask()
        got: list[str] = []
        t0 = time.monotonic()
        with pytest.raises(UpstreamReadTimeout):
            async for d in backend.stream(req):
                got.append(d.text)
                assert d.finish_reason is None  # never a "stop" it did not send
        took = time.monotonic() - t0
    assert "".join(got) == "po" and 0.4 <= took < 5.0
    assert up.receptions[marker] == 1


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_truncated_stream_is_reported_once_never_restarted(client):
    async with FaultUpstream(["stream_truncated", "stream_ok"]) as up:
        backend = guarded(up.url, client)
        marker, req = ask()
        with pytest.raises(UpstreamAnswerLost, match="truncated"):
            [d async for d in backend.stream(req)]
    assert up.receptions[marker] == 1


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_whole_stream_streams(client):
    async with FaultUpstream(["stream_ok"]) as up:
        backend = guarded(up.url, client)
        marker, req = ask()
        deltas = [d async for d in backend.stream(req)]
    assert "".join(d.text for d in deltas) == "pong" and deltas[-1].finish_reason == "stop"
    assert up.receptions[marker] == 1


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_bodiless_204_does_not_wait_for_a_body(client):
    async with FaultUpstream(["204"]) as up:
        backend = guarded(up.url, client, read_timeout_s=30.0)
        marker, req = ask()
        t0 = time.monotonic()
        with pytest.raises(UpstreamAnswerLost, match="not JSON"):
            await backend.generate(req)
        took = time.monotonic() - t0
    assert took < 5.0 and up.receptions[marker] == 1


# ---------------------------------------------------------------- usage checks


@pytest.mark.parametrize("client", CLIENTS)
async def test_inflated_usage_is_clamped_to_what_was_asked_and_recorded(client):
    async with FaultUpstream(["inflated"]) as up:
        backend = guarded(up.url, client)
        marker, req = ask(max_tokens=16)
        with record_upstream() as report:
            (gen,) = await backend.generate(req)
    u = gen.usage
    assert u.completion_tokens == 16  # max_tokens: all this call could generate
    assert u.prompt_tokens < 1_000  # a one-line prompt cannot be 50,000 tokens
    assert u.clamped == 100_000 - 16 + 50_000 - u.prompt_tokens
    (anomaly,) = report.anomalies
    assert (anomaly.reported_completion, anomaly.allowed_completion) == (100_000, 16)
    assert report.summary()["usage_clamped"] == u.clamped


# ---------------------------------------------------------------- through the gateway


QUOTA = 2_000  # tokens a day for the caller's team


def gateway_client(url: str, tmp_path: Path, **options: Any) -> tuple[httpx.AsyncClient, Any]:
    """The real app in-process, its one tier an openai_compat backend on the fault server,
    auth on and a team quota that every request reserves against."""
    from ponder.budget.quota import Limit
    from ponder.ledger import Store
    from ponder.server.app import create_app
    from ponder.server.gateway import Gateway

    backend = guarded(url, None, **options)
    store = Store(f"sqlite:///{tmp_path / 'ledger.db'}")
    _, secret = store.create_key("alice", team="ml")
    store.set_limit(Limit("team", "ml", "tokens", "day", QUOTA))
    gateway = Gateway(backend, ServerSettings(tier="up"), store=store, tiers={"up": backend})
    app = create_app(backend, gateway=gateway)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://t",
        headers={"authorization": f"Bearer {secret}"},
    )
    return client, store


def chat(marker: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": marker}],
        "max_tokens": 16,
        **extra,
    }


@pytest.mark.parametrize(
    ("fault", "status", "receptions"),
    [("close", 502, 1), ("malformed", 502, 1), ("500", 502, 1 + RETRIES), ("hang", 504, 1)],
)
async def test_the_gateway_answers_an_upstream_fault_with_its_status_and_a_ledger_row(
    tmp_path, fault, status, receptions
):
    async with FaultUpstream([fault]) as up:
        client, store = gateway_client(up.url, tmp_path, read_timeout_s=0.5)
        marker = f"request {uuid.uuid4()}"
        async with client:
            resp = await client.post("/v1/chat/completions", json=chat(marker))
            metrics = (await client.get("/metrics")).text.splitlines()
    assert resp.status_code == status, resp.text
    assert up.receptions[marker] == receptions
    # Every attempt is counted, failed ones under their error code.
    attempts = [m for m in metrics if m.startswith("ponder_upstream_attempts_total{")]
    assert sum(float(m.split()[-1]) for m in attempts) == receptions
    assert not [m for m in attempts if 'outcome="ok"' in m and not m.endswith(" 0.0")]
    error = resp.json()["error"]
    assert error["code"] in ("upstream_error", "upstream_answer_lost", "upstream_timeout")
    (row,) = store.rows()
    assert row.http_status == status and row.status != "ok"
    assert row.output_tokens == row.reasoning_tokens == 0
    used, held = store.counter("team", "ml", "tokens", "day")
    assert held == 0  # the reservation was released
    assert used == row.input_tokens + row.cached_input_tokens  # nothing generated was charged


async def test_the_gateway_never_charges_inflated_usage(tmp_path):
    async with FaultUpstream(["inflated"]) as up:
        client, store = gateway_client(up.url, tmp_path)
        async with client:
            resp = await client.post("/v1/chat/completions", json=chat("hi"))
            metrics = (await client.get("/metrics")).text.splitlines()
    assert resp.status_code == 200, resp.text
    # The attempt and the dropped usage are counted in the metrics too.
    assert 'ponder_upstream_attempts_total{outcome="ok",tier="up"} 1.0' in metrics
    (clamped,) = [m for m in metrics if m.startswith("ponder_usage_clamped_tokens_total{")]
    assert float(clamped.split()[-1]) > 100_000
    usage = resp.json()["usage"]
    assert usage["completion_tokens"] <= 16 and usage["prompt_tokens"] < 1_000
    (row,) = store.rows()
    assert row.output_tokens + row.reasoning_tokens <= 16 and row.input_tokens < 1_000
    used, held = store.counter("team", "ml", "tokens", "day")
    assert held == 0 and used < QUOTA  # 150,000 reported tokens did not blow a 2,000 quota
    # The anomaly is on the ledger row: what was dropped, and the attempt.
    assert row.plan["upstream"]["usage_clamped"] > 100_000
    assert row.plan["upstream"]["attempts"] == 1


async def test_the_gateway_never_answers_a_hung_upstream_with_an_empty_stop(tmp_path):
    async with FaultUpstream(["hang"]) as up:
        client, store = gateway_client(up.url, tmp_path)
        async with client:
            resp = await client.post(
                "/v1/chat/completions", json=chat("hi", ponder={"deadline_s": 0.5})
            )
    if resp.status_code == 200:
        body = resp.json()
        assert body["ponder"]["truncated"] and body["choices"][0]["finish_reason"] != "stop"
    else:
        assert resp.status_code == 504
