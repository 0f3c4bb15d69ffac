"""The Anthropic Messages surface, driven by the official ``anthropic`` SDK.

The SDK talks to an in-process transport that does what the gateway will do:
translate the request with the surface, answer with a chat completion (or
chunk stream), and translate that back. So the request shapes tested are the
ones the SDK really sends, and the responses must parse with the SDK's types.
"""

from __future__ import annotations

import json

import pytest

from ponder.errors import InvalidRequest, QuotaExceeded
from ponder.server.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    ChunkDelta,
    ChunkToolCall,
    PonderInfo,
    PonderProgress,
    StreamProgress,
    tool_calls_to_openai,
)
from ponder.server.surfaces.anthropic_messages import (
    MessagesStream,
    auth_headers,
    error_body,
    error_from_openai,
    from_chat_completion,
    parse_messages_request,
    sse,
    to_chat_request,
)
from ponder.types import ToolCall, Usage

anthropic = pytest.importorskip("anthropic")
# The SDK's own HTTP package (newer releases use httpx2, older ones httpx).
httpx = pytest.importorskip("httpx2" if "httpx2" in dir(anthropic._base_client) else "httpx")

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
CALL = ToolCall(id="toolu_1", name="get_weather", arguments='{"city": "Oslo"}')


class FakeGateway:
    """Answers /v1/messages the way the gateway will, with a scripted completion."""

    def __init__(self, *, reasoning=None, text="It is sunny.", calls=(), finish="stop", error=None):
        self.reasoning, self.text, self.calls, self.finish, self.error = (
            reasoning,
            text,
            list(calls),
            finish,
            error,
        )
        self.seen: list = []
        self.headers: list = []

    def completion(self) -> ChatCompletion:
        message = AssistantMessage(
            content=self.text,
            reasoning_content=self.reasoning,
            tool_calls=tool_calls_to_openai(self.calls) or None,
        )
        return ChatCompletion(
            model="ponder",
            choices=[Choice(message=message, finish_reason=self.finish)],
            usage=Usage(input=30, cached_input=2, reasoning=12, output=8).to_openai(),
            ponder=PonderInfo(strategy="cot"),
        )

    def chunks(self):
        base = {"id": "chatcmpl-x", "created": 0, "model": "ponder"}
        progress = PonderProgress(progress=StreamProgress(phase="running"))
        yield ChatCompletionChunk(**base, choices=[], ponder=progress)
        yield ChatCompletionChunk(**base, choices=[ChunkChoice(delta=ChunkDelta(role="assistant"))])
        for piece in ("Let me ", "think."):
            yield ChatCompletionChunk(
                **base, choices=[ChunkChoice(delta=ChunkDelta(reasoning_content=piece))]
            )
        for piece in ("Checking ", "now."):
            yield ChatCompletionChunk(
                **base, choices=[ChunkChoice(delta=ChunkDelta(content=piece))]
            )
        for i, call in enumerate(self.calls):
            yield ChatCompletionChunk(
                **base,
                choices=[ChunkChoice(delta=ChunkDelta(tool_calls=[ChunkToolCall.whole(i, call)]))],
            )
        yield ChatCompletionChunk(**base, choices=[ChunkChoice(finish_reason=self.finish)])
        yield ChatCompletionChunk(
            **base, choices=[], usage=Usage(input=30, reasoning=12, output=8).to_openai()
        )

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/messages"
        self.headers.append(auth_headers(request.headers))
        try:
            if self.error is not None:
                raise self.error
            parsed = parse_messages_request(json.loads(request.content))
            chat = to_chat_request(parsed)
        except InvalidRequest as exc:
            status, body = error_body(exc)
            return httpx.Response(status, json=body)
        except QuotaExceeded as exc:
            status, body = error_body(exc)
            return httpx.Response(status, json=body)
        self.seen.append(chat)
        if not chat.stream:
            return httpx.Response(
                200, json=from_chat_completion(self.completion(), model=parsed.model)
            )
        stream = MessagesStream(model=parsed.model or "ponder")
        events = [e for c in self.chunks() for e in stream.feed(c)] + list(stream.finish())
        text = "".join(sse(name, data) for name, data in events)
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})


def client(gateway: FakeGateway):
    return anthropic.Anthropic(
        api_key="sk-test",
        base_url="http://ponder.test",
        http_client=httpx.Client(transport=httpx.MockTransport(gateway)),
    )


def test_create_with_thinking_system_and_tools():
    gw = FakeGateway(reasoning="17 is prime.", text="Yes.")
    msg = client(gw).messages.create(
        model="ponder",
        max_tokens=512,
        system="Be brief.",
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Is 17 prime?"}],
        tools=[WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stop_sequences=["END"],
        metadata={"user_id": "u-7"},
    )
    chat = gw.seen[0]
    assert [m.role for m in chat.messages] == ["system", "user"]
    assert chat.messages[0].content == "Be brief."
    assert chat.thinking.type == "enabled" and chat.thinking.budget_tokens == 1024
    assert chat.ponder.include_reasoning  # asked for; the gateway applies the scope rule
    assert chat.max_tokens == 512 and chat.stop == ["END"] and chat.user == "u-7"
    assert chat.tool_choice_value() == "required" and chat.parallel_tool_calls is False
    assert chat.tool_specs()[0].parameters == WEATHER["input_schema"]
    assert gw.headers[0]["authorization"] == "Bearer sk-test"
    # The SDK parsed our Message: thinking first, then text; usage in Anthropic's buckets.
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == "17 is prime." and msg.content[1].text == "Yes."
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens, msg.usage.output_tokens) == (
        30,
        2,
        20,
    )


def test_no_thinking_block_when_the_gateway_hid_the_reasoning():
    msg = client(FakeGateway(reasoning=None, text="Yes.")).messages.create(
        model="ponder",
        max_tokens=64,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Is 17 prime?"}],
    )
    assert [b.type for b in msg.content] == ["text"]


def test_tool_use_answer_and_a_conversation_ending_in_a_tool_result():
    gw = FakeGateway(text=None, calls=[CALL], finish="tool_calls")
    sdk = client(gw)
    first = sdk.messages.create(
        model="ponder",
        max_tokens=64,
        tools=[WEATHER],
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
    )
    assert first.stop_reason == "tool_use"
    (use,) = first.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Oslo"}
    gw.calls, gw.text, gw.finish = [], "Sunny, 21C.", "stop"
    sdk.messages.create(
        model="ponder",
        max_tokens=64,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": use.id,
                        "content": [{"type": "text", "text": "21C"}],
                    }
                ],
            },
        ],
    )
    chat = gw.seen[1]
    assert [m.role for m in chat.messages] == ["user", "assistant", "tool"]
    assert chat.messages[1].core_tool_calls()[0].name == "get_weather"
    assert json.loads(chat.messages[1].core_tool_calls()[0].arguments) == {"city": "Oslo"}
    assert (chat.messages[2].tool_call_id, chat.messages[2].content) == (use.id, "21C")


def test_adaptive_thinking_leaves_the_choice_to_the_router():
    gw = FakeGateway()
    client(gw).messages.create(
        model="ponder",
        max_tokens=64,
        thinking={"type": "adaptive"},
        messages=[{"role": "user", "content": "hi"}],
    )
    assert gw.seen[0].thinking is None and gw.seen[0].reasoning_effort is None
    plain = FakeGateway()
    client(plain).messages.create(
        model="ponder", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    )
    assert not plain.seen[0].ponder.include_reasoning


def test_stream_events_rebuild_the_message_in_the_sdk():
    gw = FakeGateway(calls=[CALL], finish="tool_calls")
    with client(gw).messages.stream(
        model="ponder",
        max_tokens=256,
        tools=[WEATHER],
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
    ) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert gw.seen[0].stream and gw.seen[0].stream_options.include_usage
    assert kinds[0] == "message_start" and "ping" not in kinds[:1]
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[0].thinking == "Let me think."
    assert final.content[1].text == "Checking now."
    assert final.content[2].input == {"city": "Oslo"}
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == 20


def test_stream_translation_event_order():
    stream = MessagesStream(model="ponder")
    chunk = {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}
    events = [name for name, _ in stream.feed(chunk)] + [name for name, _ in stream.finish()]
    assert events == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_errors_reach_the_sdk_in_anthropic_shape():
    gw = FakeGateway()
    with pytest.raises(anthropic.BadRequestError) as info:
        client(gw).messages.create(
            model="ponder",
            max_tokens=64,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AA=="},
                        }
                    ],
                }
            ],
        )
    assert "images are not supported" in str(info.value)
    assert info.value.body["error"]["type"] == "invalid_request_error"
    refusal = QuotaExceeded(
        "token quota of key k is used up",
        limit={"metric": "tokens"},
        usage={"tokens": 10},
        resets_at=None,
        retry_after_s=60,
    )
    with pytest.raises(anthropic.RateLimitError) as limited:
        client(FakeGateway(error=refusal)).with_options(max_retries=0).messages.create(
            model="ponder", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert limited.value.body["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
        ({"max_tokens": 5, "messages": []}, "messages"),
        (
            {
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            "server tool",
        ),
        (
            {
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
                "tool_choice": {"type": "tool"},
            },
            "needs a name",
        ),
        (
            {
                "max_tokens": 5,
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "x"}]}
                ],
            },
            "cannot carry",
        ),
    ],
)
def test_bad_requests_are_400s(body, fragment):
    with pytest.raises(InvalidRequest) as info:
        to_chat_request(parse_messages_request(body))
    assert fragment in info.value.message


def test_gateway_error_values_convert_to_anthropic_bodies():
    exc = InvalidRequest("messages[0].content: bad", param="messages")
    assert error_from_openai(400, exc.to_openai()) == error_body(exc)[1]
    assert error_from_openai(503, {"error": {"message": "down"}})["error"]["type"] == "api_error"


def test_a_mid_stream_gateway_error_becomes_an_anthropic_error_event():
    stream = MessagesStream(model="ponder")
    events = list(stream.feed({"error": {"message": "upstream failed", "type": "upstream_error"}}))
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "upstream failed"}},
    )
