"""Plain text helpers shared by the engines and the tool-call parser (no I/O, no imports)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["holdback"]


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
