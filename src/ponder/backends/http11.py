"""A small HTTP/1.1 keep-alive client for plain-``http://`` upstreams.

The gateway's hot path is one POST of a JSON body to a self-hosted model server
(vLLM, llama-server, another ponder) on the local network, and one JSON body back.
Through httpx that call costs about 1.5-2 ms of CPU here (client, httpcore and anyio
layers); this client does the same exchange on asyncio streams in a fraction of that.
It is used only where it is a faithful replacement: a plain-http base URL, no custom
transport, no proxy configured in the environment. Everything else (https, proxies,
streaming responses) stays on httpx.

Measured against aiohttp's client in one run of ``benchmarks/gateway_overhead.py``, the
same bare forwarder spends about 0.2 ms more CPU per request with aiohttp (see
docs/results/upstream_client.md), so this client stays on the hot path; aiohttp serves
streams and https.

It never sends a request twice: a connection that fails after the request was written
(even a pooled one that fails before any response byte) raises :class:`Dropped`, since
the upstream may have read it. Idle connections are dropped after ``keepalive_s`` (below
common servers' own keep-alive timeout), so a request rarely meets one the server is
closing. Bodiless responses (1xx, 204, 304) are read without waiting for a body, and
every read is bounded by ``read_timeout_s``.

Errors are raised as the classes below; :class:`~ponder.backends.upstream_http.HttpUpstream`
maps them to ponder's upstream errors as it maps aiohttp's and httpx's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

__all__ = [
    "ConnectFailed",
    "ConnectTimeout",
    "Dropped",
    "Http11Error",
    "Http11Pool",
    "ReadTimeout",
    "Response",
    "usable_for",
]

_T = TypeVar("_T")
_PROXY_VARS = ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")
_MAX_HEAD = 64 * 1024


class Http11Error(Exception):
    """Base of this client's transport errors."""


class ConnectTimeout(Http11Error):
    pass


class ConnectFailed(Http11Error):
    pass


class ReadTimeout(Http11Error):
    pass


class Dropped(Http11Error):
    """The connection closed or sent something that is not HTTP/1.1."""


@dataclass
class Response:
    status_code: int
    headers: dict[str, str]  # names lower-cased
    content: bytes


def usable_for(base_url: str) -> bool:
    """Whether this client can stand in for httpx for ``base_url`` (plain http, no proxy)."""
    if urlsplit(base_url).scheme != "http":
        return False
    return not any(os.environ.get(v) for v in _PROXY_VARS)


class _Conn:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.idle_since = 0.0

    def alive(self, keepalive_s: float) -> bool:
        fresh = time.monotonic() - self.idle_since < keepalive_s
        return fresh and not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Http11Pool:
    """Keep-alive connections to one ``http://host:port/prefix``; POST bytes, read a whole body."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float | None = 600.0,
        max_connections: int = 32,
        keepalive_s: float = 4.0,
    ) -> None:
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"Http11Pool needs an http:// URL, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path
        host_header = parts.netloc.rpartition("@")[2]
        fixed = {"host": host_header, "accept": "application/json"}
        fixed.update({k.lower(): v for k, v in (headers or {}).items()})
        fixed.pop("content-length", None)
        self._head = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.keepalive_s = keepalive_s
        self._idle: list[_Conn] = []
        self.max_connections = max(max_connections, 1)
        self._slots = asyncio.Semaphore(self.max_connections)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.opened = 0  # connections opened so far (tests check reuse with it)
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    async def _connect(self) -> _Conn:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, limit=_MAX_HEAD
                )
        except TimeoutError as exc:
            raise ConnectTimeout(f"connect to {self.host}:{self.port} timed out") from exc
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self.opened += 1
        return _Conn(reader, writer)

    async def post(
        self, path: str, body: bytes, content_type: str = "application/json"
    ) -> Response:
        if self._closed:
            raise Dropped("client is closed")
        request = (
            f"POST {self.prefix}/{path.lstrip('/')} HTTP/1.1\r\n{self._head}"
            f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Connections belong to the loop that opened them (a client reused across
            # asyncio.run calls must not touch the old loop's sockets).
            for stale in self._idle:
                stale.close()
            self._idle.clear()
            self._slots = asyncio.Semaphore(self.max_connections)
            self._loop = loop
        async with self._slots:
            conn = None
            while self._idle and conn is None:
                idle = self._idle.pop()
                if idle.alive(self.keepalive_s):
                    conn = idle
                else:
                    idle.close()
            if conn is None:
                conn = await self._connect()
            # Sent once: a connection that fails now, pooled or new, may have delivered the
            # request (a server can read it and then close), so it is never sent again.
            return await self._exchange(conn, request)

    async def _exchange(self, conn: _Conn, request: bytes) -> Response:
        reusable = False
        try:
            try:
                conn.writer.write(request)
                head = await self._read(conn.reader.readuntil(b"\r\n\r\n"))
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                partial = getattr(exc, "partial", b"")
                what = "mid-response" if partial else "before any response"
                raise Dropped(f"connection closed {what}: {exc or type(exc).__name__}") from exc
            status, headers, version = _parse_head(head)
            while 100 <= status < 200:  # interim responses (100 Continue) carry no body
                head = await self._read(conn.reader.readuntil(b"\r\n\r\n"))
                status, headers, version = _parse_head(head)
            if status in (204, 304):  # no body, whatever the headers say (RFC 9112 6.3)
                content, to_eof = b"", False
            else:
                content, to_eof = await self._body(conn.reader, headers)
            keep = headers.get("connection", "").lower()
            reusable = not to_eof and (
                keep == "keep-alive" if version == "HTTP/1.0" else keep != "close"
            )
            return Response(status, headers, content)
        except asyncio.LimitOverrunError as exc:
            raise Dropped("response head too large") from exc
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise Dropped(f"connection closed mid-response: {exc}") from exc
        finally:
            # Anything unfinished (an error, a timeout, a cancelled request) leaves the
            # connection in an unknown state: it is closed, never pooled.
            if reusable and not self._closed:
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
            else:
                conn.close()

    async def _read(self, op: Awaitable[_T]) -> _T:
        if self.read_timeout_s is None:
            return await op
        try:
            async with asyncio.timeout(self.read_timeout_s):
                return await op
        except TimeoutError as exc:
            raise ReadTimeout(f"no data from {self.host}:{self.port} in time") from exc

    async def _body(
        self, reader: asyncio.StreamReader, headers: dict[str, str]
    ) -> tuple[bytes, bool]:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts: list[bytes] = []
            while True:
                line = await self._read(reader.readuntil(b"\r\n"))
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError as exc:
                    raise Dropped(f"bad chunk size {line[:40]!r}") from exc
                if size == 0:
                    while (await self._read(reader.readuntil(b"\r\n"))) != b"\r\n":
                        pass  # trailers
                    return b"".join(parts), False
                chunk = await self._read(reader.readexactly(size + 2))
                parts.append(chunk[:-2])
        length = headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError as exc:
                raise Dropped(f"bad content-length {length!r}") from exc
            return (await self._read(reader.readexactly(n)) if n else b""), False
        return await self._read(reader.read()), True


def _parse_head(head: bytes) -> tuple[int, dict[str, str], str]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/1."):
        raise Dropped(f"not an HTTP/1.x response: {lines[0][:60]!r}")
    try:
        status = int(rest[:3])
    except ValueError as exc:
        raise Dropped(f"bad status line {lines[0][:60]!r}") from exc
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers, version
