"""Per-class summaries of the ledger (``ponder stats``)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ponder.ledger.store import LedgerRow

__all__ = ["ClassStats", "class_stats", "is_shadow", "percentile"]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[rank - 1]


@dataclass(frozen=True)
class ClassStats:
    task_class: str
    requests: int
    succeeded: int
    p50_latency_ms: float
    p95_latency_ms: float
    reasoning_tokens: int
    output_tokens: int
    total_tokens: int
    cost_usd: float
    graded: int
    correct: int

    @property
    def success_rate(self) -> float:
        return self.succeeded / self.requests if self.requests else 0.0

    @property
    def cost_per_correct_usd(self) -> float | None:
        """Only from requests with a verdict; None when none was graded correct."""
        return self.cost_usd / self.correct if self.correct else None

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "success_rate": self.success_rate,
            "cost_per_correct_usd": self.cost_per_correct_usd,
        }


def is_shadow(row: Any) -> bool:
    """A counterfactual run of ``[router.shadow]`` (``features.shadow_of``), not served
    traffic."""
    return bool((row.features or {}).get("shadow_of"))


def class_stats(rows: Iterable[LedgerRow]) -> list[ClassStats]:
    by_class: dict[str, list[LedgerRow]] = defaultdict(list)
    for row in rows:
        if not is_shadow(row):
            by_class[row.task_class].append(row)
    out = []
    for name in sorted(by_class):
        group = by_class[name]
        latencies = [r.latency_ms for r in group]
        out.append(
            ClassStats(
                task_class=name,
                requests=len(group),
                succeeded=sum(r.status == "ok" for r in group),
                p50_latency_ms=percentile(latencies, 50),
                p95_latency_ms=percentile(latencies, 95),
                reasoning_tokens=sum(r.reasoning_tokens for r in group),
                output_tokens=sum(r.output_tokens for r in group),
                total_tokens=sum(
                    r.input_tokens + r.cached_input_tokens + r.reasoning_tokens + r.output_tokens
                    for r in group
                ),
                cost_usd=sum(r.cost_micro for r in group) / 1_000_000,
                graded=sum(r.verdict is not None for r in group),
                correct=sum(r.verdict == "correct" for r in group),
            )
        )
    return out
