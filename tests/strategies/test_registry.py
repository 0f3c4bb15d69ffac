"""get_strategy: names and parameters are checked with errors that say what to do."""

from __future__ import annotations

from typing import Any

import pytest

from ponder.errors import InvalidRequest, UnknownStrategy
from ponder.strategies import (
    BestOfN,
    ChainOfThought,
    Direct,
    SelfConsistency,
    Strategy,
    available_strategies,
    get_strategy,
)


def test_builtins_are_registered() -> None:
    found = available_strategies()
    assert {"direct", "cot", "self_consistency", "best_of_n"} <= set(found)
    for name in ("direct", "cot", "self_consistency", "best_of_n"):
        s = get_strategy(name)
        assert isinstance(s, Strategy)
        assert s.name == name


def test_get_strategy_passes_parameters() -> None:
    sc = get_strategy("self_consistency", n=9, temperature=0.3, thinking_budget=64)
    assert isinstance(sc, SelfConsistency)
    assert (sc.n, sc.temperature, sc.thinking_budget) == (9, 0.3, 64)
    cot = get_strategy("cot", thinking_budget=128)
    assert isinstance(cot, ChainOfThought) and cot.thinking_budget == 128
    assert isinstance(get_strategy("best_of_n", n=2), BestOfN)
    assert isinstance(get_strategy("direct"), Direct)


def test_unknown_strategy_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownStrategy) as info:
        get_strategy("tree_of_gold")

    msg = info.value.message
    assert "tree_of_gold" in msg
    for name in ("best_of_n", "cot", "direct", "self_consistency"):
        assert name in msg
    assert info.value.param == "strategy"
    assert isinstance(info.value, InvalidRequest)
    assert info.value.to_openai()["error"]["code"] == "unknown_strategy"  # type: ignore[index]


def test_unknown_parameter_is_an_invalid_request_naming_the_accepted_ones() -> None:
    with pytest.raises(InvalidRequest) as info:
        get_strategy("self_consistency", n=3, beam_width=4)

    msg = info.value.message
    assert "beam_width" in msg
    assert "'n'" in msg and "temperature" in msg
    assert info.value.param == "strategy_params"


def test_name_is_not_a_parameter() -> None:
    with pytest.raises(InvalidRequest):
        get_strategy("direct", name="sneaky")


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("self_consistency", {"n": 0}),
        ("best_of_n", {"n": -2}),
        ("cot", {"thinking_budget": -1}),
        ("direct", {"temperature": -1.0}),
        ("self_consistency", {"n": "many"}),
    ],
)
def test_invalid_values_are_invalid_requests(name: str, params: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as info:
        get_strategy(name, **params)
    assert info.value.param == next(iter(params))
    assert name in info.value.message
