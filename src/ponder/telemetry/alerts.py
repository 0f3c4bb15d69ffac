"""Alerts: runaway thinking, quota thresholds, upstream error bursts.

Every alert is logged (logger ``ponder.alerts``) and, when a webhook is set,
POSTed to it as JSON in the background; a failing webhook is logged and never
fails a request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["Alert", "Alerts", "webhook_sender"]

logger = logging.getLogger("ponder.alerts")

Sender = Callable[["Alert"], Awaitable[None]]


@dataclass(frozen=True)
class Alert:
    kind: str  # "runaway_thinking" | "quota_threshold" | "upstream_errors"
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def payload(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "at": self.at, **self.data}


def webhook_sender(
    url: str, *, timeout_s: float = 5.0, transport: httpx.AsyncBaseTransport | None = None
) -> Sender:
    """POST each alert as JSON to ``url``."""

    async def send(alert: Alert) -> None:
        async with httpx.AsyncClient(timeout=timeout_s, transport=transport) as client:
            r = await client.post(url, json=alert.payload())
            r.raise_for_status()

    return send


def _p95(values: deque[int]) -> float:
    ordered = sorted(values)
    return float(ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)])


class Alerts:
    """Watches finished requests and raises alerts; ``sent`` keeps the recent ones."""

    def __init__(
        self,
        *,
        sender: Sender | None = None,
        thinking_factor: float = 2.0,
        min_class_samples: int = 20,
        history: int = 1000,
        error_burst: int = 5,
        error_window_s: float = 60.0,
    ) -> None:
        self.sender = sender
        self.thinking_factor = thinking_factor
        self.min_class_samples = min_class_samples
        self.error_burst = error_burst
        self.error_window_s = error_window_s
        self._thinking: dict[str, deque[int]] = defaultdict(lambda: deque(maxlen=history))
        self._errors: dict[str, deque[float]] = defaultdict(deque)
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent: deque[Alert] = deque(maxlen=100)

    def emit(self, alert: Alert) -> None:
        logger.warning("alert %s: %s", alert.kind, alert.message)
        self.sent.append(alert)
        if self.sender is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._deliver(alert))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, alert: Alert) -> None:
        assert self.sender is not None
        try:
            await self.sender(alert)
        except Exception as exc:
            logger.warning(
                "alert webhook failed (%s: %s); alert was %s", type(exc).__name__, exc, alert.kind
            )

    async def drain(self) -> None:
        """Wait for webhook deliveries in flight (shutdown, tests)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- the three watches

    def request_finished(
        self, *, task_class: str, reasoning_tokens: int, request_id: str, caller: str
    ) -> None:
        """Runaway thinking: above ``thinking_factor`` x the p95 of its class so far."""
        seen = self._thinking[task_class]
        if len(seen) >= self.min_class_samples:
            p95 = _p95(seen)
            if p95 > 0 and reasoning_tokens > self.thinking_factor * p95:
                self.emit(
                    Alert(
                        "runaway_thinking",
                        f"request {request_id} of class {task_class!r} thought "
                        f"{reasoning_tokens} tokens, more than {self.thinking_factor:g}x the "
                        f"class p95 of {p95:g}",
                        {
                            "request_id": request_id,
                            "task_class": task_class,
                            "caller": caller,
                            "reasoning_tokens": reasoning_tokens,
                            "p95": p95,
                        },
                    )
                )
        seen.append(reasoning_tokens)

    def quota_crossed(
        self,
        *,
        scope: str,
        subject: str,
        metric: str,
        window: str,
        limit: int,
        used: int,
        threshold: float,
    ) -> None:
        self.emit(
            Alert(
                "quota_threshold",
                f"{scope} {subject!r} reached {threshold:.0%} of its {metric} quota per "
                f"{window} ({used} of {limit})",
                {
                    "scope": scope,
                    "subject": subject,
                    "metric": metric,
                    "window": window,
                    "limit": limit,
                    "used": used,
                    "threshold": threshold,
                },
            )
        )

    def upstream_error(self, tier: str, error: str, now: float | None = None) -> None:
        """An error burst: ``error_burst`` upstream errors of a tier within the window."""
        now = time.monotonic() if now is None else now
        recent = self._errors[tier]
        recent.append(now)
        while recent and recent[0] < now - self.error_window_s:
            recent.popleft()
        if len(recent) >= self.error_burst:
            self.emit(
                Alert(
                    "upstream_errors",
                    f"{len(recent)} upstream errors on tier {tier!r} in the last "
                    f"{self.error_window_s:g}s (latest: {error})",
                    {"tier": tier, "errors": len(recent), "window_s": self.error_window_s},
                )
            )
            # One alert per burst, not one per error while it lasts.
            recent.clear()
