"""The Responses surface, driven by the official ``openai`` SDK (``client.responses``).

As for the Anthropic surface, an in-process transport plays the gateway:
translate the SDK's real request, answer with a scripted chat completion or
chunk stream, translate back; the SDK's own types must parse the result.
"""

from __future__ import annotations

import json

import pytest

from ponder.errors import InvalidRequest
from ponder.server.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    ChunkDelta,
    ChunkToolCall,
    PonderInfo,
    tool_calls_to_openai,
)
from ponder.server.surfaces.responses_api import (
    ResponsesStream,
    error_body,
    from_chat_completion,
    parse_responses_request,
    sse,
    stored_conversation,
    to_chat_request,
)
from ponder.types import ToolCall, Usage

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx2" if "httpx2" in dir(openai._base_client) else "httpx")

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
CALL = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo"}')


class FakeGateway:
    def __init__(self, *, reasoning=None, text="Hello.", calls=(), finish="stop"):
        self.reasoning, self.text, self.calls, self.finish = reasoning, text, list(calls), finish
        self.seen: list = []
        self.store: dict[str, list] = {}

    def completion(self) -> ChatCompletion:
        message = AssistantMessage(
            content=self.text,
            reasoning_content=self.reasoning,
            tool_calls=tool_calls_to_openai(self.calls) or None,
        )
        return ChatCompletion(
            model="ponder",
            choices=[Choice(message=message, finish_reason=self.finish)],
            usage=Usage(input=40, reasoning=25, output=10).to_openai(),
            ponder=PonderInfo(strategy="cot"),
        )

    def chunks(self):
        base = {"id": "chatcmpl-x", "created": 0, "model": "ponder"}
        yield ChatCompletionChunk(**base, choices=[ChunkChoice(delta=ChunkDelta(role="assistant"))])
        for piece in ("Two ", "primes."):
            yield ChatCompletionChunk(
                **base, choices=[ChunkChoice(delta=ChunkDelta(reasoning_content=piece))]
            )
        for piece in ("The answer ", "is 5."):
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
            **base, choices=[], usage=Usage(input=40, reasoning=25, output=10).to_openai()
        )

    def __call__(self, request):
        assert request.url.path == "/v1/responses"
        try:
            req = parse_responses_request(json.loads(request.content))
            history = None
            if req.previous_response_id is not None:
                history = self.store.get(req.previous_response_id)
                if history is None:
                    return httpx.Response(
                        404,
                        json={
                            "error": {
                                "message": "no such response",
                                "type": "invalid_request_error",
                            }
                        },
                    )
            chat = to_chat_request(req, history=history)
        except InvalidRequest as exc:
            status, body = error_body(exc)
            return httpx.Response(status, json=body)
        self.seen.append(chat)
        if not chat.stream:
            completion = self.completion()
            out = from_chat_completion(completion, req)
            self.store[out["id"]] = stored_conversation(chat, completion)
            return httpx.Response(200, json=out)
        stream = ResponsesStream(req, model="ponder")
        events = [e for c in self.chunks() for e in stream.feed(c)] + list(stream.finish())
        return httpx.Response(
            200,
            text="".join(sse(n, d) for n, d in events),
            headers={"content-type": "text/event-stream"},
        )


def client(gateway):
    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://ponder.test/v1",
        http_client=httpx.Client(transport=httpx.MockTransport(gateway)),
    )


def test_create_with_instructions_reasoning_and_usage():
    gw = FakeGateway(reasoning="5 is prime.", text="5")
    r = client(gw).responses.create(
        model="ponder",
        input="Smallest prime above 4?",
        instructions="Answer with a number.",
        reasoning={"effort": "low", "summary": "auto"},
        max_output_tokens=300,
        metadata={"app": "t"},
    )
    chat = gw.seen[0]
    assert [(m.role, m.content) for m in chat.messages] == [
        ("system", "Answer with a number."),
        ("user", "Smallest prime above 4?"),
    ]
    assert (
        chat.reasoning_effort == "low" and chat.max_tokens == 300 and chat.metadata == {"app": "t"}
    )
    assert chat.ponder.include_reasoning  # a summary is asked for as visible reasoning
    assert r.output_text == "5" and r.status == "completed"
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert r.output[0].summary[0].text == "5 is prime."
    assert r.usage.output_tokens == 35 and r.usage.output_tokens_details.reasoning_tokens == 25
    assert r.usage.input_tokens == 40


def test_no_summary_requested_means_no_reasoning_forced():
    gw = FakeGateway()
    client(gw).responses.create(model="ponder", input="hi", reasoning={"effort": "medium"})
    assert not gw.seen[0].ponder.include_reasoning and gw.seen[0].reasoning_effort == "medium"


def test_text_format_json_schema_becomes_response_format():
    gw = FakeGateway(text='{"n": 5}')
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    r = client(gw).responses.create(
        model="ponder",
        input="n?",
        text={"format": {"type": "json_schema", "name": "N", "schema": schema, "strict": True}},
    )
    c = gw.seen[0].output_constraint()
    assert c.kind == "json_schema" and c.json_schema == schema
    assert json.loads(r.output_text) == {"n": 5}


def test_function_call_then_previous_response_id_with_the_tool_output():
    gw = FakeGateway(text=None, calls=[CALL], finish="tool_calls")
    sdk = client(gw)
    first = sdk.responses.create(
        model="ponder", input="Weather in Oslo?", tools=[WEATHER], tool_choice="required"
    )
    assert gw.seen[0].tool_choice_value() == "required"
    (call,) = first.output
    assert (
        call.type == "function_call"
        and call.name == "get_weather"
        and json.loads(call.arguments) == {"city": "Oslo"}
    )
    gw.calls, gw.text, gw.finish = [], "Sunny.", "stop"
    second = sdk.responses.create(
        model="ponder",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "21C, sunny"}],
        tools=[WEATHER],
    )
    chat = gw.seen[1]
    assert [m.role for m in chat.messages] == ["user", "assistant", "tool"]
    assert chat.messages[1].core_tool_calls()[0].id == call.call_id
    assert chat.messages[2].content == "21C, sunny"
    assert second.output_text == "Sunny." and second.previous_response_id == first.id


def test_input_items_with_calls_and_outputs_in_one_request():
    gw = FakeGateway()
    client(gw).responses.create(
        model="ponder",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Oslo?"}]},
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "get_weather",
                "arguments": '{"city": "Oslo"}',
            },
            {"type": "function_call_output", "call_id": "c1", "output": "21C"},
        ],
        tools=[WEATHER],
    )
    assert [m.role for m in gw.seen[0].messages] == ["user", "assistant", "tool"]


def test_unknown_previous_response_is_a_404_from_the_caller():
    with pytest.raises(openai.NotFoundError):
        client(FakeGateway()).responses.create(
            model="ponder", input="hi", previous_response_id="resp_nope"
        )


def test_stream_events_rebuild_the_response_in_the_sdk():
    gw = FakeGateway(calls=[CALL], finish="tool_calls")
    with client(gw).responses.stream(
        model="ponder", input="hi", tools=[WEATHER], reasoning={"effort": "high", "summary": "auto"}
    ) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    for kind in (
        "response.reasoning_summary_text.delta",
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "response.output_item.added",
        "response.completed",
    ):
        assert kind in kinds
    assert [o.type for o in final.output] == ["reasoning", "message", "function_call"]
    assert final.output[0].summary[0].text == "Two primes."
    assert final.output_text == "The answer is 5."
    assert json.loads(final.output[2].arguments) == {"city": "Oslo"}
    assert final.usage.output_tokens_details.reasoning_tokens == 25


def test_cut_off_answer_is_incomplete():
    r = client(FakeGateway(finish="length")).responses.create(model="ponder", input="hi")
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "input"),
        ({"input": [{"type": "input_image", "image_url": "x"}]}, "has type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "images are not supported",
        ),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "function tools only"),
        (
            {
                "input": "hi",
                "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 3}}},
            },
            "JSON Schema",
        ),
        ({"input": "hi", "previous_response_id": "resp_1"}, "not loaded"),
        ({"input": "hi", "conversation": "conv_1"}, "previous_response_id"),
        ({"input": "hi", "top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_bad_requests_are_400s(body, fragment):
    with pytest.raises(InvalidRequest) as info:
        to_chat_request(parse_responses_request(body))
    assert fragment in info.value.message


async def test_the_gateways_sse_strings_feed_the_translator():
    from ponder.server.surfaces import chat_chunks

    async def gateway_events():
        yield 'data: {"id": "c", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\n'
        yield 'data: {"error": {"message": "upstream failed", "type": "upstream_error", "code": "x"}}\n\n'
        yield "data: [DONE]\n\n"
        yield 'data: {"never": "read"}\n\n'

    stream = ResponsesStream(parse_responses_request({"input": "hi"}), model="ponder")
    events = [e async for c in chat_chunks(gateway_events()) for e in stream.feed(c)]
    kinds = [name for name, _ in events]
    assert "response.output_text.delta" in kinds and kinds[-1] == "error"
    assert events[-1][1]["message"] == "upstream failed"
