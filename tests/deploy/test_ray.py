"""The gateway on a local Ray Serve cluster: two replicas, the embedded tier, one PostgreSQL ledger.

A key with a token quota that admits only some of the requests; concurrent traffic
through Serve's HTTP proxy reaches both gateway replicas; the quota holds across them
(the counter ends at or under the limit, within one request's worst case of it), every
refusal is a 429 and every 200 has exactly one ledger row.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ponder.budget.quota import Limit, estimate_prompt_tokens
from ponder.config import LedgerSettings, ServerSettings, Settings, TierSettings
from ponder.ledger import Store
from ponder.ledger.testing import PostgresUnavailable, temporary_store
from ponder.types import Message

pytestmark = pytest.mark.model

ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'ponder[ray]')")
serve = pytest.importorskip(
    "ray.serve", reason="Ray Serve is not installed (pip install 'ponder[ray]')"
)
pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (pip install 'ponder[llama]')"
)

from ponder.deploy.ray import (  # noqa: E402  (after the skips: needs nothing, but reads well)
    REPLICA_HEADER,
    GatewayDeploySettings,
    RayDeploySettings,
    TierDeploySettings,
)
from ponder.deploy.ray import deploy as deploy_on_ray  # noqa: E402

MODEL = "qwen2.5-coder-0.5b-instruct"
MAX_TOKENS = 8
MESSAGES = [
    {"role": "system", "content": "You are a terse assistant. Reply with one word."},
    {"role": "user", "content": "Name one primary colour."},
]
BURST = 16


@pytest.fixture
def pg_store() -> Iterator[Store]:
    try:
        with temporary_store("postgresql") as store:
            yield store
    except PostgresUnavailable as exc:
        if os.environ.get("PONDER_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PONDER_REQUIRE_POSTGRES=1 but {exc}")
        pytest.skip(str(exc))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def local_ray(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=max(os.cpu_count() or 2, 2),
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        log_to_driver=False,
    )
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


async def _chat(client: Any, key: str) -> tuple[int, dict[str, Any], str]:
    resp = await client.post(
        "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={
            "model": "small",
            "messages": MESSAGES,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "reasoning_effort": "none",
        },
    )
    return resp.status_code, resp.json(), resp.headers.get(REPLICA_HEADER, "")


async def _stream(url: str, key: str) -> tuple[int, list[str]]:
    """Status and the ``data:`` payloads of one streamed completion."""
    import httpx

    body = {"model": "small", "messages": MESSAGES, "max_tokens": MAX_TOKENS, "stream": True}
    async with (
        httpx.AsyncClient(base_url=url, timeout=120) as client,
        client.stream(
            "POST", "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json=body
        ) as resp,
    ):
        lines = [line async for line in resp.aiter_lines()]
    return resp.status_code, [line[6:] for line in lines if line.startswith("data: ")]


async def _post(url: str, key: str, messages: list[dict[str, str]]) -> tuple[int, Any]:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        resp = await client.post(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": "small", "messages": messages, "max_tokens": MAX_TOKENS},
        )
    return resp.status_code, resp.json()


async def _traffic(url: str, key: str) -> list[tuple[int, dict[str, Any], str]]:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        # A burst: every request reserves its worst case at once, only some fit.
        results = list(await asyncio.gather(*(_chat(client, key) for _ in range(BURST))))
        # Then pairs until the quota is spent: with per-replica state each replica would
        # keep admitting up to the whole limit on its own.
        refused_in_a_row = 0
        for _ in range(15):
            pair = await asyncio.gather(_chat(client, key), _chat(client, key))
            results.extend(pair)
            refused_in_a_row = refused_in_a_row + 2 if all(p[0] == 429 for p in pair) else 0
            if refused_in_a_row >= 4:
                break
    return results


def test_two_gateway_replicas_share_quota_and_ledger(
    pg_store: Store, local_ray: None, tmp_path: Path
) -> None:
    record, key = pg_store.create_key("alice", name="ray-test")
    streamer, stream_key = pg_store.create_key("bob", name="ray-test-stream")
    # One request's worst case, as the gateway computes it for this tier (bytes bound).
    worst = estimate_prompt_tokens(object(), [Message(**m) for m in MESSAGES]) + MAX_TOKENS
    limit = worst * 7 // 2  # 3 requests' worst cases at once; about 9 at their actual cost
    pg_store.set_limit(Limit("key", record.id, "tokens", "day", limit))

    settings = Settings(
        tiers={
            "small": TierSettings(
                backend="llama_cpp", model=MODEL, options={"n_ctx": 1024, "max_sequences": 8}
            )
        },
        ledger=LedgerSettings(url=pg_store.url),
        server=ServerSettings(require_auth=True),
    )
    port = _free_port()
    deploy = RayDeploySettings(
        app_name="ponder-test",
        port=port,
        gateway=GatewayDeploySettings(replicas=2, num_cpus=0.25),
        tiers={"small": TierDeploySettings(num_cpus=1)},
    )
    url = deploy_on_ray(settings, deploy)  # the Ray started above; waits until replicas are up
    assert url == f"http://127.0.0.1:{port}"

    # Streams cross the handle too (the tier's async generator, deltas as they decode).
    status, events = asyncio.run(_stream(url, stream_key))
    assert status == 200 and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.strip(), chunks
    # The engine's own errors cross the handle as themselves: a prompt over n_ctx is a 400.
    status, body = asyncio.run(
        _post(url, stream_key, [{"role": "user", "content": "word " * 1500}])
    )
    assert status == 400 and body["error"]["code"] == "context_length_exceeded", body
    results = asyncio.run(_traffic(url, key))

    ok = [body for status, body, _ in results if status == 200]
    refused = [body for status, body, _ in results if status != 200]
    assert ok and refused, [s for s, _, _ in results]
    assert {status for status, _, _ in results} == {200, 429}
    assert all(b["error"]["code"] == "quota_exceeded" for b in refused)
    assert len({replica for _, _, replica in results}) == 2  # both replicas served traffic

    used, reserved = pg_store.counter("key", record.id, "tokens", "day")
    assert reserved == 0  # every hold settled
    assert used <= limit
    assert limit - used < worst  # admission went as far as the shared counter allowed

    rows = [r for r in pg_store.rows() if r.key_id == record.id]
    others = [r.http_status for r in pg_store.rows() if r.key_id == streamer.id]
    assert sorted(others) == [200, 400]  # the stream and the refused prompt, one row each
    assert sorted(r.id for r in rows) == sorted(b["id"] for b in ok)  # one row per 200, no more
    assert all(r.http_status == 200 and r.tier == "small" and r.key_id == record.id for r in rows)
    assert (
        sum(
            r.input_tokens + r.cached_input_tokens + r.reasoning_tokens + r.output_tokens
            for r in rows
        )
        == used
    )
    for body in ok:
        assert body["usage"]["completion_tokens"] <= MAX_TOKENS
