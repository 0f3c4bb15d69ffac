"""Code execution verifier: run each candidate program against tests in the sandbox.

Tests come from ``problem.metadata["public_tests"]`` (assert snippets) or, for
problems whose prompt shows examples (HumanEval docstrings), are derived from
the prompt alone by :func:`public_tests_from_prompt`. Hidden tests are for
grading and are never read here.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ponder.types import Candidate, Problem, Score
from ponder.verifiers.answers import extract_code
from ponder.verifiers.sandbox import SandboxLimits, SandboxResult, arun_python

__all__ = ["CodeExecutionVerifier", "assemble_program", "public_tests_from_prompt"]

# A bare "=" is left out: prompts use it for maths ("tri(1) = 3"), not for results.
_SEPARATOR = re.compile(r"\s*(?:==|➞|=>|->|\bshould\s+return\b|\breturns?\b)\s*")
_DEF = re.compile(r"^def\s+(\w+)\s*\(", re.MULTILINE)


def _literal(text: str) -> str | None:
    """``text`` as a Python literal's source if it is one (trailing punctuation forgiven)."""
    for cand in (text.strip(), text.strip().rstrip(".,;")):
        if not cand:
            continue
        try:
            ast.literal_eval(cand)
            # unparse drops comments ("[1, 5] # because ...") that would swallow the test
            return ast.unparse(ast.parse(cand, mode="eval"))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return None


def _call_at(line: str, start: int) -> int | None:
    """End index of the balanced call whose '(' is at ``start``, else None."""
    depth = 0
    quote: str | None = None
    for i in range(start, len(line)):
        ch = line[i]
        if quote:
            if ch == quote and line[i - 1] != "\\":
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _expression(src: str, entry_point: str) -> ast.Expression | None:
    """``src`` parsed as an expression that calls only the entry point and builtins.

    Bare names in an example ("is_happy(a)") are prose, not code: skipped.
    """
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id != entry_point and node.id not in _BUILTINS:
            return None
    return tree


_BUILTINS = frozenset(dir(__builtins__) if isinstance(__builtins__, dict) else dir(builtins))


def _test(call: str, expected: str) -> str:
    return f"__ponder_expect(({call}), {expected}, {call!r})"


def public_tests_from_prompt(prompt: str, entry_point: str | None = None) -> list[str]:
    """Test snippets from the examples a prompt shows; nothing from hidden tests.

    Understands doctest examples (``>>> f(x)`` followed by the expected output)
    and example lines such as ``f(x) == y``, ``f(x) ➞ y``, ``f(x) returns y``.
    Examples whose expected value is not a Python literal are skipped.
    """
    if entry_point is None:
        names = _DEF.findall(prompt)
        entry_point = names[-1] if names else None
    if entry_point is None:
        return []
    lines = prompt.splitlines()
    tests: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith(">>>"):
            call = line[3:].strip()
            expected_lines: list[str] = []
            j = i + 1
            while j < len(lines):
                nxt = lines[j].strip()
                # output ends at a blank line, the next example or the docstring's end
                if not nxt or nxt.startswith((">>>", '"""', "'''")) or f"{entry_point}(" in nxt:
                    break
                expected_lines.append(nxt)
                j += 1
            tree = _expression(call, entry_point) if entry_point in call else None
            if tree is not None:
                src = ast.unparse(tree)
                if expected_lines:
                    expected = _literal(" ".join(expected_lines))
                    if expected is not None:
                        tests.append(_test(src, expected))
                elif isinstance(tree.body, ast.Compare):
                    # ">>> f(x) == y" with no output line: the comparison is the example
                    tests.append(f"assert {src}, {src!r}")
                else:
                    tests.append(_test(src, "None"))  # doctest prints nothing for None
            i = j
            continue
        pos = line.find(entry_point + "(")
        if pos >= 0:
            end = _call_at(line, pos + len(entry_point))
            if end is not None:
                call = line[pos:end]
                sep = _SEPARATOR.match(line, end)
                if sep is not None and sep.end() > end:
                    expected = _literal(line[sep.end() :])
                    tree = _expression(call, entry_point)
                    if expected is not None and tree is not None:
                        tests.append(_test(ast.unparse(tree), expected))
        i += 1
    return list(dict.fromkeys(tests))


def _prompt_imports(prompt_code: str) -> str:
    keep = [
        line
        for line in prompt_code.splitlines()
        if line.startswith(("import ", "from ")) and not line.startswith("from __future__")
    ]
    return "\n".join(keep)


def assemble_program(
    candidate_text: str, prompt_code: str = "", entry_point: str | None = None
) -> str:
    """The program to run for a candidate: its code block, made complete.

    A full function (``def entry_point``) gets the prompt's imports in front; a
    bare completion (a function body) is appended to the prompt, HumanEval style.
    """
    code = extract_code(candidate_text)
    if entry_point and re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.M):
        imports = _prompt_imports(prompt_code)
        return f"{imports}\n{code}" if imports else code
    if prompt_code:
        return prompt_code + code
    return code


@dataclass
class CodeExecutionVerifier:
    """Score = share of public tests a candidate passes in the sandbox.

    Reads ``problem.metadata``: ``public_tests`` (assert snippets), else tests
    derived from ``prompt_code`` (default: the user prompt) and ``entry_point``.
    Without any test the score is 1.0 when the program runs to its end.
    ``detail["feedback"]`` says what failed, for self-refinement.
    """

    timeout_s: float = 5.0
    memory_mb: int = 512
    concurrency: int = 2

    def tests_for(self, problem: Problem) -> list[str]:
        given = problem.metadata.get("public_tests")
        if given is not None:
            return [str(t) for t in given]
        prompt_code = str(problem.metadata.get("prompt_code") or problem.prompt)
        return public_tests_from_prompt(prompt_code, problem.metadata.get("entry_point"))

    async def run(self, problem: Problem, candidate: Candidate) -> SandboxResult:
        program = assemble_program(
            candidate.text,
            str(problem.metadata.get("prompt_code") or ""),
            problem.metadata.get("entry_point"),
        )
        return await arun_python(
            program,
            tests=self.tests_for(problem),
            limits=SandboxLimits(timeout_s=self.timeout_s, memory_mb=self.memory_mb),
        )

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        gate = asyncio.Semaphore(max(1, self.concurrency))

        async def one(c: Candidate) -> Score:
            async with gate:
                result = await self.run(problem, c)
            return _score(result)

        return list(await asyncio.gather(*(one(c) for c in candidates)))


def _score(result: SandboxResult) -> Score:
    total = len(result.tests)
    value = (1.0 if result.ok else 0.0) if total == 0 else result.passed / total
    failures = [t.error or "failed" for t in result.tests if not t.passed]
    if result.error and not failures:
        failures = [result.error]
    feedback = ""
    if failures:
        shown = "\n".join(f"- {f}" for f in failures[:3])
        feedback = f"{total - result.passed if total else 1} check(s) failed:\n{shown}"
    return Score(
        value=value,
        detail={
            "passed": result.passed,
            "total": total,
            "error": result.error,
            "feedback": feedback,
            "satisfied": value >= 1.0,
        },
    )
