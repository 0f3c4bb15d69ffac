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

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ponder.backends.base import Backend
from ponder.backends.tiers import build_backend
from ponder.config import EngineSettings, Settings, TierSettings, load_settings
from ponder.errors import InvalidRequest, PonderError, UpstreamError
from ponder.guard import Tiers
from ponder.types import Capabilities, Delta, Generation, GenRequest

__all__ = [
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
]

# Tiers whose backend is an HTTP client: the gateway calls their servers directly.
_HTTP_BACKENDS = frozenset({"openai_compat", "anthropic"})
# VLLMBackend keyword arguments that are not vLLM engine arguments.
_NOT_ENGINE_KWARGS = frozenset({"name", "chat_template"})
REPLICA_HEADER = "x-ponder-replica"
# The tier a config without [tiers.*] gets: the [engine] model, embedded.
IMPLICIT_TIER = "embedded"


class DeployConfigError(InvalidRequest):
    """The configuration cannot be deployed as asked; the message says what to change."""

    code = "invalid_deployment"


# --------------------------------------------------------------------------- settings


class AutoscalingSettings(BaseModel):
    """Serve autoscaling of one deployment (replaces a fixed replica count)."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    # Requests in flight per replica that Serve aims for: above it, it adds replicas.
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    upscale_delay_s: float = Field(default=30.0, ge=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        return self

    def to_serve(self) -> dict[str, Any]:
        return self.model_dump()


class GatewayDeploySettings(BaseModel):
    """``[deploy.ray.gateway]``: the ingress replicas (CPU only)."""

    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(default=2, ge=1)
    autoscaling: AutoscalingSettings | None = None
    num_cpus: float = Field(default=1.0, ge=0)
    # Requests one replica takes at once; the rest wait in Serve's queue.
    max_ongoing_requests: int = Field(default=64, ge=1)

    @property
    def max_replicas(self) -> int:
        return self.autoscaling.max_replicas if self.autoscaling else self.replicas


class TierDeploySettings(BaseModel):
    """``[deploy.ray.tiers.<name>]``: replicas and resources of one tier's deployment.

    ``num_cpus`` is the engine's CPU share (and its thread count, unless the tier's
    options set ``threads``). The GPU fields apply to ``vllm`` tiers, which run on
    ``ray.serve.llm``: ``model_source`` (default: the tier's model), the accelerator,
    tensor/pipeline parallelism and extra vLLM ``engine_kwargs``.
    """

    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(default=1, ge=1)
    autoscaling: AutoscalingSettings | None = None
    num_cpus: float | None = Field(default=None, ge=0)
    max_ongoing_requests: int | None = Field(default=None, ge=1)
    accelerator_type: str | None = None
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    model_source: str | None = None
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    runtime_env: dict[str, Any] | None = None


class RayDeploySettings(BaseModel):
    """``[deploy.ray]``: the Serve application (HTTP proxy, gateway, tier deployments)."""

    model_config = ConfigDict(extra="forbid")

    app_name: str = "ponder"
    route_prefix: str = "/"
    # The HTTP proxy on every node; 0.0.0.0 to serve beyond this host.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    gateway: GatewayDeploySettings = Field(default_factory=GatewayDeploySettings)
    tiers: dict[str, TierDeploySettings] = Field(default_factory=dict)


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


# --------------------------------------------------------------------------- the plan


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
    if url is None:
        return None
    import sqlalchemy as sa

    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable>"


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
    import sqlalchemy as sa

    try:
        backend = sa.make_url(url).get_backend_name()
    except Exception as exc:
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


# --------------------------------------------------------------------------- requests across processes


def portable_request(req: GenRequest, now: float | None = None) -> tuple[GenRequest, float | None]:
    """``req`` without its deadline, and the seconds left until it.

    A deadline is a ``time.monotonic()`` instant, meaningless in another process on
    another host; the seconds left travel instead and :func:`local_request` rebuilds it.
    """
    if req.deadline is None:
        return req, None
    now = time.monotonic() if now is None else now
    return req.model_copy(update={"deadline": None}), max(req.deadline - now, 0.0)


def local_request(
    req: GenRequest, remaining_s: float | None, now: float | None = None
) -> GenRequest:
    """The request with its deadline on this process's clock."""
    if remaining_s is None:
        return req
    now = time.monotonic() if now is None else now
    return req.model_copy(update={"deadline": now + remaining_s})


# --------------------------------------------------------------------------- the tier deployment


def _engine_backend(
    name: str, tier: TierSettings, engine: EngineSettings, cache_dir: Path, threads: int | None
) -> Backend:
    """The in-process backend of an engine tier; catalog models are pulled first."""
    if tier.backend != "llama_cpp":
        return build_backend(name, tier)
    from ponder.backends import catalog

    if tier.model in catalog.CATALOG:
        catalog.ensure_model(tier.model, cache_dir)
    defaults: dict[str, Any] = {
        "n_ctx": engine.n_ctx,
        "max_sequences": engine.max_sequences,
        "n_batch": engine.n_batch,
        "threads": threads,
        "cache_dir": cache_dir,
        "seed": engine.seed,
    }
    merged = tier.model_copy(update={"options": {**defaults, **tier.options}})
    return build_backend(name, merged)


class TierServer:
    """One tier's in-process engine as a Serve deployment (each replica loads the model).

    The gateway calls ``generate`` / ``stream`` with a request whose deadline travels as
    seconds left (see :func:`portable_request`); ponder errors reach the gateway as
    themselves.
    """

    def __init__(
        self,
        name: str,
        tier: TierSettings,
        engine: EngineSettings,
        cache_dir: Path,
        threads: int | None = None,
    ) -> None:
        self.tier = name
        self.backend = _engine_backend(name, tier, engine, Path(cache_dir), threads)

    def info(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "name": self.backend.name,
            "capabilities": self.backend.capabilities.model_dump(),
        }

    async def generate(self, req: GenRequest, remaining_s: float | None = None) -> list[Generation]:
        return await self.backend.generate(local_request(req, remaining_s))

    async def stream(
        self, req: GenRequest, remaining_s: float | None = None
    ) -> AsyncIterator[Delta]:
        async for delta in self.backend.stream(local_request(req, remaining_s)):
            yield delta

    def __del__(self) -> None:
        # The engine owns a model and a decode thread: free them with the replica.
        close = getattr(getattr(self, "backend", None), "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()


def _remote_error(tier: str, exc: BaseException) -> PonderError:
    """A failed handle call as a ponder error: the engine's own error when it raised one."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, PonderError):
        return cause
    if isinstance(exc, PonderError):
        return exc
    # Ray puts the replica's traceback first and the error itself last.
    last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]
    try:
        from ray.exceptions import RayTaskError

        # The engine itself raised: the same call would fail again.
        retryable = not isinstance(exc, RayTaskError)
    except ImportError:  # pragma: no cover - only reachable through Ray
        retryable = True
    return UpstreamError(
        f"tier {tier!r} (Ray Serve deployment) failed: {type(exc).__name__}: {last}",
        upstream=tier,
        reason=last,
        retryable=retryable,
    )


class ServeTierBackend:
    """A ponder :class:`~ponder.backends.base.Backend` over a :class:`TierServer` handle.

    ``capabilities`` come from the tier replica at :meth:`connect` (the gateway replica's
    startup). No ``count_tokens``: a remote call cannot run inside the synchronous quota
    estimate, which then bounds the prompt by its UTF-8 bytes.
    """

    def __init__(self, handle: Any, *, tier: str, name: str) -> None:
        self.handle = handle
        self.tier = tier
        self.name = name
        self.capabilities = Capabilities()

    async def connect(self) -> None:
        try:
            info = await self.handle.info.remote()
        except Exception as exc:
            raise _remote_error(self.tier, exc) from exc
        self.capabilities = Capabilities.model_validate(info["capabilities"])

    async def generate(self, req: GenRequest) -> list[Generation]:
        req, remaining = portable_request(req)
        response = self.handle.generate.remote(req, remaining)
        try:
            generations: list[Generation] = await response
        except asyncio.CancelledError:
            # The gateway gave up (deadline, client gone): free the engine's slots too.
            response.cancel()
            raise
        except Exception as exc:
            raise _remote_error(self.tier, exc) from exc
        return generations

    async def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        req, remaining = portable_request(req)
        deltas = self.handle.options(stream=True).stream.remote(req, remaining)
        finished = False
        try:
            async for delta in deltas:
                yield delta
            finished = True
        except Exception as exc:
            finished = True
            raise _remote_error(self.tier, exc) from exc
        finally:
            if not finished:
                deltas.cancel()


# --------------------------------------------------------------------------- GPU tiers: ray.serve.llm


def _error_body(message: str, *, type_: str, code: Any = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _as_error(item: Any) -> tuple[int, dict[str, Any]] | None:
    """(status, OpenAI error body) when ``item`` is vLLM's ErrorResponse, else None."""
    # Matched by name: importing vLLM's protocol types would tie the gateway to vLLM.
    if type(item).__name__ != "ErrorResponse":
        return None
    err = getattr(item, "error", None) or item  # newer vLLM nests an ErrorInfo
    code = getattr(err, "code", None)
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    message = str(getattr(err, "message", item))
    return status, _error_body(message, type_=str(getattr(err, "type", "server_error")), code=code)


def _dump(item: Any) -> Any:
    if hasattr(item, "model_dump"):
        return item.model_dump(mode="json", exclude_none=True)
    return item


def _sse(item: Any) -> bytes:
    """One streamed item of an LLMServer as server-sent-event bytes."""
    if isinstance(item, bytes):
        item = item.decode("utf-8")
    if isinstance(item, str):
        # LLMServer already formats stream chunks as "data: {...}\n\n".
        text = item if item.startswith("data:") else f"data: {item}"
        return (text if text.endswith("\n\n") else text.rstrip("\n") + "\n\n").encode("utf-8")
    error = _as_error(item)
    payload = error[1] if error is not None else _dump(item)
    return f"data: {json.dumps(payload)}\n\n".encode()


def _items(batch: Any) -> list[Any]:
    # Streams come batched (a list of chunks per yield) unless batching is off.
    return list(batch) if isinstance(batch, list) else [batch]


class _HandleStream(httpx.AsyncByteStream):
    def __init__(self, first: Any, rest: Any) -> None:
        self.first, self.rest = first, rest
        self.finished = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        done = False
        for item in _items(self.first):
            chunk = _sse(item)
            done = done or chunk.strip() == b"data: [DONE]"
            yield chunk
        try:
            async for batch in self.rest:
                for item in _items(batch):
                    chunk = _sse(item)
                    done = done or chunk.strip() == b"data: [DONE]"
                    yield chunk
        except Exception as exc:
            # A torn stream, as a dropped connection would be: the backend retries or reports.
            raise httpx.ReadError(f"ray.serve.llm stream failed: {exc}") from exc
        self.finished = True
        if not done:
            yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        if not self.finished:
            self.finished = True
            self.rest.cancel()


class ServeLLMTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose far end is a ``ray.serve.llm`` LLMServer deployment handle.

    The OpenAI-compatible backend (flavor ``vllm``) builds its usual requests (thinking
    budgets, continuation, logprobs, ``n``); this transport turns ``POST
    /v1/chat/completions`` and ``/v1/completions`` into ``LLMServer.chat`` /
    ``completions`` handle calls and their results back into HTTP responses. Other
    routes (``/tokenize``) answer 404, and the backend estimates instead.
    """

    _ROUTES = (("/chat/completions", "chat"), ("/completions", "completions"))

    def __init__(
        self, handle: Any, *, request_types: Mapping[str, Callable[..., Any]] | None = None
    ) -> None:
        self.handle = handle
        self._types = dict(request_types) if request_types is not None else None

    def _request_type(self, method: str) -> Callable[..., Any]:
        if self._types is None:
            from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

            self._types = {"chat": ChatCompletionRequest, "completions": CompletionRequest}
        return self._types[method]

    @staticmethod
    def _json(status: int, body: Any, request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, request=request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        method = next((m for suffix, m in self._ROUTES if path.endswith(suffix)), None)
        if method is None or request.method != "POST":
            return self._json(
                404,
                _error_body(
                    f"{request.method} {path} is not served by a ray.serve.llm deployment "
                    "(only POST chat/completions and completions)",
                    type_="invalid_request_error",
                    code="not_found",
                ),
                request,
            )
        try:
            body = json.loads(await request.aread())
            payload = self._request_type(method)(**body)
        except Exception as exc:  # bad JSON or a request vLLM's protocol refuses
            return self._json(
                400, _error_body(f"invalid request: {exc}", type_="invalid_request_error"), request
            )
        results = getattr(self.handle.options(stream=True), method).remote(payload)
        try:
            first = await anext(results)
        except StopAsyncIteration:
            return self._json(
                502,
                _error_body("ray.serve.llm returned no response", type_="server_error"),
                request,
            )
        except Exception as exc:
            cause = getattr(exc, "cause", None) or exc
            try:
                from ray.exceptions import RayTaskError

                engine_failed = isinstance(exc, RayTaskError)
            except ImportError:  # pragma: no cover
                engine_failed = False
            if engine_failed:
                return self._json(
                    500, _error_body(f"vLLM failed: {cause}", type_="server_error"), request
                )
            # The deployment is unreachable (replica died, no replicas): like a refused connection.
            raise httpx.ConnectError(f"ray.serve.llm deployment unavailable: {exc}") from exc
        head = _items(first)[0] if _items(first) else first
        error = _as_error(head)
        if error is not None:
            results.cancel()
            return self._json(error[0], error[1], request)
        if not body.get("stream"):
            return self._json(200, _dump(first), request)
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            stream=_HandleStream(first, results),
            request=request,
        )


def vllm_tier_backend(name: str, tier: TierSettings, handle: Any) -> Backend:
    """The gateway's backend for a ``vllm`` tier: OpenAI-compatible (vLLM flavor) over Serve."""
    from ponder.backends.openai_compat import OpenAICompatBackend

    max_len = tier.options.get("max_model_len")
    return OpenAICompatBackend(
        # Never dialled: the transport carries the requests; the URL only names the tier.
        f"http://ray-serve-llm.{name}/v1",
        tier.model,
        flavor="vllm",
        name=tier.model,
        chat_template=tier.options.get("chat_template"),
        max_context=int(max_len) if max_len else None,
        transport=ServeLLMTransport(handle),
    )


# --------------------------------------------------------------------------- the gateway deployment


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
    from ponder.cli import build_gateway
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


# --------------------------------------------------------------------------- command line


@contextlib.contextmanager
def _config_env(path: str | None) -> Iterator[None]:
    """PONDER_CONFIG pointed at ``path`` while the settings load (config.py reads it)."""
    if path is None:
        yield
        return
    old = os.environ.get("PONDER_CONFIG")
    os.environ["PONDER_CONFIG"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PONDER_CONFIG", None)
        else:
            os.environ["PONDER_CONFIG"] = old


def _load(args: argparse.Namespace) -> tuple[Settings, RayDeploySettings]:
    if args.config is not None and not Path(args.config).exists():
        raise DeployConfigError(f"config file {args.config} does not exist")
    with _config_env(args.config):
        settings = load_settings()
    data = load_deploy_settings(args.config).model_dump()
    if args.host is not None:
        data["host"] = args.host
    if args.port is not None:
        data["port"] = args.port
    if args.gateway_replicas is not None:
        data["gateway"].update(replicas=args.gateway_replicas, autoscaling=None)
    try:
        return settings, RayDeploySettings.model_validate(data)
    except ValidationError as exc:  # the command-line values, checked like the file's
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise DeployConfigError(f"invalid option: {problems}") from exc


def _cmd_deploy_ray(args: argparse.Namespace, out: Any = None, err: Any = None) -> int:
    settings, d = _load(args)
    plan = plan_deployment(settings, d)  # configuration errors before Ray starts
    if args.dry_run:
        sys.stdout.write(json.dumps(plan.describe(), indent=2, default=str) + "\n")
        return 0
    if args.detach and args.address is None:
        raise DeployConfigError(
            "--detach needs --address (a running Ray cluster): a Ray started here stops "
            "when this command exits"
        )
    try:
        import ray  # noqa: F401
    except ImportError:
        raise DeployConfigError(
            "ponder deploy ray needs Ray Serve: pip install 'ponder[ray]'"
        ) from None
    url = deploy(settings, d, address=args.address)
    sys.stderr.write(f"ponder gateway on Ray Serve at {url}/v1 ({len(plan.tiers)} tiers)\n")
    if args.detach:
        return 0
    from ray import serve

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # A service manager stops with SIGTERM: shut the application down as on Ctrl-C.
    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        sys.stderr.write("shutting the application down\n")
        serve.shutdown()  # type: ignore[no-untyped-call]
    return 0


def add_deploy_commands(sub: Any) -> None:
    """``ponder deploy ray`` (added to the main parser)."""
    deploy_parser = sub.add_parser("deploy", help="scale the gateway out (Ray Serve)")
    dsub = deploy_parser.add_subparsers(dest="deploy_cmd", metavar="ray", required=True)
    ray_parser = dsub.add_parser(
        "ray",
        help="deploy the gateway and its tiers as a Ray Serve application",
        description="Deploy the gateway (several replicas) and one deployment per tier on "
        "Ray Serve. Quotas and the ledger are shared through PostgreSQL (ledger.url). "
        "See docs/DEPLOY.md.",
    )
    _add_ray_arguments(ray_parser)


def _add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        help="ponder.toml with [tiers.*], [ledger] and [deploy.ray] "
        "(default: $PONDER_CONFIG or ./ponder.toml)",
    )
    parser.add_argument(
        "--address",
        help="Ray cluster to join (auto, or ray://head:10001); default: start Ray here",
    )
    parser.add_argument("--gateway-replicas", type=int, help="fixed gateway replicas")
    parser.add_argument("--host", help="HTTP proxy host (default [deploy.ray] host)")
    parser.add_argument("--port", type=int, help="HTTP proxy port (default [deploy.ray] port)")
    parser.add_argument(
        "--detach", action="store_true", help="return once deployed (needs --address)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the deployments as JSON; start nothing"
    )
    parser.set_defaults(func=_cmd_deploy_ray)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ponder.deploy.ray``: the same as ``ponder deploy ray``."""
    parser = argparse.ArgumentParser(prog="python -m ponder.deploy.ray")
    _add_ray_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return _cmd_deploy_ray(args)
    except PonderError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
