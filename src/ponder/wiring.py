"""The composition root: builds engines, tiers, the store and the governed gateway from settings.

The entry points (``ponder serve``, ``ponder deploy ray``, the benchmarks) all build
through here, so a setting means the same thing everywhere. Heavy modules (the engine,
the server stack) are imported inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ponder.backends.base import Backend
from ponder.config import EngineSettings, Settings, TierSettings

if TYPE_CHECKING:
    from ponder.guard import Tiers
    from ponder.ledger import Store
    from ponder.server.gateway import Gateway

__all__ = [
    "Progress",
    "build_gateway",
    "embedded_backend",
    "engine_tier_backend",
    "open_store",
    "tier_builder",
]

Progress = Callable[[str], None]


def embedded_backend(model: str, settings: Settings, progress: Progress | None = None) -> Backend:
    """The embedded llama.cpp engine on ``model``; a catalog model is pulled first."""
    # Import the engine before pulling: a missing extra fails before a long download.
    from ponder.backends import catalog
    from ponder.backends.llama_cpp import LlamaCppBackend

    if model in catalog.CATALOG:
        catalog.ensure_model(model, settings.cache_dir, progress=progress)
    return LlamaCppBackend(model=model, **settings.engine.backend_options(settings.cache_dir))


def engine_tier_backend(
    name: str,
    tier: TierSettings,
    engine: EngineSettings,
    cache_dir: Path,
    *,
    threads: int | None = None,
    progress: Progress | None = None,
) -> Backend:
    """The backend of one ``[tiers.*]`` entry; an embedded (``llama_cpp``) tier gets the
    ``[engine]`` settings under its own ``options`` and its catalog model pulled first."""
    from ponder.backends.tiers import build_backend

    if tier.backend != "llama_cpp":
        return build_backend(name, tier)
    from ponder.backends import catalog

    if tier.model in catalog.CATALOG:
        catalog.ensure_model(tier.model, cache_dir, progress=progress)
    defaults = engine.backend_options(cache_dir, threads=threads)
    return build_backend(name, tier.model_copy(update={"options": {**defaults, **tier.options}}))


def tier_builder(
    settings: Settings, progress: Progress | None = None
) -> Callable[[str, TierSettings], Backend]:
    """Builds the ``[tiers.*]`` backends of one server (see :func:`engine_tier_backend`)."""

    def build(name: str, tier: TierSettings) -> Backend:
        return engine_tier_backend(
            name, tier, settings.engine, settings.cache_dir, progress=progress
        )

    return build


def open_store(settings: Settings, url: str | None = None) -> Store:
    """The store at ``url``, else ``ledger.url`` (default: the SQLite file)."""
    from ponder.ledger import Store

    return Store(url or settings.ledger.url)


def build_gateway(
    backend: Backend, settings: Settings, *, db: str | None = None, tiers: Tiers | None = None
) -> Gateway:
    """The governed gateway: store, prices, alerts and telemetry from settings.

    With ``[tiers.*]`` configured the gateway serves every tier (``tiers``, else built
    here from the settings); ``backend`` is the default tier's (``server.tier``).
    """
    from ponder.budget.pricing import Price, PriceTable
    from ponder.guard import Tiers
    from ponder.router.policy import Router
    from ponder.server.gateway import Gateway
    from ponder.telemetry.alerts import Alerts, webhook_sender

    pricing = dict(settings.pricing)
    for name, tier in settings.tiers.items():
        # A tier's own price applies unless [pricing] names the tier.
        if name not in pricing and tier.price.model_dump(exclude_defaults=True):
            pricing[name] = tier.price
    prices = {name: Price(**p.model_dump()) for name, p in pricing.items()}
    default = prices.pop("default", Price())
    tier_backends: dict[str, Backend] = {}
    if settings.tiers:
        tiers = tiers or Tiers(settings.tiers)
        # Built now, so a tier that cannot start fails `serve`, not a request.
        tier_backends = {name: tiers.backend(name) for name in settings.tiers}
    a = settings.alerts
    otel = None
    if settings.telemetry.otel:
        from ponder.telemetry.otel import OtelTracer

        otel = OtelTracer()
    gateway = Gateway(
        backend,
        settings.server,
        store=open_store(settings, db) if settings.server.ledger else None,
        prices=PriceTable(models=prices, default=default),
        alerts=Alerts(
            sender=webhook_sender(a.webhook_url) if a.webhook_url else None,
            thinking_factor=a.thinking_factor,
            min_class_samples=a.min_class_samples,
            error_burst=a.error_burst,
            error_window_s=a.error_window_s,
        ),
        quota_thresholds=a.quota_thresholds,
        otel=otel,
        router=Router.from_settings(settings.router, tiers=list(settings.tiers)),
        guardrails=settings.guardrails,
        tiers=tier_backends,
        tier_models={name: tier.model for name, tier in settings.tiers.items()},
    )
    gateway.tier_pool = tiers
    return gateway
