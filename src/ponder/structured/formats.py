"""OpenAI ``response_format`` -> :class:`OutputConstraint`, and post-hoc validation."""

from __future__ import annotations

import json
import re
from typing import Any

from ponder.errors import InvalidRequest
from ponder.types import OutputConstraint

__all__ = ["constraint_from_response_format", "parse_constrained", "validation_errors"]

_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def constraint_from_response_format(
    response_format: dict[str, Any] | None, *, param: str = "response_format"
) -> OutputConstraint | None:
    """The constraint an OpenAI ``response_format`` asks for (``None`` for plain text).

    Accepts ``{"type": "text"}``, ``{"type": "json_object"}`` and
    ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``.
    A malformed one is a 400 that says what to send instead.
    """
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise InvalidRequest(
            f"{param} must be an object like {{'type': 'json_object'}}", param=param
        )
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputConstraint(kind="json_object")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise InvalidRequest(
                f"{param}.json_schema must be an object with 'name' and 'schema'",
                param=f"{param}.json_schema",
            )
        name = spec.get("name")
        if not isinstance(name, str) or not _SCHEMA_NAME.match(name):
            raise InvalidRequest(
                f"{param}.json_schema.name must be 1-64 letters, digits, '_' or '-'",
                param=f"{param}.json_schema.name",
            )
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise InvalidRequest(
                f"{param}.json_schema.schema must be a JSON Schema object",
                param=f"{param}.json_schema.schema",
            )
        check_schema(schema, param=f"{param}.json_schema.schema")
        return OutputConstraint(kind="json_schema", json_schema=schema)
    raise InvalidRequest(
        f"{param}.type must be 'text', 'json_object' or 'json_schema', not {kind!r}",
        param=f"{param}.type",
    )


def check_schema(schema: dict[str, Any], *, param: str) -> None:
    """Reject a schema that is not valid JSON Schema (a 400, before any token is spent)."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise InvalidRequest(f"{param} is not a valid JSON Schema: {e.message}", param=param) from e


def parse_constrained(text: str, constraint: OutputConstraint) -> Any:
    """The JSON value of ``text`` for a JSON constraint (raises ``ValueError`` if invalid)."""
    errors = validation_errors(text, constraint)
    if errors:
        raise ValueError("; ".join(errors))
    return json.loads(text)


def validation_errors(text: str, constraint: OutputConstraint) -> list[str]:
    """Why ``text`` does not satisfy ``constraint`` (empty when it does).

    JSON kinds are checked fully; ``regex`` with a full match; ``lark`` cannot be
    checked without the grammar engine and is reported as satisfied.
    """
    if constraint.kind == "regex":
        assert constraint.pattern is not None
        return [] if re.fullmatch(constraint.pattern, text) else ["does not match the pattern"]
    if constraint.kind == "lark":
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return [f"not valid JSON: {e.msg} at position {e.pos}"]
    if constraint.kind == "json_object":
        return [] if isinstance(value, dict) else ["not a JSON object"]
    import jsonschema

    schema = constraint.json_schema or {}
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in validator.iter_errors(value)
    ]
