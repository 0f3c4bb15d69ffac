"""Planning: what one request will run (strategy, budget, sampling, tier), decided once.

:func:`plan` maps a validated request to a frozen :class:`Plan` or raises
:class:`InvalidRequest` for what cannot run. Later phases never mutate a plan;
they derive a new one with :func:`dataclasses.replace` (admission clips it to the
caller's caps, output guardrails wrap its messages).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ponder.config import ServerSettings
from ponder.errors import InvalidRequest, UnknownStrategy
from ponder.router.policy import PolicyError, RoutePlan, Router, request_text
from ponder.router.verification import request_verifier
from ponder.server.auth import Caller
from ponder.server.protocol import MAX_TOKENS, ChatCompletionRequest
from ponder.strategies import SamplingDefaults, Strategy, available_strategies, work_of
from ponder.strategies import get_strategy as _get_strategy
from ponder.strategies.base import streams_tokens
from ponder.strategies.search import DVTS, BeamSearch
from ponder.strategies.tree_search import MCTS, TreeOfThoughts
from ponder.tools import tool_call_constraint
from ponder.types import Budget, Capabilities, Message

__all__ = ["REASONING_EFFORT", "SERVER_ONLY_PARAMS", "Plan", "check_capabilities", "plan"]

# OpenAI's reasoning_effort -> (strategy, thinking budget in tokens).
REASONING_EFFORT: dict[str, tuple[str, int]] = {
    "none": ("direct", 0),
    "minimal": ("direct", 0),
    "low": ("cot", 256),
    "medium": ("cot", 1024),
    "high": ("cot", 4096),
}

# Strategy parameters that point at server resources (program_aided's SQLite
# database): never taken from a request.
SERVER_ONLY_PARAMS = frozenset({"database"})


# Strategies that grow an answer step by step: every step continues the partial
# assistant message, which the tier's backend must support (``continue_final``).
_CONTINUES_PARTIALS: tuple[type, ...] = (BeamSearch, DVTS, TreeOfThoughts, MCTS)


@dataclass(frozen=True)
class Plan:
    """What one request will run: strategy, budget and sampling (never mutated)."""

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
    # The router's decision, when a router planned this.
    route: RoutePlan | None = None
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
    # The verifier the request implies (ponder.router.verification), if any.
    verifier: Any = None
    # The latency class whose default deadline bounds the run ("interactive" / "async").
    latency: str = "interactive"
    # A shadow run (ponder.router.shadow): the id of the request it is the counterfactual of.
    shadow_of: str | None = None
    # ... and the candidate plan it runs (ponder.router.calibrate.CANDIDATE_PLANS).
    shadow_plan: str | None = None


def _accepts(cls: type | None, param: str) -> bool:
    if cls is None:
        return False
    if dataclasses.is_dataclass(cls):
        return param in {f.name for f in dataclasses.fields(cls)}
    try:
        return param in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def _latency(
    declared: str | None,
    headers: Mapping[str, str] | None,
    route: RoutePlan | None,
    default: str,
) -> str:
    """The request's latency class: declared > header > the router's class policy > default."""
    if declared is not None:
        return declared
    header = (headers or {}).get("x-ponder-latency")
    if header in ("interactive", "async"):
        return header
    if route is not None and route.latency in ("interactive", "async"):
        return route.latency
    return default


def _check_param_ints(params: Mapping[str, Any]) -> None:
    """Integers in ``ponder.params`` count samples, steps or tokens: bound them so the
    reservation (samples x tokens) fits the store's 64-bit counters."""
    for key, value in params.items():
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_TOKENS:
            raise InvalidRequest(
                f"ponder.params.{key}: {value} is out of range (at most {MAX_TOKENS})",
                param=f"ponder.params.{key}",
            )


def _messages(request: ChatCompletionRequest) -> list[Message]:
    if not request.messages:
        raise InvalidRequest(
            "messages must contain at least one message, e.g. "
            '[{"role": "user", "content": "What is 2+2?"}]',
            param="messages",
        )
    last_i = len(request.messages) - 1
    last = request.messages[last_i]
    if last.role not in ("user", "assistant", "tool"):
        raise InvalidRequest(
            f"the last message must come from the user (or be an assistant prefix, or a "
            f"tool result), got role {last.role!r}",
            param=f"messages[{last_i}].role",
        )
    # A tool result may be empty (the function returned nothing); a question may not.
    if last.role != "tool" and not (last.content or "").strip():
        raise InvalidRequest(
            "the last message has empty content; send the question as non-empty text",
            param=f"messages[{last_i}].content",
        )
    # "developer" is OpenAI's newer name for "system"; open models' chat templates
    # only know "system" (and some drop unknown roles silently).
    return [
        Message(
            role="system" if m.role == "developer" else m.role,
            content=m.content or "",
            tool_calls=m.core_tool_calls(),
            tool_call_id=m.tool_call_id,
            name=m.name,
        )
        for m in request.messages
    ]


# Strategies whose answer is one generation: a request's n > 1 samples n of them
# in one call (the engine batches them over the shared prompt).
_ONE_GENERATION = frozenset({"direct", "cot"})


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
    name: str,
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
    for reached in work_of(instance).tiers:
        if tiers is not None and reached not in tiers:
            raise InvalidRequest(
                f"{name}: strong_tier {reached!r} is not a tier of this gateway (tiers: {known})",
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
    default_latency: str = "interactive",
) -> Plan:
    """Map a request to what will run; raise :class:`InvalidRequest` for what cannot.

    With a ``router``, a request that chooses nothing itself (no ``ponder.strategy``,
    ``thinking``, ``reasoning_effort`` or ``ponder.thinking_budget``) runs the router's
    plan; every request gets the router's task class. ``tiers`` (tier name -> model)
    are the tiers a request may name; see :func:`_tier`. The run's deadline is its
    latency class's (``ponder.latency``, the ``x-ponder-latency`` header, the router's
    class policy, else ``default_latency``: queued jobs are "async"), shortened by
    ``ponder.deadline_s`` and ``server.request_timeout_s``.
    """
    opts = request.ponder
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
        if request.stream and not streams_tokens(registry.get(name)) and route.latency != "async":
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
    _check_param_ints(opts.params)
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

    if request.n > 1 and (name not in _ONE_GENERATION or request.stream):
        raise InvalidRequest(
            f"n={request.n} runs only with strategy direct or cot and without stream "
            f"(this request runs {name!r}{', streamed' if request.stream else ''}). To "
            f'sample several answers and return the best, send {{"ponder": {{"strategy": '
            f'"self_consistency", "params": {{"n": {request.n}}}}}}} (or best_of_n)',
            param="n",
        )
    tools = request.tool_specs()
    tool_choice = request.tool_choice_value()
    constraint = request.output_constraint()
    if constraint is None and tools:
        constraint = tool_call_constraint(tools, tool_choice, parallel=request.parallel_tool_calls)
    thinking = getattr(instance, "thinking_budget", None)
    max_tokens = request.max_completion_tokens or request.max_tokens
    if max_tokens is None:
        # Completion tokens include thinking (as in OpenAI's max_completion_tokens),
        # so the default leaves the answer its full share on top of the thinking.
        max_tokens = settings.max_tokens_default + (thinking or 0)
    latency = _latency(opts.latency, headers, route, default_latency)
    class_deadline = (
        settings.deadline_async_s if latency == "async" else settings.deadline_interactive_s
    )
    deadlines = [d for d in (opts.deadline_s, class_deadline, settings.request_timeout_s) if d]
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
            top_k=max(request.top_k or 0, 0),
            seed=request.seed,
            stop=list(request.stop or []),
            logprobs=request.logprobs,
            top_logprobs=request.top_logprobs or 0,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            logit_bias=request.logit_bias_ids(),
            tools=tools,
            tool_choice=tool_choice,
            constraint=constraint,
            choices=request.n,
        ),
        messages=messages,
        thinking_budget=thinking,
        include_reasoning=opts.include_reasoning and settings.allow_reasoning,
        stream=request.stream,
        include_usage=bool(request.stream_options and request.stream_options.include_usage),
        task_class=route.task_class if route is not None else "general",
        route=route,
        tier=_tier(request, route, name, instance, tiers),
        deferred=deferred,
        prompt=request_text(messages) if route is not None else "",
        verifier=request_verifier(request, route),
        latency=latency,
    )


def check_capabilities(p: Plan, capabilities: Capabilities) -> None:
    """Refuse, before anything is reserved, a plan its tier's backend cannot run."""
    if isinstance(p.instance, _CONTINUES_PARTIALS) and not capabilities.continue_final:
        raise InvalidRequest(
            f"strategy {p.strategy!r} continues partial answers step by step, which the "
            f"backend of tier {p.tier!r} does not support (no continuation of the final "
            "assistant message); use self_consistency, best_of_n or cot on this tier",
            param="ponder.strategy",
        )
