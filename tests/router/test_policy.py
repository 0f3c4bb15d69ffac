"""The routing policy: validation with clear errors, presets, overrides, thresholds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import ValidationError

from ponder.config import RouteClassSettings, RouterSettings, Settings
from ponder.router.policy import PRESETS, PolicyError, Router, select_threshold
from ponder.strategies import available_strategies

WORD_PROBLEM = (
    "A baker makes 24 rolls each hour. After 5 hours she sells 70 rolls, then bakes 3 more "
    "batches of 12. How many rolls does she have left?"
)


@dataclass
class Who:
    key_id: str | None = None
    team: str | None = None


def router(**settings: object) -> Router:
    return Router(RouterSettings.model_validate(settings), strategies=available_strategies())


def test_without_the_shipped_policy_nothing_thinks() -> None:
    r = router(policy="none")
    for text in ("What is 1+9900?", WORD_PROBLEM, "Write a Python function that sorts a list."):
        plan = r.plan_text(text)
        assert (plan.strategy, plan.thinking_budget, plan.source) == ("direct", 0, "router.default")


def test_maybe_bucket_thinks_only_above_the_threshold() -> None:
    math = {"bucket": "maybe", "strategy": "cot", "thinking_budget": 512}
    low, high = (
        router(classes={"math": math}, threshold=0.01),
        router(classes={"math": math}, threshold=0.99),
    )
    assert (low.plan_text(WORD_PROBLEM).strategy, low.plan_text(WORD_PROBLEM).thinking_budget) == (
        "cot",
        512,
    )
    plan = high.plan_text(WORD_PROBLEM)
    assert (plan.strategy, plan.thinking_budget) == ("direct", 0)
    assert any("< threshold" in reason for reason in plan.reasons)


def test_named_preset_applies_without_configuration() -> None:
    r = router()
    plan = r.plan_text("Write a function to parse dates", preset="codegen")
    assert plan.task_class == "codegen"
    assert (plan.strategy, plan.thinking_budget) == (PRESETS["codegen"].strategy, 4000)
    # Inferred, the same class stays at budget 0 unless presets are opted into.
    assert r.plan_text("Write a Python function that parses dates.").thinking_budget == 0
    opted = router(infer_presets=True).plan_text("Write a Python function that parses dates.")
    assert opted.thinking_budget == 4000


def test_interactive_requests_never_plan_search() -> None:
    r = router(
        classes={"extraction": {"bucket": "use", "strategy": "best_of_n", "params": {"n": 4}}}
    )
    text = "Extract the name and age fields from this text as JSON: Bob is 42."
    assert r.plan_text(text).strategy == "best_of_n"  # async: search is fine
    streamed = r.plan_text(text, stream=True)
    assert (streamed.latency, streamed.strategy) == ("interactive", "direct")
    assert any("search would block" in reason for reason in streamed.reasons)


def test_key_and_team_overrides_win() -> None:
    cot = {"bucket": "use", "strategy": "cot", "thinking_budget": 64}
    r = router(
        teams={"research": {"math": cot}}, keys={"k1": {"math": {**cot, "thinking_budget": 8}}}
    )
    assert r.plan_text(WORD_PROBLEM).thinking_budget == 0
    assert r.plan_text(WORD_PROBLEM, caller=Who(team="research")).thinking_budget == 64
    assert r.plan_text(WORD_PROBLEM, caller=Who(key_id="k1", team="research")).thinking_budget == 8


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"classes": {"math": {"strategy": "cott"}}}, "router.classes.math.strategy: unknown strategy 'cott'"),
        ({"classes": {"x": {"bucket": "use", "strategy": "direct", "thinking_budget": 9}}},
         "router.classes.x.thinking_budget: strategy 'direct' takes no thinking budget"),
        ({"classes": {"x": {"strategy": "best_of_n", "latency": "interactive"}}},
         "router.classes.x: an interactive class cannot use the search strategy 'best_of_n'"),
        ({"classes": {"x": {"bucket": "avoid", "strategy": "cot", "thinking_budget": 10}}},
         "bucket 'avoid' means no extended thinking"),
        ({"classes": {"x": {"bucket": "use", "strategy": "cot", "thinking_budget": 900, "max_spend": 100}}},
         "thinking_budget 900 exceeds max_spend 100"),
        ({"teams": {"t": {"nonsense": {}}}}, "router.teams.t.nonsense: unknown task class 'nonsense'"),
        ({"default": {"tier": "huge"}}, "router.default.tier: no tier named 'huge'"),
    ],
)  # fmt: skip
def test_invalid_policies_say_where_and_what(settings: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Router(
            RouterSettings.model_validate(settings),
            strategies=available_strategies(),
            tiers=["small"],
        )


def test_every_problem_is_listed_at_once() -> None:
    bad = {"classes": {"a": {"strategy": "nope"}, "b": {"strategy": "nada"}}}
    with pytest.raises(PolicyError) as info:
        router(**bad)
    assert "router.classes.a.strategy" in str(info.value) and "router.classes.b.strategy" in str(
        info.value
    )


def test_schema_errors_from_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "ponder.toml"
    toml.write_text('[router.classes.math]\nbucket = "sometimes"\n')
    monkeypatch.setenv("PONDER_CONFIG", str(toml))
    with pytest.raises(ValidationError, match="router.classes.math.bucket"):
        Settings()
    toml.write_text(
        '[router.classes.math]\nbucket = "maybe"\nstrategy = "cot"\nthinking_budget = 300\n'
    )
    settings = Settings()
    assert settings.router.classes["math"] == RouteClassSettings(
        bucket="maybe", strategy="cot", thinking_budget=300
    )


def test_unknown_preset_is_a_clear_error() -> None:
    with pytest.raises(PolicyError, match="unknown preset 'fast'; choose one of: autocomplete"):
        router().plan_text("hi", preset="fast")


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_select_threshold_hits_the_target_share(share: float) -> None:
    confidences = [i / 20 for i in range(20)]
    t = select_threshold(confidences, share)
    assert sum(c < t for c in confidences) == round(share * 20)


def test_select_threshold_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="target_share must be in"):
        select_threshold([0.5], 1.5)
    with pytest.raises(ValueError, match="at least one observed confidence"):
        select_threshold([], 0.5)
