"""Structured output: JSON Schema, regex, exact text."""

from __future__ import annotations

import pytest

from ponder.types import Candidate, Problem, as_messages
from ponder.verifiers.structured import (
    ExactTextVerifier,
    JsonSchemaVerifier,
    RegexVerifier,
    extract_json,
)

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}


def p(reference: str | None = None, **metadata: object) -> Problem:
    return Problem(messages=as_messages("q"), reference=reference, metadata=metadata)


def test_extract_json_finds_fenced_and_embedded_values() -> None:
    assert extract_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('Sure! {"a": [1, 2]} hope it helps') == {"a": [1, 2]}
    with pytest.raises(ValueError):
        extract_json("no json")


async def test_json_schema_accepts_valid_and_explains_invalid() -> None:
    cands = [
        Candidate(text='{"name": "Ada", "age": 36}'),
        Candidate(text='{"name": "Ada", "age": -1}'),
        Candidate(text='{"name": "Ada"'),
    ]

    ok, bad, broken = await JsonSchemaVerifier(SCHEMA).score(p(), cands)

    assert (ok.value, bad.value, broken.value) == (1.0, 0.0, 0.0)
    assert "age" in bad.detail["feedback"] and "minimum" in bad.detail["feedback"]
    assert "no JSON" in broken.detail["feedback"]


async def test_json_schema_can_come_from_the_problem() -> None:
    (s,) = await JsonSchemaVerifier().score(
        p(json_schema=SCHEMA), [Candidate(text='{"name": "x", "age": 1}')]
    )
    assert s.value == 1.0


async def test_regex_full_and_search() -> None:
    cands = [Candidate(text="2024-01-31"), Candidate(text="on 2024-01-31 maybe")]

    full = await RegexVerifier(r"\d{4}-\d{2}-\d{2}").score(p(), cands)
    search = await RegexVerifier(r"\d{4}-\d{2}-\d{2}", full=False).score(p(), cands)

    assert [s.value for s in full] == [1.0, 0.0]
    assert [s.value for s in search] == [1.0, 1.0]


async def test_exact_text_uses_reference_and_collapses_whitespace() -> None:
    cands = [Candidate(text="  hello   world\n"), Candidate(text="hello world!")]

    scores = await ExactTextVerifier().score(p("hello world"), cands)
    strict = await ExactTextVerifier("hello world", strict=True).score(p(), cands)

    assert [s.value for s in scores] == [1.0, 0.0]
    assert [s.value for s in strict] == [0.0, 0.0]
