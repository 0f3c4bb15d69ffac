"""The search tree every strategy run records: nodes with text, scores, tokens, chosen path.

Strategies grow a :class:`TreeRecorder` while they search; the finished tree
travels on ``Outcome.tree`` (plain pydantic data, so the gateway can return it)
and :func:`render_tree` prints it for the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ponder.types import Candidate, Score, TraceNode

__all__ = ["TreeRecorder", "flat_tree", "render_tree"]


class TreeRecorder:
    """Builds a :class:`TraceNode` tree; remembers parents so a chosen path can be marked."""

    def __init__(self, text: str = "", kind: str = "problem") -> None:
        self.root = TraceNode(id=0, text=text, kind=kind)
        self._parent: dict[int, TraceNode | None] = {0: None}
        self._next = 1

    def add(
        self,
        parent: TraceNode,
        text: str,
        *,
        kind: str = "step",
        score: float | None = None,
        tokens: int = 0,
        **detail: Any,
    ) -> TraceNode:
        node = TraceNode(
            id=self._next, text=text, kind=kind, score=score, tokens=tokens, detail=detail
        )
        self._next += 1
        parent.children.append(node)
        self._parent[node.id] = parent
        return node

    def path(self, node: TraceNode) -> list[TraceNode]:
        """The nodes from the root down to ``node``."""
        out: list[TraceNode] = []
        cur: TraceNode | None = node
        while cur is not None:
            out.append(cur)
            cur = self._parent.get(cur.id)
        return out[::-1]

    def choose(self, node: TraceNode | None) -> None:
        """Mark the path from the root to ``node`` as the returned answer's."""
        if node is None:
            return
        for n in self.path(node):
            n.chosen = True


def flat_tree(
    candidates: Sequence[Candidate], scores: Sequence[Score], chosen: int | None
) -> TraceNode:
    """A root with one child per candidate: the tree of a sample-and-select strategy."""
    rec = TreeRecorder()
    for i, c in enumerate(candidates):
        gen = c.generation
        node = rec.add(
            rec.root,
            c.text,
            kind="sample",
            score=scores[i].value if i < len(scores) else None,
            tokens=gen.usage.completion_tokens if gen is not None else 0,
            answer=c.answer,
        )
        if i == chosen:
            rec.choose(node)
    return rec.root


def _short(text: str, width: int) -> str:
    one = " ".join(text.split())
    return one if len(one) <= width else one[: width - 1] + "…"


def render_tree(node: TraceNode, *, width: int = 72) -> str:
    """A plain-text view of the tree: ``*`` marks the chosen path."""
    lines: list[str] = []

    def walk(n: TraceNode, prefix: str, last: bool, top: bool) -> None:
        mark = "*" if n.chosen else " "
        score = f" score={n.score:.3g}" if n.score is not None else ""
        tokens = f" tok={n.tokens}" if n.tokens else ""
        head = "" if top else prefix + ("└─ " if last else "├─ ")
        lines.append(f"{head}{mark}[{n.kind}{score}{tokens}] {_short(n.text, width)}")
        child_prefix = "" if top else prefix + ("   " if last else "│  ")
        for i, c in enumerate(n.children):
            walk(c, child_prefix, i == len(n.children) - 1, False)

    walk(node, "", True, True)
    return "\n".join(lines)
