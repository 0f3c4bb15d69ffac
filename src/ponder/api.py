"""The library facade: ``ponder.solve(...)`` and the reusable :class:`Ponder`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ponder.backends.base import Backend
from ponder.budget.metered import MeteredBackend
from ponder.strategies import RunContext, SamplingDefaults, Strategy, get_strategy
from ponder.types import Budget, Message, Outcome, Problem, as_messages
from ponder.verifiers.base import Verifier

__all__ = ["Ponder", "asolve", "solve"]

PromptLike = str | Sequence[Message] | Sequence[dict[str, Any]]


def _as_budget(budget: int | Budget | None, deadline_s: float | None) -> Budget:
    if isinstance(budget, Budget):
        return budget if deadline_s is None else budget.model_copy(update={"deadline_s": deadline_s})
    if budget is not None and budget < 0:
        from ponder.errors import InvalidRequest

        raise InvalidRequest(f"budget must be >= 0 tokens, got {budget}", param="budget")
    return Budget(tokens=budget, deadline_s=deadline_s)


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
        kwargs = {
            "model": model or settings.engine.model,
            "n_ctx": settings.engine.n_ctx,
            "max_sequences": settings.engine.max_sequences,
            "threads": settings.engine.threads,
            "cache_dir": settings.cache_dir,
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
        **strategy_params: Any,
    ) -> Outcome:
        problem = prompt if isinstance(prompt, Problem) else Problem(messages=as_messages(prompt))
        strat = get_strategy(strategy, **strategy_params) if isinstance(strategy, str) else strategy
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
        )
        return await strat.run(problem, ctx)

    def solve(self, prompt: PromptLike | Problem, strategy: str | Strategy = "direct", **kwargs: Any) -> Outcome:
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
