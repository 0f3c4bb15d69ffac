"""Whether a request's answer was right, as the ledger records it (``verdict``).

A verdict comes from the strategy's own verifier when that verifier makes a
pass/fail claim about the chosen answer (tests passed, the math answer matched,
the JSON validated: ``Score.detail["satisfied"]``), or later from the caller
(``POST /v1/feedback``). Confidence signals (vote share, logprobs) are not
verdicts: a confident answer can be wrong. ``ponder stats`` counts ``correct``
verdicts for its cost per correct answer.
"""

from __future__ import annotations

from typing import Final

from ponder.types import Outcome

__all__ = ["CORRECT", "INCORRECT", "VERDICTS", "outcome_verdict"]

CORRECT: Final = "correct"
INCORRECT: Final = "incorrect"
VERDICTS: Final = (CORRECT, INCORRECT)


def outcome_verdict(outcome: Outcome) -> str | None:
    """``correct``/``incorrect`` when the run's verifier judged the chosen answer, else None."""
    if outcome.chosen is None or not 0 <= outcome.chosen < len(outcome.scores):
        return None
    satisfied = outcome.scores[outcome.chosen].detail.get("satisfied")
    if not isinstance(satisfied, bool):
        return None
    return CORRECT if satisfied else INCORRECT
