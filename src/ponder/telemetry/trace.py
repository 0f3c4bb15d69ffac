"""A minimal in-memory tracer: named events with data, kept on the outcome.

A ``listener`` sees each event as it happens (the gateway turns them into
progress events of a stream); a failing listener is logged, never raised into
the strategy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ponder.types import TraceEvent

__all__ = ["Tracer", "TraceListener"]

logger = logging.getLogger("ponder.trace")

TraceListener = Callable[[TraceEvent], None]


class Tracer:
    def __init__(self, listener: TraceListener | None = None) -> None:
        self.events: list[TraceEvent] = []
        self.listener = listener

    def event(self, name: str, **data: Any) -> None:
        event = TraceEvent(name=name, data=data)
        self.events.append(event)
        if self.listener is not None:
            try:
                self.listener(event)
            except Exception:
                logger.exception("trace listener failed on event %r", name)
