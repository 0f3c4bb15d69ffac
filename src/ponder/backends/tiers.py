"""Model tiers: named backend + model + price entries from ``ponder.toml``, built into backends.

```toml
[tiers.small]
backend = "llama_cpp"
model = "qwen2.5-coder-0.5b-instruct"

[tiers.remote]
backend = "openai_compat"
model = "Qwen/Qwen3-8B"
base_url = "http://gpu-box:8000/v1"
options = { flavor = "vllm" }
price = { input = 0.05, output = 0.2 }
fallback = "small"          # used while "remote" is out
```

:func:`build_backend` builds one tier's bare backend. The resilience around it
(timeouts, retries, one circuit breaker per upstream, fallback links) is a layer
above the backends: :class:`ponder.guard.Tiers` builds each tier once with this
function and wraps it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from ponder.backends import available_backends
from ponder.backends.base import Backend
from ponder.config import TierSettings
from ponder.errors import InvalidRequest

__all__ = ["Builder", "build_backend"]

# Backends that talk HTTP and take base_url / api_key / connect_timeout_s / name.
_HTTP_BACKENDS = frozenset({"openai_compat", "anthropic"})

Builder = Callable[[str, TierSettings], Backend]


def build_backend(name: str, tier: TierSettings) -> Backend:
    """The bare backend of one tier (no guard, no fallback)."""
    kwargs: dict[str, Any] = {"model": tier.model}
    if tier.base_url is not None:
        kwargs["base_url"] = tier.base_url
    key = tier.api_key()
    if tier.api_key_env is not None and key is None:
        raise InvalidRequest(
            f"tier {name!r} reads its API key from ${tier.api_key_env}, which is not set",
            param="tiers",
        )
    if key is not None:
        kwargs["api_key"] = key
    if tier.backend in _HTTP_BACKENDS:
        kwargs["connect_timeout_s"] = tier.connect_timeout_s
        kwargs["name"] = name
    kwargs.update(tier.options)
    factory = _factory(tier.backend)
    params = inspect.signature(factory).parameters
    if "model" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs.pop("model")  # e.g. the scripted fake backends
    backend: Backend = factory(**kwargs)
    return backend


def _factory(backend: str) -> Callable[..., Backend]:
    for ep in entry_points(group="ponder.backends"):
        if ep.name == backend:
            loaded: Callable[..., Backend] = ep.load()
            return loaded
    target = available_backends().get(backend)
    if target is None:
        raise InvalidRequest(
            f"unknown backend {backend!r}; available: {', '.join(sorted(available_backends()))}",
            param="tiers",
        )
    module, _, attr = target.partition(":")
    found: Callable[..., Backend] = getattr(importlib.import_module(module), attr)
    return found
