"""Settings from ``ponder.toml`` and ``PONDER_*`` environment variables.

The only module (besides entry points) that reads the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["EngineSettings", "ServerSettings", "Settings", "default_cache_dir", "load_settings"]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ponder"


class EngineSettings(BaseModel):
    """The embedded llama.cpp engine."""

    model: str = "qwen2.5-coder-0.5b-instruct"
    n_ctx: int = Field(default=8192, ge=256)
    max_sequences: int = Field(default=16, ge=1)
    n_batch: int = Field(default=512, ge=16)
    threads: int | None = None
    seed: int = 0


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    default_strategy: str = "direct"
    max_tokens_default: int = 1024
    # Expose hidden reasoning to callers that ask for it (scopes come with auth).
    allow_reasoning: bool = True
    request_timeout_s: float = 300.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PONDER_",
        env_nested_delimiter="__",
        toml_file="ponder.toml",
        extra="ignore",
    )

    cache_dir: Path = Field(default_factory=default_cache_dir)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = os.environ.get("PONDER_CONFIG", "ponder.toml")
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_path),
        )


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)
