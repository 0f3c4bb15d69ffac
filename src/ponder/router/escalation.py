"""Escalation share: how much served traffic got more than a direct small-tier answer.

A served ledger row is *escalated* when its plan spent extra compute: thinking (``cot``),
a search or sampling strategy (self-consistency, best-of-N, beam, tree searches,
refinement), the strong tier (``tier = "strong"``, or a call to it recorded in the plan's
``tiers``), or a cascade that climbed (more than one rung ran, or a thinking, search or
strong-tier rung did; the gateway records the rungs that ran as ``plan.rungs_run``). A
direct or program-aided answer on the small tier, and a cascade that stopped at its first
direct or program rung, are not. Rows of cascades from before ``rungs_run`` was recorded
count as escalated only when they called the strong tier.

Shadow rows (``features.shadow_of``) are counterfactual runs, never served traffic.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ponder.ledger.stats import is_shadow
from ponder.router.calibrate import STRONG_TIER

__all__ = [
    "EscalationBucket",
    "bucket_for_span",
    "escalated",
    "escalation_series",
    "is_shadow",
]

# Strategies that answer once, without thinking: escalated only on the strong tier.
_SINGLE_ANSWER = frozenset({"direct", "program_aided"})
# Cascade rungs that are extra compute on their own (see strategies.cascade).
_EXTRA_RUNGS = frozenset({"think", "search", "tier"})
# Bucket widths escalation series snap to (seconds): a minute to a week.
_WIDTHS = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86_400, 7 * 86_400)
_TARGET_BUCKETS = 24


def escalated(row: Any) -> bool:
    """Whether a served ledger row's plan used more than a direct small-tier answer."""
    plan = row.plan if isinstance(row.plan, dict) else {}
    if row.tier == STRONG_TIER or STRONG_TIER in (plan.get("tiers") or {}):
        return True
    if row.strategy == "cascade":
        ran = plan.get("rungs_run")
        if not isinstance(ran, list):
            return False  # an older row: only a strong-tier call says it climbed
        return len(ran) > 1 or any(kind in _EXTRA_RUNGS for kind in ran)
    return row.strategy not in _SINGLE_ANSWER


def bucket_for_span(span_s: float) -> int:
    """The smallest standard width (a minute to a week) that cuts ``span_s`` into at most
    ~24 buckets: hours for a day of rows, days for a few weeks."""
    for width in _WIDTHS:
        if span_s / width <= _TARGET_BUCKETS:
            return width
    return _WIDTHS[-1]


@dataclass(frozen=True)
class EscalationBucket:
    """One class's served requests in ``[start, start + width)`` and how many escalated."""

    start: float
    requests: int
    escalated: int

    @property
    def share(self) -> float:
        return self.escalated / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "requests": self.requests,
            "escalated": self.escalated,
            "share": self.share,
        }


def escalation_series(
    rows: Iterable[Any], *, bucket_s: float | None = None
) -> tuple[int, dict[str, list[EscalationBucket]]]:
    """``(width, {class: buckets})`` of the served rows: the escalation share per class
    over time, in buckets of ``bucket_s`` seconds (default: :func:`bucket_for_span` of
    the rows' span), aligned to multiples of the width; buckets without requests of a
    class are left out of its list."""
    served = [r for r in rows if not is_shadow(r)]
    if bucket_s is not None and not (math.isfinite(bucket_s) and bucket_s > 0):
        raise ValueError(
            f"the escalation bucket must be a positive number of seconds, got {bucket_s}"
        )
    if bucket_s is None:
        span = max((r.at for r in served), default=0.0) - min((r.at for r in served), default=0.0)
        width = bucket_for_span(span)
    else:
        width = max(round(bucket_s), 1)
    counts: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for r in served:
        cell = counts[r.task_class][math.floor(r.at / width)]
        cell[0] += 1
        cell[1] += escalated(r)
    series = {
        name: [
            EscalationBucket(start=float(index * width), requests=n, escalated=up)
            for index, (n, up) in sorted(by_bucket.items())
        ]
        for name, by_bucket in sorted(counts.items())
    }
    return width, series
