"""Process reward models: score every reasoning step, aggregate to one score.

A step verifier implements ``score_steps(problem, candidates) -> list[list[float]]``
(one score per step, steps split by :func:`split_steps`). :class:`StepScoring`
turns that into a plain :class:`Verifier` by aggregating (last / min / prod /
mean). :class:`GenerativePRM` asks an LLM about each step; a trained PRM served
elsewhere (e.g. Qwen2.5-Math-PRM on vLLM) drops in as another ``score_steps``.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from ponder.backends.base import Backend
from ponder.types import Candidate, GenRequest, Message, Problem, Score
from ponder.verifiers.judge import verdict_probability

__all__ = [
    "Aggregation",
    "FunctionPRM",
    "GenerativePRM",
    "StepScoring",
    "StepVerifier",
    "aggregate",
    "split_steps",
]

Aggregation = Literal["last", "min", "prod", "mean"]

_STEP_HEADER = re.compile(r"^[ \t]*#{1,6}[ \t]*Step\b", re.IGNORECASE | re.MULTILINE)
_BLANK = re.compile(r"\n[ \t]*\n")


def split_steps(text: str) -> list[str]:
    """Reasoning steps: sections under ``## Step`` headers if any, else blank-line paragraphs."""
    starts = [m.start() for m in _STEP_HEADER.finditer(text)]
    if starts:
        cuts = ([0] if text[: starts[0]].strip() else []) + starts + [len(text)]
        parts = [text[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    else:
        parts = _BLANK.split(text)
    return [p.strip() for p in parts if p.strip()]


def aggregate(values: Sequence[float], how: Aggregation = "min") -> float:
    """One score from step scores; no steps scores 0."""
    if not values:
        return 0.0
    if how == "last":
        return float(values[-1])
    if how == "min":
        return float(min(values))
    if how == "prod":
        return float(math.prod(values))
    if how == "mean":
        return float(sum(values) / len(values))
    raise ValueError(f"unknown aggregation {how!r}; use last, min, prod or mean")


@runtime_checkable
class StepVerifier(Protocol):
    """Scores each step of each candidate; higher is better."""

    async def score_steps(
        self, problem: Problem, candidates: Sequence[Candidate]
    ) -> list[list[float]]: ...


class StepScoring:
    """Mixin: a step verifier that is also a verifier (steps aggregated by ``aggregation``)."""

    aggregation: Aggregation = "min"

    async def score_steps(
        self, problem: Problem, candidates: Sequence[Candidate]
    ) -> list[list[float]]:
        raise NotImplementedError

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        per_step = await self.score_steps(problem, candidates)
        return [
            Score(value=aggregate(v, self.aggregation), detail={"steps": list(v)}) for v in per_step
        ]


StepFn = Callable[[Problem, list[str]], Sequence[float] | Awaitable[Sequence[float]]]


@dataclass
class FunctionPRM(StepScoring):
    """Wrap ``fn(problem, steps) -> step scores`` (sync or async) as a PRM."""

    fn: StepFn
    aggregation: Aggregation = "min"

    async def score_steps(
        self, problem: Problem, candidates: Sequence[Candidate]
    ) -> list[list[float]]:
        out = []
        for c in candidates:
            steps = split_steps(c.text)
            v = self.fn(problem, steps)
            if inspect.isawaitable(v):
                v = await v
            values = [float(x) for x in v]
            if len(values) != len(steps):
                raise ValueError(f"PRM function gave {len(values)} scores for {len(steps)} steps")
            out.append(values)
        return out


STEP_TEMPLATE = (
    "Problem:\n{question}\n\nSolution so far:\n{previous}\n\nNext step:\n{step}\n\n"
    "Is the next step correct and useful? Reply with Yes or No only."
)


@dataclass
class GenerativePRM(StepScoring):
    """An LLM judges each step (P(yes) from logprobs); pass ``ctx.backend`` to meter it."""

    backend: Backend
    aggregation: Aggregation = "min"
    template: str = STEP_TEMPLATE
    top_k: int = 10

    async def _step(self, problem: Problem, previous: list[str], step: str) -> float:
        lp = self.backend.capabilities.logprobs
        prompt = self.template.format(
            question=problem.prompt, previous="\n\n".join(previous) or "(none)", step=step
        )
        req = GenRequest(
            messages=[Message(role="user", content=prompt)],
            max_tokens=3,
            temperature=0.0,
            logprobs=lp,
            top_logprobs=self.top_k if lp else 0,
        )
        (gen,) = await self.backend.generate(req)
        return verdict_probability(gen)

    async def score_steps(
        self, problem: Problem, candidates: Sequence[Candidate]
    ) -> list[list[float]]:
        async def one(c: Candidate) -> list[float]:
            steps = split_steps(c.text)
            return list(
                await asyncio.gather(
                    *(self._step(problem, steps[:i], s) for i, s in enumerate(steps))
                )
            )

        return list(await asyncio.gather(*(one(c) for c in candidates)))
