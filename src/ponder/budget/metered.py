"""The metering wrapper: every backend call of a strategy goes through here.

It sums usage over all calls (prompt tokens of internal calls included),
clips each call so the token budget can never be exceeded, passes the
deadline down to the engine, and raises :class:`BudgetExhausted` before a
call that could not produce a single token.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from ponder.backends.base import Backend
from ponder.errors import BudgetExhausted
from ponder.types import Budget, Capabilities, Delta, GenRequest, Generation, Usage

__all__ = ["MeteredBackend"]


class MeteredBackend:
    """Wraps any :class:`Backend`; holds the running usage of one strategy run."""

    def __init__(self, inner: Backend, budget: Budget | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.capabilities: Capabilities = inner.capabilities
        self.budget = budget or Budget()
        self.started = time.monotonic()
        self.deadline = (
            self.started + self.budget.deadline_s if self.budget.deadline_s is not None else None
        )
        self.usage = Usage()
        self.calls = 0
        self.exhausted: str | None = None

    @property
    def remaining_tokens(self) -> int | None:
        if self.budget.tokens is None:
            return None
        return max(self.budget.tokens - self.usage.completion_tokens, 0)

    def _admit(self, req: GenRequest) -> GenRequest:
        """Clip ``req`` to what is left, or raise when nothing is left."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.exhausted = "deadline"
            raise BudgetExhausted("deadline reached", reason="deadline")
        update: dict[str, object] = {}
        if self.deadline is not None:
            update["deadline"] = (
                self.deadline if req.deadline is None else min(req.deadline, self.deadline)
            )
        left = self.remaining_tokens
        if left is not None:
            per_sample = left // req.n
            if per_sample < 1:
                # Fewer tokens left than samples: shrink n rather than overshoot.
                if left < 1:
                    self.exhausted = "budget"
                    raise BudgetExhausted("token budget exhausted", reason="budget")
                update["n"] = left
                per_sample = 1
            if req.max_tokens > per_sample:
                update["max_tokens"] = per_sample
            if req.thinking is not None and req.thinking.budget_tokens > per_sample:
                update["thinking"] = req.thinking.model_copy(
                    update={
                        "budget_tokens": per_sample,
                        "min_tokens": min(req.thinking.min_tokens, per_sample),
                    }
                )
        return req.model_copy(update=update) if update else req

    def _account(self, gens: list[Generation]) -> None:
        self.calls += 1
        self.usage = self.usage + Usage.sum([g.usage for g in gens])
        if self.remaining_tokens == 0:
            self.exhausted = "budget"
        if any(g.finish_reason == "deadline" for g in gens):
            self.exhausted = "deadline"

    async def generate(self, req: GenRequest) -> list[Generation]:
        admitted = self._admit(req)
        gens = await self.inner.generate(admitted)
        self._account(gens)
        return gens

    async def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        admitted = self._admit(req)
        final_usage: Usage | None = None
        async for delta in self.inner.stream(admitted):
            if delta.usage is not None:
                final_usage = delta.usage
            yield delta
        self.calls += 1
        if final_usage is not None:
            self.usage = self.usage + final_usage
