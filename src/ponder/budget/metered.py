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
from ponder.types import Budget, Capabilities, Delta, Generation, GenRequest, Usage

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
        # Worst case of calls in flight: concurrent calls of one run (beam search,
        # DVTS) must not each be admitted against the same remainder.
        self._reserved = 0

    @property
    def remaining_tokens(self) -> int | None:
        if self.budget.tokens is None:
            return None
        return max(self.budget.tokens - self.usage.completion_tokens, 0)

    def _admit(self, req: GenRequest) -> tuple[GenRequest, bool]:
        """Clip ``req`` to what is left, or raise when nothing is left.

        Also says whether the budget (not the caller) lowered ``max_tokens`` or ``n``,
        so a generation cut short by that clip is reported as a budget stop.
        """
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.exhausted = "deadline"
            raise BudgetExhausted(
                "deadline reached before the next model call; allow more time (deadline_s)",
                reason="deadline",
            )
        update: dict[str, object] = {}
        if self.deadline is not None:
            update["deadline"] = (
                self.deadline if req.deadline is None else min(req.deadline, self.deadline)
            )
        clipped = False
        left = self.remaining_tokens
        if left is not None:
            left -= self._reserved
            if left < 1:
                self.exhausted = "budget"
                raise BudgetExhausted(
                    f"token budget of {self.budget.tokens} generated tokens is spent; "
                    "raise the budget for a longer run",
                    reason="budget",
                )
            per_sample = left // req.n
            if per_sample < 1:
                # Fewer tokens left than samples: shrink n rather than overshoot.
                update["n"] = left
                per_sample = 1
                clipped = True
            if req.max_tokens > per_sample:
                update["max_tokens"] = per_sample
                clipped = True
            if req.thinking is not None and req.thinking.budget_tokens > per_sample:
                update["thinking"] = req.thinking.model_copy(
                    update={
                        "budget_tokens": per_sample,
                        "min_tokens": min(req.thinking.min_tokens, per_sample),
                    }
                )
        admitted = req.model_copy(update=update) if update else req
        if self.budget.tokens is not None:
            self._reserved += admitted.n * admitted.max_tokens
        return admitted, clipped

    def _release(self, req: GenRequest) -> None:
        if self.budget.tokens is not None:
            self._reserved -= req.n * req.max_tokens

    def _account(self, usage: Usage, finish_reasons: list[str | None], clipped: bool) -> None:
        self.calls += 1
        self.usage = self.usage + usage
        # A generation the budget cut short is a budget stop; one that merely used the
        # last token of the budget and finished on its own is complete.
        if clipped and "length" in finish_reasons:
            self.exhausted = "budget"
        if "deadline" in finish_reasons:
            self.exhausted = "deadline"

    async def generate(self, req: GenRequest) -> list[Generation]:
        return await self.generate_via(self.inner, req)

    async def generate_via(self, backend: Backend, req: GenRequest) -> list[Generation]:
        """One call to ``backend`` (e.g. another model tier) under this meter's budget and usage."""
        admitted, clipped = self._admit(req)
        try:
            gens = await backend.generate(admitted)
        finally:
            self._release(admitted)
        self._account(Usage.sum(g.usage for g in gens), [g.finish_reason for g in gens], clipped)
        return gens

    async def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        admitted, clipped = self._admit(req)
        final_usage: Usage | None = None
        finish_reasons: list[str | None] = []
        # Until the engine reports usage, estimate one token per non-empty delta.
        seen_reasoning = seen_output = 0
        try:
            async for delta in self.inner.stream(admitted):
                seen_reasoning += bool(delta.reasoning)
                seen_output += bool(delta.text)
                if delta.usage is not None:
                    final_usage = delta.usage
                if delta.finish_reason is not None:
                    finish_reasons.append(delta.finish_reason)
                yield delta
        finally:
            self._release(admitted)
            # Counted even when the consumer stops early: no call escapes accounting.
            if final_usage is None:
                final_usage = Usage(
                    reasoning=seen_reasoning,
                    output=seen_output,
                    reasoning_estimated=seen_reasoning > 0,
                    output_estimated=seen_output > 0,
                )
            self._account(final_usage, finish_reasons, clipped)
