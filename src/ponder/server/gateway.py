"""The gateway: the request phases wired together, framework-free.

Nothing here imports FastAPI, so the library, the CLI and tests can call
:class:`Gateway` directly. Errors are values: every handler returns a response
model (or a :class:`StreamResult`) or an :class:`ErrorResult` whose body is an
OpenAI error object; an unexpected exception becomes a 500 error value and the
server stays up. Each phase lives in its own module: ``parsing`` -> ``admission``
(caller) -> ``planning`` -> ``output`` (input guardrails) -> ``admission``
(bounds, reservation) -> ``execution`` -> ``output`` -> ``settlement`` ->
``responses`` / ``streaming``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ponder.api import Ponder
from ponder.backends.base import Backend
from ponder.budget.pricing import Price, PriceTable
from ponder.budget.quota import Limit, Scope, estimate_prompt_tokens
from ponder.config import GuardrailSettings, ServerSettings
from ponder.errors import PonderError
from ponder.guardrails import GuardrailPolicy
from ponder.ledger.store import Store
from ponder.router.policy import Router
from ponder.router.shadow import shadow_sampler
from ponder.server.admin import AdminAPI
from ponder.server.admission import Admission
from ponder.server.auth import Authenticator, Caller
from ponder.server.continuation import continue_async
from ponder.server.execution import Execution, RunState
from ponder.server.output import guard_input, guard_outcome
from ponder.server.parsing import parse_request
from ponder.server.planning import Plan, check_capabilities, plan
from ponder.server.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    ErrorResult,
    ModelCard,
    ModelList,
    StreamResult,
    completion_id,
    error_result,
    internal_error,
)
from ponder.server.responses import completion
from ponder.server.settlement import Settler
from ponder.server.streaming import Streams
from ponder.telemetry.alerts import Alerts
from ponder.telemetry.metrics import GatewayMetrics
from ponder.telemetry.otel import OtelTracer
from ponder.types import GenRequest

__all__ = ["Gateway"]

# A queued job's callback: called in the settlement transaction with the response.
OnSettle = Callable[[Any, ChatCompletion | ErrorResult], None]


class Gateway:
    """The gateway's handlers over one backend, or several model tiers.

    Without a ``store`` it is the plain library gateway (no auth, quotas or
    ledger). With one, every chat request goes auth -> plan -> reserve -> run
    -> settle + ledger row (committed before responding) -> metrics/alerts.

    ``tiers`` (name -> backend) are the model tiers a request can run on: the one its
    plan names (``ponder.tier``, a ``model`` naming a tier, the router's class policy),
    else the default tier, ``settings.tier`` or ``backend.name``, served by ``backend``.
    Every run's strategy also gets all tiers (``RunContext.tiers``) under its one
    reservation, each tier's tokens priced at that tier's rate.
    """

    def __init__(
        self,
        backend: Backend,
        settings: ServerSettings | None = None,
        *,
        store: Store | None = None,
        prices: PriceTable | None = None,
        metrics: GatewayMetrics | None = None,
        alerts: Alerts | None = None,
        quota_thresholds: Sequence[float] = (0.8, 1.0),
        otel: OtelTracer | None = None,
        router: Router | None = None,
        guardrails: GuardrailSettings | None = None,
        tiers: Mapping[str, Backend] | None = None,
        tier_models: Mapping[str, str] | None = None,
    ) -> None:
        self.backend = backend
        # Plans requests that choose no strategy themselves (None: the server default).
        self.router = router
        self.guardrails = GuardrailPolicy(guardrails)
        # model_construct: the defaults without reading the environment (only
        # entry points do that; create_app passes the loaded settings).
        self.settings = settings or ServerSettings.model_construct()
        self.store = store
        self.prices = prices or PriceTable()
        self.metrics = metrics or GatewayMetrics()
        self.metrics.watch_prefix_caches(self._prefix_cache_stats)
        self.alerts = alerts or Alerts()
        self.quota_thresholds = tuple(quota_thresholds)
        self.otel = otel
        self.auth = Authenticator(store, require_auth=self.settings.require_auth)
        # The default tier, served by ``backend``.
        self.tier = self.settings.tier or backend.name
        self.tiers: dict[str, Backend] = {**(tiers or {}), self.tier: backend}
        if tiers and self.tier not in tiers:
            # Listed first when the configured tiers do not include it.
            self.tiers = {self.tier: backend, **tiers}
        # What each tier serves (a request's ``model`` may name it), for /v1/models.
        models = dict(tier_models or {})
        self.tier_models: dict[str, str] = {
            name: models.get(name, b.name) for name, b in self.tiers.items()
        }
        # The job queue (set by ponder.server.app): continue_async plans run there.
        self.jobs: Any = None
        # What built the tiers (a ponder.guard.Tiers), closed with the app.
        self.tier_pool: Any = None
        self.ponder = Ponder(backend)
        self.created = int(time.time())
        # The phases.
        self.admission = Admission(
            store=store,
            settings=self.settings,
            auth=self.auth,
            tiers=self.tiers,
            default_tier=self.tier,
            price_of=self.price_of,
        )
        self.settler = Settler(
            store=store,
            metrics=self.metrics,
            alerts=self.alerts,
            otel=otel,
            thresholds=self.quota_thresholds,
            price_of=self.price_of,
            model_of=self.model_of,
            router=router,
        )
        self.streams = Streams(self.settler, self.tiers)
        self.admin = AdminAPI(store, self.admission)
        # [router.shadow]: counterfactual runs of sampled requests, in the background.
        self.shadow = shadow_sampler(router, list(self.tiers))
        self.metrics.watch_shadows(
            lambda: None if self.shadow is None else (self.shadow.started, self.shadow.skipped_busy)
        )
        self.shadow_tasks: set[asyncio.Task[Any]] = set()
        self.retrain_task: asyncio.Task[None] | None = None

    @property
    def price(self) -> Price:
        """The default tier's price."""
        return self.price_of(self.tier)

    def price_of(self, tier: str) -> Price:
        """A tier's price: ``[pricing.<tier>]``, else its model's or backend's, else default."""
        models = self.prices.models
        backend = self.tiers.get(tier)
        for name in (tier, backend.name if backend else None, self.tier_models.get(tier)):
            if name is not None and name in models:
                return models[name]
        return self.prices.default

    def model_of(self, tier: str) -> str:
        """The model a response names: the one behind the tier."""
        return self.tier_models.get(tier, self.backend.name)

    async def aclose(self) -> None:
        """Close the tiers' backends other than ``backend`` (its owner closes that one)."""
        for task in [*self.shadow_tasks, self.retrain_task]:
            if task is not None:
                task.cancel()
        if self.tier_pool is not None:
            await self.tier_pool.aclose()
            return
        for tier_backend in self.tiers.values():
            if tier_backend is self.backend:
                continue
            for method in ("aclose", "close"):
                closer = getattr(tier_backend, method, None)
                if callable(closer):
                    result = closer()
                    if inspect.isawaitable(result):
                        await result
                    break

    # ---- GET /health, GET /v1/models, GET /metrics

    def health(self) -> dict[str, str]:
        return {"status": "ok", "model": self.backend.name}

    def models(self) -> ModelList:
        """One card per tier (its name is what ``model`` names); one tier: the model's name."""
        return ModelList(
            data=[
                ModelCard(
                    id=self.backend.name if len(self.tiers) == 1 else name,
                    created=self.created,
                    ponder={"tier": name, "model": model, "default": name == self.tier},
                )
                for name, model in self.tier_models.items()
            ]
        )

    def metrics_text(self) -> bytes:
        return self.metrics.render()

    async def authenticate(self, headers: Mapping[str, str] | None) -> Caller:
        return await self.admission.authenticate(headers)

    def _check_scopes(self, caller: Caller, request: ChatCompletionRequest) -> None:
        self.admission.check_scopes(caller, request)

    # ---- POST /v1/chat/completions

    def _prefix_cache_stats(self) -> list[tuple[str, dict[str, float]]]:
        """``(tier, stats)`` of every tier whose engine keeps a prefix cache (metrics)."""
        found = []
        for tier, backend in self.tiers.items():
            stats = getattr(_engine_with(backend, "prefix_cache_stats"), "prefix_cache_stats", None)
            if callable(stats) and (values := stats()):
                found.append((tier, values))
        return found

    async def chat(
        self,
        body: Any,
        headers: Mapping[str, str] | None = None,
        *,
        run_as: Caller | None = None,
        request_id: str | None = None,
        on_settle: OnSettle | None = None,
    ) -> ChatCompletion | StreamResult | ErrorResult:
        """Handle a chat completion: ``body`` is a decoded JSON body or a parsed request.

        Queued jobs (``ponder.server.jobs``) pass ``run_as`` (the caller who queued it,
        instead of authenticating ``headers``), ``request_id`` (the ledger row's id) and
        ``on_settle(conn, response)``, called in the settlement transaction.
        """
        run = self._chat(body, headers, run_as=run_as, request_id=request_id, on_settle=on_settle)
        if self.shadow is None or run_as is not None:
            return await run
        # Shadows start only while no interactive request is in flight.
        self.shadow.interactive += 1
        try:
            return await run
        finally:
            self.shadow.interactive -= 1

    async def _chat(
        self,
        body: Any,
        headers: Mapping[str, str] | None = None,
        *,
        run_as: Caller | None = None,
        request_id: str | None = None,
        on_settle: OnSettle | None = None,
        shadow_of: str | None = None,
        shadow_plan: str | None = None,
    ) -> ChatCompletion | StreamResult | ErrorResult:
        caller = run_as if run_as is not None else Caller()
        try:
            limits: list[Limit] | None = None
            if run_as is None:
                caller, limits = await self.admission.caller_and_limits(headers)
            request = body if isinstance(body, ChatCompletionRequest) else parse_request(body)
            # A queued job (run_as) is the async latency class unless it says otherwise.
            p = self._plan(
                caller, request, headers, latency="async" if run_as is not None else "interactive"
            )
            if shadow_of is not None:
                p = dataclasses.replace(p, shadow_of=shadow_of, shadow_plan=shadow_plan)
            rid = request_id or completion_id()
            admitted = await self.admission.admit(caller, p, request_id=rid, limits=limits)
        except PonderError as exc:
            self.metrics.refuse(caller.label, exc.code or exc.type)
            return error_result(exc)
        except Exception as exc:
            return internal_error(exc)
        # From here the request holds a reservation: every path below settles it.
        state = RunState.start(admitted, self.tiers[admitted.tier])

        async def continuation(s: RunState) -> None:
            await continue_async(self.jobs, s, body, headers)

        if admitted.plan.stream:
            return await self.streams.start(state, continuation)
        result = await self._run_and_settle(state, continuation, on_settle)
        if self.shadow is not None and run_as is None and isinstance(result, ChatCompletion):
            self._maybe_shadow(state, request)
        return result

    def _maybe_shadow(self, state: RunState, request: ChatCompletionRequest) -> None:
        """Start the counterfactual run of a sampled request (``[router.shadow]``)."""
        assert self.shadow is not None
        name = self.shadow.pick(state.plan)
        if name is None:
            return
        options = request.ponder.model_copy(update=self.shadow.overrides(name))
        counterfactual = request.model_copy(
            update={"ponder": options, "stream": False, "reasoning_effort": None, "thinking": None}
        )
        task = asyncio.create_task(self._run_shadow(counterfactual, state.id, name))
        self.shadow_tasks.add(task)
        task.add_done_callback(self.shadow_tasks.discard)

    async def _run_shadow(self, request: ChatCompletionRequest, original: str, plan: str) -> None:
        assert self.shadow is not None
        await asyncio.sleep(0)  # the original's response goes out first
        if not self.shadow.slot():
            return  # busy: this sample is dropped, never queued behind traffic
        try:
            subject = self.router.settings.shadow.subject if self.router else "ponder-shadow"
            await self._chat(
                request,
                run_as=Caller(team=subject, scopes=frozenset({"strategies"})),
                request_id=f"{original}-shadow",
                shadow_of=original,
                shadow_plan=plan,
            )
        finally:
            self.shadow.release()

    def start_retraining(self) -> asyncio.Task[None] | None:
        """Start ``[router.retrain] every`` (needs a store and ``dir``); None when off."""
        conf = self.router.settings.retrain if self.router is not None else None
        if conf is None or conf.every is None or conf.dir is None or self.store is None:
            return None
        from ponder.router.retrain import parse_duration, retrain_every

        store = self.store
        task = asyncio.create_task(
            retrain_every(
                parse_duration(conf.every),
                lambda since: store.rows(since=since),
                conf.dir,
                window_s=parse_duration(conf.window),
                tiers=self.router.tiers if self.router is not None else None,
                holdout=conf.holdout,
                min_rows=conf.min_rows,
            )
        )
        self.retrain_task = task  # cancelled by aclose
        return task

    async def drain_shadows(self) -> None:
        """Wait for the shadow runs in flight (tests, shutdown)."""
        while self.shadow_tasks:
            await asyncio.gather(*list(self.shadow_tasks), return_exceptions=True)

    async def count_input_tokens(self, body: Any, headers: Mapping[str, str] | None) -> int:
        """The prompt tokens the request's first model call would send, nothing run.

        Planned exactly as the request would be (its tier, tools, guarded documents);
        exact on an engine that renders its own chat template (the embedded one), else
        the admission's upper estimate. Charges nothing and writes no ledger row.
        """
        caller = await self.admission.authenticate(headers)
        request = body if isinstance(body, ChatCompletionRequest) else parse_request(body)
        # Counted as the plain call it would make: a count is never a stream.
        request = request.model_copy(update={"stream": False, "stream_options": None})
        p = self._plan(caller, request, headers)
        assert p.tier is not None
        backend = self.tiers[p.tier]
        call = GenRequest(
            messages=p.messages, tools=p.sampling.tools, tool_choice=p.sampling.tool_choice
        )
        render = getattr(_engine_with(backend, "prompt_tokens"), "prompt_tokens", None)
        if callable(render):
            return len(render(call))
        return estimate_prompt_tokens(backend, p.messages)

    def _plan(
        self,
        caller: Caller,
        request: ChatCompletionRequest,
        headers: Mapping[str, str] | None,
        *,
        latency: str = "interactive",
    ) -> Plan:
        """The request's plan on a tier, its input guarded, reasoning shown only if allowed."""
        self.admission.check_scopes(caller, request)
        p = plan(
            request,
            self.settings,
            router=self.router,
            caller=caller,
            headers=headers,
            tiers=self.tier_models,
            default_latency=latency,
        )
        p = guard_input(self.guardrails, p, request)
        p = dataclasses.replace(
            p,
            tier=p.tier or self.tier,
            # Reasoning is hidden from callers without the scope (as with allow_reasoning).
            include_reasoning=p.include_reasoning and caller.may("reasoning"),
        )
        assert p.tier is not None
        check_capabilities(p, self.tiers[p.tier].capabilities)
        return p

    async def _run_and_settle(
        self,
        state: RunState,
        continuation: Callable[[RunState], Any],
        on_settle: OnSettle | None,
    ) -> ChatCompletion | ErrorResult:
        try:
            outcome = await Execution(state, self.tiers).outcome()
            outcome, state.screened = guard_outcome(state.plan, outcome)
            await continuation(state)
        except asyncio.CancelledError:
            # The client went away (or the server is stopping): what was generated is
            # spent, the rest of the hold is released now, not at its expiry. A queued
            # job (on_settle) is requeued by its worker and runs again under the same
            # request id: its row is written by that run.
            if on_settle is None:
                self.settler.settle_abandoned(state, status="cancelled")
            raise
        except Exception as exc:
            return await self.settler.fail(state, exc, on_settle)
        settlement = self.settler.price(
            state, status="ok", http_status=200, truncated=outcome.truncated
        )
        response = completion(state, outcome, settlement, self.model_of(state.tier))
        also = None
        if on_settle is not None:
            hook = on_settle

            def also(conn: Any) -> None:
                hook(conn, response)

        try:
            await self.settler.settle(state, settlement, also)
        except PonderError as exc:
            return error_result(exc)
        return response

    # ---- admin: keys and quotas (admin scope required)

    async def require_admin(
        self,
        headers: Mapping[str, str] | None,
        *,
        needs: str = "the admin API",
        missing: str = "keys or quotas to manage",
    ) -> Store:
        """The store, for a caller with the admin scope (``needs``/``missing`` word the errors)."""
        return await self.admin.require_admin(headers, needs=needs, missing=missing)

    async def admin_create_key(
        self, body: Any, headers: Mapping[str, str] | None
    ) -> dict[str, Any] | ErrorResult:
        return await self.admin.create_key(body, headers)

    async def admin_list_keys(
        self, headers: Mapping[str, str] | None, *, include_revoked: bool = False
    ) -> dict[str, Any] | ErrorResult:
        return await self.admin.list_keys(headers, include_revoked=include_revoked)

    async def admin_revoke_key(
        self, key_id: str, headers: Mapping[str, str] | None
    ) -> dict[str, Any] | ErrorResult:
        return await self.admin.revoke_key(key_id, headers)

    async def admin_set_quota(
        self, body: Any, headers: Mapping[str, str] | None
    ) -> dict[str, Any] | ErrorResult:
        return await self.admin.set_quota(body, headers)

    async def admin_show_quota(
        self, headers: Mapping[str, str] | None, subjects: Mapping[Scope, str | None]
    ) -> dict[str, Any] | ErrorResult:
        return await self.admin.show_quota(headers, subjects)


def _engine_with(backend: Backend, attr: str) -> Any:
    """The backend, or the first one it wraps (resilience, accounting) that has ``attr``."""
    engine: Any = backend
    for _ in range(4):
        if hasattr(engine, attr) or not hasattr(engine, "inner"):
            break
        engine = engine.inner
    return engine
