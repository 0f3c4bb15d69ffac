"""The OpenAI-compatible gateway, called in-process through httpx.ASGITransport."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from ponder.backends.fake import FakeBackend, FunctionBackend, Reply
from ponder.config import ServerSettings
from ponder.errors import ContextOverflow
from ponder.server.app import create_app
from ponder.server.planning import REASONING_EFFORT
from ponder.types import GenRequest

QUESTION = "What is 2+2?"  # 3 words = 3 prompt tokens for the fakes
ANSWER = Reply("The answer is 4", reasoning="two plus two makes four")  # 4 out, 5 reasoning


def client_for(backend: Any, **settings: Any) -> httpx.AsyncClient:
    app = create_app(backend, ServerSettings(**settings))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def body(content: str = QUESTION, **extra: Any) -> dict[str, Any]:
    return {"model": "fake", "messages": [{"role": "user", "content": content}], **extra}


async def chat(client: httpx.AsyncClient, **extra: Any) -> httpx.Response:
    return await client.post("/v1/chat/completions", json=body(**extra))


def sse_data(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]


# --------------------------------------------------------------------------- happy paths


async def test_response_is_openai_shaped_with_usage() -> None:
    async with client_for(FakeBackend([ANSWER])) as client:
        r = await chat(client)
    assert r.status_code == 200
    data = r.json()
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    assert isinstance(data["created"], int)
    assert data["model"] == "fake"
    assert data["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "The answer is 4"},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert data["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    assert data["ponder"]["strategy"] == "direct"
    assert data["ponder"]["calls"] == 1
    assert data["ponder"]["truncated"] is False


async def test_cot_counts_reasoning_tokens_but_hides_reasoning() -> None:
    async with client_for(FakeBackend([ANSWER])) as client:
        r = await chat(client, ponder={"strategy": "cot", "thinking_budget": 100})
    data = r.json()
    assert data["usage"]["completion_tokens_details"]["reasoning_tokens"] == 5
    assert data["usage"]["completion_tokens"] == 5 + 4
    assert "reasoning_content" not in data["choices"][0]["message"]
    assert data["ponder"]["thinking_budget"] == 100


async def test_reasoning_content_only_when_asked_and_allowed() -> None:
    asked = {"reasoning_effort": "low", "ponder": {"include_reasoning": True}}
    async with client_for(FakeBackend([ANSWER])) as client:
        shown = (await chat(client, **asked)).json()
    assert shown["choices"][0]["message"]["reasoning_content"] == "two plus two makes four"

    async with client_for(FakeBackend([ANSWER]), allow_reasoning=False) as client:
        hidden = (await chat(client, **asked)).json()
    assert "reasoning_content" not in hidden["choices"][0]["message"]
    assert hidden["usage"]["completion_tokens_details"]["reasoning_tokens"] == 5


@pytest.mark.parametrize(
    ("extra", "strategy", "thinking"),
    [
        ({"reasoning_effort": "none"}, "direct", None),
        ({"reasoning_effort": "minimal"}, "direct", None),
        ({"reasoning_effort": "low"}, "cot", REASONING_EFFORT["low"][1]),
        ({"reasoning_effort": "medium"}, "cot", REASONING_EFFORT["medium"][1]),
        ({"reasoning_effort": "high"}, "cot", REASONING_EFFORT["high"][1]),
        ({"thinking": {"type": "enabled", "budget_tokens": 77}}, "cot", 77),
        ({"thinking": {"type": "disabled"}}, "direct", None),
        # thinking beats reasoning_effort; ponder.strategy beats both
        (
            {"thinking": {"type": "enabled", "budget_tokens": 50}, "reasoning_effort": "high"},
            "cot",
            50,
        ),
        ({"reasoning_effort": "high", "ponder": {"strategy": "direct"}}, "direct", None),
        ({"reasoning_effort": "low", "ponder": {"thinking_budget": 9}}, "cot", 9),
        ({}, "direct", None),
    ],
)
async def test_effort_and_thinking_reach_the_backend(
    extra: dict[str, Any], strategy: str, thinking: int | None
) -> None:
    backend = FakeBackend([ANSWER])
    async with client_for(backend) as client:
        r = await chat(client, **extra)
    assert r.status_code == 200, r.text
    assert r.json()["ponder"]["strategy"] == strategy
    sent = backend.calls[-1].thinking
    assert (sent.budget_tokens if sent else None) == thinking


async def test_default_strategy_comes_from_settings() -> None:
    backend = FakeBackend([ANSWER])
    async with client_for(backend, default_strategy="cot") as client:
        r = await chat(client)
    assert r.json()["ponder"]["strategy"] == "cot"


async def test_max_tokens_default_leaves_room_for_thinking_and_explicit_wins() -> None:
    backend = FakeBackend([ANSWER])
    async with client_for(backend, max_tokens_default=100) as client:
        await chat(client, thinking={"type": "enabled", "budget_tokens": 40})
        await chat(client, thinking={"type": "enabled", "budget_tokens": 40}, max_tokens=30)
        await chat(client, max_completion_tokens=20, max_tokens=30)
    assert [c.max_tokens for c in backend.calls] == [140, 30, 20]


async def test_sampling_fields_reach_the_backend() -> None:
    backend = FakeBackend([ANSWER])
    async with client_for(backend) as client:
        await chat(client, temperature=0.3, top_p=0.9, seed=7, stop="\n\n")
    sent = backend.calls[-1]
    assert (sent.temperature, sent.top_p, sent.seed, sent.stop) == (0.3, 0.9, 7, ["\n\n"])


async def test_content_parts_are_joined() -> None:
    backend = FakeBackend([ANSWER])
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": "2+2?"}]
    async with client_for(backend) as client:
        r = await client.post(
            "/v1/chat/completions",
            json={
                "model": "fake",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": parts},
                ],
            },
        )
    assert r.status_code == 200, r.text
    assert [m.content for m in backend.calls[0].messages] == ["Be brief.", "What is\n2+2?"]


async def test_developer_role_reaches_the_engine_as_system() -> None:
    backend = FakeBackend([ANSWER])
    async with client_for(backend) as client:
        r = await client.post(
            "/v1/chat/completions",
            json={
                "model": "fake",
                "messages": [
                    {"role": "developer", "content": "Be brief."},
                    {"role": "user", "content": QUESTION},
                ],
            },
        )
    assert r.status_code == 200, r.text
    assert [m.role for m in backend.calls[0].messages] == ["system", "user"]


async def test_self_consistency_returns_the_majority_answer() -> None:
    backend = FakeBackend(
        [
            "The answer is 41",
            "The answer is 42",
            "The answer is 7",
            "The answer is 42",
            "The answer is 42",
        ]
    )
    async with client_for(backend) as client:
        r = await chat(client, ponder={"strategy": "self_consistency", "params": {"n": 5}})
    data = r.json()
    assert data["choices"][0]["message"]["content"] == "The answer is 42"
    assert data["ponder"]["n_candidates"] == 5
    assert data["ponder"]["params"] == {"n": 5}
    assert backend.calls[0].n == 5
    assert data["usage"]["completion_tokens"] == 5 * 4


async def test_explicit_thinking_budget_reaches_sampling_strategies() -> None:
    backend = FakeBackend([ANSWER])
    ponder = {"strategy": "best_of_n", "params": {"n": 3}, "thinking_budget": 64}
    async with client_for(backend) as client:
        r = await chat(client, ponder=ponder)
    assert r.status_code == 200, r.text
    assert backend.calls[0].thinking is not None
    assert backend.calls[0].thinking.budget_tokens == 64


async def test_budget_truncation_is_reported() -> None:
    backend = FakeBackend(["one two three four five six seven eight nine ten"])
    async with client_for(backend) as client:
        r = await chat(client, ponder={"budget": 4})
    data = r.json()
    assert data["choices"][0]["message"]["content"] == "one two three four"
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 4
    assert data["ponder"]["truncated"] is True
    assert data["ponder"]["stop_reason"] == "budget"
    assert data["ponder"]["budget"] == 4
    assert r.headers["x-ponder-truncated"] == "true"


async def test_ponder_headers() -> None:
    async with client_for(FakeBackend([ANSWER])) as client:
        r = await chat(client, reasoning_effort="medium")
    assert r.headers["x-ponder-strategy"] == "cot"
    assert r.headers["x-ponder-thinking-budget"] == "1024"
    assert r.headers["x-ponder-reasoning-tokens"] == "5"
    assert r.headers["x-ponder-output-tokens"] == "4"
    assert int(r.headers["x-ponder-latency-ms"]) >= 0
    assert r.headers["x-ponder-truncated"] == "false"


async def test_models_and_health() -> None:
    async with client_for(FakeBackend([ANSWER], name="tiny-model")) as client:
        models = (await client.get("/v1/models")).json()
        health = (await client.get("/health")).json()
    assert models["object"] == "list"
    assert models["data"][0]["id"] == "tiny-model"
    assert models["data"][0]["object"] == "model"
    assert models["data"][0]["owned_by"] == "ponder"
    assert health == {"status": "ok", "model": "tiny-model"}


async def test_framework_route_answers_like_the_fast_path() -> None:
    # The chat path is a route of the app, so it also answers mounted under a prefix.
    # Same body, headers and errors either way.
    from starlette.applications import Starlette
    from starlette.routing import Mount

    def outer(app: Any) -> httpx.AsyncClient:
        parent = Starlette(routes=[Mount("/api", app=app)])
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=parent), base_url="http://t")

    answers = []
    for prefix in ("", "/api"):
        app = create_app(FakeBackend([ANSWER]), ServerSettings())
        client = (
            outer(app)
            if prefix
            else httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        )
        async with client:
            r = await client.post(f"{prefix}/v1/chat/completions", json=body(seed=1))
            bad = await client.post(f"{prefix}/v1/chat/completions", content=b"{not json")
            wrong_method = await client.get(f"{prefix}/v1/chat/completions")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        assert wrong_method.status_code == 405 and "error" in wrong_method.json()
        reply = r.json()
        answers.append((reply["choices"], reply["usage"], r.headers["x-ponder-strategy"]))
    assert answers[0] == answers[1]
    assert answers[0][0][0]["message"]["content"] == "The answer is 4"


async def test_middleware_sees_the_chat_route() -> None:
    # Middleware wraps every route, the hot chat route included (it used to be
    # answered in front of the stack, where CORS or tracing never saw it).
    from fastapi.middleware.cors import CORSMiddleware

    seen: list[tuple[str, str]] = []

    class Recorder:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                seen.append((scope["method"], scope["path"]))
            await self.app(scope, receive, send)

    app = create_app(FakeBackend([ANSWER, ANSWER]), ServerSettings())
    app.add_middleware(CORSMiddleware, allow_origins=["https://ui.example"], allow_methods=["*"])
    app.add_middleware(Recorder)
    origin = {"origin": "https://ui.example"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.post("/v1/chat/completions", json=body(), headers=origin)
        streamed = await client.post("/v1/chat/completions", json=body(stream=True), headers=origin)
        preflight = await client.options(
            "/v1/chat/completions",
            headers={**origin, "access-control-request-method": "POST"},
        )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    assert r.headers["access-control-allow-origin"] == "https://ui.example"
    assert streamed.status_code == 200 and sse_data(streamed.text)[-1] == "[DONE]"
    assert streamed.headers["access-control-allow-origin"] == "https://ui.example"
    assert preflight.status_code == 200
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert seen.count(("POST", "/v1/chat/completions")) == 2
    assert ("OPTIONS", "/v1/chat/completions") in seen


async def test_unknown_route_gets_an_openai_error_body() -> None:
    async with client_for(FakeBackend([ANSWER])) as client:
        r = await client.get("/v1/nope")
    assert r.status_code == 404
    assert "/v1/chat/completions" in r.json()["error"]["message"]


# --------------------------------------------------------------------------- bad input

GOOD_MESSAGES = [{"role": "user", "content": QUESTION}]

BAD_REQUESTS: list[tuple[str, Any, list[str], str | None, str]] = [
    # (id, body (bytes are sent raw), words the message must contain, param, code)
    ("empty-messages", {"messages": []}, ["at least one message"], "messages", "invalid_request"),
    (
        "missing-messages",
        {"model": "fake"},
        ["messages", "Field required"],
        "messages",
        "invalid_request",
    ),
    (
        "empty-last-message",
        {"messages": [{"role": "user", "content": "  "}]},
        ["empty content"],
        "messages[0].content",
        "invalid_request",
    ),
    (
        "unknown-strategy",
        {"messages": GOOD_MESSAGES, "ponder": {"strategy": "nope"}},
        ["unknown strategy 'nope'", "self_consistency"],
        "ponder.strategy",
        "unknown_strategy",
    ),
    (
        "unknown-strategy-param",
        {"messages": GOOD_MESSAGES, "ponder": {"strategy": "cot", "params": {"m": 1}}},
        ["no parameter", "'m'", "thinking_budget"],
        "ponder.params",
        "invalid_request",
    ),
    (
        "negative-budget",
        {"messages": GOOD_MESSAGES, "ponder": {"budget": -5}},
        ["ponder.budget", "greater than or equal to 0", "-5"],
        "ponder.budget",
        "invalid_request",
    ),
    (
        "bad-strategy-param-value",
        {"messages": GOOD_MESSAGES, "ponder": {"strategy": "self_consistency", "params": {"n": 0}}},
        ["n must be an integer >= 1"],
        "ponder.params.n",
        "invalid_request",
    ),
    (
        "boolean-budget",
        {"messages": GOOD_MESSAGES, "ponder": {"budget": True}},
        ["ponder.budget", "valid integer"],
        "ponder.budget",
        "invalid_request",
    ),
    (
        "negative-thinking-budget",
        {"messages": GOOD_MESSAGES, "ponder": {"strategy": "cot", "thinking_budget": -1}},
        ["ponder.thinking_budget", "greater than or equal to 0"],
        "ponder.thinking_budget",
        "invalid_request",
    ),
    (
        "negative-budget-tokens",
        {"messages": GOOD_MESSAGES, "thinking": {"type": "enabled", "budget_tokens": -3}},
        ["thinking.budget_tokens", "greater than or equal to 0"],
        "thinking.budget_tokens",
        "invalid_request",
    ),
    (
        "thinking-budget-for-direct",
        {"messages": GOOD_MESSAGES, "ponder": {"strategy": "direct", "thinking_budget": 10}},
        ["'direct' does not use a thinking budget", "cot"],
        "ponder.thinking_budget",
        "invalid_request",
    ),
    (
        "misspelled-ponder-option",
        {"messages": GOOD_MESSAGES, "ponder": {"stratgy": "cot"}},
        ["ponder.stratgy", "unknown option", "strategy"],
        "ponder.stratgy",
        "invalid_request",
    ),
    ("malformed-json", b'{"messages": [', ["request body is not valid JSON"], None, "invalid_json"),
    ("empty-body", b"", ["request body is not valid JSON", "empty"], None, "invalid_json"),
    ("json-list", b"[1, 2]", ["must be a JSON object"], None, "invalid_request"),
    (
        "temperature-not-a-number",
        {"messages": GOOD_MESSAGES, "temperature": "hot"},
        ["temperature", "valid number", "'hot'"],
        "temperature",
        "invalid_request",
    ),
    (
        "messages-not-a-list",
        {"messages": "hi"},
        ["messages", "valid list"],
        "messages",
        "invalid_request",
    ),
    (
        "bad-role",
        {"messages": [{"role": "robot", "content": "hi"}]},
        ["messages[0].role", "'robot'"],
        "messages[0].role",
        "invalid_request",
    ),
    (
        "stop-wrong-type",
        {"messages": GOOD_MESSAGES, "stop": 3},
        ["stop", "string or a list of strings"],
        "stop",
        "invalid_request",
    ),
    (
        "image-part",
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        },
        ["messages[0].content", "'image_url'", "only text parts"],
        "messages[0].content",
        "invalid_request",
    ),
    (
        "bad-reasoning-effort",
        {"messages": GOOD_MESSAGES, "reasoning_effort": "max"},
        ["reasoning_effort", "'max'"],
        "reasoning_effort",
        "invalid_request",
    ),
    (
        "n-2",
        # n > 1 samples independent choices of a one-generation strategy only.
        {"messages": GOOD_MESSAGES, "n": 2, "ponder": {"strategy": "best_of_n"}},
        ["n=2 runs only with strategy direct or cot", "self_consistency", '"n": 2'],
        "n",
        "invalid_request",
    ),
]


@pytest.mark.parametrize(
    ("payload", "words", "param", "code"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
async def test_bad_request_is_a_400_and_the_server_keeps_serving(
    payload: Any, words: list[str], param: str | None, code: str
) -> None:
    backend = FakeBackend([ANSWER])
    async with client_for(backend) as client:
        if isinstance(payload, bytes):
            r = await client.post(
                "/v1/chat/completions",
                content=payload,
                headers={"content-type": "application/json"},
            )
        else:
            r = await client.post("/v1/chat/completions", json=payload)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["code"] == code
        assert error["param"] == param
        for word in words:
            assert word in error["message"]
        # Nothing ran, and the next good request is served.
        assert backend.calls == []
        ok = await chat(client)
        assert ok.status_code == 200
        assert ok.json()["choices"][0]["message"]["content"] == "The answer is 4"


async def test_context_overflow_maps_to_400() -> None:
    def too_long(req: GenRequest, index: int) -> str:
        raise ContextOverflow("the prompt has 9000 tokens but the context holds 8192; shorten it")

    async with client_for(FunctionBackend(too_long)) as client:
        r = await chat(client)
        streamed = await chat(client, stream=True)
    for resp in (r, streamed):
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert error["code"] == "context_length_exceeded"
        assert "9000 tokens" in error["message"]


async def test_unexpected_backend_error_is_a_500_and_the_server_stays_healthy() -> None:
    def flaky(req: GenRequest, index: int) -> str:
        if "boom" in req.messages[-1].content:
            raise RuntimeError("engine fell over")
        return "The answer is 4"

    async with client_for(FunctionBackend(flaky)) as client:
        r = await chat(client, content="boom")
        assert r.status_code == 500
        error = r.json()["error"]
        assert error["type"] == "server_error"
        assert error["code"] == "internal_error"
        assert "RuntimeError" in error["message"]
        assert (await client.get("/health")).json()["status"] == "ok"
        ok = await chat(client)
        assert ok.status_code == 200
        assert ok.json()["choices"][0]["message"]["content"] == "The answer is 4"


# --------------------------------------------------------------------------- streaming


async def test_streaming_content_concatenates_and_usage_comes_last() -> None:
    async with client_for(FakeBackend([ANSWER])) as client:
        r = await chat(
            client,
            stream=True,
            stream_options={"include_usage": True},
            reasoning_effort="low",
        )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-ponder-strategy"] == "cot"
    assert r.headers["x-ponder-thinking-budget"] == "256"
    data = sse_data(r.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content", "") for d in deltas) == "The answer is 4"
    assert not any("reasoning_content" in d for d in deltas)
    finish = [c for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
    assert [c["choices"][0]["finish_reason"] for c in finish] == ["stop"]
    assert finish[0]["ponder"]["strategy"] == "cot"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 5 + 4
    assert usage_chunk["usage"]["completion_tokens_details"]["reasoning_tokens"] == 5


async def test_streaming_reasoning_only_when_asked_and_no_usage_unless_asked() -> None:
    async with client_for(FakeBackend([ANSWER])) as client:
        r = await chat(
            client,
            stream=True,
            thinking={"type": "enabled", "budget_tokens": 100},
            ponder={"include_reasoning": True},
        )
    chunks = [json.loads(d) for d in sse_data(r.text)[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "two plus two makes four"
    assert "".join(d.get("content", "") for d in deltas) == "The answer is 4"
    assert not any("usage" in c for c in chunks)


async def test_streaming_under_budget_is_truncated() -> None:
    backend = FakeBackend(["one two three four five six"])
    async with client_for(backend) as client:
        cut = await chat(client, stream=True, ponder={"budget": 2})
        empty = await chat(client, stream=True, ponder={"budget": 0})
    cut_chunks = [json.loads(d) for d in sse_data(cut.text)[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in cut_chunks)
    assert text == "one two"
    assert cut_chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert cut_chunks[-1]["ponder"]["truncated"] is True

    assert empty.status_code == 200
    empty_chunks = [json.loads(d) for d in sse_data(empty.text)[:-1]]
    assert empty_chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert empty_chunks[-1]["ponder"]["stop_reason"] == "budget"
    assert len(backend.calls) == 1  # the zero budget never reached the engine


# --------------------------------------------------------------------------- the real openai client


def openai_client(backend: Any) -> openai.AsyncOpenAI:
    app = create_app(backend, ServerSettings())
    return openai.AsyncOpenAI(
        base_url="http://test/v1",
        api_key="x",
        max_retries=0,
        http_client=httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ),
    )


async def test_openai_client_works_unchanged() -> None:
    client = openai_client(FakeBackend([ANSWER]))
    completion = await client.chat.completions.create(
        model="fake",
        messages=[{"role": "user", "content": QUESTION}],
        reasoning_effort="low",
    )
    assert completion.choices[0].message.content == "The answer is 4"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 5
    assert completion.usage.completion_tokens == 9

    models = await client.models.list()
    assert [m.id for m in models.data] == ["fake"]


async def test_openai_client_extra_body_selects_the_strategy() -> None:
    backend = FakeBackend(["The answer is 42", "The answer is 41", "The answer is 42"])
    client = openai_client(backend)
    completion = await client.chat.completions.create(
        model="fake",
        messages=[{"role": "user", "content": QUESTION}],
        extra_body={"ponder": {"strategy": "self_consistency", "params": {"n": 3}, "budget": 100}},
    )
    assert completion.choices[0].message.content == "The answer is 42"
    extra = completion.model_extra or {}
    assert extra["ponder"]["strategy"] == "self_consistency"
    assert extra["ponder"]["n_candidates"] == 3


async def test_openai_client_streams_and_sees_errors() -> None:
    client = openai_client(FakeBackend([ANSWER]))
    stream = await client.chat.completions.create(
        model="fake",
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == "The answer is 4"
    assert usage is not None and usage.completion_tokens == 4

    with pytest.raises(openai.BadRequestError, match="unknown strategy 'nope'"):
        await client.chat.completions.create(
            model="fake",
            messages=[{"role": "user", "content": QUESTION}],
            extra_body={"ponder": {"strategy": "nope"}},
        )


# --------------------------------------------------------------------------- lifespan


class ClosingBackend(FakeBackend):
    def __init__(self) -> None:
        super().__init__([ANSWER])
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class AsyncClosingBackend(ClosingBackend):
    async def close(self) -> None:  # type: ignore[override]
        self.closed += 1


@pytest.mark.parametrize("backend_cls", [ClosingBackend, AsyncClosingBackend])
async def test_shutdown_closes_the_backend(backend_cls: type[ClosingBackend]) -> None:
    backend = backend_cls()
    app = create_app(backend, ServerSettings())
    async with app.router.lifespan_context(app):
        assert backend.closed == 0
    assert backend.closed == 1


async def test_search_tree_returned_only_with_reasoning_and_server_only_params_refused():
    import httpx

    from ponder.backends.fake import FakeBackend
    from ponder.server.app import create_app

    app = create_app(FakeBackend(["Answer: 7", "Answer: 7", "Answer: 3"]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        body = {
            "messages": [{"role": "user", "content": "q"}],
            "ponder": {"strategy": "self_consistency", "params": {"n": 3}},
        }
        hidden = (await c.post("/v1/chat/completions", json=body)).json()
        assert hidden["ponder"]["tree"] is None
        body["ponder"]["include_reasoning"] = True
        shown = (await c.post("/v1/chat/completions", json=body)).json()
        tree = shown["ponder"]["tree"]
        assert len(tree["children"]) == 3
        assert sum(1 for ch in tree["children"] if ch.get("chosen")) == 1
        bad = await c.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "q"}],
                "ponder": {"strategy": "program_aided", "params": {"database": "/etc/x.db"}},
            },
        )
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "ponder.params.database"


# --------------------------------------------------------------------------- strategy protocols


async def test_a_strategy_that_declares_stream_is_streamed_token_by_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Streaming follows the strategy's stream() (no list of streamable names).
    from dataclasses import dataclass

    from ponder import strategies
    from ponder.strategies import ChainOfThought, SelfConsistency

    @dataclass
    class Pondering(ChainOfThought):
        name: str = "pondering"

    @dataclass
    class Voting(SelfConsistency):
        name: str = "voting"

    monkeypatch.setitem(strategies._BUILTIN, "pondering", Pondering)
    monkeypatch.setitem(strategies._BUILTIN, "voting", Voting)
    backend = FakeBackend([ANSWER, ANSWER, ANSWER])
    async with client_for(backend) as client:
        tokens = await chat(client, stream=True, ponder={"strategy": "pondering"})
        voted = await chat(client, stream=True, ponder={"strategy": "voting", "params": {"n": 2}})
    token_chunks = [json.loads(d) for d in sse_data(tokens.text)[:-1]]
    assert not any("progress" in (c.get("ponder") or {}) for c in token_chunks)
    content = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in token_chunks if c["choices"]
    )
    assert content == "The answer is 4"
    assert backend.calls[0].thinking is not None  # its own request: thinking included
    voted_chunks = [json.loads(d) for d in sse_data(voted.text)[:-1]]
    assert any("progress" in (c.get("ponder") or {}) for c in voted_chunks)


async def test_the_reservation_covers_the_declared_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import dataclass

    from ponder import strategies
    from ponder.server.auth import Caller
    from ponder.server.gateway import Gateway
    from ponder.server.parsing import parse_request
    from ponder.server.planning import plan
    from ponder.strategies import Direct, Work

    @dataclass
    class Thrice(Direct):
        name: str = "thrice"

        def work(self) -> Work:
            return Work(samples=3, calls=2)

    monkeypatch.setitem(strategies._BUILTIN, "thrice", Thrice)
    gateway = Gateway(FakeBackend([ANSWER]), ServerSettings())
    demands = {}
    for name in ("direct", "thrice"):
        request = parse_request(body(max_tokens=10, ponder={"strategy": name}))
        _, demands[name] = await gateway.admission.bound(plan(request, gateway.settings), Caller())
    prompt = demands["direct"].tokens - 10
    assert demands["thrice"].tokens == 2 * prompt + 3 * 10
