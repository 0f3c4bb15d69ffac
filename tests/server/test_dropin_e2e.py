"""A real ``ponder serve`` on the embedded 0.5B model, driven by clients nobody here wrote:
the ``openai`` SDK (chat tools, structured parse, logprobs, the Responses API), the
``anthropic`` SDK (messages with thinking, tools, streaming) and a pydantic-ai agent.

Kept few and short (small max_tokens): the model is real, the CPU is small.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

pytestmark = pytest.mark.model

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("dropin")
    port = _free_port()
    # The 0.5B alone (not also the 1.5B as tier "strong", when it is installed).
    env = {
        **os.environ,
        "PONDER_CONFIG": str(tmp / "none.toml"),
        "PONDER_SERVER__EMBEDDED_TIERS": "false",
    }
    cmd = [
        sys.executable,
        "-m",
        "ponder.cli",
        "serve",
        "--model",
        "qwen2.5-coder-0.5b-instruct",
        "--port",
        str(port),
        "--db",
        f"sqlite:///{tmp / 'ponder.db'}",
        "--no-access-log",
    ]
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError((tmp / "serve.log").read_text()[-3000:])
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("ponder serve did not become healthy in 180 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture()
def openai_client(server: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=server + "/v1", api_key="unused", timeout=120, max_retries=0)


@pytest.fixture()
def anthropic_client(server: str) -> Any:
    from anthropic import Anthropic

    return Anthropic(base_url=server, api_key="unused", timeout=120, max_retries=0)


# --------------------------------------------------------------------------- openai chat


def test_openai_tool_call_is_constrained_to_the_schema(openai_client: Any) -> None:
    r = openai_client.chat.completions.create(
        model="ponder",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_tokens=48,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)


def test_openai_streamed_tool_call_deltas(openai_client: Any) -> None:
    stream = openai_client.chat.completions.create(
        model="ponder",
        messages=[{"role": "user", "content": "What is the weather in Tokyo?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=48,
        stream=True,
    )
    names, arguments, finish = [], "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or []:
            if tc.function and tc.function.name:
                names.append(tc.function.name)
            if tc.function and tc.function.arguments:
                arguments += tc.function.arguments
        assert "<tool_call>" not in (delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
    assert names == ["get_weather"]
    assert set(json.loads(arguments)) == {"city"}
    assert finish == "tool_calls"


class City(BaseModel):
    name: str
    country: str


def test_openai_parse_with_a_pydantic_model(openai_client: Any) -> None:
    r = openai_client.chat.completions.parse(
        model="ponder",
        messages=[{"role": "user", "content": "Name the capital of France and its country."}],
        response_format=City,
        max_tokens=48,
    )
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, City)
    assert parsed.name and parsed.country


def test_openai_logprobs(openai_client: Any) -> None:
    r = openai_client.chat.completions.create(
        model="ponder",
        messages=[{"role": "user", "content": "Say hello."}],
        logprobs=True,
        top_logprobs=2,
        max_tokens=8,
    )
    content = r.choices[0].logprobs.content
    assert content and "".join(t.token for t in content) == r.choices[0].message.content
    assert all(t.logprob <= 0 for t in content)
    assert all(len(t.top_logprobs) == 2 for t in content)
    # The sampled (greedy) token is the most likely one.
    assert content[0].logprob == pytest.approx(content[0].top_logprobs[0].logprob, abs=1e-4)


# --------------------------------------------------------------------------- responses


def test_responses_create_with_reasoning_effort(openai_client: Any) -> None:
    r = openai_client.responses.create(
        model="ponder",
        input="What is 2+3? Answer with the number.",
        reasoning={"effort": "low", "summary": "auto"},
        max_output_tokens=64,
        extra_body={"ponder": {"thinking_budget": 24}},
    )
    assert r.status in ("completed", "incomplete")
    kinds = [item.type for item in r.output]
    assert "reasoning" in kinds
    assert r.usage.output_tokens_details.reasoning_tokens > 0
    assert r.usage.output_tokens >= r.usage.output_tokens_details.reasoning_tokens


def test_responses_stream(openai_client: Any) -> None:
    kinds: list[str] = []
    text = ""
    with openai_client.responses.stream(
        model="ponder",
        input="Say hi in one word.",
        reasoning={"effort": "minimal"},
        max_output_tokens=12,
    ) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] in (
        "response.completed",
        "response.incomplete",
    )
    assert text and final.output_text == text


# --------------------------------------------------------------------------- anthropic


def test_anthropic_messages_with_thinking(anthropic_client: Any) -> None:
    msg = anthropic_client.messages.create(
        model="ponder",
        max_tokens=64,
        thinking={"type": "enabled", "budget_tokens": 24},
        messages=[{"role": "user", "content": "What is 2+3?"}],
    )
    kinds = [b.type for b in msg.content]
    assert kinds[0] == "thinking" and msg.content[0].thinking
    assert msg.usage.output_tokens > 0


def test_anthropic_tool_use(anthropic_client: Any) -> None:
    msg = anthropic_client.messages.create(
        model="ponder",
        max_tokens=48,
        tools=[
            {
                "name": "get_weather",
                "description": "Current weather of a city",
                "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
            }
        ],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather in Rome?"}],
    )
    assert msg.stop_reason == "tool_use"
    (use,) = [b for b in msg.content if b.type == "tool_use"]
    assert use.name == "get_weather" and set(use.input) == {"city"}


def test_anthropic_stop_sequence_is_reported(anthropic_client: Any) -> None:
    msg = anthropic_client.messages.create(
        model="ponder",
        max_tokens=40,
        stop_sequences=[" 4"],
        messages=[{"role": "user", "content": "Count from 1 to 10, separated by spaces."}],
        extra_body={"ponder": {"strategy": "direct"}},
    )
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", " 4")
    assert msg.content[0].text.rstrip().endswith("3")
    ended = anthropic_client.messages.create(
        model="ponder",
        max_tokens=40,
        stop_sequences=["zebra"],
        messages=[{"role": "user", "content": "Say hello."}],
        extra_body={"ponder": {"strategy": "direct"}},
    )
    assert (ended.stop_reason, ended.stop_sequence) == ("end_turn", None)
    with anthropic_client.messages.stream(
        model="ponder",
        max_tokens=40,
        stop_sequences=[" 4"],
        messages=[{"role": "user", "content": "Count from 1 to 10, separated by spaces."}],
        extra_body={"ponder": {"strategy": "direct"}},
    ) as stream:
        streamed = stream.get_final_message()
    assert (streamed.stop_reason, streamed.stop_sequence) == ("stop_sequence", " 4")


def test_anthropic_count_tokens_is_what_the_request_sends(anthropic_client: Any) -> None:
    """Counted on the serving model's own chat template: exactly the prompt tokens a
    direct request is then charged (new or read from the prefix cache)."""
    weather = {
        "name": "get_weather",
        "description": "Current weather of a city",
        "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
    }
    messages = [{"role": "user", "content": "Weather in Oslo?"}]
    plain = anthropic_client.messages.count_tokens(model="ponder", messages=messages)
    with_tool = anthropic_client.messages.count_tokens(
        model="ponder", messages=messages, tools=[weather]
    )
    assert with_tool.input_tokens > plain.input_tokens > 0
    msg = anthropic_client.messages.create(
        model="ponder",
        max_tokens=24,
        tools=[weather],
        messages=messages,
        extra_body={"ponder": {"strategy": "direct"}},
    )
    charged = msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0)
    assert charged == with_tool.input_tokens


def test_responses_logprobs(openai_client: Any) -> None:
    r = openai_client.responses.create(
        model="ponder", input="Say hello.", top_logprobs=2, max_output_tokens=8
    )
    (part,) = [c for o in r.output if o.type == "message" for c in o.content]
    assert part.logprobs and "".join(t.token for t in part.logprobs) == part.text
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in part.logprobs)
    flagged = openai_client.responses.create(
        model="ponder",
        input="Say hello.",
        include=["message.output_text.logprobs"],
        max_output_tokens=8,
    )
    (part,) = [c for o in flagged.output if o.type == "message" for c in o.content]
    assert part.logprobs and all(t.top_logprobs == [] for t in part.logprobs)
    plain = openai_client.responses.create(model="ponder", input="Say hello.", max_output_tokens=8)
    (part,) = [c for o in plain.output if o.type == "message" for c in o.content]
    assert not part.logprobs


def test_responses_input_tokens_count(openai_client: Any) -> None:
    counted = openai_client.responses.input_tokens.count(
        model="ponder", input="Name one planet.", instructions="Answer in one word."
    )
    r = openai_client.responses.create(
        model="ponder",
        input="Name one planet.",
        instructions="Answer in one word.",
        max_output_tokens=8,
        extra_body={"ponder": {"strategy": "direct"}},
    )
    assert counted.input_tokens == r.usage.input_tokens > 0


def test_anthropic_messages_stream(anthropic_client: Any) -> None:
    with anthropic_client.messages.stream(
        model="ponder",
        max_tokens=12,
        messages=[{"role": "user", "content": "Say hi."}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    assert final.usage.output_tokens > 0


# --------------------------------------------------------------------------- agent framework


def test_pydantic_ai_agent_two_step_tool_task(server: str) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(
        "ponder", provider=OpenAIProvider(base_url=server + "/v1", api_key="unused")
    )
    agent = Agent(
        model,
        system_prompt="Use the get_temperature tool to answer, then reply in one sentence.",
        # Few retries: a model that loops on its tool fails fast instead of for minutes.
        model_settings={"max_tokens": 64, "temperature": 0.0},
        retries=1,
    )
    seen: list[str] = []

    @agent.tool_plain
    def get_temperature(city: str) -> str:
        """The current temperature of a city, in Celsius."""
        seen.append(city)
        return "23"

    from pydantic_ai.usage import UsageLimits

    result = agent.run_sync(
        "What is the temperature in Paris right now?",
        usage_limits=UsageLimits(request_limit=3),
    )
    # Step one called the tool; step two answered from its result.
    assert seen and "paris" in seen[0].lower()
    assert "23" in result.output
