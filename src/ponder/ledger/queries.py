"""Read-only aggregates over the ledger for the admin dashboard (SQLite or PostgreSQL).

Totals, percentiles, time series, the latest requests and quota states, computed with
SQLAlchemy Core in one read snapshot of the store (see :meth:`Store.transaction`).

Shadow runs (``[router.shadow]``: a counterfactual plan run in the background, its row
linked to the served request by ``features.shadow_of``) are not served traffic: totals,
breakdowns and series count served requests only, as ``ponder stats`` does, and the
summary reports shadow spend on its own (``totals.shadow``).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from ponder.budget.quota import Limit, window_bounds
from ponder.ledger import schema as s
from ponder.ledger.database import Transaction
from ponder.ledger.stats import percentile
from ponder.ledger.store import Store

__all__ = ["LedgerQueries", "bucket_size"]

# Bucket widths the time series snaps to (seconds), so axis ticks stay readable.
_BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86_400, 7 * 86_400)
_TARGET_BUCKETS = 60
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


def _int(value: Any) -> int:
    # SUM over BIGINT is NUMERIC on PostgreSQL (Decimal) and NULL over no rows.
    return int(value or 0)


def _usd(micro: int) -> float:
    return micro / 1_000_000


def _pct(values: Sequence[float], q: float) -> float | None:
    return percentile(values, q) if values else None


def _json_object(text: str | None) -> dict[str, Any]:
    """A JSON column read back as an object ({} when empty, malformed or not an object)."""
    try:
        found = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


class LedgerQueries:
    """Read-only aggregates over the ledger of a :class:`Store` (SQLite or PostgreSQL)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.postgres = store.dialect == "postgresql"

    @contextmanager
    def _read(self) -> Iterator[Transaction]:
        # One snapshot for all the queries of an answer, so totals and breakdowns agree.
        # A read transaction takes no write lock: a dashboard polling every few seconds
        # never queues the gateway's writes behind its reads (nor waits for them).
        with self.store.transaction("read") as tx:
            yield tx

    # ---- shared pieces

    def _shadow_link(self) -> Any:
        """The row's ``features.shadow_of`` (NULL for served requests), in SQL."""
        r = s.requests.c
        if self.postgres:
            found: Any = sa.func.json_extract_path_text(sa.cast(r.features, sa.JSON), "shadow_of")
        else:
            found = sa.func.json_extract(r.features, "$.shadow_of")
        # The text test first: only rows that can hold the key are parsed as JSON.
        return sa.case((r.features.like('%"shadow_of"%'), found), else_=None)

    def _served(self, q: Any) -> Any:
        return q.where(self._shadow_link().is_(None))

    @staticmethod
    def _window(q: Any, since: float | None) -> Any:
        return q if since is None else q.where(s.requests.c.at >= since)

    def _since(self, q: Any, since: float | None) -> Any:
        """Served requests (no shadow runs) since ``since``."""
        return self._window(self._served(q), since)

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

    def _percentiles(self, conn: Transaction, since: float | None) -> dict[str, float | None]:
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
            shadow = sa.select(*self._sums()).where(self._shadow_link().is_not(None))
            totals["shadow"] = self._figures(conn.execute(self._window(shadow, since)).one())
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
                self._served(sa.select(bucket, *self._sums())).where(r.at >= start).group_by(bucket)
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
        self, conn: Transaction, bucket: Any, start: float
    ) -> dict[int, dict[str, float | None]]:
        r = s.requests.c
        out: dict[int, dict[str, float | None]] = {}
        if self.postgres:
            cols = [
                sa.func.percentile_disc(q / 100).within_group(col).label(f"{name}_p{q}_ms")
                for name, col in (("latency", r.latency_ms), ("ttft", r.ttft_ms))
                for q in (50, 95)
            ]
            query = self._served(sa.select(bucket, *cols)).where(r.at >= start).group_by(bucket)
            for row in conn.execute(query):
                found = dict(row._mapping)
                b = int(found.pop("bucket"))
                out[b] = {k: None if v is None else float(v) for k, v in found.items()}
            return out
        latency: dict[int, list[float]] = defaultdict(list)
        ttft: dict[int, list[float]] = defaultdict(list)
        served = self._served(sa.select(bucket, r.latency_ms, r.ttft_ms))
        for row in conn.execute(served.where(r.at >= start)):
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
                plan, features = _json_object(row.plan), _json_object(row.features)
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
                        # A shadow run's served request (None for served traffic).
                        "shadow_of": features.get("shadow_of"),
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
