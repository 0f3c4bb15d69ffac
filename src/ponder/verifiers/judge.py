"""LLM-as-judge (outcome reward model): a backend reads a candidate and gives a verdict.

Where the backend returns token logprobs the score is the probability mass of
the verdict tokens ("Yes" vs "No", or the expected 1-10 rating), not a parse of
free text; without logprobs the reply text is parsed.

Judge calls cost tokens: pass the run's metered backend (``ctx.backend``) to
count them against the same budget, or a separate backend to account apart.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ponder.backends.base import Backend
from ponder.types import Candidate, Generation, GenRequest, Message, Problem, Score

__all__ = ["LLMJudgeVerifier", "rating_expectation", "verdict_probability"]

_YES = {"yes", "y", "true", "correct"}
_NO = {"no", "n", "false", "incorrect", "wrong"}

YES_NO_TEMPLATE = (
    "Question:\n{question}\n\nProposed answer:\n{answer}\n\n"
    "Is the proposed answer correct? Reply with Yes or No only."
)
RATING_TEMPLATE = (
    "Question:\n{question}\n\nProposed answer:\n{answer}\n\n"
    "Rate how likely the proposed answer is correct, from 1 (surely wrong) to 10 "
    "(surely correct). Reply with the number only."
)


def _word(token: str) -> str:
    return token.strip().strip(".:!*\"'").lower()


def verdict_probability(gen: Generation) -> float:
    """P(yes) / (P(yes) + P(no)) from the first verdict token; text parse as fallback."""
    for tok in gen.logprobs or []:
        if not tok.token.strip():
            continue
        dist = dict(tok.top) or {tok.token: tok.logprob}
        dist.setdefault(tok.token, tok.logprob)
        p_yes = sum(math.exp(lp) for t, lp in dist.items() if _word(t) in _YES)
        p_no = sum(math.exp(lp) for t, lp in dist.items() if _word(t) in _NO)
        if len(dist) == 1 and (p_yes or p_no):
            # Only the chosen token is known: the rest of the mass counts for the other verdict.
            return p_yes if p_yes else 1.0 - p_no
        if p_yes + p_no > 0:
            return p_yes / (p_yes + p_no)
        break
    words = gen.text.split()
    first = _word(words[0]) if words else ""
    if first in _YES:
        return 1.0
    if first in _NO:
        return 0.0
    return 0.5


_NUMBER = re.compile(r"\d+")


def rating_expectation(gen: Generation, low: int = 1, high: int = 10) -> float:
    """Expected rating in [0, 1] from the first numeric token's distribution; text as fallback."""
    for tok in gen.logprobs or []:
        if not tok.token.strip():
            continue
        dist = dict(tok.top) or {tok.token: tok.logprob}
        dist.setdefault(tok.token, tok.logprob)
        mass = total = 0.0
        for t, lp in dist.items():
            w = _word(t)
            if w.isdigit() and low <= int(w) <= high:
                p = math.exp(lp)
                mass += p
                total += p * int(w)
        if mass > 0:
            return (total / mass - low) / (high - low)
        break
    m = _NUMBER.search(gen.text)
    if m is None:
        return 0.5
    return (min(max(int(m.group()), low), high) - low) / (high - low)


@dataclass
class LLMJudgeVerifier:
    """Score in [0, 1]: the judge's probability that the candidate is correct."""

    backend: Backend
    scale: Literal["yes_no", "1-10"] = "yes_no"
    template: str | None = None
    top_k: int = 10

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        template = self.template or (YES_NO_TEMPLATE if self.scale == "yes_no" else RATING_TEMPLATE)
        want_logprobs = self.backend.capabilities.logprobs

        async def one(c: Candidate) -> Score:
            req = GenRequest(
                messages=[
                    Message(
                        role="user", content=template.format(question=problem.prompt, answer=c.text)
                    )
                ],
                max_tokens=3,
                temperature=0.0,
                logprobs=want_logprobs,
                top_logprobs=self.top_k if want_logprobs else 0,
            )
            (gen,) = await self.backend.generate(req)
            value = verdict_probability(gen) if self.scale == "yes_no" else rating_expectation(gen)
            return Score(value=value, detail={"verdict": gen.text.strip()[:40]})

        return list(await asyncio.gather(*(one(c) for c in candidates)))
