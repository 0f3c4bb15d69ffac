"""OpenAI response_format -> OutputConstraint, and post-hoc validation (for upstreams)."""

from __future__ import annotations

import pytest

from ponder.errors import InvalidRequest
from ponder.structured import constraint_from_response_format, parse_constrained, validation_errors
from ponder.types import OutputConstraint

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_text_and_missing_formats_mean_no_constraint():
    assert constraint_from_response_format(None) is None
    assert constraint_from_response_format({"type": "text"}) is None


def test_json_object_and_json_schema():
    assert constraint_from_response_format({"type": "json_object"}) == OutputConstraint(
        kind="json_object"
    )
    c = constraint_from_response_format(
        {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    )
    assert c is not None and c.kind == "json_schema" and c.json_schema == SCHEMA


@pytest.mark.parametrize(
    ("fmt", "param"),
    [
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        (
            {"type": "json_schema", "json_schema": {"schema": SCHEMA}},
            "response_format.json_schema.name",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "bogus"}}},
            "response_format.json_schema.schema",
        ),
        ("json", "response_format"),
    ],
)
def test_malformed_formats_are_400s_naming_the_field(fmt, param):
    with pytest.raises(InvalidRequest) as info:
        constraint_from_response_format(fmt)
    assert info.value.param == param
    assert info.value.status == 400


def test_validation_reports_each_violation():
    c = OutputConstraint(kind="json_schema", json_schema=SCHEMA)
    assert validation_errors('{"name": "Ada", "age": 36}', c) == []
    errors = validation_errors('{"name": "Ada", "age": -1, "x": 1}', c)
    assert any(e.startswith("age:") for e in errors)
    assert any("Additional properties" in e for e in errors)
    assert validation_errors("{'name': 1}", c)[0].startswith("not valid JSON")
    assert validation_errors("[1]", OutputConstraint(kind="json_object")) == ["not a JSON object"]
    assert validation_errors("yes", OutputConstraint(kind="regex", pattern="yes|no")) == []
    assert validation_errors("maybe", OutputConstraint(kind="regex", pattern="yes|no"))


def test_parse_constrained_returns_the_value_or_raises():
    c = OutputConstraint(kind="json_schema", json_schema=SCHEMA)
    assert parse_constrained('{"name": "Ada", "age": 36}', c) == {"name": "Ada", "age": 36}
    with pytest.raises(ValueError, match="age"):
        parse_constrained('{"name": "Ada"}', c)
