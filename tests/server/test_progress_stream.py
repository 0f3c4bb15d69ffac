"""Streaming a multi-sample strategy: progress events while it runs, then the chosen answer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest

from ponder.backends.fake import FakeBackend, FunctionBackend
from ponder.config import ServerSettings
from ponder.ledger import Store
from ponder.server import streaming
from ponder.server.app import create_app
from ponder.server.gateway import Gateway
from ponder.server.protocol import StreamResult
from ponder.types import Generation, GenRequest

QUESTION = "What is 6 times 7?"


def client_for(backend: Any, store: Store | None = None) -> httpx.AsyncClient:
    app = create_app(backend, gateway=Gateway(backend, ServerSettings(), store=store))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def body(strategy: str, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "model": "fake",
        "messages": [{"role": "user", "content": QUESTION}],
        "stream": True,
        "ponder": {"strategy": strategy, "params": params},
        **extra,
    }


def events_of(text: str) -> list[dict[str, Any]]:
    lines = [ln.removeprefix("data: ") for ln in text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


def progress_of(event: dict[str, Any]) -> dict[str, Any] | None:
    return (event.get("ponder") or {}).get("progress")


def content_of(event: dict[str, Any]) -> str:
    return "".join(c["delta"].get("content") or "" for c in event["choices"])


async def test_self_consistency_streams_progress_then_the_voted_answer() -> None:
    backend = FakeBackend(["The answer is 42", "The answer is 41", "The answer is 42"])
    async with client_for(backend) as client:
        r = await client.post(
            "/v1/chat/completions",
            json=body("self_consistency", {"n": 3}, stream_options={"include_usage": True}),
        )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-ponder-strategy"] == "self_consistency"
    events = events_of(r.text)
    assert all(
        e["object"] == "chat.completion.chunk" and e["id"] == events[0]["id"] for e in events
    )
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}

    progress = [(i, p) for i, e in enumerate(events) if (p := progress_of(e)) is not None]
    answer_at = [i for i, e in enumerate(events) if content_of(e)]
    # Every progress event comes before the first piece of the answer.
    assert progress and answer_at and max(i for i, _ in progress) < min(answer_at)
    # Progress chunks are ordinary chunks with one empty delta.
    for i, _ in progress:
        assert events[i]["choices"] == [{"index": 0, "delta": {}}]

    phases = [p["phase"] for _, p in progress]
    assert phases == ["started", "sampling", "chosen"]
    started, sampled, chosen = (p for _, p in progress)
    assert started["samples"] == 0 and started["samples_planned"] == 3 and started["tokens"] == 0
    assert sampled["samples"] == 3 and sampled["calls"] == 1
    assert sampled["tokens"] == 12  # 3 samples x 4 words

    assert "".join(content_of(e) for e in events) == "The answer is 42"
    final = next(e for e in events if e["choices"] and e["choices"][0].get("finish_reason"))
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["ponder"]["strategy"] == "self_consistency"
    assert final["ponder"]["n_candidates"] == 3
    usage = events[-1]["usage"]
    assert events[-1]["choices"] == []
    assert usage["completion_tokens"] == chosen["tokens"] == 12


async def test_adaptive_consistency_reports_each_batch() -> None:
    # Every answer differs, so it samples up to max_samples one at a time.
    backend = FakeBackend([f"The answer is {i}" for i in range(10)])
    async with client_for(backend) as client:
        r = await client.post(
            "/v1/chat/completions",
            json=body("adaptive_consistency", {"batch": 1, "max_samples": 4}),
        )
    progress = [p for e in events_of(r.text) if (p := progress_of(e)) is not None]
    sampling = [p for p in progress if p["phase"] == "sampling"]
    assert [p["samples"] for p in sampling] == [1, 2, 3, 4]
    assert [p["calls"] for p in sampling] == [1, 2, 3, 4]
    assert all(p["samples_planned"] == 4 for p in progress)
    assert [p["phase"] for p in progress].count("vote") == 4
    tokens = [p["tokens"] for p in progress]
    assert tokens == sorted(tokens) and tokens[-1] == 16


async def test_beam_search_reports_steps() -> None:
    def endless(req: GenRequest, i: int) -> str:
        if req.stop and "\n\n" in req.stop:
            return f"step {req.messages[-1].content.count('step') if req.continue_final else 0}"
        return "Answer: 3"

    async with client_for(FunctionBackend(endless)) as client:
        r = await client.post(
            "/v1/chat/completions",
            json=body("beam_search", {"n": 2, "beam_width": 2, "max_steps": 3}),
        )
    events = events_of(r.text)
    progress = [p for e in events if (p := progress_of(e)) is not None]
    steps = [p["steps"] for p in progress if p["phase"] == "beam_step"]
    assert steps == [1, 2, 3]
    assert all(p["steps_planned"] == 3 and "samples_planned" not in p for p in progress)
    assert "".join(content_of(e) for e in events).endswith("Answer: 3")


async def test_the_openai_client_parses_the_progress_stream() -> None:
    backend = FakeBackend(["The answer is 42", "The answer is 41", "The answer is 42"])
    app = create_app(backend, ServerSettings())
    client = openai.AsyncOpenAI(
        base_url="http://test/v1",
        api_key="x",
        max_retries=0,
        http_client=httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ),
    )
    stream = await client.chat.completions.create(
        model="fake",
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ponder": {"strategy": "best_of_n", "params": {"n": 3}}},
    )
    text, samples, finish, usage = "", [], None, None
    async for chunk in stream:
        progress = (chunk.model_extra or {}).get("ponder", {}).get("progress")
        if progress is not None:
            assert not text  # progress never follows the answer
            samples.append(progress["samples"])
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
        usage = chunk.usage or usage
    assert text == "The answer is 42" and finish == "stop"
    assert samples[0] == 0 and samples[-1] == 3
    assert usage is not None and usage.completion_tokens == 12


class GatedBackend(FunctionBackend):
    """Answers the first call at once and holds every later call until ``gate`` opens."""

    def __init__(self) -> None:
        super().__init__(fn=lambda req, i: f"The answer is {len(self.calls)}")
        self.gate = asyncio.Event()

    async def generate(self, req: GenRequest) -> list[Generation]:
        if self.calls:
            await self.gate.wait()
        return await super().generate(req)


async def test_progress_leaves_while_the_strategy_is_still_running() -> None:
    backend = GatedBackend()
    gateway = Gateway(backend, ServerSettings())
    result = await gateway.chat(body("adaptive_consistency", {"batch": 1, "max_samples": 3}))
    assert isinstance(result, StreamResult)
    events = result.events
    seen: list[dict[str, Any]] = []
    while True:
        event = json.loads((await anext(events)).removeprefix("data: "))
        seen.append(event)
        p = progress_of(event)
        if p is not None and p["phase"] == "sampling":
            break
    # The first sample is reported while the second call is still held by the engine.
    assert p["samples"] == 1 and len(backend.calls) == 1 and not backend.gate.is_set()
    assert not any(content_of(e) for e in seen)
    backend.gate.set()
    rest = [chunk async for chunk in events]
    assert rest[-1] == "data: [DONE]\n\n"
    assert len(backend.calls) == 3


async def test_a_heartbeat_keeps_a_slow_run_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streaming, "PROGRESS_HEARTBEAT_S", 0.02)
    backend = FakeBackend(["The answer is 42"])
    backend.delay_s = 0.15
    async with client_for(backend) as client:
        r = await client.post("/v1/chat/completions", json=body("self_consistency", {"n": 2}))
    progress = [p for e in events_of(r.text) if (p := progress_of(e)) is not None]
    running = [p for p in progress if p["phase"] == "running"]
    assert len(running) >= 2
    assert [p["elapsed_s"] for p in running] == sorted(p["elapsed_s"] for p in running)
    assert progress[-1]["phase"] == "chosen"


async def test_a_failing_run_ends_the_stream_with_an_error(store: Store) -> None:
    def broken(req: GenRequest, i: int) -> str:
        raise RuntimeError("engine exploded")

    async with client_for(FunctionBackend(broken), store) as client:
        r = await client.post("/v1/chat/completions", json=body("self_consistency", {"n": 2}))
    events = events_of(r.text)
    assert events[-1]["error"]["code"] == "internal_error"
    assert "engine exploded" in events[-1]["error"]["message"]
    (row,) = store.rows()
    assert row.status == "error" and row.strategy == "self_consistency"


async def test_a_client_that_leaves_cancels_the_run_and_settles(store: Store) -> None:
    backend = GatedBackend()
    gateway = Gateway(backend, ServerSettings(), store=store)
    result = await gateway.chat(body("adaptive_consistency", {"batch": 1, "max_samples": 3}))
    assert isinstance(result, StreamResult)
    async for chunk in result.events:
        p = progress_of(json.loads(chunk.removeprefix("data: ")))
        if p is not None and p["phase"] == "sampling":
            break
    await result.events.aclose()  # type: ignore[attr-defined]
    (row,) = store.rows()
    assert row.status == "cancelled" and row.http_status == 499
    assert row.output_tokens == 4  # the one sample it generated is still accounted
    assert len(backend.calls) == 1 and not backend.gate.is_set()
