from __future__ import annotations

import json

import pytest

from ponder.backends.fake import FunctionBackend
from ponder.eval.datasets import records
from ponder.eval.runner import EvalConfig, ResultStore, expand_grid, run_eval


def items(n=6):
    return records(
        [{"id": f"q{i}", "prompt": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(n)]
    )


def right_answers(req, index):
    q = req.messages[-1].content
    i = int(q.split()[2].split("+")[0])
    return f"Answer: {2 * i}"


class Interrupted(Exception):
    pass


def test_expand_grid_gives_one_config_per_n_only_for_sampling_strategies():
    grid = expand_grid(
        ["direct", "self_consistency", "best_of_n:temperature=0.5"], ns=[1, 4], budgets=[None, 100]
    )
    keys = {(c.strategy, c.params.get("n"), c.budget) for c in grid}
    assert ("direct", None, None) in keys and ("direct", None, 100) in keys
    assert {(s, n) for s, n, _ in keys if s == "self_consistency"} == {
        ("self_consistency", 1),
        ("self_consistency", 4),
    }
    assert all(c.params["temperature"] == 0.5 for c in grid if c.strategy == "best_of_n")
    assert len(grid) == 2 + 4 + 4


async def test_resume_after_interruption_repeats_no_finished_item(tmp_path):
    store = ResultStore(tmp_path / "results.jsonl")
    calls: list[str] = []

    def flaky(req, index):
        calls.append(req.messages[-1].content)
        if len(calls) == 4:
            raise Interrupted("simulated crash mid-run")
        return right_answers(req, index)

    config = EvalConfig(model="m", strategy="direct")
    with pytest.raises(Interrupted):
        await run_eval(items(), [config], {"m": FunctionBackend(flaky)}, store, concurrency=1)
    finished = {r["item_id"] for r in store.load()}
    assert len(finished) == 3

    second: list[str] = []

    def counting(req, index):
        second.append(req.messages[-1].content)
        return right_answers(req, index)

    new = await run_eval(items(), [config], {"m": FunctionBackend(counting)}, store, concurrency=2)
    assert len(second) == 3  # only the unfinished items ran again
    assert {r["item_id"] for r in new}.isdisjoint(finished)
    all_rows = store.load()
    assert len(all_rows) == 6 and all(r["correct"] for r in all_rows)


async def test_torn_last_line_is_ignored_and_rerun(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    config = EvalConfig(model="m", strategy="direct")
    await run_eval(items(2), [config], {"m": FunctionBackend(right_answers)}, store)
    with open(store.path, "a") as fh:
        fh.write('{"config_key": "m|direct", "item_id": "q')  # killed mid-write
    assert len(store.load()) == 2
    new = await run_eval(items(3), [config], {"m": FunctionBackend(right_answers)}, store)
    assert [r["item_id"] for r in new] == ["q2"]


async def test_records_grade_verdicts_per_sample_and_usage(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")

    def mixed(req, index):
        return "Answer: 0" if index == 0 else right_answers(req, index)

    config = EvalConfig(model="m", strategy="self_consistency", params={"n": 3})
    (row,) = await run_eval(items(2)[1:], [config], {"m": FunctionBackend(mixed)}, store)
    assert row["correct"] is True  # majority of 3 is right
    assert row["sample_verdicts"] == [False, True, True]
    assert row["usage"]["output"] == 6 and row["usage"]["input"] > 0
    assert json.loads(store.path.read_text().splitlines()[0])["item_id"] == "q1"


async def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no backend"):
        await run_eval(
            items(1),
            [EvalConfig(model="x", strategy="direct")],
            {},
            ResultStore(tmp_path / "r.jsonl"),
        )


def test_grid_scales_each_strategy_by_its_own_knob():
    grid = expand_grid(["self_refine", "adaptive_consistency", "cot"], ns=[2, 8])
    assert {c.params.get("rounds") for c in grid if c.strategy == "self_refine"} == {2, 8}
    assert {c.params.get("max_samples") for c in grid if c.strategy == "adaptive_consistency"} == {
        2,
        8,
    }
    assert [c.params for c in grid if c.strategy == "cot"] == [{}]
