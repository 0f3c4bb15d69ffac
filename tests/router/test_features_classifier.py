"""Features and classifiers: deterministic, and they tell the request kinds apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ponder.router.classifier import (
    Example,
    HeuristicScorer,
    LearnedClassifier,
    infer_class,
    training_examples,
)
from ponder.router.features import NoveltyTracker, extract

WORD_PROBLEM = (
    "A baker makes 24 rolls each hour. After 5 hours she sells 70 rolls, then bakes 3 more "
    "batches of 12. How many rolls does she have left?"
)


@pytest.mark.parametrize(
    ("text", "verifiability", "task_class"),
    [
        ("What is 1+9900?", "math", "lookup"),
        (WORD_PROBLEM, "math", "math"),
        ("Write a Python function that returns the n-th prime number.", "code", "codegen"),
        ("def fibonacci(n):", "code", "autocomplete"),
        ("Write a SQL query that counts orders per customer in table orders.", "text", "data_analysis"),
        ("Extract the name and age fields from this text as JSON: Bob is 42.", "json", "extraction"),
        ("Summarize the following article in three bullet points: ...", "text", "summarization"),
        ("Make a plan with milestones for migrating our CI to a new provider.", "text", "planning"),
        ("Tell me something nice about autumn evenings by the sea, please, in a few sentences.", "text", "chat"),
    ],
)  # fmt: skip
def test_verifiability_and_class(text: str, verifiability: str, task_class: str) -> None:
    f = extract(text)
    assert f.verifiability == verifiability
    assert infer_class(text, f) == task_class


def test_error_cost_from_policy_keywords_or_declared() -> None:
    med = extract("What is the maximum daily dosage of ibuprofen for an adult patient?")
    assert med.error_cost == "high" and med.error_domains == ("medical",)
    assert extract("Is this contract clause enforceable in court?").error_domains == ("legal",)
    assert extract("Should I refinance my mortgage?").error_domains == ("financial",)
    assert extract("What colour is the sky?").error_cost == "normal"
    assert extract("What colour is the sky?", error_cost="high").error_cost == "high"


def test_latency_language_length() -> None:
    assert extract("hi", stream=True).latency == "interactive"
    assert extract("hi").latency == "async"
    assert extract("hi", stream=True, latency="async").latency == "async"
    assert extract("What is the capital of France?").language == "en"
    assert extract("Wie ist das Wetter und was ist das?").language == "de"
    assert extract("这个问题的答案是什么").language == "zh"
    f = extract("one two three")
    assert (f.words, f.chars) == (3, 13)


def test_steps_grow_with_the_work() -> None:
    assert extract(WORD_PROBLEM).steps > extract("What is 2+2?").steps


def test_features_are_deterministic() -> None:
    assert extract(WORD_PROBLEM) == extract(WORD_PROBLEM)
    code = f"from ponder.router.features import extract; print(extract({WORD_PROBLEM!r}).as_dict())"
    # A fresh interpreter (new hash salt) computes the same features.
    runs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    assert len(runs) == 1 and str(extract(WORD_PROBLEM).as_dict()) in runs.pop()


def replay_scores(seq: list[str]) -> list[float]:
    t = NoveltyTracker(window=2)
    return [t.score(s) for s in seq]


def test_novelty_against_a_bounded_recent_window() -> None:
    tracker = NoveltyTracker(window=2)
    assert tracker.score("how do I sort a list in python") == 1.0
    assert tracker.score("how do I sort a list in python") == 0.0  # seen just now
    assert 0.0 < tracker.score("how do I sort a dict in python") < 1.0
    tracker.score("completely different words here")
    tracker.score("and yet another unrelated request")
    # The first request has left the window of 2: it is new again.
    assert tracker.score("how do I sort a list in python") > 0.5
    seq = ["a b c d", "a b c e", "x y z", "a b c d"]
    assert replay_scores(seq) == replay_scores(seq)


def test_novelty_index_equals_brute_force_jaccard() -> None:
    # The inverted index must give exactly the brute-force answer, evictions included.
    import random

    from ponder.router.features import ngram_hashes

    rng = random.Random(3)
    words = ["sort", "list", "python", "what", "is", "1", "+", "99", "dict", "map", "x"]
    texts = [" ".join(rng.choices(words, k=rng.randint(0, 8))) for _ in range(300)]
    tracker, window = NoveltyTracker(window=7), []
    for i, text in enumerate(texts):
        grams = ngram_hashes(text)
        best = max((len(grams & w) / len(grams | w) for w in window if grams | w), default=0.0)
        remember = i % 5 != 0  # some lookups only peek
        assert tracker.score(text, remember=remember) == round(1.0 - best, 4), i
        if remember:
            window = [*window, grams][-7:]
    assert len(tracker) == 7
    # Evicted requests leave no trace: the matrix holds exactly the window's grams.
    assert int(tracker._holds.sum()) == sum(len(w) for w in window)


def test_heuristic_scorer_is_low_for_trivia_and_higher_for_multi_step() -> None:
    h = HeuristicScorer()
    trivial = h.score("What is 1+9900?", extract("What is 1+9900?"))
    hard = h.score(WORD_PROBLEM, extract(WORD_PROBLEM))
    assert trivial < 0.1 < hard <= 1.0
    assert h.score(WORD_PROBLEM, extract(WORD_PROBLEM)) == hard


def _records() -> list[dict]:
    """Eval-style records: direct wrong + cot right on multi-step items, else no pay-off."""
    rows = []
    for i in range(12):
        multi = i % 2 == 0
        prompt = (
            f"Tom has {i + 3} boxes with {i + 2} pens each, then gives away {i} pens and buys "
            f"{i + 1} more boxes. How many pens does he have?"
            if multi
            else f"What is {i}+{i + 1}?"
        )
        rows.append({"item_id": f"q{i}", "strategy": "direct", "correct": not multi,
                     "prompt": prompt, "config": {"params": {}}})  # fmt: skip
        rows.append({"item_id": f"q{i}", "strategy": "cot", "correct": True,
                     "config": {"params": {"thinking_budget": 256}}})  # fmt: skip
    return rows


def test_training_labels_mean_extra_compute_paid_off() -> None:
    examples = training_examples(_records())
    assert len(examples) == 12
    assert [e.label for e in examples[:4]] == [1, 0, 1, 0]  # sorted ids: q0, q1, q10, q11
    # Beyond reach (nothing right) is a 0 too, as is an item without a prompt.
    rows = [{"item_id": "x", "strategy": "direct", "correct": False, "prompt": "p"},
            {"item_id": "x", "strategy": "cot", "correct": False}]  # fmt: skip
    assert [e.label for e in training_examples(rows)] == [0]
    assert training_examples([{"item_id": "y", "strategy": "direct", "correct": False}]) == []


def test_learned_classifier_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    examples = training_examples(_records())
    a, b = LearnedClassifier.fit(examples), LearnedClassifier.fit(examples)
    multi = examples[0]
    assert a.score(multi.text, multi.features) == b.score(multi.text, multi.features)
    trivial = extract("What is 40+41?")
    assert a.score(multi.text, multi.features) > 0.5 > a.score("What is 40+41?", trivial)
    path = a.save(tmp_path / "router.joblib")
    loaded = LearnedClassifier.load(path)
    assert loaded.score(multi.text, multi.features) == a.score(multi.text, multi.features)
    assert loaded.meta["examples"] == 12 and loaded.meta["positives"] == 6


def test_learned_classifier_needs_both_outcomes(tmp_path: Path) -> None:
    same = [Example("a", extract("a"), 0), Example("b", extract("b"), 0)]
    with pytest.raises(ValueError, match="need examples of both outcomes"):
        LearnedClassifier.fit(same)
    with pytest.raises(FileNotFoundError, match="ponder route train"):
        LearnedClassifier.load(tmp_path / "missing.joblib")
