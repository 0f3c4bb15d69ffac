"""The library facade: ``ponder.solve(...)`` and the reusable :class:`Ponder`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from ponder.backends.base import Backend
from ponder.budget.metered import MeteredBackend
from ponder.errors import InvalidRequest
from ponder.strategies import RunContext, SamplingDefaults, Strategy, get_strategy
from ponder.types import Budget, Message, Outcome, Problem, as_messages
from ponder.verifiers.base import Verifier

__all__ = ["Ponder", "asolve", "solve"]

PromptLike = str | Sequence[Message] | Sequence[dict[str, Any]]


def _as_budget(budget: int | Budget | None, deadline_s: float | None) -> Budget:
    if deadline_s is not None and not deadline_s > 0:
        raise InvalidRequest(
            f"deadline_s must be > 0 seconds (or None for no deadline), got {deadline_s}",
            param="deadline_s",
        )
    if isinstance(budget, Budget):
        return (
            budget if deadline_s is None else budget.model_copy(update={"deadline_s": deadline_s})
        )
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)):
        raise InvalidRequest(
            f"budget must be a whole number of tokens, got {budget!r}", param="budget"
        )
    if budget is not None and budget < 0:
        raise InvalidRequest(f"budget must be >= 0 tokens, got {budget}", param="budget")
    return Budget(tokens=budget, deadline_s=deadline_s)


def _as_problem(prompt: PromptLike | Problem) -> Problem:
    if isinstance(prompt, Problem):
        problem = prompt
    else:
        try:
            problem = Problem(messages=as_messages(prompt))
        except ValidationError as exc:
            raise InvalidRequest(
                f"bad prompt: {exc.errors()[0]['msg']}; give a string or chat messages "
                "with a role (system, user, assistant, ...) and content",
                param="messages",
            ) from exc
    if not problem.messages:
        raise InvalidRequest("the prompt has no messages; give at least one", param="messages")
    return problem


class Ponder:
    """A backend plus defaults; call :meth:`solve` / :meth:`asolve` many times."""

    def __init__(self, backend: Backend, verifier: Verifier | None = None) -> None:
        self.backend = backend
        self.verifier = verifier

    @classmethod
    def embedded(cls, model: str | None = None, **engine_kwargs: Any) -> Ponder:
        """Ponder over the embedded llama.cpp engine (installs the catalog model if needed)."""
        from ponder.backends.llama_cpp import LlamaCppBackend
        from ponder.config import load_settings

        settings = load_settings()
        kwargs: dict[str, Any] = {
            "model": model or settings.engine.model,
            **settings.engine.backend_options(settings.cache_dir),
        }
        kwargs.update(engine_kwargs)
        return cls(LlamaCppBackend(**kwargs))

    async def asolve(
        self,
        prompt: PromptLike | Problem,
        strategy: str | Strategy = "direct",
        *,
        budget: int | Budget | None = None,
        deadline_s: float | None = None,
        verifier: Verifier | None = None,
        max_tokens: int = 512,
        temperature: float | None = None,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        tiers: Mapping[str, Backend] | None = None,
        **strategy_params: Any,
    ) -> Outcome:
        """Run ``strategy`` on ``prompt``; bad arguments raise before any model call.

        ``tiers`` (name -> backend) are the other model tiers a strategy may call
        (a cascade's ``strong_tier``), under this run's one budget.
        """
        problem = _as_problem(prompt)
        if isinstance(strategy, str):
            strat = get_strategy(strategy, **strategy_params)
        elif strategy_params:
            raise InvalidRequest(
                f"strategy parameters {sorted(strategy_params)} were given with a strategy "
                "object; set them on the object or pass the strategy by name",
                param="strategy_params",
            )
        else:
            strat = strategy
        ctx = RunContext(
            backend=MeteredBackend(self.backend, _as_budget(budget, deadline_s)),
            verifier=verifier or self.verifier,
            sampling=SamplingDefaults(
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                seed=seed,
                stop=list(stop),
            ),
            tiers=dict(tiers or {}),
        )
        return await strat.run(problem, ctx)

    def solve(
        self, prompt: PromptLike | Problem, strategy: str | Strategy = "direct", **kwargs: Any
    ) -> Outcome:
        """Synchronous :meth:`asolve` (not from inside a running event loop)."""
        return asyncio.run(self.asolve(prompt, strategy, **kwargs))


_default: Ponder | None = None


def _default_ponder() -> Ponder:
    global _default
    if _default is None:
        _default = Ponder.embedded()
    return _default


async def asolve(
    prompt: PromptLike | Problem,
    strategy: str | Strategy = "direct",
    *,
    backend: Backend | None = None,
    **kwargs: Any,
) -> Outcome:
    """Run ``strategy`` on ``prompt`` under ``budget``; the embedded model when no backend is given."""
    p = Ponder(backend) if backend is not None else _default_ponder()
    return await p.asolve(prompt, strategy, **kwargs)


def solve(
    prompt: PromptLike | Problem,
    strategy: str | Strategy = "direct",
    *,
    backend: Backend | None = None,
    **kwargs: Any,
) -> Outcome:
    """Synchronous :func:`asolve`."""
    return asyncio.run(asolve(prompt, strategy, backend=backend, **kwargs))
