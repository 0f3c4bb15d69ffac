"""The gateway scaled out on Ray Serve: ``ponder deploy ray --config ponder.toml``.

One Serve application, built from ``ponder.toml``:

- ``gateway``: the ponder FastAPI app (auth, routing, strategies, metering,
  quotas, ledger) as the HTTP ingress, with several replicas;
- one deployment per in-process tier (``llama_cpp``: the embedded engine, or
  any registered in-process backend) exposing ``generate`` / ``stream`` to the
  gateway through a :class:`ServeTierBackend`;
- one ``ray.serve.llm`` vLLM server per ``vllm`` tier (GPU nodes), reached by
  the OpenAI-compatible backend (flavor ``vllm``) over a
  :class:`ServeLLMTransport`, so the GPU tiers have no HTTP route of their own
  that could bypass the gateway's quotas;
- HTTP tiers (``openai_compat``, ``anthropic``, anything with a ``base_url``)
  are called from the gateway replicas directly: they are remote already.

Strategies, metering, quotas and fallback run unchanged in the gateway
replicas; only the engines moved. Replicas keep nothing in memory that has to
agree: keys, quota counters, reservations and the ledger are in PostgreSQL,
whose row locks make one replica's check-and-reserve see every other
replica's holds. Several gateway replicas on SQLite (a per-node file) or with
the ledger off are refused. Prometheus metrics and alert statistics are per
replica (scrape every replica; see docs/DEPLOY.md).

``[deploy.ray]`` in the same TOML file sets replicas, autoscaling and
resources (:class:`RayDeploySettings`); Ray is imported only when an
application is built.
"""

from ponder.config import (
    AutoscalingSettings,
    GatewayDeploySettings,
    RayDeploySettings,
    TierDeploySettings,
)
from ponder.deploy.ray.app import (
    REPLICA_HEADER,
    GatewayServer,
    ReplicaApp,
    build_app,
    build_gateway_app,
    deploy,
)
from ponder.deploy.ray.cli import add_deploy_commands, main
from ponder.deploy.ray.plan import (
    IMPLICIT_TIER,
    DeployConfigError,
    DeployPlan,
    TierDeployment,
    llm_config,
    llm_config_kwargs,
    load_deploy_settings,
    plan_deployment,
)
from ponder.deploy.ray.serve_llm import ServeLLMTransport, vllm_tier_backend
from ponder.deploy.ray.tier_server import (
    ServeTierBackend,
    TierServer,
    local_request,
    portable_request,
)

__all__ = [
    "IMPLICIT_TIER",
    "REPLICA_HEADER",
    "AutoscalingSettings",
    "DeployConfigError",
    "DeployPlan",
    "GatewayDeploySettings",
    "GatewayServer",
    "RayDeploySettings",
    "ReplicaApp",
    "ServeLLMTransport",
    "ServeTierBackend",
    "TierDeploySettings",
    "TierDeployment",
    "TierServer",
    "add_deploy_commands",
    "build_app",
    "build_gateway_app",
    "deploy",
    "llm_config",
    "llm_config_kwargs",
    "load_deploy_settings",
    "local_request",
    "main",
    "plan_deployment",
    "portable_request",
    "vllm_tier_backend",
]
