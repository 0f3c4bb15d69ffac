"""The backend protocol: the one interface between ponder and a model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from ponder.types import Capabilities, Delta, Generation, GenRequest

__all__ = ["Backend"]


@runtime_checkable
class Backend(Protocol):
    """Anything that turns a :class:`GenRequest` into generations.

    ``generate`` returns ``req.n`` generations. ``stream`` yields deltas of a
    single generation (``n == 1``) as they are produced.
    """

    name: str
    capabilities: Capabilities

    async def generate(self, req: GenRequest) -> list[Generation]: ...

    def stream(self, req: GenRequest) -> AsyncIterator[Delta]: ...
