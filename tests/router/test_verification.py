"""The verifier a request implies, per request shape, and the router carrying it in its plan."""

from __future__ import annotations

import pytest

from ponder.config import RouteClassSettings, RouterSettings
from ponder.errors import InvalidRequest
from ponder.router.policy import Router
from ponder.router.verification import infer_verifier, response_format_spec

DOCTEST = (
    'Complete the function.\n\ndef double(x):\n    """Twice x.\n    >>> double(2)\n    4\n'
    '    >>> double(-1)\n    -2\n    """\n'
)
NO_EXAMPLES = "Write a Python function slugify(title) that lower-cases and joins words with '-'."
WORD = (
    "A baker makes 12 trays of 18 rolls, sells 150 rolls in the morning and half of the rest "
    "in the afternoon. How many rolls are left?"
)
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_code_prompt_with_examples_gets_derived_tests() -> None:
    spec = infer_verifier(DOCTEST, "codegen")
    assert spec is not None and spec.type == "tests" and spec.source == "inferred"
    assert len(spec.tests) == 2 and all("double(" in t for t in spec.tests)


def test_code_prompt_without_examples_gets_none() -> None:
    assert infer_verifier(NO_EXAMPLES, "codegen") is None


def test_word_problem_gets_agreement() -> None:
    spec = infer_verifier(WORD, "math")
    assert spec is not None and spec.type == "agreement"


def test_lookup_and_chat_get_none() -> None:
    assert infer_verifier("What is the capital of France?", "lookup") is None
    assert infer_verifier("Tell me a joke", "chat") is None


@pytest.mark.parametrize(
    ("fmt", "schema"),
    [
        ({"type": "json_object"}, {}),
        ({"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA}}, SCHEMA),
    ],
)
def test_response_format_means_schema_validation(fmt: dict, schema: dict) -> None:
    spec = infer_verifier(WORD, "math", response_format=fmt)
    assert spec is not None and spec.type == "json_schema" and spec.source == "response_format"
    assert dict(spec.schema or {}) == schema
    assert response_format_spec({"type": "text"}) is None


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": "xml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"schema": 1}},
    ],
)
def test_bad_response_format_is_a_4xx(fmt: dict) -> None:
    with pytest.raises(InvalidRequest) as exc:
        infer_verifier(WORD, "math", response_format=fmt)
    assert exc.value.status == 400 and exc.value.param.startswith("response_format")


def test_request_wins_and_none_turns_inference_off() -> None:
    spec = infer_verifier(DOCTEST, "codegen", requested={"type": "tests", "tests": ["assert 1"]})
    assert spec is not None and spec.tests == ("assert 1",) and spec.source == "request"
    assert infer_verifier(DOCTEST, "codegen", requested={"type": "none"}) is None


def test_class_policy_verifier_applies_and_is_validated() -> None:
    settings = RouterSettings(
        classes={"lookup": RouteClassSettings(verifier={"type": "regex", "pattern": "[A-Z].*"})}
    )
    plan = Router(settings).plan_text("What is the capital of France?")
    assert plan.verifier is not None and plan.verifier.type == "regex"
    assert plan.verifier.source == "class"
    assert plan.as_dict()["verifier"]["pattern"] == "[A-Z].*"
    bad = RouterSettings(classes={"lookup": RouteClassSettings(verifier={"type": "nope"})})
    with pytest.raises(InvalidRequest) as exc:
        Router(bad).plan_text("What is the capital of France?")
    assert exc.value.param == "router.classes.lookup.verifier.type"


class _Opts:
    verifier = {"type": "json_schema", "schema": SCHEMA}
    preset = latency = None


class _Request:
    messages = [{"role": "user", "content": "Where is the Eiffel tower? Reply in JSON."}]
    stream = False
    ponder = _Opts()
    response_format = None


def test_router_plan_reads_the_request_verifier() -> None:
    plan = Router().plan(_Request())
    assert plan.verifier is not None and plan.verifier.type == "json_schema"
    assert any("verifier json_schema (request)" in r for r in plan.reasons)
