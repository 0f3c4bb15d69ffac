"""The shipped fakes behave like a real engine in everything budget logic depends on."""

from __future__ import annotations

from typing import Any

import pytest

from ponder.backends.base import Backend
from ponder.backends.fake import FakeBackend, FunctionBackend, Reply, count_words
from ponder.types import GenRequest, Message, ThinkingConfig


def req(prompt: str = "what is six plus one", **kw: Any) -> GenRequest:
    return GenRequest(messages=[Message(role="user", content=prompt)], **kw)


def test_fakes_satisfy_the_backend_protocol() -> None:
    assert isinstance(FakeBackend(["x"]), Backend)
    assert isinstance(FunctionBackend(lambda r, i: "x"), Backend)


def test_fake_needs_at_least_one_reply() -> None:
    with pytest.raises(ValueError):
        FakeBackend([])


async def test_fake_replays_in_order_across_samples_and_calls_then_cycles() -> None:
    fake = FakeBackend(["one", "two", "three"])

    first = await fake.generate(req(n=2))
    second = await fake.generate(req(n=2))
    third = await fake.generate(req())

    assert [g.text for g in first] == ["one", "two"]
    assert [g.text for g in second] == ["three", "one"]
    assert [g.text for g in third] == ["two"]


async def test_fake_records_every_request_in_its_call_history() -> None:
    fake = FakeBackend(["a"])
    r1, r2 = req("first", n=2), req("second", max_tokens=7)

    await fake.generate(r1)
    await fake.generate(r2)

    assert fake.calls == [r1, r2]


async def test_stop_strings_cut_the_text_at_the_earliest_stop() -> None:
    fake = FakeBackend(["alpha beta END gamma STOP delta"])

    (g,) = await fake.generate(req(stop=["STOP", "END"]))

    assert g.text == "alpha beta "
    assert g.finish_reason == "stop"
    assert g.usage.output == 2


async def test_max_tokens_cuts_the_text_and_reports_length() -> None:
    fake = FakeBackend(["one two three four five six"])

    (g,) = await fake.generate(req(max_tokens=4))

    assert g.text == "one two three four"
    assert g.finish_reason == "length"
    assert g.usage.output == 4


async def test_reply_within_max_tokens_finishes_with_stop() -> None:
    (g,) = await FakeBackend(["one two three"]).generate(req(max_tokens=3))

    assert g.text == "one two three"
    assert g.finish_reason == "stop"


async def test_thinking_budget_cuts_reasoning_and_answer_follows() -> None:
    fake = FakeBackend([Reply("Answer: 7", reasoning="r1 r2 r3 r4 r5 r6 r7 r8")])

    (g,) = await fake.generate(req(thinking=ThinkingConfig(budget_tokens=3)))

    assert g.reasoning == "r1 r2 r3"
    assert g.text == "Answer: 7"
    assert g.finish_reason == "stop"
    assert (g.usage.reasoning, g.usage.output) == (3, 2)


async def test_reasoning_counts_against_max_tokens() -> None:
    fake = FakeBackend([Reply("Answer: 7", reasoning="r1 r2 r3 r4")])

    (g,) = await fake.generate(req(max_tokens=5, thinking=ThinkingConfig(budget_tokens=10)))

    assert g.reasoning == "r1 r2 r3 r4"
    assert g.text == "Answer:"
    assert g.finish_reason == "length"
    assert g.usage.completion_tokens == 5


async def test_max_tokens_below_thinking_budget_leaves_no_room_for_the_answer() -> None:
    fake = FakeBackend([Reply("Answer: 7", reasoning="r1 r2 r3 r4")])

    (g,) = await fake.generate(req(max_tokens=2, thinking=ThinkingConfig(budget_tokens=10)))

    assert g.reasoning == "r1 r2"
    assert g.text == ""
    assert g.finish_reason == "length"
    assert g.usage.completion_tokens == 2


async def test_reasoning_is_dropped_without_thinking() -> None:
    (g,) = await FakeBackend([Reply("Answer: 7", reasoning="hmm hmm")]).generate(req())

    assert g.reasoning == ""
    assert g.usage.reasoning == 0


async def test_prompt_tokens_are_attributed_to_the_first_sample_only() -> None:
    fake = FakeBackend(["a b", "c"])

    gens = await fake.generate(req("four words of prompt", n=3))

    assert [g.usage.input for g in gens] == [4, 0, 0]
    assert [g.usage.output for g in gens] == [2, 1, 2]
    assert all(g.usage.input_estimated and g.usage.output_estimated for g in gens)


async def test_prompt_tokens_count_every_message() -> None:
    r = GenRequest(
        messages=[Message(role="system", content="be brief"), Message(role="user", content="q q q")]
    )

    (g,) = await FakeBackend(["x"]).generate(r)

    assert g.usage.input == 5


async def test_logprobs_only_when_asked() -> None:
    fake = FakeBackend([Reply("sure thing", logprob=-0.25)])

    (without,) = await fake.generate(req())
    (with_lp,) = await fake.generate(req(logprobs=True))

    assert without.logprobs is None
    assert with_lp.logprobs is not None
    assert [t.token for t in with_lp.logprobs] == ["sure", "thing"]
    assert with_lp.mean_logprob == -0.25


async def test_function_backend_passes_request_and_sample_index() -> None:
    seen: list[tuple[int, int]] = []

    def fn(r: GenRequest, i: int) -> str:
        seen.append((r.n, i))
        return f"Answer: {i * 10}"

    gens = await FunctionBackend(fn).generate(req(n=3))

    assert [g.text for g in gens] == ["Answer: 0", "Answer: 10", "Answer: 20"]
    assert seen == [(3, 0), (3, 1), (3, 2)]


async def test_stream_yields_the_same_text_and_usage_as_generate() -> None:
    reply = Reply("the answer is 7", reasoning="think think")
    r = req(thinking=ThinkingConfig(budget_tokens=5))
    (whole,) = await FakeBackend([reply]).generate(r)

    deltas = [d async for d in FakeBackend([reply]).stream(r)]

    assert "".join(d.text for d in deltas) == whole.text
    assert "".join(d.reasoning for d in deltas) == whole.reasoning
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage == whole.usage


async def test_stream_of_an_empty_reply_has_no_text_deltas() -> None:
    deltas = [d async for d in FakeBackend([""]).stream(req())]

    assert len(deltas) == 1
    assert deltas[0].finish_reason == "stop"


def test_count_words() -> None:
    assert count_words("  a  b\nc ") == 3
    assert count_words("") == 0
