"""Safe retraining of the routing policy from the ledger: fit, compare, promote, roll back.

``ponder route retrain`` turns graded ledger rows (a ``verdict`` from a verifier or
``POST /v1/feedback``, or the ``verification`` the gateway recorded in the row's
features, ``pass``/``fail``) into per-class evidence for each candidate plan of
:data:`ponder.router.calibrate.CANDIDATE_PLANS`. Shadow rows (``shadow_of`` in their
features: the counterfactual plan run for a sampled request) count like any other
graded row and give the same request's outcome under a second plan.

The candidate policy is the serving one with each class that has enough evidence
re-picked: the most accurate plan on the train rows, ties to the cheaper. Both are then
scored on held-out requests (a stable hash of the request id, shadows go with their
original): per class, the held-out accuracy and mean cost of the plan each policy picks,
weighted by the class's share of held-out requests; and the ROC AUC of each policy's
"extra compute pays" score (its accuracy gain of the chosen plan over ``direct``) on the
held-out requests that were answered both directly and with more compute. Only a
candidate that is more accurate, or as accurate and cheaper, is promoted.

Promotion writes ``<dir>/policy.json`` atomically (a :class:`~ponder.router.policy.Router`
built with ``[router.retrain] dir`` re-reads it within ``reload_seconds``: no restart),
moves the previous serving policy to ``<dir>/history/`` for ``ponder route rollback``, and
writes ``<dir>/reports/<stamp>.json`` and ``.md`` whether or not it promoted.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import tempfile
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ponder.router.calibrate import CANDIDATE_PLANS, STRONG_TIER, load_default_policy, needs_strong

__all__ = [
    "LIVE_POLICY",
    "Example",
    "RetrainResult",
    "examples_from_rows",
    "fit_candidate",
    "plan_name",
    "parse_duration",
    "policy_score",
    "retrain",
    "retrain_every",
    "rollback",
    "row_plan",
    "row_verdict",
    "serving_policy",
]

logger = logging.getLogger(__name__)

LIVE_POLICY = "policy.json"
_SHIPPED_MARK = ".shipped"  # a history entry meaning "no promoted file: the shipped policy"
# Accuracy differences below this are ties (then the cheaper policy wins).
_TIE = 1e-9


@dataclass(frozen=True)
class Example:
    """One graded answer: request (or the original request of a shadow), class, plan."""

    request: str
    task_class: str
    plan: str
    correct: bool
    cost_usd: float
    shadow: bool = False


def plan_name(strategy: str, tier: str | None, params: Mapping[str, Any] | None) -> str | None:
    """The candidate plan a logged run corresponds to, or None when it is none of them."""
    rungs = list((params or {}).get("rungs", ()))
    for name, spec in CANDIDATE_PLANS.items():
        if spec["strategy"] != strategy:
            continue
        if (spec.get("tier") == STRONG_TIER) != (tier == STRONG_TIER):
            continue
        if strategy == "cascade" and list(spec["params"]["rungs"]) != rungs:
            continue
        return name
    return None


def row_plan(row: Any) -> str | None:
    """The candidate plan a ledger row ran (``features.plan_name`` when recorded), or None."""
    named = (row.features or {}).get("plan_name")
    if named:
        return str(named)
    params = row.plan.get("params") if isinstance(row.plan, dict) else None
    return plan_name(row.strategy, row.tier, params)


def row_verdict(row: Any) -> bool | None:
    """A ledger row's grade: its verdict, else the gateway's recorded verification; or None."""
    if row.verdict in ("correct", "incorrect"):
        return bool(row.verdict == "correct")
    checked = ((row.features or {}).get("verification") or {}).get("verdict")
    if checked in ("pass", "fail"):
        return bool(checked == "pass")
    return None


def examples_from_rows(rows: Iterable[Any]) -> tuple[list[Example], dict[str, int]]:
    """Graded examples of ledger rows, and how many rows were skipped and why."""
    out: list[Example] = []
    skipped: dict[str, int] = defaultdict(int)
    for row in rows:
        if row.status != "ok":
            skipped["not ok"] += 1
            continue
        correct = row_verdict(row)
        if correct is None:
            skipped["ungraded"] += 1
            continue
        features = row.features or {}
        name = row_plan(row)
        if name not in CANDIDATE_PLANS:
            skipped["not a candidate plan"] += 1
            continue
        shadow_of = features.get("shadow_of")
        out.append(
            Example(
                request=str(shadow_of or row.id),
                task_class=row.task_class,
                plan=str(name),
                correct=correct,
                cost_usd=row.cost_micro / 1e6,
                shadow=shadow_of is not None,
            )
        )
    return out, dict(skipped)


def _held_out(request: str, share: float) -> bool:
    return (zlib.crc32(request.encode()) % 10_000) / 10_000 < share


def _evidence(examples: Sequence[Example]) -> dict[str, dict[str, dict[str, Any]]]:
    """{class: {plan: {rows, accuracy, cost_usd (mean)}}}."""
    groups: dict[str, dict[str, list[Example]]] = defaultdict(lambda: defaultdict(list))
    for e in examples:
        groups[e.task_class][e.plan].append(e)
    return {
        c: {
            p: {
                "rows": len(rows),
                "accuracy": sum(e.correct for e in rows) / len(rows),
                "cost_usd": sum(e.cost_usd for e in rows) / len(rows),
            }
            for p, rows in plans.items()
        }
        for c, plans in groups.items()
    }


def serving_policy(directory: str | Path | None) -> dict[str, Any]:
    """The promoted policy in ``directory`` when there is one, else the shipped one."""
    if directory is not None and (Path(directory) / LIVE_POLICY).is_file():
        return load_default_policy(Path(directory) / LIVE_POLICY)
    return load_default_policy()


def _form(tiers: Sequence[str] | None) -> str:
    return "two_tier" if tiers and STRONG_TIER in tiers else "single_tier"


def _chosen(policy: Mapping[str, Any], form: str, task_class: str) -> str:
    body = policy["forms"][form]
    entry = body["classes"].get(task_class) or body.get("default") or {"plan": "direct"}
    return str(entry["plan"])


def fit_candidate(
    examples: Sequence[Example], serving: Mapping[str, Any], *, min_rows: int = 5
) -> dict[str, Any]:
    """The serving policy with every class re-picked where each compared plan has at
    least ``min_rows`` graded rows (most accurate; ties: cheaper), in both forms."""
    evidence = _evidence(examples)
    candidate = copy.deepcopy(dict(serving))
    candidate["fitted_on"] = "ledger"
    candidate["source"] = "ponder route retrain"
    for form, body in candidate["forms"].items():
        for task_class, plans in sorted(evidence.items()):
            usable = {
                p: ev
                for p, ev in plans.items()
                if ev["rows"] >= min_rows
                and (form == "two_tier" or not needs_strong(CANDIDATE_PLANS[p]))
            }
            if len(usable) < 2:
                continue  # one plan's record alone says nothing about the others
            best = max(usable, key=lambda p: (usable[p]["accuracy"], -usable[p]["cost_usd"]))
            body["classes"][task_class] = {
                "plan": best,
                "policy": CANDIDATE_PLANS[best],
                "reason": (
                    f"most accurate on {usable[best]['rows']} graded ledger rows "
                    f"({usable[best]['accuracy']:.3f}; ties: cheaper)"
                ),
                "evidence": {
                    p: {k: round(v, 8) for k, v in ev.items()} for p, ev in usable.items()
                },
            }
    return candidate


def _gain_score(policy: Mapping[str, Any], form: str, task_class: str) -> float:
    """The policy's "extra compute pays" score of a class: the accuracy its chosen plan
    gains over direct by the policy's own evidence (0 when it answers directly)."""
    body = policy["forms"][form]
    entry = body["classes"].get(task_class) or body.get("default") or {}
    plan = entry.get("plan", "direct")
    if plan == "direct":
        return 0.0
    own = entry.get("evidence") or {}
    acc = own.get(plan, {}).get("accuracy")
    base = own.get("direct", {}).get("accuracy")
    if acc is None or base is None:
        return 1.0  # it escalates without saying by how much
    return float(acc) - float(base)


def _auc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    if len(set(labels)) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def policy_score(
    policy: Mapping[str, Any], form: str, heldout: Sequence[Example]
) -> dict[str, Any]:
    """Held-out accuracy and mean cost of the plans ``policy`` picks, per class and overall.

    Classes where the chosen plan has no held-out row are listed in ``unscored``.
    """
    evidence = _evidence(heldout)
    requests: dict[str, set[str]] = defaultdict(set)
    for e in heldout:
        requests[e.task_class].add(e.request)
    per_class: dict[str, Any] = {}
    unscored: list[str] = []
    for task_class, plans in sorted(evidence.items()):
        plan = _chosen(policy, form, task_class)
        if plan not in plans:
            unscored.append(task_class)
            continue
        per_class[task_class] = {"plan": plan, "requests": len(requests[task_class])} | {
            k: round(plans[plan][k], 8) for k in ("rows", "accuracy", "cost_usd")
        }
    weight = sum(c["requests"] for c in per_class.values())
    return {
        "accuracy": sum(c["accuracy"] * c["requests"] for c in per_class.values()) / weight
        if weight
        else None,
        "cost_usd": sum(c["cost_usd"] * c["requests"] for c in per_class.values()) / weight
        if weight
        else None,
        "classes": per_class,
        "unscored": unscored,
    }


def _pays_auc(policy: Mapping[str, Any], form: str, heldout: Sequence[Example]) -> float | None:
    """AUC of the policy's class score for "a heavier plan was right where direct was
    not", on held-out requests answered both ways (an original and its shadow)."""
    by_request: dict[str, list[Example]] = defaultdict(list)
    for e in heldout:
        by_request[e.request].append(e)
    labels, scores = [], []
    for rows in by_request.values():
        direct = [e.correct for e in rows if e.plan == "direct"]
        heavy = [e.correct for e in rows if e.plan != "direct"]
        if direct and heavy:
            labels.append(any(heavy) and not any(direct))
            scores.append(_gain_score(policy, form, rows[0].task_class))
    return _auc(labels, scores)


def _gain_error(serving: Mapping[str, Any], candidate: Mapping[str, Any]) -> float:
    """Standard error of the held-out accuracy difference: from the classes where the
    two policies pick different plans, each plan's accuracy a binomial estimate
    (smoothed, so that 20 of 20 right does not read as certainty)."""
    s_classes, c_classes = serving["classes"], candidate["classes"]
    total = sum(c["requests"] for c in s_classes.values())
    if not total:
        return 0.0
    variance = 0.0
    for name, s in s_classes.items():
        c = c_classes.get(name)
        if c is None or c["plan"] == s["plan"]:
            continue
        w = s["requests"] / total
        for side in (s, c):
            p = (side["accuracy"] * side["rows"] + 1) / (side["rows"] + 2)
            variance += w * w * p * (1 - p) / side["rows"]
    return float(variance**0.5)


@dataclass
class RetrainResult:
    promoted: bool
    reason: str
    report: dict[str, Any]
    paths: dict[str, str] = field(default_factory=dict)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _history(directory: Path) -> list[Path]:
    folder = directory / "history"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _markdown(report: Mapping[str, Any]) -> str:
    lines = [
        f"# Router retrain {report['stamp']}",
        "",
        f"**{'Promoted' if report['promoted'] else 'Not promoted'}**: {report['reason']}",
        "",
        f"Graded ledger rows: {report['rows']['train']} train, {report['rows']['heldout']} held "
        f"out ({report['rows']['shadow']} shadow); skipped: {report['rows']['skipped'] or 'none'}.",
        f"Form scored: `{report['form']}`.",
        "",
        "| policy | held-out accuracy | mean cost (USD) | AUC extra compute pays |",
        "|---|---|---|---|",
    ]
    for name in ("serving", "candidate"):
        s = report[name]
        acc = "n/a" if s["accuracy"] is None else f"{s['accuracy']:.4f}"
        cost = "n/a" if s["cost_usd"] is None else f"{s['cost_usd']:.8f}"
        auc = "n/a" if s["auc"] is None else f"{s['auc']:.3f}"
        lines.append(f"| {name} | {acc} | {cost} | {auc} |")
    lines += ["", "| class | serving plan | candidate plan | serving acc | candidate acc |",
              "|---|---|---|---|---|"]  # fmt: skip
    for c in sorted(set(report["serving"]["classes"]) | set(report["candidate"]["classes"])):
        s, k = report["serving"]["classes"].get(c, {}), report["candidate"]["classes"].get(c, {})
        lines.append(
            f"| {c} | {s.get('plan', '-')} | {k.get('plan', '-')} | "
            f"{s.get('accuracy', '-')} | {k.get('accuracy', '-')} |"
        )
    return "\n".join(lines) + "\n"


def retrain(
    rows: Iterable[Any],
    directory: str | Path,
    *,
    tiers: Sequence[str] | None = None,
    holdout: float = 0.3,
    min_rows: int = 5,
    min_gain: float = 0.0,
    z: float = 1.64,
    dry_run: bool = False,
) -> RetrainResult:
    """Fit a candidate from ledger ``rows``, compare it with the serving policy on
    held-out requests and promote it into ``directory`` only when it is better: more
    accurate by more than ``min_gain`` and ``z`` standard errors of the difference (a
    gain that noise explains is no gain), or as accurate and cheaper."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be between 0 and 1, got {holdout}")
    directory = Path(directory).expanduser()
    examples, skipped = examples_from_rows(rows)
    train = [e for e in examples if not _held_out(e.request, holdout)]
    heldout = [e for e in examples if _held_out(e.request, holdout)]
    form = _form(tiers)
    serving = serving_policy(directory)
    candidate = fit_candidate(train, serving, min_rows=min_rows)
    s_score = policy_score(serving, form, heldout)
    c_score = policy_score(candidate, form, heldout)
    # Score both on the classes both can be scored on.
    common = set(s_score["classes"]) & set(c_score["classes"])
    if common != set(s_score["classes"]) or common != set(c_score["classes"]):
        keep = [e for e in heldout if e.task_class in common]
        s_score, c_score = policy_score(serving, form, keep), policy_score(candidate, form, keep)
    s_score["auc"] = _pays_auc(serving, form, heldout)
    c_score["auc"] = _pays_auc(candidate, form, heldout)
    noise = z * _gain_error(s_score, c_score)
    if s_score["accuracy"] is None or c_score["accuracy"] is None:
        promoted, reason = False, "no held-out rows on which both policies' plans were graded"
    elif c_score["accuracy"] > s_score["accuracy"] + max(min_gain, noise) + _TIE:
        promoted = True
        reason = (
            f"candidate more accurate on held-out: {c_score['accuracy']:.4f} vs "
            f"{s_score['accuracy']:.4f}"
        )
    elif (
        abs(c_score["accuracy"] - s_score["accuracy"]) <= _TIE
        and c_score["cost_usd"] < s_score["cost_usd"] - _TIE
    ):
        promoted = True
        reason = (
            f"candidate as accurate ({c_score['accuracy']:.4f}) and cheaper: "
            f"{c_score['cost_usd']:.8f} vs {s_score['cost_usd']:.8f} USD per request"
        )
    else:
        promoted = False
        reason = (
            f"candidate not better on held-out: accuracy {c_score['accuracy']:.4f} vs "
            f"{s_score['accuracy']:.4f} (a gain must exceed {max(min_gain, noise):.4f}: "
            f"min_gain, or {z} standard errors), cost {c_score['cost_usd']:.8f} vs "
            f"{s_score['cost_usd']:.8f} USD per request"
        )
    now_ns = time.time_ns()  # one instant: history/ sorts by these names
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now_ns // 10**9)) + f"-{now_ns % 10**9:09d}"
    report: dict[str, Any] = {
        "stamp": stamp,
        "promoted": promoted and not dry_run,
        "reason": reason + (" (dry run: nothing written)" if dry_run and promoted else ""),
        "form": form,
        "rows": {
            "train": len(train),
            "heldout": len(heldout),
            "shadow": sum(e.shadow for e in examples),
            "skipped": skipped,
        },
        "gain_needed": round(max(min_gain, noise), 6),
        "serving": s_score,
        "candidate": c_score,
        "candidate_plans": {c: e["plan"] for c, e in candidate["forms"][form]["classes"].items()},
    }
    result = RetrainResult(promoted=report["promoted"], reason=report["reason"], report=report)
    if dry_run:
        return result
    if promoted:
        live = directory / LIVE_POLICY
        previous = directory / "history" / f"{stamp}.json"
        if live.is_file():
            _atomic_write(previous, live.read_text())
        else:
            previous = previous.with_suffix(_SHIPPED_MARK)
            _atomic_write(previous, "")
        candidate["promoted_at"] = stamp
        _atomic_write(live, json.dumps(candidate, indent=1) + "\n")
        result.paths |= {"policy": str(live), "previous": str(previous)}
    reports = directory / "reports"
    _atomic_write(reports / f"{stamp}.json", json.dumps(report, indent=1) + "\n")
    _atomic_write(reports / f"{stamp}.md", _markdown(report))
    result.paths |= {"report_json": str(reports / f"{stamp}.json"),
                     "report_md": str(reports / f"{stamp}.md")}  # fmt: skip
    return result


def rollback(directory: str | Path) -> str:
    """Restore the policy that the last promotion replaced; returns what now serves."""
    directory = Path(directory).expanduser()
    history = _history(directory)
    if not history:
        raise ValueError(f"nothing to roll back in {directory}: no earlier policy in history/")
    last = history[-1]
    live = directory / LIVE_POLICY
    if last.suffix == _SHIPPED_MARK:
        live.unlink(missing_ok=True)
        last.unlink()
        return "the shipped default policy"
    _atomic_write(live, last.read_text())
    last.unlink()
    return f"the policy promoted before ({last.stem})"


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds of ``"30s"``, ``"15m"``, ``"6h"``, ``"1d"``."""
    value, unit = text[:-1], text[-1:]
    if not value.isdigit() or unit not in _UNITS or int(value) == 0:
        raise ValueError(f"not a duration: {text!r}; use a count and s, m, h or d, e.g. '1d'")
    return int(value) * _UNITS[unit]


async def retrain_every(
    interval_s: float,
    rows: Callable[[float], Sequence[Any]],
    directory: str | Path,
    *,
    window_s: float,
    tiers: Sequence[str] | None = None,
    holdout: float = 0.3,
    min_rows: int = 5,
) -> None:
    """Retrain from ``rows(since)`` (the last ``window_s``) every ``interval_s``, forever.

    Runs in a worker thread (the ledger read and the fit are blocking); a failed round
    is logged and the next one still runs.
    """
    while True:
        await asyncio.sleep(interval_s)
        try:
            batch = await asyncio.to_thread(rows, time.time() - window_s)
            result = await asyncio.to_thread(
                retrain, batch, directory, tiers=tiers, holdout=holdout, min_rows=min_rows
            )
            logger.info("scheduled router retrain: %s", result.reason)
        except Exception:  # noqa: BLE001  # one bad round must not stop the schedule
            logger.exception("scheduled router retrain failed")
