"""What routing saved: the paired ratio estimator over shadow rows, and escalation share.

Hand-built ledger rows whose answer is known: shadows that cost exactly twice their
original make the always-plan spend exactly twice the served spend."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ponder.config import ShadowSettings, load_settings
from ponder.ledger import LedgerRow
from ponder.ledger.stats import class_stats
from ponder.router.escalation import bucket_for_span, escalated, escalation_series
from ponder.router.savings import routing_report, routing_savings, routing_totals
from ponder.router.shadow import ShadowSampler

T0 = 1_700_000_000.0


def served(
    rid: str,
    cost: int,
    *,
    task_class: str = "math",
    strategy: str = "direct",
    tier: str = "small",
    verdict: str | None = None,
    at: float = T0,
    plan: dict[str, Any] | None = None,
) -> LedgerRow:
    return LedgerRow(
        id=rid, task_class=task_class, strategy=strategy, plan=plan or {"params": {}},
        status="ok", http_status=200, tier=tier, cost_micro=cost, verdict=verdict, at=at,
        features={"v": 1},
    )  # fmt: skip


def shadow(
    original: LedgerRow, cost: int, plan: str = "strong", verdict: str | None = None
) -> LedgerRow:
    strategy, tier = {"strong": ("direct", "strong"), "search": ("self_consistency", "small")}[plan]
    return LedgerRow(
        id=f"{original.id}-shadow", task_class=original.task_class, strategy=strategy,
        plan={"params": {}}, status="ok", http_status=200, tier=tier, cost_micro=cost,
        verdict=verdict, at=original.at + 1, team="ponder-shadow",
        features={"v": 1, "shadow_of": original.id, "shadow_plan": plan},
    )  # fmt: skip


def one(rows: list[LedgerRow], plan: str, task_class: str = "math", **kw: Any) -> Any:
    (found,) = [
        s for s in routing_savings(rows, **kw) if s.plan == plan and s.task_class == task_class
    ]
    return found


def test_shadows_that_cost_twice_as_much_double_the_counterfactual_spend() -> None:
    rng = random.Random(1)
    rows: list[LedgerRow] = []
    for i in range(40):
        original = served(f"r{i}", rng.randint(500, 5000))
        rows.append(original)
        if i % 4 == 0:  # 10 shadowed, each costing exactly twice its original
            rows.append(shadow(original, 2 * original.cost_micro))
    actual = sum(r.cost_micro for r in rows if "shadow" not in r.id) / 1e6
    s = one(rows, "strong")
    assert (s.requests, s.pairs, s.note) == (40, 10, None)
    assert s.actual_usd == pytest.approx(actual)
    assert s.ratio.value == pytest.approx(2.0)
    cf = s.counterfactual_usd
    assert cf.value == pytest.approx(2 * actual)
    # Every resample of exact 2x pairs says 2x: the interval is that point.
    assert cf.low == pytest.approx(2 * actual) and cf.high == pytest.approx(2 * actual)
    assert s.savings_usd.value == pytest.approx(actual)
    assert s.savings_share.value == pytest.approx(0.5)
    assert s.quality_diff is None and "graded" in s.quality_note


def test_noisy_pairs_give_an_interval_around_the_estimate_that_narrows_with_more_pairs() -> None:
    def ledger(pairs: int, seed: int) -> list[LedgerRow]:
        rng = random.Random(seed)
        rows = []
        for i in range(400):
            original = served(f"r{i}", rng.randint(1000, 3000))
            rows.append(original)
            if i < pairs:
                rows.append(shadow(original, round(original.cost_micro * rng.uniform(1.5, 2.5))))
        return rows

    small, large = one(ledger(10, 2), "strong"), one(ledger(200, 2), "strong")
    for s in (small, large):
        cf = s.counterfactual_usd
        assert cf.low < cf.value < cf.high
        assert cf.low < 2 * s.actual_usd < cf.high  # the true ratio is 2
    width = lambda s: s.counterfactual_usd.high - s.counterfactual_usd.low  # noqa: E731
    assert width(large) < width(small) / 2
    # Seeded: the same rows give the same interval.
    assert one(ledger(10, 2), "strong").counterfactual_usd == small.counterfactual_usd


def test_requests_that_already_ran_the_plan_count_at_their_own_cost() -> None:
    rows: list[LedgerRow] = []
    for i in range(10):
        original = served(f"r{i}", 1000)
        rows += [original, shadow(original, 3000)]
    rows.append(served("already-strong", 7000, tier="strong"))  # ran "strong" itself
    s = one(rows, "strong")
    assert s.already_usd == pytest.approx(0.007)
    assert s.counterfactual_usd.value == pytest.approx(0.007 + 3 * 0.010)
    assert s.savings_usd.value == pytest.approx(0.037 - 0.017)


def test_too_few_pairs_give_no_number() -> None:
    rows: list[LedgerRow] = []
    for i in range(20):
        original = served(f"r{i}", 1000)
        rows.append(original)
        if i < 4:
            rows.append(shadow(original, 2000))
    s = one(rows, "strong")
    assert s.pairs == 4 and s.note == "not enough shadow pairs (4 < 5)"
    assert s.counterfactual_usd is None and s.savings_usd is None and s.ratio is None
    assert one(rows, "strong", min_pairs=4).counterfactual_usd.value == pytest.approx(0.040)
    # A plan asked for but never shadowed: a row that says so.
    none = one(rows, "search", plans=["search"])
    assert none.pairs == 0 and none.note == "not enough shadow pairs (0 < 5)"


def test_shadow_rows_are_never_served_traffic() -> None:
    rows: list[LedgerRow] = []
    for i in range(6):
        original = served(f"r{i}", 1000, strategy="cot")
        rows += [original, shadow(original, 50_000)]
    s = one(rows, "strong")
    assert s.requests == 6 and s.actual_usd == pytest.approx(0.006)
    (stats,) = class_stats(rows)
    assert stats.requests == 6 and stats.cost_usd == pytest.approx(0.006)
    _, series = escalation_series(rows, bucket_s=3600)
    assert sum(b.requests for b in series["math"]) == 6
    report = routing_report(rows)
    (math,) = report["classes"]
    assert math["requests"] == 6 and math["escalated"] == 6


def test_pairs_need_their_original_in_the_window_and_a_known_plan() -> None:
    rows: list[LedgerRow] = []
    for i in range(5):
        original = served(f"r{i}", 1000)
        rows += [original, shadow(original, 2000, plan="search")]
    # An older shadow row without shadow_plan: its plan is read off strategy and tier.
    del rows[-1].features["shadow_plan"]  # type: ignore[index]
    assert one(rows, "search").pairs == 5
    # A shadow whose original is outside the window (not in the rows) pairs with nothing.
    assert one(rows[1:], "search").pairs == 4


def test_quality_difference_of_graded_pairs() -> None:
    rows: list[LedgerRow] = []
    for i in range(20):
        # Served: right on 10 of 20; always-strong: right on 16 of 20.
        original = served(f"r{i}", 1000, verdict="correct" if i % 2 else "incorrect")
        rows += [original, shadow(original, 2000, verdict="correct" if i < 16 else "incorrect")]
    # A pair graded only on one side is no evidence of the difference.
    extra = served("ungraded", 1000, verdict="correct")
    rows += [extra, shadow(extra, 2000)]
    # The gateway's recorded verification grades a row without a verdict.
    graded = served("verified", 1000)
    graded.features = {"v": 1, "verification": {"verdict": "fail"}}
    check = shadow(graded, 2000)
    check.features = {**(check.features or {}), "verification": {"verdict": "pass"}}
    rows += [graded, check]
    s = one(rows, "strong")
    assert (s.pairs, s.graded_pairs) == (22, 21)
    q = s.quality_diff
    assert q.value == pytest.approx((16 + 1 - 10) / 21)
    assert q.low < q.value < q.high and q.low > -0.2 and q.high < 0.8


def total(rows: list[LedgerRow], plan: str, **kw: Any) -> Any:
    (found,) = [t for t in routing_totals(rows, **kw) if t.plan == plan]
    return found


def test_the_all_classes_total_sums_the_classes_with_an_estimate() -> None:
    rng = random.Random(3)
    rows: list[LedgerRow] = []
    spent: dict[str, int] = {"math": 0, "codegen": 0, "extraction": 0}
    for task_class, factor, shadowed in (("math", 2, 10), ("codegen", 3, 8), ("extraction", 5, 2)):
        for i in range(30):
            original = served(f"{task_class}{i}", rng.randint(500, 5000), task_class=task_class)
            rows.append(original)
            spent[task_class] += original.cost_micro
            if i < shadowed:
                rows.append(shadow(original, factor * original.cost_micro))
    t = total(rows, "strong")
    # extraction has 2 pairs (< 5): reported beside the total, never scaled.
    assert t.classes == ("codegen", "math") and t.pairs == 18 and t.requests == 60
    assert t.actual_usd == pytest.approx((spent["math"] + spent["codegen"]) / 1e6)
    assert t.uncovered_usd == pytest.approx(spent["extraction"] / 1e6)
    exact = (2 * spent["math"] + 3 * spent["codegen"]) / 1e6
    cf = t.counterfactual_usd
    assert cf.value == pytest.approx(exact)
    assert cf.low == pytest.approx(exact) and cf.high == pytest.approx(exact)  # exact ratios
    assert t.savings_usd.value == pytest.approx(exact - t.actual_usd)
    assert t.savings_share.value == pytest.approx(1 - t.actual_usd / exact)
    report = routing_report(rows)
    assert report["total"] == [t.as_dict()]


def test_the_total_interval_is_stratified_by_class() -> None:
    rng = random.Random(4)
    rows: list[LedgerRow] = []
    for task_class in ("math", "codegen"):
        for i in range(200):
            original = served(f"{task_class}{i}", rng.randint(1000, 3000), task_class=task_class)
            rows.append(original)
            if i < 20:
                rows.append(shadow(original, round(original.cost_micro * rng.uniform(1.2, 2.8))))
    t = total(rows, "strong")
    parts = [one(rows, "strong", task_class=c) for c in ("math", "codegen")]
    # The point estimate is the sum of the classes'; the interval holds it and, the
    # classes' errors being independent, is narrower than the sum of their widths.
    assert t.counterfactual_usd.value == pytest.approx(
        sum(p.counterfactual_usd.value for p in parts)
    )
    assert t.counterfactual_usd.low < t.counterfactual_usd.value < t.counterfactual_usd.high
    width = t.counterfactual_usd.high - t.counterfactual_usd.low
    widths = [p.counterfactual_usd.high - p.counterfactual_usd.low for p in parts]
    assert max(widths) < width < sum(widths)
    assert total(rows, "strong") == t  # seeded


def test_no_class_with_enough_pairs_gives_no_total() -> None:
    rows = [served(f"r{i}", 1000) for i in range(10)]
    rows.append(shadow(rows[0], 2000))
    t = total(rows, "strong")
    assert t.classes == () and t.counterfactual_usd is None and t.savings_usd is None
    assert t.uncovered_usd == pytest.approx(0.010)


def test_escalation_is_anything_beyond_a_direct_small_tier_answer() -> None:
    def row(strategy: str, tier: str = "small", **plan: Any) -> LedgerRow:
        return served("x", 1, strategy=strategy, tier=tier, plan={"params": {}, **plan})

    assert not escalated(row("direct"))
    assert not escalated(row("program_aided"))
    assert escalated(row("direct", tier="strong"))
    assert escalated(row("cot"))
    assert escalated(row("self_consistency"))
    assert not escalated(row("cascade", rungs_run=["direct"]))
    assert not escalated(row("cascade", rungs_run=["program"]))
    assert escalated(row("cascade", rungs_run=["direct", "program"]))  # it climbed
    assert escalated(row("cascade", rungs_run=["search"]))
    # A cascade that called the strong tier (recorded per tier), with or without rungs_run.
    assert escalated(row("cascade", tiers={"small": {}, "strong": {}}))
    assert not escalated(row("cascade"))


def test_escalation_share_over_time_in_buckets() -> None:
    hour = 3600 * (T0 // 3600)
    rows = [
        served("a", 1, at=hour + 10),
        served("b", 1, at=hour + 20, strategy="cot"),
        served("c", 1, at=hour + 3600 + 5, strategy="cot"),
        served("d", 1, at=hour + 3600 + 6, task_class="chat"),
    ]
    width, series = escalation_series(rows, bucket_s=3600)
    assert width == 3600
    assert [(b.start, b.requests, b.escalated) for b in series["math"]] == [
        (hour, 2, 1),
        (hour + 3600, 1, 1),
    ]
    assert series["math"][0].share == 0.5
    assert [(b.start, b.share) for b in series["chat"]] == [(hour + 3600, 0.0)]
    # The default width comes from the span of the rows.
    assert bucket_for_span(86_400) == 3600
    assert bucket_for_span(14 * 86_400) == 86_400
    assert bucket_for_span(600) == 60
    assert escalation_series(rows)[0] == bucket_for_span(rows[-1].at - rows[0].at)
    with pytest.raises(ValueError, match="positive number of seconds"):
        escalation_series(rows, bucket_s=0)


# ---- [router.shadow] plan = [...]


def test_a_list_of_shadow_plans_samples_each_uniformly() -> None:
    sampler = ShadowSampler(
        ShadowSettings(rate=1.0, plan=["strong", "search"]),
        tiers=["small", "strong"],
        rng=random.Random(5),
    )
    assert sampler.plans == ("strong", "search")
    direct = SimpleNamespace(verifier=object(), route=object(), strategy="direct", tier="small",
                             params={}, task_class="math")  # fmt: skip
    picks = [sampler.pick(direct) for _ in range(2000)]
    assert set(picks) == {"strong", "search"}
    assert 0.45 < picks.count("strong") / len(picks) < 0.55
    # A request that ran one of them: the draw of its own plan is dropped, never redrawn
    # (so each plan's sample stays uniform over the requests that did not run it).
    strong = SimpleNamespace(**{**vars(direct), "tier": "strong"})
    picks = [sampler.pick(strong) for _ in range(2000)]
    assert set(picks) == {None, "search"}
    assert 0.45 < picks.count("search") / len(picks) < 0.55


def test_the_single_plan_form_still_works_and_bad_lists_are_refused() -> None:
    assert ShadowSampler(ShadowSettings(rate=0.1, plan="search")).plans == ("search",)
    # "auto" resolving to a plan also named: listed once.
    both = ShadowSampler(ShadowSettings(rate=0.1, plan=["auto", "strong"]), tiers=["strong"])
    assert both.plans == ("strong",) and both.plan == "strong"
    with pytest.raises(ValueError, match="unknown plan 'biggest'"):
        ShadowSampler(ShadowSettings(rate=0.1, plan=["search", "biggest"]))
    with pytest.raises(ValueError, match="needs a tier named 'strong'"):
        ShadowSampler(ShadowSettings(rate=0.1, plan=["search", "strong"]))
    with pytest.raises(ValueError, match="at least one plan"):
        ShadowSettings(plan=[])
    with pytest.raises(ValueError, match="listed twice"):
        ShadowSettings(plan=["search", "search"])


def test_the_plan_list_comes_from_ponder_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "ponder.toml"
    config.write_text('[router.shadow]\nrate = 0.05\nplan = ["strong", "search"]\n')
    monkeypatch.setenv("PONDER_CONFIG", str(config))
    shadow_settings = load_settings().router.shadow
    assert shadow_settings.plans == ["strong", "search"]
    sampler = ShadowSampler(shadow_settings, tiers=["small", "strong"])
    assert sampler.plans == ("strong", "search")
