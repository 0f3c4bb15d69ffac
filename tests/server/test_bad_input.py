"""Malformed requests found by an independent probe: each gets a clear 4xx with an
OpenAI error body, spends no quota and leaves no ledger row, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from ponder.backends.fake import FakeBackend, Reply
from ponder.budget.quota import Limit
from ponder.config import ServerSettings
from ponder.ledger import Store
from ponder.server.app import create_app
from ponder.server.gateway import Gateway

BIG = 2**63
USER = [{"role": "user", "content": "hi"}]

CHAT_BODIES: dict[str, Any] = {
    "max_tokens 2^63": {"messages": USER, "max_tokens": BIG},
    "max_tokens 2^64": {"messages": USER, "max_tokens": 2**64},
    "budget 2^63": {"messages": USER, "ponder": {"budget": BIG}},
    "params.n 2^63": {
        "messages": USER,
        "ponder": {"strategy": "self_consistency", "params": {"n": BIG}},
    },
    "thinking_budget 2^63": {"messages": USER, "ponder": {"thinking_budget": BIG}},
    "thinking.budget_tokens 2^63": {
        "messages": USER,
        "thinking": {"type": "enabled", "budget_tokens": BIG},
    },
    "max_tokens true": {"messages": USER, "max_tokens": True},
    "max_tokens 1e30": {"messages": USER, "max_tokens": 1e30},
    "stream 'yes'": {"messages": USER, "stream": "yes"},
    "cascade strong_tier 5": {
        "messages": USER,
        "ponder": {"strategy": "cascade", "params": {"strong_tier": 5}},
    },
    "max_tokens 2^31": {"messages": USER, "max_tokens": 2**31},
    "n x max_tokens ~ 2^62": {
        "messages": USER,
        "max_tokens": 2**31 - 1,
        "ponder": {"strategy": "self_consistency", "params": {"n": 2**31 - 1}},
    },
    "params.n 2^40": {
        "messages": USER,
        "ponder": {"strategy": "self_consistency", "params": {"n": 2**40}},
    },
    "temperature true": {"messages": USER, "temperature": True},
    "include_reasoning 'yes'": {"messages": USER, "ponder": {"include_reasoning": "yes"}},
    "deadline_s 1e308": {"messages": USER, "ponder": {"deadline_s": 1e308}},
    "legacy functions": {"messages": USER, "functions": [{"name": "f", "parameters": {}}]},
    "legacy function_call": {"messages": USER, "function_call": "auto"},
    "audio output": {"messages": USER, "modalities": ["text", "audio"]},
    "audio options": {"messages": USER, "audio": {"voice": "alloy", "format": "wav"}},
    "web search": {"messages": USER, "web_search_options": {}},
    "logit_bias word key": {"messages": USER, "logit_bias": {"hello": 5}},
    "logit_bias 101": {"messages": USER, "logit_bias": {"15": 101}},
    "logit_bias negative id": {"messages": USER, "logit_bias": {"-3": 1}},
    "presence_penalty 3": {"messages": USER, "presence_penalty": 3},
    "frequency_penalty 'high'": {"messages": USER, "frequency_penalty": "high"},
    "params nested 100": {
        "messages": USER,
        "ponder": {"params": {"x": json.loads("[" * 100 + "]" * 100)}},
    },
}


def _nested(depth: int) -> bytes:
    return ('{"messages": ' + "[" * depth + "]" * depth + "}").encode()


RAW_BODIES: dict[str, bytes] = {
    "nested 3000": _nested(3000),
    "nested 100000": _nested(100_000),
    "lone surrogate": b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}',
    "NUL in user": b'{"messages": [{"role": "user", "content": "x"}], "user": "a\\u0000b"}',
    "NUL in a key": b'{"messages": [{"role": "user", "content": "x"}], "a\\u0000": 1}',
    "int 2^70 in an ignored field": b'{"messages": [{"role": "user", "content": "x"}], "x": 1180591620717411303424}',
    "17 MB": b'{"messages": [{"role": "user", "content": "' + b"a" * (17 * 2**20) + b'"}]}',
}


def _app(store: Store) -> tuple[Any, FakeBackend]:
    backend = FakeBackend([Reply("The answer is 4")])
    gateway = Gateway(backend, ServerSettings(), store=store)
    return create_app(backend, gateway=gateway), backend


async def _post(app: Any, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.request(
            "POST" if "json" in kwargs or "content" in kwargs else "GET", path, **kwargs
        )


def _assert_refused_cleanly(
    r: httpx.Response, store: Store, backend: FakeBackend, before: Any, rows: int
) -> None:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.json()["error"]["message"]
    assert store.counter("session", "s", "tokens", "day") == before
    assert len(store.rows()) == rows
    assert backend.calls == []


@pytest.mark.parametrize("case", list(CHAT_BODIES))
async def test_bad_chat_field_is_a_clean_400(store: Store, case: str) -> None:
    store.set_limit(Limit("session", "*", "tokens", "day", 10**9))
    app, backend = _app(store)
    before, rows = store.counter("session", "s", "tokens", "day"), len(store.rows())
    r = await _post(
        app, "/v1/chat/completions", json=CHAT_BODIES[case], headers={"x-ponder-session": "s"}
    )
    _assert_refused_cleanly(r, store, backend, before, rows)


@pytest.mark.parametrize("case", list(RAW_BODIES))
async def test_bad_chat_body_is_a_clean_400(store: Store, case: str) -> None:
    store.set_limit(Limit("session", "*", "tokens", "day", 10**9))
    app, backend = _app(store)
    before, rows = store.counter("session", "s", "tokens", "day"), len(store.rows())
    headers = {"x-ponder-session": "s", "content-type": "application/json"}
    r = await _post(app, "/v1/chat/completions", content=RAW_BODIES[case], headers=headers)
    _assert_refused_cleanly(r, store, backend, before, rows)


@pytest.mark.parametrize(
    "path",
    ["/v1/jobs/a%00b", "/v1/admin/keys/a%00b"],
)
async def test_nul_in_path_ids_is_not_a_5xx(store: Store, path: str) -> None:
    _, admin = store.create_key("root", scopes=["admin"])
    app, _ = _app(store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        headers = {"authorization": f"Bearer {admin}"}
        r = (
            await client.get(path, headers=headers)
            if "jobs" in path
            else await client.delete(path, headers=headers)
        )
    assert 400 <= r.status_code < 500, (r.status_code, r.text)


async def test_huge_quota_limit_and_window_are_clean_400s(store: Store) -> None:
    _, admin = store.create_key("root", scopes=["admin"])
    app, _ = _app(store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        headers = {"authorization": f"Bearer {admin}"}
        quota = {"scope": "user", "subject": "u", "metric": "tokens", "window": "day", "limit": BIG}
        r = await client.put("/v1/admin/quotas", json=quota, headers=headers)
        assert 400 <= r.status_code < 500, r.text
        r = await client.post("/v1/admin/keys", json={"user": "a\u0000b"}, headers=headers)
        assert 400 <= r.status_code < 500, r.text
    assert [lim for lim in store.limits() if lim.subject == "u"] == []
    assert [k for k in store.list_keys() if k.user != "root"] == []


async def test_huge_dashboard_window_is_not_a_5xx(store: Store) -> None:
    _, admin = store.create_key("root", scopes=["admin"])
    app, _ = _app(store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        headers = {"authorization": f"Bearer {admin}"}
        r = await client.get("/v1/admin/dashboard/series?window_s=1e308", headers=headers)
        assert 400 <= r.status_code < 500, r.text


async def test_step_search_on_a_backend_without_continuation_is_refused_before_reserving(
    store: Store,
) -> None:
    store.set_limit(Limit("session", "*", "tokens", "day", 10**9))
    backend = FakeBackend([Reply("The answer is 4")])
    backend.capabilities = backend.capabilities.model_copy(update={"continue_final": False})
    app = create_app(backend, gateway=Gateway(backend, ServerSettings(), store=store))
    before = store.counter("session", "s", "tokens", "day")
    for strategy in ("mcts", "beam_search", "dvts", "tree_of_thoughts"):
        body = {"messages": USER, "ponder": {"strategy": strategy}}
        r = await _post(app, "/v1/chat/completions", json=body, headers={"x-ponder-session": "s"})
        _assert_refused_cleanly(r, store, backend, before, 0)
        assert "continu" in r.json()["error"]["message"]
    # The same strategy on a backend that continues runs (the check is not a blanket refusal).
    backend.capabilities = backend.capabilities.model_copy(update={"continue_final": True})
    body = {"messages": USER, "ponder": {"strategy": "mcts", "params": {"iterations": 1}}}
    r = await _post(app, "/v1/chat/completions", json=body, headers={"x-ponder-session": "s"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("case", [c for c in CHAT_BODIES if c != "cascade strong_tier 5"])
async def test_bad_job_is_refused_at_enqueue(store: Store, case: str) -> None:
    app, backend = _app(store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.post("/v1/jobs", json=CHAT_BODIES[case])
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
        assert r.json()["error"]["message"]
        listed = await client.get("/v1/jobs")
    assert listed.status_code == 200 and listed.json()["data"] == []
    assert backend.calls == []
