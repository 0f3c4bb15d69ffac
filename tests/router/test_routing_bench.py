"""benchmarks/routing.py without a model: the pool order, a partial pool, an exact replay."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from ponder.backends.fake import FunctionBackend, Reply
from ponder.types import GenRequest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "routing.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("routing_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module's annotations
    spec.loader.exec_module(module)
    return module


def args_for(tmp_path: Path, **over: object) -> argparse.Namespace:
    base = {
        "dir": str(tmp_path), "think": 256, "n": 4, "concurrency": 2, "deadline_min": None,
        "threads": 1, "seed": 7, "escalate": 0.5, "strong_price_factor": 3.0,
    }  # fmt: skip
    return argparse.Namespace(**{**base, **over})


def literal_items(bench: ModuleType, k: int) -> list:
    """Simple items whose reference is a literal answer (so a fake model can give it)."""
    items = [
        it
        for it in bench.simple_items(len(bench.SIMPLE))
        if re.escape(it.reference) == it.reference
    ]
    return items[:k]


def engines(bench: ModuleType) -> tuple[FunctionBackend, FunctionBackend]:
    """0.5B: unsure and wrong, except its thinking; 1.5B: sure and right."""
    answers = {
        it.messages[-1].content: it.reference for it in bench.simple_items(len(bench.SIMPLE))
    }

    def small(req: GenRequest, i: int) -> Reply:
        if req.thinking is not None:
            return Reply(answers[req.messages[-1].content], reasoning="let me see", logprob=-0.2)
        return Reply("no idea", logprob=-2.0)

    def strong(req: GenRequest, i: int) -> Reply:
        return Reply(answers[req.messages[-1].content], logprob=-0.01)

    return (
        FunctionBackend(small, name=bench.MODEL),
        FunctionBackend(strong, name=bench.STRONG_MODEL),
    )


def test_the_pool_order_is_seeded_and_independent_of_how_items_were_built(
    bench: ModuleType,
) -> None:
    items = bench.simple_items(len(bench.SIMPLE))
    a = [it.id for it in bench.shuffled(items, 7)]
    b = [it.id for it in bench.shuffled(list(reversed(items)), 7)]
    assert a == b and sorted(a) == sorted(it.id for it in items)
    assert a != [it.id for it in items]  # really shuffled
    assert a != [it.id for it in bench.shuffled(items, 8)]


def test_the_simple_prompts_are_distinct_and_their_graders_accept_their_answers(
    bench: ModuleType,
) -> None:
    prompts = [p for p, _, _ in bench.SIMPLE]
    assert len(set(prompts)) == len(prompts) >= 40
    for it in literal_items(bench, 100):
        assert it.grade(it.reference), it.id
        assert not it.grade("I do not know"), it.id


async def test_a_deadline_of_zero_starts_nothing(bench: ModuleType, tmp_path: Path) -> None:
    small, strong = engines(bench)
    items = literal_items(bench, 3)
    summary = await bench.build_pool(args_for(tmp_path, deadline_min=0), items, (small, strong))
    assert summary["pool_done"] == 0 and summary["skipped_at_deadline"] == 3
    assert not small.calls and not strong.calls


async def test_a_partial_pool_replays_exactly_the_covered_items(
    bench: ModuleType, tmp_path: Path
) -> None:
    items = bench.shuffled(literal_items(bench, 14), 7)
    args = args_for(tmp_path, escalate=1.0)  # every cascade climbs while unsure
    small, strong = engines(bench)
    # The first 10 items of the order are generated; the other 4 never are.
    summary = await bench.build_pool(args, items[:10], (small, strong))
    assert summary["pool_done"] == 10 and summary["check_misses"] == 0
    # Four calls per item: direct, thinking, search on the 0.5B, direct on the 1.5B; and
    # a program on the 0.5B for the items the router reads as math.
    programs = sum(bench.has_program(it) for it in items[:10])
    assert 0 < programs < 10
    assert len(small.calls) == 30 + programs and len(strong.calls) == 10
    assert all(c.logprobs for c in strong.calls)
    # Resumable: a second run generates nothing for covered items.
    again = await bench.build_pool(args, items[:10], engines(bench))
    assert again["already_covered"] == 10 and again["pool_done"] == 0

    pools = bench.Pools.open(
        tmp_path, bench.ReplayOnly(bench.MODEL), bench.ReplayOnly(bench.STRONG_MODEL)
    )
    assert [bench.covered(pools, it, args) for it in items] == [True] * 10 + [False] * 4

    saved = await bench.replay(args, items)
    meta = saved["meta"]
    assert meta["items"] == 10 and meta["pool_misses"] == 0 and meta["pool_hits"] > 0
    ids = set(saved["per_item"]["always-direct"])
    assert ids == {it.id for it in items[:10]}
    assert set(saved["test_ids"]) <= ids
    by_name = {r["policy"]: r for r in saved["results"] if r["split"] == "all"}
    assert by_name["always-direct"]["accuracy"] == 0.0
    strong_row = by_name["always-strong (1.5B direct)"]
    assert strong_row["accuracy"] == 1.0
    assert strong_row["strong_generated_tokens"] == strong_row["generated_tokens"] > 0
    # The cascade escalates the unsure direct answers to the strong tier, whose tokens
    # it reports (and prices at the strong rate).
    cascade = by_name["cascade direct>strong"]
    assert (
        cascade["accuracy"] == 1.0
        and 0 < cascade["strong_generated_tokens"] < cascade["generated_tokens"]
    )
    assert by_name["cascade direct>think>strong"]["accuracy"] == 1.0
    assert cascade["cost_usd"] > by_name["always-direct"]["cost_usd"]
    # The shipped policy, both forms, is judged next to the fixed policies, with the
    # precision of its verification; its calibration records are written for
    # `ponder route calibrate --write-policy`.
    for name in ("default", "default-small"):
        assert {"accuracy", "cost_usd", "verified_pass", "pass_precision"} <= set(by_name[name])
    assert by_name["default-small"]["strong_generated_tokens"] == 0
    records = [json.loads(x) for x in (tmp_path / "calibration.jsonl").read_text().splitlines()]
    assert {r["item_id"] for r in records} == ids
    assert {"direct", "strong", "program"} <= {r["plan"] for r in records}
    # Every policy can be sent to the gateway as a request (or a router configuration).
    assert set(saved["requests"]) == set(by_name)
    assert saved["winner"] in saved["requests"]
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {r["strategy"] for r in records} == {
        "direct",
        "cot",
        "self_consistency",
        "direct@strong",
        "program_aided",
    }
    assert len(records) == 4 * 10 + programs


def test_the_committed_pool_unpacks_where_missing_and_packs_byte_stably(
    bench: ModuleType, tmp_path: Path
) -> None:
    run, packed = tmp_path / "run", tmp_path / "packed"
    run.mkdir()
    (run / "pool.jsonl").write_text('{"key": "a", "generations": []}\n')
    (run / "latency.jsonl").write_text('{"key": "a", "n": 1, "s": 0.5}\n')
    sizes = bench.pack(run, packed)
    assert set(sizes) == {"pool.jsonl", "latency.jsonl"}  # no strong pool yet: none packed
    first = (packed / "pool.jsonl.gz").read_bytes()
    bench.pack(run, packed)
    assert (packed / "pool.jsonl.gz").read_bytes() == first  # no timestamp: same bytes
    fresh = tmp_path / "fresh"
    assert sorted(bench.unpack(fresh, packed)) == ["latency.jsonl", "pool.jsonl"]
    assert (fresh / "pool.jsonl").read_text() == (run / "pool.jsonl").read_text()
    # A local pool (perhaps grown since) is never overwritten by the committed one.
    (fresh / "pool.jsonl").write_text("local\n")
    assert bench.unpack(fresh, packed) == []
    assert (fresh / "pool.jsonl").read_text() == "local\n"


def test_the_live_default_policy_gateway_has_no_router_config(
    bench: ModuleType, tmp_path: Path
) -> None:
    args = args_for(tmp_path)
    both = bench.gateway_toml(args, tmp_path / "l.db", None, default_policy=True)
    assert "[router]" not in both and "[tiers.strong]" in both and "[tiers.small]" in both
    small = bench.gateway_toml(args, tmp_path / "l.db", None, default_policy=True, strong=False)
    assert "[tiers.strong]" not in small and "[router]" not in small
    assert "enabled = false" in bench.gateway_toml(args, tmp_path / "l.db", None)
