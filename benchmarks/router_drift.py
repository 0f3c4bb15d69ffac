"""Drift recovery of ``ponder route retrain`` on the synthetic recorded pool of the drift test.

Per seed: the shipped two-tier policy serves a pool (chat, lookup, math; every plan's
outcome recorded per item) with 30% of requests shadowed on the strong tier; retraining
before the drift must keep the serving policy; then the small tier's chat accuracy
drops from 0.95 to 0.45, the pool is served again, retraining runs on the rows since the
drift, and a fresh drifted pool is served by the same router (live policy). One JSON
line per seed, then a summary with the recovered/oracle ratio. Synthetic outcomes, no
model: this measures the retraining logic, not a model.

    .venv/bin/python benchmarks/router_drift.py --seeds 10
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

# The pool, the replay and the oracle are the drift test's own, so the figures are of
# exactly what tests/router/test_drift.py checks.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "router"))

import test_drift as drift  # noqa: E402

from ponder.config import RetrainSettings, RouterSettings, ShadowSettings  # noqa: E402
from ponder.ledger import Store  # noqa: E402
from ponder.router.policy import Router  # noqa: E402
from ponder.router.retrain import retrain  # noqa: E402
from ponder.router.shadow import ShadowSampler  # noqa: E402
from ponder.strategies import available_strategies  # noqa: E402


def one(seed: int, items: int, rate: float, z: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "policy"
        settings = RouterSettings(
            retrain=RetrainSettings(dir=str(directory), reload_seconds=0),
            shadow=ShadowSettings(rate=rate),
        )
        router = Router(settings, strategies=available_strategies(), tiers=drift.TIERS)
        sampler = ShadowSampler(settings.shadow, tiers=drift.TIERS, rng=random.Random(seed))
        store = Store(f"sqlite:///{Path(tmp) / 'ledger.db'}")
        drift.replay(router, drift.recorded_pool(drift.BEFORE, items, 10 * seed + 1), store,
                     sampler, "before")  # fmt: skip
        before = retrain(store.rows(), directory, tiers=drift.TIERS, z=z)
        drifted = drift.recorded_pool(drift.AFTER, items, 10 * seed + 2)
        served = drift.replay(router, drifted, store, sampler, "after")
        after = retrain(
            [r for r in store.rows() if r.id.startswith("after")], directory, tiers=drift.TIERS, z=z
        )
        fresh = drift.recorded_pool(drift.AFTER, items, 10 * seed + 4)
        recovered, oracle = drift.served_accuracy(router, fresh), drift.oracle_accuracy(fresh)
        store.close()
    return {
        "z": z,
        "seed": seed,
        "promoted_before_drift": before.promoted,
        "served_after_drift": round(served, 4),
        "promoted_after_drift": after.promoted,
        "chat_plan": after.report["candidate_plans"].get("chat"),
        "recovered": round(recovered, 4),
        "oracle": round(oracle, 4),
        "gap_points": round(100 * (oracle - recovered), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--items", type=int, default=150, help="pool items per class")
    ap.add_argument("--rate", type=float, default=0.3, help="shadow rate")
    ap.add_argument("--z", type=float, nargs="+", default=[0.0, 1.64],
                    help="promotion margins compared (standard errors of the held-out gain)")  # fmt: skip
    args = ap.parse_args()
    for z in args.z:
        rows = [one(s, args.items, args.rate, z) for s in range(args.seeds)]
        for r in rows:
            print(json.dumps(r))
        n = len(rows)
        mean = {k: sum(float(r[k]) for r in rows) / n  # type: ignore[arg-type]
                for k in ("served_after_drift", "recovered", "oracle")}  # fmt: skip
        print(json.dumps({
            "summary": True,
            "z": z,
            "seeds": n,
            "false_promotions_before_drift": sum(bool(r["promoted_before_drift"]) for r in rows),
            "promoted_after_drift": sum(bool(r["promoted_after_drift"]) for r in rows),
            "mean_served_after_drift": round(mean["served_after_drift"], 4),
            "mean_recovered": round(mean["recovered"], 4),
            "mean_oracle": round(mean["oracle"], 4),
            "recovered_over_oracle": round(mean["recovered"] / mean["oracle"], 4),
            "max_gap_points": max(float(r["gap_points"]) for r in rows),  # type: ignore[arg-type]
        }))  # fmt: skip


if __name__ == "__main__":
    main()
