"""Metrics over eval records: accuracy with confidence intervals, pass@k, tokens, latency, cost."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ponder.eval.runner import SCALING_PARAM, scale_of

__all__ = [
    "ConfigSummary",
    "common_items",
    "compute_optimal",
    "difficulty_bins",
    "pareto_frontier",
    "pass_at_k",
    "percentile",
    "summarize",
    "wilson_interval",
]


def common_items(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only the records of items that every configuration has a result for."""
    by_config: dict[str, set[str]] = defaultdict(set)
    for r in records:
        by_config[r["config_key"]].add(r["item_id"])
    shared = set.intersection(*by_config.values()) if by_config else set()
    return [r for r in records if r["item_id"] in shared]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021).

    1 - C(n-c, k) / C(n, k), computed as a stable product.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if k < 1 or k > n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (sane at 0% and 100%, unlike the normal one)."""
    if total == 0:
        return (0.0, 1.0)
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class ConfigSummary:
    config: str
    strategy: str
    model: str
    n: int
    budget: int | None
    items: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    input_tokens: float  # means per item
    reasoning_tokens: float
    output_tokens: float
    total_tokens: float
    latency_p50: float
    latency_p95: float
    cost: float
    cost_per_correct: float | None
    pass_at_k: dict[int, float] = field(default_factory=dict)
    by_difficulty: dict[int, float] = field(default_factory=dict)
    # Parameters other than the scaling knob (e.g. "include_greedy=true"): a variant of
    # the strategy with its own scaling curve.
    variant: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _price(record: dict[str, Any], prices: dict[str, dict[str, float]] | None) -> float:
    """Cost of a record from per-1M-token prices for its model (0 when no price is known)."""
    if not prices:
        return 0.0
    p = prices.get(record["model"]) or prices.get("*")
    if not p:
        return 0.0
    u = record["usage"]
    return (
        float(
            u.get("input", 0) * p.get("input", 0.0)
            + u.get("cached_input", 0) * p.get("cached_input", p.get("input", 0.0))
            + u.get("reasoning", 0) * p.get("reasoning", p.get("output", 0.0))
            + u.get("output", 0) * p.get("output", 0.0)
        )
        / 1e6
    )


def _variant(strategy: str, params: dict[str, Any]) -> str:
    knob = SCALING_PARAM.get(strategy)
    shown = {k: v for k, v in sorted(params.items()) if k != knob and k != "temperature"}
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in shown.items())


def summarize(
    records: Iterable[dict[str, Any]],
    prices: dict[str, dict[str, float]] | None = None,
    difficulty: dict[str, int] | None = None,
) -> list[ConfigSummary]:
    """One summary per configuration. ``difficulty`` maps item id -> bin when not given per item."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[r["config_key"]].append(r)
    out = []
    for key, rows in groups.items():
        first = rows[0]["config"]
        correct = sum(1 for r in rows if r["correct"])
        lo, hi = wilson_interval(correct, len(rows))
        usage = [r["usage"] for r in rows]

        def mean(bucket: str, usage: list[dict[str, Any]] = usage) -> float:
            return float(sum(u.get(bucket, 0) for u in usage)) / len(usage)

        cost = sum(_price(r, prices) for r in rows)
        # pass@k needs independent samples: a self-refine run's candidates are
        # revisions of one answer, so its verdicts say nothing about pass@k.
        # Neither are best-of-N candidates that start with the greedy answer.
        independent = SCALING_PARAM.get(first["strategy"]) == "n" and not first.get(
            "params", {}
        ).get("include_greedy")
        verdict_lists = [
            r["sample_verdicts"] for r in rows if independent and r.get("sample_verdicts")
        ]
        pak: dict[int, float] = {}
        if verdict_lists:
            n_min = min(len(v) for v in verdict_lists)
            for k in (1, 2, 4, 8, 16):
                if k <= n_min:
                    pak[k] = sum(pass_at_k(len(v), sum(v), k) for v in verdict_lists) / len(
                        verdict_lists
                    )
        by_level: dict[int, list[bool]] = defaultdict(list)
        for r in rows:
            level = r.get("difficulty")
            if level is None and difficulty:
                level = difficulty.get(r["item_id"])
            if level is not None:
                by_level[int(level)].append(bool(r["correct"]))
        latencies = [r["latency_s"] for r in rows]
        out.append(
            ConfigSummary(
                config=key,
                strategy=first["strategy"],
                model=first["model"],
                n=scale_of(first["strategy"], first.get("params", {})),
                variant=_variant(first["strategy"], first.get("params", {})),
                budget=first.get("budget"),
                items=len(rows),
                correct=correct,
                accuracy=correct / len(rows),
                ci_low=lo,
                ci_high=hi,
                input_tokens=mean("input") + mean("cached_input"),
                reasoning_tokens=mean("reasoning"),
                output_tokens=mean("output"),
                total_tokens=mean("input")
                + mean("cached_input")
                + mean("reasoning")
                + mean("output"),
                latency_p50=percentile(latencies, 50),
                latency_p95=percentile(latencies, 95),
                cost=cost,
                cost_per_correct=(cost / correct) if correct and prices else None,
                pass_at_k=pak,
                by_difficulty={lv: sum(v) / len(v) for lv, v in sorted(by_level.items())},
            )
        )
    return sorted(out, key=lambda s: (s.strategy, s.total_tokens))


def difficulty_bins(
    records: Iterable[dict[str, Any]], baseline_config: str, bins: int = 5
) -> dict[str, int]:
    """Difficulty estimated from the baseline's per-item pass rate, in quantile bins (Snell et al., 2024).

    Bin 1 is easiest (highest pass rate). Items the baseline never saw are left out.
    """
    rates: dict[str, float] = {}
    for r in records:
        if r["config_key"] != baseline_config:
            continue
        verdicts = r.get("sample_verdicts") or [bool(r["correct"])]
        rates[r["item_id"]] = sum(verdicts) / len(verdicts)
    ordered = sorted(rates, key=lambda item: -rates[item])
    return {item: 1 + (i * bins) // max(len(ordered), 1) for i, item in enumerate(ordered)}


def pareto_frontier(summaries: Sequence[ConfigSummary]) -> list[ConfigSummary]:
    """Configurations that no other beats on both accuracy and tokens."""
    frontier: list[ConfigSummary] = []
    for s in sorted(summaries, key=lambda s: (s.total_tokens, -s.accuracy)):
        if not frontier or s.accuracy > frontier[-1].accuracy:
            frontier.append(s)
    return frontier


def compute_optimal(
    records: Iterable[dict[str, Any]], difficulty: dict[str, int], tolerance: float = 0.0
) -> dict[int, dict[str, Any]]:
    """Per difficulty bin: the configuration with the best accuracy, ties broken by fewer tokens.

    ``tolerance`` accepts a cheaper configuration within that many accuracy points of the best.
    """
    per_bin: dict[int, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        level = r.get("difficulty") or difficulty.get(r["item_id"])
        if level is not None:
            per_bin[int(level)][r["config_key"]].append(r)
    out: dict[int, dict[str, Any]] = {}
    for level, configs in sorted(per_bin.items()):
        scored = []
        for key, rows in configs.items():
            acc = sum(1 for r in rows if r["correct"]) / len(rows)
            tokens = sum(
                sum(r["usage"].get(b, 0) for b in ("input", "cached_input", "reasoning", "output"))
                for r in rows
            ) / len(rows)
            scored.append((acc, tokens, key))
        best_acc = max(a for a, _, _ in scored)
        eligible = [s for s in scored if s[0] >= best_acc - tolerance]
        acc, tokens, key = min(eligible, key=lambda s: (s[1], -s[0]))
        out[level] = {"config": key, "accuracy": acc, "tokens": tokens, "best_accuracy": best_acc}
    return out
