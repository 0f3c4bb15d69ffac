"""Program-aided answers: the model writes a program, the sandbox runs it, the output is the answer.

Small models often hallucinate what their own code would print; running it
fixes that. With ``n > 1`` the executed results are voted on (self-consistency
over executed results; programs that fail do not vote). ``language="sql"``
runs one generated query against a caller-supplied SQLite database, read-only.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ponder.errors import InvalidRequest
from ponder.strategies.base import RunContext, Work, check_int, check_temperature, finish
from ponder.strategies.basic import majority_vote
from ponder.types import Candidate, Generation, Message, Outcome, Problem, Score
from ponder.verifiers.answers import extract_code, normalize_answer
from ponder.verifiers.sandbox import SandboxLimits, arun_python, check_sandbox

__all__ = ["ProgramAided", "program_messages", "run_sql", "sqlite_schema"]

PYTHON_INSTRUCTION = (
    "Solve this by writing a short Python program that computes the answer and prints only "
    "the final answer. Reply with the program in one ```python code block; do not guess its "
    "output."
)
SQL_INSTRUCTION = (
    "Answer this by writing one SQLite SELECT query over the database below. Reply with the "
    "query in one ```sql code block.\n\nDatabase schema:\n{schema}"
)


def sqlite_schema(path: str | Path) -> str:
    """The CREATE statements of a database, read-only."""
    with _connect(path) as con:
        rows = con.execute(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
    return "\n".join(str(r[0]) + ";" for r in rows)


def _connect(path: str | Path) -> sqlite3.Connection:
    p = Path(path).resolve()
    if not p.is_file():
        raise InvalidRequest(f"SQLite database {str(path)!r} does not exist", param="database")
    con = sqlite3.connect(f"{p.as_uri()}?mode=ro", uri=True, check_same_thread=False)
    con.execute("PRAGMA query_only = ON")
    return con


_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}


def _authorize(action: int, *args: object) -> int:
    # Only reading: no writes, no ATTACH (another file), no PRAGMA, no schema changes.
    return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY


def run_sql(
    path: str | Path, query: str, *, timeout_s: float = 5.0, max_rows: int = 50
) -> tuple[str | None, str | None]:
    """Run one read-only query; ``(output, None)`` or ``(None, error)``.

    One value prints as itself; rows print one per line, columns joined by " | ".
    """
    with _connect(path) as con:
        deadline = time.monotonic() + timeout_s
        con.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
        con.set_authorizer(_authorize)
        try:
            rows = con.execute(query).fetchmany(max_rows)
        except (sqlite3.Error, sqlite3.Warning, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}"
    if len(rows) == 1 and len(rows[0]) == 1:
        return str(rows[0][0]), None
    return "\n".join(" | ".join(str(v) for v in r) for r in rows), None


def program_messages(problem: Problem, instruction: str = PYTHON_INSTRUCTION) -> list[Message]:
    """The problem's messages with the program instruction appended to the last user turn.

    Public so that a cascade's program rung (and a recorded sample pool) builds exactly
    the request ``program_aided`` builds.
    """
    msgs = list(problem.messages)
    if msgs and msgs[-1].role == "user":
        return [*msgs[:-1], Message(role="user", content=f"{msgs[-1].content}\n\n{instruction}")]
    return [*msgs, Message(role="user", content=instruction)]


@dataclass
class ProgramAided:
    """Write a program, execute it, answer with its output; vote over ``n`` executed results."""

    name: str = "program_aided"
    n: int = 1
    temperature: float | None = None  # default: greedy for n == 1, 0.7 for a vote
    language: Literal["python", "sql"] = "python"
    database: str | None = None
    timeout_s: float = 5.0
    memory_mb: int = 512

    def __post_init__(self) -> None:
        check_int(self.name, "n", self.n, 1)
        if self.temperature is not None:
            check_temperature(self.name, self.temperature)
        if self.language not in ("python", "sql"):
            raise InvalidRequest(
                f"{self.name}: language must be 'python' or 'sql', got {self.language!r}",
                param="language",
            )

    def work(self) -> Work:
        return Work(samples=self.n)

    def _messages(self, problem: Problem, database: str | None) -> list[Message]:
        if self.language == "sql":
            if database is None:
                raise InvalidRequest(
                    "program_aided with language='sql' needs a database (a SQLite file path)",
                    param="database",
                )
            instruction = SQL_INSTRUCTION.format(schema=sqlite_schema(database))
        else:
            instruction = PYTHON_INSTRUCTION
        return program_messages(problem, instruction)

    async def execute(self, gen: Generation) -> Candidate:
        """Run one generated program; the candidate's answer is its last printed line."""
        return await self._execute(gen, self.database)

    async def _execute(self, gen: Generation, database: str | None) -> Candidate:
        code = extract_code(gen.text, self.language)
        if self.language == "sql":
            assert database is not None
            output, error = await asyncio.to_thread(
                run_sql, database, code, timeout_s=self.timeout_s
            )
        else:
            res = await arun_python(
                code, limits=SandboxLimits(timeout_s=self.timeout_s, memory_mb=self.memory_mb)
            )
            output, error = (res.stdout, None) if res.ok else (None, res.error or "failed")
        lines = [ln for ln in (output or "").strip().splitlines() if ln.strip()]
        if error is not None or not lines:
            return Candidate(
                text=gen.text,
                reasoning=code,
                answer=None,
                generation=gen,
                truncated=gen.finish_reason != "stop",
            )
        # The program's last printed line is its answer.
        shown = "\n".join(lines) if self.language == "sql" else lines[-1].strip()
        return Candidate(
            text=shown,
            reasoning=code,
            answer=normalize_answer(shown),
            generation=gen,
            truncated=gen.finish_reason != "stop",
        )

    async def run(self, problem: Problem, ctx: RunContext) -> Outcome:
        database = self.database or problem.metadata.get("sqlite_path")
        if self.language == "python":
            check_sandbox()  # refuse before generating: nothing spent on code that cannot run
        messages = self._messages(problem, database)
        temperature = (
            self.temperature if self.temperature is not None else (0.0 if self.n == 1 else 0.7)
        )
        candidates: list[Candidate] = []
        gens: list[Generation] = []
        with ctx.anytime():
            gens = await ctx.generate(
                ctx.request(problem, n=self.n, temperature=temperature, messages=messages)
            )
        candidates = list(await asyncio.gather(*(self._execute(g, database) for g in gens)))
        ctx.tracer.event("executed", results=[c.answer for c in candidates])
        chosen = majority_vote(candidates)
        scores = _vote_shares(candidates)
        return finish(self.name, ctx, candidates, chosen, scores)


def _vote_shares(candidates: Sequence[Candidate]) -> list[Score]:
    answers = [c.answer for c in candidates if c.answer is not None]
    total = len(candidates) or 1
    return [
        Score(
            value=(answers.count(c.answer) / total) if c.answer is not None else 0.0,
            detail={"executed": c.answer is not None},
        )
        for c in candidates
    ]
