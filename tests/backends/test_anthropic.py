"""The Anthropic backend on recorded Messages API shapes served by httpx.MockTransport."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from ponder.backends.anthropic import (
    AnthropicBackend,
    AnthropicGeneration,
    BlocksMessage,
    assistant_turn,
)
from ponder.errors import InvalidRequest, UpstreamAnswerLost, UpstreamError
from ponder.types import GenRequest, Message, ThinkingConfig

FIXTURES = Path(__file__).parent / "fixtures"
Q = [
    Message(role="system", content="Be brief."),
    Message(role="user", content="What is 27 * 453 + 18?"),
]


class Upstream:
    def __init__(
        self, status: int = 200, body: bytes | None = None, ctype: str = "application/json"
    ):
        self.status, self.body, self.ctype = status, body, ctype
        self.requests: list[dict[str, Any]] = []
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(json.loads(request.content))
        self.headers.append(request.headers)
        body = self.body or (FIXTURES / "anthropic_thinking.json").read_bytes()
        return httpx.Response(self.status, content=body, headers={"content-type": self.ctype})

    def backend(self, model: str = "claude-sonnet-4-5", **kw: Any) -> AnthropicBackend:
        return AnthropicBackend(model, api_key="sk-test", transport=httpx.MockTransport(self), **kw)


async def test_thinking_budget_is_raised_to_the_minimum_and_kept_below_max_tokens():
    up = Upstream()
    b = up.backend()
    await b.generate(
        GenRequest(messages=Q, max_tokens=4000, thinking=ThinkingConfig(budget_tokens=300))
    )
    await b.generate(
        GenRequest(messages=Q, max_tokens=2000, thinking=ThinkingConfig(budget_tokens=5000))
    )
    await b.generate(
        GenRequest(
            messages=Q, max_tokens=800, temperature=0.3, thinking=ThinkingConfig(budget_tokens=500)
        )
    )
    low, high, tiny = up.requests
    assert low["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert high["thinking"] == {"type": "enabled", "budget_tokens": 1999}
    assert "temperature" not in low  # thinking fixes the temperature
    # max_tokens too small for the 1,024 minimum: no thinking, sampling settings apply.
    assert "thinking" not in tiny and tiny["temperature"] == 0.3
    assert low["system"] == "Be brief." and [m["role"] for m in low["messages"]] == ["user"]
    assert up.headers[0]["x-api-key"] == "sk-test"
    assert up.headers[0]["anthropic-version"] == "2023-06-01"


async def test_adaptive_models_get_effort_instead_of_budget_tokens():
    up = Upstream()
    b = up.backend("claude-opus-4-6")
    await b.generate(
        GenRequest(messages=Q, max_tokens=8000, thinking=ThinkingConfig(budget_tokens=6000))
    )
    body = up.requests[0]
    assert body["thinking"] == {"type": "adaptive"}
    assert body["output_config"] == {"effort": "medium"}


# The recorded answer reports 1,076 prompt tokens (1,024 from the cache): a prompt that
# long, or its usage would be clamped as more than the prompt could hold.
CACHED_Q = [
    Message(role="system", content="Be brief. Reference: " + "27 times 453 is 12231. " * 200),
    Q[1],
]


async def test_response_blocks_usage_and_passing_thinking_back():
    up = Upstream()
    b = up.backend(token_counter=lambda text: _words(text))
    (gen,) = await b.generate(
        GenRequest(messages=CACHED_Q, max_tokens=4000, thinking=ThinkingConfig(budget_tokens=2048))
    )
    assert isinstance(gen, AnthropicGeneration)
    assert gen.text == "27 × 453 + 18 = **12249**."
    assert "12231 + 18 = 12249" in gen.reasoning
    assert [blk["type"] for blk in gen.blocks] == ["thinking", "redacted_thinking", "text"]
    u = gen.usage
    # Output includes thinking; the visible text is counted, the rest is reasoning.
    assert (u.input, u.cached_input) == (52, 1024)
    assert u.output == len(gen.text.split()) and u.reasoning == 291 - u.output
    assert u.reasoning_estimated and u.output_estimated and u.clamped == 0

    turn = assistant_turn(gen)
    assert isinstance(turn, BlocksMessage)
    follow = [*Q, turn, Message(role="user", content="And plus 1?")]
    await b.generate(GenRequest(messages=follow, max_tokens=4000))
    sent = up.requests[-1]["messages"][1]["content"]
    assert sent[0]["signature"].startswith("EqQB") and sent[1]["type"] == "redacted_thinking"


async def test_no_thinking_means_reported_output_and_prefill_continuation():
    body = {
        "type": "message",
        "content": [{"type": "text", "text": " 12249"}],
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": 20, "output_tokens": 4},
    }
    up = Upstream(body=json.dumps(body).encode())
    b = up.backend()
    msgs = [*Q, Message(role="assistant", content="The result is")]
    (gen,) = await b.generate(GenRequest(messages=msgs, max_tokens=4, continue_final=True))
    assert up.requests[0]["messages"][-1] == {"role": "assistant", "content": "The result is"}
    assert gen.finish_reason == "length"
    assert (gen.usage.output, gen.usage.reasoning, gen.usage.output_estimated) == (4, 0, False)
    with pytest.raises(InvalidRequest, match="thinking"):
        await b.generate(
            GenRequest(
                messages=msgs,
                continue_final=True,
                max_tokens=4000,
                thinking=ThinkingConfig(budget_tokens=2000),
            )
        )


async def test_n_samples_are_concurrent_requests():
    up = Upstream()
    gens = await up.backend().generate(GenRequest(messages=Q, n=3))
    assert len(gens) == 3 and len(up.requests) == 3


async def test_streaming_thinking_and_text_events():
    up = Upstream(
        body=(FIXTURES / "anthropic_thinking_stream.sse").read_bytes(), ctype="text/event-stream"
    )
    b = up.backend(token_counter=lambda text: _words(text))
    deltas = [
        d
        async for d in b.stream(
            GenRequest(messages=Q, max_tokens=4000, thinking=ThinkingConfig(budget_tokens=2048))
        )
    ]
    assert "12231 + 18 = 12249" in "".join(d.reasoning for d in deltas)
    assert "".join(d.text for d in deltas) == "27 * 453 + 18 = 12249"
    final = deltas[-1]
    assert final.finish_reason == "stop" and final.usage is not None
    assert final.usage.input == 85
    assert final.usage.reasoning + final.usage.output == 176
    assert up.requests[0]["stream"] is True


async def test_overloaded_is_retryable_and_a_truncated_stream_is_never_resent():
    err = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    up = Upstream(status=529, body=json.dumps(err).encode())
    with pytest.raises(UpstreamError, match="Overloaded") as info:
        await up.backend().generate(GenRequest(messages=Q))
    assert info.value.retryable and info.value.upstream_status == 529

    sse = (FIXTURES / "anthropic_thinking_stream.sse").read_text()
    cut = sse[: sse.index("event: message_delta")]
    up = Upstream(body=cut.encode(), ctype="text/event-stream")
    with pytest.raises(UpstreamAnswerLost, match="truncated") as info:
        [d async for d in up.backend().stream(GenRequest(messages=Q))]
    assert not info.value.retryable


async def _words(text: str) -> int:
    return len(text.split())
