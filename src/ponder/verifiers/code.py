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
import contextlib
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ponder.config import SandboxSettings
from ponder.types import Candidate, Problem, Score
from ponder.verifiers.answers import extract_code
from ponder.verifiers.sandbox import SandboxLimits, SandboxResult, arun_python, check_sandbox

__all__ = [
    "CodeExecutionVerifier",
    "assemble_program",
    "behaviour_signature",
    "probe_calls",
    "public_tests_from_prompt",
]

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

    A reply that defines ``entry_point`` replaces the prompt's stub: when the
    prompt ends with that stub (HumanEval style) the whole prompt is kept, closed
    with ``pass``, so its imports *and helper functions* stay defined; otherwise
    only the prompt's imports go in front. A bare completion (a function body) is
    appended to the prompt. Eval grading and the public-test verifier both build
    programs here, so a candidate is judged on the same program it is graded on.
    """
    code = extract_code(candidate_text)
    if entry_point and re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.M):
        if prompt_code and _ends_with_stub(prompt_code, entry_point):
            return prompt_code.rstrip("\n") + "\n    pass\n\n" + code
        imports = _prompt_imports(prompt_code)
        return f"{imports}\n{code}" if imports else code
    if prompt_code:
        return prompt_code + code
    return code


def _ends_with_stub(prompt_code: str, entry_point: str) -> bool:
    """Whether closing the prompt with ``pass`` gives valid code ending in ``entry_point``."""
    try:
        tree = ast.parse(prompt_code.rstrip("\n") + "\n    pass\n")
    except SyntaxError:
        return False
    last = tree.body[-1] if tree.body else None
    return isinstance(last, ast.FunctionDef | ast.AsyncFunctionDef) and last.name == entry_point


# --------------------------------------------------------------------------- behaviour probes
#
# Docstring examples are few, so several candidates often pass all of them and
# still differ. Running the tied candidates on *new* inputs (the examples'
# arguments, mutated) and grouping them by what they return lets the largest
# group of agreeing programs win, as CodeT (Chen et al. 2022) and AlphaCode
# (Li et al. 2022) cluster by execution behaviour. No expected output is
# needed, so nothing beyond the prompt is used.

_PROBE_MARK = "@@ponder-probe@@"


def _mutations(value: object) -> list[object]:
    """Type-preserving variants of one example argument, most informative first."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1, 2 * value + 3, -value, 0]
    if isinstance(value, float):
        return [value * 1.5 + 0.5, -value, 0.0]
    if isinstance(value, str):
        out: list[object] = [value[::-1], value + value[:1], value[1:], value.swapcase(), ""]
        return out
    if isinstance(value, list | tuple):
        kind = type(value)
        items = list(value)
        variants: list[list[object]] = [items[::-1], items[1:], items + items[:1]]
        with contextlib.suppress(TypeError):  # mixed types do not sort
            variants.append(sorted(items))  # type: ignore[type-var]
        if items and all(isinstance(x, int) and not isinstance(x, bool) for x in items):
            variants.append([x + 1 for x in items])  # type: ignore[operator]
        variants.append([])
        return [kind(v) for v in variants]
    return []


def probe_calls(prompt_code: str, entry_point: str | None, limit: int = 12) -> list[str]:
    """New calls of ``entry_point``: each example call with one argument mutated.

    Deterministic; round-robin over examples and arguments so a few probes
    already cover every example. The examples themselves are left out (the
    public tests check those).
    """
    if not entry_point or limit <= 0:
        return []
    calls: list[ast.Call] = []
    for line in prompt_code.splitlines():
        start = 0
        while (pos := line.find(entry_point + "(", start)) >= 0:
            end = _call_at(line, pos + len(entry_point))
            start = pos + len(entry_point)
            if end is None:
                break
            tree = _expression(line[pos:end], entry_point)
            if tree is not None and isinstance(tree.body, ast.Call):
                calls.append(tree.body)
    originals = {ast.unparse(c) for c in calls}
    per_call: list[list[str]] = []
    for call in calls:
        variants: list[str] = []
        for i, arg in enumerate(call.args):
            try:
                value = ast.literal_eval(arg)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            for mutated in _mutations(value):
                try:
                    node = ast.parse(repr(mutated), mode="eval").body
                except SyntaxError:
                    continue
                args = list(call.args)
                args[i] = node
                variants.append(ast.unparse(ast.Call(call.func, args, call.keywords)))
        per_call.append(variants)
    probes: list[str] = []
    depth = 0
    while len(probes) < limit and any(depth < len(v) for v in per_call):
        for variants in per_call:
            if depth < len(variants):
                src = variants[depth]
                if src not in originals and src not in probes:
                    probes.append(src)
                    if len(probes) == limit:
                        break
        depth += 1
    return probes


def _probe_footer(probes: Sequence[str], per_probe_s: float) -> str:
    # Each probe gets its own alarm, so one endless input costs one probe, not the run.
    return f"""

def __ponder_probe():
    import json, signal
    class _Slow(Exception):
        pass
    def _alarm(*_):
        raise _Slow()
    signal.signal(signal.SIGALRM, _alarm)
    out = []
    for src in {list(probes)!r}:
        try:
            signal.setitimer(signal.ITIMER_REAL, {per_probe_s!r})
            value = repr(eval(src))[:300]
        except _Slow:
            value = "!timeout"
        except BaseException as exc:
            value = "!" + type(exc).__name__
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        out.append(value)
    print("\\n{_PROBE_MARK}" + json.dumps(out))

__ponder_probe()
"""


def behaviour_signature(result: SandboxResult) -> str | None:
    """The probe outputs a sandbox run printed, as one comparable string."""
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(_PROBE_MARK):
            return line[len(_PROBE_MARK) :]
    return None


@dataclass
class CodeExecutionVerifier:
    """Score = share of public tests a candidate passes in the sandbox.

    Reads ``problem.metadata``: ``public_tests`` (assert snippets), else tests
    derived from ``prompt_code`` (default: the user prompt) and ``entry_point``.
    Without any test the score is 1.0 when the program runs to its end.
    ``detail["feedback"]`` says what failed, for self-refinement.

    When several complete candidates tie for the best score, they are also run
    on up to ``probes`` new inputs (see :func:`probe_calls`) and grouped by what
    they return: ``detail["cluster"]`` names a candidate's group and
    ``detail["cluster_size"]`` how many tied candidates behave the same, which
    best-of-N uses to break the tie. The score itself is unchanged.

    Programs run in the OS sandbox of :mod:`ponder.verifiers.sandbox` (``sandbox``:
    its settings, default the process-wide ones); where the host cannot isolate,
    :meth:`score` raises :class:`~ponder.verifiers.sandbox.SandboxUnavailable`
    rather than run anything unsandboxed.
    """

    timeout_s: float = 5.0
    memory_mb: int = 512
    concurrency: int = 2
    probes: int = 12
    probe_timeout_s: float = 0.5
    sandbox: SandboxSettings | None = None

    def tests_for(self, problem: Problem) -> list[str]:
        given = problem.metadata.get("public_tests")
        if given is not None:
            return [str(t) for t in given]
        prompt_code = str(problem.metadata.get("prompt_code") or problem.prompt)
        return public_tests_from_prompt(prompt_code, problem.metadata.get("entry_point"))

    def _program(self, problem: Problem, candidate: Candidate) -> str:
        return assemble_program(
            candidate.text,
            str(problem.metadata.get("prompt_code") or ""),
            problem.metadata.get("entry_point"),
        )

    def _limits(self) -> SandboxLimits:
        return SandboxLimits(timeout_s=self.timeout_s, memory_mb=self.memory_mb)

    async def run(self, problem: Problem, candidate: Candidate) -> SandboxResult:
        return await arun_python(
            self._program(problem, candidate),
            tests=self.tests_for(problem),
            limits=self._limits(),
            settings=self.sandbox,
        )

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        if candidates:
            check_sandbox(self.sandbox)  # refuse once, before any candidate runs
        gate = asyncio.Semaphore(max(1, self.concurrency))

        async def one(c: Candidate) -> Score:
            async with gate:
                result = await self.run(problem, c)
            return _score(result)

        scores = list(await asyncio.gather(*(one(c) for c in candidates)))
        await self._cluster_ties(problem, candidates, scores, gate)
        return scores

    async def _cluster_ties(
        self,
        problem: Problem,
        candidates: Sequence[Candidate],
        scores: list[Score],
        gate: asyncio.Semaphore,
    ) -> None:
        complete = [i for i, c in enumerate(candidates) if not c.truncated]
        if len(complete) < 2 or self.probes <= 0:
            return
        top = max(scores[i].value for i in complete)
        tied = [i for i in complete if scores[i].value == top]
        if len(tied) < 2:
            return
        prompt_code = str(problem.metadata.get("prompt_code") or problem.prompt)
        probes = probe_calls(prompt_code, problem.metadata.get("entry_point"), self.probes)
        if not probes:
            return
        footer = _probe_footer(probes, self.probe_timeout_s)
        limits = SandboxLimits(
            timeout_s=self.timeout_s + self.probe_timeout_s * len(probes),
            memory_mb=self.memory_mb,
        )

        async def signature(i: int) -> str:
            async with gate:
                result = await arun_python(
                    self._program(problem, candidates[i]) + footer,
                    limits=limits,
                    settings=self.sandbox,
                )
            # A run that never reached the footer is its own group of one.
            return behaviour_signature(result) or f"!no-output:{i}"

        signatures = await asyncio.gather(*(signature(i) for i in tied))
        sizes = {sig: signatures.count(sig) for sig in signatures}
        for i, sig in zip(tied, signatures, strict=True):
            scores[i].detail["cluster"] = hashlib.sha256(sig.encode()).hexdigest()[:12]
            scores[i].detail["cluster_size"] = sizes[sig]


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
