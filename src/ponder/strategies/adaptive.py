"""Adaptive consistency: sample in rounds, stop as soon as the vote is decided."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ponder.errors import InvalidRequest
from ponder.strategies.base import RunContext, check_int, check_temperature, finish, to_candidate
from ponder.strategies.basic import majority_vote
from ponder.types import Candidate, Outcome, Problem
from ponder.verifiers.simple import AgreementVerifier

__all__ = ["AdaptiveConsistency", "leader_probability"]


def leader_probability(top: int, second: int) -> float:
    """P(the leading answer is truly more likely than the runner-up), under a uniform
    Beta prior on their split: P(X > 1/2) for X ~ Beta(top + 1, second + 1).

    For integer parameters that is P(Binomial(top + second + 1, 1/2) <= top).
    """
    trials = top + second + 1
    favourable: int = sum(math.comb(trials, j) for j in range(top + 1))
    return favourable / float(2**trials)


def _decided(candidates: Sequence[Candidate], confidence: float) -> tuple[bool, float]:
    counts = Counter(c.answer for c in candidates if c.answer is not None and not c.truncated)
    if not counts:
        return False, 0.0
    ranked = counts.most_common(2)
    top = ranked[0][1]
    second = ranked[1][1] if len(ranked) > 1 else 0
    p = leader_probability(top, second)
    return p >= confidence, p


@dataclass
class AdaptiveConsistency:
    """Self-consistency that samples ``batch`` at a time, up to ``max_samples``, and stops
    once the leading answer wins with probability >= ``confidence``."""

    name: str = "adaptive_consistency"
    batch: int = 2
    max_samples: int = 16
    confidence: float = 0.95
    temperature: float = 0.7

    def __post_init__(self) -> None:
        check_int(self.name, "batch", self.batch, 1)
        check_int(self.name, "max_samples", self.max_samples, 1)
        check_temperature(self.name, self.temperature)
        if not 0.5 <= self.confidence < 1:
            raise InvalidRequest(
                f"{self.name}: confidence must be in [0.5, 1), got {self.confidence!r}",
                param="confidence",
            )

    async def run(self, problem: Problem, ctx: RunContext) -> Outcome:
        candidates: list[Candidate] = []
        p = 0.0
        with ctx.anytime():
            while len(candidates) < self.max_samples:
                n = min(self.batch, self.max_samples - len(candidates))
                req = ctx.request(problem, n=n, temperature=self.temperature)
                candidates += [to_candidate(g, problem.task) for g in await ctx.generate(req)]
                decided, p = _decided(candidates, self.confidence)
                ctx.tracer.event("vote", samples=len(candidates), leader_probability=round(p, 4))
                if decided:
                    break
        chosen = majority_vote(candidates)
        scores = await AgreementVerifier().score(problem, candidates) if candidates else []
        ctx.tracer.event("decided", decided=p >= self.confidence, samples=len(candidates))
        return finish(self.name, ctx, candidates, chosen, scores)
