"""A minimal in-memory tracer: named events with data, kept on the outcome."""

from __future__ import annotations

from typing import Any

from ponder.types import TraceEvent

__all__ = ["Tracer"]


class Tracer:
    def __init__(self) -> None:
        self.events: list[TraceEvent] = []

    def event(self, name: str, **data: Any) -> None:
        self.events.append(TraceEvent(name=name, data=data))
