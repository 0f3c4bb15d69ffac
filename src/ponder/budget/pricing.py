"""What a request costs: token prices per model and GPU-second prices per self-hosted tier.

Money is kept in integer **micro-dollars** (1e-6 USD) everywhere it is stored or
compared, so quota arithmetic is exact and atomic in SQL. A price per 1M tokens
in USD is, conveniently, micro-dollars per token.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from ponder.types import Usage

__all__ = ["MICRO", "Price", "PriceTable", "to_micro", "to_usd"]

MICRO = 1_000_000


def to_micro(usd: float) -> int:
    """USD -> micro-dollars, rounded up (never under-charge)."""
    return math.ceil(round(usd * MICRO, 6))


def to_usd(micro: int | float) -> float:
    return micro / MICRO


@dataclass(frozen=True)
class Price:
    """Rates in USD per 1M tokens, plus USD per second of engine wall time.

    ``cached_input`` defaults to ``input`` and ``reasoning`` to ``output`` (hidden
    thinking is billed as output by every provider we know of).
    ``gpu_second`` prices self-hosted tiers by how long the engine worked.
    """

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None
    reasoning: float | None = None
    gpu_second: float = 0.0

    @property
    def cached_input_rate(self) -> float:
        return self.input if self.cached_input is None else self.cached_input

    @property
    def reasoning_rate(self) -> float:
        return self.output if self.reasoning is None else self.reasoning

    def cost_micro(self, usage: Usage, engine_s: float = 0.0) -> int:
        """Cost of ``usage`` (plus ``engine_s`` seconds of engine time) in micro-dollars."""
        tokens = (
            usage.input * self.input
            + usage.cached_input * self.cached_input_rate
            + usage.output * self.output
            + usage.reasoning * self.reasoning_rate
        )
        return math.ceil(round(tokens + engine_s * self.gpu_second * MICRO, 6))

    def worst_case_micro(self, prompt_tokens: int, generated_tokens: int, engine_s: float) -> int:
        """The most a run can cost: every prompt token uncached, every generated token
        at the dearer of the output and reasoning rates, the engine busy until the deadline."""
        gen_rate = max(self.output, self.reasoning_rate)
        tokens = (
            prompt_tokens * max(self.input, self.cached_input_rate) + generated_tokens * gen_rate
        )
        return math.ceil(round(tokens + engine_s * self.gpu_second * MICRO, 6))

    def tokens_for_micro(self, micro: int, prompt_tokens: int) -> int | None:
        """How many generated tokens ``micro`` buys after the prompt; None when tokens are free."""
        gen_rate = max(self.output, self.reasoning_rate)
        if gen_rate <= 0:
            return None
        left = micro - prompt_tokens * max(self.input, self.cached_input_rate)
        return max(math.floor(left / gen_rate), 0)


@dataclass
class PriceTable:
    """Prices per model name; ``default`` for models not listed (free unless set)."""

    models: Mapping[str, Price] = field(default_factory=dict)
    default: Price = field(default_factory=Price)

    def for_model(self, model: str | None) -> Price:
        if model is None:
            return self.default
        return self.models.get(model, self.default)

    def cost_micro(self, model: str | None, usage: Usage, engine_s: float = 0.0) -> int:
        return self.for_model(model).cost_micro(usage, engine_s)
