"""The shipped default policy: fitted from recorded results, loaded with no config file.

``ponder route calibrate --from runs/routing/calibration.jsonl --write-policy PATH`` reads
one record per (item, candidate plan) as the routing benchmark's replay writes them
(``task_class``, ``plan``, ``split``, ``correct``, ``cost_usd``, ``generated_tokens``),
keeps the **train** split, and picks per task class the most accurate plan whose cost
stays within the budget plan's cost on that class (ties: the cheaper plan). Two forms are
fitted: ``two_tier`` (the 1.5B tier, named ``strong``, may be used) and ``single_tier``
(the serving model only). Classes with fewer than ``min_items`` train items share one
plan fitted on all of them (``router.default``). Each class keeps its evidence: items,
accuracy, generated tokens and cost of every candidate plan.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "BUDGET_PLAN",
    "CANDIDATE_PLANS",
    "STRONG_TIER",
    "embedded_tier_settings",
    "embedded_tiers",
    "fit_policy",
    "load_default_policy",
    "policy_evidence",
    "policy_form",
    "read_records",
]

STRONG_TIER = "strong"
_VERIFIED = {"strategy": "cascade", "bucket": "use", "latency": "interactive"}


def _cascade(*rungs: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        "signal": "verified",
        "threshold": 1.0,
        "rungs": list(rungs),
        "search_n": 4,
        "search_temperature": 0.7,
        "thinking_budget": 256,
    }
    if "tier" in rungs:
        params |= {"strong_tier": STRONG_TIER, "tier_thinking_budget": 0}
    return {**_VERIFIED, "params": params}


# Every plan a class may get: a [router.classes.<name>] table each. "tier" in a cascade
# and ``tier = "strong"`` need the 1.5B tier (two-tier form only).
CANDIDATE_PLANS: dict[str, dict[str, Any]] = {
    "direct": {"strategy": "direct", "bucket": "avoid"},
    "strong": {"strategy": "direct", "bucket": "avoid", "tier": STRONG_TIER},
    "think": {"strategy": "cot", "bucket": "use", "thinking_budget": 256},
    "search": {
        "strategy": "self_consistency",
        "bucket": "use",
        "params": {"n": 4, "temperature": 0.7},
        "latency": "async",
    },
    "program": _cascade("program"),
    "verified direct>program": _cascade("direct", "program"),
    "verified direct>program>strong": _cascade("direct", "program", "tier"),
    "verified direct>program>search": _cascade("direct", "program", "search"),
    "verified direct>search": _cascade("direct", "search"),
    "verified direct>search>strong": _cascade("direct", "search", "tier"),
    "verified direct>strong": _cascade("direct", "tier"),
}
# The plan whose cost a class may not exceed, per form.
BUDGET_PLAN = {"two_tier": "strong", "single_tier": "strong"}
# Latency-sensitive classes: at most this many times direct's generated tokens.
FAST_CLASSES = ("lookup", "chat")
FAST_TOKEN_FACTOR = 1.2
STRONG_MODEL = "qwen2.5-coder-1.5b-instruct"


def needs_strong(plan: Mapping[str, Any]) -> bool:
    return plan.get("tier") == STRONG_TIER or "tier" in (plan.get("params") or {}).get("rungs", ())


def read_records(path: str | Path) -> list[dict[str, Any]]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _stats(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    return {
        "items": n,
        "accuracy": round(sum(bool(r["correct"]) for r in rows) / n, 4) if n else None,
        "generated_tokens": sum(int(r["generated_tokens"]) for r in rows),
        "cost_usd": round(sum(float(r["cost_usd"]) for r in rows), 8),
    }


def _pick(
    by_plan: Mapping[str, Sequence[Mapping[str, Any]]], form: str, fast: bool = False
) -> tuple[str, dict[str, dict[str, Any]], str]:
    evidence = {name: _stats(rows) for name, rows in by_plan.items() if rows}
    allowed = [
        name
        for name in evidence
        if name in CANDIDATE_PLANS
        and (form == "two_tier" or not needs_strong(CANDIDATE_PLANS[name]))
    ]
    direct_tokens = evidence.get("direct", {}).get("generated_tokens")
    if fast and direct_tokens is not None:
        allowed = [
            n
            for n in allowed
            if evidence[n]["generated_tokens"] <= FAST_TOKEN_FACTOR * direct_tokens
        ]
    budget = evidence.get(BUDGET_PLAN[form], {}).get("cost_usd")
    within = [n for n in allowed if budget is None or evidence[n]["cost_usd"] <= budget + 1e-12]
    pool = within or allowed
    best = max(pool, key=lambda n: (evidence[n]["accuracy"], -evidence[n]["cost_usd"]))
    why = (
        f"most accurate on {evidence[best]['items']} train items "
        f"({evidence[best]['accuracy']:.3f}) at no more than the cost of "
        f"{BUDGET_PLAN[form]!r} (ties: cheaper)"
        + (f", within {FAST_TOKEN_FACTOR}x direct's tokens" if fast else "")
    )
    return best, evidence, why


def fit_policy(
    records: Iterable[Mapping[str, Any]], *, min_items: int = 4, source: str = ""
) -> dict[str, Any]:
    """Fit both forms of the policy on the train records (see the module docstring)."""
    train = [r for r in records if r.get("split") == "train"]
    if not train:
        raise ValueError("no train records to calibrate on (records need split = 'train')")
    by_class: dict[str, dict[str, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    items_of: dict[str, set[str]] = defaultdict(set)
    for r in train:
        by_class[r["task_class"]][r["plan"]].append(r)
        items_of[r["task_class"]].add(r["item_id"])
    small = sorted(c for c in by_class if len(items_of[c]) < min_items)
    pooled: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for c in small:
        for plan, rows in by_class[c].items():
            pooled[plan].extend(rows)
    out: dict[str, Any] = {
        "version": 1,
        "source": source,
        "fitted_on": "train",
        "min_items": min_items,
        "forms": {},
    }
    for form in ("two_tier", "single_tier"):
        classes: dict[str, Any] = {}
        for c in sorted(by_class):
            if c in small:
                continue
            # Only plans recorded for every train item of the class compete.
            full = {p: rows for p, rows in by_class[c].items() if len(rows) == len(items_of[c])}
            best, evidence, why = _pick(full, form, fast=c in FAST_CLASSES)
            classes[c] = {"plan": best, "policy": CANDIDATE_PLANS[best], "reason": why,
                          "evidence": evidence}  # fmt: skip
        default = None
        if pooled:
            n_items = {r["item_id"] for rows in pooled.values() for r in rows}
            full = {p: rows for p, rows in pooled.items() if len(rows) == len(n_items)}
            best, evidence, why = _pick(full, form)
            default = {"plan": best, "policy": CANDIDATE_PLANS[best], "reason": why,
                       "evidence": evidence, "classes": small}  # fmt: skip
        out["forms"][form] = {"classes": classes, "default": default}
    return out


_POLICY_FILE = "default_policy.json"


@cache
def _shipped() -> str:
    return resources.files("ponder.router").joinpath(_POLICY_FILE).read_text()


def load_default_policy(path: str | Path | None = None) -> dict[str, Any]:
    """The shipped policy (package data), or the one at ``path``."""
    text = Path(path).read_text() if path is not None else _shipped()
    data: dict[str, Any] = json.loads(text)
    return data


def policy_form(
    tiers: Sequence[str] | None, policy: Mapping[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """(form name, {class: RouteClassSettings dict, "__default__": ...}) for these tiers.

    The two-tier form applies when a tier named ``strong`` is served; otherwise the
    single-tier form (the serving model only).
    """
    data = policy if policy is not None else load_default_policy()
    form = "two_tier" if tiers and STRONG_TIER in tiers else "single_tier"
    body = data["forms"][form]
    classes = {c: dict(entry["policy"]) for c, entry in body["classes"].items()}
    if body.get("default"):
        classes["__default__"] = dict(body["default"]["policy"])
    return form, classes


def policy_evidence(
    tiers: Sequence[str] | None, policy: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Per class, one line of why the shipped policy chose its plan (for explain)."""
    data = policy if policy is not None else load_default_policy()
    body = data["forms"]["two_tier" if tiers and STRONG_TIER in tiers else "single_tier"]
    entries = dict(body["classes"])
    if body.get("default"):
        entries["__default__"] = body["default"]
    return {c: f"plan {e['plan']!r}: {e['reason']}" for c, e in entries.items()}


def embedded_tiers(cache_dir: str | Path | None = None) -> list[str]:
    """The tiers a no-config gateway serves: ``strong`` when the 1.5B is installed."""
    from ponder.backends.catalog import model_status
    from ponder.config import default_cache_dir

    try:
        status = model_status(STRONG_MODEL, Path(cache_dir or default_cache_dir()))
    except Exception:  # noqa: BLE001  # no catalog entry or no cache: one tier
        return []
    return [STRONG_TIER] if status == "installed" else []


def embedded_tier_settings(model: str, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """``[tiers]`` for a no-config ``serve`` of ``model``: itself as ``small`` and, when the
    1.5B is installed, that as ``strong`` (the two-tier form of the default policy).

    Empty when there is only one model: the gateway then serves ``model`` alone and the
    router applies the single-tier form.
    """
    from ponder.config import TierSettings

    if model == STRONG_MODEL or not embedded_tiers(cache_dir):
        return {}
    return {
        "small": TierSettings(backend="llama_cpp", model=model),
        STRONG_TIER: TierSettings(backend="llama_cpp", model=STRONG_MODEL),
    }
