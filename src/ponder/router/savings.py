"""What routing saved: served spend against "always run plan X", from the shadow sample.

``[router.shadow]`` runs a counterfactual candidate plan (``features.shadow_plan`` of the
shadow row, ``features.shadow_of`` its link to the served request) on a uniform random
sample of the verifiable requests that did not already run that plan. For one task
class and one counterfactual plan ``X``, the served rows of the window split in two:

- those that already ran ``X``: under "always ``X``" they cost what they cost;
- the rest, ``B``: a paired ratio estimator says they would have cost ``R * cost(B)``,
  with ``R = sum(cost of the shadow) / sum(cost of its original)`` over the pairs.

Counterfactual spend = ``cost(already X) + R * cost(B)``; savings = counterfactual -
actual; the share saved = savings / counterfactual. The 95% intervals are percentile
intervals of a seeded bootstrap over the pairs (:data:`RESAMPLES` resamples, each
recomputing ``R`` and what follows from it), not the delta method: with the few,
skewed pairs a shadow sample has early on, the bootstrap's intervals are the honest
ones. The quality difference is the mean of ``correct(shadow) - correct(original)``
over the pairs where both are graded (a verdict, or the recorded verification), with
its own bootstrap interval: savings are read next to what they cost in accuracy.

Across classes (:func:`routing_totals`, the number a platform team reports upward):
per plan, the sum of the per-class estimates over the classes that have one, with an
interval from bootstrapping each class's pairs independently (a stratified bootstrap);
the served spend of classes without an estimate is reported beside it, never guessed.

Under :data:`MIN_PAIRS` pairs (graded pairs, for the quality difference) there is no
number, only a note saying so. The sample is of verifiable requests (only they are
shadowed), so ``R`` stands for the whole class on the assumption that the class's other
requests scale the same way. Shadow rows are never served traffic.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ponder.ledger.stats import class_stats, is_shadow
from ponder.router.calibrate import CANDIDATE_PLANS
from ponder.router.escalation import escalation_series
from ponder.router.retrain import row_plan, row_verdict

__all__ = [
    "MIN_PAIRS",
    "RESAMPLES",
    "Interval",
    "Savings",
    "TotalSavings",
    "routing_report",
    "routing_savings",
    "routing_totals",
]

MIN_PAIRS = 5
RESAMPLES = 2000
_LEVEL = 0.95
# Resampled pair indices held in memory at once (the bootstrap goes in chunks).
_CELLS = 2_000_000


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95% bootstrap interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Savings:
    """One class's spend against always running ``plan``; amounts in USD."""

    task_class: str
    plan: str
    requests: int  # served requests of the class in the window
    actual_usd: float  # what they cost
    already_usd: float  # of which requests that ran ``plan`` anyway
    pairs: int  # shadowed requests with a ``plan`` shadow
    graded_pairs: int  # of which both answers are graded
    ratio: Interval | None = None  # R: shadow cost / original cost
    counterfactual_usd: Interval | None = None
    savings_usd: Interval | None = None
    savings_share: Interval | None = None  # of the counterfactual spend
    quality_diff: Interval | None = None  # success of ``plan`` - success served
    note: str | None = None  # why there is no spend estimate
    quality_note: str | None = None  # why there is no quality difference

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in vars(self).items():
            out[name] = value.as_dict() if isinstance(value, Interval) else value
        return out


@dataclass(frozen=True)
class TotalSavings:
    """All classes with an estimate against always running ``plan``; amounts in USD."""

    plan: str
    classes: tuple[str, ...]  # the classes summed (each had enough pairs)
    requests: int  # their served requests
    pairs: int
    actual_usd: float  # what those requests cost
    uncovered_usd: float  # served spend of the classes without an estimate (not summed)
    counterfactual_usd: Interval | None
    savings_usd: Interval | None
    savings_share: Interval | None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in vars(self).items():
            if isinstance(value, Interval):
                value = value.as_dict()
            out[name] = list(value) if isinstance(value, tuple) else value
        return out


# Served rows per class, (class, plan) -> [(original, shadow)], and the plans named.
_Paired = tuple[dict[str, list[Any]], dict[tuple[str, str], list[tuple[Any, Any]]], list[str]]


def _shadow_plan(row: Any) -> str | None:
    named = (row.features or {}).get("shadow_plan")
    if isinstance(named, str) and named in CANDIDATE_PLANS:
        return named
    return row_plan(row)  # rows from before shadow_plan was recorded


def _interval(value: float, draws: np.ndarray) -> Interval | None:
    finite = draws[np.isfinite(draws)]
    if not np.isfinite(value) or finite.size == 0:
        return None
    tail = (1 - _LEVEL) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Interval(value=float(value), low=float(low), high=float(high))


def _resample_sums(
    columns: Sequence[np.ndarray], resamples: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per column, the sum over each of ``resamples`` bootstrap resamples of the rows."""
    n = len(columns[0])
    sums = [np.empty(resamples) for _ in columns]
    chunk = max(1, _CELLS // n)
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        index = rng.integers(0, n, size=(k, n))
        for col, out in zip(columns, sums, strict=True):
            out[start : start + k] = col[index].sum(axis=1)
    return sums


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _counterfactual(
    pairs: Sequence[tuple[Any, Any]],
    already: int,
    actual: int,
    resamples: int,
    rng: np.random.Generator,
) -> tuple[float, np.ndarray, float, np.ndarray]:
    """R and the counterfactual spend (USD), each with its bootstrap draws."""
    orig = np.array([o.cost_micro for o, _ in pairs], dtype=float) / 1e6
    shadow = np.array([s.cost_micro for _, s in pairs], dtype=float) / 1e6
    rest = (actual - already) / 1e6
    r_hat = float(shadow.sum() / orig.sum())
    r_draws = _ratio(*_resample_sums([shadow, orig], resamples, rng))
    return r_hat, r_draws, already / 1e6 + r_hat * rest, already / 1e6 + r_draws * rest


def _no_estimate(pairs: Sequence[tuple[Any, Any]], min_pairs: int) -> str | None:
    """Why these pairs give no spend estimate, or None when they do."""
    if len(pairs) < min_pairs:
        return f"not enough shadow pairs ({len(pairs)} < {min_pairs})"
    if sum(o.cost_micro for o, _ in pairs) <= 0:
        return (
            "the shadowed requests cost nothing (no [pricing] for their models?): "
            "no ratio to scale by"
        )
    return None


def _estimate(
    task_class: str,
    plan: str,
    served: Sequence[Any],
    pairs: Sequence[tuple[Any, Any]],
    *,
    min_pairs: int,
    resamples: int,
    seed: int,
) -> Savings:
    already = sum(r.cost_micro for r in served if row_plan(r) == plan)
    actual = sum(r.cost_micro for r in served)
    graded = [
        (g_orig, g_shadow)
        for g_orig, g_shadow in ((row_verdict(o), row_verdict(s)) for o, s in pairs)
        if g_orig is not None and g_shadow is not None
    ]
    base = Savings(
        task_class=task_class,
        plan=plan,
        requests=len(served),
        actual_usd=actual / 1e6,
        already_usd=already / 1e6,
        pairs=len(pairs),
        graded_pairs=len(graded),
    )
    rng = np.random.default_rng(seed)
    fields: dict[str, Any] = {}
    note = _no_estimate(pairs, min_pairs)
    if note is not None:
        fields["note"] = note
    else:
        r_hat, r_draws, cf_hat, cf_draws = _counterfactual(pairs, already, actual, resamples, rng)
        saved_hat, saved_draws = cf_hat - actual / 1e6, cf_draws - actual / 1e6
        fields["ratio"] = _interval(r_hat, r_draws)
        fields["counterfactual_usd"] = _interval(cf_hat, cf_draws)
        fields["savings_usd"] = _interval(saved_hat, saved_draws)
        if cf_hat > 0:
            fields["savings_share"] = _interval(saved_hat / cf_hat, _ratio(saved_draws, cf_draws))
    if len(graded) < min_pairs:
        fields["quality_note"] = f"not enough graded pairs ({len(graded)} < {min_pairs})"
    else:
        diff = np.array([float(s) - float(o) for o, s in graded])
        (total,) = _resample_sums([diff], resamples, rng)
        fields["quality_diff"] = _interval(float(diff.mean()), total / len(diff))
    return Savings(**{**vars(base), **fields})


def routing_savings(
    rows: Iterable[Any],
    *,
    plans: Sequence[str] = (),
    min_pairs: int = MIN_PAIRS,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> list[Savings]:
    """Per served class and counterfactual plan (``plans``, then every other plan the
    shadow rows ran), what routing saved against always running that plan."""
    return _savings(_pairs(rows, plans), min_pairs=min_pairs, resamples=resamples, seed=seed)


def _savings(paired: _Paired, *, min_pairs: int, resamples: int, seed: int) -> list[Savings]:
    served, pairs, names = paired
    return [
        _estimate(
            task_class,
            plan,
            served[task_class],
            pairs.get((task_class, plan), []),
            min_pairs=min_pairs,
            resamples=resamples,
            seed=seed,
        )
        for task_class in sorted(served)
        for plan in names
    ]


def routing_totals(
    rows: Iterable[Any],
    *,
    plans: Sequence[str] = (),
    min_pairs: int = MIN_PAIRS,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> list[TotalSavings]:
    """Per counterfactual plan, what routing saved over every class with an estimate."""
    return _totals(_pairs(rows, plans), min_pairs=min_pairs, resamples=resamples, seed=seed)


def _totals(paired: _Paired, *, min_pairs: int, resamples: int, seed: int) -> list[TotalSavings]:
    served, pairs, names = paired
    out = []
    for p, plan in enumerate(names):
        covered: list[str] = []
        actual = uncovered = requests = n_pairs = 0
        cf_hat, cf_draws = 0.0, np.zeros(resamples)
        for k, task_class in enumerate(sorted(served)):
            group, found = served[task_class], pairs.get((task_class, plan), [])
            spent = sum(r.cost_micro for r in group)
            if _no_estimate(found, min_pairs) is not None:
                uncovered += spent
                continue
            already = sum(r.cost_micro for r in group if row_plan(r) == plan)
            # Each class resampled on its own stream: the classes' errors are independent.
            rng = np.random.default_rng([seed, p, k])
            _, _, hat, draws = _counterfactual(found, already, spent, resamples, rng)
            cf_hat, cf_draws = cf_hat + hat, cf_draws + draws
            covered.append(task_class)
            actual, requests, n_pairs = actual + spent, requests + len(group), n_pairs + len(found)
        estimate: dict[str, Interval | None] = dict.fromkeys(
            ("counterfactual_usd", "savings_usd", "savings_share")
        )
        if covered:
            saved_hat, saved_draws = cf_hat - actual / 1e6, cf_draws - actual / 1e6
            estimate["counterfactual_usd"] = _interval(cf_hat, cf_draws)
            estimate["savings_usd"] = _interval(saved_hat, saved_draws)
            if cf_hat > 0:
                estimate["savings_share"] = _interval(
                    saved_hat / cf_hat, _ratio(saved_draws, cf_draws)
                )
        out.append(
            TotalSavings(
                plan=plan,
                classes=tuple(covered),
                requests=requests,
                pairs=n_pairs,
                actual_usd=actual / 1e6,
                uncovered_usd=uncovered / 1e6,
                **estimate,
            )
        )
    return out


def _pairs(rows: Iterable[Any], plans: Sequence[str]) -> _Paired:
    """Served rows per class, (class, plan) -> [(original, shadow)], and the plans named."""
    rows = list(rows)
    served: dict[str, list[Any]] = defaultdict(list)
    by_id: dict[str, Any] = {}
    for r in rows:
        if not is_shadow(r):
            served[r.task_class].append(r)
            by_id[r.id] = r
    # (class, plan) -> [(original, shadow)]: only originals served in the window, and
    # only those that did not already run the plan (the sampler never shadows them).
    pairs: dict[tuple[str, str], list[tuple[Any, Any]]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    seen_plans: list[str] = []
    for r in rows:
        if not is_shadow(r):
            continue
        original, plan = by_id.get(str(r.features["shadow_of"])), _shadow_plan(r)
        if original is None or plan is None or row_plan(original) == plan:
            continue
        if (original.id, plan) in seen:
            continue
        seen.add((original.id, plan))
        pairs[(original.task_class, plan)].append((original, r))
        seen_plans.append(plan)
    names = list(dict.fromkeys([*plans, *sorted(set(seen_plans))]))
    return served, pairs, names


def routing_report(
    rows: Iterable[Any],
    *,
    bucket_s: float | None = None,
    plans: Sequence[str] = (),
    min_pairs: int = MIN_PAIRS,
    seed: int = 0,
) -> dict[str, Any]:
    """Per class: :class:`~ponder.ledger.stats.ClassStats`, the escalation share (over
    the window and over time) and :func:`routing_savings`, as JSON-ready dicts."""
    rows = list(rows)
    width, series = escalation_series(rows, bucket_s=bucket_s)
    paired = _pairs(rows, plans)  # once, for the per-class estimates and the totals
    savings: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in _savings(paired, min_pairs=min_pairs, resamples=RESAMPLES, seed=seed):
        savings[s.task_class].append(s.as_dict())
    classes = []
    for stats in class_stats(rows):
        buckets = series.get(stats.task_class, [])
        up = sum(b.escalated for b in buckets)
        classes.append(
            {
                **stats.as_dict(),
                "escalated": up,
                "escalation_share": up / stats.requests if stats.requests else 0.0,
                "escalation": {"bucket_s": width, "buckets": [b.as_dict() for b in buckets]},
                "savings": savings.get(stats.task_class, []),
            }
        )
    totals = _totals(paired, min_pairs=min_pairs, resamples=RESAMPLES, seed=seed)
    return {
        "bucket_s": width,
        "min_pairs": min_pairs,
        "classes": classes,
        "total": [t.as_dict() for t in totals],
    }
