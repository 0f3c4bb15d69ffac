"""A verifier named as data: ``{"type": "tests", ...}`` from a request or a class policy.

The request field ``ponder.verifier`` and ``verifier = {...}`` under
``[router.classes.<name>]`` use the same shape:

- ``{"type": "tests", "tests": ["assert f(1) == 2", ...]}``: run the answer's code
  against the given assert snippets (no ``tests``: those derived from the prompt's
  examples);
- ``{"type": "json_schema", "schema": {...}}``: the answer must hold JSON valid
  under the schema (no ``schema``: any JSON value);
- ``{"type": "regex", "pattern": "...", "full": true}``;
- ``{"type": "judge"}``: the serving model rates the answer (needs a backend);
- ``{"type": "agreement"}``: independent solutions must agree (no extra check);
- ``{"type": "none"}``: no verifier, even where one would be inferred.

:func:`parse_verifier_spec` validates the shape (a :class:`InvalidRequest` naming the
field otherwise); :func:`build_verifier` turns a valid spec into a
:class:`~ponder.verifiers.base.Verifier`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ponder.errors import InvalidRequest
from ponder.types import Candidate, Problem, Score
from ponder.verifiers.base import Verifier

__all__ = [
    "VERIFIER_TYPES",
    "VerifierSpec",
    "build_verifier",
    "parse_verifier_spec",
    "verdict_of",
]

VERIFIER_TYPES = ("tests", "json_schema", "regex", "judge", "agreement", "none")
_ANY_JSON: dict[str, Any] = {}
_MAX_TESTS = 64
_MAX_TEST_CHARS = 4000


@dataclass(frozen=True)
class VerifierSpec:
    """A validated verifier spec, and where it came from (request, class policy, inferred)."""

    type: str
    tests: tuple[str, ...] = ()
    schema: Mapping[str, Any] | None = None
    pattern: str | None = None
    full: bool = True
    source: str = "request"
    reason: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "source": self.source}
        if self.tests:
            out["tests"] = list(self.tests)
        if self.schema is not None:
            out["schema"] = dict(self.schema)
        if self.pattern is not None:
            out["pattern"], out["full"] = self.pattern, self.full
        if self.reason:
            out["reason"] = self.reason
        return out


def _fail(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def parse_verifier_spec(
    raw: Any, *, param: str = "ponder.verifier", source: str = "request"
) -> VerifierSpec:
    """Validate ``raw`` (a dict as sent) into a :class:`VerifierSpec`; 400-style errors."""
    if isinstance(raw, VerifierSpec):
        return raw
    if not isinstance(raw, Mapping):
        raise _fail(
            f'{param} must be an object such as {{"type": "tests", "tests": [...]}}, '
            f"got {type(raw).__name__}",
            param,
        )
    kind = raw.get("type")
    if kind not in VERIFIER_TYPES:
        raise _fail(
            f"{param}.type must be one of {', '.join(VERIFIER_TYPES)}, got {kind!r}",
            f"{param}.type",
        )
    allowed = {
        "tests": {"type", "tests"},
        "json_schema": {"type", "schema"},
        "regex": {"type", "pattern", "full"},
        "judge": {"type"},
        "agreement": {"type"},
        "none": {"type"},
    }[kind]
    extra = sorted(set(raw) - allowed)
    if extra:
        raise _fail(
            f"{param}: unknown field(s) {extra} for type {kind!r}; allowed: {sorted(allowed)}",
            f"{param}.{extra[0]}",
        )
    if kind == "tests":
        tests = raw.get("tests", [])
        if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
            raise _fail(f"{param}.tests must be a list of strings (assert snippets)", param)
        if len(tests) > _MAX_TESTS or any(len(t) > _MAX_TEST_CHARS for t in tests):
            raise _fail(
                f"{param}.tests: at most {_MAX_TESTS} tests of {_MAX_TEST_CHARS} characters",
                f"{param}.tests",
            )
        for i, t in enumerate(tests):
            try:
                compile(t, f"<test {i}>", "exec")
            except SyntaxError as exc:
                raise _fail(
                    f"{param}.tests[{i}] is not valid Python: {exc.msg}", f"{param}.tests"
                ) from None
        return VerifierSpec("tests", tests=tuple(tests), source=source)
    if kind == "json_schema":
        schema = raw.get("schema", _ANY_JSON)
        if not isinstance(schema, Mapping):
            raise _fail(f"{param}.schema must be a JSON Schema object", f"{param}.schema")
        _check_schema(schema, f"{param}.schema")
        return VerifierSpec("json_schema", schema=dict(schema), source=source)
    if kind == "regex":
        pattern, full = raw.get("pattern"), raw.get("full", True)
        if not isinstance(pattern, str) or not pattern:
            raise _fail(f"{param}.pattern must be a non-empty string", f"{param}.pattern")
        if not isinstance(full, bool):
            raise _fail(f"{param}.full must be true or false", f"{param}.full")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _fail(
                f"{param}.pattern is not a valid regex: {exc}", f"{param}.pattern"
            ) from None
        return VerifierSpec("regex", pattern=pattern, full=full, source=source)
    return VerifierSpec(kind, source=source)


def _check_schema(schema: Mapping[str, Any], param: str) -> None:
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - depends on the install
        return
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise _fail(f"{param} is not a valid JSON Schema: {exc.message}", param) from None


@dataclass
class _TestsVerifier:
    """The code verifier with the spec's tests (or the prompt's examples) as public tests."""

    tests: tuple[str, ...]
    kind: str = "tests"

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        from ponder.verifiers.code import CodeExecutionVerifier

        if self.tests:
            metadata = {**problem.metadata, "public_tests": list(self.tests)}
            problem = problem.model_copy(update={"metadata": metadata})
        return await CodeExecutionVerifier().score(problem, candidates)


@dataclass
class _Named:
    """A verifier with the spec type as its name (what the verdict reports)."""

    inner: Verifier
    kind: str

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        return list(await self.inner.score(problem, candidates))


def build_verifier(spec: VerifierSpec, backend: Any = None) -> Verifier | None:
    """The verifier of ``spec``; None for ``agreement`` / ``none`` (no scoring call).

    ``judge`` needs the ``backend`` that judges (the serving tier).
    """
    from ponder.verifiers.judge import LLMJudgeVerifier
    from ponder.verifiers.structured import JsonSchemaVerifier, RegexVerifier

    if spec.type == "tests":
        return _TestsVerifier(spec.tests)
    if spec.type == "json_schema":
        return _Named(JsonSchemaVerifier(schema=dict(spec.schema or {})), "json_schema")
    if spec.type == "regex":
        assert spec.pattern is not None
        return _Named(RegexVerifier(spec.pattern, full=spec.full), "regex")
    if spec.type == "judge":
        if backend is None:
            raise InvalidRequest(
                "a judge verifier needs a model to judge with; none is available here",
                param="ponder.verifier",
            )
        return _Named(LLMJudgeVerifier(backend), "judge")
    return None


def verdict_of(outcome: Any, spec: VerifierSpec | None) -> dict[str, Any]:
    """``{"verdict": pass|fail|unknown, "verifier": name}`` of an outcome's chosen answer.

    A cascade's own ``verdict`` trace event wins (it knows about agreement); otherwise
    the chosen candidate's verifier score (``satisfied``, or a score of 1.0) decides.
    """
    for event in reversed(getattr(outcome, "trace", None) or []):
        if event.name == "verdict":
            return {"verdict": event.data.get("verdict"), "verifier": event.data.get("verifier")}
    name = spec.type if spec is not None else None
    scores, chosen = getattr(outcome, "scores", []), getattr(outcome, "chosen", None)
    if spec is None or spec.type in ("agreement", "none") or chosen is None or not scores:
        return {"verdict": "unknown", "verifier": name}
    score = scores[chosen]
    satisfied = score.detail.get("satisfied")
    passed = bool(satisfied) if satisfied is not None else score.value >= 1.0
    return {"verdict": "pass" if passed else "fail", "verifier": name}
