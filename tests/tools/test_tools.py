"""Tool specs, prompts, parsing, validation and voting keys (no model needed)."""

from __future__ import annotations

import json

import pytest

from ponder.errors import InvalidRequest
from ponder.tools import (
    ToolCallStreamParser,
    argument_errors,
    call_errors,
    generation_is_valid,
    generation_vote_key,
    hermes_messages,
    parse_tool_calls,
    template_messages,
    tool_call_constraint,
    tool_call_key,
    tool_choice_from_openai,
    tools_for_prompt,
    tools_from_openai,
    with_tool_calls,
)
from ponder.types import Generation, Message, OutputConstraint, ToolCall, ToolSpec

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


@pytest.fixture
def tools() -> list[ToolSpec]:
    return tools_from_openai([WEATHER, TIME])


def test_openai_tools_become_specs(tools):
    assert [t.name for t in tools] == ["get_weather", "get_time"]
    assert tools[0].parameters["required"] == ["city"]
    # A function without parameters takes an empty object.
    assert tools[1].parameters == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        ({"type": "function"}, "tools"),
        ([{"type": "code_interpreter"}], "tools[0]"),
        ([{"type": "function", "function": {"name": "has space"}}], "tools[0].function.name"),
        ([{"type": "function", "function": {}}], "tools[0].function.name"),
        (
            [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}],
            "tools[0].function.parameters",
        ),
        ([TIME, TIME], "tools"),
    ],
)
def test_malformed_tools_are_400s_naming_the_field(tools, param):
    with pytest.raises(InvalidRequest) as info:
        tools_from_openai(tools)
    assert info.value.param == param


def test_tool_choice_forms(tools):
    assert tool_choice_from_openai(None, tools) == "auto"
    assert tool_choice_from_openai("required", tools) == "required"
    named = {"type": "function", "function": {"name": "get_time"}}
    assert tool_choice_from_openai(named, tools) == "get_time"
    assert [t.name for t in tools_for_prompt(tools, "get_time")] == ["get_time"]
    assert tools_for_prompt(tools, "none") == []
    with pytest.raises(InvalidRequest, match="not in tools"):
        tool_choice_from_openai({"type": "function", "function": {"name": "nope"}}, tools)
    with pytest.raises(InvalidRequest, match="no tools"):
        tool_choice_from_openai("required", [])
    with pytest.raises(InvalidRequest):
        tool_choice_from_openai("sometimes", tools)


def test_parse_hermes_calls_and_keep_the_prose(tools):
    text = (
        "Let me check.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    )
    parsed = parse_tool_calls(text, tools)
    assert [c.name for c in parsed.calls] == ["get_weather", "get_time"]
    assert json.loads(parsed.calls[0].arguments) == {"city": "Oslo"}
    assert parsed.content == "Let me check."
    assert parsed.errors == []
    assert parsed.calls[0].id != parsed.calls[1].id and parsed.calls[0].id.startswith("call_")


def test_unterminated_string_arguments_and_broken_blocks(tools):
    cut = parse_tool_calls('<tool_call>\n{"name": "get_time", "arguments": "{}"}', tools)
    assert [c.name for c in cut.calls] == ["get_time"] and cut.calls[0].arguments == "{}"
    broken = parse_tool_calls(
        '<tool_call>{"name": "get_weather", "arguments": {</tool_call>', tools
    )
    assert broken.calls == [] and "not valid JSON" in broken.errors[0]
    assert broken.content.startswith("<tool_call>")  # nothing the model wrote is lost
    unknown = parse_tool_calls('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>', tools)
    assert unknown.calls == [] and "not in tools" in unknown.errors[0]
    assert parse_tool_calls("Just text.", tools).content == "Just text."


def test_stream_parser_holds_back_a_possible_tag_and_emits_whole_calls(tools):
    text = (
        'Sure. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call> ok'
    )
    parser = ToolCallStreamParser(tools)
    prose, calls = "", []
    for i in range(0, len(text), 3):  # 3-character deltas split the tags
        p, c = parser.feed(text[i : i + 3])
        assert "<" not in p or "tool" not in p
        prose += p
        calls += c
    p, c = parser.finish()
    prose += p
    calls += c
    assert prose == "Sure.  ok"
    assert [json.loads(c.arguments) for c in calls] == [{"city": "Rome"}]


def test_stream_parser_flushes_an_unclosed_call_and_a_lone_angle_bracket(tools):
    parser = ToolCallStreamParser(tools)
    assert parser.feed("a <") == ("a ", [])
    assert parser.feed("b") == ("<b", [])
    parser.feed('<tool_call>{"name": "get_time", "arguments": {}}')
    prose, calls = parser.finish()
    assert prose == "" and [c.name for c in calls] == ["get_time"]


def test_a_bare_json_call_without_tags_is_a_call_but_other_json_is_not(tools):
    fenced = '```json\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n```'
    for text in (fenced, '{"name": "get_time", "arguments": {}}'):
        parsed = parse_tool_calls(text, tools)
        assert len(parsed.calls) == 1 and parsed.content == ""
    for text in ('{"name": "Ada", "age": 3}', '{"name": "rm", "arguments": {}}', "{not json"):
        parsed = parse_tool_calls(text, tools)
        assert parsed.calls == [] and parsed.content == text
    assert parse_tool_calls('{"name": "get_time", "arguments": {}}').calls == []  # no tools given


def test_stream_parser_holds_an_answer_that_starts_like_a_bare_call(tools):
    parser = ToolCallStreamParser(tools)
    assert parser.feed('{"name": "get_weather", ') == ("", [])
    assert parser.feed('"arguments": {"city": "Oslo"}}') == ("", [])
    prose, calls = parser.finish()
    assert prose == "" and [c.name for c in calls] == ["get_weather"]
    other = ToolCallStreamParser(tools)
    assert other.feed('{"answer": 4}') == ("", [])
    assert other.finish() == ('{"answer": 4}', [])
    prose_first = ToolCallStreamParser(tools)
    assert prose_first.feed("The answer is {4}") == ("The answer is {4}", [])


def test_arguments_are_checked_against_the_schema(tools):
    weather = tools[0]
    assert argument_errors(weather, '{"city": "Oslo", "unit": "c"}') == []
    assert any("required" in e for e in argument_errors(weather, "{}"))
    assert any("unit" in e for e in argument_errors(weather, '{"city": "Oslo", "unit": "k"}'))
    assert argument_errors(weather, "{city}")[0].startswith("not valid JSON")
    calls = [ToolCall(id="1", name="nope", arguments="{}"), ToolCall(id="2", name="get_weather")]
    errors = call_errors(calls, tools)
    assert errors[0] == "nope: not one of the tools" and errors[1].startswith("get_weather:")


def test_voting_key_ignores_order_whitespace_and_integral_floats():
    a = ToolCall(id="1", name="f", arguments='{"x": 2, "y": [1.0, "a"]}')
    b = ToolCall(id="2", name="f", arguments='{ "y":[1,"a"],"x":2.0 }')
    c = ToolCall(id="3", name="f", arguments='{"x": 3, "y": [1, "a"]}')
    d = ToolCall(id="4", name="g", arguments='{"x": 2, "y": [1, "a"]}')
    assert tool_call_key(a) == tool_call_key(b)
    assert len({tool_call_key(x) for x in (a, c, d)}) == 3
    assert tool_call_key(ToolCall(id="5", name="f", arguments=" {bad ")) == ("f", "{bad")


def test_template_messages_carry_calls_as_objects_and_results_with_ids():
    call = ToolCall(id="call_1", name="get_time", arguments='{"tz": "UTC"}')
    messages = [
        Message(role="user", content="time?"),
        Message(role="assistant", content="", tool_calls=[call]),
        Message(role="tool", content="12:00", tool_call_id="call_1"),
    ]
    rendered = template_messages(messages)
    assert rendered[1]["tool_calls"][0]["function"] == {
        "name": "get_time",
        "arguments": {"tz": "UTC"},
    }
    assert rendered[2] == {"role": "tool", "content": "12:00", "tool_call_id": "call_1"}


def test_hermes_messages_for_templates_without_tools(tools):
    call = ToolCall(id="call_1", name="get_time", arguments="{}")
    messages = [
        Message(role="system", content="Be brief."),
        Message(role="user", content="time?"),
        Message(role="assistant", content="", tool_calls=[call]),
        Message(role="tool", content="12:00", tool_call_id="call_1"),
        Message(role="tool", content="UTC", tool_call_id="call_2"),
    ]
    out = hermes_messages(messages, tools)
    assert [m.role for m in out] == ["system", "user", "assistant", "user"]
    assert out[0].content.startswith("Be brief.") and '"name": "get_weather"' in out[0].content
    assert out[2].content == '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    assert out[3].content.count("<tool_response>") == 2


def test_no_grammar_for_auto_and_one_for_required_or_named(tools):
    assert tool_call_constraint(tools, "auto") is None
    assert tool_call_constraint(tools, "none") is None
    required = tool_call_constraint(tools, "required")
    assert required is not None and required.kind == "lark"
    assert '"get_weather"' in required.grammar and '"get_time"' in required.grammar
    named = tool_call_constraint(tools, "get_time", parallel=False)
    assert named is not None and "get_weather" not in named.grammar


def test_required_grammar_admits_exactly_valid_calls(tools):
    llguidance = pytest.importorskip("llguidance")
    grammar = tool_call_constraint(tools, "required", parallel=False).grammar
    tok = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteTokenizer()))

    def accepts(text: str) -> bool:
        m = llguidance.LLMatcher(tok, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0)
        return m.consume_tokens(list(text.encode())) and m.is_accepting()

    ok = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    assert accepts(ok)
    assert not accepts(ok.replace('"city"', '"town"'))  # not in the schema
    assert not accepts(ok.replace("get_weather", "rm_rf"))
    assert not accepts('<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>')


class _ByteTokenizer:
    """256 single-byte tokens plus an end token: enough for llguidance to check text."""

    eos_token_id = 256
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b"\xff<end>"]
    special_token_ids = [256]

    def __call__(self, data: bytes) -> list[int]:
        return list(data)


def test_with_tool_calls_moves_calls_out_of_the_text(tools):
    text = 'Checking.<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    gen = with_tool_calls(Generation(text=text), tools, "auto")
    assert gen.finish_reason == "tool_calls" and gen.text == "Checking."
    assert [c.name for c in gen.tool_calls] == ["get_time"]
    assert with_tool_calls(Generation(text=text), tools, "none").tool_calls is None
    cut = with_tool_calls(Generation(text=text, finish_reason="length"), tools, "auto")
    assert cut.finish_reason == "length"  # a cut-off answer stays marked as cut off


def test_samples_vote_on_calls_and_validity_is_a_verifier_signal(tools):
    def sample(arguments: str) -> Generation:
        block = f'<tool_call>{{"name": "get_weather", "arguments": {arguments}}}</tool_call>'
        return with_tool_calls(Generation(text=block), tools, "required")

    a, b, c = sample('{"city": "Oslo"}'), sample('{ "city":"Oslo" }'), sample('{"city": "Rome"}')
    assert generation_vote_key(a) == generation_vote_key(b) != generation_vote_key(c)
    assert generation_vote_key(Generation(text="prose")) is None
    assert generation_is_valid(a, tools, "required")
    assert not generation_is_valid(sample('{"town": "Oslo"}'), tools, "required")
    assert not generation_is_valid(Generation(text="no call"), tools, "required")
    schema = OutputConstraint(kind="json_schema", json_schema={"type": "object", "required": ["n"]})
    assert generation_is_valid(Generation(text='{"n": 1}'), [], constraint=schema)
    assert not generation_is_valid(Generation(text="{}"), [], constraint=schema)
