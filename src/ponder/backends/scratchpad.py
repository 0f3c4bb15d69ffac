"""Thinking in text: the scratchpad prompt and the ``<think>`` tags, as pure functions.

Models without native thinking are asked to think inside delimiters; models that do
think often put their thought between ``<think>`` tags in the text. These helpers add
the instruction and split (whole or streamed) text into reasoning and answer.
"""

from __future__ import annotations

from typing import Literal

from ponder.text import holdback
from ponder.types import Message, ThinkingConfig

__all__ = [
    "ASK_FOR_ANSWER",
    "SCRATCHPAD_INSTRUCTION",
    "ThinkSplitter",
    "holdback",
    "partial_tag_suffix",
    "scratchpad_messages",
    "split_think",
    "unclosed_thought",
    "visible_reasoning",
]

SCRATCHPAD_INSTRUCTION = (
    "Before answering, think step by step inside {open} ... {close}. "
    "After {close}, give only the final answer."
)
# Sent after a thought that was closed for the model, where it cannot continue its turn.
ASK_FOR_ANSWER = "Stop thinking now. Give your final answer."


def scratchpad_messages(messages: list[Message], cfg: ThinkingConfig) -> list[Message]:
    """Ask a model without native thinking to think in a delimited scratchpad."""
    instruction = SCRATCHPAD_INSTRUCTION.format(open=cfg.open_tag, close=cfg.close_tag)
    if messages and messages[0].role == "system":
        first = Message(role="system", content=f"{messages[0].content}\n\n{instruction}")
        return [first, *messages[1:]]
    return [Message(role="system", content=instruction), *messages]


def split_think(
    text: str, open_tag: str = "<think>", close_tag: str = "</think>"
) -> tuple[str, str]:
    """``(reasoning, answer)`` from text that may hold a ``<think>`` block.

    A close tag without an open one counts too: chat templates of thinking
    models often put the open tag into the prompt. An unclosed thought is all
    reasoning.
    """
    stripped = text.lstrip()
    if stripped.startswith(open_tag):
        rest = stripped[len(open_tag) :]
        if close_tag in rest:
            thought, answer = rest.split(close_tag, 1)
            return thought.strip(), answer.lstrip()
        return rest.strip(), ""
    if close_tag in text:
        thought, answer = text.split(close_tag, 1)
        return thought.strip(), answer.lstrip()
    return "", text


def visible_reasoning(text: str, cfg: ThinkingConfig | None) -> str:
    """The thought as a caller may see it: up to the closing tag, without leading newlines."""
    if cfg is None:
        return text
    cut = text.find(cfg.close_tag)
    return (text if cut < 0 else text[:cut]).lstrip("\n")


def unclosed_thought(text: str, cfg: ThinkingConfig) -> bool:
    """Whether ``text`` (a partial assistant message) stops inside an open thought."""
    return cfg.open_tag in text and cfg.close_tag not in text.split(cfg.open_tag)[-1]


def partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``
    (text a stream must hold back: the next chunk may complete the tag)."""
    return holdback(text, [tag])


class ThinkSplitter:
    """Incremental :func:`split_think` for streams; holds back partial tags."""

    def __init__(self, open_tag: str = "<think>", close_tag: str = "</think>") -> None:
        self.open_tag, self.close_tag = open_tag, close_tag
        self.state: Literal["start", "thinking", "answer"] = "start"
        self.buf = ""
        self._answer_started = False

    def feed(self, chunk: str) -> tuple[str, str]:
        self.buf += chunk
        reasoning = text = ""
        if self.state == "start":
            head = self.buf.lstrip()
            if head.startswith(self.open_tag):
                self.state, self.buf = "thinking", head[len(self.open_tag) :].lstrip()
            elif self.open_tag.startswith(head):
                return "", ""  # could still become the open tag
            else:
                self.state = "answer"
        if self.state == "thinking":
            if self.close_tag in self.buf:
                thought, rest = self.buf.split(self.close_tag, 1)
                reasoning, self.buf, self.state = thought, rest.lstrip(), "answer"
            else:
                keep = partial_tag_suffix(self.buf, self.close_tag)
                reasoning, self.buf = (
                    self.buf[: len(self.buf) - keep],
                    self.buf[len(self.buf) - keep :],
                )
                return reasoning, ""
        if self.state == "answer":
            text, self.buf = self.buf, ""
            if not self._answer_started:
                text = text.lstrip()
                self._answer_started = bool(text)
        return reasoning, text

    def flush(self) -> tuple[str, str]:
        rest, self.buf = self.buf, ""
        if self.state == "thinking":
            return rest, ""
        return "", rest
