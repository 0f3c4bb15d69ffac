"""Self-refine, program-aided (Python and read-only SQLite), adaptive consistency,
weighted best-of-N and the recorded trace tree."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from ponder.backends.fake import FakeBackend, FunctionBackend
from ponder.errors import InvalidRequest
from ponder.strategies import (
    AdaptiveConsistency,
    BestOfN,
    ProgramAided,
    RunContext,
    SelfConsistency,
    SelfRefine,
    available_strategies,
    get_strategy,
    render_tree,
)
from ponder.strategies.adaptive import leader_probability
from ponder.strategies.program import run_sql
from ponder.types import Candidate, GenRequest, Problem, Score, as_messages
from ponder.verifiers import CodeExecutionVerifier, FunctionVerifier, extract_answer

MakeCtx = Callable[..., RunContext]

# --- self-refine ---------------------------------------------------------------

CODE_PROBLEM = Problem(
    messages=as_messages("Write double(x) returning 2 * x."),
    task="code",
    metadata={
        "entry_point": "double",
        "public_tests": ["assert double(3) == 6, 'double(3) should be 6'"],
    },
)
BUGGY = "```python\ndef double(x):\n    return x + 2\n```"
FIXED = "```python\ndef double(x):\n    return 2 * x\n```"


async def test_self_refine_revises_with_execution_feedback_and_stops_when_satisfied(
    make_ctx: MakeCtx,
) -> None:
    def fn(req: GenRequest, i: int) -> str:
        last = req.messages[-1].content
        return FIXED if "double(3) should be 6" in last else BUGGY

    backend = FunctionBackend(fn)

    out = await SelfRefine(rounds=3).run(
        CODE_PROBLEM, make_ctx(backend, verifier=CodeExecutionVerifier(timeout_s=5))
    )

    assert out.answer == FIXED
    assert len(backend.calls) == 2  # draft + one revision; satisfied, so no more rounds
    assert [s.value for s in out.scores] == [0.0, 1.0]
    assert out.tree is not None and out.tree.children[0].detail["feedback"]


async def test_self_refine_returns_the_best_version_not_the_last(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    backend = FakeBackend(["Answer: 6", "Answer: 1", "Answer: 2"])
    quality = {"6": 0.5, "1": 0.0, "2": 0.1}

    async def score(p: Problem, c: Candidate) -> float:
        return quality[c.answer or ""]

    out = await SelfRefine(rounds=2).run(
        problem, make_ctx(backend, verifier=FunctionVerifier(score))
    )

    assert extract_answer(out.answer) == "6"
    assert len(out.candidates) == 3 and out.chosen == 0


async def test_self_refine_without_a_verifier_critiques_itself(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    def fn(req: GenRequest, i: int) -> str:
        last = req.messages[-1].content
        if "CORRECT" in last:  # the critique request
            return "CORRECT" if len(req.messages) > 3 else "3 + 4 is 7, not 8."
        return "Answer: 7" if "not 8" in last else "Answer: 8"

    backend = FunctionBackend(fn)

    out = await SelfRefine(rounds=3).run(problem, make_ctx(backend))

    assert extract_answer(out.answer) == "7"


async def test_self_refine_holds_the_budget(problem: Problem, make_ctx: MakeCtx) -> None:
    out = await SelfRefine(rounds=5).run(
        problem,
        make_ctx(
            FakeBackend(["one two three four"]),
            tokens=6,
            verifier=FunctionVerifier(lambda p, c: 0.0),
        ),
    )

    assert out.usage.completion_tokens <= 6
    assert out.truncated


# --- program-aided ---------------------------------------------------------------


async def test_program_aided_answers_with_what_the_program_prints_not_what_the_model_claims(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    reply = "```python\nprint(17 * 23)\n```\nThe output is 400."

    out = await ProgramAided().run(problem, make_ctx(FakeBackend([reply])))

    assert out.answer == "391"
    assert "print(17 * 23)" in out.reasoning


async def test_program_aided_votes_over_executed_results(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    replies = [
        "```python\nprint(7)\n```",
        "```python\nprint(17 * 23)\n```",
        "```python\nprint(1 / 0)\n```",
        "```python\nx = 17\nprint(x * 23)\n```",
        "```python\nprint(7)\n```\nAnswer: 391",
        "```python\nimport os\nos.kill(os.getppid(), 9)\n```",
        "```python\nprint(391)\n```",
    ]
    backend = FakeBackend(replies)

    out = await ProgramAided(n=7).run(problem, make_ctx(backend))

    assert out.answer == "391"
    assert [c.answer for c in out.candidates] == ["7", "391", None, "391", "7", None, "391"]
    assert backend.calls[0].n == 7 and backend.calls[0].temperature > 0


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "people.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE users (name TEXT, age INTEGER)")
    con.executemany("INSERT INTO users VALUES (?, ?)", [("ada", 36), ("bob", 25), ("cy", 41)])
    con.commit()
    con.close()
    return path


async def test_program_aided_sql_runs_the_query_on_the_callers_database(
    db: Path, problem: Problem, make_ctx: MakeCtx
) -> None:
    backend = FakeBackend(["```sql\nSELECT COUNT(*) FROM users WHERE age > 30\n```\nThere are 3."])

    out = await ProgramAided(language="sql", database=str(db)).run(problem, make_ctx(backend))

    assert out.answer == "2"
    assert "CREATE TABLE users" in backend.calls[0].messages[-1].content


@pytest.mark.parametrize(
    "query",
    [
        "DROP TABLE users",
        "INSERT INTO users VALUES ('eve', 1)",
        "UPDATE users SET age = 0",
        "ATTACH DATABASE '/tmp/ponder_attach.db' AS other",
        "PRAGMA writable_schema = 1",
        "SELECT 1; DROP TABLE users",
        "CREATE TABLE t (x)",
    ],
)
def test_sql_is_read_only(db: Path, query: str) -> None:
    output, error = run_sql(db, query)

    assert output is None and error
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*), SUM(age) FROM users").fetchone() == (3, 102)
    con.close()


def test_sql_without_a_database_is_a_clear_error(problem: Problem, make_ctx: MakeCtx) -> None:
    import asyncio

    with pytest.raises(InvalidRequest, match="database"):
        asyncio.run(ProgramAided(language="sql").run(problem, make_ctx(FakeBackend(["x"]))))


async def test_program_aided_holds_the_budget(problem: Problem, make_ctx: MakeCtx) -> None:
    backend = FakeBackend(["```python\nprint(391)\n```"])

    out = await ProgramAided(n=4).run(problem, make_ctx(backend, tokens=3))

    assert out.usage.completion_tokens <= 3


# --- adaptive consistency ------------------------------------------------------------


def test_leader_probability() -> None:
    assert leader_probability(0, 0) == 0.5
    assert leader_probability(4, 0) == pytest.approx(1 - 1 / 32)
    assert leader_probability(3, 3) == pytest.approx(0.5)
    assert leader_probability(6, 1) > leader_probability(4, 1) > leader_probability(4, 3)


async def test_adaptive_consistency_stops_early_on_unanimous_samples(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    backend = FakeBackend(["Answer: 7"])

    out = await AdaptiveConsistency(batch=2, max_samples=16, confidence=0.95).run(
        problem, make_ctx(backend)
    )

    assert extract_answer(out.answer) == "7"
    assert len(out.candidates) == 4 and len(backend.calls) == 2


async def test_adaptive_consistency_keeps_sampling_while_the_vote_is_split(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    backend = FakeBackend(["Answer: 7", "Answer: 8"])

    out = await AdaptiveConsistency(batch=2, max_samples=16).run(problem, make_ctx(backend))

    assert len(out.candidates) == 16 and len(backend.calls) == 8


async def test_adaptive_consistency_follows_a_late_majority(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    backend = FakeBackend(["Answer: 1", "Answer: 2", "Answer: 2", "Answer: 2"])

    out = await AdaptiveConsistency(batch=4, max_samples=12, confidence=0.9).run(
        problem, make_ctx(backend)
    )

    assert extract_answer(out.answer) == "2"
    assert len(out.candidates) == 8  # 3-1 is not decided at 0.9 (0.81); 6-2 is (0.98)


async def test_adaptive_consistency_holds_the_budget(problem: Problem, make_ctx: MakeCtx) -> None:
    out = await AdaptiveConsistency(batch=2, max_samples=16).run(
        problem, make_ctx(FakeBackend(["Answer: 7", "Answer: 8"]), tokens=9)
    )

    assert out.usage.completion_tokens <= 9 and out.truncated


# --- weighted best-of-N -------------------------------------------------------------


async def test_weighted_best_of_n_sums_scores_per_answer(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    replies = ["Answer: 1", "Answer: 2", "Answer: 2", "Answer: 3"]
    weight = {"1": 0.9, "2": 0.5, "3": 0.2}
    verifier = FunctionVerifier(lambda p, c: weight[c.answer or ""])

    plain = await BestOfN(n=4).run(problem, make_ctx(FakeBackend(replies), verifier=verifier))
    weighted = await BestOfN(n=4, weighted=True).run(
        problem, make_ctx(FakeBackend(replies), verifier=verifier)
    )

    assert extract_answer(plain.answer) == "1"
    assert extract_answer(weighted.answer) == "2"


async def test_code_candidates_vote_by_their_code(make_ctx: MakeCtx) -> None:
    same = "```python\ndef f():\n    return 1\n```"
    replies = [same, "Sure:\n" + same, "```python\ndef f():\n    return 2\n```"]

    out = await SelfConsistency(n=3).run(
        Problem(messages=as_messages("f"), task="code"), make_ctx(FakeBackend(replies))
    )

    assert out.chosen == 0 and out.scores[0].value == pytest.approx(2 / 3)


# --- registry and trace tree ---------------------------------------------------------


def test_every_strategy_is_registered_and_builds() -> None:
    names = {
        "beam_search", "dvts", "tree_of_thoughts", "mcts",
        "self_refine", "program_aided", "adaptive_consistency",
    }  # fmt: skip

    assert names <= set(available_strategies())
    for name in names:
        assert get_strategy(name).name == name
    with pytest.raises(InvalidRequest):
        get_strategy("beam_search", n=0)
    with pytest.raises(InvalidRequest):
        get_strategy("mcts", bogus=1)


async def test_sample_strategies_record_a_flat_tree_that_renders(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    out = await SelfConsistency(n=3).run(
        problem, make_ctx(FakeBackend(["Answer: 7", "Answer: 8", "Answer: 7"]))
    )

    assert out.tree is not None and len(out.tree.children) == 3
    assert [c.chosen for c in out.tree.children] == [True, False, False]
    text = render_tree(out.tree)
    assert text.count("\n") == 3 and "*[sample" in text
    assert out.model_dump(mode="json")["tree"]["children"][0]["score"] == pytest.approx(2 / 3)


def test_scores_are_plain_data() -> None:
    assert Score(value=1.0).model_dump() == {"value": 1.0, "detail": {}}
