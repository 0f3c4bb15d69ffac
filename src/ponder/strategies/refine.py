"""Self-refine: draft, critique (execution or verifier feedback when there is any), revise."""

from __future__ import annotations

from dataclasses import dataclass

from ponder.strategies.base import RunContext, check_int, check_temperature, finish, to_candidate
from ponder.strategies.tree import TreeRecorder
from ponder.types import Candidate, Message, Outcome, Problem, Score, TraceNode

__all__ = ["SelfRefine"]

CRITIQUE_PROMPT = (
    "Check your answer above step by step. If it is fully correct, reply with the single "
    "word CORRECT. Otherwise list the mistakes briefly."
)
REVISE_PROMPT = (
    "Your answer above has problems:\n{feedback}\n\n"
    "Write a corrected, complete answer (not a description of the changes)."
)


@dataclass
class SelfRefine:
    """Generate, critique, revise, up to ``rounds`` revisions.

    With a verifier, its score decides when to stop (``score >= threshold`` or
    ``detail["satisfied"]``) and its ``detail["feedback"]`` (e.g. failing tests)
    is the critique; without feedback the model critiques its own answer. The
    best-scored version is returned, not merely the last.
    """

    name: str = "self_refine"
    rounds: int = 2
    threshold: float = 1.0
    temperature: float = 0.0

    def __post_init__(self) -> None:
        check_int(self.name, "rounds", self.rounds, 0)
        check_temperature(self.name, self.temperature)

    async def _judge(
        self, ctx: RunContext, problem: Problem, cand: Candidate
    ) -> tuple[Score, bool, str]:
        """(score, satisfied, feedback) for one version."""
        if ctx.verifier is not None:
            (s,) = await ctx.verifier.score(problem, [cand])
            satisfied = bool(s.detail.get("satisfied", s.value >= self.threshold))
            return s, satisfied, str(s.detail.get("feedback") or "")
        return Score(value=0.0), False, ""

    async def _critique(self, ctx: RunContext, problem: Problem, cand: Candidate) -> str:
        messages = [
            *problem.messages,
            Message(role="assistant", content=cand.text),
            Message(role="user", content=CRITIQUE_PROMPT),
        ]
        (gen,) = await ctx.generate(ctx.request(problem, temperature=0.0, messages=messages))
        return gen.text.strip()

    async def run(self, problem: Problem, ctx: RunContext) -> Outcome:
        rec = TreeRecorder(problem.prompt)
        versions: list[Candidate] = []
        scores: list[Score] = []
        nodes: list[TraceNode] = []
        parent = rec.root
        with ctx.anytime():
            (gen,) = await ctx.generate(ctx.request(problem, temperature=self.temperature))
            for round_ in range(self.rounds + 1):
                cand = to_candidate(gen, problem.task)
                versions.append(cand)
                scores.append(Score(value=0.0))
                node = rec.add(
                    parent,
                    cand.text,
                    kind="draft" if round_ == 0 else "revision",
                    tokens=gen.usage.completion_tokens,
                )
                nodes.append(node)
                parent = node
                score, satisfied, feedback = await self._judge(ctx, problem, cand)
                scores[-1] = score
                node.score = score.value
                if satisfied or round_ == self.rounds:
                    break
                if not feedback:
                    feedback = await self._critique(ctx, problem, cand)
                    if feedback.upper().startswith("CORRECT") and ctx.verifier is None:
                        break
                node.detail["feedback"] = feedback
                ctx.tracer.event("critique", round=round_, feedback=feedback[:500])
                messages = [
                    *problem.messages,
                    Message(role="assistant", content=cand.text),
                    Message(role="user", content=REVISE_PROMPT.format(feedback=feedback)),
                ]
                (gen,) = await ctx.generate(
                    ctx.request(problem, temperature=self.temperature, messages=messages)
                )
        if not versions:
            return finish(self.name, ctx, [], None, tree=rec.root)
        # Best score wins; among equals the later (revised) version.
        chosen = max(
            range(len(versions)),
            key=lambda i: (not versions[i].truncated, scores[i].value, i),
        )
        rec.choose(nodes[chosen])
        return finish(self.name, ctx, versions, chosen, scores, tree=rec.root)
