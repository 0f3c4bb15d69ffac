"""Model-free verifiers: agreement, mean logprob, exact match, a user function."""

from __future__ import annotations

import math

import pytest

from ponder.types import Candidate, Generation, Problem, TokenLogprob, as_messages
from ponder.verifiers import (
    AgreementVerifier,
    ExactMatchVerifier,
    FunctionVerifier,
    MeanLogprobVerifier,
    Verifier,
)


@pytest.fixture
def problem() -> Problem:
    return Problem(messages=as_messages("q"), reference="1,234")


def cand(answer: str | None, logprobs: list[float] | None = None) -> Candidate:
    gen = None
    if logprobs is not None:
        gen = Generation(
            text="x", logprobs=[TokenLogprob(token="t", logprob=lp) for lp in logprobs]
        )
    return Candidate(text=f"Answer: {answer}", answer=answer, generation=gen)


def test_all_are_verifiers() -> None:
    for v in (AgreementVerifier(), MeanLogprobVerifier(), ExactMatchVerifier()):
        assert isinstance(v, Verifier)
    assert isinstance(FunctionVerifier(lambda p, c: 0.0), Verifier)


async def test_agreement_scores_the_share_of_votes(problem: Problem) -> None:
    scores = await AgreementVerifier().score(problem, [cand("7"), cand("3"), cand("7"), cand(None)])

    assert [s.value for s in scores] == [0.5, 0.25, 0.5, 0.0]
    assert [s.detail["votes"] for s in scores] == [2, 1, 2, 0]


async def test_agreement_of_nothing(problem: Problem) -> None:
    assert await AgreementVerifier().score(problem, []) == []


async def test_mean_logprob(problem: Problem) -> None:
    scores = await MeanLogprobVerifier().score(
        problem, [cand("1", [-1.0, -3.0]), cand("2", [-0.5]), cand("3")]
    )

    assert scores[0].value == -2.0
    assert scores[1].value == -0.5
    assert scores[2].value == -math.inf
    assert scores[2].detail["mean_logprob"] is None


async def test_exact_match_compares_normalized_answers(problem: Problem) -> None:
    scores = await ExactMatchVerifier().score(problem, [cand("1234"), cand("1235"), cand(None)])

    assert [s.value for s in scores] == [1.0, 0.0, 0.0]


async def test_exact_match_extracts_answers_of_bare_candidates(problem: Problem) -> None:
    scores = await ExactMatchVerifier().score(
        problem, [Candidate(text="so the answer is 1234."), Candidate(text="It is 12.")]
    )

    assert [s.value for s in scores] == [1.0, 0.0]


async def test_exact_match_without_reference_scores_zero() -> None:
    p = Problem(messages=as_messages("q"))
    scores = await ExactMatchVerifier().score(p, [cand("1")])
    assert [s.value for s in scores] == [0.0]


async def test_function_verifier_sync_and_async(problem: Problem) -> None:
    async def async_fn(p: Problem, c: Candidate) -> float:
        return float(len(c.answer or ""))

    cands = [cand("1"), cand("22")]

    sync_scores = await FunctionVerifier(lambda p, c: c.answer == "22").score(problem, cands)
    async_scores = await FunctionVerifier(async_fn).score(problem, cands)

    assert [s.value for s in sync_scores] == [0.0, 1.0]
    assert [s.value for s in async_scores] == [1.0, 2.0]


async def test_function_verifier_sees_the_problem(problem: Problem) -> None:
    seen: list[str | None] = []

    def fn(p: Problem, c: Candidate) -> float:
        seen.append(p.reference)
        return 0.0

    await FunctionVerifier(fn).score(problem, [cand("1")])

    assert seen == ["1,234"]
