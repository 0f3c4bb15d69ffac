"""Tools, structured outputs, logprobs and n through the gateway's one governed path.

Scripted fake backends stand in for the model; the real engine and real SDK
clients are exercised in tests/server/test_dropin_e2e.py.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from openai.types.chat import ChatCompletion as SDKCompletion
from openai.types.chat import ChatCompletionChunk as SDKChunk

from ponder.backends.fake import FakeBackend, FunctionBackend, Reply
from ponder.config import ServerSettings
from ponder.server.app import create_app
from ponder.server.gateway import Gateway
from ponder.types import GenRequest

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
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def client_for(backend: Any, **settings: Any) -> httpx.AsyncClient:
    gateway = Gateway(backend, ServerSettings(**settings))
    app = create_app(backend, gateway=gateway)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def body(content: str = "Weather in Paris?", **extra: Any) -> dict[str, Any]:
    return {"model": "fake", "messages": [{"role": "user", "content": content}], **extra}


def sse_chunks(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[len("data: ") :]))
    return out


async def test_tool_call_answer_is_message_tool_calls_with_json_arguments() -> None:
    backend = FakeBackend([CALL_TEXT])
    async with client_for(backend) as client:
        r = await client.post(
            "/v1/chat/completions", json=body(tools=[WEATHER], tool_choice="required")
        )
    assert r.status_code == 200, r.text
    sdk = SDKCompletion.model_validate(r.json())
    choice = sdk.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    # The request's tools, choice and the call grammar reached the backend.
    (req,) = backend.calls
    assert [t.name for t in req.tools] == ["get_weather"]
    assert req.tool_choice == "required"
    assert req.constraint is not None and req.constraint.kind == "lark"


async def test_auto_tool_choice_is_unconstrained_and_prose_stays_content() -> None:
    backend = FakeBackend(["It is sunny."])
    async with client_for(backend) as client:
        r = await client.post("/v1/chat/completions", json=body(tools=[WEATHER]))
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == "It is sunny."
    assert "tool_calls" not in choice["message"]
    assert backend.calls[0].constraint is None


async def test_conversation_ending_in_a_tool_result_reaches_the_backend() -> None:
    backend = FakeBackend(["It is 21 C in Paris."])
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    ]
    async with client_for(backend) as client:
        r = await client.post(
            "/v1/chat/completions", json={"model": "fake", "messages": messages, "tools": [WEATHER]}
        )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "It is 21 C in Paris."
    sent = backend.calls[0].messages
    (assistant,) = [m for m in sent if m.role == "assistant"]
    assert assistant.tool_calls[0].name == "get_weather"
    # The tool result is wrapped as untrusted input and still names its call.
    assert sent[-1].role == "tool" and sent[-1].tool_call_id == "call_1"
    assert '{"temp_c": 21}' in sent[-1].content


async def test_response_format_becomes_the_generation_constraint() -> None:
    backend = FakeBackend(['{"city": "Paris"}'])
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "c", "schema": schema, "strict": True}}
    async with client_for(backend) as client:
        r = await client.post("/v1/chat/completions", json=body(response_format=fmt))
    assert r.status_code == 200
    constraint = backend.calls[0].constraint
    assert constraint is not None and constraint.kind == "json_schema"
    assert constraint.json_schema is not None and constraint.json_schema["properties"] == {
        "city": {"type": "string"}
    }


async def test_logprobs_and_top_logprobs_come_back_in_openai_shape() -> None:
    backend = FakeBackend([Reply("four", logprob=-0.25)])
    async with client_for(backend) as client:
        r = await client.post("/v1/chat/completions", json=body(logprobs=True, top_logprobs=2))
    sdk = SDKCompletion.model_validate(r.json())
    lp = sdk.choices[0].logprobs
    assert lp is not None and lp.content is not None
    assert [t.token for t in lp.content] == ["four"]
    assert lp.content[0].logprob == -0.25
    assert backend.calls[0].logprobs is True and backend.calls[0].top_logprobs == 2
    # Not asked: none sent, none taken.
    async with client_for(FakeBackend(["x"])) as client:
        r = await client.post("/v1/chat/completions", json=body())
    assert r.json()["choices"][0].get("logprobs") is None


async def test_penalties_and_logit_bias_reach_every_generation_of_the_run() -> None:
    backend = FakeBackend(["4", "4", "5"])
    extra = {
        "presence_penalty": 0.5,
        "frequency_penalty": 1.5,
        "logit_bias": {"151643": -100},
        "top_k": 20,
    }
    strategy = {"strategy": "self_consistency", "params": {"n": 3}}
    async with client_for(backend) as client:
        r = await client.post("/v1/chat/completions", json=body("2+2?", ponder=strategy, **extra))
    assert r.status_code == 200, r.text
    assert backend.calls
    for call in backend.calls:
        assert (call.presence_penalty, call.frequency_penalty) == (0.5, 1.5)
        assert call.logit_bias == {151643: -100.0}
        assert call.top_k == 20


async def test_n_returns_independent_choices_from_one_batched_call() -> None:
    backend = FunctionBackend(lambda req, i: f"answer {i}")
    async with client_for(backend) as client:
        r = await client.post("/v1/chat/completions", json=body(n=3, temperature=0.8))
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert [c["message"]["content"] for c in choices] == ["answer 0", "answer 1", "answer 2"]
    (req,) = backend.calls
    assert req.n == 3


async def test_n_with_a_multi_sample_strategy_or_stream_is_a_clear_400() -> None:
    backend = FakeBackend(["x"])
    async with client_for(backend) as client:
        r = await client.post(
            "/v1/chat/completions", json=body(n=2, ponder={"strategy": "self_consistency"})
        )
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "n"
        r = await client.post("/v1/chat/completions", json=body(n=2, stream=True))
        assert r.status_code == 400
    assert backend.calls == []


async def test_streamed_tool_call_arrives_as_openai_tool_call_deltas() -> None:
    backend = FakeBackend(["Let me check. " + CALL_TEXT])
    async with client_for(backend) as client:
        r = await client.post("/v1/chat/completions", json=body(tools=[WEATHER], stream=True))
    chunks = [SDKChunk.model_validate(c) for c in sse_chunks(r.text)]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "<tool_call>" not in text and text.strip() == "Let me check."
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id and deltas[0].function and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(arguments) == {"city": "Paris"}
    assert {d.index for d in deltas} == {0}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls"


async def test_self_consistency_votes_on_tool_calls() -> None:
    other = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    # Same call with other key order / spacing counts as the same vote.
    same = '<tool_call>\n{"arguments": {"city":"Paris"}, "name": "get_weather"}\n</tool_call>'

    def reply(req: GenRequest, i: int) -> str:
        return [other, CALL_TEXT, same][i % 3]

    backend = FunctionBackend(reply)
    async with client_for(backend) as client:
        r = await client.post(
            "/v1/chat/completions",
            json=body(
                tools=[WEATHER],
                tool_choice="required",
                ponder={"strategy": "self_consistency", "params": {"n": 3}},
            ),
        )
    assert r.status_code == 200, r.text
    (call,) = r.json()["choices"][0]["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
