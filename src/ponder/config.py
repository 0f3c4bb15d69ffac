"""Settings from ``ponder.toml`` and ``PONDER_*`` environment variables.

The only module (besides entry points) that reads the environment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = [
    "AlertSettings",
    "AutoscalingSettings",
    "EngineSettings",
    "GatewayDeploySettings",
    "GuardrailSettings",
    "LedgerSettings",
    "PriceSettings",
    "RayDeploySettings",
    "RetrainSettings",
    "RouteClassSettings",
    "RouterSettings",
    "SandboxSettings",
    "ServerSettings",
    "ShadowSettings",
    "Settings",
    "TelemetrySettings",
    "TierDeploySettings",
    "TierSettings",
    "default_cache_dir",
    "load_settings",
]


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
    # Keep finished sequences' KV for later calls that share a prefix (cached_input).
    prefix_cache: bool = True
    # Let llama.cpp repack weights for its CPU kernels; unset: yes, except on CPUs with
    # AMX, where its AMX kernels can crash (LlamaCppBackend, cpu_has_amx).
    weight_repack: bool | None = None

    def backend_options(self, cache_dir: Path, *, threads: int | None = None) -> dict[str, Any]:
        """These settings as keyword arguments of the embedded backend (``LlamaCppBackend``,
        or a ``llama_cpp`` tier's defaults); ``threads`` overrides ``self.threads``."""
        return {
            "n_ctx": self.n_ctx,
            "max_sequences": self.max_sequences,
            "n_batch": self.n_batch,
            "threads": self.threads if threads is None else threads,
            "cache_dir": cache_dir,
            "seed": self.seed,
            "prefix_cache": self.prefix_cache,
            "weight_repack": self.weight_repack,
        }


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    default_strategy: str = "direct"
    max_tokens_default: int = 1024
    # Expose hidden reasoning to callers that ask for it (scopes come with auth).
    allow_reasoning: bool = True
    # Each latency class's default deadline (ponder.deadline_s may only shorten it): a run
    # still going then ends with its best partial answer (truncated, stop_reason
    # "deadline") or, with nothing usable, a 504 upstream_timeout.
    deadline_interactive_s: float = Field(default=120.0, gt=0)
    deadline_async_s: float = Field(default=1800.0, gt=0)
    # A cap on every class's deadline (None: the class deadlines alone).
    request_timeout_s: float | None = Field(default=None, gt=0)
    # Auth is enforced when this is true or once any API key exists, so a fresh
    # `ponder serve` works with no setup (see README, "Keys, quotas and the ledger").
    require_auth: bool = False
    # Gateway store (keys, quotas, ledger). Off: no auth, no quotas, no ledger.
    ledger: bool = True
    # The tier name recorded in the ledger and metrics for this server's backend.
    tier: str | None = None
    # POST /v1/jobs: queued jobs run this many at a time per server (0: this server
    # only queues; another replica on the same database runs them).
    job_concurrency: int = Field(default=2, ge=0)
    # A running job's claim, renewed while it runs; a claim older than this (its
    # server died) goes back to the queue, at most job_max_attempts runs in all.
    job_lease_s: float = Field(default=30.0, gt=0)
    job_max_attempts: int = Field(default=3, ge=1)
    # Unfinished (queued or running) jobs per caller.
    job_max_pending: int = Field(default=1000, ge=1)
    # Where `ponder eval --out` runs live; /dashboard plots the newest one's results.
    eval_results_dir: Path | None = None
    # `ponder serve` with no [tiers]: also serve the catalog's 1.5B as tier "strong" when
    # it is installed, so the shipped routing policy can use its two-tier form.
    embedded_tiers: bool = True
    # uvicorn's per-request access line on stderr. The ledger keeps every request (with
    # caller, cost and latency) either way; off saves ~0.1 ms of CPU per request.
    access_log: bool = True


class PriceSettings(BaseModel):
    """USD per 1M tokens; ``gpu_second`` is USD per second of engine time (self-hosted tiers)."""

    input: float = Field(default=0.0, ge=0)
    output: float = Field(default=0.0, ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    reasoning: float | None = Field(default=None, ge=0)
    gpu_second: float = Field(default=0.0, ge=0)


class LedgerSettings(BaseModel):
    """Where keys, quotas and the request ledger live (SQLAlchemy URL)."""

    # None: sqlite:///$XDG_DATA_HOME/ponder/ponder.db; or postgresql://user@host/db
    url: str | None = None


class AlertSettings(BaseModel):
    """Alerts go to the log and, when set, are POSTed as JSON to ``webhook_url``."""

    webhook_url: str | None = None
    thinking_factor: float = Field(default=2.0, gt=0)
    min_class_samples: int = Field(default=20, ge=1)
    quota_thresholds: list[float] = Field(default_factory=lambda: [0.8, 1.0])
    error_burst: int = Field(default=5, ge=1)
    error_window_s: float = Field(default=60.0, gt=0)


class TelemetrySettings(BaseModel):
    # OpenTelemetry spans (needs ponder[otel]; exporter from the standard OTEL_* env).
    otel: bool = False


class TierSettings(BaseModel):
    """One model tier: a backend, a model and a price, plus resilience settings.

    ``backend`` is a registered backend name (``llama_cpp``, ``openai_compat``,
    ``anthropic``, ``vllm``, or a third-party one); ``options`` are passed to it
    as keyword arguments (``flavor``, ``chat_template``, ``n_ctx``...).
    ``fallback`` names the tier to use while this one is out.
    """

    backend: str
    model: str
    base_url: str | None = None
    # The name of the environment variable holding the API key (never the key itself).
    api_key_env: str | None = None
    price: PriceSettings = Field(default_factory=PriceSettings)
    options: dict[str, Any] = Field(default_factory=dict)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    first_token_s: float | None = Field(default=60.0, gt=0)
    attempt_timeout_s: float | None = Field(default=None, gt=0)
    total_timeout_s: float | None = Field(default=300.0, gt=0)
    retries: int = Field(default=2, ge=0)
    retry_base_delay_s: float = Field(default=0.25, ge=0)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=30.0, gt=0)
    fallback: str | None = None

    def api_key(self) -> str | None:
        """The API key from the environment variable named by ``api_key_env``."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class RouteClassSettings(BaseModel):
    """The policy of one task class (``[router.classes.<name>]``); see ponder.router.policy.

    ``bucket``: ``use`` extended thinking always, ``maybe`` when the complexity score is at
    least the router's ``threshold``, ``avoid`` never. ``max_spend`` caps generated tokens.
    """

    model_config = ConfigDict(extra="forbid")

    bucket: Literal["use", "maybe", "avoid"] = "avoid"
    strategy: str = "direct"
    params: dict[str, Any] = Field(default_factory=dict)
    thinking_budget: int = Field(default=0, ge=0)
    tier: str | None = None
    latency: Literal["interactive", "async"] | None = None
    max_spend: int | None = Field(default=None, ge=1)
    # An interactive request whose plan is search is answered directly at once; with
    # this set, the full plan also runs as an async job (its id is in the response).
    continue_async: bool = False
    # The verifier of this class's requests, e.g. {type = "tests", tests = [...]} or
    # {type = "json_schema", schema = {...}}; see ponder.verifiers.spec.
    verifier: dict[str, Any] | None = None


class RetrainSettings(BaseModel):
    """``[router.retrain]``: where ``ponder route retrain`` promotes a policy the router
    serves live (``<dir>/policy.json``, re-read within ``reload_seconds``)."""

    model_config = ConfigDict(extra="forbid")

    # None: no promoted policy is served (the shipped one is, as before).
    dir: str | None = None
    reload_seconds: float = Field(default=2.0, ge=0.0)
    # `ponder serve` retrains on this schedule ("1d", "6h", "30m"; None: only by hand),
    # from the ledger rows of the last ``window``.
    every: str | None = Field(default=None, pattern=r"^\d+[smhd]$")
    window: str = Field(default="7d", pattern=r"^\d+[smhd]$")
    holdout: float = Field(default=0.3, gt=0.0, lt=1.0)
    min_rows: int = Field(default=5, ge=1)


class ShadowSettings(BaseModel):
    """``[router.shadow]``: a share of verifiable requests also runs a counterfactual plan
    in the background, charged to its own quota subject (team ``subject``), never the
    caller's; its graded row links to the original (``shadow_of``) for retraining."""

    model_config = ConfigDict(extra="forbid")

    rate: float = Field(default=0.0, ge=0.0, le=1.0)
    # Per task class: a rate of its own (0 turns a class off).
    classes: dict[str, float] = Field(default_factory=dict)
    # A candidate plan name (ponder.router.calibrate.CANDIDATE_PLANS), or "auto": the
    # strong tier's direct answer when a tier named "strong" is served, else "search".
    # A list (["strong", "search"]): each sampled request runs one of them, picked
    # uniformly, so every counterfactual gets a random sample of its own.
    plan: str | list[str] = "auto"
    # The team whose quota counters shadows reserve against (set a [quota] for it).
    subject: str = "ponder-shadow"

    @field_validator("classes")
    @classmethod
    def _rates(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {c: r for c, r in v.items() if not 0.0 <= r <= 1.0}
        if bad:
            raise ValueError(f"shadow rates must be between 0 and 1: {bad}")
        return v

    @field_validator("plan")
    @classmethod
    def _plans(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list):
            if not v:
                raise ValueError("router.shadow.plan: give at least one plan, or 'auto'")
            if len(set(v)) != len(v):
                raise ValueError(f"router.shadow.plan: a plan is listed twice: {v}")
        return v

    @property
    def plans(self) -> list[str]:
        """The counterfactual plans as named (``auto`` not resolved yet)."""
        return list(self.plan) if isinstance(self.plan, list) else [self.plan]


class RouterSettings(BaseModel):
    """``[router]``: which requests get extended thinking (default: none; classes opt in)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # "heuristic", or the path of a model from `ponder route train`.
    classifier: str = "heuristic"
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    # Inferred classes without a [router.classes] entry use the built-in presets.
    infer_presets: bool = False
    default: RouteClassSettings = Field(default_factory=RouteClassSettings)
    classes: dict[str, RouteClassSettings] = Field(default_factory=dict)
    # Per API key id / per team: class name -> policy, over the classes above.
    keys: dict[str, dict[str, RouteClassSettings]] = Field(default_factory=dict)
    teams: dict[str, dict[str, RouteClassSettings]] = Field(default_factory=dict)
    novelty_window: int = Field(default=256, ge=1)
    # "default": classes without a [router.classes] entry follow the policy shipped with
    # ponder (fitted on the routing benchmark, ponder/router/default_policy.json);
    # "none": they follow [router.default].
    policy: Literal["default", "none"] = "default"
    # The ledger keeps each request's router features (for `ponder route train
    # --from-ledger`); with this set it also keeps the prompt text they came from.
    record_prompts: bool = False
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)


class GuardrailSettings(BaseModel):
    """``[guardrails]``: untrusted content is wrapped, answers are scanned for leaks.

    Tool results (and ``ponder.documents``) reach the model inside delimiters it is
    told to treat as data. Answers (and reasoning, where returned) are scanned for
    the request's system prompt (``leak_min_words`` words matching it in runs of
    ``leak_ngram``-word shingles, gaps of up to ``leak_gap`` edited words allowed)
    and for ``secrets`` (exact strings) and ``secret_patterns`` (regexes); each is
    ``redact``-ed (replaced by ``redaction_marker``) or ``refuse``-d
    (``finish_reason: content_filter``).
    """

    # Errors must not echo the values: they may be secrets.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    enabled: bool = True
    wrap_tool_results: bool = True
    system_prompt: Literal["redact", "refuse", "off"] = "redact"
    leak_ngram: int = Field(default=4, ge=2, le=16)
    leak_min_words: int = Field(default=8, ge=2)
    leak_gap: int = Field(default=3, ge=0, le=32)
    secrets: list[str] = Field(default_factory=list)
    secret_patterns: list[str] = Field(default_factory=list)
    secret_action: Literal["redact", "refuse"] = "redact"
    # Streams hold back this many characters while secret_patterns are set: a
    # pattern's match must fit in it to be caught before any of it is sent.
    secret_window_chars: int = Field(default=256, ge=1, le=65536)
    redaction_marker: str = "[redacted]"

    @field_validator("secrets")
    @classmethod
    def _real_secrets(cls, v: list[str]) -> list[str]:
        for i, secret in enumerate(v):
            if len(secret.strip()) < 4:
                raise ValueError(
                    f"secrets[{i}] is {len(secret.strip())} characters; a secret must have at "
                    "least 4 (shorter ones would redact ordinary text)"
                )
        return v

    @field_validator("secret_patterns")
    @classmethod
    def _compiles(cls, v: list[str]) -> list[str]:
        for i, pattern in enumerate(v):
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"secret_patterns[{i}] {pattern!r} is not a valid regular expression: {exc}"
                ) from exc
            if compiled.search("") is not None:
                raise ValueError(
                    f"secret_patterns[{i}] {pattern!r} matches the empty string, so it would "
                    "match everywhere; make it require at least one character"
                )
        return v


# --------------------------------------------------------------------------- [deploy.ray]


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


class SandboxSettings(BaseModel):
    """``[sandbox]``: how model-written code is isolated (see ponder.verifiers.sandbox).

    ``bwrap``: the bubblewrap binary (a name on PATH or a path). ``python``: the
    interpreter that runs inside it (default: this one, else ``/usr/bin/python3`` when
    this one is not readable by the sandbox's unprivileged user). Where the host
    cannot isolate, code is refused unless ``allow_unsafe_unsandboxed`` is set, which
    runs it as a plain subprocess of this server, with this server's privileges.
    """

    model_config = ConfigDict(extra="forbid")

    bwrap: str = "bwrap"
    python: str | None = None
    allow_unsafe_unsandboxed: bool = False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PONDER_",
        env_nested_delimiter="__",
        toml_file="ponder.toml",
        extra="ignore",
        # Errors name the key and the problem but never echo values: the file and
        # the environment hold secrets (guardrails.secrets, webhook URLs).
        hide_input_in_errors=True,
    )

    cache_dir: Path = Field(default_factory=default_cache_dir)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    # Prices per model name (or tier name); "default" applies to the rest.
    pricing: dict[str, PriceSettings] = Field(default_factory=dict)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    # Named model tiers ([tiers.<name>] tables), weakest first; see ponder.backends.tiers.
    tiers: dict[str, TierSettings] = Field(default_factory=dict)
    router: RouterSettings = Field(default_factory=RouterSettings)
    guardrails: GuardrailSettings = Field(default_factory=GuardrailSettings)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)

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
