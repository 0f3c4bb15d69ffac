"""Structured-output verifiers: JSON against a JSON Schema, regular expressions, exact text."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ponder.types import Candidate, Problem, Score
from ponder.verifiers.answers import extract_code

__all__ = ["ExactTextVerifier", "JsonSchemaVerifier", "RegexVerifier", "extract_json"]

_FENCE = re.compile(r"```")


def extract_json(text: str) -> Any:
    """The JSON value in ``text``: the whole text, a fenced block, or the first object/array.

    Raises ``ValueError`` when there is none.
    """
    tries = [text.strip()]
    if _FENCE.search(text):
        tries.append(extract_code(text, "json").strip())
    for opener in "{[":
        start = text.find(opener)
        if start >= 0:
            tries.append(text[start:])
    decoder = json.JSONDecoder()
    for t in tries:
        if not t:
            continue
        try:
            value, _ = decoder.raw_decode(t)
        except ValueError:
            continue
        return value
    raise ValueError("no JSON value found in the answer")


@dataclass
class JsonSchemaVerifier:
    """1.0 when the answer holds JSON that validates against ``schema`` (or
    ``problem.metadata["json_schema"]``), else 0.0 with the reason as feedback.

    Needs ``jsonschema`` (``pip install 'ponder[verify]'``).
    """

    schema: dict[str, Any] | None = None

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        try:
            import jsonschema
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "JsonSchemaVerifier needs jsonschema; install it with pip install 'ponder[verify]'"
            ) from exc
        schema = self.schema if self.schema is not None else problem.metadata.get("json_schema")
        if schema is None:
            raise ValueError("JsonSchemaVerifier needs a schema (argument or metadata json_schema)")
        validator_cls = jsonschema.validators.validator_for(schema)
        validator_cls.check_schema(schema)
        validator = validator_cls(schema)
        out = []
        for c in candidates:
            try:
                value = extract_json(c.text)
            except ValueError as exc:
                out.append(_fail(str(exc)))
                continue
            errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
            if errors:
                where = "/".join(str(p) for p in errors[0].path) or "(root)"
                out.append(_fail(f"schema violation at {where}: {errors[0].message}"))
            else:
                out.append(Score(value=1.0, detail={"satisfied": True, "feedback": ""}))
        return out


def _fail(why: str) -> Score:
    return Score(value=0.0, detail={"satisfied": False, "feedback": why})


@dataclass
class RegexVerifier:
    """1.0 when ``pattern`` matches the answer text (whole text with ``full=True``)."""

    pattern: str
    full: bool = True
    flags: int = 0

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        rx = re.compile(self.pattern, self.flags)
        out = []
        for c in candidates:
            text = c.text.strip()
            hit = rx.fullmatch(text) if self.full else rx.search(text)
            out.append(
                Score(value=1.0, detail={"satisfied": True, "feedback": ""})
                if hit
                else _fail(f"the answer does not match the pattern {self.pattern!r}")
            )
        return out


@dataclass
class ExactTextVerifier:
    """1.0 when the answer text equals ``expected`` (default: ``problem.reference``).

    Whitespace runs collapse and ends are stripped unless ``strict``.
    """

    expected: str | None = None
    strict: bool = False

    def _norm(self, s: str) -> str:
        return s if self.strict else " ".join(s.split())

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        want = self.expected if self.expected is not None else problem.reference
        if want is None:
            raise ValueError("ExactTextVerifier needs expected text or problem.reference")
        return [
            Score(value=1.0, detail={"satisfied": True, "feedback": ""})
            if self._norm(c.text) == self._norm(want)
            else _fail("the answer is not the expected text")
            for c in candidates
        ]
