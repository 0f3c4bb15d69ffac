"""Math answer verifier: equivalence by math-verify in a worker process."""

from __future__ import annotations

import asyncio
import threading

from ponder.types import Candidate, Problem, as_messages
from ponder.verifiers.math_answer import MathVerifier, final_answer_text, math_equal


def problem(reference: str | None) -> Problem:
    return Problem(messages=as_messages("q"), reference=reference)


def test_final_answer_text_keeps_boxed_latex() -> None:
    assert final_answer_text("so \\boxed{\\frac{1}{2}} done") == "$\\frac{1}{2}$"
    assert final_answer_text("Answer: 12") == "12"
    assert final_answer_text("no answer here") is not None


def test_math_equal_knows_equivalent_forms() -> None:
    assert math_equal("\\frac{1}{2}", "0.5")
    assert math_equal("1/2", "$\\frac{2}{4}$")
    assert not math_equal("3", "4")


async def test_scores_equivalent_answers_one_and_others_zero() -> None:
    cands = [
        Candidate(text="The result is \\boxed{\\frac{3}{4}}."),
        Candidate(text="Answer: 0.75"),
        Candidate(text="Answer: 0.7"),
        Candidate(text="nothing numeric"),
    ]

    scores = await MathVerifier().score(problem("3/4"), cands)

    assert [s.value for s in scores] == [1.0, 1.0, 0.0, 0.0]


async def test_without_a_reference_everything_scores_zero() -> None:
    (s,) = await MathVerifier().score(problem(None), [Candidate(text="Answer: 1")])
    assert s.value == 0.0 and "reference" in s.detail["error"]


def test_works_from_a_thread_that_is_not_the_main_thread() -> None:
    # math-verify's timeouts use signal.alarm, which fails outside the main thread.
    got: list[list[float]] = []

    def worker() -> None:
        scores = asyncio.run(
            MathVerifier().score(problem("\\sqrt{4}"), [Candidate(text="\\boxed{2}")])
        )
        got.append([s.value for s in scores])

    t = threading.Thread(target=worker)
    t.start()
    t.join(120)

    assert got == [[1.0]]
