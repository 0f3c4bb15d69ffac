"""One upstream model server over HTTP: a pooled client whose every failure is an error value.

Which client carries a call (``client=None`` chooses):

- plain-``http://`` JSON calls (the gateway's hot path to self-hosted servers) go over
  ponder's small HTTP/1.1 client (:mod:`~ponder.backends.http11`): measured side by side
  with aiohttp in one run of ``benchmarks/gateway_overhead.py``, aiohttp costs about
  0.2 ms more CPU per request (docs/results/upstream_client.md);
- streams, https and proxied setups go over aiohttp where it is installed
  (``ponder[server]``), else httpx;
- an httpx transport (tests' ``httpx.MockTransport``, in-process transports such as Ray
  Serve handles) means httpx for everything.

``client="aiohttp"`` / ``"httpx"`` pins one client for every call. All are used the
same way here:

- **A request is never sent twice by this client.** No client resends a POST on
  its own (aiohttp retries only idempotent methods; httpx and http11 never). Whether a failed
  call may be sent again is decided by whoever retries (the guard), from the error:
  ``retryable`` is True only where the upstream cannot have done the work, i.e. the
  connection could not be made, or the upstream answered with a status that says
  "try again" (408, 409, 425, 429, 5xx, 529, as the OpenAI SDK retries, unless it sends
  ``x-should-retry: false``), with its ``Retry-After``. Everything after the request
  was sent and before a whole answer came back (a reset, a close, a cut body or
  stream, bad JSON, silence past the read timeout) is an
  :class:`~ponder.errors.UpstreamAnswerLost` and is never resent.
- **Time is bounded.** ``connect_timeout_s`` bounds the connect, ``read_timeout_s``
  each wait for data (default 600 s, as the OpenAI SDK's), and a request's
  ``deadline`` the whole exchange: a silent upstream ends in
  :class:`~ponder.errors.UpstreamReadTimeout` (504), never in an empty answer. The
  deadline fires a moment (``DEADLINE_GRACE_S``) late so that a wrapper that owns the
  run's deadline (the guard turns it into the strategy's anytime stop) decides first.
- **Every attempt is visible**: counted in ``sent`` and added to the current
  :mod:`~ponder.backends.upstream_log` report with its status or error.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from ponder.backends import http11
from ponder.backends.upstream_log import UpstreamAttempt, current_upstream_report
from ponder.errors import (
    ContextOverflow,
    InvalidRequest,
    UpstreamAnswerLost,
    UpstreamError,
    UpstreamReadTimeout,
    UpstreamTimeout,
)

__all__ = [
    "DEADLINE_GRACE_S",
    "DEFAULT_READ_TIMEOUT_S",
    "RETRYABLE_STATUSES",
    "ClientKind",
    "HttpUpstream",
]

ClientKind = Literal["aiohttp", "httpx", "http11"]

# Statuses after which the same request may succeed (529: Anthropic "overloaded").
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
DEFAULT_READ_TIMEOUT_S = 600.0
DEADLINE_GRACE_S = 0.1
# Idle pooled connections are dropped before common servers' own keep-alive timeout
# (uvicorn: 5 s), so a request rarely meets a connection the server is closing; such a
# request is lost, not resent.
KEEPALIVE_S = 4.0
_JSON = {"content-type": "application/json", "accept": "application/json"}


def _reason(body: bytes) -> str:
    """The upstream's own words from an error body (OpenAI, Anthropic or FastAPI shape)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            for key in ("message", "detail", "msg"):
                if isinstance(err.get(key), str):
                    return str(err[key])
        if isinstance(err, str):
            return err
        if "detail" in data:
            return json.dumps(data["detail"])[:500]
    return text[:500]


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the upstream asks to wait: ``retry-after-ms``, or ``retry-after`` in
    seconds or as an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


@dataclass
class _Opened:
    """A response whose head has arrived: the status, headers, and ways to read the rest."""

    status: int
    headers: Mapping[str, str]
    read: Callable[[], Any]  # -> Awaitable[bytes]
    readline: Callable[[], Any]  # -> Awaitable[str | None]; None at the end


def _aiohttp() -> Any:
    try:
        import aiohttp
    except ImportError:
        return None
    return aiohttp


class HttpUpstream:
    """A pooled async HTTP client for one upstream that maps every failure to an error value."""

    def __init__(
        self,
        base_url: str,
        *,
        name: str,
        headers: dict[str, str] | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float | None = DEFAULT_READ_TIMEOUT_S,
        max_connections: int = 32,
        transport: httpx.AsyncBaseTransport | None = None,
        client: ClientKind | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_connections = max(max_connections, 1)
        if client not in (None, "aiohttp", "httpx", "http11"):
            raise InvalidRequest(
                f"unknown HTTP client {client!r}; choose http11, aiohttp or httpx",
                param="client",
            )
        if transport is not None and client not in (None, "httpx"):
            raise InvalidRequest("an httpx transport needs client='httpx'", param="client")
        if client in (None, "http11") and transport is None and http11.usable_for(base_url):
            self.lean: http11.Http11Pool | None = http11.Http11Pool(
                self.base_url,
                headers=self.headers,
                connect_timeout_s=connect_timeout_s,
                read_timeout_s=read_timeout_s,
                max_connections=self.max_connections,
                keepalive_s=KEEPALIVE_S,
            )
        elif client == "http11":
            raise InvalidRequest(
                "client='http11' needs a plain http:// URL, no proxy and no transport",
                param="client",
            )
        else:
            self.lean = None
        if client in (None, "http11"):
            client = "httpx" if transport is not None or _aiohttp() is None else "aiohttp"
        if client == "aiohttp" and _aiohttp() is None:
            raise InvalidRequest(
                "client='aiohttp' needs aiohttp: pip install 'ponder[server]'", param="client"
            )
        # The client of streams (and of JSON calls when there is no lean pool).
        self.client_kind: ClientKind = client
        # httpx serves the httpx mode and the auxiliary calls (tokenize) in both modes.
        self.client = httpx.AsyncClient(
            headers=self.headers,
            timeout=httpx.Timeout(None, connect=connect_timeout_s, read=read_timeout_s),
            limits=httpx.Limits(
                max_connections=self.max_connections,
                max_keepalive_connections=self.max_connections,
                keepalive_expiry=KEEPALIVE_S,
            ),
            transport=transport,
        )
        self._session: Any = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._urls: dict[str, str] = {}
        self.sent = 0  # requests sent (or tried) to the upstream: attempts, for telemetry

    async def aclose(self) -> None:
        if self.lean is not None:
            await self.lean.aclose()
        if self._session is not None and self._session_loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None
        await self.client.aclose()

    def _url(self, path: str) -> str:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = f"{self.base_url}/{path.lstrip('/')}"
        return url

    def _aiohttp_session(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session_loop is not loop:
            # A session belongs to the loop that made it (a backend reused across
            # asyncio.run calls must not touch the old loop's sockets).
            aiohttp = _aiohttp()
            self._session = aiohttp.ClientSession(
                headers=self.headers,
                connector=aiohttp.TCPConnector(
                    limit=self.max_connections, keepalive_timeout=KEEPALIVE_S
                ),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.connect_timeout_s, sock_read=self.read_timeout_s
                ),
                trust_env=True,  # proxies from the environment, as httpx does
                # One session serves every caller: no cookie an upstream sets for one
                # request may ride along with another caller's.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            self._session_loop = loop
        return self._session

    @asynccontextmanager
    async def _open(self, path: str, payload: bytes) -> AsyncIterator[_Opened]:
        url = self._url(path)
        if self.client_kind == "aiohttp":
            async with self._aiohttp_session().post(url, data=payload, headers=_JSON) as resp:

                async def readline() -> str | None:
                    line = await resp.content.readline()
                    return line.decode("utf-8", "replace") if line else None

                yield _Opened(resp.status, resp.headers, resp.read, readline)
            return
        async with self.client.stream("POST", url, content=payload, headers=_JSON) as r:
            lines = r.aiter_lines()

            async def next_line() -> str | None:
                try:
                    return await anext(lines) + "\n"
                except StopAsyncIteration:
                    return None

            yield _Opened(r.status_code, r.headers, r.aread, next_line)

    # ------------------------------------------------------------ errors

    def _transport_error(self, exc: BaseException) -> UpstreamError:
        where = f"upstream {self.name} ({self.base_url})"
        aiohttp = _aiohttp()
        if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout | http11.ConnectTimeout) or (
            aiohttp is not None and isinstance(exc, aiohttp.ConnectionTimeoutError)
        ):
            return UpstreamTimeout(
                f"{where} did not accept a connection in time; check that it is running",
                upstream=self.name,
                reason=str(exc) or "connect timeout",
                retryable=True,  # nothing was sent
            )
        if isinstance(exc, httpx.ConnectError | http11.ConnectFailed) or (
            aiohttp is not None and isinstance(exc, aiohttp.ClientConnectorError)
        ):
            return UpstreamError(
                f"{where} is unreachable: {exc}; check its address and that it is running",
                upstream=self.name,
                reason=str(exc),
                retryable=True,  # nothing was sent
            )
        if isinstance(exc, httpx.ReadTimeout | http11.ReadTimeout) or (
            aiohttp is not None and isinstance(exc, aiohttp.SocketTimeoutError)
        ):
            return UpstreamReadTimeout(
                f"{where} read the request but sent nothing for {self.read_timeout_s} s "
                "(read timeout); it may be hung or overloaded",
                upstream=self.name,
                reason="read timeout",
            )
        what = str(exc) or type(exc).__name__
        return UpstreamAnswerLost(
            f"{where} dropped the connection after the request was sent ({what}); "
            "it was not resent, since the upstream may have run it",
            upstream=self.name,
            reason=what,
        )

    def _transport_errors(self) -> tuple[type[BaseException], ...]:
        aiohttp = _aiohttp()
        errors: tuple[type[BaseException], ...] = (httpx.HTTPError, http11.Http11Error, OSError)
        return errors + ((aiohttp.ClientError,) if aiohttp is not None else ())

    def _status_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        reason = _reason(body)
        low = reason.lower()
        if status == 400 and ("context length" in low or "maximum context" in low):
            raise ContextOverflow(
                f"the prompt does not fit upstream {self.name}'s context: {reason}",
                param="messages",
            )
        retryable = status in RETRYABLE_STATUSES
        # The upstream's own word wins, as in the OpenAI SDK.
        should = str(headers.get("x-should-retry", "")).lower()
        if should in ("true", "false"):
            retryable = should == "true"
        return UpstreamError(
            f"upstream {self.name} answered {status}: {reason}",
            upstream=self.name,
            upstream_status=status,
            reason=reason,
            retryable=retryable,
            retry_after_s=_retry_after(headers),
        )

    def _deadline_error(self) -> UpstreamReadTimeout:
        return UpstreamReadTimeout(
            f"upstream {self.name} did not answer before the request's deadline",
            upstream=self.name,
            reason="deadline",
        )

    def _answer_lost(self, what: str, reason: str) -> UpstreamAnswerLost:
        return UpstreamAnswerLost(
            f"upstream {self.name} sent {what}; the request was not resent, since the "
            "upstream may have run it",
            upstream=self.name,
            reason=reason,
        )

    # ------------------------------------------------------------ attempts

    def _begin(self, path: str) -> tuple[UpstreamAttempt | None, float]:
        self.sent += 1
        report = current_upstream_report()
        attempt = None
        if report is not None:
            attempt = UpstreamAttempt(upstream=self.name, path=path)
            report.attempts.append(attempt)
        return attempt, time.monotonic()

    @staticmethod
    def _end(
        attempt: UpstreamAttempt | None,
        t0: float,
        status: int | None = None,
        error: UpstreamError | None = None,
    ) -> None:
        if attempt is None:
            return
        attempt.seconds = round(time.monotonic() - t0, 6)
        attempt.status = status if status is not None else attempt.status
        if error is not None:
            attempt.error, attempt.reason = error.code, error.reason or error.message

    @staticmethod
    def _left(deadline: float | None) -> float | None:
        return None if deadline is None else deadline + DEADLINE_GRACE_S - time.monotonic()

    # ------------------------------------------------------------ calls

    async def post_json(
        self, path: str, body: dict[str, Any], *, deadline: float | None = None
    ) -> dict[str, Any]:
        """POST a JSON body, return the JSON object answered. ``deadline``: time.monotonic()."""
        left = self._left(deadline)
        if left is not None and left <= 0:
            raise self._deadline_error()
        payload = json.dumps(body).encode()
        attempt, t0 = self._begin(path)
        status: int | None = None
        timer = asyncio.timeout(left)
        try:
            try:
                async with timer:
                    try:
                        status, headers, content = await self._exchange(path, payload)
                    except self._transport_errors() as exc:
                        raise self._transport_error(exc) from exc
            except TimeoutError as exc:
                if not timer.expired():
                    raise
                raise self._deadline_error() from exc
            if status >= 400:
                raise self._status_error(status, headers, content)
            data = self._json_object(content, "a body")
        except UpstreamError as err:
            self._end(attempt, t0, status, err)
            raise
        self._end(attempt, t0, status)
        return data

    async def _exchange(self, path: str, payload: bytes) -> tuple[int, Mapping[str, str], bytes]:
        if self.lean is not None:
            resp = await self.lean.post(path, payload)
            return resp.status_code, resp.headers, resp.content
        async with self._open(path, payload) as opened:
            return opened.status, opened.headers, await opened.read()

    async def post_sse(
        self, path: str, body: dict[str, Any], *, deadline: float | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Yield the JSON payload of each server-sent event; ``{"[DONE]": True}`` at ``[DONE]``."""
        left = self._left(deadline)
        if left is not None and left <= 0:
            raise self._deadline_error()
        payload = json.dumps(body).encode()
        attempt, t0 = self._begin(path)
        status: int | None = None
        try:
            try:
                async with self._open(path, payload) as resp:
                    status = resp.status
                    if status >= 400:
                        raise self._status_error(status, resp.headers, await resp.read())
                    if attempt is not None:
                        attempt.status = status
                    data_lines: list[str] = []
                    while True:
                        line = await self._readline(resp, deadline)
                        if line is None:
                            break
                        line = line.rstrip("\r\n")
                        if line.startswith("data:"):
                            data_lines.append(line[5:].strip())
                        elif not line.strip() and data_lines:
                            yield self._event("\n".join(data_lines))
                            data_lines = []
                    if data_lines:
                        yield self._event("\n".join(data_lines))
            except self._transport_errors() as exc:
                raise self._transport_error(exc) from exc
        except UpstreamError as err:
            self._end(attempt, t0, status, err)
            raise
        self._end(attempt, t0, status)

    async def _readline(self, resp: _Opened, deadline: float | None) -> str | None:
        """The next line of a stream, or None at its end; the deadline bounds the wait."""
        timer = asyncio.timeout(self._left(deadline))
        try:
            async with timer:
                line: str | None = await resp.readline()
        except TimeoutError as exc:
            if not timer.expired():
                raise
            raise self._deadline_error() from exc
        return line

    async def post_aux(self, url: str, body: dict[str, Any]) -> Any:
        """An auxiliary call (tokenize): the JSON answered to a 200, else None. Not an attempt."""
        try:
            resp = await self.client.post(url, json=body)
            return resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def _event(self, payload: str) -> dict[str, Any]:
        if payload == "[DONE]":
            return {"[DONE]": True}
        return self._json_object(payload, "a stream event")

    def _json_object(self, text: str | bytes, what: str) -> dict[str, Any]:
        """Parse an upstream JSON object; anything else means the answer is lost."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise self._answer_lost(
                f"{what} that is not JSON: {text[:200]!r}", "malformed JSON"
            ) from exc
        if not isinstance(data, dict):
            raise self._answer_lost(f"{what} that is JSON but not an object", "malformed JSON")
        return data
