"""direct, cot, self_consistency and best_of_n against scripted backends."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ponder.backends.fake import FakeBackend, FunctionBackend, Reply
from ponder.errors import InvalidRequest
from ponder.strategies.base import RunContext
from ponder.strategies.basic import BestOfN, ChainOfThought, Direct, SelfConsistency, majority_vote
from ponder.types import Candidate, GenRequest, Problem, as_messages
from ponder.verifiers.code import CodeExecutionVerifier
from ponder.verifiers.simple import FunctionVerifier

MakeCtx = Callable[..., RunContext]

LONG = " ".join(f"w{i}" for i in range(40))
STRATEGIES = [
    Direct(),
    ChainOfThought(thinking_budget=8),
    SelfConsistency(n=3),
    BestOfN(n=3),
]


def cand(answer: str | None, truncated: bool = False) -> Candidate:
    return Candidate(text=f"Answer: {answer}", answer=answer, truncated=truncated)


# --- direct -------------------------------------------------------------------------------


async def test_direct_returns_the_single_reply(problem: Problem, make_ctx: MakeCtx) -> None:
    fake = FakeBackend(["It is 7.", "wrong 9"])

    out = await Direct().run(problem, make_ctx(fake))

    assert out.answer == "It is 7."
    assert out.strategy == "direct"
    assert out.chosen == 0
    assert len(out.candidates) == 1 and out.candidates[0].answer == "7"
    assert not out.truncated and out.stop_reason == "stop"
    assert out.calls == 1 and len(fake.calls) == 1
    assert fake.calls[0].n == 1 and fake.calls[0].temperature == 0.0
    assert fake.calls[0].thinking is None
    assert out.usage.input == 5 and out.usage.output == 3
    assert [e.name for e in out.trace] == ["generate", "chosen"]


async def test_sampling_defaults_reach_the_backend(problem: Problem, make_ctx: MakeCtx) -> None:
    fake = FakeBackend(["7"])

    await Direct().run(
        problem, make_ctx(fake, max_tokens=33, temperature=0.4, seed=5, stop=["\n\n"], top_k=3)
    )

    sent = fake.calls[0]
    assert (sent.max_tokens, sent.temperature, sent.seed, sent.stop, sent.top_k) == (
        33,
        0.4,
        5,
        ["\n\n"],
        3,
    )


async def test_direct_cut_by_max_tokens_is_truncated_with_length(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    out = await Direct().run(problem, make_ctx(FakeBackend([LONG]), max_tokens=5))

    assert out.truncated
    assert out.stop_reason == "length"
    assert out.usage.output == 5


# --- chain of thought ---------------------------------------------------------------------


async def test_cot_passes_the_thinking_budget_and_returns_reasoning_separately(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    fake = FakeBackend([Reply("Answer: 7", reasoning="three plus four is seven")])

    out = await ChainOfThought(thinking_budget=64).run(problem, make_ctx(fake))

    thinking = fake.calls[0].thinking
    assert thinking is not None and thinking.budget_tokens == 64
    assert out.answer == "Answer: 7"
    assert out.reasoning == "three plus four is seven"
    assert (out.usage.reasoning, out.usage.output) == (5, 2)
    assert out.usage.to_openai()["completion_tokens_details"]["reasoning_tokens"] == 5
    assert not out.truncated


async def test_cot_thinking_is_cut_at_its_budget(problem: Problem, make_ctx: MakeCtx) -> None:
    fake = FakeBackend([Reply("Answer: 7", reasoning=LONG)])

    out = await ChainOfThought(thinking_budget=6, min_thinking=2).run(problem, make_ctx(fake))

    thinking = fake.calls[0].thinking
    assert thinking is not None and thinking.min_tokens == 2
    assert out.reasoning.split() == LONG.split()[:6]
    assert (out.usage.reasoning, out.usage.output) == (6, 2)


async def test_cot_with_zero_budget_does_not_think(problem: Problem, make_ctx: MakeCtx) -> None:
    fake = FakeBackend([Reply("Answer: 7", reasoning="hmm")])

    out = await ChainOfThought(thinking_budget=0).run(problem, make_ctx(fake))

    assert fake.calls[0].thinking is None
    assert out.reasoning == "" and out.usage.reasoning == 0


# --- self-consistency ---------------------------------------------------------------------


async def test_self_consistency_picks_the_majority_answer(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    fake = FakeBackend(["Answer: 7", "Answer: 3", "Answer: 7", "The answer is 7", "Answer: 5"])

    out = await SelfConsistency(n=5).run(problem, make_ctx(fake))

    assert out.candidates[out.chosen or 0].answer == "7"
    assert out.chosen == 0
    assert out.answer == "Answer: 7"
    assert [c.answer for c in out.candidates] == ["7", "3", "7", "7", "5"]
    assert [s.value for s in out.scores] == [0.6, 0.2, 0.6, 0.6, 0.2]
    # One batched call with n samples at the strategy's temperature.
    assert len(fake.calls) == 1
    assert (fake.calls[0].n, fake.calls[0].temperature) == (5, 0.7)
    assert out.calls == 1


async def test_self_consistency_ignores_truncated_candidates_when_complete_ones_exist(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    # The cut replies state a (wrong) answer early, then run out of tokens before finishing:
    # a truncated solution's answer cannot be trusted, however many of them agree.
    cut = "Answer: 9\n" + "and then " * 20
    fake = FakeBackend([cut, "Answer: 7", cut, "Answer: 4", cut, "Answer: 7"])

    out = await SelfConsistency(n=6).run(problem, make_ctx(fake, max_tokens=10))

    assert [c.truncated for c in out.candidates] == [True, False, True, False, True, False]
    assert [c.answer for c in out.candidates][:2] == ["9", "7"]
    assert out.chosen == 1
    assert out.answer == "Answer: 7"
    assert not out.truncated


async def test_self_consistency_tie_goes_to_the_answer_reached_first(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    fake = FakeBackend(["Answer: 3", "Answer: 7", "Answer: 7", "Answer: 3"])

    out = await SelfConsistency(n=4).run(problem, make_ctx(fake))

    assert out.chosen == 0
    assert out.candidates[0].answer == "3"


async def test_self_consistency_passes_its_thinking_budget(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    fake = FakeBackend([Reply("Answer: 7", reasoning="r r r")])

    out = await SelfConsistency(n=2, thinking_budget=16).run(problem, make_ctx(fake))

    thinking = fake.calls[0].thinking
    assert thinking is not None and thinking.budget_tokens == 16
    assert out.usage.reasoning == 6


def test_majority_vote_unit_cases() -> None:
    assert majority_vote([]) is None
    assert majority_vote([cand("1"), cand("2"), cand("2")]) == 1
    # Truncated majority loses to a complete minority.
    assert majority_vote([cand("9", True), cand("9", True), cand("4")]) == 2
    # All truncated: vote among them anyway.
    assert majority_vote([cand("9", True), cand("4", True), cand("4", True)]) == 1
    # Candidates without an answer never win while any has one.
    assert majority_vote([cand(None), cand(None), cand("5", True)]) == 2
    assert majority_vote([cand(None), cand(None)]) == 0


# --- best-of-n ----------------------------------------------------------------------------


async def test_best_of_n_picks_the_highest_verifier_score(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    fake = FakeBackend(["Answer: 6", "Answer: 7", "Answer: 8", "Answer: 7"])
    verifier = FunctionVerifier(lambda p, c: 1.0 if c.answer == "8" else 0.0)

    out = await BestOfN(n=4).run(problem, make_ctx(fake, verifier=verifier))

    assert out.chosen == 2
    assert out.answer == "Answer: 8"
    assert [s.value for s in out.scores] == [0.0, 0.0, 1.0, 0.0]
    assert fake.calls[0].n == 4 and fake.calls[0].logprobs
    assert any(e.name == "scored" and e.data["verifier"] == "FunctionVerifier" for e in out.trace)


async def test_best_of_n_include_greedy_puts_the_greedy_answer_first(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    # Greedy call first (n=1, T=0), then n-1 samples at the strategy's temperature.
    fake = FakeBackend(["Answer: 7", "Answer: 6", "Answer: 8", "Answer: 9"])
    verifier = FunctionVerifier(lambda p, c: 1.0 if c.answer == "7" else 0.0)

    out = await BestOfN(n=4, temperature=0.7, include_greedy=True).run(
        problem, make_ctx(fake, verifier=verifier)
    )

    assert [(c.n, c.temperature) for c in fake.calls] == [(1, 0.0), (3, 0.7)]
    assert len(out.candidates) == 4
    assert out.chosen == 0 and out.answer == "Answer: 7"


async def test_best_of_n_include_greedy_stays_greedy_under_a_run_temperature(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    # A request temperature (the run's sampling default) applies to the samples only.
    fake = FakeBackend(["Answer: 7", "Answer: 6", "Answer: 8"])
    await BestOfN(n=3, include_greedy=True).run(problem, make_ctx(fake, temperature=0.7))
    assert [(c.n, c.temperature) for c in fake.calls] == [(1, 0.0), (2, 0.7)]


async def test_best_of_n_include_greedy_with_n_1_is_just_greedy(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    fake = FakeBackend(["Answer: 7"])
    out = await BestOfN(n=1, include_greedy=True).run(problem, make_ctx(fake))
    assert [(c.n, c.temperature) for c in fake.calls] == [(1, 0.0)]
    assert out.answer == "Answer: 7"


async def test_best_of_n_accepts_an_async_verifier(problem: Problem, make_ctx: MakeCtx) -> None:
    async def score(p: Problem, c: Candidate) -> float:
        return -abs(float(c.answer or 0) - 7)

    fake = FakeBackend(["Answer: 1", "Answer: 6", "Answer: 12"])

    out = await BestOfN(n=3).run(problem, make_ctx(fake, verifier=FunctionVerifier(score)))

    assert out.chosen == 1


async def test_best_of_n_without_verifier_uses_agreement_when_answers_agree(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    # The confident candidate is the odd one out; agreement must beat confidence.
    fake = FakeBackend(
        [
            Reply("Answer: 5", logprob=-0.01),
            Reply("Answer: 7", logprob=-2.0),
            Reply("Answer: 7", logprob=-1.0),
        ]
    )

    out = await BestOfN(n=3).run(problem, make_ctx(fake))

    # Among the agreeing pair the more confident one is chosen.
    assert out.chosen == 2
    assert [round(s.value, 3) for s in out.scores] == [0.333, 0.667, 0.667]


async def test_best_of_n_without_verifier_uses_mean_logprob_when_all_differ(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    fake = FakeBackend(
        [
            Reply("Answer: 5", logprob=-1.5),
            Reply("Answer: 7", logprob=-0.2),
            Reply("Answer: 9", logprob=-0.9),
        ]
    )

    out = await BestOfN(n=3).run(problem, make_ctx(fake))

    assert out.chosen == 1
    assert [s.value for s in out.scores] == [-1.5, -0.2, -0.9]


async def test_best_of_n_breaks_a_public_test_tie_by_the_largest_behaviour_cluster(
    make_ctx: MakeCtx,
) -> None:
    # All three pass the docstring's one example. The most confident candidate
    # hard-codes it; the other two agree with each other on new inputs.
    prompt = 'def double(x):\n    """>>> double(2)\n    4\n    """\n'
    code = Problem(
        messages=as_messages(prompt),
        task="code",
        metadata={"prompt_code": prompt, "entry_point": "double"},
    )
    fake = FakeBackend(
        [
            Reply("```python\ndef double(x):\n    return 4\n```", logprob=-0.01),
            Reply("```python\ndef double(x):\n    return x + x\n```", logprob=-0.9),
            Reply("```python\ndef double(x):\n    return 2 * x\n```", logprob=-0.5),
        ]
    )

    out = await BestOfN(n=3).run(code, make_ctx(fake, verifier=CodeExecutionVerifier()))

    assert [s.value for s in out.scores] == [1.0, 1.0, 1.0]
    assert out.chosen == 2  # the larger cluster, then the better logprob within it

    # Weighted best-of-N counts a behaviour cluster as one answer: 2.0 beats 1.0.
    fake = FakeBackend(list(fake.replies))
    out = await BestOfN(n=3, weighted=True).run(
        code, make_ctx(fake, verifier=CodeExecutionVerifier())
    )
    assert out.chosen in (1, 2)


async def test_best_of_n_prefers_complete_candidates(problem: Problem, make_ctx: MakeCtx) -> None:
    fake = FakeBackend(["Answer: 8 " + LONG, "Answer: 7"])
    # The verifier likes the truncated one best; a cut-off answer must still lose.
    verifier = FunctionVerifier(lambda p, c: 1.0 if c.truncated else 0.5)

    out = await BestOfN(n=2).run(problem, make_ctx(fake, verifier=verifier, max_tokens=10))

    assert out.candidates[0].truncated
    assert out.chosen == 1


async def test_best_of_n_never_picks_a_nan_score(problem: Problem, make_ctx: MakeCtx) -> None:
    fake = FakeBackend(["Answer: 1", "Answer: 2", "Answer: 3"])
    verifier = FunctionVerifier(
        lambda p, c: float("nan") if c.answer == "1" else float(c.answer or 0)
    )

    out = await BestOfN(n=3).run(problem, make_ctx(fake, verifier=verifier))

    assert out.chosen == 2


# --- budgets ------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
@pytest.mark.parametrize("tokens", [1, 4, 9])
async def test_budget_is_never_exceeded_and_outcome_is_truncated(
    strategy: object, tokens: int, problem: Problem, make_ctx: MakeCtx
) -> None:
    fake = FakeBackend([Reply("Answer: 7 " + LONG, reasoning=LONG)])

    out = await strategy.run(problem, make_ctx(fake, tokens=tokens))  # type: ignore[attr-defined]

    assert out.usage.completion_tokens <= tokens
    assert out.truncated
    assert out.stop_reason == "budget"
    assert out.answer != "" or out.reasoning != ""


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
async def test_budget_exhausted_on_first_call_returns_an_empty_truncated_outcome(
    strategy: object, problem: Problem, make_ctx: MakeCtx
) -> None:
    fake = FakeBackend(["Answer: 7"])

    out = await strategy.run(problem, make_ctx(fake, tokens=0))  # type: ignore[attr-defined]

    assert out.answer == ""
    assert out.truncated
    assert out.stop_reason == "budget"
    assert out.chosen is None
    assert out.candidates == []
    assert out.calls == 0 and fake.calls == []
    assert out.usage.total_tokens == 0


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
async def test_answer_fitting_the_budget_exactly_is_not_truncated(
    strategy: object, problem: Problem, make_ctx: MakeCtx
) -> None:
    n = getattr(strategy, "n", 1)
    fake = FakeBackend(["Answer: 7"])

    out = await strategy.run(problem, make_ctx(fake, tokens=2 * n))  # type: ignore[attr-defined]

    assert out.usage.completion_tokens == 2 * n
    assert not out.truncated
    assert out.stop_reason == "stop"


async def test_self_consistency_under_a_tight_budget_votes_with_fewer_samples(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    def fn(req: GenRequest, i: int) -> str:
        return "7" if i != 1 else "3"

    backend = FunctionBackend(fn)

    out = await SelfConsistency(n=8).run(problem, make_ctx(backend, tokens=3))

    assert backend.calls[0].n == 3
    assert len(out.candidates) == 3
    assert out.candidates[out.chosen or 0].answer == "7"
    assert out.usage.completion_tokens == 3


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: SelfConsistency(n=0),
        lambda: BestOfN(n=-1),
        lambda: SelfConsistency(n=2.5),  # type: ignore[arg-type]
        lambda: ChainOfThought(thinking_budget=-1),
        lambda: ChainOfThought(min_thinking=-3),
        lambda: SelfConsistency(thinking_budget=-5),
        lambda: BestOfN(thinking_budget=-5),
        lambda: Direct(temperature=-0.5),
        lambda: ChainOfThought(temperature=-1),
        lambda: SelfConsistency(temperature=-0.1),
        lambda: BestOfN(temperature=float("nan")),
        lambda: BestOfN(include_greedy="yes"),  # type: ignore[arg-type]
    ],
)
def test_invalid_parameter_values_are_rejected_at_construction(build: object) -> None:
    with pytest.raises(InvalidRequest):
        build()  # type: ignore[operator]


def test_valid_edge_values_are_accepted() -> None:
    SelfConsistency(n=1, temperature=0.0, thinking_budget=0)
    BestOfN(n=1, thinking_budget=None)
    ChainOfThought(thinking_budget=0)
