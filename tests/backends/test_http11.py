"""The lean HTTP/1.1 client, against a real local socket server with scripted replies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest

from ponder.backends import http11
from ponder.backends.openai_compat import HttpUpstream
from ponder.errors import UpstreamError, UpstreamTimeout


class Server:
    """Reads one request at a time (head + content-length body) and answers with ``reply``."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.connections = 0
        self.reply: Callable[[int], bytes | None] = lambda i: ok(b'{"ok": true}')
        self.close_after_reply = False
        self.server: asyncio.base_events.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode().split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                answer = self.reply(len(self.requests) - 1)
                if answer is None:  # hang up without answering
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after_reply:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"


def ok(body: bytes, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    s.server = await asyncio.start_server(s.handle, "127.0.0.1", 0)
    yield s
    s.server.close()
    await s.server.wait_closed()


async def test_posts_json_with_headers_and_reuses_one_connection(server: Server) -> None:
    pool = http11.Http11Pool(server.url, headers={"Authorization": "Bearer k"})
    for i in range(5):
        resp = await pool.post("/chat/completions", json.dumps({"i": i}).encode())
        assert resp.status_code == 200 and json.loads(resp.content) == {"ok": True}
    await pool.aclose()
    assert server.connections == 1 and pool.opened == 1
    first = server.requests[0].decode()
    assert first.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    assert "authorization: Bearer k\r\n" in first and "host: 127.0.0.1:" in first
    assert first.endswith('{"i": 0}')


async def test_chunked_body_and_interim_100_response(server: Server) -> None:
    server.reply = lambda i: (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b'5;ext=1\r\n{"a":\r\n3\r\n 1}\r\n0\r\nx-trailer: t\r\n\r\n'
    )
    pool = http11.Http11Pool(server.url)
    assert (await pool.post("x", b"{}")).content == b'{"a": 1}'
    assert (await pool.post("x", b"{}")).content == b'{"a": 1}'  # still in sync after trailers
    assert pool.opened == 1
    await pool.aclose()


async def test_connection_close_is_honoured(server: Server) -> None:
    server.reply = lambda i: ok(b"{}", "connection: close\r\n")
    server.close_after_reply = True
    pool = http11.Http11Pool(server.url)
    for _ in range(3):
        assert (await pool.post("x", b"{}")).status_code == 200
    assert pool.opened == 3
    await pool.aclose()


async def test_a_pooled_connection_closed_after_the_server_read_the_request_is_not_resent(
    server: Server,
) -> None:
    pool = http11.Http11Pool(server.url)
    await pool.post("x", b"{}")
    # The server reads the request on the pooled connection, then closes it unanswered:
    # it may have run the request, so the client reports it and never sends it again.
    server.reply = lambda i: None if i == 1 else ok(b"{}")
    with pytest.raises(http11.Dropped, match="before any response"):
        await pool.post("x", b'{"again": 1}')
    assert [r.endswith(b'{"again": 1}') for r in server.requests] == [False, True]
    assert (await pool.post("x", b"{}")).status_code == 200  # on a new connection
    assert pool.opened == 2
    await pool.aclose()


async def test_an_idle_connection_past_keepalive_is_not_reused(server: Server) -> None:
    pool = http11.Http11Pool(server.url, keepalive_s=0.05)
    await pool.post("x", b"{}")
    await asyncio.sleep(0.1)  # longer idle than keepalive_s: the server may be closing it
    assert (await pool.post("x", b"{}")).status_code == 200
    assert pool.opened == 2 and server.connections == 2
    await pool.aclose()


async def test_a_bodiless_204_is_read_without_waiting_and_keeps_the_connection(
    server: Server,
) -> None:
    # 204 and 304 have no body whatever the headers say; reading to EOF would hang until
    # the server closes the connection.
    server.reply = lambda i: b"HTTP/1.1 204 No Content\r\n\r\n" if i == 0 else ok(b"{}")
    pool = http11.Http11Pool(server.url, read_timeout_s=30.0)
    resp = await asyncio.wait_for(pool.post("x", b"{}"), 5.0)
    assert (resp.status_code, resp.content) == (204, b"")
    assert (await pool.post("x", b"{}")).status_code == 200 and pool.opened == 1
    await pool.aclose()


def test_reads_have_a_timeout_by_default() -> None:
    assert http11.Http11Pool("http://127.0.0.1:9/v1").read_timeout_s == 600.0


async def test_read_to_eof_without_length(server: Server) -> None:
    server.reply = lambda i: b'HTTP/1.0 200 OK\r\n\r\n{"eof": 1}'
    server.close_after_reply = True
    pool = http11.Http11Pool(server.url)
    assert (await pool.post("x", b"{}")).content == b'{"eof": 1}'
    await pool.aclose()


async def test_garbage_and_truncated_responses_are_dropped_errors(server: Server) -> None:
    pool = http11.Http11Pool(server.url)
    server.reply = lambda i: b"SMTP ready\r\n\r\n"
    with pytest.raises(http11.Dropped, match="not an HTTP"):
        await pool.post("x", b"{}")
    server.reply = lambda i: b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{}"
    server.close_after_reply = True
    with pytest.raises(http11.Dropped, match="mid-response"):
        await pool.post("x", b"{}")
    await pool.aclose()


async def test_cancelled_request_never_returns_its_connection_to_the_pool(
    server: Server,
) -> None:
    pool = http11.Http11Pool(server.url)
    await pool.post("x", b"{}")
    assert len(pool._idle) == 1
    # A reply that never comes: the caller gives up (a deadline), the connection is discarded.
    server.reply = lambda i: b""  # the server reads the request and answers nothing
    task = asyncio.create_task(pool.post("x", b"{}"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool._idle == []
    server.reply = lambda i: ok(b"{}")
    assert (await pool.post("x", b"{}")).status_code == 200  # a fresh connection
    assert pool.opened == 2
    await pool.aclose()


async def test_upstream_maps_lean_errors_like_httpx_ones(server: Server) -> None:
    up = HttpUpstream(server.url, name="t", read_timeout_s=0.2)
    assert up.lean is not None
    body = b'{"error": {"message": "slow"}}'
    server.reply = lambda i: (
        (f"HTTP/1.1 429 Too Many\r\nretry-after: 3\r\ncontent-length: {len(body)}\r\n\r\n").encode()
        + body
    )
    with pytest.raises(UpstreamError) as info:
        await up.post_json("chat/completions", {"a": 1})
    assert info.value.upstream_status == 429 and info.value.retryable
    assert info.value.retry_after_s == 3.0 and "slow" in str(info.value)

    # No reply at all within the read timeout.
    hang = asyncio.Event()

    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hang.wait()

    silent = await asyncio.start_server(never, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    quiet = HttpUpstream(f"http://127.0.0.1:{port}", name="q", read_timeout_s=0.2)
    with pytest.raises(UpstreamTimeout, match="read timeout"):
        await quiet.post_json("x", {})
    hang.set()
    silent.close()
    await quiet.aclose()

    refused = HttpUpstream("http://127.0.0.1:9", name="r", connect_timeout_s=1.0)
    with pytest.raises(UpstreamError, match="unreachable") as err:
        await refused.post_json("x", {})
    assert err.value.retryable
    await refused.aclose()
    await up.aclose()


def test_lean_client_only_where_it_is_faithful(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert http11.usable_for("http://10.0.0.5:8000/v1")
    assert not http11.usable_for("https://api.openai.com/v1")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert not http11.usable_for("http://10.0.0.5:8000/v1")
    assert HttpUpstream("http://10.0.0.5:8000/v1", name="p").lean is None
