"""What the gateway adds: the real ``ponder`` gateway in front of a trivial upstream vs. the
upstream called directly, open-loop at a fixed request rate on loopback.

Three processes (plus this one, which only orchestrates):

  upstream  a minimal OpenAI-compatible HTTP/1.1 server (asyncio, keep-alive) that
            answers every POST with the same small ``chat.completion`` (usage included)
            at once, so nearly all of the gateway path's extra time is the gateway's.
  gateway   ``ponder serve`` itself, with a ``ponder.toml`` holding one tier (backend
            ``openai_compat`` pointing at the upstream), strategy ``direct``, auth on
            (a real API key), quota limits that bind that key (so every request
            reserves and settles counters) and the ledger on: a SQLite WAL file in a
            temp dir by default, or ``--ledger-url postgresql://...``.
  load      one open-loop generator (``--connections`` keep-alive connections over
            ponder's lean HTTP/1.1 client, or ``--client httpx``, which the first
            round used and which costs the shared cores ~1-2 ms per request, enough
            to give even the direct baseline a p99 of ~0.7 s at 200/s): request ``i`` is due at ``t0 + i / rate`` whether or not
            earlier ones have answered, and its latency is measured from that due time
            (``time.perf_counter``), so a stall shows up as latency instead of lowering
            the rate (no coordinated omission). Prompts differ per request. The same
            code drives both targets.

Variants run in one invocation, alternating order across ``--repeats`` so drift in
background load hits both; the first ``--warmup-s`` seconds of each run are dropped and
requests still unanswered ``--grace-s`` after the last one was due count as errors.
Besides latency, each run reports the CPU time the target process used per request
(``server CPU ms/req``, from /proc): on a shared machine that is steadier than latency,
which also counts waiting for a core. Prints one JSON line per variant and a summary
line (added p50/p99 = gateway minus direct, and the ratios), then a Markdown table on
stderr. ``--profile DIR`` records a py-spy profile of each gateway (``pip install
py-spy``; it is not a dependency).

    .venv/bin/python benchmarks/gateway_overhead.py --rate 200 --duration-s 15 --repeats 2

``--variants direct,gateway,bare`` adds ``bare``: the same gateway with the ledger off
(no auth, quotas or ledger), which separates governance cost from the HTTP proxying.
``floor`` is the least any Python gateway can add here: uvicorn and a bare ASGI callable
that forwards the body over a keep-alive HTTP client (no framework, parsing or
governance); it says what part of the overhead the runtime itself sets.

Upstream clients side by side: ``floor-http11,floor-aiohttp,floor-httpx`` are the same
floor over each client, and ``gateway-<client>`` / ``bare-<client>`` pin the tier's
upstream client (``options.http_client``; plain ``gateway`` lets the backend choose).
The summary line then carries ``client_comparison``: server CPU per request of each
client variant, its difference and ratio to the first one listed. ``--client-cpu
http11,aiohttp,httpx`` measures the clients alone, in one process, against the same
upstream (CPU per request, best of ``--repeats`` rounds):

    .venv/bin/python benchmarks/gateway_overhead.py --rate 200 --duration-s 10 --repeats 3 \
        --variants direct,floor-http11,floor-aiohttp,gateway-http11,gateway-aiohttp
    .venv/bin/python benchmarks/gateway_overhead.py --client-cpu http11,aiohttp,httpx
Processes are not pinned to cores by default: on a 2-core machine with other work
running, pinning would only decide which neighbour each process queues behind.
``--pin`` puts the upstream and the load generator on the last core and the gateway
on the others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

MODEL = "bench-model"


def request_body(i: int) -> dict[str, Any]:
    """Request ``i``: prompts differ (as real traffic does), so nothing keyed on the text
    (the router's novelty window, any cache) sees the same request over and over."""
    return {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": f"What is {i} + {i % 97}? Answer with the number."}
        ],
        "max_tokens": 16,
    }


# What the upstream returns for every request: small, with usage, like a real server.
UPSTREAM_COMPLETION = {
    "id": "chatcmpl-upstream",
    "object": "chat.completion",
    "created": 1700000000,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "4"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21},
}


# --------------------------------------------------------------------------- upstream


class _UpstreamProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive, fixed answer: just enough protocol for httpx clients."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").lower()
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip() == "content-length":
                    length = int(value.strip())
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            del self.buffer[:total]
            assert self.transport is not None
            self.transport.write(self.response)


def _upstream_response() -> bytes:
    body = json.dumps(UPSTREAM_COMPLETION).encode()
    head = (
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


async def _serve_upstream(port: int) -> None:
    response = _upstream_response()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _UpstreamProtocol(response), "127.0.0.1", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


# --------------------------------------------------------------------------- floor


FLOOR_CLIENTS = ("aiohttp", "httpx", "http11")


def _floor_post(client: str, base: str) -> Callable[[bytes], Awaitable[tuple[int, bytes]]]:
    """A raw POST over one HTTP client, set up as ponder's upstream client sets it up
    (keep-alive pool of 64, no per-request allocation beyond the client's own)."""
    url = f"{base}/chat/completions"
    ctype = {"content-type": "application/json"}
    if client == "http11":
        from ponder.backends.http11 import Http11Pool  # only while the module exists

        pool = Http11Pool(base, max_connections=64)

        async def post_http11(body: bytes) -> tuple[int, bytes]:
            resp = await pool.post("chat/completions", body)
            return resp.status_code, resp.content

        return post_http11
    if client == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        hx = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(None, connect=5.0))

        async def post_httpx(body: bytes) -> tuple[int, bytes]:
            resp = await hx.post(url, content=body, headers=ctype)
            return resp.status_code, resp.content

        return post_httpx
    import aiohttp

    session: list[Any] = []

    async def post_aiohttp(body: bytes) -> tuple[int, bytes]:
        if not session:  # made inside the server's loop
            session.append(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=4.0),
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0),
                )
            )
        async with session[0].post(url, data=body, headers=ctype) as resp:
            return resp.status, await resp.read()

    return post_aiohttp


async def _client_cpu(port: int, clients: list[str], requests: int, repeats: int) -> None:
    """Each upstream client alone, in this process, against the same upstream: CPU
    milliseconds per request (``time.process_time``, so neighbours' load is not counted),
    the best of ``repeats`` rounds, clients alternating. One JSON line per client, then a
    summary with the differences and ratios to the first client."""
    body = json.dumps(request_body(1)).encode()
    posts = {c: _floor_post(c, f"http://127.0.0.1:{port}/v1") for c in clients}
    best: dict[str, float] = {}
    for rep in range(repeats):
        for client in clients if rep % 2 == 0 else list(reversed(clients)):
            post = posts[client]
            for _ in range(50):  # open the pooled connections first
                await post(body)

            async def worker(n: int, post: Callable[[bytes], Awaitable[Any]] = post) -> None:
                for _ in range(n):
                    status, _ = await post(body)
                    if status != 200:
                        raise SystemExit(f"the upstream answered {status}")

            t0 = time.process_time()
            await asyncio.gather(*(worker(requests // 4) for _ in range(4)))
            cpu = (time.process_time() - t0) * 1000 / (requests // 4 * 4)
            best[client] = min(best.get(client, cpu), cpu)
    base = clients[0]
    for client in clients:
        print(json.dumps({"client": client, "cpu_ms_per_request": round(best[client], 4)}))
    print(json.dumps({
        "summary": True, "mode": "client_cpu", "requests": requests, "repeats": repeats,
        "baseline": base,
        "cpu_ms_added_vs_baseline": {c: round(best[c] - best[base], 4) for c in clients[1:]},
        "cpu_ratio_vs_baseline": {c: round(best[c] / best[base], 3) for c in clients[1:]},
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }))  # fmt: skip


def _serve_floor(port: int, upstream_port: int, client: str = "aiohttp") -> None:
    """The least a Python gateway can do: uvicorn + a bare ASGI callable that forwards the
    body to the upstream over one keep-alive HTTP client (``client``) and returns the
    answer. No framework, no parsing, no governance: a reference point, not a product.
    Floors that differ only in the client measure what each client costs per request."""
    import uvicorn

    post = _floor_post(client, f"http://127.0.0.1:{upstream_port}/v1")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/health":
            body, status = b"{}", 200
        else:
            chunks = []
            while True:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            status, body = await post(b"".join(chunks))
        await send({
            "type": "http.response.start", "status": status,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")


# --------------------------------------------------------------------------- gateway


def _gateway_config(
    tmp: Path, upstream_port: int, ledger_url: str | None, http_client: str | None = None
) -> Path:
    """A ponder.toml as a user would write it for one remote tier (``http_client``: the
    tier's upstream client, when the variant pins one)."""
    ledger = f'[ledger]\nurl = "{ledger_url}"\n' if ledger_url else ""
    options = f'options = {{ http_client = "{http_client}" }}\n' if http_client else ""
    text = f"""
[server]
tier = "upstream"
default_strategy = "direct"
ledger = {"true" if ledger_url else "false"}
require_auth = {"true" if ledger_url else "false"}

{ledger}
# The governance overhead of the direct path: the shipped routing policy would send
# these arithmetic prompts to an executed program (a sandbox run per request).
[router]
policy = "none"

[tiers.upstream]
backend = "openai_compat"
model = "{MODEL}"
base_url = "http://127.0.0.1:{upstream_port}/v1"
{options}"""
    stem = "ponder" if ledger_url else "ponder-bare"
    path = tmp / (f"{stem}-{http_client}.toml" if http_client else f"{stem}.toml")
    path.write_text(text)
    return path


@contextlib.contextmanager
def _ledger(url: str | None, tmp: Path) -> Iterator[str]:
    """The store URL for the governed gateway: a SQLite file in ``tmp`` by default; on a
    PostgreSQL URL, a fresh schema in that database (dropped afterwards), so the run
    neither reads nor leaves rows among anyone's data."""
    if url is None:
        yield f"sqlite:///{tmp / 'ponder.db'}"
        return
    import secrets

    import sqlalchemy as sa

    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "postgresql":
        yield url
        return
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    admin = sa.create_engine(parsed)
    schema = "ponder_bench_" + secrets.token_hex(6)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        scoped = parsed.update_query_dict({"options": f"-csearch_path={schema}"})
        yield scoped.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _prepare_store(ledger_url: str) -> tuple[str, str]:
    """A key (no extra scopes) and limits that bind it: every request reserves and settles.

    Returns the key's id and its secret."""
    from ponder.budget.quota import Limit
    from ponder.ledger import Store

    store = Store(ledger_url)
    try:
        record, secret = store.create_key("bench", team="bench", name="gateway-overhead")
        for limit in (
            Limit("key", "*", "requests", "minute", 10**9),
            Limit("team", "bench", "tokens", "day", 10**12),
        ):
            store.set_limit(limit)
    finally:
        store.close()
    return record.id, secret


# --------------------------------------------------------------------------- load


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    # Nearest rank: the value below which q of the samples fall.
    rank = max(int(round(q * len(sorted_values) + 0.5)) - 1, 0)
    return sorted_values[min(rank, len(sorted_values) - 1)]


@contextlib.asynccontextmanager
async def _client(
    kind: str, url: str, headers: dict[str, str], conns: int
) -> AsyncIterator[Callable[[bytes], Awaitable[tuple[int, bytes]]]]:
    """A POST function over ``conns`` keep-alive connections: (status, body).

    ``lean`` is ponder's own small HTTP/1.1 client (backends/http11.py), so the
    generator spends little CPU per request and leaves the cores to the target;
    ``httpx`` is what the first round used (its CPU competes with the target on 2
    cores and inflates every variant's tail, the direct baseline's included).
    """
    if kind == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=conns)
        timeout = aiohttp.ClientTimeout(total=60.0)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def post_aiohttp(body: bytes) -> tuple[int, bytes]:
                async with session.post(url, data=body, headers=headers) as resp:
                    return resp.status, await resp.read()

            yield post_aiohttp
        return
    if kind == "lean":
        from ponder.backends.http11 import Http11Pool

        base, _, path = url.partition("/v1/")
        pool = Http11Pool(base, headers=headers, read_timeout_s=60.0, max_connections=conns)

        async def post_lean(body: bytes) -> tuple[int, bytes]:
            resp = await pool.post("v1/" + path, body)
            return resp.status_code, resp.content

        try:
            yield post_lean
        finally:
            await pool.aclose()
        return
    import httpx

    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:

        async def post_httpx(body: bytes) -> tuple[int, bytes]:
            resp = await client.post(url, content=body, headers=headers)
            return resp.status_code, await resp.aread()

        yield post_httpx


async def _drive(
    url: str,
    headers: dict[str, str],
    rate: float,
    duration_s: float,
    warmup_s: float,
    conns: int,
    grace_s: float,
    client_kind: str = "lean",
) -> dict[str, Any]:
    """Send ``rate`` requests per second for ``warmup_s + duration_s``; measure the rest.

    Due requests wait in a queue served by ``conns`` workers, one keep-alive connection
    each: a backlog costs the generator O(1) per request (a pool with thousands of
    waiters would make the client, not the target, the bottleneck). Requests still
    unanswered ``grace_s`` after the last one was due count as errors.
    """
    headers = {**headers, "content-type": "application/json"}
    total = int((warmup_s + duration_s) * rate)
    warm = int(warmup_s * rate)
    # Encoded up front: the generator's own CPU should not compete with the target's.
    bodies = [json.dumps(request_body(i)).encode() for i in range(total)]
    latencies: list[float | None] = [None] * total
    errors: dict[str, int] = {}
    lags: list[float] = []
    due_queue: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    busy = max_busy = 0
    answered = 0  # responses of any status, warm-up included: what the target served

    def error(kind: str, i: int) -> None:
        if i >= warm:
            errors[kind] = errors.get(kind, 0) + 1

    async with _client(client_kind, url, headers, conns) as post:

        async def worker() -> None:
            nonlocal busy, max_busy, answered
            while True:
                i, due = await due_queue.get()
                busy += 1
                max_busy = max(max_busy, busy)
                try:
                    status, _ = await post(bodies[i])
                    answered += 1
                    if status == 200:
                        latencies[i] = time.perf_counter() - due
                    else:
                        error(f"http_{status}", i)
                except Exception as exc:  # a transport error of either client
                    error(type(exc).__name__, i)
                finally:
                    busy -= 1
                    due_queue.task_done()

        # Open the connections before the clock starts (a user's client is warm too).
        warmers = [post(bodies[-1 - k]) for k in range(conns)]
        for status, content in await asyncio.gather(*warmers):
            if status != 200:
                raise SystemExit(f"{url} answered {status}: {content[:500]!r}")
        workers = [asyncio.create_task(worker()) for _ in range(conns)]
        t0 = time.perf_counter()
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif i >= warm:
                lags.append(-delay)
            due_queue.put_nowait((i, due))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(due_queue.join(), timeout=grace_s)
        measured_wall = time.perf_counter() - (t0 + warm / rate)
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    ok = sorted(v for v in latencies[warm:] if v is not None)
    unanswered = total - warm - len(ok) - sum(errors.values())
    if unanswered:
        errors["unanswered_in_grace"] = unanswered
    lags.sort()
    return {
        "requests": total - warm,
        "ok": len(ok),
        "served_total": answered + conns,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "achieved_rps": round(len(ok) / measured_wall, 1),
        "p50_ms": round(_percentile(ok, 0.50) * 1000, 3),
        "p90_ms": round(_percentile(ok, 0.90) * 1000, 3),
        "p99_ms": round(_percentile(ok, 0.99) * 1000, 3),
        "max_ms": round(ok[-1] * 1000, 3) if ok else None,
        "mean_ms": round(statistics.fmean(ok) * 1000, 3) if ok else None,
        "max_busy_connections": max_busy,
        # How late the generator itself queued requests (the machine is shared): large
        # values mean the client, not the target, was short of CPU.
        "late_sends": len(lags),
        "late_send_p99_ms": round(_percentile(lags, 0.99) * 1000, 3) if lags else 0.0,
    }


# --------------------------------------------------------------------------- orchestration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pin(cores: set[int] | None) -> Any:
    if not cores:
        return None
    return lambda: os.sched_setaffinity(0, cores)


def _spawn(
    args: list[str], env: dict[str, str], log: Path, cores: set[int] | None = None
) -> subprocess.Popen[bytes]:
    """A role of this script, or ``ponder ...`` when ``args`` starts with "ponder"."""
    argv = (
        [sys.executable, "-m", "ponder.cli", *args[1:]]
        if args[0] == "ponder"
        else [sys.executable, __file__, *args]
    )
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_pin(cores),
        )


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, path: str = "/") -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a benchmark process exited early:\n{log.read_text()[-3000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"a benchmark process did not start within 60 s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _py_spy() -> str:
    found = shutil.which(
        "py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if found is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy (it is not a dependency)")
    return found


def _cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) a process has used so far; Linux only."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of stat(5); [0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(
    url: str,
    headers: dict[str, str],
    args: argparse.Namespace,
    env: dict[str, str],
    tmp: Path,
    cores: set[int] | None,
    target_pid: int,
    profile: Path | None = None,
) -> dict[str, Any]:
    """One run of the load generator in its own process; returns its JSON result.

    Adds the CPU time the target process used per response it sent: on a shared
    machine that is steadier than latency, which also counts waiting for a core.
    """
    out = tmp / "load.json"
    spec = {
        "url": url,
        "headers": headers,
        "rate": args.rate,
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "conns": args.connections,
        "client_kind": args.client,
        "grace_s": args.grace_s,
        "out": str(out),
    }
    log = tmp / "load.log"
    cpu_before = _cpu_s(target_pid)
    proc = _spawn(["--role", "load", "--spec", json.dumps(spec)], env, log, cores)
    spy = None
    if profile is not None:
        spy = subprocess.Popen(
            [_py_spy(), "record", "--pid", str(target_pid),
             "--rate", "250", "--nonblocking", "--gil", "--format", "speedscope", "--output", str(profile),
             "--duration", str(int(args.warmup_s + args.duration_s))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    rc = proc.wait()
    cpu_after = _cpu_s(target_pid)
    if spy is not None:
        spy.wait()
    if rc != 0:
        raise SystemExit(f"the load generator failed:\n{log.read_text()[-3000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    served = result["served_total"]
    if cpu_before is not None and cpu_after is not None and served:
        result["target_cpu_ms_per_request"] = round((cpu_after - cpu_before) * 1000 / served, 3)
    return result


def _summary(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each variant over its runs: the median of the runs' values (robust to one
    disturbed run), plus the worst run's p99."""
    out: dict[str, dict[str, Any]] = {}
    for name, runs in results.items():
        out[name] = {
            "variant": name,
            "runs": len(runs),
            "requests": sum(r["requests"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            "achieved_rps": round(statistics.median(r["achieved_rps"] for r in runs), 1),
            "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 3),
            "p90_ms": round(statistics.median(r["p90_ms"] for r in runs), 3),
            "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 3),
            "p99_ms_worst_run": max(r["p99_ms"] for r in runs),
            "cpu_ms_per_request": _median_of(runs, "target_cpu_ms_per_request"),
            "late_send_p99_ms": max(r["late_send_p99_ms"] for r in runs),
            "per_run": runs,
        }
    return out


def _median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def _table(summary: dict[str, dict[str, Any]], direct: dict[str, Any]) -> str:
    lines = [
        "| variant | achieved rps | p50 ms | p90 ms | p99 ms | errors | server CPU ms/req "
        "| added p50 ms | added p99 ms | p50 ratio | p99 ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        cpu = "-" if s["cpu_ms_per_request"] is None else f"{s['cpu_ms_per_request']:.2f}"
        if name == "direct":
            added = "| - | - | - | - |"
        else:
            added = (
                f"| {s['p50_ms'] - direct['p50_ms']:.2f} | {s['p99_ms'] - direct['p99_ms']:.2f} "
                f"| {s['p50_ms'] / direct['p50_ms']:.2f} | {s['p99_ms'] / direct['p99_ms']:.2f} |"
            )
        lines.append(
            f"| {name} | {s['achieved_rps']:.1f} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | "
            f"{s['p99_ms']:.2f} | {s['errors']} | {cpu} {added}"
        )
    return "\n".join(lines)


def run_client_cpu(args: argparse.Namespace) -> None:
    clients = [c.strip() for c in args.client_cpu.split(",") if c.strip()]
    if len(clients) < 2 or set(clients) - set(FLOOR_CLIENTS):
        raise SystemExit(f"--client-cpu takes two or more of {', '.join(FLOOR_CLIENTS)}")
    with tempfile.TemporaryDirectory(prefix="ponder-clients-") as tmp:
        port = _free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        up = _spawn(["--role", "upstream", "--port", str(port)], env, Path(tmp) / "up.log")
        try:
            _wait_ready(up, port, Path(tmp) / "up.log")
            asyncio.run(_client_cpu(port, clients, args.client_requests, args.repeats))
        finally:
            _stop(up)


def run(args: argparse.Namespace) -> None:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    known = {"direct", "gateway", "bare", "floor"}
    known |= {f"{g}-{c}" for g in ("gateway", "bare", "floor") for c in FLOOR_CLIENTS}
    unknown = set(variants) - known
    if unknown or "direct" not in variants or len(variants) < 2:
        raise SystemExit(
            "--variants is a comma list of direct, gateway, bare, floor (each of the last "
            f"three optionally -{'/-'.join(FLOOR_CLIENTS)} for its upstream client) that "
            f"includes direct and at least one gateway variant; got {args.variants!r}"
        )
    if args.profile:
        _py_spy()  # fail before starting anything
    ncpu = os.cpu_count() or 1
    side = {ncpu - 1} if args.pin and ncpu > 1 else None
    main_cores = set(range(ncpu - 1)) if args.pin and ncpu > 1 else None

    with (
        tempfile.TemporaryDirectory(prefix="ponder-overhead-") as tmp_name,
        _ledger(args.ledger_url, Path(tmp_name)) as ledger_url,
    ):
        tmp = Path(tmp_name)
        env = {
            **os.environ,
            "PONDER_CACHE_DIR": str(tmp / "cache"),
            # The gateway must not pick up the caller's ponder.toml or PONDER_* overrides.
            "PYTHONUNBUFFERED": "1",
        }
        env = {k: v for k, v in env.items() if not k.startswith("PONDER_") or k in (
            "PONDER_CACHE_DIR",
        )}  # fmt: skip
        procs: list[subprocess.Popen[bytes]] = []
        try:
            up_port = _free_port()
            up = _spawn(["--role", "upstream", "--port", str(up_port)], env, tmp / "up.log", side)
            procs.append(up)
            _wait_ready(up, up_port, tmp / "up.log")

            key_ids: list[str] = []
            targets: dict[str, tuple[str, dict[str, str]]] = {
                "direct": (f"http://127.0.0.1:{up_port}/v1/chat/completions", {})
            }
            # The process whose CPU a variant measures: the upstream for direct.
            pids = {"direct": up.pid}
            for name in variants:
                if name == "direct":
                    continue
                kind, _, client = name.partition("-")
                if kind == "floor":
                    port = _free_port()
                    log = tmp / f"{name}.log"
                    fl = _spawn(
                        ["--role", "floor", "--port", str(port), "--upstream-port", str(up_port),
                         "--floor-client", client or "aiohttp"],
                        env, log, main_cores,
                    )  # fmt: skip
                    procs.append(fl)
                    _wait_ready(fl, port, log, "/health")
                    pids[name] = fl.pid
                    targets[name] = (f"http://127.0.0.1:{port}/v1/chat/completions", {})
                    continue
                governed = kind == "gateway"
                url = ledger_url if governed else None
                headers: dict[str, str] = {}
                if governed:
                    key_id, secret = _prepare_store(ledger_url)
                    headers["authorization"] = f"Bearer {secret}"
                    key_ids.append(key_id)
                config = _gateway_config(tmp, up_port, url, client or None)
                port = _free_port()
                log = tmp / f"{name}.log"
                genv = {**env, "PONDER_CONFIG": str(config)}
                # No access line per request, like the floor and the upstream (uvicorn at
                # log level warning): the ledger row records each governed request.
                serve = ["ponder", "serve", "--host", "127.0.0.1", "--port", str(port)]
                serve += ["--no-access-log"]
                gw = _spawn(serve, genv, log, main_cores)
                procs.append(gw)
                _wait_ready(gw, port, log, "/health")
                pids[name] = gw.pid
                targets[name] = (f"http://127.0.0.1:{port}/v1/chat/completions", headers)

            results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
            for rep in range(args.repeats):
                order = variants if rep % 2 == 0 else list(reversed(variants))
                for name in order:
                    url, headers = targets[name]
                    profile = None
                    if args.profile and name != "direct" and rep == 0:
                        args.profile.mkdir(parents=True, exist_ok=True)
                        profile = args.profile / f"{name}.speedscope.json"
                    r = _load(url, headers, args, env, tmp, side, pids[name], profile)
                    r["repeat"] = rep
                    results[name].append(r)
                    print(f"# {name} run {rep + 1}: {json.dumps(r)}", file=sys.stderr)
            governed_runs = [r for v in variants if v.startswith("gateway") for r in results[v]]
            if governed_runs:
                _check_ledger(ledger_url, key_ids, governed_runs)
        finally:
            for p in reversed(procs):
                _stop(p)

    summary = _summary(results)
    direct = summary["direct"]
    for s in summary.values():
        print(json.dumps({k: v for k, v in s.items() if k != "per_run"}))
    added = {
        name: {
            "added_p50_ms": round(s["p50_ms"] - direct["p50_ms"], 3),
            "added_p99_ms": round(s["p99_ms"] - direct["p99_ms"], 3),
            "p50_ratio": round(s["p50_ms"] / direct["p50_ms"], 3),
            "p99_ratio": round(s["p99_ms"] / direct["p99_ms"], 3),
            "rps_ratio": round(s["achieved_rps"] / direct["achieved_rps"], 3),
            "cpu_ms_per_request": s["cpu_ms_per_request"],
        }
        for name, s in summary.items()
        if name != "direct"
    }
    clients = _client_comparison(summary)
    print(json.dumps({
        "summary": True,
        "rate": args.rate,
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "repeats": args.repeats,
        "connections": args.connections,
        "ledger": "postgresql" if args.ledger_url and "postgres" in args.ledger_url else "sqlite",
        "python": platform.python_version(),
        "pinned": bool(args.pin),
        "cpu_count": ncpu,
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "machine": platform.machine(),
        **added,
        **({"client_comparison": clients} if clients else {}),
    }))  # fmt: skip
    print(_table(summary, direct), file=sys.stderr)


def _client_comparison(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Server CPU per request of the same target with different upstream clients, against
    the first of its client variants in the run (e.g. floor-aiohttp vs floor-http11)."""
    out: dict[str, Any] = {}
    for kind in ("floor", "gateway", "bare"):
        cpu = {
            name.partition("-")[2] or "default": s["cpu_ms_per_request"]
            for name, s in summary.items()
            if name.partition("-")[0] == kind and s["cpu_ms_per_request"] is not None
        }
        if len(cpu) < 2:
            continue
        base_name, base = next(iter(cpu.items()))
        out[kind] = {
            "baseline": base_name,
            "cpu_ms_per_request": cpu,
            "cpu_ms_added_vs_baseline": {
                k: round(v - base, 3) for k, v in cpu.items() if k != base_name
            },
            "cpu_ratio_vs_baseline": {
                k: round(v / base, 3) for k, v in cpu.items() if k != base_name and base
            },
        }
    return out


def _check_ledger(ledger_url: str, key_ids: list[str], runs: list[dict[str, Any]]) -> None:
    """Every 200 of the governed gateways left a ledger row (the benchmark measured the
    configuration it claims to)."""
    from ponder.ledger import Store

    store = Store(ledger_url)
    try:
        rows = sum(1 for row in store.rows() if row.key_id in key_ids and row.status == "ok")
    finally:
        store.close()
    ok = sum(r["ok"] for r in runs)
    if rows < ok:
        raise SystemExit(f"the ledger holds {rows} rows for at least {ok} answered requests")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=200.0, help="requests per second (open loop)")
    p.add_argument("--duration-s", type=float, default=20.0, help="measured seconds per run")
    p.add_argument("--warmup-s", type=float, default=3.0, help="seconds dropped per run")
    p.add_argument("--repeats", type=int, default=2, help="runs per variant, order alternating")
    p.add_argument("--connections", type=int, default=32, help="client keep-alive connections")
    p.add_argument(
        "--client",
        choices=["aiohttp", "lean", "httpx"],
        default="aiohttp",
        help="load generator's HTTP client (aiohttp: little CPU per request)",
    )
    p.add_argument(
        "--grace-s",
        type=float,
        default=10.0,
        help="after the last request is due, wait this long; what is left counts as errors",
    )
    p.add_argument("--variants", default="direct,gateway")
    p.add_argument(
        "--ledger-url", help="store for the governed gateway (default: SQLite in a temp dir)"
    )
    p.add_argument("--pin", action="store_true", help="pin upstream+load and gateway apart")
    p.add_argument(
        "--client-cpu",
        metavar="CLIENTS",
        help="instead of the gateway runs: CPU per request of each upstream client alone "
        f"(comma list of {', '.join(FLOOR_CLIENTS)}; the first is the baseline)",
    )
    p.add_argument("--client-requests", type=int, default=4000, help="requests per client round")
    p.add_argument(
        "--profile",
        type=Path,
        help="write a py-spy speedscope profile of each gateway variant's first run here",
    )
    # Internal: the roles of the child processes.
    p.add_argument("--role", choices=["upstream", "load", "floor"], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--floor-client", choices=FLOOR_CLIENTS, help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "upstream":
        asyncio.run(_serve_upstream(args.port))
    elif args.role == "floor":
        _serve_floor(args.port, args.upstream_port, args.floor_client or "aiohttp")
    elif args.role == "load":
        spec = json.loads(args.spec)
        out = Path(spec.pop("out"))
        out.write_text(json.dumps(asyncio.run(_drive(**spec))))
    elif args.client_cpu:
        run_client_cpu(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
