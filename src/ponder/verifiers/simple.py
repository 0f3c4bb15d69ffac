"""Verifiers that need no model: vote agreement, mean logprob, a user function, exact match."""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ponder.types import Candidate, Problem, Score

__all__ = [
    "AgreementVerifier",
    "ExactMatchVerifier",
    "FunctionVerifier",
    "MeanLogprobVerifier",
]


class AgreementVerifier:
    """Score = share of candidates that reached the same final answer."""

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        counts = Counter(c.answer for c in candidates if c.answer is not None)
        total = len(candidates) or 1
        return [
            Score(
                value=(counts[c.answer] / total) if c.answer is not None else 0.0,
                detail={"votes": counts.get(c.answer, 0) if c.answer is not None else 0},
            )
            for c in candidates
        ]


class MeanLogprobVerifier:
    """Score = mean token logprob of the candidate's visible answer (model confidence)."""

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        out = []
        for c in candidates:
            lp = c.generation.mean_logprob if c.generation is not None else None
            out.append(
                Score(value=lp if lp is not None else float("-inf"), detail={"mean_logprob": lp})
            )
        return out


@dataclass
class ExactMatchVerifier:
    """1.0 when the extracted answer equals ``problem.reference`` (normalized), else 0.0."""

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        from ponder.verifiers.answers import extract_answer, normalize_answer

        ref = normalize_answer(problem.reference) if problem.reference else None
        return [
            Score(
                value=float(
                    ref is not None
                    and (c.answer if c.answer is not None else extract_answer(c.text)) == ref
                )
            )
            for c in candidates
        ]


ScoreFn = Callable[[Problem, Candidate], float | Awaitable[float]]


@dataclass
class FunctionVerifier:
    """Wrap ``fn(problem, candidate) -> float`` (sync or async) as a verifier."""

    fn: ScoreFn

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        out = []
        for c in candidates:
            v = self.fn(problem, c)
            if inspect.isawaitable(v):
                v = await v
            out.append(Score(value=float(v)))
        return out
