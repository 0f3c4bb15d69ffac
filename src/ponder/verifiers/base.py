"""The verifier protocol: judge complete candidates for a problem."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ponder.types import Candidate, Problem, Score

__all__ = ["Verifier"]


@runtime_checkable
class Verifier(Protocol):
    """Scores candidates; higher is better. Scores are comparable within one call."""

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]: ...
