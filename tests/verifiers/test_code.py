"""Code execution verifier: public tests from the prompt only, scoring, feedback."""

from __future__ import annotations

import inspect
import os

import pytest

from ponder.config import SandboxSettings
from ponder.types import Candidate, Problem, as_messages
from ponder.verifiers.code import (
    CodeExecutionVerifier,
    assemble_program,
    probe_calls,
    public_tests_from_prompt,
)
from ponder.verifiers.sandbox import SandboxUnavailable, sandbox_status


@pytest.fixture(autouse=True)
def _sandbox_for_scoring(request: pytest.FixtureRequest) -> None:
    # The async tests run candidates; they need the OS sandbox (CI must have it).
    if not inspect.iscoroutinefunction(request.function) or "no_isolation" in request.node.name:
        return
    reason = sandbox_status()
    if reason is not None:
        if os.environ.get("PONDER_REQUIRE_SANDBOX") == "1":
            pytest.fail(f"PONDER_REQUIRE_SANDBOX=1 but {reason}")
        pytest.skip(f"no sandbox on this host: {reason}")


PROMPT = '''from typing import List


def longest(strings: List[str]) -> str:
    """ Return the longest string; None for an empty list.
    >>> longest([])

    >>> longest(['a', 'bb', 'c'])
    'bb'
    >>> longest(['x']) == 'x'
    >>> longest(['ab', 'c']) # first wins on ties
    'ab'
    longest(['aaa', 'b']) ➞ 'aaa'
    longest(['q', 'rr']) returns 'rr'.
    longest(z) => 'z'
    """
'''

GOOD = "```python\ndef longest(strings: List[str]) -> str:\n    return max(strings, key=len) if strings else None\n```"
BAD = "```python\ndef longest(strings):\n    return strings[0] if strings else None\n```"


def problem(**metadata: object) -> Problem:
    return Problem(
        messages=as_messages(PROMPT),
        task="code",
        metadata={"prompt_code": PROMPT, "entry_point": "longest", **metadata},
    )


def test_public_tests_come_from_every_example_format_in_the_prompt() -> None:
    tests = public_tests_from_prompt(PROMPT, "longest")

    joined = "\n".join(tests)
    assert len(tests) == 6
    assert "(longest([])), None" in joined  # doctest prints nothing for None
    assert "assert longest(['x']) == 'x'" in joined
    assert "'aaa'" in joined and "'rr'" in joined
    assert "longest(z)" not in joined  # prose, not code
    assert "#" not in joined  # comments would swallow the rest of a test


def test_entry_point_defaults_to_the_last_function_in_the_prompt() -> None:
    assert public_tests_from_prompt(PROMPT) == public_tests_from_prompt(PROMPT, "longest")


async def test_scores_are_the_share_of_public_tests_passed_with_feedback() -> None:
    good, bad = await CodeExecutionVerifier().score(
        problem(), [Candidate(text=GOOD), Candidate(text=BAD)]
    )

    assert good.value == 1.0 and good.detail["satisfied"]
    assert 0 < bad.value < 1
    assert "longest(['a', 'bb', 'c']) returned 'a', expected 'bb'" in bad.detail["feedback"]


async def test_hidden_tests_are_never_used_for_scoring() -> None:
    # A hidden test the good solution fails must not change its score.
    p = problem(test="def check(c):\n    assert c(['a']) == 'WRONG'\n")

    (score,) = await CodeExecutionVerifier().score(p, [Candidate(text=GOOD)])

    assert score.value == 1.0


async def test_explicit_public_tests_replace_derived_ones() -> None:
    p = problem(public_tests=["assert longest(['a', 'bbb']) == 'bbb'"])

    good, bad = await CodeExecutionVerifier().score(p, [Candidate(text=GOOD), Candidate(text=BAD)])

    assert (good.value, bad.value) == (1.0, 0.0)


async def test_a_hostile_candidate_scores_zero() -> None:
    evil = "```python\nimport os\nos.kill(os.getppid(), 9)\n```"

    (score,) = await CodeExecutionVerifier(timeout_s=2).score(problem(), [Candidate(text=evil)])

    assert score.value == 0.0
    assert "killed by signal SIGKILL" in score.detail["feedback"]


def test_assemble_adds_prompt_imports_to_a_full_function_and_completes_a_body() -> None:
    full = assemble_program(GOOD, PROMPT, "longest")
    body = assemble_program("    return max(strings, key=len)\n", PROMPT, "longest")

    assert full.startswith("from typing import List\n")
    assert body.startswith(PROMPT) and body.endswith("return max(strings, key=len)\n")


HELPER_PROMPT = '''def _square(x):
    return x * x


def sum_squares(xs):
    """Sum of squares.
    >>> sum_squares([1, 2])
    5
    """
'''


def test_assemble_keeps_the_prompts_helper_functions_for_a_full_function() -> None:
    reply = "```python\ndef sum_squares(xs):\n    return sum(_square(x) for x in xs)\n```"

    program = assemble_program(reply, HELPER_PROMPT, "sum_squares")
    namespace: dict[str, object] = {}
    exec(program, namespace)  # noqa: S102 - our own fixture

    assert namespace["sum_squares"]([1, 2, 3]) == 14  # type: ignore[operator]


async def test_a_candidate_using_a_prompt_helper_passes_its_public_tests() -> None:
    reply = "```python\ndef sum_squares(xs):\n    return sum(_square(x) for x in xs)\n```"
    prob = Problem(
        messages=as_messages(HELPER_PROMPT),
        task="code",
        metadata={"prompt_code": HELPER_PROMPT, "entry_point": "sum_squares"},
    )

    (score,) = await CodeExecutionVerifier(timeout_s=5).score(prob, [Candidate(text=reply)])

    assert score.value == 1.0, score.detail


def test_probe_calls_mutate_example_arguments_and_leave_the_examples_out() -> None:
    probes = probe_calls(HELPER_PROMPT, "sum_squares", limit=4)

    assert probes == probe_calls(HELPER_PROMPT, "sum_squares", limit=4)  # deterministic
    assert probes == [
        "sum_squares([2, 1])",
        "sum_squares([2])",
        "sum_squares([1, 2, 1])",
        "sum_squares([2, 3])",
    ]
    assert "sum_squares([1, 2])" not in probe_calls(HELPER_PROMPT, "sum_squares", limit=50)
    assert probe_calls(HELPER_PROMPT, None) == []
    assert probe_calls("no examples here", "f") == []


# Three candidates pass the one public example; only two compute the sum of
# squares, the other hard-codes the example's answer.
CORRECT_A = "```python\ndef sum_squares(xs):\n    return sum(x * x for x in xs)\n```"
CORRECT_B = "```python\ndef sum_squares(xs):\n    t = 0\n    for x in xs:\n        t += x ** 2\n    return t\n```"
OVERFIT = "```python\ndef sum_squares(xs):\n    return 5\n```"
WRONG = "```python\ndef sum_squares(xs):\n    return sum(xs)\n```"


async def test_tied_candidates_are_grouped_by_behaviour_on_new_inputs() -> None:
    prob = Problem(
        messages=as_messages(HELPER_PROMPT),
        task="code",
        metadata={"prompt_code": HELPER_PROMPT, "entry_point": "sum_squares"},
    )
    candidates = [Candidate(text=t) for t in (OVERFIT, CORRECT_A, WRONG, CORRECT_B)]

    scores = await CodeExecutionVerifier(timeout_s=5).score(prob, candidates)

    assert [s.value for s in scores] == [1.0, 1.0, 0.0, 1.0]
    assert scores[1].detail["cluster"] == scores[3].detail["cluster"]
    assert scores[0].detail["cluster"] != scores[1].detail["cluster"]
    assert [s.detail.get("cluster_size") for s in scores] == [1, 2, None, 2]


async def test_an_endless_probe_costs_one_probe_not_the_whole_signature() -> None:
    loops_on_big = (
        "```python\ndef sum_squares(xs):\n    while len(xs) > 2:\n        pass\n"
        "    return sum(x * x for x in xs)\n```"
    )
    prob = Problem(
        messages=as_messages(HELPER_PROMPT),
        task="code",
        metadata={"prompt_code": HELPER_PROMPT, "entry_point": "sum_squares"},
    )
    verifier = CodeExecutionVerifier(timeout_s=5, probes=4, probe_timeout_s=0.2)

    scores = await verifier.score(prob, [Candidate(text=loops_on_big), Candidate(text=CORRECT_A)])

    # Both pass the example; they differ only on the 3-element probe, which times out.
    assert [s.value for s in scores] == [1.0, 1.0]
    assert scores[0].detail["cluster"] != scores[1].detail["cluster"]
    assert scores[0].detail["cluster_size"] == 1


async def test_scoring_on_a_host_with_no_isolation_refuses_instead_of_running() -> None:
    verifier = CodeExecutionVerifier(sandbox=SandboxSettings(bwrap="/nonexistent/bwrap"))

    with pytest.raises(SandboxUnavailable, match="code verification unavailable on this host"):
        await verifier.score(problem(), [Candidate(text=GOOD)])


async def test_a_candidate_cannot_forge_its_public_tests() -> None:
    # It prints pass lines, shadows the builtins the tests use and returns an object
    # equal to everything: the tests are judged outside it, on plain values.
    forger = (
        "```python\n"
        "import json\n"
        "print(json.dumps({'test': 0, 'passed': True}))\n"
        "repr = lambda *a: 'bb'\n"
        "class Any:\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "def longest(strings):\n"
        "    return Any()\n"
        "```"
    )

    (score,) = await CodeExecutionVerifier().score(problem(), [Candidate(text=forger)])

    assert score.value == 0.0 and not score.detail["satisfied"]
