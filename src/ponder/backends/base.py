"""The backend protocol: the one interface between ponder and a model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ponder.types import Capabilities, Delta, Generation, GenRequest

__all__ = ["Backend", "PromptState", "PromptStateSource"]


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


@dataclass(frozen=True)
class PromptState:
    """The model's own reading of a prompt: the final hidden state of its last token.

    ``evaluated`` prompt tokens were computed for it and ``reused`` came from the
    engine's prefix cache (the router's model-signal features; see
    benchmarks/router_signal.py). ``layers`` maps each layer the engine was asked to
    probe to that block's output for the same token (empty unless configured), and
    ``layer_means`` to that block's output averaged over the ``evaluated`` tokens (a
    prefix served from the cache is not in the mean: probe with the cache off, or on
    prompts that share no prefix, for means over whole prompts).
    """

    vector: Any  # a 1-D numpy float array of the model's hidden size
    evaluated: int
    reused: int
    layers: dict[int, Any] = field(default_factory=dict)
    layer_means: dict[int, Any] = field(default_factory=dict)


@runtime_checkable
class PromptStateSource(Protocol):
    """A backend that can hand out :class:`PromptState` (the embedded engine)."""

    async def prompt_state(self, req: GenRequest) -> PromptState: ...
