"""Is "what routing saved" honest? Coverage of its 95% intervals on a synthetic pool.

Per seed: a recorded pool (the drift test's three classes, chat / lookup / math, with
every plan's outcome) where each item also has a cost per plan, skewed and correlated
across plans (an item-size factor times a per-plan noise factor, both log-normal, on a
per-plan base). The shipped two-tier policy serves it; ``[router.shadow]`` samples a
share of the requests (``--rate``) and runs the strong tier, writing both rows to a
real SQLite ledger. ``ponder.router.savings.routing_savings`` then estimates, per class,
the spend of "always strong" from the ledger; the truth is known (every served item's
own recorded strong cost). Reported over the seeds: how often the 95% interval holds
the truth (should be about 0.95), the mean absolute relative error of the point
estimate, and the mean interval width relative to the truth; the same for the total
across classes (``routing_totals``, a stratified bootstrap). Synthetic outcomes, no
model: this measures the estimator, not a model.

    .venv/bin/python benchmarks/routing_savings.py --seeds 200 --rate 0.05,0.3
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "router"))

import test_drift as drift  # noqa: E402  # the pool and the served plans of the drift test

from ponder.config import RouterSettings, ShadowSettings  # noqa: E402
from ponder.ledger import LedgerRow, Store  # noqa: E402
from ponder.router.calibrate import CANDIDATE_PLANS  # noqa: E402
from ponder.router.policy import Router  # noqa: E402
from ponder.router.savings import routing_savings, routing_totals  # noqa: E402
from ponder.router.shadow import ShadowSampler  # noqa: E402
from ponder.strategies import available_strategies  # noqa: E402

BASE_MICRO = {"direct": 30, "strong": 80, "program": 60}


def priced_pool(items: int, seed: int) -> list[tuple[str, str, dict[str, bool], dict[str, int]]]:
    rng = np.random.default_rng(seed)
    pool = []
    for c, prompt, outcome in drift.recorded_pool(drift.BEFORE, items, seed):
        size = rng.lognormal(0.0, 0.6)  # long prompts cost more under every plan
        cost = {
            p: max(1, int(round(b * size * rng.lognormal(0.0, 0.4)))) for p, b in BASE_MICRO.items()
        }
        pool.append((c, prompt, outcome, cost))
    return pool


def row(rid: str, task_class: str, plan: str, correct: bool, cost: int,
        shadow_of: str | None = None) -> LedgerRow:  # fmt: skip
    spec = CANDIDATE_PLANS[plan]
    features = {"v": 1} | ({"shadow_of": shadow_of, "shadow_plan": plan} if shadow_of else {})
    return LedgerRow(
        id=rid, task_class=task_class, strategy=spec["strategy"],
        plan={"params": spec.get("params", {})}, status="ok", http_status=200,
        tier=spec.get("tier") or "small", cost_micro=cost,
        verdict="correct" if correct else "incorrect", features=features,
    )  # fmt: skip


def one(seed: int, items: int, rate: float) -> list[dict[str, object]]:
    settings = RouterSettings(shadow=ShadowSettings(rate=rate))
    router = Router(settings, strategies=available_strategies(), tiers=drift.TIERS)
    sampler = ShadowSampler(settings.shadow, tiers=drift.TIERS, rng=random.Random(seed))
    truth: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'ledger.db'}")
        for n, (_, prompt, outcome, cost) in enumerate(priced_pool(items, seed)):
            task_class, plan = drift.routed_plan(router, prompt)
            rid = f"r{n}"
            store.insert_row(row(rid, task_class, plan, outcome[plan], cost[plan]))
            truth[task_class] = truth.get(task_class, 0.0) + cost["strong"] / 1e6
            shadow = sampler.pick(drift._Served(task_class, plan))
            if shadow is not None:
                store.insert_row(row(f"{rid}-shadow", task_class, shadow, outcome[shadow],
                                     cost[shadow], rid))  # fmt: skip
        rows = store.rows()
        store.close()
    out = []
    for s in routing_savings(rows, plans=["strong"], resamples=1000, seed=seed):
        if s.plan != "strong" or s.counterfactual_usd is None:
            continue
        true = truth[s.task_class]
        ci = s.counterfactual_usd
        out.append({
            "seed": seed, "rate": rate, "class": s.task_class, "pairs": s.pairs,
            "true_usd": true, "estimate_usd": ci.value, "low": ci.low, "high": ci.high,
            "covered": ci.low <= true <= ci.high,
        })  # fmt: skip
    # Across classes: the sum over the classes with an estimate (stratified bootstrap).
    for t in routing_totals(rows, plans=["strong"], resamples=1000, seed=seed):
        if t.counterfactual_usd is None:
            continue
        true, ci = sum(truth[c] for c in t.classes), t.counterfactual_usd
        out.append({
            "seed": seed, "rate": rate, "class": "(all with an estimate)", "pairs": t.pairs,
            "true_usd": true, "estimate_usd": ci.value, "low": ci.low, "high": ci.high,
            "covered": ci.low <= true <= ci.high,
        })  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--items", type=int, default=150, help="items per class")
    ap.add_argument("--rate", default="0.05,0.3", help="shadow rates compared")
    args = ap.parse_args()
    for rate in [float(r) for r in args.rate.split(",")]:
        lines = [line for seed in range(args.seeds) for line in one(seed, args.items, rate)]
        by_class: dict[str, list[dict[str, object]]] = {}
        for line in lines:
            by_class.setdefault(str(line["class"]), []).append(line)
        for c, ls in sorted(by_class.items()):
            true = np.array([float(x["true_usd"]) for x in ls])
            est = np.array([float(x["estimate_usd"]) for x in ls])
            width = np.array([float(x["high"]) - float(x["low"]) for x in ls])
            print(json.dumps({
                "rate": rate, "class": c, "runs": len(ls),
                "mean_pairs": round(float(np.mean([int(x["pairs"]) for x in ls])), 1),
                "coverage_95": round(float(np.mean([bool(x["covered"]) for x in ls])), 3),
                "mean_abs_rel_error": round(float(np.mean(np.abs(est - true) / true)), 4),
                "mean_rel_width": round(float(np.mean(width / true)), 4),
            }), flush=True)  # fmt: skip
        per_class = [x for x in lines if not str(x["class"]).startswith("(")]
        totals = [x for x in lines if str(x["class"]).startswith("(")]
        covered = np.mean([bool(x["covered"]) for x in per_class])
        print(json.dumps({"summary": True, "rate": rate, "runs": len(per_class),
                          "coverage_95": round(float(covered), 3),
                          "total_coverage_95": round(float(np.mean([bool(x["covered"]) for x in totals])), 3)}),
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
