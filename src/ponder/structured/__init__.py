"""Structured outputs: JSON-schema, regex and grammar constraints on generated text.

Two halves:

- :mod:`ponder.structured.formats` (no dependencies beyond jsonschema): turn
  OpenAI ``response_format`` into an :class:`~ponder.types.OutputConstraint`
  and validate finished text against one, for upstreams that cannot constrain
  decoding (validate, then retry);
- :mod:`ponder.structured.matcher` (llguidance, lazily imported): compile a
  constraint for one tokenizer and mask the next token of each sequence, so
  an engine that samples over logits can only produce text that matches.

llguidance was chosen by measured per-token mask cost (``benchmarks/structured.py``).
"""

from __future__ import annotations

from ponder.structured.formats import (
    constraint_from_response_format,
    parse_constrained,
    validation_errors,
)
from ponder.structured.matcher import GrammarCompiler, TokenConstraint, grammar_source

__all__ = [
    "GrammarCompiler",
    "TokenConstraint",
    "constraint_from_response_format",
    "grammar_source",
    "parse_constrained",
    "validation_errors",
]
