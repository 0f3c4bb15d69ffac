"""Verified escalation: the cascade accepts on a passing verifier or agreeing solutions only."""

from __future__ import annotations

import pytest

from ponder.api import Ponder
from ponder.backends.fake import FunctionBackend, Reply
from ponder.strategies.program import PYTHON_INSTRUCTION
from ponder.types import GenRequest, Problem, as_messages
from ponder.verifiers.spec import build_verifier, parse_verifier_spec, verdict_of

WORD = Problem(
    messages=as_messages("Ann has 17 apples, buys 8 and gives away 5. How many are left?"),
    task="math",
)


def is_program(req: GenRequest) -> bool:
    return PYTHON_INSTRUCTION in (req.messages[-1].content or "")


def math_backend(direct: str, program_prints: str, strong: str | None = None) -> FunctionBackend:
    """Direct answers ``direct``; the program rung's program prints ``program_prints``."""

    def fn(req: GenRequest, i: int) -> Reply:
        if is_program(req):
            return Reply(f"```python\nprint({program_prints})\n```")
        return Reply(f"Answer: {direct}", logprob=-0.01)

    return FunctionBackend(fn)


def strong_backend(answer: str) -> FunctionBackend:
    return FunctionBackend(lambda req, i: Reply(f"Answer: {answer}", logprob=-0.01))


def rungs(outcome) -> list[dict]:
    return [e.data for e in outcome.trace if e.name == "rung" and "confidence" in e.data]


VERIFIED = {"signal": "verified", "threshold": 1.0}


async def test_accepts_when_direct_and_program_agree() -> None:
    small, strong = math_backend("20", "17 + 8 - 5"), strong_backend("99")
    out = await Ponder(small).asolve(
        WORD, "cascade", rungs=["direct", "program", "tier"], strong_tier="strong",
        tier_thinking_budget=0, tiers={"strong": strong}, **VERIFIED,
    )  # fmt: skip
    climbed = rungs(out)
    # A lone direct answer is unchecked, however sure the model is (exp(-0.01) = 0.99).
    assert [r["kind"] for r in climbed] == ["direct", "program"]
    assert climbed[0]["confidence"] == 0.0 and climbed[1]["confidence"] == 1.0
    assert strong.calls == []
    assert verdict_of(out, None) == {"verdict": "pass", "verifier": "agreement"}
    assert out.answer.strip().endswith("20")


async def test_escalates_to_the_strong_tier_on_disagreement() -> None:
    small, strong = math_backend("21", "17 + 8 - 5"), strong_backend("20")
    out = await Ponder(small).asolve(
        WORD, "cascade", rungs=["direct", "program", "tier"], strong_tier="strong",
        tier_thinking_budget=0, tiers={"strong": strong}, **VERIFIED,
    )  # fmt: skip
    assert [r["kind"] for r in rungs(out)] == ["direct", "program", "tier"]
    assert len(strong.calls) == 1
    assert out.answer == "Answer: 20"
    # The strong answer agrees with the executed program: two independent solutions.
    assert verdict_of(out, None)["verdict"] == "pass"


async def test_failed_program_is_not_agreement() -> None:
    def fn(req: GenRequest, i: int) -> Reply:
        if is_program(req):
            return Reply("```python\nraise SystemExit(3)\n```")
        return Reply("Answer: 20", logprob=-0.01)

    out = await Ponder(FunctionBackend(fn)).asolve(
        WORD, "cascade", rungs=["direct", "program"], **VERIFIED
    )
    assert [r["confidence"] for r in rungs(out)] == [0.0, 0.0]
    assert verdict_of(out, None)["verdict"] in ("fail", "unknown")


CODE = Problem(
    messages=as_messages(
        'def add(a, b):\n    """Add two numbers.\n    >>> add(2, 3)\n    5\n    """\n'
    ),
    task="code",
)
GOOD = "```python\ndef add(a, b):\n    return a + b\n```"
BAD = "```python\ndef add(a, b):\n    return a - b\n```"


def code_backend(direct: str, samples: list[str]) -> FunctionBackend:
    def fn(req: GenRequest, i: int) -> Reply:
        return Reply(samples[i % len(samples)]) if req.n > 1 else Reply(direct, logprob=-0.01)

    return FunctionBackend(fn)


@pytest.mark.parametrize(
    ("direct", "samples", "kinds", "verdict", "answer"),
    [
        (GOOD, [BAD], ["direct"], "pass", GOOD),  # tests pass: accepted at once
        (BAD, [BAD, GOOD, BAD, BAD], ["direct", "search"], "pass", GOOD),  # search finds it
        (BAD, [BAD], ["direct", "search", "tier"], "pass", GOOD),  # nothing passes: 1.5B
    ],
)
async def test_code_cascade_climbs_until_the_tests_pass(
    direct: str, samples: list[str], kinds: list[str], verdict: str, answer: str
) -> None:
    spec = parse_verifier_spec({"type": "tests", "tests": ["assert add(2, 3) == 5"]})
    strong = FunctionBackend(lambda req, i: Reply(GOOD))
    out = await Ponder(code_backend(direct, samples)).asolve(
        CODE, "cascade", rungs=["direct", "search", "tier"], strong_tier="strong",
        tier_thinking_budget=0, tiers={"strong": strong}, verifier=build_verifier(spec),
        **VERIFIED,
    )  # fmt: skip
    assert [r["kind"] for r in rungs(out)] == kinds
    assert out.answer == answer
    assert verdict_of(out, spec) == {"verdict": verdict, "verifier": "tests"}


async def test_code_verdict_is_fail_when_nothing_passes() -> None:
    spec = parse_verifier_spec({"type": "tests", "tests": ["assert add(2, 3) == 5"]})
    out = await Ponder(code_backend(BAD, [BAD])).asolve(
        CODE, "cascade", rungs=["direct", "search"], verifier=build_verifier(spec), **VERIFIED
    )
    assert [r["kind"] for r in rungs(out)] == ["direct", "search"]
    assert verdict_of(out, spec) == {"verdict": "fail", "verifier": "tests"}


async def test_program_rung_request_is_program_aideds_request() -> None:
    """The pool replays a cascade's program rung from program_aided's samples."""
    seen: list[GenRequest] = []

    def fn(req: GenRequest, i: int) -> Reply:
        seen.append(req)
        return Reply("```python\nprint(20)\n```")

    await Ponder(FunctionBackend(fn)).asolve(WORD, "program_aided", n=1, seed=3)
    await Ponder(FunctionBackend(fn)).asolve(WORD, "cascade", rungs=["program"], seed=3, **VERIFIED)
    a, b = (r.model_dump(exclude={"logprobs", "top_logprobs"}) for r in seen)
    assert a == b
