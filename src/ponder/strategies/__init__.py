"""Test-time-compute strategies and their registry."""

from __future__ import annotations

import dataclasses
import functools
from importlib.metadata import entry_points
from typing import Any

from ponder.errors import InvalidRequest, UnknownStrategy
from ponder.strategies.adaptive import AdaptiveConsistency
from ponder.strategies.base import (
    DeclaresWork,
    RunContext,
    SamplingDefaults,
    Strategy,
    StreamsTokens,
    Work,
    finish,
    streams_tokens,
    to_candidate,
    work_of,
)
from ponder.strategies.basic import BestOfN, ChainOfThought, Direct, SelfConsistency, majority_vote
from ponder.strategies.cascade import Cascade
from ponder.strategies.program import ProgramAided
from ponder.strategies.refine import SelfRefine
from ponder.strategies.search import DVTS, BeamSearch
from ponder.strategies.tree import TreeRecorder, render_tree
from ponder.strategies.tree_search import MCTS, TreeOfThoughts

__all__ = [
    "DVTS",
    "MCTS",
    "AdaptiveConsistency",
    "BeamSearch",
    "BestOfN",
    "Cascade",
    "ChainOfThought",
    "DeclaresWork",
    "Direct",
    "RunContext",
    "ProgramAided",
    "SamplingDefaults",
    "SelfConsistency",
    "SelfRefine",
    "Strategy",
    "StreamsTokens",
    "TreeOfThoughts",
    "TreeRecorder",
    "Work",
    "available_strategies",
    "finish",
    "get_strategy",
    "majority_vote",
    "render_tree",
    "streams_tokens",
    "to_candidate",
    "work_of",
]

_BUILTIN: dict[str, type] = {
    "direct": Direct,
    "cot": ChainOfThought,
    "self_consistency": SelfConsistency,
    "best_of_n": BestOfN,
    "beam_search": BeamSearch,
    "dvts": DVTS,
    "tree_of_thoughts": TreeOfThoughts,
    "mcts": MCTS,
    "self_refine": SelfRefine,
    "program_aided": ProgramAided,
    "adaptive_consistency": AdaptiveConsistency,
    "cascade": Cascade,
}


@functools.cache
def _plugin_strategies() -> tuple[tuple[str, type], ...]:
    # Scanning entry points reads every installed distribution's metadata (milliseconds
    # with a large environment): do it once per process, not on every request.
    return tuple((ep.name, ep.load()) for ep in entry_points(group="ponder.strategies"))


def available_strategies() -> dict[str, type]:
    found = dict(_BUILTIN)
    for name, cls in _plugin_strategies():
        found.setdefault(name, cls)
    return found


def get_strategy(name: str, /, **params: Any) -> Strategy:
    """Build a strategy by name; unknown names and parameters are clear errors."""
    registry = available_strategies()
    cls = registry.get(name)
    if cls is None:
        raise UnknownStrategy(
            f"unknown strategy {name!r}; choose one of: {', '.join(sorted(registry))}",
            param="strategy",
        )
    if dataclasses.is_dataclass(cls):
        allowed = {f.name for f in dataclasses.fields(cls)} - {"name"}
        unknown = set(params) - allowed
        if unknown:
            raise InvalidRequest(
                f"strategy {name!r} has no parameter(s) {sorted(unknown)}; "
                f"it accepts {sorted(allowed)}",
                param="strategy_params",
            )
    try:
        return cls(**params)  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"bad parameters for strategy {name!r}: {exc}") from exc
