"""The dashboard's routes: the page and its files, and the ``/v1/admin/dashboard/*`` JSON."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ponder.errors import InvalidRequest, PonderError, openai_error_body
from ponder.ledger.queries import LedgerQueries
from ponder.router.savings import routing_report
from ponder.server.dashboard.evals import eval_stamp, latest_eval
from ponder.server.gateway import Gateway
from ponder.server.protocol import error_result

__all__ = ["MAX_WINDOW_S", "ROUTING_TTL_S", "STATIC_DIR", "dashboard_router", "parse_window"]

STATIC_DIR = Path(__file__).parent.parent / "static"
_T = TypeVar("_T")
_MAX_FEED = 500
# Ten years: any longer window is "all" in practice, and a huge one (1e308) would make
# ``now - window`` overflow the database's float or time bounds.
MAX_WINDOW_S = 10 * 365.25 * 86400
# How long a routing report (escalation, savings) is served before it is recomputed.
ROUTING_TTL_S = 30.0


def _seconds(raw: str | None, param: str, minimum: float, allowed: str) -> float | None:
    """A query value in seconds, at least ``minimum`` (above it when 0) and at most
    ``MAX_WINDOW_S``; None when absent; a clear 400 naming ``allowed`` otherwise."""
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    low_ok = value > 0 if minimum == 0 else value >= minimum
    if not math.isfinite(value) or not low_ok or value > MAX_WINDOW_S:
        raise InvalidRequest(f"{param} must be {allowed}, got {raw!r}", param=param)
    return value


def parse_window(raw: str | None) -> float | None:
    """``window_s`` query value -> seconds (None: all time); a clear error otherwise."""
    if raw == "all":
        return None
    allowed = f"a number of seconds from 0 to {MAX_WINDOW_S:.0f} (ten years), or 'all'"
    return _seconds(raw, "window_s", 0, allowed)


def _bucket(raw: str | None) -> float | None:
    """``bucket_s`` query value -> seconds (None: chosen from the span of the rows)."""
    return _seconds(raw, "bucket_s", 1, f"a number of seconds from 1 to {MAX_WINDOW_S:.0f}")


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
    routing_cache: dict[tuple[float | None, float | None], tuple[float, dict[str, Any]]] = {}

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
                openai_error_body(
                    f"no dashboard file {name!r}", type="invalid_request_error", code="not_found"
                ),
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

    @router.get("/v1/admin/dashboard/routing")
    async def routing(request: Request) -> Response:
        plans = list(gateway.shadow.plans) if gateway.shadow is not None else []

        def work(q: LedgerQueries) -> dict[str, Any]:
            window = parse_window(request.query_params.get("window_s"))
            bucket = _bucket(request.query_params.get("bucket_s"))
            # Row by row (paired shadows, bootstrap intervals), so kept for a while: the
            # page polls every few seconds, the estimate moves on a scale of minutes.
            key = (window, bucket)
            now = time.time()
            kept = routing_cache.get(key)
            if kept is not None and now - kept[0] < ROUTING_TTL_S:
                return kept[1]
            since = None if window is None else now - window
            data = routing_report(q.store.rows(since=since), bucket_s=bucket, plans=plans)
            data.update(since=since, generated_at=now)
            routing_cache[key] = (now, data)
            return data

        return await answer(request, work)

    @router.get("/v1/admin/dashboard/eval")
    async def evals(request: Request) -> Response:
        root = getattr(gateway.settings, "eval_results_dir", None)

        def work(_: LedgerQueries) -> dict[str, Any]:
            # Recomputed only when the results files change (the page polls every few seconds).
            stamp = eval_stamp(root)
            if stamp is None or eval_cache.get("stamp") != stamp:
                eval_cache["data"] = latest_eval(root)
                eval_cache["stamp"] = stamp
            data: dict[str, Any] = eval_cache["data"]
            return data

        return await answer(request, work)

    return router
