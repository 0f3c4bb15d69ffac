"""Routing policies head to head on one recorded sample pool (exact replay).

A mixed workload on the embedded model: reasoning-gym arithmetic at three
difficulty levels and GSM-style word problems, a few HumanEval items, and simple
lookups / formatting requests, each with an exact grader. The candidate pool is
generated once (stage ``pool``): for every item the three rungs a policy can buy,
direct (greedy, with logprobs), thinking (greedy after up to ``--think`` thinking
tokens) and search (self-consistency, ``--n`` samples), with their token counts and
wall times, stored under ``runs/routing/``. Stage ``replay`` then runs every policy
over that pool through :class:`~ponder.eval.pool.PooledBackend`; a request the pool
lacks is an error, never a silent live call, so every policy sees the same samples:

- always-direct, always-max (the search rung), fixed medium budget (the thinking rung);
- the heuristic router and the learned router (trained on a disjoint split of items);
- the cascade (direct -> thinking -> search while confidence < threshold), with its
  threshold calibrated on the training split.

Accuracy, reasoning / output tokens, p50/p95 latency (sum of the recorded wall times
of the calls a policy makes) and cost per correct answer are reported on the test
split (and on all items for the non-learned policies). JSON lines, then a table.

    .venv/bin/python benchmarks/routing.py pool            # generate (resumable)
    .venv/bin/python benchmarks/routing.py replay          # compare policies
    .venv/bin/python benchmarks/routing.py all
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ponder.api import Ponder
from ponder.backends.base import Backend
from ponder.eval.datasets import Item, humaneval, reasoning_gym, records
from ponder.eval.pool import PooledBackend, request_key
from ponder.eval.runner import item_seed
from ponder.types import Capabilities, Delta, Generation, GenRequest, Outcome

MODEL = "qwen2.5-coder-0.5b-instruct"
# Illustrative prices (USD per million tokens) for the cost-per-correct column.
PRICE_IN, PRICE_OUT = 0.05, 0.20

SIMPLE = [
    ("What is 1+9900? Reply with only the number.", "9901", "math"),
    ("What is the capital of France? Reply with one word.", "Paris", "contains"),
    ("Write the word 'banana' in upper case. Reply with only the word.", "BANANA", "regex"),
    ("Reverse the string 'abc'. Reply with only the result.", "cba", "regex"),
    ("How many days are in a week? Reply with only the number.", "7", "math"),
    ("What is the chemical symbol for gold? Reply with only the symbol.", r"\bAu\b", "regex"),
    ("Format the date 2024-03-05 as DD/MM/YYYY. Reply with only the date.", "05/03/2024", "contains"),
    (
        "Sort the numbers 3, 1, 2 ascending and reply with only a JSON array.",
        r"\[\s*1\s*,\s*2\s*,\s*3\s*\]",
        "regex",
    ),
    ("What is 12 times 12? Reply with only the number.", "144", "math"),
    ("What is the opposite of 'hot'? Reply with one word.", "cold", "contains"),
    ("Write 'hello world' in title case. Reply with only the result.", "Hello World", "regex"),
    ("How many letters are in the word 'ponder'? Reply with only the number.", "6", "math"),
    ("What is 100 minus 1? Reply with only the number.", "99", "math"),
    ("What is the file extension of 'report.pdf', without the dot? Reply with one word.", r"\bpdf\b", "regex"),
    ("Which is larger, 7 or 4? Reply with only the number.", "7", "math"),
    ("Join the words 'data' and 'base' into one word. Reply with only the word.", r"(?i)\bdatabase\b", "regex"),
]  # fmt: skip


def workload(args: argparse.Namespace) -> list[Item]:
    items: list[Item] = []
    for task in ("basic_arithmetic", "chain_sum"):
        items += reasoning_gym(task, levels=(1, 2, 3), per_level=args.per_level, seed=args.seed)
    items += reasoning_gym("gsm_symbolic", levels=(1,), per_level=args.gsm, seed=args.seed)
    items += humaneval(limit=args.humaneval, seed=args.seed)
    simple = records(
        [
            {"id": f"simple/{i}", "prompt": p, "answer": a, "verifier": v}
            for i, (p, a, v) in enumerate(SIMPLE[: args.simple])
        ],
        name="simple",
    )
    for it in simple:
        it.kind = "text"  # a lookup, whatever its grader
        it.difficulty = 0
    items += simple
    # A fixed interleaving: a pool cut short still covers every kind of request.
    random.Random(args.seed).shuffle(items)
    return items


def max_tokens_for(item: Item) -> int:
    return {"code": 384, "text": 64}.get(item.kind, 256)


# --------------------------------------------------------------------------- recording


class TimedBackend:
    """Records each call's wall time by pool key, so replayed policies get real latencies."""

    def __init__(self, inner: Backend, path: Path, model: str) -> None:
        self.inner, self.name, self.model = inner, inner.name, model
        self.capabilities: Capabilities = inner.capabilities
        self.path = path

    async def generate(self, req: GenRequest) -> list[Generation]:
        t0 = time.monotonic()
        gens = await self.inner.generate(req)
        with open(self.path, "a") as fh:
            row = {"key": request_key(req, self.model), "n": req.n, "s": time.monotonic() - t0}
            fh.write(json.dumps(row) + "\n")
        return gens

    def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        return self.inner.stream(req)


class ReplayOnly:
    """The inner backend of a replay: a pool miss is a bug in the benchmark, not a live call."""

    name = MODEL
    capabilities = Capabilities(native_n=True, logprobs=True, thinking_budget=True)

    async def generate(self, req: GenRequest) -> list[Generation]:
        raise LookupError("request not in the pool")

    def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        raise LookupError("request not in the pool")


class Clock:
    """Sums the recorded wall time of every call a replayed run makes."""

    def __init__(self, inner: PooledBackend, times: dict[str, float]) -> None:
        self.inner, self.times = inner, times
        self.name, self.capabilities = inner.name, inner.capabilities
        self.seconds = 0.0

    async def generate(self, req: GenRequest) -> list[Generation]:
        gens = await self.inner.generate(req)
        self.seconds += self.times.get(request_key(req, MODEL), 0.0)
        return gens

    def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        return self.inner.stream(req)


# The three rungs every policy buys from, as (strategy, params).
def rung_configs(args: argparse.Namespace) -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        "direct": ("direct", {}),
        "think": ("cot", {"thinking_budget": args.think}),
        "search": ("self_consistency", {"n": args.n, "temperature": 0.7}),
    }


def cascade_params(args: argparse.Namespace, threshold: float) -> dict[str, Any]:
    return {
        "threshold": threshold,
        "thinking_budget": args.think,
        "search_n": args.n,
        "search_temperature": 0.7,
    }


async def solve(backend: Backend, item: Item, strategy: str, params: dict[str, Any]) -> Outcome:
    return await Ponder(backend).asolve(
        item.problem(),
        strategy,
        max_tokens=max_tokens_for(item),
        seed=item_seed(item.id),
        **params,
    )


async def build_pool(args: argparse.Namespace, items: Sequence[Item]) -> None:
    from ponder.backends.llama_cpp import LlamaCppBackend

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    # One thread: on a shared 2-core machine two spinning threads mostly wait on each other.
    engine = LlamaCppBackend(
        MODEL, n_ctx=4096, max_sequences=max(8, args.n * 2), threads=args.threads
    )
    pool = PooledBackend(
        TimedBackend(engine, out / "latency.jsonl", MODEL), out / "pool.jsonl", MODEL
    )
    gate = asyncio.Semaphore(args.concurrency)
    done = 0
    started = time.monotonic()

    async def one(item: Item) -> None:
        nonlocal done
        async with gate:
            # A cascade that always escalates buys exactly the three rungs (direct with logprobs).
            await solve(pool, item, "cascade", cascade_params(args, 1.0))
            for strategy, params in rung_configs(args).values():  # hits, unless a rung was skipped
                await solve(pool, item, strategy, params)
            done += 1
            print(
                json.dumps({"pool": item.id, "done": done, "of": len(items),
                            "elapsed_s": round(time.monotonic() - started, 1)}),
                flush=True,
            )  # fmt: skip

    try:
        await asyncio.gather(*(one(it) for it in items))
    finally:
        engine.close()


# --------------------------------------------------------------------------- replay


@dataclass
class Row:
    item: Item
    correct: bool
    reasoning: int
    output: int
    prompt: int
    latency_s: float
    rungs: int = 1


def load_times(path: Path) -> dict[str, float]:
    times: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            times[r["key"]] = r["s"]
    return times


async def replay_one(
    pool: PooledBackend, times: dict[str, float], item: Item, strategy: str, params: dict[str, Any]
) -> Row:
    clock = Clock(pool, times)
    outcome = await solve(clock, item, strategy, params)
    correct = await asyncio.to_thread(item.grade, outcome.answer)
    rungs = sum(1 for e in outcome.trace if e.name == "rung" and "confidence" in e.data)
    return Row(
        item, bool(correct), outcome.usage.reasoning, outcome.usage.output,
        outcome.usage.prompt_tokens, clock.seconds, max(rungs, 1),
    )  # fmt: skip


def covered(pool: PooledBackend, item: Item, args: argparse.Namespace) -> bool:
    """Whether the pool holds all three rungs of ``item``."""
    from ponder.strategies.base import RunContext, SamplingDefaults

    ctx = RunContext(
        backend=None,  # type: ignore[arg-type]  # only request() is used
        sampling=SamplingDefaults(max_tokens=max_tokens_for(item), seed=item_seed(item.id)),
    )
    from ponder.types import ThinkingConfig

    problem = item.problem()
    reqs = [
        ctx.request(problem),
        ctx.request(problem, thinking=ThinkingConfig(budget_tokens=args.think, min_tokens=0)),
        ctx.request(problem, n=args.n, temperature=0.7),
    ]
    return all(
        len(pool._pool.get(request_key(r, MODEL), [])) >= r.n  # noqa: SLF001
        for r in reqs
    )


def summarize(name: str, rows: Sequence[Row], split: str) -> dict[str, Any]:
    from ponder.eval.metrics import percentile

    n = len(rows)
    correct = sum(r.correct for r in rows)
    cost = sum(r.prompt * PRICE_IN + (r.reasoning + r.output) * PRICE_OUT for r in rows) / 1e6
    lat = [r.latency_s for r in rows]
    return {
        "policy": name,
        "split": split,
        "items": n,
        "accuracy": round(correct / n, 4) if n else None,
        "correct": correct,
        "reasoning_tokens": sum(r.reasoning for r in rows),
        "output_tokens": sum(r.output for r in rows),
        "generated_tokens": sum(r.reasoning + r.output for r in rows),
        "prompt_tokens": sum(r.prompt for r in rows),
        "latency_p50_s": round(percentile(lat, 50), 2) if lat else None,
        "latency_p95_s": round(percentile(lat, 95), 2) if lat else None,
        "cost_per_correct_usd": round(cost / correct, 8) if correct else None,
        "mean_rungs": round(sum(r.rungs for r in rows) / n, 3) if n else None,
    }


# The benchmark's routing policy: which classes may think (the default is: none may).
BENCH_POLICY: dict[str, Any] = {
    "classes": {
        "math": {"bucket": "maybe", "strategy": "cot"},
        "codegen": {"bucket": "maybe", "strategy": "cot"},
        "lookup": {"bucket": "avoid"},
        "chat": {"bucket": "avoid"},
    }
}
RUNG_STRATEGY = {"direct": "direct", "think": "cot", "search": "self_consistency"}


def rung_for(strategy: str, budget: int) -> str:
    if strategy == "self_consistency":
        return "search"
    return "think" if budget else "direct"


def is_test(item: Item) -> bool:
    return int(hashlib.sha256(item.id.encode()).hexdigest(), 16) % 2 == 0


async def replay(args: argparse.Namespace, items: Sequence[Item]) -> list[dict[str, Any]]:
    from ponder.config import RouterSettings
    from ponder.router.classifier import LearnedClassifier, training_examples
    from ponder.router.features import extract
    from ponder.router.policy import Router, select_threshold

    out = Path(args.dir)
    pool = PooledBackend(ReplayOnly(), out / "pool.jsonl", MODEL)
    times = load_times(out / "latency.jsonl")
    items = [it for it in items if covered(pool, it, args)]
    if len(items) < 4:
        sys.exit(f"only {len(items)} items are fully in the pool; run the 'pool' stage first")
    # A disjoint split by a hash of the item id: the learned router and every threshold
    # are fitted on "train" and judged on "test".
    train = [it for it in items if not is_test(it)]
    test = [it for it in items if is_test(it)]
    rungs = rung_configs(args)

    # Every rung on every item, once: the fixed policies and the training labels.
    per_rung: dict[str, dict[str, Row]] = {}
    for rung, (strategy, params) in rungs.items():
        per_rung[rung] = {
            it.id: await replay_one(pool, times, it, strategy, params) for it in items
        }
    # First-rung confidence of every item: a cascade with threshold 0 stops after direct.
    confidence = {it.id: await first_confidence(pool, times, it, args) for it in items}

    # Eval-style records (``ponder route train / calibrate --from`` read them).
    records = []
    for it in items:
        for rung, (strategy, params) in rungs.items():
            r = per_rung[rung][it.id]
            records.append({
                "config_key": f"{MODEL}|{rung}", "config": {"params": params},
                "model": MODEL, "strategy": strategy, "item_id": it.id, "dataset": it.dataset,
                "difficulty": it.difficulty, "correct": r.correct,
                "usage": {"input": r.prompt, "cached_input": 0, "reasoning": r.reasoning,
                          "output": r.output},
                "latency_s": round(r.latency_s, 3), "prompt": it.problem().prompt,
                "confidence": confidence[it.id] if rung == "direct" else None,
                "split": "test" if is_test(it) else "train",
            })  # fmt: skip
    with open(out / "results.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    train_ids = {it.id for it in train}
    examples = training_examples([r for r in records if r["item_id"] in train_ids])

    # Routers are calibrated on train to send extra compute to as many requests as it
    # paid off for there (at least one).
    route_share = max(sum(e.label for e in examples), 1) / max(len(examples), 1)

    def think_threshold(scorer: Any) -> float:
        scores = [scorer.score(it.problem().prompt, extract(it.problem().prompt)) for it in train]
        return 1.0 - select_threshold([1.0 - x for x in scores], route_share)

    # The escalation of the "maybe" classes is the rung that did best on the *train*
    # items of those classes (calibration: the policy is fitted, not assumed).
    def acc(rung: str) -> float:
        rows = [per_rung[rung][it.id] for it in train if it.kind in ("math", "code")]
        return sum(r.correct for r in rows) / max(len(rows), 1)

    escalation = max(("think", "search"), key=lambda rung: (acc(rung), rung == "think"))
    up = (
        {"strategy": "cot", "thinking_budget": args.think}
        if escalation == "think"
        else {"strategy": "self_consistency", "params": {"n": args.n, "temperature": 0.7}}
    )
    policy = {**BENCH_POLICY}
    policy["classes"] = {
        k: ({**v, **up} if v["bucket"] != "avoid" else v)
        for k, v in BENCH_POLICY["classes"].items()
    }
    routers: dict[str, Router] = {}
    heuristic = Router(RouterSettings.model_validate(policy))
    routers["heuristic-router"] = Router(
        RouterSettings.model_validate({**policy, "threshold": think_threshold(heuristic.scorer)})
    )
    learned_note = ""
    try:
        learned = LearnedClassifier.fit(examples)
        routers["learned-router"] = Router(
            RouterSettings.model_validate({**policy, "threshold": think_threshold(learned)}),
            classifier=learned,
        )
    except ValueError as exc:
        learned_note = str(exc)

    def routed(router: Router) -> Callable[[Item], Row]:
        def pick(it: Item) -> Row:
            plan = router.plan_text(it.problem().prompt)
            return per_rung[rung_for(plan.strategy, plan.thinking_budget)][it.id]

        return pick

    cascade_t = select_threshold([confidence[it.id] for it in train], args.escalate)
    cascade_rows = {
        it.id: await replay_one(pool, times, it, "cascade", cascade_params(args, cascade_t))
        for it in items
    }
    # The same cascade without the search rung: direct, then thinking when unsure.
    short = {**cascade_params(args, cascade_t), "rungs": ("direct", "think")}
    short_rows = {it.id: await replay_one(pool, times, it, "cascade", short) for it in items}

    policies: dict[str, Callable[[Item], Row]] = {
        "always-direct": lambda it: per_rung["direct"][it.id],
        f"fixed-medium (think {args.think})": lambda it: per_rung["think"][it.id],
        f"always-max (self-consistency n={args.n})": lambda it: per_rung["search"][it.id],
        **{name: routed(r) for name, r in routers.items()},
        f"cascade direct>think>search (t={cascade_t:.3f})": lambda it: cascade_rows[it.id],
        f"cascade direct>think (t={cascade_t:.3f})": lambda it: short_rows[it.id],
    }
    results = []
    for split, chosen in (("test", test), ("all", items)):
        for name, pick in policies.items():
            row = summarize(name, [pick(it) for it in chosen], split)
            results.append(row)
            print(json.dumps(row), flush=True)
    meta = {
        "items": len(items), "train_items": len(train), "test_items": len(test),
        "train_examples": len(examples), "train_positives": sum(e.label for e in examples),
        "cascade_threshold": cascade_t, "pool_hits": pool.hits, "pool_misses": pool.misses,
        "learned_router": learned_note or "trained",
        "router_escalation": escalation,
        "router_share": round(route_share, 3),
        "train_acc": {r: round(acc(r), 3) for r in ("think", "search")},
        "by_kind": {k: sum(1 for it in items if it.kind == k) for k in ("math", "code", "text")},
    }  # fmt: skip
    print(json.dumps(meta))
    table(results)
    return results


async def first_confidence(
    pool: PooledBackend, times: dict[str, float], item: Item, args: argparse.Namespace
) -> float:
    outcome = await solve(pool, item, "cascade", cascade_params(args, 0.0))
    first = next(e for e in outcome.trace if e.name == "rung" and "confidence" in e.data)
    return float(first.data["confidence"])


def table(results: Sequence[dict[str, Any]]) -> None:
    print(
        "\n| split | policy | items | accuracy | reasoning tok | output tok | p50 s | p95 s | $/correct | % of max acc | % of max tokens |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for split in ("test", "all"):
        rows = [r for r in results if r["split"] == split]
        mx = next(r for r in rows if r["policy"].startswith("always-max"))
        for r in rows:
            acc_share = r["accuracy"] / mx["accuracy"] if mx["accuracy"] else float("nan")
            tok_share = (
                r["generated_tokens"] / mx["generated_tokens"]
                if mx["generated_tokens"]
                else float("nan")
            )
            cpc = r["cost_per_correct_usd"]
            print(
                f"| {split} | {r['policy']} | {r['items']} | {r['accuracy']:.3f} | {r['reasoning_tokens']} "
                f"| {r['output_tokens']} | {r['latency_p50_s']} | {r['latency_p95_s']} "
                f"| {'-' if cpc is None else f'{cpc:.2e}'} | {acc_share:.0%} | {tok_share:.0%} |"
            )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("stage", choices=["pool", "replay", "all"])
    ap.add_argument("--dir", default="runs/routing", help="where the pool lives")
    ap.add_argument(
        "--per-level", type=int, default=3, help="reasoning-gym items per task and level"
    )
    ap.add_argument("--gsm", type=int, default=4, help="gsm_symbolic items")
    ap.add_argument("--humaneval", type=int, default=4)
    ap.add_argument("--simple", type=int, default=len(SIMPLE))
    ap.add_argument("--think", type=int, default=256, help="thinking budget of the medium rung")
    ap.add_argument("--n", type=int, default=4, help="samples of the search rung")
    ap.add_argument("--escalate", type=float, default=0.5, help="cascade: target escalation share")
    ap.add_argument("--concurrency", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="engine threads")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    items = workload(args)
    if args.stage in ("pool", "all"):
        asyncio.run(build_pool(args, items))
    if args.stage in ("replay", "all"):
        asyncio.run(replay(args, items))


if __name__ == "__main__":
    main()
