"""LLM judge (logprob verdicts) and process reward models (steps, aggregation)."""

from __future__ import annotations

import math

import pytest

from ponder.backends.fake import FunctionBackend, Reply
from ponder.types import Candidate, Generation, GenRequest, Problem, TokenLogprob, as_messages
from ponder.verifiers import (
    FunctionPRM,
    GenerativePRM,
    LLMJudgeVerifier,
    StepVerifier,
    Verifier,
    aggregate,
    split_steps,
)
from ponder.verifiers.judge import rating_expectation, verdict_probability

PROBLEM = Problem(messages=as_messages("What is 2 + 2?"))


def gen(text: str, first: str, top: dict[str, float]) -> Generation:
    return Generation(
        text=text, logprobs=[TokenLogprob(token=first, logprob=top.get(first, -9.0), top=top)]
    )


def test_verdict_uses_the_yes_no_mass_of_the_top_logprobs() -> None:
    g = gen("No", "No", {"No": math.log(0.55), "Yes": math.log(0.30), " yes": math.log(0.05)})

    assert verdict_probability(g) == pytest.approx(0.35 / 0.90)


def test_verdict_falls_back_to_the_text_without_logprobs() -> None:
    assert verdict_probability(Generation(text="Yes.")) == 1.0
    assert verdict_probability(Generation(text="no")) == 0.0
    assert verdict_probability(Generation(text="maybe")) == 0.5


def test_rating_is_the_expected_value_of_the_digit_tokens() -> None:
    g = gen("8", "8", {"8": math.log(0.5), "10": math.log(0.5), "x": math.log(0.1)})

    assert rating_expectation(g) == pytest.approx((9 - 1) / 9)
    assert rating_expectation(Generation(text="rating: 4")) == pytest.approx(3 / 9)


async def test_judge_asks_the_backend_about_each_candidate() -> None:
    def fn(req: GenRequest, i: int) -> Reply:
        prompt = req.messages[-1].content
        return (
            Reply("Yes", logprob=math.log(0.9))
            if "\n4\n" in prompt
            else Reply("No", logprob=math.log(0.8))
        )

    backend = FunctionBackend(fn)
    judge = LLMJudgeVerifier(backend)

    right, wrong = await judge.score(PROBLEM, [Candidate(text="4"), Candidate(text="5")])

    assert isinstance(judge, Verifier)
    assert right.value == pytest.approx(0.9)
    assert wrong.value == pytest.approx(0.2)
    assert all(r.logprobs and r.max_tokens <= 3 for r in backend.calls)


def test_split_steps_on_headers_or_blank_lines() -> None:
    headed = "Intro\n## Step 1\nadd\n\nmore\n## Step 2: finish\nAnswer: 4"
    assert split_steps(headed) == [
        "Intro",
        "## Step 1\nadd\n\nmore",
        "## Step 2: finish\nAnswer: 4",
    ]
    assert split_steps("a\n\n  \n\nb\n \nc") == ["a", "b", "c"]
    assert split_steps("") == []


@pytest.mark.parametrize(
    ("how", "expected"), [("last", 0.5), ("min", 0.2), ("prod", 0.09), ("mean", 1.6 / 3)]
)
def test_aggregations(how: str, expected: float) -> None:
    assert aggregate([0.9, 0.2, 0.5], how) == pytest.approx(expected)


async def test_function_prm_scores_steps_and_aggregates() -> None:
    prm = FunctionPRM(
        lambda p, steps: [0.1 if "bad" in s else 0.9 for s in steps], aggregation="min"
    )
    cands = [Candidate(text="good\n\ngood"), Candidate(text="good\n\nbad step\n\ngood")]

    per_step = await prm.score_steps(PROBLEM, cands)
    scores = await prm.score(PROBLEM, cands)

    assert isinstance(prm, StepVerifier) and isinstance(prm, Verifier)
    assert per_step == [[0.9, 0.9], [0.9, 0.1, 0.9]]
    assert [s.value for s in scores] == [0.9, 0.1]


async def test_generative_prm_judges_each_step_in_context() -> None:
    def fn(req: GenRequest, i: int) -> Reply:
        prompt = req.messages[-1].content
        step = prompt.split("Next step:\n")[1].split("\n\n")[0]
        return Reply("No" if "2 + 2 = 5" in step else "Yes", logprob=math.log(0.75))

    backend = FunctionBackend(fn)
    prm = GenerativePRM(backend, aggregation="min")

    (steps,) = await prm.score_steps(PROBLEM, [Candidate(text="2 + 2 = 5\n\nso 5")])

    assert steps == pytest.approx([0.25, 0.75])
    assert "Solution so far:\n2 + 2 = 5" in backend.calls[1].messages[0].content
