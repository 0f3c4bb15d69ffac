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

:class:`Tiers` builds each tier's backend once, wraps it in a
:class:`~ponder.guard.GuardedBackend` (timeouts, retries, one circuit breaker
per upstream shared by every tier that points at it) and, following
``fallback`` links, in a :class:`~ponder.guard.FallbackBackend`.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import time
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from ponder.backends import available_backends
from ponder.backends.base import Backend
from ponder.config import PriceSettings, TierSettings
from ponder.errors import InvalidRequest, ModelNotAvailable
from ponder.guard import CircuitBreaker, FallbackBackend, GuardedBackend, RetryPolicy, Timeouts
from ponder.types import Usage

__all__ = ["Tiers", "build_backend", "tier_cost"]

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


def tier_cost(price: PriceSettings, usage: Usage) -> float:
    """USD for ``usage`` at ``price`` (per million tokens; reasoning at the output price
    unless priced separately)."""
    cached = price.cached_input if price.cached_input is not None else price.input
    reasoning = price.reasoning if price.reasoning is not None else price.output
    return (
        usage.input * price.input
        + usage.cached_input * cached
        + usage.reasoning * reasoning
        + usage.output * price.output
    ) / 1_000_000


class Tiers:
    """The configured tiers, built lazily; one instance per process (it owns the breakers)."""

    def __init__(
        self,
        tiers: Mapping[str, TierSettings],
        *,
        builder: Builder = build_backend,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = dict(tiers)
        self._builder = builder
        self._clock = clock
        self._raw: dict[str, Backend] = {}
        self._guarded: dict[str, GuardedBackend] = {}
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}
        for name, tier in self.settings.items():
            if tier.fallback is not None and tier.fallback not in self.settings:
                raise InvalidRequest(
                    f"tier {name!r} falls back to unknown tier {tier.fallback!r}; "
                    f"tiers: {', '.join(self.settings)}",
                    param="tiers",
                )

    @property
    def names(self) -> list[str]:
        return list(self.settings)

    def _get(self, name: str) -> TierSettings:
        tier = self.settings.get(name)
        if tier is None:
            raise ModelNotAvailable(
                f"no tier named {name!r}; configured tiers: {', '.join(self.settings) or 'none'}",
                param="model",
            )
        return tier

    def resolve(self, model: str | None) -> str:
        """The tier for a request's ``model``: a tier name, else a tier's model; None: the first."""
        if model is None:
            if not self.settings:
                raise ModelNotAvailable("no tiers are configured ([tiers.<name>] in ponder.toml)")
            return next(iter(self.settings))
        if model in self.settings:
            return model
        for name, tier in self.settings.items():
            if tier.model == model:
                return name
        raise ModelNotAvailable(
            f"model {model!r} is not served here; use a tier name "
            f"({', '.join(self.settings)}) or one of their models",
            param="model",
        )

    def raw(self, name: str) -> Backend:
        if name not in self._raw:
            self._raw[name] = self._builder(name, self._get(name))
        return self._raw[name]

    def breaker(self, name: str) -> CircuitBreaker:
        """The breaker of the upstream behind tier ``name`` (shared by tiers on one upstream)."""
        tier = self._get(name)
        key = (tier.backend, tier.base_url or tier.model)
        if key not in self._breakers:
            self._breakers[key] = CircuitBreaker(
                tier.base_url or f"{tier.backend}:{tier.model}",
                failure_threshold=tier.breaker_failures,
                reset_after_s=tier.breaker_reset_s,
                clock=self._clock,
            )
        return self._breakers[key]

    def guarded(self, name: str) -> GuardedBackend:
        if name not in self._guarded:
            tier = self._get(name)
            self._guarded[name] = GuardedBackend(
                self.raw(name),
                timeouts=Timeouts(
                    total_s=tier.total_timeout_s,
                    attempt_s=tier.attempt_timeout_s,
                    first_token_s=tier.first_token_s,
                ),
                retry=RetryPolicy(attempts=tier.retries + 1, base_delay_s=tier.retry_base_delay_s),
                breaker=self.breaker(name),
                clock=self._clock,
                sleep=asyncio.sleep,
            )
        return self._guarded[name]

    def chain(self, name: str) -> list[str]:
        """``name`` and the tiers it falls back to, in order (cycles cut)."""
        out: list[str] = []
        current: str | None = name
        while current is not None and current not in out:
            self._get(current)
            out.append(current)
            current = self.settings[current].fallback
        return out

    def backend(self, name: str, *, fallback: bool = True) -> Backend:
        """Tier ``name`` guarded, falling back along its ``fallback`` links while it is out."""
        names = self.chain(name) if fallback else [name]
        if len(names) == 1:
            return self.guarded(name)
        return FallbackBackend([self.guarded(n) for n in names], name=name)

    def price(self, name: str) -> PriceSettings:
        return self._get(name).price

    def cost(self, name: str, usage: Usage) -> float:
        return tier_cost(self.price(name), usage)

    async def aclose(self) -> None:
        """Close the HTTP pools (and engines) of the tiers built so far."""
        for backend in self._raw.values():
            closer = getattr(backend, "aclose", None)
            if closer is not None:
                await closer()
            elif callable(getattr(backend, "close", None)):
                backend.close()  # type: ignore[attr-defined]
        self._raw.clear()
        self._guarded.clear()
