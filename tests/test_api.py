"""The library facade: Ponder(...).solve / asolve and module-level solve."""

from __future__ import annotations

from typing import Any

import pytest

import ponder
from ponder import Budget, FakeBackend, InvalidRequest, Outcome, Ponder, Problem
from ponder.backends.fake import Reply
from ponder.strategies import Direct
from ponder.types import Message
from ponder.verifiers import FunctionVerifier

VOTES = ["Answer: 7", "Answer: 3", "Answer: 7"]


def test_solve_sync_runs_a_strategy_by_name() -> None:
    fake = FakeBackend(VOTES)

    out = Ponder(fake).solve("What is 3 + 4?", "self_consistency", n=3)

    assert isinstance(out, Outcome)
    assert out.strategy == "self_consistency"
    assert out.candidates[out.chosen or 0].answer == "7"
    assert len(out.candidates) == 3
    assert fake.calls[0].n == 3
    assert out.calls == 1
    assert out.usage.input == 5 and out.usage.output == 6
    assert out.latency_s >= 0
    assert [e.name for e in out.trace] == ["generate", "chosen"]
    assert not out.truncated


async def test_asolve_async() -> None:
    out = await Ponder(FakeBackend(VOTES)).asolve("q", "self_consistency", n=3)

    assert out.candidates[out.chosen or 0].answer == "7"
    assert out.calls == 1


async def test_default_strategy_is_direct_and_sampling_reaches_the_backend() -> None:
    fake = FakeBackend(["Answer: 7"])

    out = await Ponder(fake).asolve(
        "q", max_tokens=20, temperature=0.3, top_p=0.5, top_k=4, seed=11, stop=["\n"]
    )

    assert out.strategy == "direct"
    sent = fake.calls[0]
    assert (sent.max_tokens, sent.temperature, sent.top_p, sent.top_k, sent.seed, sent.stop) == (
        20,
        0.3,
        0.5,
        4,
        11,
        ["\n"],
    )


async def test_accepts_messages_dicts_and_problems() -> None:
    fake = FakeBackend(["x"])
    p = Ponder(fake)

    await p.asolve([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    await p.asolve([Message(role="user", content="m")])
    await p.asolve(Problem(messages=[Message(role="user", content="p")], reference="1"))

    assert [[m.content for m in c.messages] for c in fake.calls] == [["s", "u"], ["m"], ["p"]]


async def test_accepts_a_strategy_object() -> None:
    out = await Ponder(FakeBackend(["x"])).asolve("q", Direct(temperature=0.2))
    assert out.strategy == "direct"


async def test_strategy_object_with_strategy_params_is_rejected() -> None:
    with pytest.raises(InvalidRequest):
        await Ponder(FakeBackend(["x"])).asolve("q", Direct(), n=3)


async def test_token_budget_caps_the_run() -> None:
    fake = FakeBackend([" ".join(["word"] * 50)])

    out = await Ponder(fake).asolve("q", "self_consistency", n=4, budget=10)

    assert out.usage.completion_tokens <= 10
    assert out.truncated and out.stop_reason == "budget"


async def test_budget_object_and_deadline() -> None:
    fake = FakeBackend(["x"])

    await Ponder(fake).asolve("q", budget=Budget(tokens=5), deadline_s=30)

    assert fake.calls[0].max_tokens == 5
    assert fake.calls[0].deadline is not None


async def test_each_solve_has_its_own_meter() -> None:
    p = Ponder(FakeBackend(["one two three"]))

    first = await p.asolve("q", budget=3)
    second = await p.asolve("q", budget=3)

    assert first.usage == second.usage
    assert not second.truncated


@pytest.mark.parametrize(
    "kwargs",
    [
        {"budget": -1},
        {"deadline_s": 0},
        {"deadline_s": -2.0},
        {"max_tokens": 0},
        {"temperature": -1.0},
        {"top_p": 2.0},
    ],
)
async def test_bad_arguments_are_invalid_requests_and_cost_nothing(
    kwargs: dict[str, Any],
) -> None:
    fake = FakeBackend(["x"])

    with pytest.raises(InvalidRequest):
        await Ponder(fake).asolve("q", **kwargs)

    assert fake.calls == []


def test_budget_minus_one_raises_on_the_sync_path_too() -> None:
    with pytest.raises(InvalidRequest) as info:
        Ponder(FakeBackend(["x"])).solve("q", budget=-1)
    assert info.value.param == "budget"


async def test_empty_or_malformed_prompt_is_an_invalid_request() -> None:
    fake = FakeBackend(["x"])
    with pytest.raises(InvalidRequest):
        await Ponder(fake).asolve([])
    with pytest.raises(InvalidRequest):
        await Ponder(fake).asolve([{"role": "wizard", "content": "x"}])
    assert fake.calls == []


async def test_unknown_strategy_and_params_are_invalid_requests() -> None:
    with pytest.raises(InvalidRequest):
        await Ponder(FakeBackend(["x"])).asolve("q", "nope")
    with pytest.raises(InvalidRequest):
        await Ponder(FakeBackend(["x"])).asolve("q", "direct", n=3)


async def test_verifier_given_to_ponder_and_per_call() -> None:
    replies = [Reply("Answer: 1"), Reply("Answer: 2"), Reply("Answer: 3")]
    likes_two = FunctionVerifier(lambda p, c: float(c.answer == "2"))
    likes_three = FunctionVerifier(lambda p, c: float(c.answer == "3"))

    out = await Ponder(FakeBackend(replies), verifier=likes_two).asolve("q", "best_of_n", n=3)
    assert out.chosen == 1

    out = await Ponder(FakeBackend(replies), verifier=likes_two).asolve(
        "q", "best_of_n", n=3, verifier=likes_three
    )
    assert out.chosen == 2


def test_module_level_solve_with_a_backend() -> None:
    out = ponder.solve("q", "direct", backend=FakeBackend(["Answer: 7"]))
    assert out.answer == "Answer: 7"


async def test_module_level_asolve_with_a_backend() -> None:
    out = await ponder.asolve("q", "cot", backend=FakeBackend([Reply("A", reasoning="r")]))
    assert out.reasoning == "r"
