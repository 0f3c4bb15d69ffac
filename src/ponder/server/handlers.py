"""Framework-free logic of the gateway: parse, plan, run, build the response.

Nothing here imports FastAPI, so the library, the CLI and tests can call
:class:`Gateway` directly. Errors are values: every handler returns a response
model (or a :class:`StreamResult`) or an :class:`ErrorResult` whose body is an
OpenAI error object; an unexpected exception becomes a 500 error value and the
server stays up.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import inspect
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ponder.api import Ponder
from ponder.backends.base import Backend
from ponder.budget.metered import MeteredBackend
from ponder.budget.pricing import MICRO, Price, PriceTable, to_usd
from ponder.budget.quota import (
    Demand,
    Limit,
    QuotaGuard,
    Refusal,
    Scope,
    applicable,
    estimate_prompt_tokens,
)
from ponder.config import GuardrailSettings, ServerSettings
from ponder.errors import (
    BudgetExhausted,
    Forbidden,
    InvalidRequest,
    PonderError,
    QuotaExceeded,
    UnknownStrategy,
)
from ponder.guardrails import (
    Document,
    Finding,
    GuardrailPolicy,
    StreamScan,
    refusal_message,
    summarize,
)
from ponder.ledger.store import Crossing, LedgerRow, QuotaStatus, Reservation, Store
from ponder.ledger.verdicts import outcome_verdict
from ponder.router.policy import PolicyError, RoutePlan, Router, request_text
from ponder.router.verification import request_verifier
from ponder.server.auth import ANONYMOUS_SCOPES, Authenticator, Caller
from ponder.server.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    ChunkDelta,
    ContinuedJob,
    KeyCreate,
    ModelCard,
    ModelList,
    OpenAIFinishReason,
    PonderInfo,
    PonderOptions,
    PonderProgress,
    QuotaSet,
    StreamProgress,
    completion_id,
)
from ponder.strategies import RunContext, SamplingDefaults, Strategy, available_strategies
from ponder.strategies import get_strategy as _get_strategy
from ponder.strategies.base import Progress, ProgressTracker
from ponder.telemetry.alerts import Alerts
from ponder.telemetry.metrics import GatewayMetrics
from ponder.telemetry.otel import OtelTracer
from ponder.telemetry.trace import Tracer
from ponder.types import (
    Budget,
    Delta,
    Generation,
    GenRequest,
    Message,
    Outcome,
    Problem,
    ThinkingConfig,
    Usage,
)
from ponder.verifiers.spec import build_verifier, verdict_of

__all__ = [
    "REASONING_EFFORT",
    "STREAMABLE_STRATEGIES",
    "ErrorResult",
    "Gateway",
    "InvalidJSON",
    "Plan",
    "StreamResult",
    "error_result",
    "parse_json",
    "parse_request",
    "plan",
    "ponder_headers",
    "quota_status_json",
]

logger = logging.getLogger("ponder.server")
_T = TypeVar("_T")
_M = TypeVar("_M", bound=BaseModel)


class NotFound(InvalidRequest):
    status = 404
    code = "not_found"


# OpenAI's reasoning_effort -> (strategy, thinking budget in tokens).
REASONING_EFFORT: dict[str, tuple[str, int]] = {
    "none": ("direct", 0),
    "minimal": ("direct", 0),
    "low": ("cot", 256),
    "medium": ("cot", 1024),
    "high": ("cot", 4096),
}

# Strategies that produce their answer in one generation, so it can be streamed
# as it is decoded; the others must finish (vote, score) before they can answer.
# Strategy parameters that point at server resources (program_aided's SQLite
# database): never taken from a request.
SERVER_ONLY_PARAMS = frozenset({"database"})

# Strategies whose answer is one generation, streamed as it is decoded; the others
# stream progress events while they run, then the chosen answer.
STREAMABLE_STRATEGIES = ("direct", "cot")
# A stream of a multi-sample strategy sends a progress event at least this often.
PROGRESS_HEARTBEAT_S = 5.0


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


@dataclass
class ErrorResult:
    """An error as a value: HTTP status and OpenAI error body."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamResult:
    """A started stream: server-sent event strings and the headers known up front."""

    events: AsyncIterator[str]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Plan:
    """What one request will run: strategy, budget and sampling."""

    strategy: str
    params: dict[str, Any]
    instance: Strategy
    budget: Budget
    sampling: SamplingDefaults
    messages: list[Message]
    # The thinking budget the strategy will actually use (its default included).
    thinking_budget: int | None = None
    include_reasoning: bool = False
    stream: bool = False
    include_usage: bool = False
    # The router's task class ("general" when no router is configured).
    task_class: str = "general"
    # The router's decision (a ponder.router.RoutePlan), when a router planned this.
    route: Any = None
    # Guardrails: untrusted blocks wrapped in ``messages`` by source, and the
    # request's output scanner (``ponder.guardrails``).
    wrapped: dict[str, int] = field(default_factory=dict)
    scanner: Any = None
    # The model tier to run on (None: the gateway's default tier).
    tier: str | None = None
    # The full plan (strategy, params, thinking_budget) an interactive request did not
    # wait for; the gateway queues it as an async job (class policy continue_async).
    deferred: dict[str, Any] | None = None
    # The text the router read (the last user message).
    prompt: str = ""
    # The verifier the request implies (ponder.router.verification) and, once run, the
    # chosen answer's verdict.
    verifier: Any = None
    verification: dict[str, Any] | None = None


# --------------------------------------------------------------------------- parsing


def parse_json(raw: bytes) -> Any:
    """Decode a request body; raise :class:`InvalidJSON` with where it broke."""
    if not raw.strip():
        raise InvalidJSON("request body is not valid JSON: the body is empty; send a JSON object")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidJSON(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except ValueError as exc:  # undecodable bytes
        raise InvalidJSON(f"request body is not valid JSON: {exc}") from exc


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(error: Any) -> str:
    path = _loc(error["loc"]) or "body"
    if error["type"] == "extra_forbidden" and error["loc"][:1] == ("ponder",):
        known = ", ".join(PonderOptions.model_fields)
        return f"{path}: unknown option; ponder accepts {known}"
    msg = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    # Echo scalars only: a whole echoed object would drown the message.
    show = error["type"] != "missing" and not isinstance(value, dict | list)
    return f"{path}: {msg} (got {_short(value)})" if show else f"{path}: {msg}"


def parse_request(body: Any) -> ChatCompletionRequest:
    """Validate a decoded body; raise :class:`InvalidRequest` naming the field and the problem."""
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"request body must be a JSON object, got a JSON {type(body).__name__}"
        )
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        shown = [_describe(e) for e in errors[:3]]
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise InvalidRequest(
            "invalid request: " + "; ".join(shown) + more,
            param=_loc(errors[0]["loc"]) or None,
        ) from exc


# --------------------------------------------------------------------------- planning


def _accepts(cls: type | None, param: str) -> bool:
    if cls is None:
        return False
    if dataclasses.is_dataclass(cls):
        return param in {f.name for f in dataclasses.fields(cls)}
    try:
        return param in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def _messages(request: ChatCompletionRequest) -> list[Message]:
    if not request.messages:
        raise InvalidRequest(
            "messages must contain at least one message, e.g. "
            '[{"role": "user", "content": "What is 2+2?"}]',
            param="messages",
        )
    last_i = len(request.messages) - 1
    last = request.messages[last_i]
    if last.role not in ("user", "assistant"):
        raise InvalidRequest(
            f"the last message must come from the user (or be an assistant prefix), "
            f"got role {last.role!r}",
            param=f"messages[{last_i}].role",
        )
    if not (last.content or "").strip():
        raise InvalidRequest(
            "the last message has empty content; send the question as non-empty text",
            param=f"messages[{last_i}].content",
        )
    # "developer" is OpenAI's newer name for "system"; open models' chat templates
    # only know "system" (and some drop unknown roles silently).
    return [
        Message(role="system" if m.role == "developer" else m.role, content=m.content or "")
        for m in request.messages
    ]


def _choose(request: ChatCompletionRequest, settings: ServerSettings) -> tuple[str, int | None]:
    """Strategy name and the thinking budget implied by the request's generic fields.

    Precedence: ``ponder.strategy`` > ``thinking`` > ``reasoning_effort`` > server default.
    The implied thinking budget also applies to an explicitly named strategy
    that takes one (e.g. self_consistency with reasoning_effort=high).
    """
    implied: int | None = None
    implied_strategy: str | None = None
    if request.thinking is not None:
        if request.thinking.type == "enabled":
            budget = request.thinking.budget_tokens
            implied = budget if budget is not None else REASONING_EFFORT["medium"][1]
            implied_strategy = "cot"
        else:
            implied, implied_strategy = 0, "direct"
    elif request.reasoning_effort is not None:
        implied_strategy, implied = REASONING_EFFORT[request.reasoning_effort]
    name = request.ponder.strategy or implied_strategy or settings.default_strategy
    return name, implied


def _route(
    request: ChatCompletionRequest,
    router: Router | None,
    caller: Caller | None,
    headers: Mapping[str, str] | None,
) -> RoutePlan | None:
    if router is None:
        return None
    try:
        return router.plan(request, caller, headers)
    except PolicyError as exc:
        raise InvalidRequest(str(exc), param=exc.param or "ponder.preset") from exc


def _tier(
    request: ChatCompletionRequest,
    route: RoutePlan | None,
    instance: Strategy,
    tiers: Mapping[str, str] | None,
) -> str | None:
    """The tier a request runs on: ``ponder.tier`` > a ``model`` naming a tier (or a
    tier's model) > the router's class policy > None (the gateway's default tier).

    With ``tiers`` (tier name -> model) every tier named anywhere must exist: an
    unknown one is a 400 here, before anything is reserved.
    """
    known = ", ".join(tiers or {}) or "none"
    explicit = request.ponder.tier
    if explicit is not None:
        if tiers is not None and explicit not in tiers:
            raise InvalidRequest(
                f"ponder.tier: no tier named {explicit!r}; this gateway serves: {known} "
                "(GET /v1/models lists them)",
                param="ponder.tier",
            )
        chosen: str | None = explicit
    elif tiers is not None and request.model in tiers:
        chosen = request.model
    elif by_model := [t for t, m in (tiers or {}).items() if m == request.model]:
        chosen = by_model[0]
    elif route is not None and route.tier is not None:
        if tiers is not None and route.tier not in tiers:
            raise InvalidRequest(
                f"the router's policy for class {route.task_class!r} names tier "
                f"{route.tier!r}, which this gateway does not serve (tiers: {known}); fix "
                "[router] in ponder.toml or name a tier with ponder.tier",
                param="ponder.tier",
            )
        chosen = route.tier
    else:
        # Any other model name keeps the default tier (clients always send one).
        chosen = None
    strong = getattr(instance, "strong_tier", None)
    if isinstance(strong, str) and tiers is not None and strong not in tiers:
        raise InvalidRequest(
            f"cascade: strong_tier {strong!r} is not a tier of this gateway (tiers: {known})",
            param="ponder.params.strong_tier",
        )
    return chosen


def plan(
    request: ChatCompletionRequest,
    settings: ServerSettings,
    *,
    router: Router | None = None,
    caller: Caller | None = None,
    headers: Mapping[str, str] | None = None,
    tiers: Mapping[str, str] | None = None,
) -> Plan:
    """Map a request to what will run; raise :class:`InvalidRequest` for what cannot.

    With a ``router``, a request that chooses nothing itself (no ``ponder.strategy``,
    ``thinking``, ``reasoning_effort`` or ``ponder.thinking_budget``) runs the router's
    plan; every request gets the router's task class. ``tiers`` (tier name -> model)
    are the tiers a request may name; see :func:`_tier`.
    """
    opts = request.ponder
    if request.n != 1:
        raise InvalidRequest(
            f"n={request.n} is not supported yet (one choice per response). To sample "
            f'several answers and return the best, send {{"ponder": {{"strategy": '
            f'"self_consistency", "params": {{"n": {request.n}}}}}}} (or best_of_n)',
            param="n",
        )
    messages = _messages(request)
    name, implied_thinking = _choose(request, settings)
    registry = available_strategies()
    route = _route(request, router, caller, headers)
    chose_nothing = (
        opts.strategy is None
        and request.thinking is None
        and request.reasoning_effort is None
        and opts.thinking_budget is None
    )
    # A class without a policy of its own keeps the server's default strategy,
    # unless [router.default] was declared.
    routed = (
        route is not None
        and router is not None
        and chose_nothing
        and (route.source != "router.default" or "default" in router.settings.model_fields_set)
    )
    deferred = None
    params: dict[str, Any] = {}
    if routed:
        assert route is not None
        name, params, deferred = route.strategy, dict(route.params), route.deferred
        implied_thinking = route.thinking_budget or None
        if request.stream and name not in STREAMABLE_STRATEGIES and route.latency != "async":
            # An interactive stream must start at once: think (if planned) and answer,
            # never search; with continue_async, answer directly and queue the full
            # plan as a job. A stream declared async gets the full plan, streamed as
            # progress events and then the chosen answer.
            planned = name
            if route.continue_async:
                deferred = {
                    "strategy": name,
                    "params": params,
                    "thinking_budget": route.thinking_budget,
                }
                name, implied_thinking = "direct", None
            else:
                name = "cot" if route.thinking_budget else "direct"
            params = {}
            route.reasons.append(f"streamed: {planned} cannot stream, answering with {name}")
    accepts_thinking = _accepts(registry.get(name), "thinking_budget")

    server_only = SERVER_ONLY_PARAMS & set(opts.params)
    if server_only:
        raise InvalidRequest(
            f"ponder.params {sorted(server_only)} can only be set in the server's policy "
            "(they name files on the server)",
            param=f"ponder.params.{sorted(server_only)[0]}",
        )
    params.update(opts.params)
    if opts.thinking_budget is not None:
        if name in registry and not accepts_thinking:
            takers = sorted(n for n, c in registry.items() if _accepts(c, "thinking_budget"))
            raise InvalidRequest(
                f"strategy {name!r} does not use a thinking budget; drop "
                f"ponder.thinking_budget or use one of: {', '.join(takers)}",
                param="ponder.thinking_budget",
            )
        params["thinking_budget"] = opts.thinking_budget
    elif implied_thinking is not None and accepts_thinking and "thinking_budget" not in params:
        params["thinking_budget"] = implied_thinking

    try:
        instance = _get_strategy(name, **params)
    except UnknownStrategy as exc:
        exc.param = "ponder.strategy" if opts.strategy else "strategy"
        raise
    except InvalidRequest as exc:
        inner = exc.param if exc.param not in (None, "strategy_params") else None
        exc.param = f"ponder.params.{inner}" if inner else "ponder.params"
        raise

    thinking = getattr(instance, "thinking_budget", None)
    max_tokens = request.max_completion_tokens or request.max_tokens
    if max_tokens is None:
        # Completion tokens include thinking (as in OpenAI's max_completion_tokens),
        # so the default leaves the answer its full share on top of the thinking.
        max_tokens = settings.max_tokens_default + (thinking or 0)
    deadlines = [d for d in (opts.deadline_s, settings.request_timeout_s) if d]
    spend = [b for b in (opts.budget, route.max_spend if routed and route else None) if b]
    return Plan(
        strategy=name,
        params=params,
        instance=instance,
        budget=Budget(
            tokens=min(spend) if spend else opts.budget,
            deadline_s=min(deadlines) if deadlines else None,
        ),
        sampling=SamplingDefaults(
            max_tokens=max_tokens,
            temperature=request.temperature,
            top_p=request.top_p if request.top_p is not None else 1.0,
            seed=request.seed,
            stop=list(request.stop or []),
        ),
        messages=messages,
        thinking_budget=thinking,
        include_reasoning=opts.include_reasoning and settings.allow_reasoning,
        stream=request.stream,
        include_usage=bool(request.stream_options and request.stream_options.include_usage),
        task_class=route.task_class if route is not None else "general",
        route=route,
        tier=_tier(request, route, instance, tiers),
        deferred=deferred,
        prompt=request_text(messages) if route is not None else "",
        verifier=request_verifier(request, route),
    )


# --------------------------------------------------------------------------- responses


def error_result(exc: PonderError) -> ErrorResult:
    return ErrorResult(status=exc.status, body=exc.to_openai(), headers=exc.headers())


def internal_error(exc: BaseException) -> ErrorResult:
    logger.exception("unexpected error while handling a request")
    detail = f"{type(exc).__name__}: {exc}"[:300]
    return ErrorResult(
        status=500,
        body={
            "error": {
                "message": f"internal error while running the request ({detail}); "
                "the server is still up: retry, and report it if it persists",
                "type": "server_error",
                "param": None,
                "code": "internal_error",
            }
        },
    )


def _openai_finish(truncated: bool) -> OpenAIFinishReason:
    return "length" if truncated else "stop"


async def _aclose(it: AsyncIterator[Any]) -> None:
    # Backends' stream() are usually async generators; closing one runs its cleanup.
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


def ponder_headers(completion: ChatCompletion) -> dict[str, str]:
    """The ``x-ponder-*`` response headers of a finished completion."""
    info = completion.ponder
    reasoning = int(completion.usage["completion_tokens_details"]["reasoning_tokens"])
    headers = {
        "x-ponder-request-id": completion.id,
        "x-ponder-class": info.task_class,
        "x-ponder-strategy": info.strategy,
        "x-ponder-thinking-budget": str(info.thinking_budget or 0),
        "x-ponder-reasoning-tokens": str(reasoning),
        "x-ponder-output-tokens": str(int(completion.usage["completion_tokens"]) - reasoning),
        "x-ponder-latency-ms": str(round(info.latency_s * 1000)),
        "x-ponder-truncated": "true" if info.truncated else "false",
    }
    if info.cost_usd is not None:
        headers["x-ponder-cost-usd"] = f"{info.cost_usd:.6f}"
    if info.tier is not None:
        headers["x-ponder-tier"] = info.tier
    if info.job is not None:
        headers["x-ponder-job-id"] = info.job.id
    return headers


def _sse(payload: str) -> str:
    return f"data: {payload}\n\n"


def _pieces(text: str, size: int = 256) -> list[str]:
    """A finished answer as content deltas of at most ``size`` characters."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def _final_choice(run: _Run, truncated: bool) -> ChunkChoice:
    if run.refused is not None:
        return ChunkChoice(
            delta=ChunkDelta(refusal=refusal_message(run.refused)), finish_reason="content_filter"
        )
    return ChunkChoice(finish_reason=_openai_finish(truncated))


def _guardrail_record(run: _Run) -> dict[str, Any]:
    """The ledger row's record of what the guardrails did (no leaked text)."""
    record: dict[str, Any] = summarize(run.findings, run.refused)
    if run.plan.wrapped:
        record["wrapped"] = run.plan.wrapped
    return {"guardrails": record} if record else {}


class _Shield:
    """A stream's output guardrails: answer and (when returned) reasoning scanned apart."""

    def __init__(self, p: Plan) -> None:
        active = p.scanner is not None and p.scanner.active
        self.text: StreamScan | None = p.scanner.stream() if active else None
        self.include_reasoning = p.include_reasoning
        self.reasoning: StreamScan | None = (
            p.scanner.stream() if active and p.include_reasoning else None
        )
        self._reasoning_closed = False

    @property
    def refused(self) -> Finding | None:
        return next((s.refused for s in (self.text, self.reasoning) if s and s.refused), None)

    @property
    def findings(self) -> list[Finding]:
        return [f for s in (self.text, self.reasoning) if s for f in s.findings]

    def piece(self, text: str, reasoning: str) -> ChunkDelta | None:
        if not self.include_reasoning:
            reasoning = ""
        if self.reasoning is not None and reasoning:
            reasoning = self.reasoning.feed(reasoning)
        if text and self.reasoning is not None and not self._reasoning_closed:
            # The thought is over once the answer starts: send what it held back first.
            reasoning += self.reasoning.close()
            self._reasoning_closed = True
        if self.text is not None and text:
            text = self.text.feed(text)
        return self._delta(text, reasoning)

    def flush(self) -> ChunkDelta | None:
        if self.refused is not None:
            return None
        text = self.text.close() if self.text is not None else ""
        reasoning = ""
        if self.reasoning is not None and not self._reasoning_closed:
            reasoning = self.reasoning.close()
        return self._delta(text, reasoning)

    def _delta(self, text: str, reasoning: str) -> ChunkDelta | None:
        if self.refused is not None or not (text or reasoning):
            return None
        return ChunkDelta(content=text or None, reasoning_content=reasoning or None)


def _dearest(prices: Sequence[Price]) -> Price:
    """Rates at least those of every price in ``prices`` (a bound for any mix of them)."""
    if len(prices) == 1:
        return prices[0]
    return Price(
        input=max(x.input for x in prices),
        output=max(x.output for x in prices),
        cached_input=max(x.cached_input_rate for x in prices),
        reasoning=max(x.reasoning_rate for x in prices),
        gpu_second=max(x.gpu_second for x in prices),
    )


class _TierCalls:
    """Another model tier as a run's strategy sees it (``RunContext.tiers``): its calls
    are admitted against, and accounted in, the run's one reservation (``QuotaGuard``)."""

    def __init__(self, guard: QuotaGuard, tier: str, inner: Backend) -> None:
        self.guard = guard
        self.tier = tier
        self.inner = inner
        self.name = inner.name
        self.capabilities = inner.capabilities

    async def generate(self, req: GenRequest) -> list[Generation]:
        return await self.guard.generate_via(self.inner, req, tier=self.tier)

    async def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        # Strategies call other tiers whole; a stream here is one finished delta.
        (gen,) = await self.generate(req.model_copy(update={"n": 1}))
        yield Delta(
            text=gen.text, reasoning=gen.reasoning, finish_reason=gen.finish_reason, usage=gen.usage
        )


def _async_body(body: Any) -> dict[str, Any]:
    """The request as a job that runs its full plan: not streamed, latency ``async``."""
    if isinstance(body, ChatCompletionRequest):
        data = body.model_dump(mode="json", exclude_unset=True)
    else:
        data = copy.deepcopy(dict(body))
    data["stream"] = False
    data.pop("stream_options", None)
    data["ponder"] = {**(data.get("ponder") or {}), "latency": "async"}
    return data


def _quota_error(refusal: Refusal) -> QuotaExceeded:
    lim = refusal.limit
    return QuotaExceeded(
        refusal.message(),
        limit={
            "scope": lim.scope,
            "subject": refusal.subject,
            "metric": lim.metric,
            "window": lim.window,
            "limit": lim.limit,
        },
        usage={"used": refusal.used, "reserved": refusal.reserved, "requested": refusal.requested},
        resets_at=None if lim.window == "request" else refusal.resets_at,
        retry_after_s=None if lim.window == "request" else refusal.retry_after_s(),
        code="rate_limit_exceeded" if lim.window == "minute" else None,
    )


@dataclass
class _Run:
    """One admitted request on its way through run -> settle -> ledger -> metrics."""

    id: str
    caller: Caller
    plan: Plan
    demand: Demand
    reservation: Reservation | None
    guard: QuotaGuard
    started: float = field(default_factory=time.monotonic)
    settled: bool = False
    cost_micro: int = 0
    # The strategy's verifier's judgement of the answer, when it made one.
    verdict: str | None = None
    # A queued job's callback: it runs inside the settlement transaction with the
    # response (``also`` binds it), so the job's result commits with its ledger row.
    on_settle: Callable[[Any, ChatCompletion | ErrorResult], None] | None = None
    also: Callable[[Any], None] | None = None
    # What the output guardrails found (redacted, or refused when ``refused`` is set).
    findings: list[Finding] = field(default_factory=list)
    refused: Finding | None = None
    # continue_async: the request (body, headers) whose full plan is queued as a job
    # once the fast answer is ready, and that job (or why it could not be queued).
    continuation: tuple[Any, Mapping[str, str] | None] | None = None
    job: ContinuedJob | None = None
    job_error: str | None = None

    @property
    def tier(self) -> str:
        return self.plan.tier or str(self.guard.tier)


def _stream_headers(run: _Run) -> dict[str, str]:
    """What a stream's response headers say about its plan (sent before any chunk)."""
    p = run.plan
    return {
        "x-ponder-request-id": run.id,
        "x-ponder-class": p.task_class,
        "x-ponder-strategy": p.strategy,
        "x-ponder-thinking-budget": str(p.thinking_budget or 0),
        "x-ponder-tier": run.tier,
    }


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
        # What built the tiers (a ponder.backends.tiers.Tiers), closed with the app.
        self.tier_pool: Any = None
        self.ponder = Ponder(backend)
        self.created = int(time.time())

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

    async def aclose(self) -> None:
        """Close the tiers' backends other than ``backend`` (its owner closes that one)."""
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

    # ---- admission: auth, scopes, caps, reservation

    async def _blocking(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        if self.store is None or self.store.dialect == "sqlite":
            # A SQLite transaction of this gateway takes tens of microseconds (WAL, no
            # fsync per commit): handing it to a worker thread and back cost ~0.6 ms of
            # CPU per hop, several times the call, and three hops a request.
            return fn(*args, **kwargs)
        # PostgreSQL calls wait on network round trips: keep the loop free meanwhile.
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def authenticate(self, headers: Mapping[str, str] | None) -> Caller:
        scopes = ANONYMOUS_SCOPES if self.settings.allow_reasoning else frozenset({"strategies"})
        return await self._blocking(self.auth.authenticate, headers, anonymous_scopes=scopes)

    async def _caller_and_limits(
        self, headers: Mapping[str, str] | None
    ) -> tuple[Caller, list[Limit] | None]:
        """authenticate() and the quota limits in one worker-thread call: a chat request
        needs both, and each hop to a thread costs the loop a wake-up."""
        scopes = ANONYMOUS_SCOPES if self.settings.allow_reasoning else frozenset({"strategies"})

        def both() -> tuple[Caller, list[Limit] | None]:
            caller = self.auth.authenticate(headers, anonymous_scopes=scopes)
            return caller, None if self.store is None else self.store.limits()

        return await self._blocking(both)

    def _check_scopes(self, caller: Caller, request: ChatCompletionRequest) -> None:
        opts = request.ponder
        if (opts.strategy or opts.params) and not caller.may("strategies"):
            raise Forbidden(
                f"key {caller.label} may not choose strategies (ponder.strategy / ponder.params); "
                "drop them and use reasoning_effort, or ask an admin for the 'strategies' scope",
                param="ponder.strategy" if opts.strategy else "ponder.params",
            )

    def _reach(self, p: Plan) -> list[str]:
        """The tiers a run may call: its own, and a cascade's stronger tier."""
        tier = p.tier or self.tier
        strong = getattr(p.instance, "strong_tier", None)
        extra = [strong] if isinstance(strong, str) and strong in self.tiers else []
        return [tier, *(t for t in extra if t != tier)]

    async def _bound(
        self, p: Plan, caller: Caller, limits: list[Limit] | None = None
    ) -> tuple[Plan, Demand]:
        """The plan's worst case, after clipping it to the caller's per-request caps."""
        caps: dict[str, int] = {}
        if self.store is not None:
            if limits is None:
                limits = await self._blocking(self.store.limits)
            for lim in applicable(limits, caller.subjects()):
                if lim.window == "request":
                    caps[lim.metric] = min(caps.get(lim.metric, lim.limit), lim.limit)
        samples = max(int(getattr(p.instance, "n", 1) or 1), 1)
        calls = max(int(getattr(p.instance, "max_calls", 1) or 1), 1)
        reach = self._reach(p)
        prompt = max(estimate_prompt_tokens(self.tiers[t], p.messages) for t in reach) * calls
        gen = p.budget.tokens if p.budget.tokens is not None else samples * p.sampling.max_tokens
        # The cap that last lowered the generated-token budget, if any.
        clipped_by: str | None = None
        deadline = p.budget.deadline_s

        cap = caps.get("reasoning_tokens")
        if cap is not None and p.thinking_budget and p.thinking_budget * samples > cap:
            per_sample = cap // samples
            params = {**p.params, "thinking_budget": per_sample}
            p = dataclasses.replace(
                p,
                params=params,
                instance=_get_strategy(p.strategy, **params),
                thinking_budget=per_sample,
            )
        cap = caps.get("tokens")
        if cap is not None and prompt + gen > cap:
            gen, clipped_by = cap - prompt, "tokens"
        cap = caps.get("cost")
        # Any tier the run may call can be the one that spends: bound by the dearest rates.
        price = _dearest([self.price_of(t) for t in reach])
        if cap is not None:
            token_rates = price.input or price.output or price.reasoning_rate
            if price.gpu_second > 0 and deadline is not None:
                gpu_allow = cap // 2 if token_rates else cap
                deadline = min(deadline, gpu_allow / (price.gpu_second * MICRO))
            gpu_worst = math.ceil((deadline or 0) * price.gpu_second * MICRO)
            afford = price.tokens_for_micro(cap - gpu_worst, prompt)
            if afford is not None and afford < gen:
                gen, clipped_by = afford, "cost"
        if clipped_by is not None and gen < 1:
            raise QuotaExceeded(
                f"the per-request {clipped_by} cap ({caps[clipped_by]}) leaves no room to "
                f"generate after the prompt (about {prompt} tokens); shorten the prompt or "
                "ask an admin to raise the cap",
                limit={"metric": clipped_by, "window": "request", "limit": caps[clipped_by]},
                usage={"used": 0, "reserved": 0, "requested": prompt},
                resets_at=None,
                retry_after_s=None,
            )
        if clipped_by is not None or deadline != p.budget.deadline_s:
            tokens = gen if clipped_by is not None else p.budget.tokens
            p = dataclasses.replace(p, budget=Budget(tokens=tokens, deadline_s=deadline))
        thinking = p.thinking_budget
        demand = Demand(
            requests=1,
            tokens=prompt + gen,
            reasoning_tokens=min(gen, thinking * samples) if thinking else 0,
            cost=price.worst_case_micro(prompt, gen, deadline or 0.0),
        )
        return p, demand

    async def _reserve(
        self, caller: Caller, demand: Demand, p: Plan, limits: list[Limit] | None = None
    ) -> Reservation | None:
        if self.store is None:
            return None
        ttl = (p.budget.deadline_s or self.settings.request_timeout_s) + 60.0
        result = await self._blocking(
            self.store.reserve, caller.subjects(), demand, ttl_s=ttl, limits=limits
        )
        if isinstance(result, Refusal):
            raise _quota_error(result)
        return result

    # ---- POST /v1/chat/completions

    async def chat(
        self,
        body: Any,
        headers: Mapping[str, str] | None = None,
        *,
        run_as: Caller | None = None,
        request_id: str | None = None,
        on_settle: Callable[[Any, ChatCompletion | ErrorResult], None] | None = None,
    ) -> ChatCompletion | StreamResult | ErrorResult:
        """Handle a chat completion: ``body`` is a decoded JSON body or a parsed request.

        Queued jobs (``ponder.server.jobs``) pass ``run_as`` (the caller who queued it,
        instead of authenticating ``headers``), ``request_id`` (the ledger row's id) and
        ``on_settle(conn, response)``, called in the settlement transaction.
        """
        caller = Caller()
        limits: list[Limit] | None = None
        try:
            if run_as is not None:
                caller = run_as
            else:
                caller, limits = await self._caller_and_limits(headers)
            request = body if isinstance(body, ChatCompletionRequest) else parse_request(body)
            self._check_scopes(caller, request)
            p = plan(
                request,
                self.settings,
                router=self.router,
                caller=caller,
                headers=headers,
                tiers=self.tier_models,
            )
            if p.tier is None:
                p.tier = self.tier
            p = self._guard_input(p, request)
            # Reasoning is hidden from callers without the scope (as with allow_reasoning).
            p.include_reasoning = p.include_reasoning and caller.may("reasoning")
            p, demand = await self._bound(p, caller, limits)
            reservation = await self._reserve(caller, demand, p, limits)
        except PonderError as exc:
            self.metrics.refuse(caller.label, exc.code or exc.type)
            return error_result(exc)
        except Exception as exc:
            return internal_error(exc)
        # From here the request holds a reservation: every path below settles it.
        allowance = demand.tokens if reservation is not None and reservation.items else None
        tier = p.tier or self.tier
        run = _Run(
            id=request_id or completion_id(),
            caller=caller,
            plan=p,
            demand=demand,
            reservation=reservation,
            guard=QuotaGuard(self.tiers[tier], allowance=allowance, tier=tier),
            on_settle=on_settle,
            continuation=(body, headers) if p.deferred is not None else None,
        )
        if p.stream:
            return await self._start_stream(run)
        try:
            outcome = await Ponder(run.guard).asolve(
                Problem(messages=p.messages),
                p.instance,
                budget=p.budget,
                max_tokens=p.sampling.max_tokens,
                temperature=p.sampling.temperature,
                top_p=p.sampling.top_p,
                seed=p.sampling.seed,
                stop=p.sampling.stop,
                tiers=self._run_tiers(run),
                verifier=build_verifier(p.verifier, run.guard) if p.verifier else None,
            )
        except Exception as exc:
            return await self._fail(run, exc)
        run.verdict = outcome_verdict(outcome)
        p.verification = verdict_of(outcome, p.verifier) if p.verifier else None
        outcome = self._guard_outcome(run, outcome)
        await self._continue_async(run)
        if on_settle is not None:
            run.also = lambda conn: on_settle(conn, self._completion(run, outcome))
        try:
            await self._finish(run, status="ok", http_status=200, truncated=outcome.truncated)
        except PonderError as exc:
            return error_result(exc)
        return self._completion(run, outcome)

    def _completion(self, run: _Run, outcome: Outcome) -> ChatCompletion:
        p = run.plan
        return ChatCompletion(
            id=run.id,
            model=self._model(run),
            choices=[
                Choice(
                    message=AssistantMessage(
                        content=outcome.answer,
                        reasoning_content=outcome.reasoning if p.include_reasoning else None,
                        refusal=refusal_message(run.refused) if run.refused else None,
                    ),
                    finish_reason="content_filter"
                    if run.refused
                    else _openai_finish(outcome.truncated),
                )
            ],
            usage=outcome.usage.to_openai(),
            ponder=PonderInfo(
                strategy=outcome.strategy,
                task_class=p.task_class,
                params=p.params,
                budget=p.budget.tokens,
                thinking_budget=p.thinking_budget,
                truncated=outcome.truncated,
                stop_reason=outcome.stop_reason,
                calls=outcome.calls,
                latency_s=round(outcome.latency_s, 4),
                n_candidates=len(outcome.candidates),
                cost_usd=to_usd(run.cost_micro),
                tier=run.tier,
                tier_usage=self._tier_usage(run),
                job=run.job,
                verification=p.verification,
                tree=(
                    outcome.tree.model_dump(exclude_defaults=True)
                    if p.include_reasoning and outcome.tree is not None
                    else None
                ),
            ),
        )

    # ---- model tiers and continue_async

    def _model(self, run: _Run) -> str:
        """The model a response names: the one behind the run's tier."""
        return self.tier_models.get(run.tier, self.backend.name)

    def _run_tiers(self, run: _Run) -> dict[str, Backend]:
        """Every tier, for the run's strategy: each call draws on the run's reservation."""
        return {name: _TierCalls(run.guard, name, backend) for name, backend in self.tiers.items()}

    async def _continue_async(self, run: _Run) -> None:
        """Queue the full plan of a fast interactive answer as an async job.

        A failure here (no job queue, too many pending jobs, the store down) never
        costs the caller the fast answer: it is recorded in ``run.job_error``.
        """
        if run.continuation is None or run.refused is not None:
            return
        deferred = run.plan.deferred or {}
        body, headers = run.continuation
        run.continuation = None
        queue = self.jobs
        if queue is None or getattr(queue, "queue", None) is None:
            run.job_error = (
                "the full plan could not continue as a job: this gateway keeps no job queue "
                "(it needs the ledger: server.ledger = true)"
            )
            return
        try:
            job = await queue.enqueue(run.caller, _async_body(body), headers)
        except PonderError as exc:
            logger.warning("request %s: could not queue its full plan: %s", run.id, exc)
            run.job_error = f"the full plan could not continue as a job: {exc}"
            return
        run.job = ContinuedJob(
            id=job.id,
            url=f"/v1/jobs/{job.id}",
            strategy=str(deferred.get("strategy", "")),
            thinking_budget=deferred.get("thinking_budget") or None,
        )

    # ---- settlement: ledger row, counters, metrics, alerts

    def _row(
        self, run: _Run, *, status: str, http_status: int, truncated: bool, error_code: str | None
    ) -> tuple[LedgerRow, Demand]:
        p, usage, guard = run.plan, run.guard.usage, run.guard
        # Each tier's tokens and engine time at that tier's price.
        run.cost_micro = sum(self._tier_costs(run).values())
        ttft = guard.ttft_s
        row = LedgerRow(
            id=run.id,
            task_class=p.task_class,
            strategy=p.strategy,
            plan={
                "params": p.params,
                "budget": p.budget.tokens,
                "deadline_s": p.budget.deadline_s,
                "thinking_budget": p.thinking_budget,
                "max_tokens": p.sampling.max_tokens,
                "stream": p.stream,
                "reserved": run.demand.as_dict(),
                **_guardrail_record(run),
                **self._tier_record(run),
            },
            status=status,
            http_status=http_status,
            key_id=run.caller.key_id,
            user=run.caller.user,
            team=run.caller.team,
            session=run.caller.session,
            tier=run.tier,
            model=self._model(run),
            error_code=error_code or ("content_filter" if run.refused else None),
            input_tokens=usage.input,
            cached_input_tokens=usage.cached_input,
            reasoning_tokens=usage.reasoning,
            output_tokens=usage.output,
            estimated=usage.input_estimated or usage.reasoning_estimated or usage.output_estimated,
            cost_micro=run.cost_micro,
            engine_s=guard.engine_s,
            latency_ms=(time.monotonic() - run.started) * 1000,
            ttft_ms=None if ttft is None else ttft * 1000,
            truncated=truncated,
            verdict=run.verdict,
            features=self._ledger_features(p),
        )
        actual = Demand(
            requests=1,
            tokens=usage.total_tokens,
            reasoning_tokens=usage.reasoning,
            cost=run.cost_micro,
        )
        return row, actual

    def _tier_costs(self, run: _Run) -> dict[str, int]:
        """Micro-dollars per tier the run called (its own tier even when it called none)."""
        guard = run.guard
        used = {run.tier, *guard.tier_usage, *guard.tier_engine_s}
        return {
            t: self.price_of(t).cost_micro(
                guard.tier_usage.get(t, Usage()), guard.tier_engine_s.get(t, 0.0)
            )
            for t in sorted(used)
        }

    def _tier_usage(self, run: _Run) -> dict[str, Any] | None:
        """Per tier usage and cost, when a run called more than one tier (else None)."""
        guard = run.guard
        if len(set(guard.tier_usage) | {run.tier}) < 2:
            return None
        costs = self._tier_costs(run)
        return {
            t: {**u.to_openai(), "cost_usd": to_usd(costs.get(t, 0))}
            for t, u in guard.tier_usage.items()
        }

    def _tier_record(self, run: _Run) -> dict[str, Any]:
        """What the ledger row's plan adds about tiers and a continued job."""
        record: dict[str, Any] = {}
        by_tier = self._tier_usage(run)
        if by_tier is not None:
            record["tiers"] = by_tier
        if run.job is not None:
            record["continued_as"] = run.job.model_dump()
        elif run.job_error is not None:
            record["continue_error"] = run.job_error
        return record

    def _ledger_features(self, p: Plan) -> dict[str, Any] | None:
        """The router's view of the request, for ``ponder route train --from-ledger``.

        Never the prompt text unless the operator set ``router.record_prompts``.
        """
        route = p.route
        if route is None or self.router is None:
            return None
        data: dict[str, Any] = {
            "v": 1,
            "features": route.features.as_dict(),
            "score": route.score,
            "scorer": route.scorer,
            "bucket": route.bucket,
        }
        if self.router.settings.record_prompts:
            data["text"] = p.prompt
        if p.verification is not None:
            data["verification"] = p.verification
        return data

    def _settle_sync(self, run: _Run, row: LedgerRow, actual: Demand) -> list[Crossing]:
        if self.store is None:
            return []
        if run.reservation is None:
            self.store.insert_row(row, also=run.also)
            return []
        return self.store.settle(
            run.reservation, actual, row, thresholds=self.quota_thresholds, also=run.also
        )

    def _observe(self, run: _Run, row: LedgerRow, crossings: list[Crossing]) -> None:
        run.settled = True
        p, usage = run.plan, run.guard.usage
        self._count_guardrails(run)
        costs = self._tier_costs(run)
        by_tier = None
        if len(costs) > 1:
            by_tier = {
                t: (run.guard.tier_usage.get(t, Usage()), to_usd(c)) for t, c in costs.items()
            }
        self.metrics.observe(
            task_class=p.task_class,
            tier=run.tier,
            strategy=p.strategy,
            caller=run.caller.label,
            status=row.status,
            usage=usage,
            cost_usd=to_usd(row.cost_micro),
            latency_s=row.latency_ms / 1000,
            ttft_s=None if row.ttft_ms is None else row.ttft_ms / 1000,
            by_tier=by_tier,
        )
        if row.status == "ok":
            self.alerts.request_finished(
                task_class=p.task_class,
                reasoning_tokens=usage.reasoning,
                request_id=run.id,
                caller=run.caller.label,
            )
        for c in crossings:
            self.alerts.quota_crossed(
                scope=c.limit.scope,
                subject=c.subject,
                metric=c.limit.metric,
                window=c.limit.window,
                limit=c.limit.limit,
                used=c.used,
                threshold=c.threshold,
            )
        if self.otel is not None:
            self.otel.record(row, usage)

    async def _finish(
        self,
        run: _Run,
        *,
        status: str,
        http_status: int,
        truncated: bool,
        error_code: str | None = None,
    ) -> None:
        """Settle and write the ledger row (committed before the caller hears back)."""
        row, actual = self._row(
            run, status=status, http_status=http_status, truncated=truncated, error_code=error_code
        )
        crossings = await self._blocking(self._settle_sync, run, row, actual)
        self._observe(run, row, crossings)

    def _finish_now(self, run: _Run, *, status: str) -> None:
        """Blocking settlement for a stream the client abandoned (no await is safe there)."""
        if run.settled:
            return
        row, actual = self._row(
            run, status=status, http_status=499, truncated=True, error_code="client_closed"
        )
        try:
            crossings = self._settle_sync(run, row, actual)
        except PonderError:
            logger.exception("could not settle abandoned request %s", run.id)
            run.settled = True
            return
        self._observe(run, row, crossings)

    async def _fail(self, run: _Run, exc: BaseException) -> ErrorResult:
        """A request that failed while running: settle what it spent, then report the error."""
        result = error_result(exc) if isinstance(exc, PonderError) else internal_error(exc)
        if run.on_settle is not None:
            hook = run.on_settle
            run.also = lambda conn: hook(conn, result)
        code = result.body["error"].get("code")
        if result.status in (502, 503, 504):
            self.alerts.upstream_error(run.tier, str(result.body["error"]["message"])[:200])
        try:
            await self._finish(
                run,
                status="error",
                http_status=result.status,
                truncated=True,
                error_code=str(code) if code else None,
            )
        except PonderError as store_exc:
            return error_result(store_exc)
        return result

    # ---- streaming (direct / cot: one generation, streamed as decoded)

    async def _start_stream(self, run: _Run) -> StreamResult | ErrorResult:
        p = run.plan
        if p.strategy not in STREAMABLE_STRATEGIES:
            return self._start_progress_stream(run)
        meter = MeteredBackend(run.guard, p.budget)
        ctx = RunContext(backend=meter, sampling=p.sampling)
        thinking = None
        if p.thinking_budget:
            min_thinking = getattr(p.instance, "min_thinking", 0)
            thinking = ThinkingConfig(
                budget_tokens=p.thinking_budget, min_tokens=min(min_thinking, p.thinking_budget)
            )
        deltas: AsyncIterator[Delta] | None = None
        first: Delta | None = None
        try:
            req = ctx.request(
                Problem(messages=p.messages),
                temperature=getattr(p.instance, "temperature", 0.0),
                thinking=thinking,
            )
            deltas = meter.stream(req)
            # Pull the first delta before answering 200, so errors that happen up
            # front (context overflow, engine down) still get their HTTP status.
            first = await anext(deltas)
        except (StopAsyncIteration, BudgetExhausted):
            # Anytime semantics: a zero budget gives an empty, truncated answer.
            pass
        except Exception as exc:
            if deltas is not None:
                await _aclose(deltas)
            return await self._fail(run, exc)
        assert deltas is not None
        return StreamResult(
            events=self._events(run, meter, deltas, first), headers=_stream_headers(run)
        )

    async def _events(
        self,
        run: _Run,
        meter: MeteredBackend,
        deltas: AsyncIterator[Delta],
        first: Delta | None,
    ) -> AsyncIterator[str]:
        p = run.plan
        cid, created, model = run.id, int(time.time()), self._model(run)

        def chunk(choices: list[ChunkChoice], **extra: Any) -> str:
            c = ChatCompletionChunk(id=cid, created=created, model=model, choices=choices, **extra)
            return _sse(c.model_dump_json(exclude_none=True))

        try:
            yield chunk([ChunkChoice(delta=ChunkDelta(role="assistant", content=""))])
            engine_finish: str | None = None
            # Output guardrails: text leaves only once no later scan could redact it.
            shield = _Shield(p)
            try:
                delta = first
                while delta is not None:
                    piece = shield.piece(delta.text, delta.reasoning)
                    if piece is not None:
                        yield chunk([ChunkChoice(delta=piece)])
                    if shield.refused is not None:
                        break  # stop decoding: nothing more of this answer will be sent
                    engine_finish = delta.finish_reason or engine_finish
                    delta = await anext(deltas, None)
                piece = shield.flush()
                if piece is not None:
                    yield chunk([ChunkChoice(delta=piece)])
                run.findings, run.refused = shield.findings, shield.refused
            except Exception as exc:
                await _aclose(deltas)
                failed = await self._fail(run, exc)
                yield _sse(json.dumps(failed.body))
                yield _sse("[DONE]")
                return
            await _aclose(deltas)

            truncated = meter.exhausted is not None or engine_finish not in (None, "stop")
            await self._continue_async(run)
            try:
                await self._finish(run, status="ok", http_status=200, truncated=truncated)
            except PonderError as exc:
                yield _sse(json.dumps(exc.to_openai()))
                yield _sse("[DONE]")
                return
            info = PonderInfo(
                strategy=p.strategy,
                task_class=p.task_class,
                params=p.params,
                budget=p.budget.tokens,
                thinking_budget=p.thinking_budget,
                truncated=truncated,
                stop_reason=meter.exhausted or engine_finish,
                calls=meter.calls,
                latency_s=round(time.monotonic() - meter.started, 4),
                n_candidates=1 if first is not None else 0,
                cost_usd=to_usd(run.cost_micro),
                tier=run.tier,
                job=run.job,
            )
            yield chunk([_final_choice(run, truncated)], ponder=info)
            if p.include_usage:
                yield chunk([], usage=meter.usage.to_openai())
            yield _sse("[DONE]")
        finally:
            if not run.settled:
                # The client went away mid-stream: what was generated is still spent.
                await _aclose(deltas)
                self._finish_now(run, status="cancelled")

    # ---- guardrails (ponder.guardrails): wrap untrusted input, scan what goes out

    def _guard_input(self, p: Plan, request: ChatCompletionRequest) -> Plan:
        docs = [
            Document(content=d.content, id=d.id or "", title=d.title)
            for d in request.ponder.documents
        ]
        wrapped = self.guardrails.wrap(p.messages, docs)
        return dataclasses.replace(
            p,
            messages=wrapped.messages,
            wrapped=wrapped.wrapped,
            scanner=self.guardrails.scanner(wrapped.protected),
        )

    def _guard_outcome(self, run: _Run, outcome: Outcome) -> Outcome:
        """The outcome with leaks redacted, or emptied when the policy refuses it."""
        p, scanner = run.plan, run.plan.scanner
        if scanner is None or not scanner.active:
            return outcome
        answer = scanner.scan(outcome.answer)
        findings, refused = list(answer.findings), answer.refused
        update: dict[str, Any] = {"answer": answer.text}
        # Reasoning and the search tree are scanned only when they are returned.
        if p.include_reasoning:
            reasoning = scanner.scan(outcome.reasoning)
            findings += reasoning.findings
            refused = refused or reasoning.refused
            update["reasoning"] = reasoning.text
            if outcome.tree is not None:
                tree, tree_findings, tree_refused = scanner.scan_tree(outcome.tree)
                findings += tree_findings
                refused = refused or tree_refused
                update["tree"] = tree
        if refused is not None:
            update = {"answer": "", "reasoning": "", "tree": None}
        run.findings, run.refused = findings, refused
        return outcome.model_copy(update=update) if findings else outcome

    def _count_guardrails(self, run: _Run) -> None:
        for source, count in run.plan.wrapped.items():
            self.metrics.guardrail(source, "wrapped", count)
        for f in run.findings:
            self.metrics.guardrail(f.kind, "refused" if f is run.refused else "redacted")

    # ---- streaming a multi-sample strategy: progress events, then the chosen answer

    def _start_progress_stream(self, run: _Run) -> StreamResult:
        return StreamResult(events=self._progress_events(run), headers=_stream_headers(run))

    async def _progress_events(self, run: _Run) -> AsyncIterator[str]:
        p = run.plan
        cid, created, model = run.id, int(time.time()), self._model(run)
        meter = MeteredBackend(run.guard, p.budget)
        updates: asyncio.Queue[Progress] = asyncio.Queue()
        tracker = ProgressTracker(p.instance, meter, updates.put_nowait)
        ctx = RunContext(
            backend=meter,
            tracer=Tracer(tracker),
            sampling=p.sampling,
            tiers=self._run_tiers(run),
            verifier=build_verifier(p.verifier, run.guard) if p.verifier else None,
        )
        task: asyncio.Task[Outcome] | None = None

        def chunk(choices: list[ChunkChoice], **extra: Any) -> str:
            c = ChatCompletionChunk(id=cid, created=created, model=model, choices=choices, **extra)
            return _sse(c.model_dump_json(exclude_none=True))

        def progress(snapshot: Progress) -> str:
            info = PonderProgress(progress=StreamProgress(**dataclasses.asdict(snapshot)))
            return chunk([ChunkChoice()], ponder=info)

        try:
            yield chunk([ChunkChoice(delta=ChunkDelta(role="assistant", content=""))])
            yield progress(tracker.snapshot())
            task = asyncio.create_task(p.instance.run(Problem(messages=p.messages), ctx))
            next_update: asyncio.Task[Progress] | None = None
            try:
                while True:
                    if next_update is None:
                        next_update = asyncio.ensure_future(updates.get())
                    done, _ = await asyncio.wait(
                        {task, next_update},
                        timeout=PROGRESS_HEARTBEAT_S,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if next_update in done:
                        yield progress(next_update.result())
                        next_update = None
                    elif task in done:
                        break
                    else:  # a heartbeat: still running (keeps proxies from timing out)
                        if tracker.phase == "started":
                            tracker.phase = "running"
                        yield progress(tracker.snapshot())
            finally:
                if next_update is not None:
                    next_update.cancel()
            while not updates.empty():
                yield progress(updates.get_nowait())
            try:
                outcome = task.result()
            except Exception as exc:
                failed = await self._fail(run, exc)
                yield _sse(json.dumps(failed.body))
                yield _sse("[DONE]")
                return
            run.verdict = outcome_verdict(outcome)
            p.verification = verdict_of(outcome, p.verifier) if p.verifier else None
            outcome = self._guard_outcome(run, outcome)
            try:
                await self._finish(run, status="ok", http_status=200, truncated=outcome.truncated)
            except PonderError as exc:
                yield _sse(json.dumps(exc.to_openai()))
                yield _sse("[DONE]")
                return
            if outcome.reasoning and p.include_reasoning:
                yield chunk([ChunkChoice(delta=ChunkDelta(reasoning_content=outcome.reasoning))])
            for piece in _pieces(outcome.answer):
                yield chunk([ChunkChoice(delta=ChunkDelta(content=piece))])
            info = self._completion(run, outcome).ponder
            yield chunk([_final_choice(run, outcome.truncated)], ponder=info)
            if p.include_usage:
                yield chunk([], usage=outcome.usage.to_openai())
            yield _sse("[DONE]")
        finally:
            if task is not None and not task.done():
                # The client went away: stop the search; what it generated is still spent.
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            if not run.settled:
                self._finish_now(run, status="cancelled")

    # ---- admin: keys and quotas (admin scope required)

    async def require_admin(
        self,
        headers: Mapping[str, str] | None,
        *,
        needs: str = "the admin API",
        missing: str = "keys or quotas to manage",
    ) -> Store:
        """The store, for a caller with the admin scope (``needs``/``missing`` word the errors)."""
        if self.store is None:
            raise InvalidRequest(
                f"this gateway runs without a store (server.ledger = false): there are no {missing}"
            )
        caller = await self.authenticate(headers)
        if caller.key_id is None or not caller.may("admin"):
            raise Forbidden(
                f"{needs} needs a key with the 'admin' scope; create one with "
                "`ponder keys create --user NAME --scope admin`"
            )
        return self.store

    @staticmethod
    def _validated(model: type[_M], body: Any) -> _M:
        if not isinstance(body, dict):
            raise InvalidRequest(f"request body must be a JSON object, got {type(body).__name__}")
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            raise InvalidRequest(
                "invalid request: " + "; ".join(_describe(e) for e in errors[:3]),
                param=_loc(errors[0]["loc"]) or None,
            ) from exc

    async def admin_create_key(
        self, body: Any, headers: Mapping[str, str] | None
    ) -> dict[str, Any] | ErrorResult:
        try:
            store = await self.require_admin(headers)
            req = self._validated(KeyCreate, body)
            record, secret = await self._blocking(
                store.create_key, req.user, team=req.team, scopes=req.scopes, name=req.name
            )
        except PonderError as exc:
            return error_result(exc)
        return {**record.public(), "key": secret}

    async def admin_list_keys(
        self, headers: Mapping[str, str] | None, *, include_revoked: bool = False
    ) -> dict[str, Any] | ErrorResult:
        try:
            store = await self.require_admin(headers)
            keys = await self._blocking(store.list_keys, include_revoked=include_revoked)
        except PonderError as exc:
            return error_result(exc)
        return {"object": "list", "data": [k.public() for k in keys]}

    async def admin_revoke_key(
        self, key_id: str, headers: Mapping[str, str] | None
    ) -> dict[str, Any] | ErrorResult:
        try:
            store = await self.require_admin(headers)
            if not await self._blocking(store.revoke_key, key_id):
                raise NotFound(
                    f"no active key with id {key_id!r}; list keys with GET /v1/admin/keys"
                )
        except PonderError as exc:
            return error_result(exc)
        return {"id": key_id, "revoked": True}

    async def admin_set_quota(
        self, body: Any, headers: Mapping[str, str] | None
    ) -> dict[str, Any] | ErrorResult:
        try:
            store = await self.require_admin(headers)
            q = self._validated(QuotaSet, body)
            if q.limit is None:
                removed = await self._blocking(
                    store.delete_limit, q.scope, q.subject, q.metric, q.window
                )
                return {**q.model_dump(), "removed": removed}
            await self._blocking(
                store.set_limit, Limit(q.scope, q.subject, q.metric, q.window, q.limit)
            )
        except PonderError as exc:
            return error_result(exc)
        return q.model_dump()

    async def admin_show_quota(
        self, headers: Mapping[str, str] | None, subjects: Mapping[Scope, str | None]
    ) -> dict[str, Any] | ErrorResult:
        try:
            store = await self.require_admin(headers)
            if any(subjects.values()):
                rows = await self._blocking(store.status, subjects)
                data = [quota_status_json(r) for r in rows]
            else:
                limits = await self._blocking(store.limits)
                data = [dataclasses.asdict(lim) for lim in limits]
        except PonderError as exc:
            return error_result(exc)
        return {"object": "list", "data": data}


def quota_status_json(q: QuotaStatus) -> dict[str, Any]:
    return {
        **dataclasses.asdict(q.limit),
        "counted_for": q.subject,
        "used": q.used,
        "reserved": q.reserved,
        "resets_at": None if q.limit.window == "request" else q.resets_at,
    }
