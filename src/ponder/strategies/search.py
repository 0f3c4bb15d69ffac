"""Step-level search guided by a verifier: beam search (with lookahead) and DVTS.

Both grow partial solutions one step at a time (see :mod:`ponder.strategies.steps`),
score them with the run's verifier (a PRM's last-step score when it has
``score_steps``) and keep the best. When the budget runs out they return the
best solution found so far.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ponder.strategies.base import RunContext, Work, check_int, check_temperature, finish
from ponder.strategies.steps import (
    Partial,
    best_index,
    child,
    complete,
    extend,
    gather_all,
    score_complete,
    score_partials,
    share_budget,
)
from ponder.strategies.tree import TreeRecorder
from ponder.types import Outcome, Problem, Score

__all__ = ["DVTS", "BeamSearch", "conclude", "expand_wave", "finish_best", "value"]


async def expand_wave(
    ctx: RunContext,
    problem: Problem,
    rec: TreeRecorder,
    parents: Sequence[Partial],
    per_parent: int,
    *,
    temperature: float,
    step_tokens: int,
    dedupe: bool = False,
) -> list[list[Partial]]:
    """``per_parent`` next steps for every parent, all calls in flight together."""
    max_tokens = share_budget(ctx, step_tokens, per_parent * len(parents))
    waves = await gather_all(
        *(
            extend(
                ctx, problem, p.text, n=per_parent, temperature=temperature, max_tokens=max_tokens
            )
            for p in parents
        )
    )
    out: list[list[Partial]] = []
    for parent, gens in zip(parents, waves, strict=True):
        kids: list[Partial] = []
        seen: set[str] = set()
        for g in gens:
            key = " ".join(g.text.split())
            if dedupe and key in seen:
                continue
            seen.add(key)
            node = rec.add(parent.node, g.text, tokens=g.usage.completion_tokens)
            kids.append(child(parent, g, node))
        out.append(kids)
    return out


async def value(
    ctx: RunContext,
    problem: Problem,
    rec: TreeRecorder,
    kids: Sequence[Partial],
    *,
    lookahead: int = 0,
    step_tokens: int = 128,
) -> None:
    """Score ``kids`` in place; with ``lookahead`` > 0 an unfinished kid is judged by
    where ``lookahead`` more greedy steps lead (the extra steps are not kept)."""
    probes = list(kids)
    for _ in range(lookahead):
        live = [i for i, p in enumerate(probes) if not p.done and not p.truncated]
        if not live:
            break
        max_tokens = share_budget(ctx, step_tokens, len(live))
        gens = await gather_all(
            *(
                extend(ctx, problem, probes[i].text, n=1, temperature=0.0, max_tokens=max_tokens)
                for i in live
            )
        )
        for i, (g,) in zip(live, gens, strict=True):
            node = rec.add(
                probes[i].node, g.text, kind="lookahead", tokens=g.usage.completion_tokens
            )
            probes[i] = child(probes[i], g, node)
    values = await score_partials(ctx, problem, probes)
    for kid, v in zip(kids, values, strict=True):
        kid.score = v
        kid.node.score = v


def _top(kids: Sequence[Partial], k: int) -> list[Partial]:
    live = [p for p in kids if not p.done and not p.truncated]
    return sorted(live, key=lambda p: -p.score)[:k]  # stable: ties keep sampling order


async def conclude(
    name: str,
    ctx: RunContext,
    problem: Problem,
    rec: TreeRecorder,
    finished: Sequence[Partial],
    live: Sequence[Partial],
) -> Outcome:
    """Pick the best finished solution (unfinished ones only when none finished)."""
    pool = list(finished) or list(live)
    cands = [p.candidate(problem.task) for p in pool]
    fallback = [p.score for p in pool]
    values = fallback
    with ctx.anytime():  # a metered judge may run out too
        values = await score_complete(ctx, problem, cands, fallback)
    chosen = best_index(values, cands)
    if chosen is not None:
        rec.choose(pool[chosen].node)
        pool[chosen].node.detail["final_score"] = values[chosen]
    ctx.tracer.event("search_done", finished=len(finished), live=len(live))
    scores = [Score(value=v) for v in values]
    return finish(name, ctx, cands, chosen, scores, tree=rec.root)


def _check(
    owner: str, n: int, m: int, max_steps: int, step_tokens: int, temperature: float
) -> None:
    check_int(owner, "n", n, 1)
    check_int(owner, "beam_width", m, 1)
    check_int(owner, "max_steps", max_steps, 1)
    check_int(owner, "step_tokens", step_tokens, 1)
    check_temperature(owner, temperature)


@dataclass
class BeamSearch:
    """Step-level beam search: keep the ``n // beam_width`` best partial solutions,
    expand each ``beam_width`` ways, until they finish or ``max_steps``.

    ``lookahead`` > 0 scores each step by where that many greedy steps lead.
    """

    name: str = "beam_search"
    n: int = 8
    beam_width: int = 4
    max_steps: int = 8
    step_tokens: int = 128
    temperature: float = 0.8
    lookahead: int = 0
    final_tokens: int = 256

    def __post_init__(self) -> None:
        _check(
            self.name, self.n, self.beam_width, self.max_steps, self.step_tokens, self.temperature
        )
        check_int(self.name, "lookahead", self.lookahead, 0)
        check_int(self.name, "final_tokens", self.final_tokens, 1)

    def work(self) -> Work:
        return Work(samples=self.n)

    async def run(self, problem: Problem, ctx: RunContext) -> Outcome:
        rec = TreeRecorder(problem.prompt)
        keep = max(1, self.n // self.beam_width)
        finished: list[Partial] = []
        live = [Partial("", rec.root)]
        with ctx.anytime():
            for depth in range(self.max_steps):
                per = self.n if depth == 0 else self.beam_width
                groups = await expand_wave(
                    ctx,
                    problem,
                    rec,
                    live,
                    per,
                    temperature=self.temperature,
                    step_tokens=self.step_tokens,
                )
                kids = [k for g in groups for k in g]
                await value(
                    ctx, problem, rec, kids, lookahead=self.lookahead, step_tokens=self.step_tokens
                )
                finished += [k for k in kids if k.done]
                live = _top(kids, keep)
                ctx.tracer.event(
                    "beam_step",
                    depth=depth,
                    kept=[round(p.score, 4) for p in live],
                    finished=len(finished),
                )
                if not live:
                    break
            if not finished and live:
                finished = [await finish_best(ctx, problem, rec, live[0], self.final_tokens)]
        return await conclude(self.name, ctx, problem, rec, finished, live)


@dataclass
class DVTS:
    """Diverse verifier tree search: ``n // beam_width`` independent subtrees, each a
    width-1 search that expands its beam ``beam_width`` ways and keeps the best step.

    Independent subtrees keep one high-scoring branch from crowding out the rest.
    """

    name: str = "dvts"
    n: int = 8
    beam_width: int = 4
    max_steps: int = 8
    step_tokens: int = 128
    temperature: float = 0.8
    final_tokens: int = 256

    def __post_init__(self) -> None:
        _check(
            self.name, self.n, self.beam_width, self.max_steps, self.step_tokens, self.temperature
        )
        check_int(self.name, "final_tokens", self.final_tokens, 1)

    def work(self) -> Work:
        return Work(samples=self.n)

    async def run(self, problem: Problem, ctx: RunContext) -> Outcome:
        rec = TreeRecorder(problem.prompt)
        subtrees = max(1, self.n // self.beam_width)
        finished: list[Partial] = []
        live: list[Partial] = []
        with ctx.anytime():
            (roots,) = await expand_wave(
                ctx,
                problem,
                rec,
                [Partial("", rec.root)],
                subtrees,
                temperature=self.temperature,
                step_tokens=self.step_tokens,
            )
            await value(ctx, problem, rec, roots)
            finished += [r for r in roots if r.done]
            live = [r for r in roots if not r.done and not r.truncated]
            for depth in range(1, self.max_steps):
                if not live:
                    break
                groups = await expand_wave(
                    ctx,
                    problem,
                    rec,
                    live,
                    self.beam_width,
                    temperature=self.temperature,
                    step_tokens=self.step_tokens,
                )
                await value(ctx, problem, rec, [k for g in groups for k in g])
                nxt: list[Partial] = []
                for kids in groups:
                    done = [k for k in kids if k.done]
                    finished += done
                    if not done:  # a subtree that reached an answer stops
                        nxt += _top(kids, 1)
                live = nxt
                ctx.tracer.event("dvts_step", depth=depth, live=len(live), finished=len(finished))
            if not finished and live:
                best = max(live, key=lambda p: p.score)
                finished = [await finish_best(ctx, problem, rec, best, self.final_tokens)]
        return await conclude(self.name, ctx, problem, rec, finished, live)


async def finish_best(
    ctx: RunContext, problem: Problem, rec: TreeRecorder, best: Partial, max_tokens: int
) -> Partial:
    """Complete ``best`` greedily to the end (used when a search ends on a partial)."""
    gen = await complete(ctx, problem, best, share_budget(ctx, max_tokens, 1))
    node = rec.add(best.node, gen.text, kind="completion", tokens=gen.usage.completion_tokens)
    done = gen.finish_reason == "stop"
    return Partial(
        best.text + gen.text,
        node,
        done=done,
        truncated=not done,
        generation=gen,
        score=best.score,
        depth=best.depth + 1,
    )
