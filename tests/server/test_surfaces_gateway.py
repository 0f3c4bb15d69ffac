"""/v1/messages and /v1/responses on the governed path: auth, quotas, ledger, stored
conversations. In-process (httpx.ASGITransport), real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from anthropic.types import Message as AnthropicMessage
from openai.types.responses import Response as SDKResponse

from ponder.backends.fake import FakeBackend, FunctionBackend, Reply
from ponder.budget.quota import Limit
from ponder.config import ServerSettings
from ponder.ledger import Store
from ponder.server.app import create_app
from ponder.server.gateway import Gateway
from ponder.types import GenRequest

ANSWER = Reply("The answer is 4", reasoning="two plus two makes four")


def governed(store: Store | None, backend: Any = None) -> httpx.AsyncClient:
    backend = backend or FakeBackend([ANSWER])
    gateway = Gateway(backend, ServerSettings(), store=store)
    app = create_app(backend, gateway=gateway)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def message_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "fake",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "What is 2+2?"}],
        **extra,
    }


async def test_messages_needs_x_api_key_and_errors_are_anthropic_shaped(store: Store) -> None:
    _, secret = store.create_key("alice", team="ml")
    async with governed(store) as client:
        r = await client.post("/v1/messages", json=message_body())
        assert r.status_code == 401
        assert r.json()["type"] == "error"
        assert r.json()["error"]["type"] == "authentication_error"
        r = await client.post("/v1/messages", json={"messages": []}, headers={"x-api-key": secret})
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error"
        r = await client.post("/v1/messages", json=message_body(), headers={"x-api-key": secret})
    assert r.status_code == 200, r.text
    msg = AnthropicMessage.model_validate(r.json())
    assert msg.content[0].type == "text" and msg.content[0].text == "The answer is 4"
    # One ledger row, for the request that ran, charged to alice's key.
    (row,) = store.rows()
    assert row.user == "alice" and row.output_tokens == msg.usage.output_tokens


async def test_messages_thinking_block_only_with_the_reasoning_scope(store: Store) -> None:
    _, plain = store.create_key("bob")
    _, seer = store.create_key("carol", scopes=["reasoning"])
    thinking = {"type": "enabled", "budget_tokens": 64}
    async with governed(store) as client:
        hidden = await client.post(
            "/v1/messages", json=message_body(thinking=thinking), headers={"x-api-key": plain}
        )
        shown = await client.post(
            "/v1/messages", json=message_body(thinking=thinking), headers={"x-api-key": seer}
        )
    assert [b["type"] for b in hidden.json()["content"]] == ["text"]
    blocks = AnthropicMessage.model_validate(shown.json()).content
    assert [b.type for b in blocks] == ["thinking", "text"]
    assert blocks[0].thinking == "two plus two makes four"  # type: ignore[union-attr]


async def test_responses_previous_response_id_is_the_owners_only(store: Store) -> None:
    _, alice = store.create_key("alice")
    _, bob = store.create_key("bob")
    backend = FakeBackend(["Paris.", "About 2.1 million."])
    async with governed(store, backend) as client:
        first = await client.post(
            "/v1/responses",
            json={"model": "fake", "input": "Capital of France?"},
            headers={"authorization": f"Bearer {alice}"},
        )
        assert first.status_code == 200, first.text
        rid = SDKResponse.model_validate(first.json()).id
        follow = {"model": "fake", "input": "Its population?", "previous_response_id": rid}
        stranger = await client.post(
            "/v1/responses", json=follow, headers={"authorization": f"Bearer {bob}"}
        )
        assert stranger.status_code == 404
        assert stranger.json()["error"]["param"] == "previous_response_id"
        second = await client.post(
            "/v1/responses", json=follow, headers={"authorization": f"Bearer {alice}"}
        )
    assert second.status_code == 200, second.text
    assert SDKResponse.model_validate(second.json()).output_text == "About 2.1 million."
    # The second call saw the whole conversation, the first answer included.
    sent = [(m.role, m.content) for m in backend.calls[-1].messages if m.role != "system"]
    assert sent == [
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
        ("user", "Its population?"),
    ]
    # Bob's refused request cost nothing and left no row.
    assert {r.user for r in store.rows()} == {"alice"}


async def test_responses_stream_ends_with_completed_and_usage(store: Store) -> None:
    async with governed(store) as client:
        r = await client.post(
            "/v1/responses", json={"model": "fake", "input": "What is 2+2?", "stream": True}
        )
    events = [
        json.loads(line[len("data: ") :])
        for line in r.text.splitlines()
        if line.startswith("data: ")
    ]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "The answer is 4"
    usage = events[-1]["response"]["usage"]
    (row,) = store.rows()
    assert usage["output_tokens"] == row.output_tokens + row.reasoning_tokens


@pytest.mark.parametrize("surface", ["messages", "responses"])
async def test_concurrent_requests_never_overspend_the_quota(store: Store, surface: str) -> None:
    """Like the chat surface's: the quota admits only some, the rest get 429, and settled
    usage is exactly the ledger's rows."""
    _, secret = store.create_key("alice", team="ml")
    limit = 400
    store.set_limit(Limit("key", "*", "tokens", "day", limit))
    backend = FunctionBackend(lambda req, i: Reply("one two three four five six seven eight"))
    backend.delay_s = 0.01
    if surface == "messages":
        path, body, headers = "/v1/messages", message_body(), {"x-api-key": secret}
    else:
        path = "/v1/responses"
        body = {"model": "fake", "input": "What is 2+2?", "max_output_tokens": 20}
        headers = {"authorization": f"Bearer {secret}"}
    async with governed(store, backend) as client:
        responses = await asyncio.gather(
            *(client.post(path, json=body, headers=headers) for _ in range(60))
        )
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 429}, codes
    key_id = store.list_keys()[0].id
    used, reserved = store.counter("key", key_id, "tokens", "day")
    assert reserved == 0 and used <= limit
    rows = store.rows()
    assert len(rows) == codes.count(200)
    assert used == sum(
        x.input_tokens + x.cached_input_tokens + x.reasoning_tokens + x.output_tokens for x in rows
    )
    refused = [r.json() for r in responses if r.status_code == 429]
    if surface == "messages":
        assert {b["type"] for b in refused} == {"error"}
        assert {b["error"]["type"] for b in refused} == {"rate_limit_error"}
    else:
        assert {b["error"]["code"] for b in refused} == {"quota_exceeded"}


async def test_messages_tool_use_round_trip() -> None:
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'

    def reply(req: GenRequest, i: int) -> str:
        return "It is 21 C." if req.messages[-1].role == "tool" else call

    tool = {
        "name": "get_weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    async with governed(None, FunctionBackend(reply)) as client:
        r = await client.post(
            "/v1/messages",
            json=message_body(tools=[tool], tool_choice={"type": "any"}),
        )
        msg = AnthropicMessage.model_validate(r.json())
        assert msg.stop_reason == "tool_use"
        (use,) = [b for b in msg.content if b.type == "tool_use"]
        assert use.name == "get_weather" and use.input == {"city": "Paris"}  # type: ignore[union-attr]
        follow = message_body(
            tools=[tool],
            messages=[
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": use.id, "content": "21 C"}  # type: ignore[union-attr]
                    ],
                },
            ],
        )
        r = await client.post("/v1/messages", json=follow)
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == "It is 21 C."


async def test_token_counts_need_the_key_and_spend_nothing(store: Store) -> None:
    """count_tokens / input_tokens answer what the request would send, with the caller's
    auth, and run nothing: no model call, no ledger row, no quota used or held."""
    _, alice = store.create_key("alice")
    _, bob = store.create_key("bob")
    store.set_limit(Limit("key", "*", "tokens", "day", 10_000))
    backend = FakeBackend(["Paris."])
    count = {"model": "fake", "messages": [{"role": "user", "content": "Capital of France?"}]}
    async with governed(store, backend) as client:
        r = await client.post("/v1/messages/count_tokens", json=count)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = await client.post(
            "/v1/messages/count_tokens", json={"messages": []}, headers={"x-api-key": alice}
        )
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        plain = await client.post(
            "/v1/messages/count_tokens", json=count, headers={"x-api-key": alice}
        )
        documents = {"documents": [{"content": "France's capital is Paris. " * 20}]}
        longer = await client.post(
            "/v1/messages/count_tokens",
            json={**count, "system": "Answer in one word.", "ponder": documents},
            headers={"x-api-key": alice},
        )
        first = await client.post(
            "/v1/responses",
            json={"model": "fake", "input": "Capital of France?"},
            headers={"authorization": f"Bearer {alice}"},
        )
        follow = {
            "model": "fake",
            "input": "Its population?",
            "previous_response_id": first.json()["id"],
        }
        owner = await client.post(
            "/v1/responses/input_tokens", json=follow, headers={"authorization": f"Bearer {alice}"}
        )
        stranger = await client.post(
            "/v1/responses/input_tokens", json=follow, headers={"authorization": f"Bearer {bob}"}
        )
        alone = {k: v for k, v in follow.items() if k != "previous_response_id"}
        solo = await client.post(
            "/v1/responses/input_tokens", json=alone, headers={"authorization": f"Bearer {alice}"}
        )
    assert plain.status_code == 200, plain.text
    assert plain.json()["input_tokens"] > 0
    # The system prompt and the wrapped documents are part of what is counted.
    assert longer.json()["input_tokens"] > plain.json()["input_tokens"] + 100
    assert owner.status_code == 200, owner.text
    assert owner.json()["object"] == "response.input_tokens"
    # The stored turns are counted: more than the follow-up alone.
    assert owner.json()["input_tokens"] > solo.json()["input_tokens"] > 0
    assert (
        stranger.status_code == 404 and stranger.json()["error"]["param"] == "previous_response_id"
    )
    # Only the one real request ran and left a row; the counts are not in the quota.
    assert len(backend.calls) == 1
    (row,) = store.rows()
    key_id = next(k.id for k in store.list_keys() if k.user == "alice")
    used, reserved = store.counter("key", key_id, "tokens", "day")
    assert reserved == 0
    assert (
        used
        == row.input_tokens + row.cached_input_tokens + row.reasoning_tokens + row.output_tokens
    )


async def test_text_document_blocks_reach_the_model_as_delimited_documents() -> None:
    backend = FakeBackend(["Green."])
    doc = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "The sky is green."},
        "title": "Field notes",
    }
    question = {"type": "text", "text": "What colour is the sky, per the notes?"}
    body = message_body(messages=[{"role": "user", "content": [doc, question]}])
    pdf = {**doc, "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}
    refused = message_body(messages=[{"role": "user", "content": [pdf, question]}])
    async with governed(None, backend) as client:
        r = await client.post("/v1/messages", json=body)
        bad = await client.post("/v1/messages", json=refused)
    assert r.status_code == 200, r.text
    sent = "\n".join(m.content for m in backend.calls[0].messages)
    # Inside the guardrails' untrusted-data delimiters, titled, ahead of the question.
    opened = sent.index('title="Field_notes">')
    assert sent.rindex("<untrusted-", 0, opened) < opened
    assert opened < sent.index("The sky is green.") < sent.index("</untrusted-", opened)
    assert sent.rstrip().endswith("What colour is the sky, per the notes?")
    assert bad.status_code == 400 and "PDF" in bad.json()["error"]["message"]
    assert len(backend.calls) == 1


async def test_anthropic_top_k_reaches_the_model() -> None:
    backend = FakeBackend(["4"])
    async with governed(None, backend) as client:
        r = await client.post("/v1/messages", json=message_body(top_k=5))
        plain = await client.post("/v1/messages", json=message_body())
    assert r.status_code == plain.status_code == 200
    assert [c.top_k for c in backend.calls] == [5, 0]
