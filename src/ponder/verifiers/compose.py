"""Verifier composition: weighted sums and gate-then-score."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ponder.types import Candidate, Problem, Score
from ponder.verifiers.base import Verifier

__all__ = ["GateThenScore", "WeightedSum"]


@dataclass
class WeightedSum:
    """Score = sum of ``weight * score`` over the parts; the parts' scores go in ``detail``."""

    parts: Sequence[tuple[Verifier, float]]

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        totals = [0.0] * len(candidates)
        details: list[dict[str, float]] = [{} for _ in candidates]
        for k, (verifier, weight) in enumerate(self.parts):
            scores = await verifier.score(problem, candidates)
            for i, s in enumerate(scores):
                value = s.value if math.isfinite(s.value) else -1e9
                totals[i] += weight * value
                details[i][f"{k}:{type(verifier).__name__}"] = s.value
        return [Score(value=t, detail={"parts": d}) for t, d in zip(totals, details, strict=True)]


@dataclass
class GateThenScore:
    """Candidates must pass ``gate`` (score >= ``threshold``); only those are scored.

    Rejected candidates score ``rejected`` and never reach the (possibly costly) scorer.
    The gate's feedback is kept, so self-refinement sees why a candidate was rejected.
    """

    gate: Verifier
    scorer: Verifier
    threshold: float = 1.0
    rejected: float = 0.0

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        gates = await self.gate.score(problem, candidates)
        passed = [i for i, g in enumerate(gates) if g.value >= self.threshold]
        inner = await self.scorer.score(problem, [candidates[i] for i in passed]) if passed else []
        out = [
            Score(value=self.rejected, detail={**g.detail, "gate": g.value, "satisfied": False})
            for g in gates
        ]
        for i, s in zip(passed, inner, strict=True):
            out[i] = Score(value=s.value, detail={**s.detail, "gate": gates[i].value})
        return out
