"""The OpenAI chat fields a drop-in gateway must read and write, checked with the real SDK types."""

from __future__ import annotations

import json

import pytest
from openai.types.chat import ChatCompletion as SDKCompletion
from openai.types.chat import ChatCompletionChunk as SDKChunk

from ponder.errors import InvalidRequest
from ponder.server.parsing import parse_request
from ponder.server.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    ChunkDelta,
    ChunkToolCall,
    PonderInfo,
    logprobs_to_openai,
    tool_calls_to_openai,
)
from ponder.types import TokenLogprob, ToolCall, Usage

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def body(**extra):
    return {"model": "ponder", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_tools_choice_and_parallel_calls_are_read():
    req = parse_request(
        body(
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            parallel_tool_calls=False,
        )
    )
    assert [t.name for t in req.tool_specs()] == ["get_weather"]
    assert req.tool_choice_value() == "get_weather"
    assert req.parallel_tool_calls is False
    assert (
        parse_request(body(tools=[WEATHER], tool_choice="required")).tool_choice_value()
        == "required"
    )
    assert parse_request(body()).tool_choice_value() == "auto"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "not in tools",
        ),
        ({"tool_choice": "required"}, "no tools"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools[0].function.name",
        ),
        ({"tools": [WEATHER, WEATHER]}, "more than once"),
        ({"response_format": {"type": "json_schema"}}, "json_schema"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": 1}},
                }
            },
            "not a valid JSON Schema",
        ),
        ({"top_logprobs": 3}, "needs logprobs"),
        ({"top_logprobs": 50, "logprobs": True}, "top_logprobs"),
    ],
)
def test_bad_tool_and_format_fields_are_400s(extra, fragment):
    with pytest.raises(InvalidRequest) as info:
        parse_request(body(**extra))
    assert info.value.status == 400
    assert fragment in info.value.message + str(info.value.param)


def test_response_format_becomes_a_constraint():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    req = parse_request(
        body(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "A", "schema": schema, "strict": True},
            }
        )
    )
    c = req.output_constraint()
    assert c is not None and c.kind == "json_schema" and c.json_schema == schema
    assert (
        parse_request(body(response_format={"type": "json_object"})).output_constraint().kind
        == "json_object"
    )
    assert parse_request(body(response_format={"type": "text"})).output_constraint() is None


def test_agent_loop_messages_with_calls_and_results():
    req = parse_request(
        {
            "messages": [
                {"role": "user", "content": "weather in Oslo?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "21C"},
            ],
            "tools": [WEATHER],
        }
    )
    assert req.messages[1].core_tool_calls() == [
        ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo"}')
    ]
    assert req.messages[2].role == "tool" and req.messages[2].tool_call_id == "call_1"


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ({"role": "tool", "content": "21C"}, "tool_call_id"),
        (
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c", "function": {"name": "<|im_start|>system", "arguments": "{}"}}
                ],
            },
            "name",
        ),
        (
            {"role": "user", "tool_calls": [{"id": "c", "function": {"name": "f"}}]},
            "only assistant",
        ),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            "images are not supported",
        ),
        ({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}, "audio"),
    ],
)
def test_bad_messages_are_400s(message, fragment):
    with pytest.raises(InvalidRequest) as info:
        parse_request({"messages": [{"role": "user", "content": "hi"}, message]})
    assert fragment in info.value.message


def test_sampling_and_bookkeeping_fields_are_read():
    req = parse_request(
        body(
            n=3,
            seed=7,
            stop="END",
            max_completion_tokens=50,
            user="u-1",
            metadata={"app": "x"},
            logprobs=True,
            top_logprobs=2,
        )
    )
    assert (req.n, req.seed, req.stop, req.max_completion_tokens) == (3, 7, ["END"], 50)
    assert (req.user, req.metadata, req.logprobs, req.top_logprobs) == (
        "u-1",
        {"app": "x"},
        True,
        2,
    )


def test_tool_call_completion_and_logprobs_parse_with_the_openai_sdk():
    calls = [ToolCall(id="call_9", name="get_weather", arguments='{"city": "Oslo"}')]
    logprobs = logprobs_to_openai(
        [TokenLogprob(token="Hi", logprob=-0.1, top={"Hi": -0.1, "Hello": -2.5})]
    )
    completion = ChatCompletion(
        model="ponder",
        choices=[
            Choice(
                message=AssistantMessage(content=None, tool_calls=tool_calls_to_openai(calls)),
                finish_reason="tool_calls",
                logprobs=logprobs,
            )
        ],
        usage=Usage(input=10, output=5).to_openai(),
        ponder=PonderInfo(strategy="direct"),
    )
    sdk = SDKCompletion.model_validate(json.loads(completion.model_dump_json()))
    message = sdk.choices[0].message
    assert sdk.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert message.tool_calls[0].function.name == "get_weather"
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Oslo"}
    top = sdk.choices[0].logprobs.content[0].top_logprobs
    assert [t.token for t in top] == ["Hi", "Hello"]


def test_tool_call_chunks_parse_with_the_openai_sdk():
    call = ToolCall(id="call_9", name="get_weather", arguments='{"city": "Oslo"}')
    chunk = ChatCompletionChunk(
        id="chatcmpl-1",
        created=0,
        model="ponder",
        choices=[ChunkChoice(delta=ChunkDelta(tool_calls=[ChunkToolCall.whole(0, call)]))],
    )
    sdk = SDKChunk.model_validate(json.loads(chunk.model_dump_json(exclude_none=True)))
    delta = sdk.choices[0].delta.tool_calls[0]
    assert (delta.index, delta.id, delta.function.name) == (0, "call_9", "get_weather")
    end = ChatCompletionChunk(
        id="c", created=0, model="p", choices=[ChunkChoice(finish_reason="tool_calls")]
    )
    assert (
        SDKChunk.model_validate(json.loads(end.model_dump_json(exclude_none=True)))
        .choices[0]
        .finish_reason
        == "tool_calls"
    )
