"""Guardrails on the way in and out (``ponder.guardrails``): wrap untrusted input,
scan what leaves, and record what they did (never the leaked text)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ponder.guardrails import Document, Finding, GuardrailPolicy, StreamScan, summarize
from ponder.server.planning import Plan
from ponder.server.protocol import ChatCompletionRequest, ChunkDelta
from ponder.telemetry.metrics import GatewayMetrics
from ponder.types import Outcome

__all__ = [
    "Screened",
    "StreamShield",
    "count_guardrails",
    "guard_input",
    "guard_outcome",
    "guardrail_record",
]


@dataclass(frozen=True)
class Screened:
    """What the output guardrails found: redactions, or a refusal when ``refused`` is set."""

    findings: list[Finding] = field(default_factory=list)
    refused: Finding | None = None


def guard_input(policy: GuardrailPolicy, p: Plan, request: ChatCompletionRequest) -> Plan:
    """The plan with untrusted documents wrapped into its messages, and its output scanner."""
    docs = [
        Document(content=d.content, id=d.id or "", title=d.title) for d in request.ponder.documents
    ]
    wrapped = policy.wrap(p.messages, docs)
    return dataclasses.replace(
        p,
        messages=wrapped.messages,
        wrapped=wrapped.wrapped,
        scanner=policy.scanner(wrapped.protected),
    )


def guard_outcome(p: Plan, outcome: Outcome) -> tuple[Outcome, Screened]:
    """The outcome with leaks redacted (emptied when the policy refuses it), and the findings."""
    scanner = p.scanner
    if scanner is None or not scanner.active:
        return outcome, Screened()
    answer = scanner.scan(outcome.answer)
    findings, refused = list(answer.findings), answer.refused
    update: dict[str, Any] = {"answer": answer.text}
    # Reasoning and the search tree are scanned only when they are returned.
    if p.include_reasoning:
        reasoning = scanner.scan(outcome.reasoning)
        findings += reasoning.findings
        refused = refused or reasoning.refused
        update["reasoning"] = reasoning.text
        if outcome.tree is not None:
            tree, tree_findings, tree_refused = scanner.scan_tree(outcome.tree)
            findings += tree_findings
            refused = refused or tree_refused
            update["tree"] = tree
    if refused is not None:
        update = {"answer": "", "reasoning": "", "tree": None}
    screened = Screened(findings=findings, refused=refused)
    return (outcome.model_copy(update=update) if findings else outcome), screened


def guardrail_record(p: Plan, screened: Screened) -> dict[str, Any]:
    """The ledger row's record of what the guardrails did (no leaked text)."""
    record: dict[str, Any] = summarize(screened.findings, screened.refused)
    if p.wrapped:
        record["wrapped"] = p.wrapped
    return {"guardrails": record} if record else {}


def count_guardrails(metrics: GatewayMetrics, p: Plan, screened: Screened) -> None:
    for source, count in p.wrapped.items():
        metrics.guardrail(source, "wrapped", count)
    for f in screened.findings:
        metrics.guardrail(f.kind, "refused" if f is screened.refused else "redacted")


class StreamShield:
    """A stream's output guardrails: answer and (when returned) reasoning scanned apart."""

    def __init__(self, p: Plan) -> None:
        active = p.scanner is not None and p.scanner.active
        self.text: StreamScan | None = p.scanner.stream() if active else None
        self.include_reasoning = p.include_reasoning
        self.reasoning: StreamScan | None = (
            p.scanner.stream() if active and p.include_reasoning else None
        )
        self._reasoning_closed = False

    @property
    def refused(self) -> Finding | None:
        return next((s.refused for s in (self.text, self.reasoning) if s and s.refused), None)

    @property
    def screened(self) -> Screened:
        findings = [f for s in (self.text, self.reasoning) if s for f in s.findings]
        return Screened(findings=findings, refused=self.refused)

    def piece(self, text: str, reasoning: str) -> ChunkDelta | None:
        if not self.include_reasoning:
            reasoning = ""
        if self.reasoning is not None and reasoning:
            reasoning = self.reasoning.feed(reasoning)
        if text and self.reasoning is not None and not self._reasoning_closed:
            # The thought is over once the answer starts: send what it held back first.
            reasoning += self.reasoning.close()
            self._reasoning_closed = True
        if self.text is not None and text:
            text = self.text.feed(text)
        return self._delta(text, reasoning)

    def flush(self) -> ChunkDelta | None:
        if self.refused is not None:
            return None
        text = self.text.close() if self.text is not None else ""
        reasoning = ""
        if self.reasoning is not None and not self._reasoning_closed:
            reasoning = self.reasoning.close()
        return self._delta(text, reasoning)

    def _delta(self, text: str, reasoning: str) -> ChunkDelta | None:
        if self.refused is not None or not (text or reasoning):
            return None
        return ChunkDelta(content=text or None, reasoning_content=reasoning or None)
