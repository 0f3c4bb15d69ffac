"""The Serve application: tier deployments, then the gateway ingress replicas."""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ponder.backends.base import Backend
from ponder.backends.tiers import build_backend
from ponder.config import RayDeploySettings, Settings, TierSettings
from ponder.deploy.ray.plan import llm_config, plan_deployment
from ponder.deploy.ray.serve_llm import vllm_tier_backend
from ponder.deploy.ray.tier_server import ServeTierBackend, TierServer
from ponder.guard import Tiers
from ponder.wiring import build_gateway

__all__ = [
    "REPLICA_HEADER",
    "GatewayServer",
    "ReplicaApp",
    "build_app",
    "build_gateway_app",
    "deploy",
]

REPLICA_HEADER = "x-ponder-replica"

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class ReplicaApp:
    """ASGI wrapper of the gateway app in one replica.

    Runs ``startup`` (connect the tier handles) before the app's own lifespan, so a
    replica that cannot reach its tiers fails to start instead of failing requests, and
    names the replica on every response (``x-ponder-replica``).
    """

    def __init__(
        self, app: Any, *, replica: str, startup: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.app = app
        self.replica = replica
        self._startup = startup
        self._header = (REPLICA_HEADER.encode(), replica.encode("latin-1", "replace"))

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self._startup is not None:
            startup, self._startup = self._startup, None
            await startup()
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self._header]}
            await send(message)

        await self.app(scope, receive, send_named)


def _replica_label() -> str:
    try:
        from ray import serve

        ctx = serve.get_replica_context()
        replica_id = getattr(ctx, "replica_id", None)
        if replica_id is not None:
            return str(getattr(replica_id, "unique_id", replica_id))
        return str(ctx.replica_tag)
    except Exception:  # outside a replica (tests, library use)
        return f"{socket.gethostname()}-{os.getpid()}"


def build_gateway_app(
    settings: Settings, handles: Mapping[str, Any], *, replica: str
) -> tuple[ReplicaApp, Tiers]:
    """The gateway app of one replica: the usual governed app over tiers reached by handles.

    ``settings`` is a planned configuration (:func:`plan_deployment`); ``handles`` maps
    the tiers that have deployments to their DeploymentHandles.
    """
    from ponder.server.app import create_app

    remote: list[ServeTierBackend] = []

    def builder(name: str, tier: TierSettings) -> Backend:
        handle = handles.get(name)
        if handle is None:
            return build_backend(name, tier)
        if tier.backend == "vllm":
            return vllm_tier_backend(name, tier, handle)
        backend = ServeTierBackend(handle, tier=name, name=tier.model)
        remote.append(backend)
        return backend

    tiers = Tiers(settings.tiers, builder=builder)
    tier = settings.server.tier or tiers.resolve(None)
    backend = tiers.backend(tier)
    # The gateway serves every tier through these backends (never an engine of its own).
    gateway = build_gateway(backend, settings, tiers=tiers)

    async def startup() -> None:
        for b in remote:
            await b.connect()

    return ReplicaApp(create_app(backend, gateway=gateway), replica=replica, startup=startup), tiers


# Serve builds an ingress's ASGI app with a no-argument function called right after the
# replica's constructor, in the same process; the constructor leaves its app here.
_BUILT_APPS: list[ReplicaApp] = []


def _take_built_app() -> ReplicaApp:
    return _BUILT_APPS.pop()


class GatewayServer:
    """The gateway ingress replica: builds its app from the planned settings and tier handles."""

    def __init__(self, settings: Settings, handles: dict[str, Any]) -> None:
        # Prefixed names: Serve's ASGI wrapper class owns ``app`` and friends.
        self.ponder_replica = _replica_label()
        self.ponder_app, self.ponder_tiers = build_gateway_app(
            settings, handles, replica=self.ponder_replica
        )
        _BUILT_APPS.append(self.ponder_app)


def build_app(settings: Settings, deploy: RayDeploySettings | None = None) -> Any:
    """The Serve application (``serve.run`` it): tier deployments, then the gateway ingress."""
    from ray import serve

    plan = plan_deployment(settings, deploy)
    settings = plan.settings
    handles: dict[str, Any] = {}
    for t in plan.tiers:
        if t.kind == "engine":
            tier_deployment: Any = serve.deployment(TierServer)
            handles[t.tier] = tier_deployment.options(**t.options).bind(
                t.tier, settings.tiers[t.tier], settings.engine, settings.cache_dir, t.threads
            )
        elif t.kind == "vllm":
            from ray.serve.llm import build_llm_deployment

            cfg = llm_config(t.tier, settings.tiers[t.tier], plan.deploy.tiers.get(t.tier))
            handles[t.tier] = build_llm_deployment(cfg, name_prefix=f"tier-{t.tier}-")
    ingress: Any = serve.deployment(serve.ingress(_take_built_app)(GatewayServer))
    return ingress.options(**plan.gateway_options).bind(settings, handles)


def deploy(
    settings: Settings,
    deploy_settings: RayDeploySettings | None = None,
    *,
    address: str | None = None,
    init_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """Deploy on Ray (connecting to ``address``, or starting a local Ray); returns the URL.

    Returns once every replica is up (``serve.run`` waits); a replica that cannot start
    (unreachable database, model missing) fails the deployment with its error.
    """
    import ray
    from ray import serve

    d = deploy_settings or RayDeploySettings()
    app = build_app(settings, d)  # validates before anything starts
    if not ray.is_initialized():
        ray.init(address=address, **dict(init_kwargs or {}))
    serve.start(http_options={"host": d.host, "port": d.port})
    serve.run(app, name=d.app_name, route_prefix=d.route_prefix)
    return f"http://{d.host}:{d.port}{d.route_prefix.rstrip('/')}"
