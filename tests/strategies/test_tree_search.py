"""Tree of thoughts (BFS) and MCTS (UCT) on scripted step trees."""

from __future__ import annotations

from collections.abc import Callable

from ponder.backends.fake import FunctionBackend
from ponder.strategies import MCTS, RunContext, TreeOfThoughts
from ponder.types import Candidate, GenRequest, Problem
from ponder.verifiers import FunctionPRM, FunctionVerifier, extract_answer

MakeCtx = Callable[..., RunContext]


def steps_of(req: GenRequest) -> list[str]:
    if not req.continue_final:
        return []
    return [s.strip() for s in req.messages[-1].content.split("\n\n") if s.strip()]


def is_step_request(req: GenRequest) -> bool:
    return "\n\n" in req.stop


TOT_SCORES = {
    "x": 0.2, "y": 0.7,
    "x1": 0.3, "x2": 0.3, "x3": 0.3,
    "y1": 0.1, "y2": 0.9, "y3": 0.5,
    "Answer: 12": 0.9, "Answer: 0": 0.1,
}  # fmt: skip


def tot_script(req: GenRequest, i: int) -> str:
    steps = steps_of(req)
    if not is_step_request(req):
        return "Answer: 12" if steps == ["y", "y2"] else "Answer: 0"
    if not steps:
        return ["x", "x", "y"][i % 3]
    return f"{steps[-1]}{i % 3 + 1}"


async def test_tree_of_thoughts_dedupes_prunes_by_value_and_completes_the_best_state(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    backend = FunctionBackend(tot_script)
    verifier = FunctionPRM(lambda p, s: [TOT_SCORES.get(x, 0.0) for x in s], aggregation="last")

    out = await TreeOfThoughts(breadth=2, proposals=3, depth=2).run(
        problem, make_ctx(backend, verifier=verifier)
    )

    assert extract_answer(out.answer) == "12"
    assert out.tree is not None
    assert sorted(c.text for c in out.tree.children) == ["x", "y"]  # duplicate "x" dropped
    completions = [steps_of(r) for r in backend.calls if not is_step_request(r)]
    assert completions == [["y", "y2"]]
    # level 2 expanded both kept states; the completion went to the best of the 4+ children
    assert sorted(tuple(steps_of(r)) for r in backend.calls if len(steps_of(r)) == 1) == [
        ("x",),
        ("y",),
    ]


def path_of(steps: list[str]) -> str:
    return "".join(s.split()[1] for s in steps)


def mcts_script(req: GenRequest, i: int) -> str:
    """A binary tree of depth 3 (L/R per step); a rollout always goes left."""
    steps = steps_of(req)
    path = path_of(steps)
    if is_step_request(req):
        move = "LR"[i % 2]
        if len(steps) == 2:
            return f"go {move}\nAnswer: {path + move}"
        return f"go {move}"
    rest = "L" * (3 - len(steps))
    moves = [f"go {m}" for m in rest]
    moves[-1] += f"\nAnswer: {path + rest}"
    return "\n\n".join(moves)


def reward(problem: Problem, c: Candidate) -> float:
    return 1.0 if c.answer == "rlr" else 0.0


async def test_mcts_finds_the_one_rewarded_path(problem: Problem, make_ctx: MakeCtx) -> None:
    backend = FunctionBackend(mcts_script)

    out = await MCTS(iterations=30, expand=2).run(
        problem, make_ctx(backend, verifier=FunctionVerifier(reward))
    )

    assert out.answer.endswith("Answer: RLR")
    # greedy rollouts alone only ever see paths ending in L: the search had to expand RL
    assert ["go R", "go L"] in [steps_of(r) for r in backend.calls if is_step_request(r)]
    assert out.tree is not None and any(c.chosen for c in out.tree.children)


async def test_mcts_backs_values_up_so_the_best_branch_gets_the_visits(
    problem: Problem, make_ctx: MakeCtx
) -> None:
    # Reward every path that starts with R: after both first moves are tried, UCT should
    # spend most expansions under R.
    backend = FunctionBackend(mcts_script)

    def starts_right(p: Problem, c: Candidate) -> float:
        return 1.0 if (c.answer or "").startswith("r") else 0.0

    await MCTS(iterations=12, expand=2, exploration=0.5).run(
        problem, make_ctx(backend, verifier=FunctionVerifier(starts_right))
    )

    expansions = [steps_of(r) for r in backend.calls if is_step_request(r) and steps_of(r)]
    right = sum(s[0] == "go R" for s in expansions)
    assert right > len(expansions) - right
