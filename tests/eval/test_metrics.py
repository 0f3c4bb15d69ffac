from __future__ import annotations

import math

import pytest

from ponder.eval.metrics import (
    compute_optimal,
    difficulty_bins,
    pareto_frontier,
    pass_at_k,
    percentile,
    summarize,
    wilson_interval,
)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (10, 0, 1, 0.0),
        (10, 10, 5, 1.0),
        (10, 3, 1, 0.3),  # pass@1 is the plain success rate
        (5, 2, 2, 1 - (3 * 2) / (5 * 4)),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (8, 1, 4, 0.5),  # 1 - C(7,4)/C(8,4) = 1 - 35/70
        (4, 3, 2, 1.0),  # fewer than k wrong samples: some draw always passes
        (20, 5, 3, 1 - math.comb(15, 3) / math.comb(20, 3)),
    ],
)
def test_pass_at_k_matches_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_wilson_interval_brackets_rate_and_stays_in_unit_range():
    lo, hi = wilson_interval(8, 10)
    assert lo < 0.8 < hi
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] > 0.0
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] < 1.0
    # Known value: 50/100 -> (0.404, 0.596)
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)


def test_percentile_interpolates():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 95) == 5
    assert percentile(list(range(101)), 95) == 95


def rec(config, item, correct, tokens=(10, 0, 0, 5), verdicts=None, difficulty=None, n=1):
    return {
        "config_key": config,
        "config": {
            "strategy": config.split("|")[0],
            "model": "m",
            "params": {"n": n},
            "budget": None,
        },
        "model": "m",
        "item_id": item,
        "correct": correct,
        "usage": dict(zip(("input", "cached_input", "reasoning", "output"), tokens, strict=True)),
        "latency_s": 1.0,
        "difficulty": difficulty,
        "sample_verdicts": verdicts,
    }


def test_summarize_accuracy_tokens_cost_and_pass_at_k():
    rows = [
        rec(
            "self_consistency|4",
            "a",
            True,
            (100, 0, 0, 40),
            verdicts=[True, False, True, True],
            n=4,
        ),
        rec(
            "self_consistency|4",
            "b",
            False,
            (100, 0, 0, 60),
            verdicts=[False, False, True, False],
            n=4,
        ),
    ]
    (s,) = summarize(rows, prices={"m": {"input": 1.0, "output": 2.0}})
    assert s.accuracy == 0.5 and s.items == 2 and s.n == 4
    assert s.input_tokens == 100 and s.output_tokens == 50 and s.total_tokens == 150
    # cost = (200 * 1 + 100 * 2) / 1e6; one correct answer
    assert s.cost == pytest.approx(400 / 1e6)
    assert s.cost_per_correct == pytest.approx(400 / 1e6)
    assert s.pass_at_k[1] == pytest.approx((0.75 + 0.25) / 2)
    assert s.pass_at_k[4] == pytest.approx(1.0)


def test_no_pass_at_k_for_best_of_n_that_includes_the_greedy_answer():
    # Its candidates are greedy + samples: not independent draws, so pass@k would mislead.
    rows = [rec("best_of_n|4", "a", True, verdicts=[True, False, False, False], n=4)]
    rows[0]["config"]["params"]["include_greedy"] = True
    (s,) = summarize(rows)
    assert s.pass_at_k == {}
    rows[0]["config"]["params"]["include_greedy"] = False
    (s,) = summarize(rows)
    assert s.pass_at_k[1] == pytest.approx(0.25)


def test_difficulty_bins_rank_items_by_baseline_pass_rate():
    rows = [
        rec("base", "easy", True, verdicts=[True, True, True, True]),
        rec("base", "mid", True, verdicts=[True, True, False, False]),
        rec("base", "hard", False, verdicts=[False, False, False, False]),
        rec("other", "hard", True),
    ]
    bins = difficulty_bins(rows, "base", bins=3)
    assert bins == {"easy": 1, "mid": 2, "hard": 3}


def test_pareto_and_compute_optimal():
    rows = [
        rec("cheap", "x", True, (10, 0, 0, 10), difficulty=1),
        rec("cheap", "y", False, (10, 0, 0, 10), difficulty=2),
        rec("dear", "x", True, (10, 0, 500, 10), difficulty=1),
        rec("dear", "y", True, (10, 0, 500, 10), difficulty=2),
        rec("waste", "x", False, (10, 0, 900, 10), difficulty=1),
        rec("waste", "y", False, (10, 0, 900, 10), difficulty=2),
    ]
    front = [s.config for s in pareto_frontier(summarize(rows))]
    assert front == ["cheap", "dear"]
    best = compute_optimal(rows, {})
    assert best[1]["config"] == "cheap"  # both right on the easy bin: the cheaper one
    assert best[2]["config"] == "dear"


def test_common_items_keeps_only_items_every_config_finished():
    from ponder.eval.metrics import common_items

    rows = [rec("a", "x", True), rec("a", "y", True), rec("b", "x", False)]
    assert [(r["config_key"], r["item_id"]) for r in common_items(rows)] == [("a", "x"), ("b", "x")]
