"""Framework-free logic of the gateway: parse, plan, run, build the response.

Nothing here imports FastAPI, so the library, the CLI and tests can call
:class:`Gateway` directly. Errors are values: every handler returns a response
model (or a :class:`StreamResult`) or an :class:`ErrorResult` whose body is an
OpenAI error object; an unexpected exception becomes a 500 error value and the
server stays up.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ponder.api import Ponder
from ponder.backends.base import Backend
from ponder.budget.metered import MeteredBackend
from ponder.config import ServerSettings
from ponder.errors import BudgetExhausted, InvalidRequest, PonderError, UnknownStrategy
from ponder.server.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    ChunkDelta,
    ModelCard,
    ModelList,
    OpenAIFinishReason,
    PonderInfo,
    PonderOptions,
    completion_id,
)
from ponder.strategies import RunContext, SamplingDefaults, Strategy, available_strategies
from ponder.strategies import get_strategy as _get_strategy
from ponder.types import Budget, Delta, Message, Outcome, Problem, ThinkingConfig

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
]

logger = logging.getLogger("ponder.server")

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
STREAMABLE_STRATEGIES = ("direct", "cot")


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


@dataclass
class ErrorResult:
    """An error as a value: HTTP status and OpenAI error body."""

    status: int
    body: dict[str, Any]


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


def plan(request: ChatCompletionRequest, settings: ServerSettings) -> Plan:
    """Map a request to what will run; raise :class:`InvalidRequest` for what cannot."""
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
    accepts_thinking = _accepts(registry.get(name), "thinking_budget")

    params = dict(opts.params)
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

    if request.stream and name not in STREAMABLE_STRATEGIES:
        raise InvalidRequest(
            f"streaming is available for the {' and '.join(STREAMABLE_STRATEGIES)} strategies "
            f"only for now; {name!r} must finish its whole run before it can answer. "
            "Send stream=false for it.",
            param="stream",
        )

    thinking = getattr(instance, "thinking_budget", None)
    max_tokens = request.max_completion_tokens or request.max_tokens
    if max_tokens is None:
        # Completion tokens include thinking (as in OpenAI's max_completion_tokens),
        # so the default leaves the answer its full share on top of the thinking.
        max_tokens = settings.max_tokens_default + (thinking or 0)
    deadlines = [d for d in (opts.deadline_s, settings.request_timeout_s) if d]
    return Plan(
        strategy=name,
        params=params,
        instance=instance,
        budget=Budget(tokens=opts.budget, deadline_s=min(deadlines) if deadlines else None),
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
    )


# --------------------------------------------------------------------------- responses


def error_result(exc: PonderError) -> ErrorResult:
    return ErrorResult(status=exc.status, body=exc.to_openai())


def _internal_error(exc: BaseException) -> ErrorResult:
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
    return {
        "x-ponder-strategy": info.strategy,
        "x-ponder-thinking-budget": str(info.thinking_budget or 0),
        "x-ponder-reasoning-tokens": str(reasoning),
        "x-ponder-output-tokens": str(int(completion.usage["completion_tokens"]) - reasoning),
        "x-ponder-latency-ms": str(round(info.latency_s * 1000)),
        "x-ponder-truncated": "true" if info.truncated else "false",
    }


def _sse(payload: str) -> str:
    return f"data: {payload}\n\n"


class Gateway:
    """The gateway's handlers over one backend."""

    def __init__(self, backend: Backend, settings: ServerSettings | None = None) -> None:
        self.backend = backend
        # model_construct: the defaults without reading the environment (only
        # entry points do that; create_app passes the loaded settings).
        self.settings = settings or ServerSettings.model_construct()
        self.ponder = Ponder(backend)
        self.created = int(time.time())

    # ---- GET /health, GET /v1/models

    def health(self) -> dict[str, str]:
        return {"status": "ok", "model": self.backend.name}

    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.backend.name, created=self.created)])

    # ---- POST /v1/chat/completions

    async def chat(self, body: Any) -> ChatCompletion | StreamResult | ErrorResult:
        """Handle a chat completion: ``body`` is a decoded JSON body or a parsed request."""
        try:
            request = body if isinstance(body, ChatCompletionRequest) else parse_request(body)
            p = plan(request, self.settings)
            if p.stream:
                return await self._start_stream(p)
            outcome = await self.ponder.asolve(
                Problem(messages=p.messages),
                p.instance,
                budget=p.budget,
                max_tokens=p.sampling.max_tokens,
                temperature=p.sampling.temperature,
                top_p=p.sampling.top_p,
                seed=p.sampling.seed,
                stop=p.sampling.stop,
            )
            return self._completion(p, outcome)
        except PonderError as exc:
            return error_result(exc)
        except Exception as exc:
            return _internal_error(exc)

    def _completion(self, p: Plan, outcome: Outcome) -> ChatCompletion:
        return ChatCompletion(
            model=self.backend.name,
            choices=[
                Choice(
                    message=AssistantMessage(
                        content=outcome.answer,
                        reasoning_content=outcome.reasoning if p.include_reasoning else None,
                    ),
                    finish_reason=_openai_finish(outcome.truncated),
                )
            ],
            usage=outcome.usage.to_openai(),
            ponder=PonderInfo(
                strategy=outcome.strategy,
                params=p.params,
                budget=p.budget.tokens,
                thinking_budget=p.thinking_budget,
                truncated=outcome.truncated,
                stop_reason=outcome.stop_reason,
                calls=outcome.calls,
                latency_s=round(outcome.latency_s, 4),
                n_candidates=len(outcome.candidates),
            ),
        )

    # ---- streaming (direct / cot: one generation, streamed as decoded)

    async def _start_stream(self, p: Plan) -> StreamResult:
        meter = MeteredBackend(self.backend, p.budget)
        ctx = RunContext(backend=meter, sampling=p.sampling)
        thinking = None
        if p.thinking_budget:
            min_thinking = getattr(p.instance, "min_thinking", 0)
            thinking = ThinkingConfig(
                budget_tokens=p.thinking_budget, min_tokens=min(min_thinking, p.thinking_budget)
            )
        req = ctx.request(
            Problem(messages=p.messages),
            temperature=getattr(p.instance, "temperature", 0.0),
            thinking=thinking,
        )
        deltas = meter.stream(req)
        # Pull the first delta before answering 200, so errors that happen up
        # front (context overflow, engine down) still get their HTTP status.
        first: Delta | None = None
        try:
            first = await anext(deltas)
        except StopAsyncIteration:
            pass
        except BudgetExhausted:
            # Anytime semantics: a zero budget gives an empty, truncated answer.
            pass
        except BaseException:
            await _aclose(deltas)
            raise
        headers = {
            "x-ponder-strategy": p.strategy,
            "x-ponder-thinking-budget": str(p.thinking_budget or 0),
        }
        return StreamResult(events=self._events(p, meter, deltas, first), headers=headers)

    async def _events(
        self,
        p: Plan,
        meter: MeteredBackend,
        deltas: AsyncIterator[Delta],
        first: Delta | None,
    ) -> AsyncIterator[str]:
        cid, created, model = completion_id(), int(time.time()), self.backend.name

        def chunk(choices: list[ChunkChoice], **extra: Any) -> str:
            c = ChatCompletionChunk(id=cid, created=created, model=model, choices=choices, **extra)
            return _sse(c.model_dump_json(exclude_none=True))

        yield chunk([ChunkChoice(delta=ChunkDelta(role="assistant", content=""))])
        engine_finish: str | None = None
        try:
            delta = first
            while delta is not None:
                piece = ChunkDelta(
                    content=delta.text or None,
                    reasoning_content=(delta.reasoning or None) if p.include_reasoning else None,
                )
                if piece.content is not None or piece.reasoning_content is not None:
                    yield chunk([ChunkChoice(delta=piece)])
                engine_finish = delta.finish_reason or engine_finish
                delta = await anext(deltas, None)
        except PonderError as exc:
            yield _sse(json.dumps(exc.to_openai()))
            yield _sse("[DONE]")
            return
        except Exception as exc:
            yield _sse(json.dumps(_internal_error(exc).body))
            yield _sse("[DONE]")
            return
        finally:
            await _aclose(deltas)

        truncated = meter.exhausted is not None or engine_finish not in (None, "stop")
        info = PonderInfo(
            strategy=p.strategy,
            params=p.params,
            budget=p.budget.tokens,
            thinking_budget=p.thinking_budget,
            truncated=truncated,
            stop_reason=meter.exhausted or engine_finish,
            calls=meter.calls,
            latency_s=round(time.monotonic() - meter.started, 4),
            n_candidates=1 if first is not None else 0,
        )
        yield chunk([ChunkChoice(finish_reason=_openai_finish(truncated))], ponder=info)
        if p.include_usage:
            yield chunk([], usage=meter.usage.to_openai())
        yield _sse("[DONE]")
