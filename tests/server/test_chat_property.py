"""Property test of the chat endpoint: any body gets a non-5xx answer, and a rejected one
spends no quota and leaves no ledger row."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ponder.backends.fake import FakeBackend, Reply
from ponder.budget.quota import Limit
from ponder.config import ServerSettings
from ponder.ledger import Store
from ponder.server.app import create_app
from ponder.server.gateway import Gateway

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "model",
    "messages",
    "n",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "reasoning_effort",
    "thinking",
    "ponder",
]
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system", "tool", "bogus"]),
            "content": st.text(max_size=30) | json_values,
        }
    ),
    max_size=3,
)
ponder_opts = st.fixed_dictionaries(
    {},
    optional={
        "strategy": st.sampled_from(["direct", "cot", "self_consistency", "nope"]) | json_values,
        "budget": st.integers(-5, 50) | json_values,
        "thinking_budget": st.integers(-5, 50) | json_values,
        "params": st.dictionaries(st.sampled_from(["n", "temperature", "x"]), json_values),
        "deadline_s": st.floats(-1, 5, allow_nan=False) | json_values,
        "extra": json_values,
    },
)
bodies = (
    st.fixed_dictionaries(
        {"messages": messages},
        optional={
            **{f: json_values for f in FIELDS if f not in ("messages", "ponder")},
            "max_tokens": st.integers(-2, 40) | json_values,
            "ponder": ponder_opts | json_values,
        },
    )
    | json_values
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(payload=bodies, raw=st.none() | st.binary(max_size=40))
def test_chat_never_5xx_and_rejections_spend_nothing(
    payload: Any, raw: bytes | None, tmp_path: Path
) -> None:
    # One store for all examples (a fresh database per example is slow): each
    # example checks the change it made.
    store = _stores.get(str(tmp_path))
    if store is None:
        store = _stores[str(tmp_path)] = Store(f"sqlite:///{tmp_path / 'ponder.db'}")
        store.set_limit(Limit("session", "*", "tokens", "day", 10**9))
    asyncio.run(_check(payload, raw, store))


_stores: dict[str, Store] = {}


async def _check(payload: Any, raw: bytes | None, store: Store) -> None:
    before = store.counter("session", "s", "tokens", "day")
    rows_before = len(store.rows())
    backend = FakeBackend([Reply("The answer is 4", reasoning="two plus two")])
    app = create_app(backend, gateway=Gateway(backend, ServerSettings(), store=store))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        headers = {"x-ponder-session": "s", "content-type": "application/json"}
        if raw is not None:
            r = await client.post("/v1/chat/completions", content=raw, headers=headers)
        else:
            r = await client.post("/v1/chat/completions", json=payload, headers=headers)
    assert r.status_code < 500, r.text
    used, reserved = store.counter("session", "s", "tokens", "day")
    assert reserved == 0
    rows = store.rows()
    if r.status_code != 200:
        assert r.json()["error"]["message"]
        assert used == before[0] and len(rows) == rows_before and backend.calls == []
    else:
        assert len(rows) == rows_before + 1
        row = next(x for x in rows if x.id == r.headers["x-ponder-request-id"])
        assert used - before[0] == row.input_tokens + row.reasoning_tokens + row.output_tokens
