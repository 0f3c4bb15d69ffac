"""The shipped default policy: loads with no config, fitted only on train, both forms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ponder.cli import main
from ponder.config import RouteClassSettings, RouterSettings
from ponder.router.calibrate import (
    CANDIDATE_PLANS,
    fit_policy,
    load_default_policy,
    needs_strong,
    policy_form,
)
from ponder.router.policy import Router

WORD = (
    "Sara buys 3 boxes of 12 pencils, gives 7 pencils to Tom and then splits the rest equally "
    "between her 2 sisters. How many pencils does each sister get?"
)


@pytest.fixture(autouse=True)
def no_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PONDER_CONFIG", str(tmp_path / "none.toml"))


def test_shipped_policy_loads_and_validates_in_both_forms() -> None:
    data = load_default_policy()
    assert data["fitted_on"] == "train"
    for tiers in (["strong"], None):
        router = Router.from_settings(RouterSettings(), tiers=tiers or ())
        assert router is not None
        form, classes = policy_form(tiers)
        assert router.policy_form == form
        for name, policy in classes.items():
            RouteClassSettings.model_validate(policy)
            if form == "single_tier":
                assert not needs_strong(policy), name
        # Each fitted class carries its evidence for every plan that competed.
        for entry in data["forms"][form]["classes"].values():
            assert entry["plan"] in entry["evidence"]
            assert {"items", "accuracy", "generated_tokens", "cost_usd"} <= set(
                entry["evidence"][entry["plan"]]
            )


def test_word_problem_is_not_direct_and_lookup_is() -> None:
    for tiers in (["strong"], None):
        router = Router(RouterSettings(), tiers=tiers)
        word = router.plan_text(WORD)
        assert word.task_class == "math" and word.strategy != "direct", word.reasons
        assert word.source.startswith("default policy")
        capital = router.plan_text("What is the capital of France?")
        assert capital.strategy == "direct" and capital.thinking_budget == 0


def test_policy_none_and_user_classes_override_the_shipped_policy() -> None:
    assert Router(RouterSettings(policy="none")).plan_text(WORD).strategy == "direct"
    mine = RouterSettings(classes={"math": RouteClassSettings(strategy="cot", bucket="use",
                                                              thinking_budget=64)})  # fmt: skip
    plan = Router(mine).plan_text(WORD)
    assert (plan.strategy, plan.source) == ("cot", "router.classes.math")


def records(split_acc: dict[str, dict[str, float]]) -> list[dict]:
    """Calibration records: 10 math items per split; plan -> accuracy per split."""
    out = []
    for split, accs in split_acc.items():
        for plan, acc in accs.items():
            for i in range(10):
                out.append({
                    "item_id": f"{split}{i}", "task_class": "math", "plan": plan, "split": split,
                    "correct": i < acc * 10, "generated_tokens": 100,
                    "cost_usd": {"strong": 3e-5, "direct": 1e-5}.get(plan, 2e-5),
                })  # fmt: skip
    return out


def test_fit_uses_train_only_and_respects_the_budget_and_the_form() -> None:
    rows = records({
        "train": {"direct": 0.2, "strong": 0.5, "program": 0.8, "verified direct>program>strong": 0.9},
        # The test split says the opposite: it must not matter.
        "test": {"direct": 0.9, "strong": 0.9, "program": 0.1, "verified direct>program>strong": 0.1},
    })  # fmt: skip
    # The cascade costs more than strong in these records: over budget.
    for r in rows:
        if r["plan"] == "verified direct>program>strong":
            r["cost_usd"] = 5e-5
    policy = fit_policy(rows)
    two, one = policy["forms"]["two_tier"], policy["forms"]["single_tier"]
    assert two["classes"]["math"]["plan"] == "program"
    assert one["classes"]["math"]["plan"] == "program"
    assert two["classes"]["math"]["evidence"]["program"]["accuracy"] == 0.8
    for r in rows:
        if r["plan"] == "verified direct>program>strong":
            r["cost_usd"] = 2.5e-5
    policy = fit_policy(rows)
    assert (
        policy["forms"]["two_tier"]["classes"]["math"]["plan"] == "verified direct>program>strong"
    )
    # The single-tier form never picks a plan that needs the 1.5B.
    assert policy["forms"]["single_tier"]["classes"]["math"]["plan"] == "program"
    with pytest.raises(ValueError, match="train"):
        fit_policy([r for r in rows if r["split"] == "test"])


def test_every_candidate_plan_is_a_valid_class_policy() -> None:
    tiers = ["strong"]
    for name, plan in CANDIDATE_PLANS.items():
        settings = RouterSettings(classes={"math": RouteClassSettings.model_validate(plan)})
        Router.from_settings(settings, tiers=tiers)  # raises PolicyError when invalid
        assert name


def test_route_explain_json_without_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "explain", "--json", WORD]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in (
        "task_class",
        "strategy",
        "params",
        "verifier",
        "tier",
        "thinking_budget",
        "reasons",
    ):
        assert key in data
    assert data["strategy"] != "direct" and data["verifier"]["type"] == "agreement"
    assert main(["route", "explain", "--json", "What is the capital of France?"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["strategy"] == "direct" and data["verifier"] is None


def test_calibrate_write_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "calibration.jsonl"
    rows = records(
        {"train": {"direct": 0.2, "strong": 0.5, "program": 0.8}, "test": {"direct": 1.0}}
    )
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "policy.json"
    assert main(["route", "calibrate", "--from", str(src), "--write-policy", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["forms"]["two_tier"]["classes"]["math"]["plan"] == "program"
    bad = tmp_path / "results.jsonl"
    bad.write_text(json.dumps({"item_id": "a", "correct": True}) + "\n")
    assert main(["route", "calibrate", "--from", str(bad), "--write-policy", str(out)]) == 2
    assert "calibration records" in capsys.readouterr().err
