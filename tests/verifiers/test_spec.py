"""Verifier specs (``ponder.verifier``, a class's ``verifier``): validation and building."""

from __future__ import annotations

import pytest

from ponder.errors import InvalidRequest
from ponder.types import Candidate, Outcome, Problem, Score, as_messages
from ponder.verifiers.spec import build_verifier, parse_verifier_spec, verdict_of

PROBLEM = Problem(messages=as_messages("def inc(x):\n    return ..."), task="code")


@pytest.mark.parametrize(
    ("raw", "param", "says"),
    [
        ("tests", "ponder.verifier", "must be an object"),
        ({"type": "unit"}, "ponder.verifier.type", "must be one of"),
        ({"type": "tests", "tests": "assert f()"}, "ponder.verifier", "list of strings"),
        ({"type": "tests", "tests": ["assert ("]}, "ponder.verifier.tests", "not valid Python"),
        ({"type": "json_schema", "schema": {"type": 3}}, "ponder.verifier.schema", "JSON Schema"),
        ({"type": "regex", "pattern": "("}, "ponder.verifier.pattern", "not a valid regex"),
        ({"type": "regex", "pattern": "x", "flags": 2}, "ponder.verifier.flags", "unknown field"),
    ],
)
def test_bad_specs_are_4xx_with_the_field(raw: object, param: str, says: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_verifier_spec(raw)
    assert exc.value.status == 400
    assert exc.value.param == param
    assert says in exc.value.message


async def test_tests_spec_runs_the_given_tests() -> None:
    spec = parse_verifier_spec({"type": "tests", "tests": ["assert inc(1) == 2"]})
    verifier = build_verifier(spec)
    assert verifier is not None
    good = Candidate(text="```python\ndef inc(x):\n    return x + 1\n```")
    bad = Candidate(text="```python\ndef inc(x):\n    return x\n```")
    scores = await verifier.score(PROBLEM, [good, bad])
    assert [s.value for s in scores] == [1.0, 0.0]


async def test_json_schema_and_regex_specs() -> None:
    schema = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
    v = build_verifier(parse_verifier_spec({"type": "json_schema", "schema": schema}))
    assert v is not None
    scores = await v.score(PROBLEM, [Candidate(text='{"n": 3}'), Candidate(text='{"n": "3"}')])
    assert [s.value for s in scores] == [1.0, 0.0]
    r = build_verifier(parse_verifier_spec({"type": "regex", "pattern": r"\d+"}))
    assert r is not None
    assert [
        s.value for s in await r.score(PROBLEM, [Candidate(text="42"), Candidate(text="x")])
    ] == [
        1.0,
        0.0,
    ]


def test_agreement_and_none_build_no_scorer_and_judge_needs_a_model() -> None:
    assert build_verifier(parse_verifier_spec({"type": "agreement"})) is None
    assert build_verifier(parse_verifier_spec({"type": "none"})) is None
    with pytest.raises(InvalidRequest, match="judge"):
        build_verifier(parse_verifier_spec({"type": "judge"}))


def test_verdict_reads_the_chosen_candidates_score() -> None:
    spec = parse_verifier_spec({"type": "json_schema"})
    out = Outcome(
        answer="{}", strategy="best_of_n", candidates=[Candidate(text="x"), Candidate(text="{}")],
        scores=[Score(value=0.0, detail={"satisfied": False}), Score(value=1.0, detail={"satisfied": True})],
        chosen=1,
    )  # fmt: skip
    assert verdict_of(out, spec) == {"verdict": "pass", "verifier": "json_schema"}
    assert verdict_of(out.model_copy(update={"chosen": 0}), spec)["verdict"] == "fail"
    assert verdict_of(out, None) == {"verdict": "unknown", "verifier": None}
