"""Beam search (with lookahead) and DVTS on scripted step backends and PRMs."""

from __future__ import annotations

from collections.abc import Callable

from ponder.backends.fake import FunctionBackend
from ponder.strategies import DVTS, BeamSearch, BestOfN, RunContext, get_strategy
from ponder.types import GenRequest, Problem
from ponder.verifiers import FunctionPRM, extract_answer

MakeCtx = Callable[..., RunContext]


def steps_of(req: GenRequest) -> list[str]:
    """The steps of the partial solution a request continues."""
    if not req.continue_final:
        return []
    return [s.strip() for s in req.messages[-1].content.split("\n\n") if s.strip()]


def prm(table: dict[str, float], aggregation: str = "min") -> FunctionPRM:
    return FunctionPRM(lambda p, steps: [table.get(s, 0.0) for s in steps], aggregation=aggregation)


# Only "s1 good" followed by the first sample's second step reaches 7; a whole-solution
# sample pairs first and second steps of the same index, so it never does.
FIRST = ["s1 bad", "s1 bad", "s1 bad", "s1 good"]
STEP_SCORES = {"s1 bad": 0.1, "s1 good": 0.9, "Answer: 7": 0.9, "Answer: 5": 0.6}


def pruning_script(req: GenRequest, i: int) -> str:
    steps = steps_of(req)
    if not steps:
        return FIRST[i % 4] + "\n\nAnswer: 5"
    if steps == ["s1 good"] and i == 0:
        return "Answer: 7"
    return "Answer: 5"


async def test_beam_search_prunes_the_low_scoring_branch_and_finds_what_best_of_n_misses(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    backend = FunctionBackend(pruning_script)
    beam = await BeamSearch(n=4, beam_width=4, max_steps=4).run(
        problem, make_ctx(backend, verifier=prm(STEP_SCORES))
    )
    bon = await BestOfN(n=4).run(
        problem, make_ctx(FunctionBackend(pruning_script), verifier=prm(STEP_SCORES))
    )

    assert extract_answer(beam.answer) == "7"
    assert extract_answer(bon.answer) == "5"
    continued = [steps_of(r) for r in backend.calls if r.continue_final]
    assert continued and all(s == ["s1 good"] for s in continued)
    assert all("\n\n" in r.stop for r in backend.calls)


async def test_the_chosen_path_is_marked_in_the_trace_tree(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    out = await BeamSearch(n=4, beam_width=4).run(
        problem, make_ctx(FunctionBackend(pruning_script), verifier=prm(STEP_SCORES))
    )

    assert out.tree is not None
    chosen = [c for c in out.tree.children if c.chosen]
    assert [c.text for c in chosen] == ["s1 good"]
    assert [g.text for g in chosen[0].children if g.chosen] == ["Answer: 7"]
    assert len(out.tree.children) == 4 and all(c.score is not None for c in out.tree.children)


LOOKAHEAD_SCORES = {
    "trap": 0.9,
    "sound": 0.6,
    "dead end": 0.1,
    "progress": 0.8,
    "Answer: 9": 0.9,
    "Answer: 4": 0.2,
}


def lookahead_script(req: GenRequest, i: int) -> str:
    steps = steps_of(req)
    if not steps:
        return ["trap", "sound"][i % 2]
    nxt = {
        ("trap",): "dead end",
        ("trap", "dead end"): "Answer: 4",
        ("sound",): "progress",
        ("sound", "progress"): "Answer: 9",
    }
    return nxt[tuple(steps)]


async def test_lookahead_sees_past_a_step_that_only_looks_good(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    def run(lookahead: int) -> BeamSearch:
        return BeamSearch(n=2, beam_width=2, lookahead=lookahead)

    plain = await run(0).run(
        problem, make_ctx(FunctionBackend(lookahead_script), verifier=prm(LOOKAHEAD_SCORES, "last"))
    )
    ahead = await run(1).run(
        problem, make_ctx(FunctionBackend(lookahead_script), verifier=prm(LOOKAHEAD_SCORES, "last"))
    )

    assert extract_answer(plain.answer) == "4"
    assert extract_answer(ahead.answer) == "9"


DIVERSE_SCORES = {
    "A": 0.9,
    "B": 0.5,
    "A1": 0.8,
    "A2": 0.8,
    "B1": 0.6,
    "B2": 0.6,
    "Answer: 7": 0.3,
    "Answer: 9": 0.95,
}


def diverse_script(req: GenRequest, i: int) -> str:
    steps = steps_of(req)
    if not steps:
        return ["A", "B"][i % 2]
    if len(steps) == 1:
        return f"{steps[0]}{i % 2 + 1}"
    return "Answer: 7" if steps[0] == "A" else "Answer: 9"


async def test_dvts_keeps_subtrees_apart_where_beam_search_collapses(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    beam = await BeamSearch(n=4, beam_width=2).run(
        problem, make_ctx(FunctionBackend(diverse_script), verifier=prm(DIVERSE_SCORES, "last"))
    )
    dvts_backend = FunctionBackend(diverse_script)
    dvts = await DVTS(n=4, beam_width=2).run(
        problem, make_ctx(dvts_backend, verifier=prm(DIVERSE_SCORES, "last"))
    )

    assert extract_answer(beam.answer) == "7"
    assert extract_answer(dvts.answer) == "9"
    # each subtree expands only its own best step
    second_level = sorted(tuple(steps_of(r)) for r in dvts_backend.calls if len(steps_of(r)) == 2)
    assert second_level == [("A", "A1"), ("B", "B1")]


async def test_search_without_a_verifier_uses_step_confidence(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    out = await BeamSearch(n=2, beam_width=2).run(
        problem, make_ctx(FunctionBackend(lookahead_script))
    )

    assert extract_answer(out.answer) in {"4", "9"}
    assert not out.truncated


async def test_an_unfinished_search_completes_its_best_beam(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    def endless(req: GenRequest, i: int) -> str:
        if req.stop and "\n\n" in req.stop:
            return f"step {len(steps_of(req))}"
        return "Answer: 3"

    out = await BeamSearch(n=2, beam_width=2, max_steps=2).run(
        problem, make_ctx(FunctionBackend(endless))
    )

    assert out.answer.endswith("Answer: 3")
    assert out.tree is not None and "completion" in str(out.tree.model_dump())


async def test_search_strategies_hold_the_token_budget(problem: Problem, make_ctx: MakeCtx) -> None:
    for name in ("beam_search", "dvts", "tree_of_thoughts", "mcts"):
        ctx = make_ctx(FunctionBackend(pruning_script), tokens=5, verifier=prm(STEP_SCORES))
        out = await get_strategy(name).run(problem, ctx)

        assert out.usage.completion_tokens <= 5, name
        assert out.truncated, name
        assert out.strategy == name
