"""The OpenAI-compatible HTTP backend.

Unit tests serve recorded response shapes through ``httpx.MockTransport``;
the ``model`` tests run against llama-cpp-python's own OpenAI-compatible
server on loopback, serving the embedded 0.5B model.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ponder.backends.openai_compat import (
    OpenAICompatBackend,
    ThinkSplitter,
    render_chat,
    split_think,
)
from ponder.backends.upstream_log import record_upstream
from ponder.errors import ContextOverflow, InvalidRequest, UpstreamAnswerLost, UpstreamError
from ponder.types import GenRequest, Message, ThinkingConfig

FIXTURES = Path(__file__).parent / "fixtures"
Q = [Message(role="user", content="What is 17 * 3?")]


class Recorder:
    """An upstream behind httpx.MockTransport: scripted replies, recorded request bodies."""

    def __init__(self, reply: Callable[[dict[str, Any], int], httpx.Response]) -> None:
        self.reply = reply
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.startswith("/v1/"):
            return httpx.Response(404)  # no tokenize route: counts are estimated
        body = json.loads(request.content or b"{}")
        self.bodies.append(body)
        self.paths.append(request.url.path)
        return self.reply(body, len(self.bodies) - 1)

    def backend(self, **kwargs: Any) -> OpenAICompatBackend:
        return OpenAICompatBackend(
            "http://upstream.test/v1", transport=httpx.MockTransport(self), **kwargs
        )


def fixture_json(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def chat(text: str, *, finish: str = "stop", completion: int | None = 3, n: int = 1) -> dict:
    body: dict[str, Any] = {
        "object": "chat.completion",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            for i in range(n)
        ],
    }
    if completion is not None:
        body["usage"] = {
            "prompt_tokens": 10,
            "completion_tokens": completion * n,
            "total_tokens": 10 + completion * n,
        }
    return body


async def words(text: str) -> int:
    return len(text.split())


# ---------------------------------------------------------------- parsing helpers


def test_split_think_handles_open_closed_and_prefilled_thoughts():
    assert split_think("<think>a b</think>\n\nanswer") == ("a b", "answer")
    assert split_think("  <think>unfinished") == ("unfinished", "")
    # The template put the open tag into the prompt: only the close tag is seen.
    assert split_think("reasoning</think>answer") == ("reasoning", "answer")
    assert split_think("plain answer") == ("", "plain answer")


def test_think_splitter_holds_back_tags_split_across_chunks():
    sp = ThinkSplitter()
    out = [sp.feed(c) for c in ["<th", "ink>step", " one</th", "ink>\n\nThe", " answer"]]
    out.append(sp.flush())
    reasoning = "".join(r for r, _ in out)
    text = "".join(t for _, t in out)
    assert (reasoning.strip(), text) == ("step one", "The answer")


def test_render_chatml_leaves_the_final_assistant_message_open():
    msgs = [*Q, Message(role="assistant", content="17 * 3 =")]
    prompt = render_chat(msgs, "chatml", continue_final=True)
    assert prompt.endswith("<|im_start|>assistant\n17 * 3 =")
    assert prompt.count("<|im_end|>") == 1


# ---------------------------------------------------------------- request translation


async def test_vllm_flavor_translates_thinking_and_continuation():
    rec = Recorder(lambda body, i: httpx.Response(200, json=chat("x", n=body.get("n", 1))))
    b = rec.backend(flavor="vllm", model="Qwen/Qwen3-8B")
    await b.generate(GenRequest(messages=Q, thinking=ThinkingConfig(budget_tokens=300), n=4))
    await b.generate(GenRequest(messages=Q))
    await b.generate(
        GenRequest(messages=[*Q, Message(role="assistant", content="17")], continue_final=True)
    )
    think, plain, cont = rec.bodies
    assert think["thinking_token_budget"] == 300
    assert think["chat_template_kwargs"] == {"enable_thinking": True}
    assert think["n"] == 4
    assert plain["chat_template_kwargs"] == {"enable_thinking": False}
    assert "thinking_token_budget" not in plain
    assert cont["continue_final_message"] is True and cont["add_generation_prompt"] is False
    # Native thinking models are not given a scratchpad instruction.
    assert [m["role"] for m in think["messages"]] == ["user"]


async def test_openai_flavor_uses_reasoning_effort_and_reported_reasoning_tokens():
    rec = Recorder(
        lambda body, i: httpx.Response(200, json=fixture_json("openai_o_series_reasoning.json"))
    )
    b = rec.backend(flavor="openai", model="o4-mini")
    (gen,) = await b.generate(
        GenRequest(messages=Q, max_tokens=2000, thinking=ThinkingConfig(budget_tokens=4000))
    )
    body = rec.bodies[0]
    assert body["reasoning_effort"] == "medium"
    assert body["max_completion_tokens"] == 2000 and "max_tokens" not in body
    assert "top_k" not in body
    u = gen.usage
    assert (u.input, u.reasoning, u.output) == (31, 384, 412 - 384)
    assert not (u.reasoning_estimated or u.output_estimated)
    assert "90 km/h" in gen.text


async def test_reasoning_content_is_parsed_and_unreported_tokens_are_estimated():
    rec = Recorder(
        lambda body, i: httpx.Response(200, json=fixture_json("vllm_reasoning_content.json"))
    )
    b = rec.backend(flavor="vllm", model="Qwen/Qwen3-8B", token_counter=words)
    gens = await b.generate(GenRequest(messages=Q, n=2))
    assert [g.text.strip() for g in gens] == ["17 × 3 = **51**", "The answer is 51."]
    assert gens[1].reasoning.strip() == "17 times 3: 17+17+17 = 51."
    # The server reported only the total: the split is by text, reasoning by tokenizing.
    assert sum(g.usage.completion_tokens for g in gens) == 102
    assert gens[0].usage.input == 18 and gens[1].usage.input == 0
    assert gens[1].usage.reasoning == len(gens[1].reasoning.split())
    assert all(g.usage.reasoning_estimated and g.usage.output_estimated for g in gens)


async def test_think_tags_in_content_become_reasoning():
    rec = Recorder(
        lambda body, i: httpx.Response(
            200, json=chat("<think>7 plus 4</think>\n\n11", completion=8)
        )
    )
    (gen,) = await rec.backend(token_counter=words).generate(GenRequest(messages=Q))
    assert (gen.reasoning, gen.text) == ("7 plus 4", "11")
    assert (gen.usage.reasoning, gen.usage.output) == (3, 5)


async def test_n_falls_back_to_concurrent_requests_when_the_server_ignores_it():
    rec = Recorder(lambda body, i: httpx.Response(200, json=chat(f"answer {i}")))
    b = rec.backend()
    gens = await b.generate(GenRequest(messages=Q, n=3, temperature=0.7, seed=5))
    assert sorted(g.text for g in gens) == ["answer 0", "answer 1", "answer 2"]
    assert rec.bodies[0]["n"] == 3  # tried natively first
    assert b.native_n is False and b.capabilities.native_n is False
    # Top-up requests ask for one sample each, with distinct seeds.
    assert [bd.get("n", 1) for bd in rec.bodies[1:]] == [1, 1]
    assert len({bd["seed"] for bd in rec.bodies}) == 3
    await b.generate(GenRequest(messages=Q, n=2))
    assert all("n" not in bd for bd in rec.bodies[3:])


async def test_penalties_and_logit_bias_reach_the_upstream():
    rec = Recorder(lambda body, i: httpx.Response(200, json=chat("ok")))
    b = rec.backend()
    req = GenRequest(
        messages=Q, presence_penalty=0.5, frequency_penalty=-1.0, logit_bias={42: -100.0}
    )
    await b.generate(req)
    await b.generate(GenRequest(messages=Q))
    sent, plain = rec.bodies
    assert (sent["presence_penalty"], sent["frequency_penalty"]) == (0.5, -1.0)
    assert sent["logit_bias"] == {"42": -100.0}  # JSON keys: token ids as strings
    assert not {"presence_penalty", "frequency_penalty", "logit_bias"} & set(plain)


async def test_the_stop_string_vllm_names_is_kept():
    def reply(body: dict, i: int) -> httpx.Response:
        out = chat("1 2")
        out["choices"][0]["stop_reason"] = [" 3", 151645, "junk"][i]  # vLLM's extension
        return httpx.Response(200, json=out)

    b = Recorder(reply).backend()
    got = [(await b.generate(GenRequest(messages=Q, stop=[" 3"])))[0] for _ in range(3)]
    # A stop string of the request; a token id (end of turn) or an unknown string is not.
    assert [g.stop_sequence for g in got] == [" 3", None, None]


async def test_continuation_through_the_completions_endpoint():
    def reply(body: dict, i: int) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "choices": [
                    {
                        "index": 0,
                        "text": " 51",
                        "finish_reason": "stop",
                        "logprobs": {
                            "tokens": [" ", "51"],
                            "token_logprobs": [-0.1, -0.2],
                            "top_logprobs": [{" ": -0.1}, {"51": -0.2}],
                        },
                    }
                ],
                "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22},
            },
        )

    rec = Recorder(reply)
    b = rec.backend(flavor="llama_cpp", chat_template="chatml")
    msgs = [*Q, Message(role="assistant", content="17 * 3 =")]
    (gen,) = await b.generate(GenRequest(messages=msgs, continue_final=True, logprobs=True))
    assert rec.paths == ["/v1/completions"]
    assert rec.bodies[0]["prompt"].endswith("<|im_start|>assistant\n17 * 3 =")
    assert gen.text == " 51" and [t.logprob for t in gen.logprobs or []] == [-0.1, -0.2]
    assert gen.usage.output == 2


async def test_continuation_is_refused_clearly_where_the_server_cannot_continue():
    b = Recorder(lambda body, i: httpx.Response(200, json=chat("x"))).backend(flavor="openai")
    msgs = [*Q, Message(role="assistant", content="17")]
    with pytest.raises(InvalidRequest, match="cannot continue"):
        await b.generate(GenRequest(messages=msgs, continue_final=True))


async def test_client_side_cap_thinks_to_the_budget_then_asks_for_the_answer():
    def reply(body: dict, i: int) -> httpx.Response:
        if i == 0:  # the thought runs into the cap
            return httpx.Response(
                200, json=chat("<think>\nten words", finish="length", completion=40)
            )
        return httpx.Response(200, json=chat("51", completion=1))

    rec = Recorder(reply)
    b = rec.backend(flavor="ollama")
    (gen,) = await b.generate(
        GenRequest(messages=Q, max_tokens=100, thinking=ThinkingConfig(budget_tokens=40))
    )
    think, answer = rec.bodies
    assert think["max_tokens"] == 40 and think["stop"] == ["</think>"]
    assert "think step by step" in think["messages"][0]["content"]  # prompted scratchpad
    # No continuation on this server: the closed thought, then a request for the answer.
    assert answer["messages"][-2]["content"].endswith("</think>\n\n")
    assert answer["messages"][-1]["role"] == "user"
    assert answer["max_tokens"] == 100 - 40
    assert (gen.reasoning, gen.text) == ("ten words", "51")
    assert (gen.usage.reasoning, gen.usage.output, gen.usage.input) == (40, 1, 20)
    assert not gen.usage.reasoning_estimated


async def test_client_side_cap_with_continuation_prefills_the_thought():
    def reply(body: dict, i: int) -> httpx.Response:
        text = "a short thought" if i == 0 else "51"
        return httpx.Response(
            200,
            json={
                "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
            },
        )

    rec = Recorder(reply)
    b = rec.backend(flavor="llama_cpp", chat_template="chatml")
    (gen,) = await b.generate(
        GenRequest(messages=Q, max_tokens=64, thinking=ThinkingConfig(budget_tokens=32))
    )
    assert rec.bodies[0]["prompt"].endswith("<|im_start|>assistant\n<think>\n")
    assert rec.bodies[1]["prompt"].endswith("<think>\na short thought\n</think>\n\n")
    assert (gen.reasoning, gen.text) == ("a short thought", "51")


# ---------------------------------------------------------------- streaming


async def test_stream_parses_reasoning_deltas_and_the_usage_chunk():
    sse = (FIXTURES / "vllm_reasoning_stream.sse").read_bytes()
    rec = Recorder(
        lambda body, i: httpx.Response(
            200, content=sse, headers={"content-type": "text/event-stream"}
        )
    )
    deltas = [d async for d in rec.backend(flavor="vllm").stream(GenRequest(messages=Q))]
    assert "".join(d.reasoning for d in deltas) == "17 * 3 = 51."
    assert "".join(d.text for d in deltas) == "The answer is 51."
    final = deltas[-1]
    assert final.finish_reason == "stop" and final.usage is not None
    assert (final.usage.input, final.usage.reasoning, final.usage.output) == (18, 9, 13)
    assert rec.bodies[0]["stream"] is True
    assert rec.bodies[0]["stream_options"] == {"include_usage": True}


async def test_a_truncated_stream_is_an_answer_lost_never_resent():
    sse = b'data: {"choices":[{"index":0,"delta":{"content":"17"},"finish_reason":null}]}\n\n'
    rec = Recorder(lambda body, i: httpx.Response(200, content=sse))
    with pytest.raises(UpstreamAnswerLost, match="truncated") as info:
        [d async for d in rec.backend().stream(GenRequest(messages=Q))]
    # The upstream ran the request: sending it again could charge for it twice.
    assert not info.value.retryable and info.value.status == 502


# ---------------------------------------------------------------- errors


async def test_upstream_errors_keep_the_upstreams_reason():
    err = {"error": {"message": "model is overloaded", "type": "server_error"}}
    b = Recorder(lambda body, i: httpx.Response(503, json=err)).backend()
    with pytest.raises(UpstreamError) as info:
        await b.generate(GenRequest(messages=Q))
    assert info.value.retryable and info.value.upstream_status == 503
    body = info.value.to_openai()["error"]
    assert "model is overloaded" in body["message"] and body["type"] == "upstream_error"

    bad = {"error": {"message": "This model's maximum context length is 2048 tokens"}}
    b = Recorder(lambda body, i: httpx.Response(400, json=bad)).backend()
    with pytest.raises(ContextOverflow):
        await b.generate(GenRequest(messages=Q))

    b = Recorder(lambda body, i: httpx.Response(422, json={"detail": "bad top_k"})).backend()
    with pytest.raises(UpstreamError) as info:
        await b.generate(GenRequest(messages=Q))
    assert not info.value.retryable and info.value.status == 400


async def test_malformed_json_is_an_answer_lost_never_resent():
    b = Recorder(lambda body, i: httpx.Response(200, content=b"{not json")).backend()
    with pytest.raises(UpstreamAnswerLost, match="not JSON") as info:
        await b.generate(GenRequest(messages=Q))
    assert not info.value.retryable and info.value.reason == "malformed JSON"


async def test_the_upstreams_own_retry_advice_wins():
    err = {"error": {"message": "try later"}}
    hdrs = {"x-should-retry": "false", "retry-after-ms": "1500"}
    b = Recorder(lambda body, i: httpx.Response(503, json=err, headers=hdrs)).backend()
    with pytest.raises(UpstreamError) as info:
        await b.generate(GenRequest(messages=Q))
    assert not info.value.retryable and info.value.retry_after_s == 1.5
    hdrs = {"x-should-retry": "true", "retry-after": "2"}
    b = Recorder(lambda body, i: httpx.Response(400, json=err, headers=hdrs)).backend()
    with pytest.raises(UpstreamError) as info:
        await b.generate(GenRequest(messages=Q))
    assert info.value.retryable and info.value.retry_after_s == 2.0


# ---------------------------------------------------------------- real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on loopback, once per session.

    Started through ``llama_server.py``, which keeps llama.cpp's weights unrepacked on
    AMX CPUs, where its AMX kernels crash the server on the first request.
    """
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    for mod in ("sse_starlette", "starlette_context", "uvicorn", "fastapi"):
        pytest.importorskip(mod, reason=f"llama_cpp.server needs {mod} (pip install '.[dev]')")
    from ponder.backends.catalog import resolve_model
    from ponder.config import default_cache_dir

    gguf = resolve_model("qwen2.5-coder-0.5b-instruct", default_cache_dir())
    port = _free_port()
    # A file, not a pipe: llama.cpp logs a lot and would block on a full pipe.
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    log = log_path.open("wb")
    cmd = [
        sys.executable, str(Path(__file__).parent / "llama_server.py"), "--model", str(gguf),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
        "--n_threads", str(min(os.cpu_count() or 2, 2)), "--seed", "0",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"llama_cpp.server exited: {tail}")
            try:
                if httpx.get(url + "/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("llama_cpp.server did not start within 120 s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


COUNT = [Message(role="user", content="Count from 1 to 10, separated by spaces. Only the numbers.")]


@pytest.mark.model
async def test_real_server_samples_logprobs_stream_and_continuation(llama_server):
    b = OpenAICompatBackend(llama_server, flavor="llama_cpp", chat_template="chatml")
    try:
        gens = await b.generate(GenRequest(messages=COUNT, max_tokens=8, n=2, logprobs=True))
        # llama-cpp-python ignores n: the second sample came from the fallback.
        assert len(gens) == 2 and b.native_n is False
        assert gens[0].text.startswith("1")
        for g in gens:
            assert g.logprobs and len(g.logprobs) == g.usage.output
            assert not g.usage.output_estimated
        assert gens[0].usage.input > 0 and gens[1].usage.input > 0  # two prompt evaluations

        deltas = [d async for d in b.stream(GenRequest(messages=COUNT, max_tokens=8))]
        streamed = "".join(d.text for d in deltas)
        assert streamed == gens[0].text  # greedy: same text either way
        assert deltas[-1].usage is not None and deltas[-1].finish_reason == "length"

        partial = [*COUNT, Message(role="assistant", content="1 2 3 4")]
        (cont,) = await b.generate(GenRequest(messages=partial, max_tokens=4, continue_final=True))
        assert cont.text.lstrip().startswith("5")

        (capped,) = await b.generate(
            GenRequest(messages=COUNT, max_tokens=40, thinking=ThinkingConfig(budget_tokens=12))
        )
        assert 0 < capped.usage.reasoning <= 12 and capped.reasoning
        assert capped.usage.output <= 40 - capped.usage.reasoning
    finally:
        await b.aclose()


SEQUENTIAL = {"direct", "cot", "self_consistency", "best_of_n"}


@pytest.mark.model
async def test_every_strategy_runs_through_the_real_server(llama_server):
    from ponder.api import Ponder
    from ponder.strategies import available_strategies

    b = OpenAICompatBackend(llama_server, flavor="llama_cpp", chat_template="chatml")
    p = Ponder(b)
    ran = []
    try:
        for name in sorted(available_strategies()):
            params: dict[str, Any] = {}
            if name in ("self_consistency", "best_of_n"):
                params["n"] = 2
            if name == "cot":
                params["thinking_budget"] = 16
            try:
                out = await p.asolve(
                    "What is 2 + 3? Answer with the number.",
                    name,
                    budget=48,
                    max_tokens=16,
                    seed=0,
                    **params,
                )
            except InvalidRequest as exc:  # a strategy needing something this test lacks
                pytest.fail(f"strategy {name} refused the generic backend: {exc}")
            assert out.strategy and out.calls >= 1, name
            assert out.usage.completion_tokens > 0, name
            if name in SEQUENTIAL:
                # Concurrent calls of one run (beam search, DVTS...) are each clipped to the
                # same remaining budget by MeteredBackend, so only these are bounded exactly.
                assert out.usage.completion_tokens <= 48, name
            assert out.usage.input > 0, name
            ran.append(name)
    finally:
        await b.aclose()
    assert {"direct", "cot", "self_consistency", "best_of_n"} <= set(ran)


# ---------------------------------------------------------------- usage checks


async def test_text_longer_than_max_tokens_without_usage_is_clamped_as_an_anomaly():
    # No usage reported, and a thousand words for max_tokens 8: counted, then clamped.
    long = " ".join(["word"] * 1000)
    rec = Recorder(lambda body, i: httpx.Response(200, json=chat(long, completion=None)))
    with record_upstream() as report:
        (gen,) = await rec.backend(token_counter=words).generate(
            GenRequest(messages=Q, max_tokens=8)
        )
    assert gen.usage.completion_tokens == 8 and gen.usage.clamped == 1000 - 8
    assert report.clamped_tokens == 1000 - 8


async def test_honest_usage_is_kept_exactly_and_attempts_of_concurrent_samples_add_up():
    rec = Recorder(lambda body, i: httpx.Response(200, json=chat("x", completion=3)))
    backend = rec.backend(native_n=False)
    with record_upstream() as report:
        gens = await backend.generate(GenRequest(messages=Q, n=3, max_tokens=8))
    assert [g.usage.completion_tokens for g in gens] == [3, 3, 3]
    assert all(g.usage.clamped == 0 for g in gens) and report.anomalies == []
    # Three concurrent calls, one report: each attempt is in it.
    assert report.summary() == {"attempts": 3, "errors": [], "usage_clamped": 0}


async def test_tools_and_structured_output_are_passed_through_and_calls_come_back() -> None:
    from ponder.types import OutputConstraint, ToolCall, ToolSpec

    def reply(body: dict[str, Any], i: int) -> httpx.Response:
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_up",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        }
        return httpx.Response(
            200,
            json={
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39},
            },
        )

    up = Recorder(reply)
    weather = ToolSpec(
        name="get_weather",
        description="Weather of a city",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}},
    )
    history = [
        Message(role="user", content="Weather in Oslo, then Rome?"),
        Message(
            role="assistant",
            content="",
            tool_calls=[ToolCall(id="c1", name="get_weather", arguments='{"city": "Rome"}')],
        ),
        Message(role="tool", content="18 C", tool_call_id="c1"),
    ]
    req = GenRequest(messages=history, tools=[weather], tool_choice="get_weather", max_tokens=32)
    (gen,) = await up.backend().generate(req)
    assert gen.finish_reason == "tool_calls" and gen.text == ""
    assert gen.tool_calls == [
        ToolCall(id="call_up", name="get_weather", arguments='{"city": "Oslo"}')
    ]
    sent = up.bodies[0]
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["messages"][1]["tool_calls"][0]["id"] == "c1"
    assert sent["messages"][2] == {"role": "tool", "content": "18 C", "tool_call_id": "c1"}

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    up2 = Recorder(lambda body, i: httpx.Response(200, json=chat('{"a": 1}')))
    constrained = GenRequest(
        messages=Q, constraint=OutputConstraint(kind="json_schema", json_schema=schema)
    )
    await up2.backend().generate(constrained)
    assert up2.bodies[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }
    assert "tools" not in up2.bodies[0]
