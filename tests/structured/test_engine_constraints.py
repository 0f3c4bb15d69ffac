"""Constrained decoding and tool calls on the embedded engine (real 0.5B model)."""

from __future__ import annotations

import json

import pytest

from ponder.structured import validation_errors
from ponder.tools import argument_errors, tool_call_constraint, tools_from_openai
from ponder.types import GenRequest, Message, OutputConstraint, ThinkingConfig, ToolCall

pytestmark = pytest.mark.model

pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (pip install 'ponder[llama]')"
)
pytest.importorskip(
    "llguidance", reason="llguidance is not installed (pip install 'ponder[llama]')"
)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "languages": {"type": "array", "items": {"enum": ["python", "rust", "go"]}, "maxItems": 3},
    },
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}
TOOLS = tools_from_openai(
    [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                    "required": ["city", "unit"],
                    "additionalProperties": False,
                },
            },
        }
    ]
)


@pytest.fixture(scope="module")
def engine():
    from ponder.backends.llama_cpp import LlamaCppBackend

    eng = LlamaCppBackend("qwen2.5-coder-0.5b-instruct", n_ctx=2048, max_sequences=4)
    yield eng
    eng.close()


def user(text: str) -> list[Message]:
    return [Message(role="user", content=text)]


async def test_json_schema_output_is_valid_for_every_sample(engine):
    constraint = OutputConstraint(kind="json_schema", json_schema=PERSON)
    gens = await engine.generate(
        GenRequest(
            messages=user("Describe a fictional programmer as JSON."),
            max_tokens=80,
            n=3,
            temperature=1.0,
            seed=3,
            constraint=constraint,
        )
    )
    for g in gens:
        assert g.finish_reason == "stop", g.text
        assert validation_errors(g.text, constraint) == [], g.text


async def test_the_constraint_applies_to_the_answer_not_the_thought(engine):
    constraint = OutputConstraint(kind="regex", pattern=r"(yes|no)")
    (g,) = await engine.generate(
        GenRequest(
            messages=user("Is 17 a prime number? Answer yes or no."),
            max_tokens=120,
            thinking=ThinkingConfig(budget_tokens=40),
            constraint=constraint,
        )
    )
    assert g.usage.reasoning > 0
    assert g.text in ("yes", "no")


async def test_required_tool_call_through_the_chat_template(engine):
    assert "<tools>" in engine.render(GenRequest(messages=user("Weather in Oslo?"), tools=TOOLS))
    (g,) = await engine.generate(
        GenRequest(
            messages=user("What's the weather in Oslo, in celsius?"),
            tools=TOOLS,
            tool_choice="required",
            constraint=tool_call_constraint(TOOLS, "required", parallel=False),
            max_tokens=60,
        )
    )
    assert g.finish_reason == "tool_calls", g.text
    assert [c.name for c in g.tool_calls] == ["get_weather"]
    assert argument_errors(TOOLS[0], g.tool_calls[0].arguments) == []
    assert json.loads(g.tool_calls[0].arguments)["city"] == "Oslo"


async def test_conversation_ending_in_a_tool_result_is_rendered_and_answered(engine):
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo", "unit": "c"}')
    messages = [
        *user("What's the weather in Oslo?"),
        Message(role="assistant", content="", tool_calls=[call]),
        Message(role="tool", content='{"temperature": 21, "sky": "sunny"}', tool_call_id="call_1"),
    ]
    req = GenRequest(messages=messages, tools=TOOLS, max_tokens=40)
    prompt = engine.render(req)
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}' in prompt
    )
    assert "<tool_response>\n" in prompt
    (g,) = await engine.generate(req)
    assert g.tool_calls is None
    assert "21" in g.text
