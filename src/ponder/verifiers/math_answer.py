"""Math answer verifier: final answer vs. ``problem.reference`` by mathematical equivalence.

``math-verify`` (the ``verify`` extra) guards its parsing with ``signal.alarm``,
which works only in a process's main thread. The async gateway runs verifiers on
an event loop (often not the main thread), so every comparison runs in the main
thread of a small worker process. Without ``math-verify`` the verifier compares
normalized answers.
"""

from __future__ import annotations

import asyncio
import atexit
import multiprocessing
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from ponder.types import Candidate, Problem, Score
from ponder.verifiers.answers import _last_boxed, extract_answer, normalize_answer

__all__ = ["MathVerifier", "final_answer_text", "math_equal"]


def final_answer_text(text: str) -> str | None:
    """The final answer of a solution as text math-verify can parse (boxed kept as LaTeX)."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return f"${boxed}$"
    return extract_answer(text)


def _wrap(answer: str) -> str:
    a = answer.strip()
    return a if a.startswith("$") else f"${a}$"


def math_equal(reference: str, answer: str, timeout_s: int = 5) -> bool:
    """Whether ``answer`` equals ``reference`` mathematically (call in a main thread)."""
    if normalize_answer(reference) == normalize_answer(answer):
        return True
    try:
        from math_verify import parse, verify
    except ImportError:
        return False
    gold = parse(_wrap(reference), parsing_timeout=timeout_s) or parse(
        reference, parsing_timeout=timeout_s
    )
    target = parse(_wrap(answer), parsing_timeout=timeout_s) or parse(
        answer, parsing_timeout=timeout_s
    )
    if not gold or not target:
        return False
    return bool(verify(gold, target, timeout_seconds=timeout_s))


def _equal_many(reference: str, answers: list[str | None], timeout_s: int) -> list[bool]:
    return [a is not None and math_equal(reference, a, timeout_s) for a in answers]


_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _get_pool() -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            # spawn, not fork: the host process may run engine threads.
            _pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")
            )
            atexit.register(_pool.shutdown, wait=False, cancel_futures=True)
        return _pool


def _drop_pool() -> None:
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.shutdown(wait=False, cancel_futures=True)
            for proc in list(getattr(_pool, "_processes", {}).values()):
                proc.kill()
            _pool = None


@dataclass
class MathVerifier:
    """1.0 when the final answer equals ``problem.reference`` mathematically, else 0.0.

    Answers are taken from ``\\boxed{}``, "Answer: ...", "####" or the last number.
    A comparison that hangs past ``timeout_s`` counts as unequal.
    """

    timeout_s: int = 5

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        if problem.reference is None:
            return [Score(value=0.0, detail={"error": "no reference answer"}) for _ in candidates]
        answers = [final_answer_text(c.text) for c in candidates]
        try:
            future = _get_pool().submit(_equal_many, problem.reference, answers, self.timeout_s)
            equal = await asyncio.wait_for(
                asyncio.wrap_future(future), timeout=self.timeout_s * (len(answers) + 1) + 30
            )
        except (TimeoutError, OSError, RuntimeError):
            # A stuck or broken worker: start a fresh one next time, judge by text now.
            _drop_pool()
            equal = [
                a is not None and normalize_answer(a) == normalize_answer(problem.reference)
                for a in answers
            ]
        return [
            Score(
                value=float(ok),
                detail={"answer": a, "satisfied": ok, "feedback": "" if ok else "wrong answer"},
            )
            for a, ok in zip(answers, equal, strict=True)
        ]
