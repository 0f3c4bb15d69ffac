"""The run context, candidates and the outcome builder every strategy shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ponder.backends.fake import FakeBackend
from ponder.budget.metered import MeteredBackend
from ponder.errors import InvalidRequest
from ponder.strategies.base import RunContext, SamplingDefaults, finish, to_candidate
from ponder.types import Budget, Generation, Problem, ThinkingConfig, Usage

MakeCtx = Callable[..., RunContext]


def test_request_uses_sampling_defaults_and_strategy_temperature(problem: Problem) -> None:
    ctx = RunContext(
        backend=MeteredBackend(FakeBackend(["x"])),
        sampling=SamplingDefaults(max_tokens=64, top_p=0.9, seed=3, stop=["END"]),
    )

    r = ctx.request(problem, n=4, temperature=0.7, thinking=ThinkingConfig(budget_tokens=8))

    assert (r.n, r.max_tokens, r.temperature, r.top_p, r.seed, r.stop) == (
        4,
        64,
        0.7,
        0.9,
        3,
        ["END"],
    )
    assert r.thinking is not None and r.thinking.budget_tokens == 8
    assert r.messages == problem.messages


def test_caller_temperature_overrides_the_strategy_default(problem: Problem) -> None:
    ctx = RunContext(
        backend=MeteredBackend(FakeBackend(["x"])), sampling=SamplingDefaults(temperature=0.0)
    )

    assert ctx.request(problem, temperature=0.8).temperature == 0.0


def test_request_overrides_win(problem: Problem) -> None:
    ctx = RunContext(backend=MeteredBackend(FakeBackend(["x"])))

    r = ctx.request(problem, logprobs=True, max_tokens=9)

    assert r.logprobs and r.max_tokens == 9


def test_request_stop_list_is_a_copy(problem: Problem) -> None:
    sampling = SamplingDefaults(stop=["a"])
    ctx = RunContext(backend=MeteredBackend(FakeBackend(["x"])), sampling=sampling)

    ctx.request(problem).stop.append("b")

    assert sampling.stop == ["a"]


@pytest.mark.parametrize(
    "bad",
    [
        {"max_tokens": 0},
        {"temperature": -0.1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": -1},
    ],
)
def test_sampling_defaults_reject_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as info:
        SamplingDefaults(**bad)
    assert info.value.param == next(iter(bad))


async def test_generate_records_a_trace_event(problem: Problem, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(FakeBackend(["a b", "c"]))

    gens = await ctx.generate(ctx.request(problem, n=2))

    (event,) = ctx.tracer.events
    assert event.name == "generate"
    assert event.data["n"] == 2
    assert event.data["finish"] == ["stop", "stop"]
    assert len(event.data["usage"]) == 2
    assert len(gens) == 2


@pytest.mark.parametrize(
    ("finish_reason", "truncated"),
    [("stop", False), ("length", True), ("deadline", True), ("budget", True), ("error", True)],
)
def test_to_candidate_extracts_the_answer_and_marks_cut_generations(
    finish_reason: str, truncated: bool
) -> None:
    gen = Generation(text="so \\boxed{12}", reasoning="hm", finish_reason=finish_reason)  # type: ignore[arg-type]

    c = to_candidate(gen)

    assert c.answer == "12"
    assert c.reasoning == "hm"
    assert c.generation is gen
    assert c.truncated is truncated


def test_finish_takes_usage_and_calls_from_the_meter(problem: Problem) -> None:
    meter = MeteredBackend(FakeBackend(["x"]), Budget(tokens=100))
    meter.usage = Usage(input=5, output=6)
    meter.calls = 2
    ctx = RunContext(backend=meter)
    cands = [to_candidate(Generation(text="Answer: 1")), to_candidate(Generation(text="Answer: 2"))]

    out = finish("demo", ctx, cands, 1)

    assert out.answer == "Answer: 2"
    assert out.chosen == 1
    assert out.usage == Usage(input=5, output=6)
    assert out.calls == 2
    assert not out.truncated and out.stop_reason == "stop"
    assert out.latency_s >= 0
    assert out.trace[-1].name == "chosen"


# --------------------------------------------------------------------------- optional protocols


async def test_anytime_stops_quietly_and_the_meter_says_why(problem: Problem) -> None:
    ctx = RunContext(backend=MeteredBackend(FakeBackend(["a", "b"]), Budget(tokens=1)))
    reached_end = False
    with ctx.anytime():
        await ctx.generate(ctx.request(problem))
        await ctx.generate(ctx.request(problem))  # nothing left: BudgetExhausted
        reached_end = True
    assert not reached_end
    assert ctx.backend.exhausted == "budget"
    outcome = finish("direct", ctx, [], None)
    assert outcome.truncated and outcome.stop_reason == "budget"


def test_anytime_lets_other_errors_through(problem: Problem) -> None:
    ctx = RunContext(backend=MeteredBackend(FakeBackend(["a"])))
    with pytest.raises(InvalidRequest), ctx.anytime():
        raise InvalidRequest("not a budget stop")


def test_declared_work_and_streaming() -> None:
    from ponder.strategies import (
        BestOfN,
        Cascade,
        ChainOfThought,
        Direct,
        SelfConsistency,
        Work,
        streams_tokens,
        work_of,
    )

    assert work_of(SelfConsistency(n=7)) == Work(samples=7)
    assert work_of(BestOfN(n=3)) == Work(samples=3)
    assert work_of(Cascade(strong_tier="big")).tiers == ("big",)
    assert work_of(Cascade()) == Work()
    assert work_of(object()) == Work()  # undeclared: one sample in one call
    assert streams_tokens(Direct()) and streams_tokens(ChainOfThought)
    assert not streams_tokens(SelfConsistency()) and not streams_tokens(SelfConsistency)


async def test_cot_stream_is_the_same_request_as_its_run(problem: Problem) -> None:
    from ponder.strategies import ChainOfThought

    backend = FakeBackend(["The answer is 4", "The answer is 4"])
    strategy = ChainOfThought(thinking_budget=32, min_thinking=8)
    await strategy.run(problem, RunContext(backend=MeteredBackend(backend)))
    deltas = [
        d async for d in strategy.stream(problem, RunContext(backend=MeteredBackend(backend)))
    ]
    assert "".join(d.text for d in deltas) == "The answer is 4"
    ran, streamed = backend.calls
    assert ran == streamed
    assert streamed.thinking == ThinkingConfig(budget_tokens=32, min_tokens=8)
