"""What happened between a request and its upstreams: every attempt and every usage anomaly.

A caller (the gateway, per request) opens a report with :func:`record_upstream`; every
HTTP backend call made inside it, in any task started from it (``asyncio.gather``
copies the context), adds to the same report: each attempt sent to an upstream, its
status or error, and each usage figure an upstream reported beyond what the call could
have used. The trace, the ledger row and the metrics read it from there, so a retry
is never invisible and an inflated usage report is never silently charged.

    with record_upstream() as report:
        await backend.generate(req)
    report.summary()  # {"attempts": 1, "errors": [], "usage_clamped": 0}
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "UpstreamAttempt",
    "UpstreamReport",
    "UsageAnomaly",
    "current_upstream_report",
    "record_upstream",
]


@dataclass
class UpstreamAttempt:
    """One request sent (or tried) to an upstream."""

    upstream: str
    path: str
    status: int | None = None  # the HTTP status, None when no response came
    error: str | None = None  # the error code ("upstream_timeout", ...) when it failed
    reason: str | None = None
    seconds: float = 0.0


@dataclass
class UsageAnomaly:
    """Usage an upstream reported beyond what the call asked for; the excess was dropped."""

    upstream: str
    reported_prompt: int
    reported_completion: int
    allowed_prompt: int
    allowed_completion: int

    @property
    def clamped_tokens(self) -> int:
        return max(self.reported_prompt - self.allowed_prompt, 0) + max(
            self.reported_completion - self.allowed_completion, 0
        )


@dataclass
class UpstreamReport:
    attempts: list[UpstreamAttempt] = field(default_factory=list)
    anomalies: list[UsageAnomaly] = field(default_factory=list)

    @property
    def errors(self) -> list[UpstreamAttempt]:
        return [a for a in self.attempts if a.error is not None]

    @property
    def clamped_tokens(self) -> int:
        return sum(a.clamped_tokens for a in self.anomalies)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready digest for a trace event or a ledger column."""
        return {
            "attempts": len(self.attempts),
            "errors": [
                {k: v for k, v in asdict(a).items() if k != "seconds" and v is not None}
                for a in self.errors
            ],
            "usage_clamped": self.clamped_tokens,
        }


_CURRENT: ContextVar[UpstreamReport | None] = ContextVar("ponder_upstream_report", default=None)


@contextmanager
def record_upstream() -> Iterator[UpstreamReport]:
    """Collect the upstream attempts and usage anomalies of everything run inside."""
    report = UpstreamReport()
    token = _CURRENT.set(report)
    try:
        yield report
    finally:
        _CURRENT.reset(token)


def current_upstream_report() -> UpstreamReport | None:
    return _CURRENT.get()
