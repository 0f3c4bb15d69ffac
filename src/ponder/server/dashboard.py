"""The admin dashboard: a static page at ``/dashboard`` and the JSON it reads.

The page (``static/dashboard.html`` + Chart.js, vendored: nothing is fetched from
a CDN) holds no data; it asks for an admin key and polls these endpoints, all
behind the ``admin`` scope like the rest of the admin API:

- ``GET /v1/admin/dashboard/summary``   totals, p50/p95 latency and TTFT, and
  requests, tokens and cost by strategy, class, tier and caller;
- ``GET /v1/admin/dashboard/series``    the same over time, in buckets;
- ``GET /v1/admin/dashboard/requests``  the latest requests (the live feed);
- ``GET /v1/admin/dashboard/quotas``    every quota counter of the current window
  with its state, and the gateway's recent alerts;
- ``GET /v1/admin/dashboard/eval``      scaling curves and Pareto frontier of the
  latest eval run under ``server.eval_results_dir``.

``summary`` and ``series`` take ``window_s`` (the last N seconds; all time when
absent). Everything is computed from the ledger with SQLAlchemy Core, so it
works on SQLite and PostgreSQL; the store itself is only read.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError

from ponder.budget.quota import Limit, window_bounds
from ponder.errors import InvalidRequest, PonderError, StoreUnavailable
from ponder.ledger import schema as s
from ponder.ledger.stats import percentile
from ponder.ledger.store import Store
from ponder.server.gateway import Gateway
from ponder.server.protocol import error_result

__all__ = [
    "STATIC_DIR",
    "LedgerQueries",
    "bucket_size",
    "dashboard_router",
    "latest_eval",
    "parse_window",
]

STATIC_DIR = Path(__file__).parent / "static"
_T = TypeVar("_T")

# Bucket widths the time series snaps to (seconds), so axis ticks stay readable.
_BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86_400, 7 * 86_400)
_TARGET_BUCKETS = 60
_MAX_FEED = 500
_GROUPS = ("strategy", "task_class", "tier", "caller")
_PERCENTILE_KEYS = ("latency_p50_ms", "latency_p95_ms", "ttft_p50_ms", "ttft_p95_ms")


def bucket_size(span_s: float) -> int:
    """The smallest standard bucket that cuts ``span_s`` into at most ~60 buckets."""
    # Whole seconds: a window of exactly an hour, measured a moment later, is still an hour.
    span = round(span_s)
    for b in _BUCKETS:
        if span / b <= _TARGET_BUCKETS:
            return b
    return _BUCKETS[-1]


def parse_window(raw: str | None) -> float | None:
    """``window_s`` query value -> seconds (None: all time); a clear error otherwise."""
    if raw is None or raw == "" or raw == "all":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise InvalidRequest(
            f"window_s must be a positive number of seconds (or 'all'), got {raw!r}",
            param="window_s",
        )
    return value


def _int(value: Any) -> int:
    # SUM over BIGINT is NUMERIC on PostgreSQL (Decimal) and NULL over no rows.
    return int(value or 0)


def _usd(micro: int) -> float:
    return micro / 1_000_000


def _pct(values: Sequence[float], q: float) -> float | None:
    return percentile(values, q) if values else None


def _sqlite_reader(url: sa.URL) -> sa.Engine:
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA query_only = ON")

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


class LedgerQueries:
    """Read-only aggregates over the ledger of a :class:`Store` (SQLite or PostgreSQL)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.postgres = store.dialect == "postgresql"
        # The store's SQLite engine takes the write lock up front (BEGIN IMMEDIATE); a
        # dashboard polling every few seconds must not queue the gateway's writes
        # behind its reads, so it reads through its own engine: deferred BEGIN (a WAL
        # snapshot, no lock) on a query_only connection.
        self.engine = store.engine if self.postgres else _sqlite_reader(store.engine.url)

    def close(self) -> None:
        if self.engine is not self.store.engine:
            self.engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.connect() as conn:
                if self.postgres:
                    # One snapshot for all the queries of an answer, so totals and
                    # breakdowns agree; read only.
                    conn = conn.execution_options(
                        isolation_level="REPEATABLE READ", postgresql_readonly=True
                    )
                yield conn
        except SQLAlchemyError as exc:
            raise StoreUnavailable(
                f"the ponder store ({self.store.dialect}) failed while reading the ledger: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}; check the ledger "
                "URL and the database server"
            ) from exc

    # ---- shared pieces

    @staticmethod
    def _since(q: Any, since: float | None) -> Any:
        return q if since is None else q.where(s.requests.c.at >= since)

    @staticmethod
    def _sums() -> list[Any]:
        r = s.requests.c
        ok = sa.case((r.status == "ok", 1), else_=0)
        return [
            sa.func.count().label("requests"),
            sa.func.sum(ok).label("ok"),
            sa.func.sum(r.input_tokens).label("input_tokens"),
            sa.func.sum(r.cached_input_tokens).label("cached_input_tokens"),
            sa.func.sum(r.reasoning_tokens).label("reasoning_tokens"),
            sa.func.sum(r.output_tokens).label("output_tokens"),
            sa.func.sum(r.cost_micro).label("cost_micro"),
        ]

    @staticmethod
    def _figures(row: Any) -> dict[str, Any]:
        requests, ok = _int(row.requests), _int(row.ok)
        tokens = {
            k: _int(getattr(row, k))
            for k in ("input_tokens", "cached_input_tokens", "reasoning_tokens", "output_tokens")
        }
        cost = _int(row.cost_micro)
        return {
            "requests": requests,
            "ok": ok,
            "errors": requests - ok,
            **tokens,
            "total_tokens": sum(tokens.values()),
            "cost_micro": cost,
            "cost_usd": _usd(cost),
        }

    def _percentiles(self, conn: sa.Connection, since: float | None) -> dict[str, float | None]:
        r = s.requests.c
        if self.postgres:
            # percentile_disc is the nearest-rank percentile, as ledger.stats computes it.
            cols = [
                sa.func.percentile_disc(q / 100).within_group(col).label(f"{name}_p{q}")
                for name, col in (("latency", r.latency_ms), ("ttft", r.ttft_ms))
                for q in (50, 95)
            ]
            row = conn.execute(self._since(sa.select(*cols), since)).one()
            return {f"{k}_ms": (None if v is None else float(v)) for k, v in row._mapping.items()}
        rows = conn.execute(self._since(sa.select(r.latency_ms, r.ttft_ms), since)).all()
        latency = [x.latency_ms for x in rows]
        ttft = [x.ttft_ms for x in rows if x.ttft_ms is not None]
        return {
            "latency_p50_ms": _pct(latency, 50),
            "latency_p95_ms": _pct(latency, 95),
            "ttft_p50_ms": _pct(ttft, 50),
            "ttft_p95_ms": _pct(ttft, 95),
        }

    # ---- summary

    def summary(self, since: float | None = None) -> dict[str, Any]:
        r = s.requests.c
        with self._read() as conn:
            totals = self._figures(conn.execute(self._since(sa.select(*self._sums()), since)).one())
            totals.update(self._percentiles(conn, since))
            groups: dict[str, list[dict[str, Any]]] = {}
            for name in _GROUPS:
                keys = [r.key_id, r.user, r.team] if name == "caller" else [r[name]]
                q = self._since(sa.select(*keys, *self._sums()), since).group_by(*keys)
                out = []
                for row in conn.execute(q):
                    figures = self._figures(row)
                    if name == "caller":
                        key = {"key_id": row.key_id, "user": row.user, "team": row.team}
                        label = row.user or "anonymous"
                        if row.key_id:
                            label = f"{label} ({row.key_id})"
                        out.append({"name": label, **key, **figures})
                    else:
                        out.append({"name": getattr(row, name) or "(none)", **figures})
                groups[name] = sorted(out, key=lambda g: (-g["requests"], g["name"]))
        return {"since": since, "generated_at": time.time(), "totals": totals, "by": groups}

    # ---- time series

    def series(
        self, since: float | None = None, *, now: float | None = None, bucket_s: int | None = None
    ) -> dict[str, Any]:
        r = s.requests.c
        now = time.time() if now is None else now
        with self._read() as conn:
            if since is None:
                # All time, but at least the last ten minutes: a young ledger still gets an axis.
                first = conn.execute(sa.select(sa.func.min(r.at))).scalar()
                since = min(float(first), now - 600) if first is not None else now - 600
            width = bucket_s or bucket_size(max(now - since, 1.0))
            start = math.floor(since / width) * width
            # The width is inlined (an int, never text): as a bound parameter PostgreSQL
            # would see the SELECT and GROUP BY expressions as different.
            step: Any = sa.literal_column(str(int(width)))
            # at is positive, so on SQLite truncation is floor.
            index = (
                sa.cast(sa.func.floor(r.at / step), sa.BigInteger)
                if self.postgres
                else sa.cast(r.at / step, sa.Integer)
            )
            bucket = index.label("bucket")
            rows = conn.execute(
                sa.select(bucket, *self._sums()).where(r.at >= start).group_by(bucket)
            ).all()
            sums = {int(row.bucket): self._figures(row) for row in rows}
            pcts = self._bucket_percentiles(conn, bucket, start)
        no_percentiles = dict.fromkeys(_PERCENTILE_KEYS)
        buckets = [
            {
                "start": b * width,
                **(sums.get(b) or self._figures(_EmptyRow())),
                **pcts.get(b, no_percentiles),
            }
            for b in range(int(start // width), int(now // width) + 1)
        ]
        return {"since": since, "until": now, "bucket_s": width, "buckets": buckets}

    def _bucket_percentiles(
        self, conn: sa.Connection, bucket: Any, start: float
    ) -> dict[int, dict[str, float | None]]:
        r = s.requests.c
        out: dict[int, dict[str, float | None]] = {}
        if self.postgres:
            cols = [
                sa.func.percentile_disc(q / 100).within_group(col).label(f"{name}_p{q}_ms")
                for name, col in (("latency", r.latency_ms), ("ttft", r.ttft_ms))
                for q in (50, 95)
            ]
            query = sa.select(bucket, *cols).where(r.at >= start).group_by(bucket)
            for row in conn.execute(query):
                found = dict(row._mapping)
                b = int(found.pop("bucket"))
                out[b] = {k: None if v is None else float(v) for k, v in found.items()}
            return out
        latency: dict[int, list[float]] = defaultdict(list)
        ttft: dict[int, list[float]] = defaultdict(list)
        for row in conn.execute(sa.select(bucket, r.latency_ms, r.ttft_ms).where(r.at >= start)):
            latency[int(row.bucket)].append(row.latency_ms)
            if row.ttft_ms is not None:
                ttft[int(row.bucket)].append(row.ttft_ms)
        for b, values in latency.items():
            out[b] = {
                "latency_p50_ms": _pct(values, 50),
                "latency_p95_ms": _pct(values, 95),
                "ttft_p50_ms": _pct(ttft[b], 50),
                "ttft_p95_ms": _pct(ttft[b], 95),
            }
        return out

    # ---- the live feed

    def feed(self, limit: int = 50) -> list[dict[str, Any]]:
        r = s.requests.c
        q = sa.select(s.requests).order_by(r.at.desc(), r.id).limit(limit)
        out = []
        with self._read() as conn:
            for row in conn.execute(q):
                try:
                    plan = json.loads(row.plan)
                except (TypeError, ValueError):
                    plan = {}
                if not isinstance(plan, dict):
                    plan = {}
                out.append(
                    {
                        "id": row.id,
                        "at": row.at,
                        "task_class": row.task_class,
                        "strategy": row.strategy,
                        "tier": row.tier,
                        "model": row.model,
                        "status": row.status,
                        "http_status": row.http_status,
                        "key_id": row.key_id,
                        "user": row.user,
                        "team": row.team,
                        "budget": plan.get("budget"),
                        "thinking_budget": plan.get("thinking_budget"),
                        "input_tokens": _int(row.input_tokens),
                        "cached_input_tokens": _int(row.cached_input_tokens),
                        "reasoning_tokens": _int(row.reasoning_tokens),
                        "output_tokens": _int(row.output_tokens),
                        "cost_micro": _int(row.cost_micro),
                        "cost_usd": _usd(_int(row.cost_micro)),
                        "latency_ms": row.latency_ms,
                        "ttft_ms": row.ttft_ms,
                        "truncated": bool(row.truncated),
                    }
                )
        return out

    # ---- quotas

    def quotas(
        self, thresholds: Sequence[float] = (0.8, 1.0), now: float | None = None
    ) -> list[dict[str, Any]]:
        """Every limit with the usage of each subject it counts in the current window."""
        now = time.time() if now is None else now
        warn = min((t for t in thresholds if t < 1.0), default=1.0)
        c = s.counters.c
        counters: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
        with self._read() as conn:
            limits = [
                Limit(row.scope, row.subject, row.metric, row.window, int(row.limit))
                for row in conn.execute(sa.select(s.limits))
            ]
            windows = {lim.window for lim in limits if lim.window != "request"}
            for window in windows:
                start, _ = window_bounds(window, now)
                q = sa.select(s.counters).where(c.window == window, c.window_start == start)
                for row in conn.execute(q):
                    counters[(row.scope, row.metric, row.window)].append(row)
        out = []
        for lim in sorted(limits, key=lambda x: (x.scope, x.subject, x.metric, x.window)):
            if lim.window == "request":
                out.append(self._quota_row(lim, lim.subject, None, None, now, warn))
                continue
            rows = [
                row
                for row in counters[(lim.scope, lim.metric, lim.window)]
                if lim.subject in ("*", row.subject)
            ]
            if not rows:
                out.append(self._quota_row(lim, lim.subject, 0, 0, now, warn))
            for row in sorted(rows, key=lambda x: x.subject):
                out.append(
                    self._quota_row(lim, row.subject, _int(row.used), _int(row.reserved), now, warn)
                )
        return out

    @staticmethod
    def _quota_row(
        lim: Limit, subject: str, used: int | None, reserved: int | None, now: float, warn: float
    ) -> dict[str, Any]:
        if used is None:
            fraction, state = None, "cap"
        else:
            fraction = used / lim.limit if lim.limit > 0 else (1.0 if used else 0.0)
            state = "exceeded" if used >= lim.limit and (used or lim.limit == 0) else "ok"
            if state == "ok" and fraction >= warn:
                state = "warning"
        return {
            "scope": lim.scope,
            "limit_subject": lim.subject,
            "subject": subject,
            "metric": lim.metric,
            "window": lim.window,
            "limit": lim.limit,
            "used": used,
            "reserved": reserved,
            "fraction": fraction,
            "state": state,
            "resets_at": None if lim.window == "request" else window_bounds(lim.window, now)[1],
            "describe": lim.describe(),
        }


class _EmptyRow:
    """The aggregate row of a bucket with no requests."""

    requests = ok = input_tokens = cached_input_tokens = reasoning_tokens = 0
    output_tokens = cost_micro = 0


# --------------------------------------------------------------------------- eval results


def _candidates(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found: list[Path] = []
    for pattern in ("results.jsonl", "*/results.jsonl", "*/*/results.jsonl"):
        found += root.glob(pattern)
    if not found:
        for pattern in ("summary.json", "*/summary.json", "*/*/summary.json"):
            found += root.glob(pattern)
    return found


def _summaries(path: Path) -> tuple[list[Any], int]:
    from ponder.eval.metrics import ConfigSummary, summarize
    from ponder.eval.runner import ResultStore

    if path.suffix == ".jsonl":
        records = ResultStore(path).load()
        return summarize(records), len(records)
    data = json.loads(path.read_text())
    names = {f.name for f in fields(ConfigSummary)}
    summaries = [
        ConfigSummary(**{k: v for k, v in d.items() if k in names}) for d in data["summaries"]
    ]
    return summaries, sum(x.items for x in summaries)


def _eval_stamp(root: Path | None) -> list[tuple[str, int, int]] | None:
    """What the eval answer depends on: each candidate file's path, mtime and size."""
    if root is None:
        return []
    try:
        root = Path(root).expanduser()
        found = _candidates(root) if root.exists() else []
        return [(str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in found]
    except OSError:
        return None  # a file changing under us: do not cache


def latest_eval(root: Path | None) -> dict[str, Any]:
    """Scaling curves and the Pareto frontier of the newest eval run under ``root``.

    ``root`` is a run directory, a directory of runs, or a ``results.jsonl``; a
    report's ``summary.json`` is used where no ``results.jsonl`` is found.
    """
    if root is None:
        return {
            "configured": False,
            "message": "no eval results configured: set server.eval_results_dir "
            "(PONDER_SERVER__EVAL_RESULTS_DIR) to the directory `ponder eval --out` writes",
        }
    root = Path(root).expanduser()
    found = _candidates(root) if root.exists() else []
    if not found:
        return {
            "configured": True,
            "source": str(root),
            "message": f"no results.jsonl or summary.json under {root}; run `ponder eval --out "
            f"{root}/RUN` first",
        }
    try:
        path = max(found, key=lambda p: p.stat().st_mtime)
    except OSError as exc:
        return {"configured": True, "source": str(root), "message": f"cannot read {root}: {exc}"}
    from ponder.eval.metrics import pareto_frontier

    try:
        summaries, records = _summaries(path)
        modified = path.stat().st_mtime
    except (OSError, KeyError, TypeError, ValueError) as exc:
        return {
            "configured": True,
            "source": str(path),
            "message": f"{path} is not an eval results file ({type(exc).__name__}: {exc}); "
            "point server.eval_results_dir at a `ponder eval --out` directory",
        }

    def point(x: Any) -> dict[str, Any]:
        return {
            "config": x.config,
            "strategy": x.strategy,
            "model": x.model,
            "n": x.n,
            "budget": x.budget,
            "items": x.items,
            "accuracy": x.accuracy,
            "ci_low": x.ci_low,
            "ci_high": x.ci_high,
            "tokens": x.total_tokens,
            "reasoning_tokens": x.reasoning_tokens,
        }

    curves: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for x in summaries:
        curves[f"{x.strategy} [{x.model}]"].append(point(x))
    return {
        "configured": True,
        "source": str(path),
        "modified_at": modified,
        "records": records,
        "curves": [
            {"name": name, "points": sorted(points, key=lambda p: p["tokens"])}
            for name, points in sorted(curves.items())
        ],
        "frontier": [point(x) for x in pareto_frontier(summaries)],
    }


# --------------------------------------------------------------------------- routes


def _since(request: Request) -> float | None:
    window = parse_window(request.query_params.get("window_s"))
    return None if window is None else time.time() - window


# Fixed, not guessed from the host's MIME database: with nosniff a wrong type breaks the page.
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}


def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every file of the page, read once: the routes serve only these (no path traversal)."""
    out: dict[str, tuple[bytes, str]] = {}
    for path in STATIC_DIR.rglob("*"):
        kind = _MEDIA_TYPES.get(path.suffix)
        if kind is not None and path.is_file():
            out[path.relative_to(STATIC_DIR).as_posix()] = (path.read_bytes(), kind)
    return out


# The page handles an admin key: it may load only its own files and talk only to this origin.
_PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def dashboard_router(gateway: Gateway) -> APIRouter:
    """``/dashboard`` (the page and its files) and the ``/v1/admin/dashboard/*`` JSON."""
    router = APIRouter()
    files = _static_files()
    eval_cache: dict[str, Any] = {}

    queries = None if gateway.store is None else LedgerQueries(gateway.store)

    async def admin(headers: Mapping[str, str]) -> LedgerQueries:
        await gateway.require_admin(
            headers, needs="the dashboard", missing="ledger rows for the dashboard to show"
        )
        assert queries is not None  # require_admin refused a gateway without a store
        return queries

    async def answer(request: Request, work: Callable[[LedgerQueries], _T]) -> Response:
        try:
            ledger = await admin(request.headers)
            data = await asyncio.to_thread(work, ledger)
        except PonderError as exc:
            result = error_result(exc)
            return JSONResponse(result.body, status_code=result.status, headers=result.headers)
        return JSONResponse(data, headers={"cache-control": "no-store"})

    @router.get("/dashboard", include_in_schema=False)
    async def page() -> Response:
        body, _ = files["dashboard.html"]
        return HTMLResponse(body, headers=_PAGE_HEADERS)

    @router.get("/dashboard/static/{name:path}", include_in_schema=False)
    async def static(name: str) -> Response:
        found = files.get(name)
        if found is None:
            return JSONResponse(
                {
                    "error": {
                        "message": f"no dashboard file {name!r}",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "not_found",
                    }
                },
                status_code=404,
            )
        body, kind = found
        return Response(body, media_type=kind, headers=_PAGE_HEADERS)

    @router.get("/v1/admin/dashboard/summary")
    async def summary(request: Request) -> Response:
        return await answer(request, lambda q: q.summary(_since(request)))

    @router.get("/v1/admin/dashboard/series")
    async def series(request: Request) -> Response:
        return await answer(request, lambda q: q.series(_since(request)))

    @router.get("/v1/admin/dashboard/requests")
    async def feed(request: Request) -> Response:
        def work(q: LedgerQueries) -> dict[str, Any]:
            raw = request.query_params.get("limit", "50")
            if not raw.isdigit() or not 1 <= int(raw) <= _MAX_FEED:
                raise InvalidRequest(
                    f"limit must be an integer from 1 to {_MAX_FEED}, got {raw!r}", param="limit"
                )
            return {"object": "list", "data": q.feed(int(raw))}

        return await answer(request, work)

    @router.get("/v1/admin/dashboard/quotas")
    async def quotas(request: Request) -> Response:
        thresholds = gateway.quota_thresholds
        # Copied here, on the event loop that appends to it, not in the worker thread.
        alerts = [a.payload() for a in reversed(gateway.alerts.sent)]

        def work(q: LedgerQueries) -> dict[str, Any]:
            return {
                "thresholds": list(thresholds),
                "quotas": q.quotas(thresholds),
                "alerts": alerts,
            }

        return await answer(request, work)

    @router.get("/v1/admin/dashboard/eval")
    async def evals(request: Request) -> Response:
        root = getattr(gateway.settings, "eval_results_dir", None)

        def work(_: LedgerQueries) -> dict[str, Any]:
            # Recomputed only when the results files change (the page polls every few seconds).
            stamp = _eval_stamp(root)
            if stamp is None or eval_cache.get("stamp") != stamp:
                eval_cache["data"] = latest_eval(root)
                eval_cache["stamp"] = stamp
            data: dict[str, Any] = eval_cache["data"]
            return data

        return await answer(request, work)

    return router
