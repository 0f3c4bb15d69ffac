"""The Ray Serve application builder: config -> deployments, refusals, the handle backends.

No Ray cluster here: the plan needs no Ray, and the handle backends are driven by an
in-process stand-in for a Serve DeploymentHandle (``LocalHandle``). The cluster test
is tests/deploy/test_ray.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from ponder.backends.openai_compat import OpenAICompatBackend
from ponder.config import (
    AutoscalingSettings,
    EngineSettings,
    GatewayDeploySettings,
    LedgerSettings,
    RayDeploySettings,
    ServerSettings,
    Settings,
    TierDeploySettings,
    TierSettings,
)
from ponder.deploy.ray import (
    REPLICA_HEADER,
    DeployConfigError,
    ReplicaApp,
    ServeLLMTransport,
    ServeTierBackend,
    TierServer,
    build_gateway_app,
    llm_config_kwargs,
    load_deploy_settings,
    local_request,
    plan_deployment,
    portable_request,
)
from ponder.deploy.ray.tier_server import _remote_error
from ponder.errors import ContextOverflow, UpstreamError
from ponder.types import GenRequest, Message

PG = "postgresql://ponder@db-host:5432/ponder"
SMALL = TierSettings(backend="llama_cpp", model="qwen2.5-coder-0.5b-instruct")
REMOTE = TierSettings(backend="openai_compat", model="Qwen/Qwen3-8B", base_url="http://gpu:8000/v1")
GPU = TierSettings(
    backend="vllm",
    model="Qwen/Qwen3-8B",
    options={"max_model_len": 8192, "gpu_memory_utilization": 0.9, "name": "q8"},
)


def settings(**kw: Any) -> Settings:
    kw.setdefault("ledger", LedgerSettings(url=PG))
    kw.setdefault("server", ServerSettings())
    return Settings(**kw)


def user(text: str) -> list[Message]:
    return [Message(role="user", content=text)]


# --------------------------------------------------------------------------- the plan


def test_each_tier_kind_gets_its_deployment_and_the_gateway_its_replicas() -> None:
    s = settings(tiers={"small": SMALL, "remote": REMOTE, "big": GPU})
    d = RayDeploySettings(
        gateway=GatewayDeploySettings(replicas=3, num_cpus=0.5),
        tiers={
            "small": TierDeploySettings(
                num_cpus=2,
                autoscaling=AutoscalingSettings(
                    min_replicas=1, max_replicas=4, target_ongoing_requests=8
                ),
            )
        },
    )
    plan = plan_deployment(s, d)
    kinds = {t.tier: t.kind for t in plan.tiers}
    assert kinds == {"small": "engine", "remote": "remote", "big": "vllm"}
    small = next(t for t in plan.tiers if t.tier == "small")
    assert small.options["name"] == "tier-small"
    assert small.options["ray_actor_options"] == {"num_cpus": 2}
    assert small.options["autoscaling_config"]["max_replicas"] == 4
    assert small.options["autoscaling_config"]["target_ongoing_requests"] == 8
    assert "num_replicas" not in small.options
    assert small.threads == 2  # the engine uses the CPUs the deployment reserves
    big = next(t for t in plan.tiers if t.tier == "big")
    assert big.options["model_loading_config"]["model_id"] == "Qwen/Qwen3-8B"
    assert plan.gateway_options["num_replicas"] == 3
    assert plan.gateway_options["ray_actor_options"] == {"num_cpus": 0.5}
    # The first tier is the gateway's; the ledger records it by name.
    assert plan.default_tier == "small" and plan.settings.server.tier == "small"
    described = plan.describe()
    assert described["ledger"] == PG and [t["tier"] for t in described["tiers"]] == [
        "small",
        "remote",
        "big",
    ]


def test_a_config_without_tiers_serves_the_engine_model() -> None:
    s = settings(tiers={}, engine=EngineSettings(model="my-model", threads=3))
    plan = plan_deployment(s, RayDeploySettings())
    (tier,) = plan.tiers
    assert (tier.tier, tier.kind, tier.threads) == ("embedded", "engine", 3)
    assert plan.settings.tiers["embedded"].model == "my-model"
    assert plan.default_tier == "embedded"


@pytest.mark.parametrize(
    ("ledger", "enabled", "said"),
    [
        (None, True, "default SQLite ledger"),
        ("sqlite:////var/lib/ponder/ponder.db", True, "sqlite ledger"),
        (PG, False, "server.ledger = false"),
    ],
)
def test_several_replicas_without_a_shared_postgresql_ledger_are_refused(
    ledger: str | None, enabled: bool, said: str
) -> None:
    s = settings(
        tiers={"small": SMALL},
        ledger=LedgerSettings(url=ledger),
        server=ServerSettings(ledger=enabled),
    )
    with pytest.raises(DeployConfigError, match=said) as info:
        plan_deployment(s, RayDeploySettings(gateway=GatewayDeploySettings(replicas=2)))
    assert "PostgreSQL" in info.value.message and "--gateway-replicas 1" in info.value.message
    # Autoscaling that may reach two replicas is refused the same way.
    auto = GatewayDeploySettings(autoscaling=AutoscalingSettings(min_replicas=1, max_replicas=2))
    with pytest.raises(DeployConfigError):
        plan_deployment(s, RayDeploySettings(gateway=auto))
    # One replica owns its state alone: allowed.
    one = plan_deployment(s, RayDeploySettings(gateway=GatewayDeploySettings(replicas=1)))
    assert one.gateway_options["num_replicas"] == 1


def test_unknown_names_are_refused_with_the_configured_ones() -> None:
    s = settings(tiers={"small": SMALL})
    with pytest.raises(DeployConfigError, match=r"unknown tiers: big; configured tiers: small"):
        plan_deployment(s, RayDeploySettings(tiers={"big": TierDeploySettings()}))
    with pytest.raises(DeployConfigError, match=r"server.tier = 'big' is not a configured tier"):
        plan_deployment(
            settings(tiers={"small": SMALL}, server=ServerSettings(tier="big")),
            RayDeploySettings(),
        )
    with pytest.raises(ValueError, match="min_replicas"):
        AutoscalingSettings(min_replicas=3, max_replicas=2)


def test_deploy_settings_come_from_the_toml_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "ponder.toml"
    toml.write_text(
        """
[tiers.small]
backend = "llama_cpp"
model = "qwen2.5-coder-0.5b-instruct"

[deploy.ray]
port = 9000
[deploy.ray.gateway]
autoscaling = { min_replicas = 2, max_replicas = 6, target_ongoing_requests = 16 }
[deploy.ray.tiers.small]
num_cpus = 4
"""
    )
    d = load_deploy_settings(toml)
    assert d.port == 9000 and d.gateway.max_replicas == 6
    assert d.tiers["small"].num_cpus == 4
    monkeypatch.setenv("PONDER_CONFIG", str(tmp_path / "absent.toml"))
    assert load_deploy_settings() == RayDeploySettings()  # no file: the defaults

    toml.write_text("[deploy.ray.gateway]\nreplica = 2\n")
    with pytest.raises(DeployConfigError, match=r"deploy\.ray\.gateway\.replica: Extra inputs"):
        load_deploy_settings(toml)
    with pytest.raises(DeployConfigError, match="does not exist"):
        load_deploy_settings(tmp_path / "missing.toml")


def test_cli_dry_run_prints_the_plan_and_refuses_sqlite_replicas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ponder.cli import main

    monkeypatch.delenv("PONDER_LEDGER__URL", raising=False)
    toml = tmp_path / "ponder.toml"
    toml.write_text(
        f"""
[ledger]
url = "{PG}"
[tiers.small]
backend = "llama_cpp"
model = "qwen2.5-coder-0.5b-instruct"
[deploy.ray.gateway]
replicas = 2
"""
    )
    assert main(["deploy", "ray", "--config", str(toml), "--dry-run", "--port", "9100"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["url"] == "http://127.0.0.1:9100/"
    assert plan["gateway"]["num_replicas"] == 2
    assert plan["tiers"][0]["kind"] == "engine"

    sqlite = tmp_path / "sqlite.toml"
    sqlite.write_text(toml.read_text().replace(PG, f"sqlite:///{tmp_path / 'p.db'}"))
    assert main(["deploy", "ray", "--config", str(sqlite), "--gateway-replicas", "3"]) == 2
    assert "PostgreSQL" in capsys.readouterr().err


# --------------------------------------------------------------------------- GPU tiers


def _ray_llm_config_class() -> Any:
    """Ray's LLMConfig: the public class needs vLLM installed; its base validates the same
    fields without it (the public class adds nothing), so the config is checked here too."""
    pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'ponder[ray]')")
    try:
        from ray.serve.llm import LLMConfig
    except ImportError:
        from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
    return LLMConfig


def test_a_vllm_tier_becomes_a_ray_serve_llm_config() -> None:
    d = TierDeploySettings(
        accelerator_type="A10G",
        tensor_parallel_size=2,
        engine_kwargs={"max_num_seqs": 64},
        autoscaling=AutoscalingSettings(min_replicas=1, max_replicas=4, target_ongoing_requests=32),
    )
    kwargs = llm_config_kwargs("big", GPU, d)
    engine = kwargs["engine_kwargs"]
    assert engine["tensor_parallel_size"] == 2 and engine["max_num_seqs"] == 64
    # The tier's own vLLM options carry over; ponder's naming option does not.
    assert engine["max_model_len"] == 8192 and engine["gpu_memory_utilization"] == 0.9
    assert "name" not in engine

    cfg = _ray_llm_config_class()(**kwargs)  # Ray accepts every field as built
    assert cfg.model_id == "Qwen/Qwen3-8B"
    assert cfg.model_loading_config.model_source == "Qwen/Qwen3-8B"
    assert cfg.accelerator_type == "A10G"
    assert cfg.engine_kwargs == engine
    auto = cfg.deployment_config["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"], auto["target_ongoing_requests"]) == (
        1,
        4,
        32,
    )
    with pytest.raises(DeployConfigError, match="not vllm"):
        llm_config_kwargs("small", SMALL)


def test_a_vllm_tier_without_vllm_installed_says_what_to_install() -> None:
    pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'ponder[ray]')")
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vLLM is installed here")
    from ponder.deploy.ray import llm_config

    with pytest.raises(DeployConfigError, match=r"pip install 'ray\[serve,llm\]'"):
        llm_config("big", GPU)


# --------------------------------------------------------------------------- handle backends


class _Response:
    """An awaitable result with ``cancel()``, like Serve's DeploymentResponse."""

    def __init__(self, value: Any) -> None:
        self.value, self.cancelled = value, False

    def __await__(self) -> Any:
        async def get() -> Any:
            return await self.value if asyncio.iscoroutine(self.value) else self.value

        return get().__await__()

    def cancel(self) -> None:
        self.cancelled = True
        if asyncio.iscoroutine(self.value):
            self.value.close()


class _Generator:
    """An async iterator with ``cancel()``, like Serve's DeploymentResponseGenerator."""

    def __init__(self, source: Any) -> None:
        self.source, self.cancelled = source, False

    def __aiter__(self) -> _Generator:
        return self

    async def __anext__(self) -> Any:
        if asyncio.iscoroutine(self.source):  # LLMServer methods return their generator
            self.source = await self.source
        return await self.source.__anext__()

    def cancel(self) -> None:
        self.cancelled = True


class LocalHandle:
    """In-process stand-in for a DeploymentHandle: ``handle.method.remote(*args)``."""

    def __init__(self, target: Any, streaming: bool = False) -> None:
        self._target, self._streaming = target, streaming
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.responses: list[Any] = []

    def options(self, *, stream: bool = False) -> LocalHandle:
        other = LocalHandle(self._target, stream)
        other.calls, other.responses = self.calls, self.responses
        return other

    def __getattr__(self, method: str) -> Any:
        fn = getattr(self._target, method)
        handle = self

        class _Method:
            @staticmethod
            def remote(*args: Any) -> Any:
                handle.calls.append((method, args))
                result = fn(*args)
                response = _Generator(result) if handle._streaming else _Response(result)
                handle.responses.append(response)
                return response

        return _Method()


def test_deadlines_travel_as_seconds_left() -> None:
    req = GenRequest(messages=user("hi"), deadline=1000.0)
    portable, left = portable_request(req, now=990.0)
    assert portable.deadline is None and left == 10.0
    assert local_request(portable, left, now=50.0).deadline == 60.0
    assert portable_request(GenRequest(messages=user("hi")))[1] is None
    assert portable_request(req, now=2000.0)[1] == 0.0  # already past: no time, not negative


async def test_the_gateway_reaches_an_engine_tier_through_its_handle(tmp_path: Path) -> None:
    tier = TierSettings(
        backend="fake", model="fake-model", options={"replies": ["The answer is 4"]}
    )
    server = TierServer("small", tier, EngineSettings(), tmp_path)
    handle = LocalHandle(server)
    backend = ServeTierBackend(handle, tier="small", name="fake-model")
    await backend.connect()
    assert backend.capabilities == server.backend.capabilities
    assert backend.capabilities.native_n

    deadline = time.monotonic() + 30
    (gen,) = await backend.generate(GenRequest(messages=user("2+2?"), deadline=deadline))
    assert gen.text == "The answer is 4"
    method, (sent, left) = handle.calls[-1]
    assert method == "generate" and sent.deadline is None and 29 < left <= 30
    # The engine saw the deadline again, on its own clock.
    assert abs(server.backend.calls[-1].deadline - deadline) < 1

    deltas = [d async for d in backend.stream(GenRequest(messages=user("2+2?")))]
    assert "".join(d.text for d in deltas) == "The answer is 4"
    assert deltas[-1].finish_reason == "stop"

    # A stream the caller abandons is cancelled at the tier too.
    stream = backend.stream(GenRequest(messages=user("2+2?")))
    await anext(stream)
    await stream.aclose()
    assert handle.responses[-1].cancelled


def test_engine_errors_come_back_as_themselves_and_outages_as_retryable() -> None:
    class WrappedByRay(Exception):  # what a handle raises: the replica's error as ``cause``
        def __init__(self, cause: BaseException) -> None:
            super().__init__(str(cause))
            self.cause = cause

    overflow = ContextOverflow("the prompt does not fit")
    assert _remote_error("small", WrappedByRay(overflow)) is overflow
    outage = _remote_error("small", RuntimeError("replica died\nActorDiedError: gone"))
    assert isinstance(outage, UpstreamError) and outage.status == 502
    assert outage.upstream == "small" and "ActorDiedError: gone" in outage.message


async def test_the_gateway_app_governs_requests_to_handle_tiers(tmp_path: Path) -> None:
    small = TierSettings(backend="fake", model="fake-small", options={"replies": ["four"]})
    big = TierSettings(backend="fake", model="fake-big", options={"replies": ["FOUR"]})
    s = settings(
        tiers={"small": small, "big": big},
        ledger=LedgerSettings(url=f"sqlite:///{tmp_path / 'ledger.db'}"),
        cache_dir=tmp_path,
    )
    plan = plan_deployment(s, RayDeploySettings(gateway=GatewayDeploySettings(replicas=1)))
    handles = {
        name: LocalHandle(TierServer(name, tier, EngineSettings(), tmp_path))
        for name, tier in (("small", small), ("big", big))
    }
    app, tiers = build_gateway_app(plan.settings, handles, replica="r-1")
    await _lifespan_startup(app)
    assert tiers.raw("small").capabilities.native_n  # connected at startup

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        answers = {}
        for model in ("small", "fake-big"):
            resp = await client.post(
                "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "2+2?"}]},
            )
            assert resp.status_code == 200, resp.text
            assert resp.headers[REPLICA_HEADER] == "r-1"
            answers[model] = (resp.json()["id"], resp.json()["choices"][0]["message"]["content"])
    # Each tier answered through its own handle; no engine was built in the gateway.
    assert answers["small"][1] == "four" and answers["fake-big"][1] == "FOUR"
    assert [c[0] for c in handles["small"].calls] == ["info", "generate"]
    assert [c[0] for c in handles["big"].calls] == ["info", "generate"]
    gateway = app.app.state.gateway
    rows = {r.id: r for r in gateway.store.rows()}
    assert rows[answers["small"][0]].tier == "small" and rows[answers["fake-big"][0]].tier == "big"


async def _lifespan_startup(app: ReplicaApp) -> None:
    """Run an ASGI app's lifespan startup, as Serve does when a replica starts."""
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await messages.put({"type": "lifespan.startup"})
    started = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()
        elif message["type"] == "lifespan.startup.failed":
            raise AssertionError(message)

    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, messages.get, send)
    )
    await asyncio.wait_for(started.wait(), 10)
    app._lifespan_task = task  # type: ignore[attr-defined]  # keep it alive


async def test_replica_app_connects_before_the_lifespan_and_names_the_replica() -> None:
    seen: list[str] = []

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    async def startup() -> None:
        seen.append("startup")

    app = ReplicaApp(inner, replica="replica-7", startup=startup)
    await app({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as c:
        resp = await c.get("/health")
    assert seen == ["startup", "lifespan", "http"]
    assert resp.headers[REPLICA_HEADER] == "replica-7"


# --------------------------------------------------------------------------- ServeLLMTransport


class ErrorInfo(BaseModel):
    message: str
    type: str
    code: int


class ErrorResponse(BaseModel):  # the shape of vLLM's error response
    error: ErrorInfo


class FakeLLMServer:
    """LLMServer's handle contract: ``chat(request)`` returns an async generator of a
    response object (unary) or of batches of ``data: ...`` strings (stream)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def chat(self, request: dict[str, Any]) -> Any:
        self.requests.append(request)
        return self._results(request)

    async def _results(self, request: dict[str, Any]) -> Any:
        if request["max_tokens"] > 100:
            yield ErrorResponse(
                error=ErrorInfo(message="max_tokens is too large", type="BadRequestError", code=400)
            )
            return
        if not request.get("stream"):
            yield {
                "id": "c1",
                "object": "chat.completion",
                "model": request["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Paris"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
            }
            return
        chunks = [
            {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Par"}}]},
            {"choices": [{"index": 0, "delta": {"content": "is"}, "finish_reason": "stop"}]},
            {
                "choices": [],
                "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
            },
        ]
        yield [f"data: {json.dumps(c)}\n\n" for c in chunks[:2]]
        yield [f"data: {json.dumps(chunks[2])}\n\n"]


def _llm_backend(server: FakeLLMServer) -> OpenAICompatBackend:
    transport = ServeLLMTransport(LocalHandle(server), request_types={"chat": dict})
    return OpenAICompatBackend(
        "http://ray-serve-llm.big/v1", "Qwen/Qwen3-8B", flavor="vllm", transport=transport
    )


async def test_a_vllm_tier_answers_the_openai_backend_through_its_handle() -> None:
    server = FakeLLMServer()
    backend = _llm_backend(server)
    try:
        (gen,) = await backend.generate(
            GenRequest(messages=user("Capital of France?"), max_tokens=8)
        )
        assert gen.text == "Paris" and gen.usage.input == 9 and gen.usage.output == 1
        assert server.requests[-1]["model"] == "Qwen/Qwen3-8B"
        assert server.requests[-1]["messages"][-1]["content"] == "Capital of France?"

        deltas = [
            d async for d in backend.stream(GenRequest(messages=user("Capital?"), max_tokens=8))
        ]
        assert "".join(d.text for d in deltas) == "Paris"
        assert server.requests[-1]["stream"] is True

        with pytest.raises(UpstreamError) as info:
            await backend.generate(GenRequest(messages=user("long"), max_tokens=500))
        assert info.value.upstream_status == 400 and info.value.status == 400
        assert "max_tokens is too large" in info.value.message

        # No tokenize route over Serve: the backend falls back to its estimate.
        assert await backend.count_tokens("one two three four") > 0
    finally:
        await backend.aclose()


async def test_an_unreachable_vllm_deployment_is_a_retryable_upstream_error() -> None:
    class GoneLLMServer:
        async def chat(self, request: dict[str, Any]) -> Any:
            raise RuntimeError("no replicas of deployment tier-big are running")

    transport = ServeLLMTransport(LocalHandle(GoneLLMServer()), request_types={"chat": dict})
    backend = OpenAICompatBackend(
        "http://ray-serve-llm.big/v1", "Qwen/Qwen3-8B", flavor="vllm", transport=transport
    )
    try:
        with pytest.raises(UpstreamError) as info:
            await backend.generate(GenRequest(messages=user("hi"), max_tokens=8))
    finally:
        await backend.aclose()
    assert info.value.retryable and info.value.status == 502
    assert "no replicas of deployment tier-big" in info.value.message
