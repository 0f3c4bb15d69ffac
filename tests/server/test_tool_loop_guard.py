"""The gateway breaks a small model's tool loop: a call repeated with the arguments whose
result the conversation already holds is asked again with tools off."""

from __future__ import annotations

from ponder.backends.fake import FunctionBackend
from ponder.server.execution import ToolLoopGuard, ToolParsing
from ponder.types import GenRequest, Message, ToolCall, ToolSpec

WEATHER = ToolSpec(
    name="get_temperature",
    description="The temperature of a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)
CALL = '<tool_call>{"name": "get_temperature", "arguments": {"city": "Paris"}}</tool_call>'


def looping_model(req: GenRequest, i: int) -> str:
    # Calls the tool whenever it may, whatever it was told: the loop to break.
    return CALL if req.tools else "It is 23 C in Paris."


def guarded() -> tuple[ToolLoopGuard, FunctionBackend]:
    backend = FunctionBackend(looping_model)
    return ToolLoopGuard(ToolParsing(backend)), backend


def after_result(**update: object) -> GenRequest:
    messages = [
        Message(role="user", content="What is the temperature in Paris?"),
        Message(
            role="assistant",
            content="",
            tool_calls=[ToolCall(id="c1", name="get_temperature", arguments='{"city":"Paris"}')],
        ),
        Message(role="tool", content="23", tool_call_id="c1"),
    ]
    return GenRequest(messages=messages, tools=[WEATHER], max_tokens=32, **update)


async def test_a_repeated_answered_call_is_asked_again_without_tools() -> None:
    guard, backend = guarded()
    (gen,) = await guard.generate(after_result())
    assert gen.text == "It is 23 C in Paris." and not gen.tool_calls
    assert len(backend.calls) == 2 and backend.calls[1].tools == []
    assert backend.calls[1].tool_choice == "none"
    # The retry states the call and its result in words: no call syntax left to copy.
    retry = backend.calls[1].messages
    assert [m.role for m in retry] == ["user", "user"] and not any(m.tool_calls for m in retry)
    assert 'get_temperature({"city":"Paris"}) returned: 23' in retry[-1].content
    # Both generations were spent: the answer's usage counts the discarded call too.
    answer_words = 6  # "It is 23 C in Paris." as the fake counts tokens
    assert gen.usage.output > answer_words
    assert guard.loops_broken == 1


async def test_a_first_call_or_a_new_call_is_left_alone() -> None:
    guard, backend = guarded()
    first = GenRequest(
        messages=[Message(role="user", content="What is the temperature in Paris?")],
        tools=[WEATHER],
        max_tokens=32,
    )
    (gen,) = await guard.generate(first)
    assert [c.name for c in gen.tool_calls] == ["get_temperature"] and len(backend.calls) == 1
    # A call with other arguments than the answered one is a new step of the agent.
    req = after_result()
    req.messages[1] = req.messages[1].model_copy(
        update={
            "tool_calls": [ToolCall(id="c1", name="get_temperature", arguments='{"city":"Rome"}')]
        }
    )
    (gen,) = await guard.generate(req)
    assert gen.tool_calls and len(backend.calls) == 2


async def test_a_required_call_stays_the_callers_choice() -> None:
    guard, backend = guarded()
    (gen,) = await guard.generate(after_result(tool_choice="required"))
    assert gen.tool_calls and len(backend.calls) == 1


async def test_calls_repeated_as_bare_json_lines_count_as_a_loop() -> None:
    bare = '{"name": "get_temperature", "arguments": {"city": "Paris"}}'

    def repeats_as_text(req: GenRequest, i: int) -> str:
        return f"{bare}\n{bare}\n" if req.tools else "It is 23 C in Paris."

    backend = FunctionBackend(repeats_as_text)
    guard = ToolLoopGuard(ToolParsing(backend))
    (gen,) = await guard.generate(after_result())
    assert gen.text == "It is 23 C in Paris." and len(backend.calls) == 2
