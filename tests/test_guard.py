"""Resilience wrappers against a real (misbehaving) upstream on loopback.

``FaultyUpstream`` is a raw asyncio HTTP server: each request takes the next
behaviour from a script (ok, 500, hang, reset, malformed JSON, truncated
stream), so retries, timeouts, the breaker and fallback run over real sockets.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from ponder.backends.fake import FakeBackend
from ponder.backends.openai_compat import OpenAICompatBackend
from ponder.errors import (
    BudgetExhausted,
    CircuitOpen,
    UpstreamAnswerLost,
    UpstreamError,
    UpstreamTimeout,
)
from ponder.guard import CircuitBreaker, FallbackBackend, GuardedBackend, RetryPolicy, Timeouts
from ponder.types import GenRequest, Message

Q = [Message(role="user", content="ping")]
OK = {
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "pong"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


class FaultyUpstream:
    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.requests = 0
        self.server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}/v1"

    async def __aenter__(self) -> FaultyUpstream:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode().split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                await reader.readexactly(length)
                mode = self.script[min(self.requests, len(self.script) - 1)]
                self.requests += 1
                if not await self._reply(mode, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _reply(self, mode: str, w: asyncio.StreamWriter) -> bool:
        def send(
            status: str, body: bytes, ctype: str = "application/json", extra: str = ""
        ) -> None:
            w.write(
                f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\n"
                f"content-length: {len(body)}\r\n{extra}\r\n".encode()
                + body
            )

        if mode == "ok":
            send("200 OK", json.dumps(OK).encode())
        elif mode == "500":
            send("500 Internal Server Error", b'{"error":{"message":"CUDA out of memory"}}')
        elif mode == "429":
            send(
                "429 Too Many Requests",
                b'{"error":{"message":"slow down"}}',
                extra="retry-after: 0\r\n",
            )
        elif mode == "400":
            send("400 Bad Request", b'{"error":{"message":"top_k must be >= -1"}}')
        elif mode == "malformed":
            send("200 OK", b'{"choices": [{"index": 0, "mess')
        elif mode == "hang":
            await asyncio.sleep(3600)
        elif mode == "reset":
            w.transport.abort()
            return False
        elif mode == "cut":  # promises more body than it sends, then closes
            w.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{"
            )
            await w.drain()
            return False
        elif mode == "stream_truncated":
            event = {"choices": [{"index": 0, "delta": {"content": "po"}, "finish_reason": None}]}
            w.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
                + f"data: {json.dumps(event)}\n\n".encode()
            )
            await w.drain()
            return False
        elif mode == "stream_hang":
            w.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
            )
            await w.drain()
            await asyncio.sleep(3600)
        await w.drain()
        return True


def guarded(url: str, **kw: object) -> GuardedBackend:
    retry = kw.pop("retry", RetryPolicy(attempts=3, base_delay_s=0.01))
    return GuardedBackend(OpenAICompatBackend(url, connect_timeout_s=1.0), retry=retry, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("fault", ["500", "429"])
async def test_retryable_faults_are_retried_until_the_upstream_answers(fault):
    async with FaultyUpstream([fault, fault, "ok"]) as up:
        g = guarded(up.url)
        (gen,) = await g.generate(GenRequest(messages=Q))
    assert gen.text == "pong"
    assert up.requests == 3 and g.attempts == 3


@pytest.mark.parametrize("fault", ["malformed", "reset", "cut"])
async def test_an_answer_lost_after_the_upstream_read_the_request_is_not_resent(fault):
    async with FaultyUpstream([fault, "ok"]) as up:
        g = guarded(up.url)
        with pytest.raises(UpstreamAnswerLost):
            await g.generate(GenRequest(messages=Q))
    assert up.requests == 1 and g.attempts == 1


async def test_a_rejected_request_is_not_retried_and_keeps_the_upstreams_reason():
    async with FaultyUpstream(["400", "ok"]) as up:
        g = guarded(up.url)
        with pytest.raises(UpstreamError) as info:
            await g.generate(GenRequest(messages=Q))
    assert up.requests == 1
    err = info.value.to_openai()["error"]
    assert "top_k must be >= -1" in err["message"] and err["type"] == "invalid_request_error"
    assert info.value.status == 400


async def test_retries_give_up_with_the_last_reason():
    async with FaultyUpstream(["500"]) as up:
        g = guarded(up.url)
        with pytest.raises(UpstreamError, match="CUDA out of memory") as info:
            await g.generate(GenRequest(messages=Q))
    assert up.requests == 3 and info.value.status == 502


async def test_a_hanging_upstream_never_holds_a_call_past_its_total_timeout():
    async with FaultyUpstream(["hang"]) as up:
        g = guarded(up.url, timeouts=Timeouts(total_s=1.0, attempt_s=0.4))
        t0 = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await g.generate(GenRequest(messages=Q))
        assert time.monotonic() - t0 < 5.0
    assert up.requests == 1  # it read the request: an attempt timeout is not resent


async def test_the_runs_deadline_ends_a_hanging_call_as_budget_exhaustion():
    async with FaultyUpstream(["hang"]) as up:
        g = guarded(up.url, timeouts=Timeouts(total_s=60.0))
        t0 = time.monotonic()
        with pytest.raises(BudgetExhausted) as info:
            await g.generate(GenRequest(messages=Q, deadline=time.monotonic() + 0.5))
        assert time.monotonic() - t0 < 5.0
    assert info.value.reason == "deadline"


async def test_a_silent_stream_hits_the_first_token_timeout_and_is_not_resent():
    async with FaultyUpstream(["stream_hang", "stream_hang"]) as up:
        g = guarded(
            up.url,
            timeouts=Timeouts(total_s=3.0, first_token_s=0.3),
            retry=RetryPolicy(attempts=2, base_delay_s=0.01),
        )
        t0 = time.monotonic()
        with pytest.raises(UpstreamTimeout, match="first-token"):
            [d async for d in g.stream(GenRequest(messages=Q))]
        assert time.monotonic() - t0 < 5.0
    assert up.requests == 1


async def test_a_truncated_stream_after_output_is_reported_not_silently_restarted():
    async with FaultyUpstream(["stream_truncated", "ok"]) as up:
        g = guarded(up.url)
        got = []
        with pytest.raises(UpstreamError, match="truncated"):
            async for d in g.stream(GenRequest(messages=Q)):
                got.append(d.text)
    assert "".join(got) == "po" and up.requests == 1


async def test_breaker_opens_after_failures_and_recovers_through_one_probe():
    now = [0.0]
    breaker = CircuitBreaker("up", failure_threshold=2, reset_after_s=10, clock=lambda: now[0])
    async with FaultyUpstream(["500", "500", "ok"]) as up:
        g = guarded(up.url, breaker=breaker, retry=RetryPolicy(attempts=1))
        for _ in range(2):
            with pytest.raises(UpstreamError):
                await g.generate(GenRequest(messages=Q))
        assert breaker.state == "open"
        with pytest.raises(CircuitOpen) as info:
            await g.generate(GenRequest(messages=Q))
        assert up.requests == 2  # refused without touching the upstream
        assert info.value.status == 503 and "circuit open" in info.value.message
        now[0] = 10.0
        assert breaker.state == "half_open"
        (gen,) = await g.generate(GenRequest(messages=Q))
    assert gen.text == "pong" and breaker.state == "closed"


async def test_a_failed_probe_reopens_the_circuit():
    now = [0.0]
    breaker = CircuitBreaker("up", failure_threshold=1, reset_after_s=5, clock=lambda: now[0])
    breaker.record_failure()
    now[0] = 5.0
    breaker.before_call()  # the probe
    with pytest.raises(CircuitOpen):
        breaker.before_call()  # only one probe at a time
    breaker.record_failure()
    assert breaker.state == "open"


async def test_fallback_moves_to_the_next_tier_on_outage_only():
    spare = FakeBackend(["from the spare"], name="spare")
    async with FaultyUpstream(["500"]) as up:
        chain = FallbackBackend(
            [guarded(up.url, retry=RetryPolicy(attempts=2, base_delay_s=0.01)), spare]
        )
        (gen,) = await chain.generate(GenRequest(messages=Q))
        assert gen.text == "from the spare" and chain.last_used == "spare"
        assert up.requests == 2
        deltas = [d async for d in chain.stream(GenRequest(messages=Q))]
        assert "".join(d.text for d in deltas) == "from the spare"
    async with FaultyUpstream(["400"]) as up:
        chain = FallbackBackend([guarded(up.url), spare])
        with pytest.raises(UpstreamError, match="top_k"):
            await chain.generate(GenRequest(messages=Q))
        assert len(spare.calls) == 2  # not called for a rejected request


async def test_fallback_reports_every_upstreams_reason_when_all_are_out():
    async with FaultyUpstream(["500"]) as a, FaultyUpstream(["malformed"]) as b:
        chain = FallbackBackend(
            [
                guarded(a.url, retry=RetryPolicy(attempts=1)),
                guarded(b.url, retry=RetryPolicy(attempts=1)),
            ]
        )
        with pytest.raises(UpstreamError) as info:
            await chain.generate(GenRequest(messages=Q))
    msg = info.value.message
    assert "CUDA out of memory" in msg and "malformed JSON" in msg


async def test_unreachable_upstream_is_a_clear_retryable_error():
    async with FaultyUpstream(["ok"]) as up:
        url = up.url
    g = guarded(url, retry=RetryPolicy(attempts=2, base_delay_s=0.01))
    with pytest.raises(UpstreamError, match="unreachable") as info:
        await g.generate(GenRequest(messages=Q))
    assert info.value.retryable and g.attempts == 2
