"""Code execution verifier: public tests from the prompt only, scoring, feedback."""

from __future__ import annotations

from ponder.types import Candidate, Problem, as_messages
from ponder.verifiers.code import (
    CodeExecutionVerifier,
    assemble_program,
    public_tests_from_prompt,
)

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
    assert "os.kill" in score.detail["feedback"]


def test_assemble_adds_prompt_imports_to_a_full_function_and_completes_a_body() -> None:
    full = assemble_program(GOOD, PROMPT, "longest")
    body = assemble_program("    return max(strings, key=len)\n", PROMPT, "longest")

    assert full.startswith("from typing import List\n")
    assert body.startswith(PROMPT) and body.endswith("return max(strings, key=len)\n")
