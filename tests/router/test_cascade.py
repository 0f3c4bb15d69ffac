"""The cascade strategy: escalates exactly when confidence < threshold, never over budget."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from ponder.api import Ponder
from ponder.backends.fake import FunctionBackend, Reply
from ponder.budget.metered import MeteredBackend
from ponder.errors import InvalidRequest
from ponder.eval.pool import request_key
from ponder.strategies import Cascade, RunContext, SamplingDefaults
from ponder.types import Budget, Candidate, GenRequest, Problem, Score, as_messages

PROBLEM = Problem(messages=as_messages("What is 6 times 7?"), task="math")


def scripted(direct_lp: float, think_lp: float = -0.05, votes: Sequence[str] = ("42",) * 4):
    """Direct / thinking / search replies told apart by the request, with given logprobs."""

    def fn(req: GenRequest, i: int) -> Reply:
        if req.n > 1:
            return Reply(f"Answer: {votes[i % len(votes)]}", logprob=-0.3)
        if req.thinking is not None:
            return Reply("Answer: 42", reasoning="six sevens are forty two", logprob=think_lp)
        return Reply("Answer: 41", logprob=direct_lp)

    return FunctionBackend(fn)


def rungs_of(outcome) -> list[dict]:
    return [e.data for e in outcome.trace if e.name == "rung" and "confidence" in e.data]


@pytest.mark.parametrize(
    ("direct_lp", "threshold", "climbed"),
    [
        (-0.1, 0.5, 1),  # exp(-0.1) = 0.905 >= 0.5: stop at direct
        (-2.0, 0.5, 2),  # 0.135 < 0.5: think, whose 0.95 suffices
        (-0.5, math.exp(-0.5), 1),  # exactly at the threshold: no escalation
        (-0.5, math.exp(-0.5) + 1e-9, 2),  # just below it: escalate
        (-0.1, 0.0, 1),  # threshold 0 never escalates
    ],
)
async def test_escalates_exactly_below_threshold(
    direct_lp: float, threshold: float, climbed: int
) -> None:
    backend = scripted(direct_lp)
    out = await Ponder(backend).asolve(PROBLEM, "cascade", threshold=threshold)
    rungs = rungs_of(out)
    assert len(rungs) == climbed == len(backend.calls) == out.calls
    assert rungs[0]["confidence"] == pytest.approx(math.exp(direct_lp), abs=1e-4)
    assert [r["escalate"] for r in rungs] == [True] * (climbed - 1) + [False]
    assert out.answer == ("Answer: 41" if climbed == 1 else "Answer: 42")


async def test_climbs_to_search_and_votes_when_thinking_is_unsure() -> None:
    backend = scripted(-3.0, think_lp=-3.0, votes=("42", "42", "42", "40"))
    out = await Ponder(backend).asolve(PROBLEM, "cascade", threshold=0.9, search_n=4)
    rungs = rungs_of(out)
    assert [r["kind"] for r in rungs] == ["direct", "think", "search"]
    assert rungs[2]["signal"] == "agreement"
    assert rungs[2]["confidence"] == pytest.approx(0.75)
    assert rungs[2]["escalate"] is False  # the last rung never escalates
    assert [c.n for c in backend.calls] == [1, 1, 4]
    assert backend.calls[1].thinking is not None and backend.calls[1].thinking.budget_tokens == 256
    assert out.answer == "Answer: 42"
    # Usage covers every rung, and each rung's cost is in its trace event.
    assert out.usage.completion_tokens == sum(r["tokens"] for r in rungs)


@pytest.mark.parametrize("budget", [1, 2, 3, 5, 8, 13, 21, 34])
async def test_never_exceeds_the_budget(budget: int) -> None:
    backend = scripted(-3.0, think_lp=-3.0, votes=("1", "2", "3", "4"))
    out = await Ponder(backend).asolve(PROBLEM, "cascade", threshold=0.99, budget=budget)
    assert out.usage.completion_tokens <= budget
    assert out.answer  # anytime: something, even when the budget stopped the climb


async def test_unfinished_answer_has_zero_confidence() -> None:
    backend = scripted(-0.01)
    out = await Ponder(backend).asolve(PROBLEM, "cascade", threshold=0.5, max_tokens=1)
    first = rungs_of(out)[0]
    assert first["confidence"] == 0.0 and first["signal"] == "unfinished"


class ScriptedVerifier:
    def __init__(self, values: Sequence[float]) -> None:
        self.values = list(values)
        self.seen = 0

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        out = [Score(value=self.values[min(self.seen + i, len(self.values) - 1)])
               for i in range(len(candidates))]  # fmt: skip
        self.seen += len(candidates)
        return out


async def test_verifier_score_is_the_signal_when_there_is_a_verifier() -> None:
    backend = scripted(-0.01)  # logprob says sure; the verifier says no
    out = await Ponder(backend, verifier=ScriptedVerifier([0.2, 0.8])).asolve(
        PROBLEM, "cascade", threshold=0.5
    )
    rungs = rungs_of(out)
    assert [(r["signal"], r["confidence"]) for r in rungs] == [("verifier", 0.2), ("verifier", 0.8)]


async def test_escalates_to_a_stronger_tier_under_the_same_budget() -> None:
    small = scripted(-3.0)
    big = FunctionBackend(lambda req, i: Reply("Answer: 42", reasoning="a b c", logprob=-0.01))
    ctx = RunContext(
        backend=MeteredBackend(small, Budget(tokens=100)),
        sampling=SamplingDefaults(max_tokens=50),
        tiers={"big": big},
    )
    cascade = Cascade(threshold=0.5, strong_tier="big", rungs=("direct", "tier"))
    out = await cascade.run(PROBLEM, ctx)
    assert len(small.calls) == 1 and len(big.calls) == 1
    assert [r["kind"] for r in rungs_of(out)] == ["direct", "tier"]
    assert rungs_of(out)[1]["tier"] == "big"
    # Both tiers' tokens are in the run's usage: 2 output (small) + 3 reasoning + 2 output (big).
    assert out.usage.completion_tokens == 7 and out.calls == 2
    assert ctx.backend.remaining_tokens == 93


async def test_stronger_tier_is_clipped_to_what_is_left() -> None:
    small = scripted(-3.0)
    big = FunctionBackend(lambda req, i: Reply("Answer: " + "x " * 50, logprob=-0.01))
    ctx = RunContext(backend=MeteredBackend(small, Budget(tokens=10)), tiers={"big": big})
    out = await Cascade(threshold=0.5, strong_tier="big", rungs=("direct", "tier")).run(
        PROBLEM, ctx
    )
    assert out.usage.completion_tokens == 10
    assert out.truncated and out.stop_reason == "budget"


@pytest.mark.parametrize(
    ("tier_thinking_budget", "expected"),
    [(None, 256), (0, None), (64, 64)],  # None: the cascade's thinking_budget; 0: direct
)
async def test_tier_thinking_budget_sets_the_strong_rung_s_thinking(
    tier_thinking_budget: int | None, expected: int | None
) -> None:
    small = scripted(-3.0, think_lp=-3.0, votes=("1", "2", "3", "4"))
    big = FunctionBackend(lambda req, i: Reply("Answer: 42", reasoning="a b c", logprob=-0.01))
    out = await Ponder(small).asolve(
        PROBLEM,
        "cascade",
        threshold=0.99,
        strong_tier="big",
        tier_thinking_budget=tier_thinking_budget,
        tiers={"big": big},
        seed=7,
        max_tokens=64,
    )
    assert [r["kind"] for r in rungs_of(out)] == ["direct", "think", "search", "tier"]
    (call,) = big.calls
    assert (call.thinking.budget_tokens if call.thinking else None) == expected
    assert rungs_of(out)[3]["thinking_budget"] == expected
    # The small tier's thinking rung keeps the cascade's own budget either way.
    assert small.calls[1].thinking is not None and small.calls[1].thinking.budget_tokens == 256
    if expected is None:
        # A direct strong rung is exactly the plain `direct` strategy's request on that
        # model, so a pool recorded with `direct` on the strong tier replays it.
        plain = FunctionBackend(lambda req, i: "Answer: 42")
        await Ponder(plain).asolve(PROBLEM, "direct", seed=7, max_tokens=64)
        assert request_key(call, "big") == request_key(plain.calls[0], "big")
        assert call.logprobs  # the confidence signal is there when a later rung needs it


async def test_unknown_tier_is_a_clear_error() -> None:
    ctx = RunContext(backend=MeteredBackend(scripted(-3.0)))
    with pytest.raises(InvalidRequest, match="strong_tier 'big' is not available"):
        await Cascade(strong_tier="big").run(PROBLEM, ctx)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"threshold": 1.5}, "threshold must be a number in"),
        ({"search_n": 1}, "search_n must be an integer >= 2"),
        ({"rungs": ("direct", "pray")}, "rungs must be a non-empty subset"),
        ({"signal": "vibes"}, "signal must be one of"),
        ({"tier_thinking_budget": -1}, "tier_thinking_budget must be null"),
        ({"tier_thinking_budget": True}, "tier_thinking_budget must be null"),
        ({"tier_thinking_budget": "0"}, "tier_thinking_budget must be null"),
    ],
)
def test_bad_parameters_are_clear_errors(params: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        Cascade(**params)


async def test_rung_requests_are_the_plain_strategies_requests() -> None:
    """So a pool recorded for direct / cot / self_consistency replays a cascade exactly."""
    seen: dict[str, list[GenRequest]] = {}
    for name, params in [
        ("cascade", {"threshold": 1.0}),
        ("direct", {}),
        ("cot", {"thinking_budget": 256}),
        ("self_consistency", {"n": 4, "temperature": 0.7}),
    ]:
        backend = scripted(-3.0, think_lp=-3.0, votes=("1", "2", "3", "4"))
        await Ponder(backend).asolve(PROBLEM, name, seed=7, max_tokens=64, **params)
        seen[name] = backend.calls
    keys = [request_key(r, "m") for r in seen["cascade"]]
    plain = [request_key(seen[n][0], "m") for n in ("direct", "cot", "self_consistency")]
    assert keys == plain
