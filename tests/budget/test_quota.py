"""Quota windows, the guard that keeps a run inside its reservation, and pricing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ponder.backends.fake import FakeBackend, Reply
from ponder.budget.pricing import Price, PriceTable, to_micro
from ponder.budget.quota import QuotaGuard, estimate_prompt_tokens, window_bounds
from ponder.errors import BudgetExhausted
from ponder.types import GenRequest, Message, ThinkingConfig, Usage


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[arg-type]


def test_windows_are_utc_calendar_periods() -> None:
    now = ts(2024, 12, 31, 23, 59, 30)
    assert window_bounds("minute", now) == (ts(2024, 12, 31, 23, 59), ts(2025, 1, 1, 0, 0))
    assert window_bounds("day", now) == (ts(2024, 12, 31), ts(2025, 1, 1))
    assert window_bounds("month", now) == (ts(2024, 12, 1), ts(2025, 1, 1))
    assert window_bounds("month", ts(2024, 2, 10)) == (ts(2024, 2, 1), ts(2024, 3, 1))


def req(text: str = "a b c", **kw: object) -> GenRequest:
    return GenRequest(messages=[Message(role="user", content=text)], **kw)  # type: ignore[arg-type]


async def test_guard_clips_calls_to_the_allowance_and_then_refuses() -> None:
    fake = FakeBackend([Reply("one two three four five six seven eight nine ten")])
    prompt = estimate_prompt_tokens(fake, req().messages)  # 5 bytes + 4
    guard = QuotaGuard(fake, allowance=prompt + 6)
    (gen,) = await guard.generate(req(max_tokens=100))
    assert fake.calls[-1].max_tokens == 6
    assert gen.usage.output == 6 and guard.used == 3 + 6
    # 9 of the 15 are used; the next prompt alone is estimated at 9: no room for a token.
    with pytest.raises(BudgetExhausted, match="reserved for this request are spent"):
        await guard.generate(req(max_tokens=100))
    assert len(fake.calls) == 1


async def test_guard_clips_thinking_and_splits_across_samples() -> None:
    fake = FakeBackend([Reply("x", reasoning="r " * 50)])
    prompt = estimate_prompt_tokens(fake, req().messages)
    guard = QuotaGuard(fake, allowance=prompt + 20)
    await guard.generate(req(n=4, max_tokens=100, thinking=ThinkingConfig(budget_tokens=50)))
    sent = fake.calls[-1]
    assert sent.max_tokens == 5 and sent.thinking is not None and sent.thinking.budget_tokens == 5


async def test_guard_records_stream_usage_and_first_token() -> None:
    guard = QuotaGuard(FakeBackend([Reply("a b c")]))
    assert guard.ttft_s is None
    pieces = [d async for d in guard.stream(req())]
    assert "".join(d.text for d in pieces) == "a b c"
    assert guard.usage.output == 3 and guard.ttft_s is not None and guard.engine_s >= 0


def test_prices_cost_and_worst_case() -> None:
    price = Price(input=1.0, output=2.0, cached_input=0.5, reasoning=4.0, gpu_second=0.001)
    usage = Usage(input=10, cached_input=4, reasoning=5, output=3)
    # 10x1 + 4x0.5 + 3x2 + 5x4 = 38 micro-USD, plus 2 s x 0.001 USD = 2000 micro-USD.
    assert price.cost_micro(usage) == 38
    assert price.cost_micro(usage, engine_s=2.0) == 2_038
    assert price.worst_case_micro(14, 8, 0.0) == 14 * 1 + 8 * 4
    assert price.tokens_for_micro(100, 20) == (100 - 20) // 4
    assert Price().tokens_for_micro(100, 20) is None  # free tokens are never the limit
    assert Price(input=1.0, output=2.0).reasoning_rate == 2.0  # reasoning billed as output
    table = PriceTable(models={"big": price})
    assert table.for_model("big") is price and table.for_model("other") == Price()
    assert to_micro(0.0000261) == 27  # money rounds up, never down


async def test_guard_runs_over_an_upstream_whose_token_counter_is_async() -> None:
    """An OpenAI-compatible upstream counts tokens over the network (async): the guard's
    synchronous estimate falls back to bytes instead of failing on a coroutine."""
    from ponder.backends.openai_compat import OpenAICompatBackend

    upstream = OpenAICompatBackend("http://127.0.0.1:9/v1", flavor="vllm")
    try:
        messages = [Message(role="user", content="héllo")]
        assert estimate_prompt_tokens(upstream, messages) == len("héllo".encode()) + 4
    finally:
        await upstream.aclose()
