"""Model tiers from ponder.toml: parsing, resolution, guarded backends, fallback, cost."""

from __future__ import annotations

import pytest

from ponder.backends.openai_compat import OpenAICompatBackend
from ponder.backends.tiers import build_backend
from ponder.budget.pricing import Price, to_usd
from ponder.config import PriceSettings, TierSettings, load_settings
from ponder.errors import InvalidRequest, ModelNotAvailable
from ponder.guard import FallbackBackend, GuardedBackend, Tiers
from ponder.types import GenRequest, Message, Usage

TOML = """
[tiers.small]
backend = "fake"
model = "tiny"
options = { replies = ["small says 4"] }

[tiers.remote]
backend = "openai_compat"
model = "Qwen/Qwen3-8B"
base_url = "http://127.0.0.1:9/v1"
options = { flavor = "vllm" }
price = { input = 0.5, output = 2.0 }
retries = 1
retry_base_delay_s = 0.0
fallback = "small"

[tiers.claude]
backend = "anthropic"
model = "claude-sonnet-4-5"
api_key_env = "PONDER_TEST_ANTHROPIC_KEY"
"""


@pytest.fixture
def settings(tmp_path, monkeypatch):
    path = tmp_path / "ponder.toml"
    path.write_text(TOML)
    monkeypatch.setenv("PONDER_CONFIG", str(path))
    return load_settings()


def test_tiers_are_read_from_ponder_toml(settings):
    assert list(settings.tiers) == ["small", "remote", "claude"]
    remote = settings.tiers["remote"]
    assert remote.options == {"flavor": "vllm"} and remote.price.output == 2.0


def test_resolve_by_tier_name_or_model(settings):
    tiers = Tiers(settings.tiers)
    assert tiers.resolve(None) == "small"
    assert tiers.resolve("remote") == "remote"
    assert tiers.resolve("Qwen/Qwen3-8B") == "remote"
    with pytest.raises(ModelNotAvailable, match="small, remote, claude"):
        tiers.resolve("gpt-9")


def test_built_backends_are_guarded_and_follow_fallback_links(settings):
    tiers = Tiers(settings.tiers)
    remote = tiers.backend("remote")
    assert isinstance(remote, FallbackBackend)
    assert [b.name for b in remote.backends] == ["remote", "fake"]
    inner = tiers.guarded("remote").inner
    assert isinstance(inner, OpenAICompatBackend) and inner.flavor == "vllm"
    assert inner.model == "Qwen/Qwen3-8B"
    assert isinstance(tiers.backend("remote", fallback=False), GuardedBackend)
    assert tiers.chain("remote") == ["remote", "small"]


async def test_an_unreachable_tier_falls_back_to_the_next(settings):
    tiers = Tiers(settings.tiers)
    (gen,) = await tiers.backend("remote").generate(
        GenRequest(messages=[Message(role="user", content="2+2?")])
    )
    assert gen.text == "small says 4"
    assert tiers.guarded("remote").attempts == 2  # retries = 1


def test_missing_api_key_is_a_clear_error(settings, monkeypatch):
    monkeypatch.delenv("PONDER_TEST_ANTHROPIC_KEY", raising=False)
    with pytest.raises(InvalidRequest, match="PONDER_TEST_ANTHROPIC_KEY"):
        Tiers(settings.tiers).raw("claude")
    monkeypatch.setenv("PONDER_TEST_ANTHROPIC_KEY", "sk-x")
    backend = Tiers(settings.tiers).raw("claude")
    assert backend.http.client.headers["x-api-key"] == "sk-x"  # type: ignore[attr-defined]


def test_unknown_fallback_is_rejected():
    with pytest.raises(InvalidRequest, match="unknown tier 'nope'"):
        Tiers({"a": TierSettings(backend="fake", model="m", fallback="nope")})


def test_one_breaker_per_upstream():
    same = dict(backend="openai_compat", model="m", base_url="http://h:1/v1")
    tiers = Tiers(
        {
            "a": TierSettings(**same),
            "b": TierSettings(**{**same, "model": "other"}),
            "c": TierSettings(backend="openai_compat", model="m", base_url="http://h:2/v1"),
        }
    )
    assert tiers.breaker("a") is tiers.breaker("b")
    assert tiers.breaker("a") is not tiers.breaker("c")


def test_cost_prices_reasoning_as_output_unless_set():
    # A tier's price is charged by the gateway's one cost formula (Price.cost_micro).
    def cost(price: PriceSettings, usage: Usage) -> float:
        return to_usd(Price(**price.model_dump()).cost_micro(usage))

    price = PriceSettings(input=1.0, output=4.0, cached_input=0.1)
    u = Usage(input=1_000_000, cached_input=1_000_000, reasoning=500_000, output=500_000)
    assert cost(price, u) == pytest.approx(1.0 + 0.1 + 2.0 + 2.0)
    priced = price.model_copy(update={"reasoning": 8.0})
    assert cost(priced, u) == pytest.approx(1.0 + 0.1 + 4.0 + 2.0)


async def test_build_backend_passes_http_settings():
    tier = TierSettings(
        backend="openai_compat",
        model="m",
        base_url="http://upstream.test/v1",
        options={"flavor": "sglang"},
        connect_timeout_s=1.5,
    )
    b = build_backend("mid", tier)
    assert isinstance(b, OpenAICompatBackend)
    assert b.name == "mid" and b.thinking_control == "sglang"
    assert b.http.client.timeout.connect == 1.5
    await b.aclose()
