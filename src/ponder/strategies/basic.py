"""The core strategies: direct, budgeted chain of thought, self-consistency, best-of-N."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from ponder.errors import InvalidRequest
from ponder.strategies.base import (
    RunContext,
    Work,
    check_int,
    check_temperature,
    finish,
    to_candidate,
)
from ponder.types import Candidate, Delta, GenRequest, Outcome, Problem, Score, ThinkingConfig
from ponder.verifiers.simple import AgreementVerifier, MeanLogprobVerifier

__all__ = [
    "BestOfN",
    "ChainOfThought",
    "Direct",
    "SelfConsistency",
    "majority_vote",
    "weighted_choice",
]


def _thinking(budget: int | None, min_tokens: int = 0) -> ThinkingConfig | None:
    if not budget:
        return None
    return ThinkingConfig(budget_tokens=budget, min_tokens=min(min_tokens, budget))


def _check_sampled(owner: str, n: int, temperature: float, thinking_budget: int | None) -> None:
    check_int(owner, "n", n, 1)
    check_temperature(owner, temperature)
    if thinking_budget is not None:
        check_int(owner, "thinking_budget", thinking_budget, 0)


@dataclass
class Direct:
    """One greedy answer, no extended thinking."""

    name: str = "direct"
    temperature: float = 0.0

    def __post_init__(self) -> None:
        check_temperature(self.name, self.temperature)

    async def run(self, problem: Problem, ctx: RunContext) -> Outcome:
        candidates: list[Candidate] = []
        with ctx.anytime():
            gens = await ctx.generate(ctx.request(problem, temperature=self.temperature))
            candidates = [to_candidate(g, problem.task) for g in gens]
        return finish(self.name, ctx, candidates, 0 if candidates else None)

    def stream(self, problem: Problem, ctx: RunContext) -> AsyncIterator[Delta]:
        """The same one generation as :meth:`run`, delta by delta."""
        return ctx.stream(ctx.request(problem, temperature=self.temperature))


@dataclass
class ChainOfThought:
    """Think first (capped at ``thinking_budget`` tokens), then answer.

    ``min_thinking`` extends a too-short thought s1-style ("Wait").
    """

    name: str = "cot"
    thinking_budget: int = 512
    min_thinking: int = 0
    temperature: float = 0.0

    def __post_init__(self) -> None:
        check_int(self.name, "thinking_budget", self.thinking_budget, 0)
        check_int(self.name, "min_thinking", self.min_thinking, 0)
        check_temperature(self.name, self.temperature)

    async def run(self, problem: Problem, ctx: RunContext) -> Outcome:
        candidates: list[Candidate] = []
        with ctx.anytime():
            gens = await ctx.generate(self._request(problem, ctx))
            candidates = [to_candidate(g, problem.task) for g in gens]
        return finish(self.name, ctx, candidates, 0 if candidates else None)

    def stream(self, problem: Problem, ctx: RunContext) -> AsyncIterator[Delta]:
        """The same one generation as :meth:`run` (thought, then answer), delta by delta."""
        return ctx.stream(self._request(problem, ctx))

    def _request(self, problem: Problem, ctx: RunContext) -> GenRequest:
        return ctx.request(
            problem,
            temperature=self.temperature,
            thinking=_thinking(self.thinking_budget, self.min_thinking),
        )


def majority_vote(candidates: Sequence[Candidate]) -> int | None:
    """Index of a candidate with the most common answer; complete candidates first.

    Ties go to the answer reached first (deterministic); candidates without an
    extractable answer never win while any candidate has one.
    """
    pool = [i for i, c in enumerate(candidates) if not c.truncated and c.answer is not None]
    if not pool:
        pool = [i for i, c in enumerate(candidates) if c.answer is not None]
    if not pool:
        return 0 if candidates else None
    counts = Counter(candidates[i].answer for i in pool)
    best = max(counts.values())
    return next(i for i in pool if counts[candidates[i].answer] == best)


@dataclass
class SelfConsistency:
    """Sample ``n`` solutions (one shared-prefix batch) and return the majority answer."""

    name: str = "self_consistency"
    n: int = 5
    temperature: float = 0.7
    thinking_budget: int | None = None

    def __post_init__(self) -> None:
        _check_sampled(self.name, self.n, self.temperature, self.thinking_budget)

    def work(self) -> Work:
        return Work(samples=self.n)

    async def run(self, problem: Problem, ctx: RunContext) -> Outcome:
        candidates: list[Candidate] = []
        with ctx.anytime():
            req = ctx.request(
                problem,
                n=self.n,
                temperature=self.temperature,
                thinking=_thinking(self.thinking_budget),
            )
            candidates = [to_candidate(g, problem.task) for g in await ctx.generate(req)]
        chosen = majority_vote(candidates)
        scores = await AgreementVerifier().score(problem, candidates) if candidates else []
        return finish(self.name, ctx, candidates, chosen, scores)


@dataclass
class BestOfN:
    """Sample ``n`` candidates and keep the one the verifier scores highest.

    Without a verifier: vote agreement when the candidates' answers agree at
    all, otherwise the mean token logprob (the model's own confidence).
    ``weighted=True`` sums the scores of candidates sharing an answer and keeps
    the best candidate of the answer with the largest sum (weighted best-of-N);
    it expects non-negative scores.

    ``include_greedy=True`` makes the first candidate the greedy (temperature 0)
    answer and samples the other ``n - 1``: the model's single best guess is
    always on the table, and sampling only adds alternatives the verifier may
    prefer. On small models a single sampled answer is often much worse than the
    greedy one, so without it best-of-N first has to win back what temperature
    lost. The candidates are then not independent samples (no pass@k over them).
    """

    name: str = "best_of_n"
    n: int = 4
    temperature: float = 0.8
    thinking_budget: int | None = None
    weighted: bool = False
    include_greedy: bool = False

    def __post_init__(self) -> None:
        _check_sampled(self.name, self.n, self.temperature, self.thinking_budget)
        if not isinstance(self.include_greedy, bool):
            raise InvalidRequest(
                f"{self.name}: include_greedy must be true or false, got {self.include_greedy!r}",
                param="include_greedy",
            )

    def work(self) -> Work:
        return Work(samples=self.n)

    async def run(self, problem: Problem, ctx: RunContext) -> Outcome:
        candidates: list[Candidate] = []
        # (samples, greedy?) per call.
        calls = [(1, True), (self.n - 1, False)] if self.include_greedy else [(self.n, False)]
        with ctx.anytime():
            for count, greedy in calls:
                if count == 0:
                    continue
                req = ctx.request(
                    problem,
                    n=count,
                    temperature=self.temperature,
                    thinking=_thinking(self.thinking_budget),
                    logprobs=True,
                    top_logprobs=getattr(ctx.verifier, "top_logprobs", 0),
                )
                if greedy:
                    # Greedy even when the run sets a temperature (that applies to samples).
                    req = req.model_copy(update={"temperature": 0.0})
                candidates += [to_candidate(g, problem.task) for g in await ctx.generate(req)]
        if not candidates:
            return finish(self.name, ctx, candidates, None)
        verifier = ctx.verifier
        if verifier is None:
            answers = Counter(c.answer for c in candidates if c.answer is not None)
            agree = bool(answers) and max(answers.values()) > 1
            verifier = AgreementVerifier() if agree else MeanLogprobVerifier()
        scores = await verifier.score(problem, candidates)
        ctx.tracer.event(
            "scored", verifier=type(verifier).__name__, scores=[s.value for s in scores]
        )
        chosen = (
            weighted_choice(candidates, scores) if self.weighted else _argmax(candidates, scores)
        )
        return finish(self.name, ctx, candidates, chosen, scores)


def weighted_choice(candidates: Sequence[Candidate], scores: Sequence[Score]) -> int:
    """Weighted best-of-N: the answer whose candidates' scores sum highest wins.

    Candidates a verifier put in the same behaviour cluster count as one answer.

    Complete candidates with an answer vote first; the returned index is that
    answer's best-scored candidate. Falls back to plain argmax when nobody votes.
    """
    pool = [i for i, c in enumerate(candidates) if not c.truncated and c.answer is not None]
    if not pool:
        pool = [i for i, c in enumerate(candidates) if c.answer is not None]
    if not pool:
        return _argmax(candidates, scores)

    def value(i: int) -> float:
        v = scores[i].value
        return v if not math.isnan(v) else float("-inf")

    def group(i: int) -> str:
        # A verifier that groups candidates by behaviour (the code verifier does)
        # names the group; otherwise candidates with the same answer vote together.
        cluster = scores[i].detail.get("cluster")
        answer = candidates[i].answer
        assert answer is not None
        return f"cluster:{cluster}" if cluster else answer

    totals: dict[str, float] = {}
    for i in pool:
        totals[group(i)] = totals.get(group(i), 0.0) + value(i)
    # Ties go to the group reached first, so the choice is deterministic.
    order = list(dict.fromkeys(group(i) for i in pool))
    best = max(order, key=lambda g: totals[g])
    return max((i for i in pool if group(i) == best), key=value)


def _argmax(candidates: Sequence[Candidate], scores: Sequence[Score]) -> int:
    """Highest score; complete candidates beat truncated ones; ties -> the larger
    behaviour cluster (when the verifier groups tied candidates, as the code
    verifier does), then the higher mean logprob.

    A NaN score ranks lowest (compared as is, it would win or lose by position).
    """

    def key(i: int) -> tuple[bool, float, int, float]:
        gen = candidates[i].generation
        lp = gen.mean_logprob if gen is not None else None
        value = scores[i].value
        return (
            not candidates[i].truncated,
            value if not math.isnan(value) else float("-inf"),
            int(scores[i].detail.get("cluster_size", 0)),
            lp if lp is not None else float("-inf"),
        )

    return max(range(len(candidates)), key=key)
