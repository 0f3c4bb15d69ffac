"""The deployment plan of ``ponder deploy ray``: validated from settings, computed without Ray."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from ponder.config import (
    AutoscalingSettings,
    RayDeploySettings,
    Settings,
    TierDeploySettings,
    TierSettings,
)
from ponder.errors import InvalidRequest
from ponder.guard import Tiers
from ponder.ledger.database import redacted_url, url_backend

__all__ = [
    "IMPLICIT_TIER",
    "DeployConfigError",
    "DeployPlan",
    "TierDeployment",
    "llm_config",
    "llm_config_kwargs",
    "load_deploy_settings",
    "plan_deployment",
]

# Tiers whose backend is an HTTP client: the gateway calls their servers directly.
_HTTP_BACKENDS = frozenset({"openai_compat", "anthropic"})
# VLLMBackend keyword arguments that are not vLLM engine arguments.
_NOT_ENGINE_KWARGS = frozenset({"name", "chat_template"})
# The tier a config without [tiers.*] gets: the [engine] model, embedded.
IMPLICIT_TIER = "embedded"


class DeployConfigError(InvalidRequest):
    """The configuration cannot be deployed as asked; the message says what to change."""

    code = "invalid_deployment"


def _config_path(path: str | Path | None) -> Path:
    return Path(path) if path is not None else Path(os.environ.get("PONDER_CONFIG", "ponder.toml"))


def load_deploy_settings(path: str | Path | None = None) -> RayDeploySettings:
    """``[deploy.ray]`` of the config file (``$PONDER_CONFIG`` or ``./ponder.toml``); defaults
    when the file or the table is absent."""
    file = _config_path(path)
    if not file.exists():
        if path is not None:
            raise DeployConfigError(f"config file {file} does not exist")
        return RayDeploySettings()
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DeployConfigError(f"cannot read {file}: {exc}") from exc
    table = data.get("deploy", {}).get("ray", {})
    try:
        return RayDeploySettings.model_validate(table)
    except ValidationError as exc:
        problems = "; ".join(
            f"deploy.ray.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise DeployConfigError(f"{file}: {problems}") from exc


@dataclass(frozen=True)
class TierDeployment:
    """How one tier runs: ``engine`` (its own deployment), ``vllm`` (ray.serve.llm), or
    ``remote`` (an HTTP upstream the gateway calls itself)."""

    tier: str
    kind: Literal["engine", "vllm", "remote"]
    # Serve deployment options (engine tiers), the LLMConfig fields (vllm), or nothing.
    options: dict[str, Any] = field(default_factory=dict)
    # Engine threads (engine tiers): the deployment's CPU share unless the tier sets it.
    threads: int | None = None


@dataclass(frozen=True)
class DeployPlan:
    """What :func:`build_app` deploys; validated, and needs no Ray to compute."""

    settings: Settings
    deploy: RayDeploySettings
    gateway_options: dict[str, Any]
    tiers: list[TierDeployment]

    @property
    def default_tier(self) -> str:
        tier = self.settings.server.tier
        assert tier is not None  # plan_deployment always sets it
        return tier

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (``ponder deploy ray --dry-run``)."""
        return {
            "app": self.deploy.app_name,
            "url": f"http://{self.deploy.host}:{self.deploy.port}{self.deploy.route_prefix}",
            "default_tier": self.default_tier,
            "ledger": _redacted(self.settings.ledger.url),
            "gateway": self.gateway_options,
            "tiers": [
                {"tier": t.tier, "kind": t.kind, "options": t.options, "threads": t.threads}
                for t in self.tiers
            ],
        }


def _redacted(url: str | None) -> str | None:
    return None if url is None else redacted_url(url)


def _replicas(count: int, autoscaling: AutoscalingSettings | None) -> dict[str, Any]:
    if autoscaling is not None:
        return {"autoscaling_config": autoscaling.to_serve()}
    return {"num_replicas": count}


def _kind(tier: TierSettings) -> Literal["engine", "vllm", "remote"]:
    if tier.backend == "vllm":
        return "vllm"
    if tier.backend in _HTTP_BACKENDS or tier.base_url is not None:
        return "remote"
    return "engine"


def _check_shared_state(settings: Settings, replicas: int) -> None:
    """Several gateway replicas must share quota and ledger state: PostgreSQL, never memory."""
    if replicas <= 1:
        return
    advice = (
        "set ledger.url to a PostgreSQL database every replica can reach "
        "(e.g. postgresql://ponder@db-host:5432/ponder), or run one gateway replica "
        "([deploy.ray.gateway] replicas = 1, or --gateway-replicas 1)"
    )
    if not settings.server.ledger:
        raise DeployConfigError(
            f"the gateway would run up to {replicas} replicas with server.ledger = false: "
            f"there would be no shared keys, quotas or ledger; enable the ledger and {advice}"
        )
    url = settings.ledger.url
    if url is None:
        raise DeployConfigError(
            f"the gateway would run up to {replicas} replicas on the default SQLite ledger, "
            f"a file local to each replica's node, so quotas would not hold across replicas; "
            f"{advice}"
        )
    try:
        backend = url_backend(url)
    except ValueError as exc:
        raise DeployConfigError(f"ledger.url is not a database URL ({exc}); {advice}") from exc
    if backend != "postgresql":
        raise DeployConfigError(
            f"the gateway would run up to {replicas} replicas on a {backend} ledger "
            f"({_redacted(url)}); quotas and the ledger must be shared through PostgreSQL: "
            f"{advice}"
        )


def _with_implicit_tier(settings: Settings) -> Settings:
    if settings.tiers:
        return settings
    implicit = TierSettings(backend="llama_cpp", model=settings.engine.model)
    return settings.model_copy(update={"tiers": {IMPLICIT_TIER: implicit}})


def plan_deployment(settings: Settings, deploy: RayDeploySettings | None = None) -> DeployPlan:
    """Validate the configuration and decide every deployment (no Ray needed).

    A config without ``[tiers.*]`` serves the ``[engine]`` model as one embedded tier.
    The gateway serves ``server.tier`` (default: the first tier).
    """
    deploy = deploy or RayDeploySettings()
    settings = _with_implicit_tier(settings)
    names = list(settings.tiers)
    unknown = sorted(set(deploy.tiers) - set(names))
    if unknown:
        raise DeployConfigError(
            f"[deploy.ray.tiers] names unknown tiers: {', '.join(unknown)}; "
            f"configured tiers: {', '.join(names)}"
        )
    default = settings.server.tier or names[0]
    if default not in settings.tiers:
        raise DeployConfigError(
            f"server.tier = {default!r} is not a configured tier; tiers: {', '.join(names)}"
        )
    Tiers(settings.tiers)  # validates fallback links, builds nothing
    _check_shared_state(settings, deploy.gateway.max_replicas)

    settings = settings.model_copy(
        update={"server": settings.server.model_copy(update={"tier": default})}
    )

    g = deploy.gateway
    gateway_options = {
        "name": "gateway",
        "max_ongoing_requests": g.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": g.num_cpus},
        **_replicas(g.replicas, g.autoscaling),
    }
    tiers: list[TierDeployment] = []
    for name, tier in settings.tiers.items():
        kind = _kind(tier)
        d = deploy.tiers.get(name, TierDeploySettings())
        if kind == "remote":
            tiers.append(TierDeployment(name, kind))
            continue
        if kind == "vllm":
            # ray.serve.llm sizes the replica (GPUs, placement group) from the LLMConfig.
            tiers.append(TierDeployment(name, kind, llm_config_kwargs(name, tier, d)))
            continue
        num_cpus = d.num_cpus if d.num_cpus is not None else 1.0
        options: dict[str, Any] = {
            "name": f"tier-{name}",
            "ray_actor_options": {"num_cpus": num_cpus},
            **_replicas(d.replicas, d.autoscaling),
        }
        if d.max_ongoing_requests is not None:
            options["max_ongoing_requests"] = d.max_ongoing_requests
        if d.runtime_env is not None:
            options["ray_actor_options"]["runtime_env"] = d.runtime_env
        threads = tier.options.get("threads") or settings.engine.threads or max(int(num_cpus), 1)
        tiers.append(TierDeployment(name, kind, options, threads=int(threads)))
    return DeployPlan(settings, deploy, gateway_options, tiers)


def llm_config_kwargs(
    name: str, tier: TierSettings, deploy: TierDeploySettings | None = None
) -> dict[str, Any]:
    """The ``ray.serve.llm.LLMConfig`` fields of a ``vllm`` tier (plain data, no Ray needed).

    The tier's ``options`` (the in-process vLLM backend's arguments: ``max_model_len``,
    ``gpu_memory_utilization``...) become vLLM engine arguments, then
    ``[deploy.ray.tiers.<name>]`` adds parallelism, ``engine_kwargs``, the accelerator and
    replicas or autoscaling. Clients name the model by ``tier.model`` (the model id).
    """
    if tier.backend != "vllm":
        raise DeployConfigError(f"tier {name!r} uses backend {tier.backend!r}, not vllm")
    d = deploy or TierDeploySettings()
    engine_kwargs: dict[str, Any] = {"enable_prefix_caching": True}
    engine_kwargs.update({k: v for k, v in tier.options.items() if k not in _NOT_ENGINE_KWARGS})
    engine_kwargs["tensor_parallel_size"] = d.tensor_parallel_size
    engine_kwargs["pipeline_parallel_size"] = d.pipeline_parallel_size
    engine_kwargs.update(d.engine_kwargs)
    deployment_config: dict[str, Any] = _replicas(d.replicas, d.autoscaling)
    if d.max_ongoing_requests is not None:
        deployment_config["max_ongoing_requests"] = d.max_ongoing_requests
    kwargs: dict[str, Any] = {
        "model_loading_config": {
            "model_id": tier.model,
            "model_source": d.model_source or tier.model,
        },
        "engine_kwargs": engine_kwargs,
        "deployment_config": deployment_config,
    }
    if d.accelerator_type is not None:
        kwargs["accelerator_type"] = d.accelerator_type
    if d.runtime_env is not None:
        kwargs["runtime_env"] = d.runtime_env
    return kwargs


def llm_config(name: str, tier: TierSettings, deploy: TierDeploySettings | None = None) -> Any:
    """The ``ray.serve.llm.LLMConfig`` of a ``vllm`` tier (needs ``ray[llm]``, i.e. vLLM)."""
    kwargs = llm_config_kwargs(name, tier, deploy)
    try:
        from ray.serve.llm import LLMConfig
    except ImportError as exc:
        raise DeployConfigError(
            f"tier {name!r} runs on ray.serve.llm, which needs vLLM where the application "
            f"is built and on the GPU nodes: pip install 'ray[serve,llm]' ({exc})"
        ) from exc
    return LLMConfig(**kwargs)
