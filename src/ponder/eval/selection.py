"""Selection verifiers for eval items: what a strategy may use to choose (never hidden tests)."""

from __future__ import annotations

from ponder.eval.datasets import Item
from ponder.verifiers.base import Verifier

__all__ = ["selection_verifier"]


def selection_verifier(item: Item) -> Verifier | None:
    """HumanEval: public tests derived from the docstring examples; math: none (strategies vote)."""
    if item.kind == "code":
        from ponder.verifiers.code import CodeExecutionVerifier

        # Reads prompt_code / entry_point from the problem metadata (see Item.problem).
        return CodeExecutionVerifier()
    return None
