"""Tree searches over reasoning steps: tree of thoughts (BFS) and MCTS (UCT)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ponder.strategies.base import RunContext, check_int, check_temperature
from ponder.strategies.search import conclude, expand_wave, finish_best, value
from ponder.strategies.steps import Partial, score_complete
from ponder.strategies.tree import TreeRecorder
from ponder.types import Outcome, Problem

__all__ = ["MCTS", "TreeOfThoughts"]


@dataclass
class TreeOfThoughts:
    """Breadth-first tree of thoughts: every state proposes ``proposals`` next steps
    (duplicates dropped), the verifier values them, the best ``breadth`` states go on,
    for ``depth`` levels; the best state is then completed if it has not finished."""

    name: str = "tree_of_thoughts"
    breadth: int = 2
    proposals: int = 3
    depth: int = 4
    step_tokens: int = 128
    temperature: float = 0.8
    final_tokens: int = 256

    def __post_init__(self) -> None:
        for name in ("breadth", "proposals", "depth", "step_tokens", "final_tokens"):
            check_int(self.name, name, getattr(self, name), 1)
        check_temperature(self.name, self.temperature)

    async def run(self, problem: Problem, ctx: RunContext) -> Outcome:
        rec = TreeRecorder(problem.prompt)
        finished: list[Partial] = []
        frontier = [Partial("", rec.root)]
        with ctx.anytime():
            for level in range(self.depth):
                groups = await expand_wave(
                    ctx,
                    problem,
                    rec,
                    frontier,
                    self.proposals,
                    temperature=self.temperature,
                    step_tokens=self.step_tokens,
                    dedupe=True,
                )
                states = [s for g in groups for s in g]
                await value(ctx, problem, rec, states)
                finished += [s for s in states if s.done]
                live = [s for s in states if not s.done and not s.truncated]
                frontier = sorted(live, key=lambda s: -s.score)[: self.breadth]
                ctx.tracer.event(
                    "tot_level",
                    level=level,
                    states=len(states),
                    kept=[round(s.score, 4) for s in frontier],
                )
                if not frontier:
                    break
            if not finished and frontier:
                finished = [await finish_best(ctx, problem, rec, frontier[0], self.final_tokens)]
        return await conclude(self.name, ctx, problem, rec, finished, frontier)


@dataclass(eq=False)
class _Node:
    state: Partial
    parent: _Node | None = None
    children: list[_Node] = field(default_factory=list)
    visits: int = 0
    total: float = 0.0
    expanded: bool = False

    def uct(self, c: float) -> float:
        if self.visits == 0:
            return math.inf
        assert self.parent is not None
        return self.total / self.visits + c * math.sqrt(
            math.log(max(self.parent.visits, 1)) / self.visits
        )


@dataclass
class MCTS:
    """Monte Carlo tree search over reasoning steps (UCT).

    Each iteration selects a leaf by UCT, expands it with ``expand`` sampled next
    steps, evaluates one new child (a finished solution by the verifier; an
    unfinished one by a greedy rollout to the end, scored by the verifier, or by
    the step score when ``rollout=False``) and backs the value up. Every
    finished solution seen (rollouts included) is a candidate; the best wins.
    """

    name: str = "mcts"
    iterations: int = 16
    expand: int = 2
    exploration: float = 1.4
    max_depth: int = 8
    step_tokens: int = 128
    rollout_tokens: int = 256
    temperature: float = 0.8
    rollout: bool = True

    def __post_init__(self) -> None:
        for name in ("iterations", "expand", "max_depth", "step_tokens", "rollout_tokens"):
            check_int(self.name, name, getattr(self, name), 1)
        check_temperature(self.name, self.temperature)
        check_temperature(self.name, self.exploration, "exploration")

    def _select(self, root: _Node) -> _Node:
        node = root
        while node.expanded and node.children:
            node = max(node.children, key=lambda ch: ch.uct(self.exploration))
        return node

    async def _evaluate(
        self,
        ctx: RunContext,
        problem: Problem,
        rec: TreeRecorder,
        node: _Node,
        solutions: list[Partial],
    ) -> float:
        state = node.state
        if state.done:
            (v,) = await score_complete(
                ctx, problem, [state.candidate(problem.task)], [state.score]
            )
            solutions.append(state)
        elif self.rollout:
            end = await finish_best(ctx, problem, rec, state, self.rollout_tokens)
            end.node.kind = "rollout"
            (v,) = await score_complete(ctx, problem, [end.candidate(problem.task)], [state.score])
            end.score = v
            end.node.score = v
            solutions.append(end)
        else:
            await value(ctx, problem, rec, [state])
            v = state.score
        state.node.score = v
        return v

    async def run(self, problem: Problem, ctx: RunContext) -> Outcome:
        rec = TreeRecorder(problem.prompt)
        root = _Node(Partial("", rec.root))
        solutions: list[Partial] = []
        with ctx.anytime():
            for it in range(self.iterations):
                leaf = self._select(root)
                if leaf.state.done and leaf.visits > 0:
                    # the best path ends in a known solution: nothing new to learn there
                    target = leaf
                elif not leaf.state.done and leaf.state.depth < self.max_depth:
                    (kids,) = await expand_wave(
                        ctx,
                        problem,
                        rec,
                        [leaf.state],
                        self.expand,
                        temperature=self.temperature,
                        step_tokens=self.step_tokens,
                        dedupe=True,
                    )
                    leaf.expanded = True
                    leaf.children = [_Node(k, leaf) for k in kids if not k.truncated]
                    target = leaf.children[0] if leaf.children else leaf
                else:
                    target = leaf
                v = await self._evaluate(ctx, problem, rec, target, solutions)
                node: _Node | None = target
                while node is not None:
                    node.visits += 1
                    node.total += v
                    node = node.parent
                ctx.tracer.event("mcts_iteration", iteration=it, value=v, depth=target.state.depth)
                if root.expanded and not root.children:
                    break
        live = [] if solutions else [n.state for n in root.children]
        # conclude() re-scores with the verifier, so solutions found more than once count once.
        unique = list({id(s): s for s in solutions}.values())
        return await conclude(self.name, ctx, problem, rec, unique, live)
