"""The verifier a request implies, when it names none.

First match wins:

1. the request's own ``ponder.verifier`` (``{"type": "none"}`` turns inference off);
2. ``response_format``: ``json_schema`` -> schema validation, ``json_object`` -> any
   JSON value (the gateway retries once on invalid output);
3. the class policy's ``verifier = {...}``;
4. a code request whose prompt shows examples (doctests, ``f(x) == y``) -> tests derived
   from those examples;
5. a math or word problem -> agreement between independent solutions (the direct answer
   and the executed program's output), which the cascade's ``verified`` signal checks;
6. otherwise none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ponder.errors import InvalidRequest
from ponder.verifiers.spec import VerifierSpec, parse_verifier_spec

__all__ = ["derived_tests", "infer_verifier", "request_verifier", "response_format_spec"]

_CODE_CLASSES = frozenset({"codegen", "autocomplete"})
_MATH_CLASSES = frozenset({"math"})


def response_format_spec(response_format: Any) -> VerifierSpec | None:
    """The schema check an OpenAI ``response_format`` asks for (None for ``text``)."""
    if response_format is None:
        return None
    if hasattr(response_format, "model_dump"):  # the gateway's parsed ResponseFormat
        response_format = response_format.model_dump(by_alias=True, exclude_none=True)
    if not isinstance(response_format, Mapping):
        raise InvalidRequest(
            'response_format must be an object such as {"type": "json_object"}',
            param="response_format",
        )
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        spec = parse_verifier_spec({"type": "json_schema"}, param="response_format")
        return _with(
            spec, "response_format", "response_format json_object: the answer must be JSON"
        )
    if kind == "json_schema":
        wrapper = response_format.get("json_schema")
        if not isinstance(wrapper, Mapping) or not isinstance(wrapper.get("schema"), Mapping):
            raise InvalidRequest(
                'response_format json_schema needs {"json_schema": {"name": ..., "schema": {...}}}',
                param="response_format.json_schema.schema",
            )
        spec = parse_verifier_spec(
            {"type": "json_schema", "schema": dict(wrapper["schema"])},
            param="response_format.json_schema.schema",
        )
        name = wrapper.get("name") or "unnamed"
        return _with(spec, "response_format", f"response_format json_schema {name!r}")
    raise InvalidRequest(
        f"response_format.type must be text, json_object or json_schema, got {kind!r}",
        param="response_format.type",
    )


def _with(spec: VerifierSpec, source: str, reason: str) -> VerifierSpec:
    return VerifierSpec(
        spec.type, spec.tests, spec.schema, spec.pattern, spec.full, source, reason, spec.options
    )


def infer_verifier(
    text: str,
    task_class: str,
    *,
    requested: Any = None,
    response_format: Any = None,
    class_verifier: Mapping[str, Any] | None = None,
    entry_point: str | None = None,
) -> VerifierSpec | None:
    """The verifier for one request (see the module docstring); None when nothing applies."""
    if requested is not None:
        spec = parse_verifier_spec(requested)
        return None if spec.type == "none" else _with(spec, "request", "the request named it")
    from_format = response_format_spec(response_format)
    if from_format is not None:
        return from_format
    if class_verifier is not None:
        spec = parse_verifier_spec(
            class_verifier, param=f"router.classes.{task_class}.verifier", source="class"
        )
        if spec.type == "none":
            return None
        return _with(spec, "class", f"the policy of class {task_class!r} names it")
    if task_class in _CODE_CLASSES:
        tests = derived_tests(text, entry_point)
        if tests:
            spec = VerifierSpec("tests", tests=tuple(tests))
            return _with(
                spec, "inferred", f"{len(tests)} test(s) derived from the prompt's examples"
            )
        return None
    if task_class in _MATH_CLASSES:
        return _with(
            VerifierSpec("agreement"),
            "inferred",
            "a math/word problem: the direct answer must agree with an executed program",
        )
    return None


def derived_tests(text: str, entry_point: str | None = None) -> Sequence[str]:
    """Assert snippets from the examples a code prompt shows (nothing from hidden tests)."""
    from ponder.verifiers.code import public_tests_from_prompt

    return public_tests_from_prompt(text, entry_point)


def request_verifier(request: Any, route: Any = None) -> VerifierSpec | None:
    """The verifier of a gateway request: the router's (when it planned), else the
    request's own ``ponder.verifier`` / ``response_format``."""
    if route is not None:
        spec: VerifierSpec | None = route.verifier
        return spec
    opts = getattr(request, "ponder", None)
    return infer_verifier(
        "",
        "general",
        requested=getattr(opts, "verifier", None),
        response_format=getattr(request, "response_format", None),
    )
