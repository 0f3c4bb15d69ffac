"""Confidence verifiers and verifier composition."""

from __future__ import annotations

import math

import pytest

from ponder.types import Candidate, Generation, Problem, TokenLogprob, as_messages
from ponder.verifiers import (
    FunctionVerifier,
    GateThenScore,
    SelfCertaintyVerifier,
    TokenProbVerifier,
    WeightedSum,
    self_certainty,
)

P = Problem(messages=as_messages("q"))


def tok(chosen: float, *others: float) -> TokenLogprob:
    top = {"a": math.log(chosen)} | {f"o{i}": math.log(p) for i, p in enumerate(others)}
    return TokenLogprob(token="a", logprob=math.log(chosen), top=top)


def cand(tokens: list[TokenLogprob], text: str = "x") -> Candidate:
    return Candidate(text=text, generation=Generation(text=text, logprobs=tokens))


def test_self_certainty_is_zero_for_uniform_and_grows_with_peakedness() -> None:
    uniform = self_certainty([tok(0.25, 0.25, 0.25, 0.25)])
    peaked = self_certainty([tok(0.97, 0.01, 0.01, 0.01)])

    assert uniform == pytest.approx(0.0, abs=1e-12)
    assert peaked is not None and peaked > 1.0
    assert self_certainty([TokenLogprob(token="a", logprob=-0.1)]) is None  # no alternatives


async def test_confidence_verifiers_rank_the_confident_candidate_first() -> None:
    sure = cand([tok(0.95, 0.03, 0.02)] * 3)
    unsure = cand([tok(0.4, 0.35, 0.25)] * 3)

    sc = await SelfCertaintyVerifier().score(P, [sure, unsure])
    tp = await TokenProbVerifier().score(P, [sure, unsure])

    assert sc[0].value > sc[1].value >= 0
    assert tp[0].value == pytest.approx(0.95) and tp[1].value == pytest.approx(0.4)


async def test_weighted_sum_combines_parts() -> None:
    a = FunctionVerifier(lambda p, c: 1.0 if "a" in c.text else 0.0)
    b = FunctionVerifier(lambda p, c: float(len(c.text)))

    scores = await WeightedSum([(a, 10.0), (b, 0.5)]).score(
        P, [Candidate(text="ab"), Candidate(text="bbbb")]
    )

    assert [s.value for s in scores] == [11.0, 2.0]


async def test_gate_then_score_only_scores_what_passes_the_gate() -> None:
    seen: list[str] = []

    def expensive(p: Problem, c: Candidate) -> float:
        seen.append(c.text)
        return 0.7

    gate = FunctionVerifier(lambda p, c: 1.0 if c.text.startswith("ok") else 0.0)

    scores = await GateThenScore(gate, FunctionVerifier(expensive), rejected=-1.0).score(
        P, [Candidate(text="ok 1"), Candidate(text="bad"), Candidate(text="ok 2")]
    )

    assert [s.value for s in scores] == [0.7, -1.0, 0.7]
    assert seen == ["ok 1", "ok 2"]
