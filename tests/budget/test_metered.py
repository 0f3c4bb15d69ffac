"""The metering wrapper: exact accounting and a token budget that is never exceeded."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from ponder.backends.fake import FakeBackend, FunctionBackend, Reply
from ponder.budget.metered import MeteredBackend
from ponder.errors import BudgetExhausted
from ponder.types import Budget, GenRequest, Message, ThinkingConfig

LONG = " ".join(f"w{i}" for i in range(50))


def req(prompt: str = "two words", **kw: Any) -> GenRequest:
    return GenRequest(messages=[Message(role="user", content=prompt)], **kw)


async def test_sums_usage_over_calls_including_prompt_tokens_of_each_call() -> None:
    fake = FakeBackend(["a b c", "d", "e f"])
    meter = MeteredBackend(fake)

    await meter.generate(req("one two three", n=2))
    await meter.generate(req("four five"))

    assert meter.usage.input == 3 + 2
    assert meter.usage.output == 3 + 1 + 2
    assert meter.calls == 2
    assert meter.remaining_tokens is None
    assert meter.exhausted is None


async def test_unlimited_budget_passes_requests_through_unchanged() -> None:
    fake = FakeBackend(["x"])
    r = req(n=3, max_tokens=77)

    await MeteredBackend(fake).generate(r)

    assert fake.calls == [r]


async def test_clips_max_tokens_to_what_is_left() -> None:
    fake = FakeBackend([LONG])
    meter = MeteredBackend(fake, Budget(tokens=10))

    (g,) = await meter.generate(req(max_tokens=512))

    assert fake.calls[0].max_tokens == 10
    assert g.usage.output == 10
    assert meter.remaining_tokens == 0


async def test_smaller_max_tokens_is_kept() -> None:
    fake = FakeBackend([LONG])
    meter = MeteredBackend(fake, Budget(tokens=100))

    await meter.generate(req(max_tokens=7))

    assert fake.calls[0].max_tokens == 7
    assert meter.remaining_tokens == 93


@pytest.mark.parametrize("budget", [1, 2, 5, 7, 10, 23, 64])
@pytest.mark.parametrize("n", [1, 3, 8])
async def test_budget_is_never_exceeded_with_n_samples(budget: int, n: int) -> None:
    meter = MeteredBackend(FakeBackend([LONG]), Budget(tokens=budget))

    with pytest.raises(BudgetExhausted):
        for _ in range(100):
            await meter.generate(req(n=n, max_tokens=512))

    assert meter.usage.completion_tokens == budget
    assert meter.exhausted == "budget"


async def test_splits_what_is_left_evenly_between_samples() -> None:
    fake = FakeBackend([LONG])
    meter = MeteredBackend(fake, Budget(tokens=10))

    gens = await meter.generate(req(n=3))

    assert fake.calls[0].n == 3
    assert fake.calls[0].max_tokens == 3
    assert [g.usage.output for g in gens] == [3, 3, 3]
    assert meter.remaining_tokens == 1


async def test_shrinks_n_when_fewer_tokens_than_samples_remain() -> None:
    fake = FakeBackend([LONG])
    meter = MeteredBackend(fake, Budget(tokens=3))

    gens = await meter.generate(req(n=5))

    assert (fake.calls[0].n, fake.calls[0].max_tokens) == (3, 1)
    assert len(gens) == 3
    assert meter.usage.completion_tokens == 3


async def test_thinking_budget_is_clipped_too() -> None:
    fake = FakeBackend([Reply("Answer: 7", reasoning=LONG)])
    meter = MeteredBackend(fake, Budget(tokens=8))

    (g,) = await meter.generate(req(thinking=ThinkingConfig(budget_tokens=100, min_tokens=50)))

    sent = fake.calls[0]
    assert sent.thinking is not None
    assert sent.thinking.budget_tokens == 8
    assert sent.thinking.min_tokens <= 8
    assert g.usage.completion_tokens <= 8


async def test_raises_budget_when_nothing_is_left_and_makes_no_call() -> None:
    fake = FakeBackend(["one two three"])
    meter = MeteredBackend(fake, Budget(tokens=3))
    await meter.generate(req())

    with pytest.raises(BudgetExhausted) as info:
        await meter.generate(req())

    assert info.value.reason == "budget"
    assert len(fake.calls) == 1
    assert meter.calls == 1
    assert meter.exhausted == "budget"


async def test_zero_budget_refuses_the_first_call() -> None:
    fake = FakeBackend(["x"])

    with pytest.raises(BudgetExhausted):
        await MeteredBackend(fake, Budget(tokens=0)).generate(req())

    assert fake.calls == []


async def test_complete_answer_that_fits_exactly_is_not_marked_exhausted() -> None:
    meter = MeteredBackend(FakeBackend(["one two three"]), Budget(tokens=3))

    (g,) = await meter.generate(req())

    assert g.finish_reason == "stop"
    assert meter.remaining_tokens == 0
    assert meter.exhausted is None


async def test_generation_cut_by_the_budget_marks_it_exhausted() -> None:
    meter = MeteredBackend(FakeBackend([LONG]), Budget(tokens=10))

    gens = await meter.generate(req(n=3))

    assert all(g.finish_reason == "length" for g in gens)
    assert meter.remaining_tokens == 1
    assert meter.exhausted == "budget"


async def test_cut_by_the_callers_own_max_tokens_is_not_a_budget_stop() -> None:
    meter = MeteredBackend(FakeBackend([LONG]), Budget(tokens=100))

    (g,) = await meter.generate(req(max_tokens=5))

    assert g.finish_reason == "length"
    assert meter.exhausted is None


async def test_passes_the_deadline_down_on_the_request() -> None:
    fake = FakeBackend(["x"])
    meter = MeteredBackend(fake, Budget(deadline_s=60))
    assert meter.deadline is not None

    await meter.generate(req())
    earlier = time.monotonic() + 5
    await meter.generate(req(deadline=earlier))
    later = meter.deadline + 100
    await meter.generate(req(deadline=later))

    assert [c.deadline for c in fake.calls] == [meter.deadline, earlier, meter.deadline]


async def test_no_deadline_leaves_the_request_deadline_alone() -> None:
    fake = FakeBackend(["x"])

    await MeteredBackend(fake).generate(req(deadline=123.0))

    assert fake.calls[0].deadline == 123.0


async def test_raises_deadline_after_the_deadline_and_makes_no_call() -> None:
    fake = FakeBackend(["x"])
    meter = MeteredBackend(fake, Budget(deadline_s=0.001))
    await asyncio.sleep(0.01)

    with pytest.raises(BudgetExhausted) as info:
        await meter.generate(req())

    assert info.value.reason == "deadline"
    assert meter.exhausted == "deadline"
    assert fake.calls == []


async def test_generation_stopped_by_the_deadline_marks_it_exhausted() -> None:
    class DeadlineBackend(FunctionBackend):
        async def generate(self, req: GenRequest):  # type: ignore[no-untyped-def]
            gens = await super().generate(req)
            return [g.model_copy(update={"finish_reason": "deadline"}) for g in gens]

    meter = MeteredBackend(DeadlineBackend(lambda r, i: "partial"), Budget(deadline_s=60))

    await meter.generate(req())

    assert meter.exhausted == "deadline"
    assert meter.usage.output == 1


async def test_stream_is_admitted_clipped_and_accounted() -> None:
    fake = FakeBackend([LONG])
    meter = MeteredBackend(fake, Budget(tokens=6))

    text = "".join([d.text async for d in meter.stream(req())])

    assert fake.calls[0].max_tokens == 6
    assert text.split() == LONG.split()[:6]
    assert meter.usage.output == 6
    assert meter.usage.input == 2
    assert meter.calls == 1
    assert meter.exhausted == "budget"
    with pytest.raises(BudgetExhausted):
        [d async for d in meter.stream(req())]


async def test_stream_abandoned_early_still_counts_the_call_and_its_tokens() -> None:
    meter = MeteredBackend(FakeBackend([LONG]), Budget(tokens=100))

    agen = meter.stream(req())
    async for _ in agen:
        break
    await agen.aclose()  # type: ignore[attr-defined]

    assert meter.calls == 1
    assert meter.usage.output == 1
    assert meter.usage.output_estimated
    assert meter.remaining_tokens == 99


async def test_concurrent_calls_of_one_run_never_overshoot_the_budget():
    import asyncio

    from ponder.backends.fake import FunctionBackend
    from ponder.budget.metered import MeteredBackend
    from ponder.types import Budget, GenRequest, Message

    slow = FunctionBackend(lambda req, i: "w " * 100, delay_s=0.01)
    meter = MeteredBackend(slow, Budget(tokens=48))
    req = GenRequest(messages=[Message(role="user", content="q")], n=4, max_tokens=40)

    async def call():
        try:
            return await meter.generate(req)
        except Exception as exc:  # BudgetExhausted for the call that found nothing left
            return exc

    results = await asyncio.gather(call(), call(), call())
    assert meter.usage.completion_tokens <= 48
    # The first call took 12 per sample; the later ones were refused, not admitted twice.
    assert sum(1 for r in results if isinstance(r, list)) == 1
    assert meter._reserved == 0
