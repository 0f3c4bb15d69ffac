"""Drift: the small tier gets worse on one class. Replaying a recorded pool through the
serving router, with shadow runs of the strong tier sampled, gives the ledger the
evidence; retraining promotes a policy that routes that class up, the router built
before serves it, and accuracy recovers to within 2 points of the oracle policy."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import pytest

from ponder.config import RetrainSettings, RouterSettings, ShadowSettings
from ponder.ledger import LedgerRow, Store
from ponder.router.policy import Router
from ponder.router.retrain import plan_name, retrain
from ponder.router.shadow import ShadowSampler
from ponder.strategies import available_strategies

TIERS = ["small", "strong"]
PROMPTS = {
    "chat": lambda i: f"Write a short poem about the sea number {i}",
    "lookup": lambda i: f"What is the capital of country number {i}?",
    "math": lambda i: f"What is {i + 17}*{i + 23}? Answer with just the number.",
}
COST = {"direct": 30, "strong": 80, "program": 60}
# P(correct) per class and plan, before the drift and after it (chat on the small tier).
BEFORE = {
    "chat": {"direct": 0.95, "strong": 0.96, "program": 0.5},
    "lookup": {"direct": 0.85, "strong": 0.95, "program": 0.5},
    "math": {"direct": 0.6, "strong": 0.7, "program": 0.92},
}
AFTER = {**BEFORE, "chat": {**BEFORE["chat"], "direct": 0.45}}


@pytest.fixture(autouse=True)
def no_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PONDER_CONFIG", str(tmp_path / "none.toml"))


def recorded_pool(accuracy: dict[str, dict[str, float]], items: int, seed: int
                  ) -> list[tuple[str, str, dict[str, bool]]]:  # fmt: skip
    """(class, prompt, {plan: correct}) per item: every plan's recorded outcome."""
    rng = random.Random(seed)
    return [
        (c, PROMPTS[c](i), {p: rng.random() < acc for p, acc in plans.items()})
        for c, plans in accuracy.items()
        for i in range(items)
    ]


def routed_plan(router: Router, prompt: str) -> tuple[str, str]:
    route = router.plan_text(prompt)
    name = plan_name(route.strategy, route.tier, route.params)
    assert name is not None, route.as_dict()
    return route.task_class, name


def replay(router: Router, pool: list, store: Store, sampler: ShadowSampler, tag: str) -> float:
    """Serve every pool item as the router plans it; write its graded row and, when
    sampled, the shadow's. Returns the served accuracy."""
    right = 0
    for n, (_, prompt, outcome) in enumerate(pool):
        task_class, plan = routed_plan(router, prompt)
        rid = f"{tag}-{n}"
        right += outcome[plan]
        store.insert_row(row(rid, task_class, plan, outcome[plan]))
        served = _Served(task_class, plan)
        shadow = sampler.pick(served)
        if shadow is not None:
            store.insert_row(row(f"{rid}-shadow", task_class, shadow, outcome[shadow], rid))
    return right / len(pool)


class _Served:
    """What ShadowSampler.pick reads of a gateway plan."""

    def __init__(self, task_class: str, plan: str) -> None:
        from ponder.router.calibrate import CANDIDATE_PLANS

        spec = CANDIDATE_PLANS[plan]
        self.task_class, self.verifier, self.route = task_class, "recorded", "router"
        self.strategy, self.tier, self.params = (
            spec["strategy"],
            spec.get("tier"),
            spec.get("params", {}),
        )


def row(rid: str, task_class: str, plan: str, correct: bool, shadow_of: str | None = None
        ) -> LedgerRow:  # fmt: skip
    from ponder.router.calibrate import CANDIDATE_PLANS

    spec = CANDIDATE_PLANS[plan]
    features = {"v": 1} | ({"shadow_of": shadow_of} if shadow_of else {})
    return LedgerRow(
        id=rid, task_class=task_class, strategy=spec["strategy"],
        plan={"params": spec.get("params", {})}, status="ok", http_status=200,
        tier=spec.get("tier") or "small", cost_micro=COST[plan],
        verdict="correct" if correct else "incorrect", features=features,
    )  # fmt: skip


def oracle_accuracy(pool: list) -> float:
    """The best fixed class -> plan policy in hindsight on the pool."""
    by_class: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for c, _, outcome in pool:
        for p, ok in outcome.items():
            by_class[c][p].append(ok)
    best = sum(max(sum(v) for v in plans.values()) for plans in by_class.values())
    return best / len(pool)


def served_accuracy(router: Router, pool: list) -> float:
    return sum(outcome[routed_plan(router, prompt)[1]] for _, prompt, outcome in pool) / len(pool)


def test_retraining_on_shadow_data_recovers_from_drift(tmp_path: Path) -> None:
    directory = tmp_path / "policy"
    settings = RouterSettings(
        retrain=RetrainSettings(dir=str(directory), reload_seconds=0),
        shadow=ShadowSettings(rate=0.3),
    )
    router = Router(settings, strategies=available_strategies(), tiers=TIERS)
    sampler = ShadowSampler(settings.shadow, tiers=TIERS, rng=random.Random(3))
    assert sampler.plan == "strong"
    assert routed_plan(router, PROMPTS["chat"](1)) == ("chat", "direct")
    store = Store(f"sqlite:///{tmp_path / 'ledger.db'}")

    # Before the drift the shipped policy serves well: nothing to promote.
    before = recorded_pool(BEFORE, items=150, seed=1)
    replay(router, before, store, sampler, "before")
    kept = retrain(store.rows(), directory, tiers=TIERS)
    assert not kept.promoted, kept.reason

    # The small tier gets worse on chat; the served accuracy drops with it.
    drifted = recorded_pool(AFTER, items=150, seed=2)
    oracle = oracle_accuracy(drifted)
    served = replay(router, drifted, store, sampler, "after")
    assert oracle - served > 0.1, (oracle, served)

    # Retraining on the rows since the drift: chat goes to the strong tier.
    since = [r for r in store.rows() if r.id.startswith("after")]
    result = retrain(since, directory, tiers=TIERS)
    assert result.promoted, result.reason
    assert result.report["candidate_plans"]["chat"] == "strong"
    assert result.report["serving"]["classes"]["chat"]["plan"] == "direct"
    # The same router instance, no restart, now routes chat up ...
    assert routed_plan(router, PROMPTS["chat"](1)) == ("chat", "strong")
    # ... and recovers to within 2 points of the oracle on a fresh drifted pool.
    fresh = recorded_pool(AFTER, items=150, seed=4)
    recovered, best = served_accuracy(router, fresh), oracle_accuracy(fresh)
    assert recovered >= best - 0.02, (recovered, best)
    assert recovered > served + 0.1
