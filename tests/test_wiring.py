"""The composition root: the one mapping of [engine] settings to backend arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ponder.backends import tiers as tiers_module
from ponder.backends.fake import FakeBackend
from ponder.config import EngineSettings, ServerSettings, Settings, TierSettings
from ponder.wiring import build_gateway, engine_tier_backend


def test_engine_settings_map_to_backend_arguments(tmp_path: Path) -> None:
    engine = EngineSettings(
        n_ctx=2048,
        max_sequences=4,
        n_batch=64,
        threads=3,
        seed=7,
        prefix_cache=False,
        weight_repack=False,
    )
    expected = {
        "n_ctx": 2048,
        "max_sequences": 4,
        "n_batch": 64,
        "threads": 3,
        "cache_dir": tmp_path,
        "seed": 7,
        "prefix_cache": False,
        "weight_repack": False,
    }
    assert engine.backend_options(tmp_path) == expected
    assert engine.backend_options(tmp_path, threads=5) == {**expected, "threads": 5}


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> dict[str, TierSettings]:
    """The tier settings each backend would be built from (no engine is loaded)."""
    seen: dict[str, TierSettings] = {}

    def build(name: str, tier: TierSettings) -> Any:
        seen[name] = tier
        return FakeBackend(["ok"], name=name)

    monkeypatch.setattr(tiers_module, "build_backend", build)
    return seen


def test_an_embedded_tier_gets_the_engine_settings_under_its_own(
    built: dict[str, TierSettings], tmp_path: Path
) -> None:
    engine = EngineSettings(n_ctx=2048, threads=3, seed=7)
    tier = TierSettings(backend="llama_cpp", model="/models/x.gguf", options={"n_ctx": 4096})
    engine_tier_backend("small", tier, engine, tmp_path)
    engine_tier_backend("pinned", tier, engine, tmp_path, threads=5)
    defaults = {
        "max_sequences": 16,
        "n_batch": 512,
        "cache_dir": tmp_path,
        "seed": 7,
        "prefix_cache": True,
        "weight_repack": None,
    }
    assert built["small"].options == {**defaults, "n_ctx": 4096, "threads": 3}
    assert built["pinned"].options == {**defaults, "n_ctx": 4096, "threads": 5}
    # A remote tier is built from its own settings alone.
    remote = TierSettings(backend="openai_compat", model="m", base_url="http://h/v1")
    engine_tier_backend("remote", remote, engine, tmp_path)
    assert built["remote"] == remote


def test_build_gateway_without_a_ledger_has_no_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no ponder.toml of the checkout
    monkeypatch.delenv("PONDER_CONFIG", raising=False)
    backend = FakeBackend(["ok"])
    settings = Settings(server=ServerSettings(ledger=False))
    gateway = build_gateway(backend, settings)
    assert gateway.store is None and gateway.backend is backend
    # No [tiers.*]: the one backend serves, and no tier pool was built.
    assert list(gateway.tiers.values()) == [backend] and gateway.tier_pool is None
