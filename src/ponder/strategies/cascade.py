"""Progressive escalation: answer cheaply, spend more only while confidence stays low.

Rungs, in order (each one optional):

1. ``direct``: one greedy answer on the run's own backend (tier 1);
2. ``program``: one greedy program (as ``program_aided`` writes it), executed; its printed
   result is the answer, an independent cross-check of the direct one;
3. ``think``: one greedy answer after up to ``thinking_budget`` thinking tokens;
4. ``search``: ``search_n`` samples, majority vote (or the verifier's best);
5. ``tier``: the thinking rung again on ``strong_tier`` (a bigger model from ``ctx.tiers``),
   with ``tier_thinking_budget`` thinking tokens (None: ``thinking_budget``; 0: a direct
   answer, for a strong tier too slow to think on).

After each rung a confidence in [0, 1] is read off the candidates: the verifier's score
when the run has a verifier, vote agreement when there are several samples, else the
geometric-mean token probability ``exp(mean logprob)``. An unfinished answer has
confidence 0. The cascade stops at the first rung whose confidence is at least
``threshold``.

``signal="verified"`` is verified escalation: an answer is accepted only when the
verifier passes it (tests, schema) or when two independent solutions agree (the
program's executed result equals the direct answer, or samples agree); a lone answer
nobody checked has confidence 0, whatever the model's token probabilities say. The
chosen answer's verdict (``pass``/``fail``/``unknown`` and which check gave it) is a
``verdict`` trace event. Every rung is a trace event (confidence, signal, tokens it cost); the
budget is the run's one budget, so the cascade can never spend more than it.

Rung requests are built exactly as ``direct``, ``cot`` and ``self_consistency`` build
theirs, so a sample pool recorded for those strategies replays a cascade exactly.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from ponder.errors import InvalidRequest
from ponder.strategies.base import (
    RunContext,
    Work,
    check_int,
    check_temperature,
    finish,
    to_candidate,
)
from ponder.strategies.basic import majority_vote
from ponder.strategies.program import ProgramAided, program_messages
from ponder.types import Candidate, Outcome, Problem, Score, ThinkingConfig

__all__ = ["Cascade", "Rung", "confidence"]

Signal = Literal["auto", "verifier", "agreement", "logprob", "verified"]
_SIGNALS = ("auto", "verifier", "agreement", "logprob", "verified")
_RUNG_KINDS = ("direct", "program", "think", "search", "tier")


@dataclass(frozen=True)
class Rung:
    """One step of the cascade as planned."""

    kind: str  # direct | program | think | search | tier
    n: int = 1
    temperature: float = 0.0
    thinking_budget: int | None = None
    tier: str | None = None


def _logprob_confidence(cand: Candidate) -> float | None:
    gen = cand.generation
    mean = gen.mean_logprob if gen is not None else None
    return None if mean is None else math.exp(mean)


def confidence(candidates: list[Candidate], chosen: int, scores: list[Score]) -> tuple[float, str]:
    """(confidence, signal) of the chosen candidate; see the module docstring."""
    if not candidates or candidates[chosen].truncated:
        return 0.0, "unfinished"
    if scores:
        value = scores[chosen].value
        return (0.0 if math.isnan(value) else max(0.0, min(1.0, value))), "verifier"
    if len(candidates) > 1:
        answers = [c.answer for c in candidates if not c.truncated and c.answer is not None]
        if not answers:
            return 0.0, "agreement"
        return Counter(answers).most_common(1)[0][1] / len(candidates), "agreement"
    lp = _logprob_confidence(candidates[chosen])
    return (0.0, "none") if lp is None else (lp, "logprob")


@dataclass
class Cascade:
    """Direct on tier 1, then thinking, then search / a stronger tier, while unsure."""

    name: str = "cascade"
    threshold: float = 0.6
    thinking_budget: int = 256
    search_n: int = 4
    search_temperature: float = 0.7
    strong_tier: str | None = None
    # Thinking tokens of the strong-tier rung: None = thinking_budget, 0 = answer directly.
    tier_thinking_budget: int | None = None
    signal: Signal = "auto"
    # Which rungs run at all; drop "think" or "search" to skip them.
    rungs: tuple[str, ...] = ("direct", "think", "search", "tier")

    def __post_init__(self) -> None:
        if (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, int | float)
            or not 0.0 <= self.threshold <= 1.0
        ):
            raise InvalidRequest(
                f"cascade: threshold must be a number in [0, 1], got {self.threshold!r}",
                param="threshold",
            )
        check_int(self.name, "thinking_budget", self.thinking_budget, 0)
        t = self.tier_thinking_budget
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 0):
            raise InvalidRequest(
                f"cascade: tier_thinking_budget must be null (use thinking_budget) or an "
                f"integer >= 0 (0: a direct answer on the strong tier), got {t!r}",
                param="tier_thinking_budget",
            )
        check_int(self.name, "search_n", self.search_n, 2)
        check_temperature(self.name, self.search_temperature, "search_temperature")
        if self.signal not in _SIGNALS:
            raise InvalidRequest(
                f"cascade: signal must be one of {', '.join(_SIGNALS)}, got {self.signal!r}",
                param="signal",
            )
        self.rungs = tuple(self.rungs)
        unknown = set(self.rungs) - set(_RUNG_KINDS)
        if unknown or not self.rungs:
            raise InvalidRequest(
                f"cascade: rungs must be a non-empty subset of {', '.join(_RUNG_KINDS)}; "
                f"got {list(self.rungs)}",
                param="rungs",
            )

    def work(self) -> Work:
        # Its escalation tier is priced and reserved with the run's own.
        return Work(tiers=(self.strong_tier,) if self.strong_tier is not None else ())

    def plan(self) -> list[Rung]:
        """The rungs this cascade would climb, cheapest first."""
        out = []
        for kind in _RUNG_KINDS:
            if kind not in self.rungs:
                continue
            if kind in ("direct", "program"):
                out.append(Rung(kind))
            elif kind == "think" and self.thinking_budget > 0:
                out.append(Rung("think", thinking_budget=self.thinking_budget))
            elif kind == "search":
                out.append(Rung("search", n=self.search_n, temperature=self.search_temperature))
            elif kind == "tier" and self.strong_tier is not None:
                budget = (
                    self.thinking_budget
                    if self.tier_thinking_budget is None
                    else self.tier_thinking_budget
                )
                out.append(Rung("tier", thinking_budget=budget or None, tier=self.strong_tier))
        return out

    async def run(self, problem: Problem, ctx: RunContext) -> Outcome:
        if (
            self.strong_tier is not None
            and "tier" in self.rungs
            and self.strong_tier not in ctx.tiers
        ):
            raise InvalidRequest(
                f"cascade: strong_tier {self.strong_tier!r} is not available to this run; "
                f"tiers: {sorted(ctx.tiers) or 'none'}",
                param="strong_tier",
            )
        all_candidates: list[Candidate] = []
        all_scores: list[Score] = []
        best: int | None = None
        rungs = self.plan()
        for index, rung in enumerate(rungs):
            spent_before = ctx.backend.usage.completion_tokens
            climbed = None
            with ctx.anytime():
                climbed = await self._climb(problem, ctx, rung)
            if climbed is None:
                ctx.tracer.event("rung", index=index, kind=rung.kind, skipped="budget")
                break
            candidates, scores = climbed
            if not candidates:
                break
            chosen = self._choose(candidates, scores, all_candidates, problem)
            conf, signal = self._confidence(candidates, chosen, scores, all_candidates)
            offset = len(all_candidates)
            all_candidates.extend(candidates)
            all_scores.extend(scores or [Score(value=conf) for _ in candidates])
            # An answer the budget cut short never replaces a finished one from a lower rung.
            if best is None or not candidates[chosen].truncated or all_candidates[best].truncated:
                best = offset + chosen
            last = index == len(rungs) - 1
            escalate = conf < self.threshold and not last
            ctx.tracer.event(
                "rung",
                index=index,
                kind=rung.kind,
                tier=rung.tier,
                n=rung.n,
                thinking_budget=rung.thinking_budget,
                confidence=conf,
                signal=signal,
                threshold=self.threshold,
                escalate=escalate,
                tokens=ctx.backend.usage.completion_tokens - spent_before,
            )
            if not escalate:
                break
        if self.signal == "verified" and best is not None:
            ctx.tracer.event("verdict", **self._verdict(all_candidates, all_scores, best, ctx))
        return finish(self.name, ctx, all_candidates, best, all_scores)

    def _verdict(
        self, candidates: list[Candidate], scores: list[Score], best: int, ctx: RunContext
    ) -> dict[str, object]:
        """pass / fail / unknown for the chosen answer, and which check said so."""
        chosen = candidates[best]
        if ctx.verifier is not None and scores:
            passed = scores[best].value >= self.threshold and not chosen.truncated
            return {"verdict": "pass" if passed else "fail", "verifier": _name(ctx.verifier)}
        others = [c for i, c in enumerate(candidates) if i != best and c.answer is not None]
        if chosen.answer is None or not others:
            return {"verdict": "unknown", "verifier": None}
        agrees = any(c.answer == chosen.answer for c in others)
        return {"verdict": "pass" if agrees else "fail", "verifier": "agreement"}

    async def _climb(
        self, problem: Problem, ctx: RunContext, rung: Rung
    ) -> tuple[list[Candidate], list[Score]]:
        if rung.kind == "program":
            # Exactly program_aided's request (n=1, greedy), so its samples replay too.
            program = ProgramAided()
            gens = await ctx.generate(ctx.request(problem, messages=program_messages(problem)))
            candidates = [await program.execute(g) for g in gens]
            return candidates, await self._verify(problem, ctx, candidates)
        thinking = (
            ThinkingConfig(budget_tokens=rung.thinking_budget, min_tokens=0)
            if rung.thinking_budget
            else None
        )
        want_logprobs = self.signal in ("auto", "logprob") and rung.n == 1
        req = ctx.request(
            problem,
            n=rung.n,
            temperature=rung.temperature,
            thinking=thinking,
            logprobs=want_logprobs and ctx.backend.capabilities.logprobs,
        )
        gens = await ctx.generate(req, tier=rung.tier)
        candidates = [to_candidate(g, problem.task) for g in gens]
        return candidates, await self._verify(problem, ctx, candidates)

    async def _verify(
        self, problem: Problem, ctx: RunContext, candidates: list[Candidate]
    ) -> list[Score]:
        if ctx.verifier is None or self.signal not in ("auto", "verifier", "verified"):
            return []
        if not candidates:
            return []
        return list(await ctx.verifier.score(problem, candidates))

    def _choose(
        self,
        candidates: list[Candidate],
        scores: list[Score],
        earlier: list[Candidate],
        problem: Problem,
    ) -> int:
        if scores:
            return max(
                range(len(candidates)),
                key=lambda i: (
                    not candidates[i].truncated,
                    -math.inf if math.isnan(scores[i].value) else scores[i].value,
                ),
            )
        if len(candidates) > 1:
            chosen = majority_vote(candidates)
            return 0 if chosen is None else chosen
        return 0

    def _confidence(
        self,
        candidates: list[Candidate],
        chosen: int,
        scores: list[Score],
        earlier: list[Candidate],
    ) -> tuple[float, str]:
        if self.signal == "verified" and not scores:
            return _independent_agreement(candidates, chosen, earlier)
        if self.signal == "agreement" and len(candidates) == 1:
            # One sample agrees with itself; agreement then means "with the earlier rungs".
            pool = [*earlier, candidates[0]]
            answer = candidates[0].answer
            if candidates[0].truncated or answer is None:
                return 0.0, "agreement"
            return sum(1 for c in pool if c.answer == answer) / len(pool), "agreement"
        return confidence(candidates, chosen, scores)


def _independent_agreement(
    candidates: list[Candidate], chosen: int, earlier: list[Candidate]
) -> tuple[float, str]:
    """Confidence from agreement between independent solutions only.

    A lone first answer is unchecked (0); a later one counts as verified when an earlier
    rung reached the same answer; several samples give their vote share, which needs at
    least two of them to agree.
    """
    answer = candidates[chosen].answer if candidates else None
    if not candidates or candidates[chosen].truncated or answer is None:
        return 0.0, "agreement"
    if any(c.answer == answer for c in earlier):
        return 1.0, "agreement"
    if len(candidates) > 1:
        votes = sum(1 for c in candidates if not c.truncated and c.answer == answer)
        return (votes / len(candidates) if votes > 1 else 0.0), "agreement"
    return 0.0, "agreement"


def _name(verifier: object) -> str:
    return str(getattr(verifier, "kind", None) or type(verifier).__name__)
