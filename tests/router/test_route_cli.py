"""``ponder route explain | train | calibrate`` on recorded results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ponder.cli import main
from ponder.router.classifier import LearnedClassifier
from ponder.router.features import extract


def write_results(path: Path) -> Path:
    rows = []
    for i in range(16):
        multi = i % 2 == 0
        prompt = (
            f"Tom has {i + 3} boxes with {i + 2} pens each, then gives away {i} pens and buys "
            f"{i + 1} more boxes. How many pens does he have?"
            if multi
            else f"What is {i}+{i + 1}?"
        )
        direct_ok = not multi or i % 4 == 0
        for strategy, ok, tokens, params in [
            ("direct", direct_ok, 20, {}),
            ("cot", True if multi else direct_ok, 200, {"thinking_budget": 256}),
        ]:
            rows.append({
                "config_key": f"m|{strategy}", "config": {"params": params}, "model": "m",
                "strategy": strategy, "item_id": f"q{i}", "correct": ok, "prompt": prompt,
                "usage": {"input": 10, "cached_input": 0, "reasoning": tokens, "output": 10},
                "confidence": (0.9 if direct_ok else 0.3) if strategy == "direct" else None,
            })  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(autouse=True)
def no_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PONDER_CONFIG", str(tmp_path / "none.toml"))


def test_train_writes_a_model_that_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = write_results(tmp_path / "results.jsonl")
    out = tmp_path / "router.joblib"
    assert main(["route", "train", "--from", str(results), "--out", str(out)]) == 0
    assert "trained on 16 items (4 where extra compute paid off)" in capsys.readouterr().out
    model = LearnedClassifier.load(out)
    text = "Tom has 9 boxes with 8 pens each, then gives away 6 pens. How many pens are left?"
    assert model.score(text, extract(text)) > model.score("What is 3+4?", extract("What is 3+4?"))
    # Retraining on the same data gives the same model.
    again = tmp_path / "again.joblib"
    assert main(["route", "train", "--from", str(results), "--out", str(again)]) == 0
    assert LearnedClassifier.load(again).score(text, extract(text)) == model.score(
        text, extract(text)
    )


def test_train_without_usable_records_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"item_id": "a", "strategy": "direct", "correct": True}) + "\n")
    assert main(["route", "train", "--from", str(path), "--out", str(tmp_path / "m")]) == 2
    assert "no training examples" in capsys.readouterr().err


def test_calibrate_reports_thresholds_and_the_compute_optimal_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = write_results(tmp_path / "results.jsonl")
    args = ["route", "calibrate", "--from", str(results), "--target-share", "0.5", "--bins", "2"]
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    # 4 of 16 direct answers were unsure (0.3), 12 sure (0.9): the median is 0.9, so only
    # the unsure ones escalate (ties cannot be split; the realised share is 25%).
    assert data["cascade_threshold"] == 0.9
    optimal = data["compute_optimal"]
    # Easy bin: direct is as good and cheaper; hard bin: thinking wins.
    assert optimal["1"]["config"] == "m|direct"
    assert optimal["2"]["config"] == "m|cot"
    assert 0.0 <= data["router_threshold"] <= 1.0
    # Multi-step items: thinking paid off on 4 of 8 -> use; one-step sums: never -> avoid.
    assert data["buckets"]["math"]["bucket"] == "use"
    assert data["buckets"]["math"]["paid_off"] == 0.5
    assert data["buckets"]["lookup"] == {
        "items": 8,
        "direct_right": 1.0,
        "paid_off": 0.0,
        "beyond_reach": 0.0,
        "bucket": "avoid",
    }


def test_explain_prints_features_class_plan_and_why(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["route", "explain", "What is the dosage of ibuprofen for a patient?", "--json"]) == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["features"]["error_cost"] == "high"
    assert data["task_class"] == "lookup" and data["strategy"] == "direct"
    assert data["reasons"]
    assert main(["route", "explain", "hi", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
