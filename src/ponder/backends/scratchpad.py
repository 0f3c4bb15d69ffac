"""Delimited-scratchpad helpers: prompting a thought, finding its end, holding back partial tags.

Pure functions over text, shared by the backends that ask a model without
native thinking to reason inside ``<think> ... </think>`` (or any pair of tags
set in :class:`~ponder.types.ThinkingConfig`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ponder.types import Message, ThinkingConfig

__all__ = [
    "SCRATCHPAD_INSTRUCTION",
    "holdback",
    "scratchpad_messages",
    "unclosed_thought",
    "visible_reasoning",
]

SCRATCHPAD_INSTRUCTION = (
    "Before answering, think step by step inside {open} ... {close}. "
    "After {close}, give only the final answer."
)


def scratchpad_messages(messages: list[Message], cfg: ThinkingConfig) -> list[Message]:
    """Ask a model without native thinking to think in a delimited scratchpad."""
    instruction = SCRATCHPAD_INSTRUCTION.format(open=cfg.open_tag, close=cfg.close_tag)
    if messages and messages[0].role == "system":
        first = Message(role="system", content=f"{messages[0].content}\n\n{instruction}")
        return [first, *messages[1:]]
    return [Message(role="system", content=instruction), *messages]


def holdback(text: str, markers: Sequence[str]) -> int:
    """How many trailing characters of ``text`` may be the start of one of ``markers``.

    A stream must not show them yet: the next piece may complete a stop string
    or a closing tag that the caller should never see.
    """
    hold = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text)), 0, -1):
            if text.endswith(marker[:k]):
                hold = max(hold, k)
                break
    return hold


def visible_reasoning(text: str, cfg: ThinkingConfig | None) -> str:
    """The thought as a caller may see it: up to the closing tag, without leading newlines."""
    if cfg is None:
        return text
    cut = text.find(cfg.close_tag)
    return (text if cut < 0 else text[:cut]).lstrip("\n")


def unclosed_thought(text: str, cfg: ThinkingConfig) -> bool:
    """Whether ``text`` (a partial assistant message) stops inside an open thought."""
    return cfg.open_tag in text and cfg.close_tag not in text.split(cfg.open_tag)[-1]
