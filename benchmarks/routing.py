"""Routing policies head to head on one recorded sample pool (exact replay).

A mixed workload on the embedded models: reasoning-gym arithmetic at three
difficulty levels and GSM-style word problems, a few HumanEval items, and simple
lookups / formatting requests, each with an exact grader. The candidate pool is
generated once (stage ``pool``): for every item the four rungs a policy can buy,
on ``qwen2.5-coder-0.5b-instruct`` direct (greedy, with logprobs), thinking (greedy
after up to ``--think`` thinking tokens) and search (self-consistency, ``--n``
samples), and on the 1.5B tier ``strong`` (direct, greedy, with logprobs), with
their token counts and wall times, stored under ``runs/routing/``. Items are
generated in a seeded shuffled order, so a pool cut short by ``--deadline-min`` is
a random subset. Stage ``replay`` then runs every policy over the items the pool
fully covers, through :class:`~ponder.eval.pool.PooledBackend`; a request the pool
lacks is an error, never a silent live call, so every policy sees the same samples:

- always-direct, fixed medium budget (thinking), always-max (the search rung: the
  most compute per item of the fixed policies), always-strong (1.5B direct);
- the heuristic router and the learned router (trained on a disjoint split of
  items), whose ``maybe`` classes escalate to the rung (thinking, search or the
  strong tier) that did best on the training split;
- cascades (direct -> thinking -> search; direct -> thinking; direct -> strong;
  direct -> thinking -> strong) while confidence < a threshold calibrated on train.

Accuracy, reasoning / output tokens (and those of the 1.5B), p50/p95 latency (sum of
the recorded wall times of the calls a policy makes) and cost per correct answer
(the 1.5B priced ``--strong-price-factor`` times the 0.5B) are reported on the test
split and on all items. Stage ``live`` then starts the real gateway (``ponder serve``
with both models as embedded tiers), sends test items through the ``openai`` client
with the winning adaptive policy as a request, grades the answers and reads the
ledger. JSON lines, then tables.

    .venv/bin/python benchmarks/routing.py pool --deadline-min 65   # generate (resumable)
    .venv/bin/python benchmarks/routing.py replay                   # compare policies
    .venv/bin/python benchmarks/routing.py live --live-items 30     # confirm the winner
    .venv/bin/python benchmarks/routing.py pack                     # commit-ready pool

The pool is committed, compressed, under ``benchmarks/data/routing/``: every stage
first copies it into ``--dir`` where that lacks it, so a replay on a new machine
needs no model run, and ``pool`` only generates the items the pool lacks.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ponder.api import Ponder
from ponder.backends.base import Backend
from ponder.eval.datasets import Item, humaneval, reasoning_gym, records
from ponder.eval.pool import PooledBackend, request_key
from ponder.eval.runner import item_seed
from ponder.types import Capabilities, Delta, Generation, GenRequest, Outcome, Usage

MODEL = "qwen2.5-coder-0.5b-instruct"
STRONG_MODEL = "qwen2.5-coder-1.5b-instruct"
SMALL_TIER, STRONG_TIER = "small", "strong"
# Illustrative prices (USD per million input / generated tokens) of the 0.5B; the 1.5B
# costs --strong-price-factor times as much.
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
    # Added with the 1.5B tier (issue 7: a few hundred prompts, many of them simple).
    ("What is 15 plus 27? Reply with only the number.", "42", "math"),
    ("What is the capital of Japan? Reply with one word.", "Tokyo", "contains"),
    ("Write the word 'python' in upper case. Reply with only the word.", r"\bPYTHON\b", "regex"),
    ("Reverse the string 'hello'. Reply with only the result.", r"\bolleh\b", "regex"),
    ("How many hours are in a day? Reply with only the number.", "24", "math"),
    ("What is the chemical symbol for sodium? Reply with only the symbol.", r"\bNa\b", "regex"),
    ("Format the date 2023-12-25 as MM/DD/YYYY. Reply with only the date.", "12/25/2023", "contains"),
    (
        "Sort the words 'pear', 'apple', 'fig' alphabetically and reply with only a JSON array of strings.",
        r'\[\s*"apple"\s*,\s*"fig"\s*,\s*"pear"\s*\]',
        "regex",
    ),
    ("What is 9 times 8? Reply with only the number.", "72", "math"),
    ("What is the opposite of 'up'? Reply with one word.", "down", "contains"),
    ("Convert 'Hello World' to lower case. Reply with only the result.", r"\bhello world\b", "regex"),
    ("How many times does the letter 'a' occur in the word 'banana'? Reply with only the number.", "3", "math"),
    ("What is 1000 divided by 8? Reply with only the number.", "125", "math"),
    ("What is the file extension of 'photo.jpeg', without the dot? Reply with one word.", r"\bjpeg\b", "regex"),
    ("Which is smaller, 13 or 31? Reply with only the number.", "13", "math"),
    ("Join the words 'sun' and 'flower' into one word. Reply with only the word.", r"(?i)\bsunflower\b", "regex"),
    ("How many minutes are in 3 hours? Reply with only the number.", "180", "math"),
    ("What is the largest planet in the solar system? Reply with one word.", "Jupiter", "contains"),
    ("Write the number 5 in binary. Reply with only the binary digits.", r"\b101\b", "regex"),
    (
        'Write a JSON object with the key "name" and the value "Ada". Reply with only the JSON.',
        r'\{\s*"name"\s*:\s*"Ada"\s*\}',
        "regex",
    ),
    ("What is the square root of 81? Reply with only the number.", "9", "math"),
    ("How many words are in the sentence 'the quick brown fox'? Reply with only the number.", "4", "math"),
    ("What is the last letter of the English alphabet? Reply with only the letter.", r"\b[Zz]\b", "regex"),
    ("Remove the spaces from 'a b c d'. Reply with only the result.", r"\babcd\b", "regex"),
    ("What is 2 to the power of 10? Reply with only the number.", "1024", "math"),
    ("Format the number 1234567 with commas as thousands separators. Reply with only the result.", "1,234,567", "contains"),
    ("What color do you get by mixing blue and yellow paint? Reply with one word.", "green", "contains"),
    ("What is 50% of 300? Reply with only the number.", "150", "math"),
]  # fmt: skip


def workload(args: argparse.Namespace) -> list[Item]:
    items: list[Item] = []
    for task in ("basic_arithmetic", "chain_sum"):
        items += reasoning_gym(task, levels=(1, 2, 3), per_level=args.per_level, seed=args.seed)
    items += reasoning_gym("gsm_symbolic", levels=(1,), per_level=args.gsm, seed=args.seed)
    if args.humaneval:
        items += humaneval(limit=args.humaneval, seed=args.seed)
    return shuffled(items + simple_items(args.simple), args.seed)


def simple_items(limit: int) -> list[Item]:
    simple = records(
        [
            {"id": f"simple/{i}", "prompt": p, "answer": a, "verifier": v}
            for i, (p, a, v) in enumerate(SIMPLE[:limit])
        ],
        name="simple",
    )
    for it in simple:
        it.kind = "text"  # a lookup, whatever its grader
        it.difficulty = 0
    return simple


def shuffled(items: Sequence[Item], seed: int) -> list[Item]:
    """A seeded order: a pool cut short is a random subset covering every kind of request."""
    out = sorted(items, key=lambda it: it.id)  # independent of the order they were built in
    random.Random(seed).shuffle(out)
    return out


def max_tokens_for(item: Item) -> int:
    return {"code": 384, "text": 64}.get(item.kind, 256)


def is_test(item: Item) -> bool:
    return int(hashlib.sha256(item.id.encode()).hexdigest(), 16) % 2 == 0


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

    capabilities = Capabilities(native_n=True, logprobs=True, thinking_budget=True)

    def __init__(self, name: str) -> None:
        self.name = name

    async def generate(self, req: GenRequest) -> list[Generation]:
        raise LookupError(f"request not in the {self.name} pool")

    def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        raise LookupError(f"request not in the {self.name} pool")


class HitCheck:
    """Counts the calls of one run that the pool does not already hold."""

    def __init__(self, pool: PooledBackend) -> None:
        self.pool, self.name, self.capabilities = pool, pool.name, pool.capabilities
        self.misses = 0

    async def generate(self, req: GenRequest) -> list[Generation]:
        stored = self.pool._pool.get(request_key(req, self.pool.model), [])  # noqa: SLF001
        if len(stored) < req.n:
            self.misses += 1
        return await self.pool.generate(req)

    def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        return self.pool.stream(req)


@dataclass
class Pools:
    """The two recorded pools: the 0.5B (every rung but strong) and the 1.5B (strong)."""

    small: PooledBackend
    strong: PooledBackend

    @classmethod
    def open(cls, out: Path, small: Backend, strong: Backend) -> Pools:
        return cls(
            PooledBackend(small, out / "pool.jsonl", MODEL),
            PooledBackend(strong, out / "pool-strong.jsonl", STRONG_MODEL),
        )

    def of(self, rung: str) -> PooledBackend:
        return self.strong if rung == "strong" else self.small

    @property
    def hits(self) -> int:
        return self.small.hits + self.strong.hits

    @property
    def misses(self) -> int:
        return self.small.misses + self.strong.misses


@dataclass
class Meter:
    """What a replayed run's calls cost: recorded wall time and usage per model."""

    times: dict[str, float]
    seconds: float = 0.0
    usage: dict[str, Usage] = field(default_factory=dict)


class Clock:
    """Charges every call a replayed run makes to a :class:`Meter` (time and usage)."""

    def __init__(self, inner: PooledBackend, meter: Meter) -> None:
        self.inner, self.meter = inner, meter
        self.name, self.capabilities = inner.name, inner.capabilities

    async def generate(self, req: GenRequest) -> list[Generation]:
        gens = await self.inner.generate(req)
        model = self.inner.model
        self.meter.seconds += self.meter.times.get(request_key(req, model), 0.0)
        self.meter.usage[model] = Usage.sum(
            [self.meter.usage.get(model, Usage()), *(g.usage for g in gens)]
        )
        return gens

    def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        return self.inner.stream(req)


# The rungs every policy buys from: (strategy, params, on the strong tier). ``program``
# (program-aided, one greedy program, executed) is recorded for the math items only.
RUNGS = ("direct", "think", "search", "strong", "program")
PROGRAM_KINDS = ("math",)


def rung_configs(
    args: argparse.Namespace, item: Item | None = None
) -> dict[str, tuple[str, dict[str, Any], bool]]:
    """The rungs of ``item`` (of every item when None)."""
    out: dict[str, tuple[str, dict[str, Any], bool]] = {
        "direct": ("direct", {}, False),
        "think": ("cot", {"thinking_budget": args.think}, False),
        "search": ("self_consistency", {"n": args.n, "temperature": 0.7}, False),
        "strong": ("direct", {}, True),
    }
    if item is None or has_program(item):
        out["program"] = ("program_aided", {"n": 1}, False)
    return out


def task_class(item: Item) -> str:
    """The class the router infers from the prompt (what a shipped policy keys on)."""
    from ponder.router.classifier import infer_class
    from ponder.router.features import extract

    prompt = item.problem().prompt
    return infer_class(prompt, extract(prompt))


def has_program(item: Item) -> bool:
    """Math items, and any item the router reads as math, get the program rung."""
    return item.kind in PROGRAM_KINDS or task_class(item) == "math"


def rung_requests(item: Item, args: argparse.Namespace) -> dict[str, GenRequest]:
    """The request of each rung, exactly as the strategies (and a cascade's rungs) build it.

    Logprobs on the single-sample rungs: a cascade reads its confidence from them, and a
    pool call with logprobs also serves the same request without.
    """
    from ponder.strategies.base import RunContext, SamplingDefaults
    from ponder.strategies.program import program_messages
    from ponder.types import ThinkingConfig

    ctx = RunContext(
        backend=None,  # type: ignore[arg-type]  # only request() is used
        sampling=SamplingDefaults(max_tokens=max_tokens_for(item), seed=item_seed(item.id)),
    )
    problem = item.problem()
    thinking = ThinkingConfig(budget_tokens=args.think, min_tokens=0)
    out = {
        "direct": ctx.request(problem, logprobs=True),
        "think": ctx.request(problem, thinking=thinking, logprobs=True),
        "search": ctx.request(problem, n=args.n, temperature=0.7),
        "strong": ctx.request(problem, logprobs=True),
    }
    if has_program(item):
        out["program"] = ctx.request(problem, messages=program_messages(problem))
    return out


def missing_rungs(pools: Pools, item: Item, args: argparse.Namespace) -> list[str]:
    """The rungs of ``item`` the pools lack (or hold without the logprobs a cascade reads)."""
    missing = []
    for rung, req in rung_requests(item, args).items():
        pool = pools.of(rung)
        stored = pool._pool.get(request_key(req, pool.model), [])  # noqa: SLF001
        if len(stored) < req.n or (req.logprobs and any(g.logprobs is None for g in stored)):
            missing.append(rung)
    return missing


def covered(pools: Pools, item: Item, args: argparse.Namespace) -> bool:
    """Whether the pools hold every rung of ``item`` (with the logprobs a cascade reads)."""
    return not missing_rungs(pools, item, args)


def cascade_params(
    args: argparse.Namespace, threshold: float, rungs: Sequence[str]
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "threshold": threshold,
        "thinking_budget": args.think,
        "search_n": args.n,
        "search_temperature": 0.7,
        "rungs": list(rungs),
    }
    if "tier" in rungs:
        # The 1.5B is ~3x slower: its rung is a direct answer, not thinking.
        params |= {"strong_tier": STRONG_TIER, "tier_thinking_budget": 0}
    return params


async def solve(
    backend: Backend,
    item: Item,
    strategy: str,
    params: dict[str, Any],
    tiers: dict[str, Backend] | None = None,
    verifier: Any = None,
) -> Outcome:
    return await Ponder(backend).asolve(
        item.problem(),
        strategy,
        max_tokens=max_tokens_for(item),
        seed=item_seed(item.id),
        tiers=tiers,
        verifier=verifier,
        **params,
    )


def open_engines(args: argparse.Namespace) -> tuple[Backend, Backend]:
    from ponder.backends.llama_cpp import LlamaCppBackend

    # One thread each: on a shared 2-core machine spinning threads mostly wait on each other.
    small = LlamaCppBackend(
        MODEL, n_ctx=4096, max_sequences=max(8, args.n * 2), threads=args.threads
    )
    strong = LlamaCppBackend(STRONG_MODEL, n_ctx=4096, max_sequences=4, threads=args.threads)
    return small, strong


async def build_pool(
    args: argparse.Namespace,
    items: Sequence[Item],
    engines: tuple[Backend, Backend] | None = None,
) -> dict[str, Any]:
    """Generate every rung of every item (in the given order) until done or the deadline."""
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    small, strong = engines or open_engines(args)
    times = out / "latency.jsonl"
    pools = Pools.open(
        out, TimedBackend(small, times, MODEL), TimedBackend(strong, times, STRONG_MODEL)
    )
    # Items that lack fewest rungs first: a new rung on the covered items before new items.
    todo = sorted(
        (it for it in items if not covered(pools, it, args)),
        key=lambda it: len(missing_rungs(pools, it, args)),
    )
    gate = asyncio.Semaphore(args.concurrency)
    started = time.monotonic()
    deadline = args.deadline_min * 60 if args.deadline_min is not None else None
    state = {"done": 0, "skipped": 0, "check_misses": 0}

    async def one(item: Item) -> None:
        async with gate:
            if deadline is not None and time.monotonic() - started >= deadline:
                state["skipped"] += 1
                return
            t0 = time.monotonic()
            for rung, req in rung_requests(item, args).items():
                await pools.of(rung).generate(req)
            # Every policy's requests must now be pool hits: check with the plain strategies
            # (counted per call: other items' generations run concurrently).
            for strategy, params, on_strong in rung_configs(args, item).values():
                check = HitCheck(pools.strong if on_strong else pools.small)
                await solve(check, item, strategy, params)
                state["check_misses"] += check.misses
            state["done"] += 1
            elapsed = time.monotonic() - started
            rate = state["done"] / elapsed * 60
            left = len(todo) - state["done"] - state["skipped"]
            print(
                json.dumps({"pool": item.id, "kind": item.kind, "item_s": round(time.monotonic() - t0, 1),
                            "done": state["done"], "of": len(todo), "elapsed_min": round(elapsed / 60, 2),
                            "items_per_min": round(rate, 2), "eta_min": round(left / rate, 1) if rate else None}),
                flush=True,
            )  # fmt: skip

    try:
        await asyncio.gather(*(one(it) for it in todo))
    finally:
        for engine in (small, strong):
            close = getattr(engine, "close", None)
            if callable(close):
                close()
    summary = {
        "pool_done": state["done"], "skipped_at_deadline": state["skipped"],
        "already_covered": len(items) - len(todo), "check_misses": state["check_misses"],
        "minutes": round((time.monotonic() - started) / 60, 2),
    }  # fmt: skip
    print(json.dumps(summary), flush=True)
    return summary


# --------------------------------------------------------------------------- replay


@dataclass
class Row:
    item: Item
    correct: bool
    reasoning: int
    output: int
    prompt: int
    latency_s: float
    strong_generated: int = 0  # of reasoning + output, on the 1.5B
    strong_prompt: int = 0
    rungs: int = 1
    answer: str = ""
    verdict: str | None = None  # pass / fail / unknown, by the plan's verifier
    verifier: str | None = None


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
    pools: Pools,
    times: dict[str, float],
    item: Item,
    strategy: str,
    params: dict[str, Any],
    on_strong: bool = False,
    verifier_spec: Any = None,
) -> Row:
    from ponder.verifiers.spec import build_verifier, verdict_of

    meter = Meter(times)
    small, strong = Clock(pools.small, meter), Clock(pools.strong, meter)
    verifier = build_verifier(verifier_spec) if verifier_spec is not None else None
    outcome = await solve(
        strong if on_strong else small, item, strategy, params, {STRONG_TIER: strong}, verifier
    )
    verdict = verdict_of(outcome, verifier_spec) if verifier_spec is not None else {}
    correct = await asyncio.to_thread(item.grade, outcome.answer)
    rungs = sum(1 for e in outcome.trace if e.name == "rung" and "confidence" in e.data)
    big = meter.usage.get(STRONG_MODEL, Usage())
    return Row(
        item, bool(correct), outcome.usage.reasoning, outcome.usage.output,
        outcome.usage.prompt_tokens, meter.seconds, big.completion_tokens, big.prompt_tokens,
        max(rungs, 1), outcome.answer, verdict.get("verdict"), verdict.get("verifier"),
    )  # fmt: skip


def cost_usd(r: Row, factor: float) -> float:
    small_gen = r.reasoning + r.output - r.strong_generated
    small_in = r.prompt - r.strong_prompt
    return (
        small_in * PRICE_IN
        + small_gen * PRICE_OUT
        + factor * (r.strong_prompt * PRICE_IN + r.strong_generated * PRICE_OUT)
    ) / 1e6


def summarize(name: str, rows: Sequence[Row], split: str, factor: float) -> dict[str, Any]:
    from ponder.eval.metrics import percentile

    n = len(rows)
    correct = sum(r.correct for r in rows)
    cost = sum(cost_usd(r, factor) for r in rows)
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
        "strong_generated_tokens": sum(r.strong_generated for r in rows),
        "prompt_tokens": sum(r.prompt for r in rows),
        "latency_p50_s": round(percentile(lat, 50), 2) if lat else None,
        "latency_p95_s": round(percentile(lat, 95), 2) if lat else None,
        "cost_usd": round(cost, 8),
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


def escalation_policy(rung: str, args: argparse.Namespace) -> dict[str, Any]:
    """A router class policy that spends ``rung`` when the class's score says so."""
    if rung == "think":
        return {"strategy": "cot", "thinking_budget": args.think}
    if rung == "search":
        return {"strategy": "self_consistency", "params": {"n": args.n, "temperature": 0.7}}
    # A class's ``tier`` applies whether or not the score says think; a one-rung cascade
    # reaches the strong tier only for the requests the router escalates.
    return {"strategy": "cascade", "params": cascade_params(args, 1.0, ("tier",))}


def rung_of_plan(strategy: str, budget: int) -> str:
    if strategy == "cascade":
        return "strong"
    if strategy == "self_consistency":
        return "search"
    return "think" if budget else "direct"


def record_rows(
    items: Sequence[Item],
    per_rung: dict[str, dict[str, Row]],
    confidence: dict[str, float],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Eval-style records (``ponder route train / calibrate --from`` read them).

    The strong rung's strategy is ``direct@strong``: extra compute (a bigger model), not
    the baseline ``direct`` that the router's training labels compare against.
    """
    out = []
    for it in items:
        for rung, (strategy, params, on_strong) in rung_configs(args, it).items():
            r = per_rung[rung][it.id]
            model = STRONG_MODEL if on_strong else MODEL
            out.append({
                "config_key": f"{model}|{rung}", "config": {"params": params},
                "model": model, "strategy": f"{strategy}@strong" if on_strong else strategy,
                "item_id": it.id, "dataset": it.dataset,
                "difficulty": it.difficulty, "correct": r.correct,
                "usage": {"input": r.prompt, "cached_input": 0, "reasoning": r.reasoning,
                          "output": r.output},
                "latency_s": round(r.latency_s, 3), "prompt": it.problem().prompt,
                "confidence": confidence[it.id] if rung == "direct" else None,
                "split": "test" if is_test(it) else "train",
            })  # fmt: skip
    return out


async def replay(args: argparse.Namespace, items: Sequence[Item]) -> dict[str, Any]:
    from ponder.config import RouterSettings
    from ponder.router.classifier import LearnedClassifier, training_examples
    from ponder.router.features import extract
    from ponder.router.policy import Router, select_threshold

    out = Path(args.dir)
    pools = Pools.open(out, ReplayOnly(MODEL), ReplayOnly(STRONG_MODEL))
    times = load_times(out / "latency.jsonl")
    items = [it for it in items if covered(pools, it, args)]
    if len(items) < 4:
        sys.exit(f"only {len(items)} items are fully in the pool; run the 'pool' stage first")
    # A disjoint split by a hash of the item id: the learned router and every threshold
    # are fitted on "train" and judged on "test".
    train = [it for it in items if not is_test(it)]
    test = [it for it in items if is_test(it)]
    factor = args.strong_price_factor

    # Every rung on every item, once: the fixed policies and the training labels.
    per_rung: dict[str, dict[str, Row]] = {}
    for rung, (strategy, params, on_strong) in rung_configs(args).items():
        per_rung[rung] = {
            it.id: await replay_one(pools, times, it, strategy, params, on_strong)
            for it in items
            if rung in rung_configs(args, it)
        }
    # First-rung confidence of every item: a cascade with threshold 0 stops after direct.
    confidence = {it.id: await first_confidence(pools, times, it, args) for it in items}

    records = record_rows(items, per_rung, confidence, args)
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
    # items of those classes (calibration: the policy is fitted, not assumed); ties go
    # to the cheaper rung.
    heavy = [it for it in train if it.kind in ("math", "code")]

    def acc(rung: str) -> float:
        return sum(per_rung[rung][it.id].correct for it in heavy) / max(len(heavy), 1)

    def spend(rung: str) -> float:
        return sum(cost_usd(per_rung[rung][it.id], factor) for it in heavy)

    escalation = max(("think", "search", "strong"), key=lambda rung: (acc(rung), -spend(rung)))
    up = escalation_policy(escalation, args)
    policy = {**BENCH_POLICY}
    policy["classes"] = {
        k: ({**v, **up} if v["bucket"] != "avoid" else v)
        for k, v in BENCH_POLICY["classes"].items()
    }
    router_specs: dict[str, dict[str, Any]] = {}
    routers: dict[str, Router] = {}
    heuristic = Router(RouterSettings.model_validate(policy))
    spec = {**policy, "threshold": think_threshold(heuristic.scorer)}
    routers["heuristic router"] = Router(RouterSettings.model_validate(spec))
    router_specs["heuristic router"] = spec
    learned_note = ""
    try:
        learned = LearnedClassifier.fit(examples)
        path = learned.save(out / "router.joblib")
        spec = {
            **policy,
            "threshold": think_threshold(learned),
            "classifier": str(Path(path).resolve()),
        }
        routers["learned router"] = Router(
            RouterSettings.model_validate({**spec, "classifier": "heuristic"}), classifier=learned
        )
        router_specs["learned router"] = spec
    except ValueError as exc:
        learned_note = str(exc)

    def routed(router: Router) -> Callable[[Item], Row]:
        def pick(it: Item) -> Row:
            plan = router.plan_text(it.problem().prompt)
            return per_rung[rung_of_plan(plan.strategy, plan.thinking_budget)][it.id]

        return pick

    cascade_t = select_threshold([confidence[it.id] for it in train], args.escalate)
    cascades = {
        "cascade direct>think>search": ("direct", "think", "search"),
        "cascade direct>think": ("direct", "think"),
        "cascade direct>strong": ("direct", "tier"),
        "cascade direct>think>strong": ("direct", "think", "tier"),
    }
    cascade_rows: dict[str, dict[str, Row]] = {}
    for name, rungs in cascades.items():
        params = cascade_params(args, cascade_t, rungs)
        cascade_rows[name] = {
            it.id: await replay_one(pools, times, it, "cascade", params) for it in items
        }

    # The shipped default policy: every candidate plan replayed on every item it applies
    # to (the calibration records), fitted on train only (``ponder route calibrate``),
    # then judged end to end: the router with that policy plans each prompt, and the
    # plan (strategy, params, tier, inferred verifier) is replayed.
    records_path = out / "calibration.jsonl"
    plan_rows = await calibration_rows(pools, times, items, args)
    with open(records_path, "w") as fh:
        for (_, plan_name), r in plan_rows.items():
            fh.write(json.dumps(calibration_record(r, plan_name, factor)) + "\n")
    from ponder.router.calibrate import fit_policy, load_default_policy

    fitted = fit_policy(
        [calibration_record(r, n, factor) for (_, n), r in plan_rows.items()],
        source=f"benchmarks/routing.py replay ({len(train)} train items of {len(items)})",
    )
    (out / "policy.json").write_text(json.dumps(fitted, indent=1))
    write_to = getattr(args, "write_policy", None)
    if write_to:
        Path(write_to).write_text(json.dumps(fitted, indent=1) + "\n")
    shipped = load_default_policy(write_to) if write_to else load_default_policy()
    same_as_shipped = shipped.get("forms") == fitted["forms"]
    default_rows: dict[str, dict[str, Row]] = {}
    default_plans: dict[str, dict[str, str]] = {}
    for name, tiers in (("default", [SMALL_TIER, STRONG_TIER]), ("default-small", [SMALL_TIER])):
        router = Router(RouterSettings(), tiers=tiers)
        default_rows[name], default_plans[name] = {}, {}
        for it in items:
            plan = router.plan_text(it.problem().prompt)
            default_plans[name][it.id] = f"{plan.strategy}@{plan.tier or SMALL_TIER}"
            default_rows[name][it.id] = await replay_plan(pools, times, it, plan, args)

    def fixed(rung: str) -> Callable[[Item], Row]:
        return lambda it: per_rung[rung][it.id]

    def cascade_pick(name: str) -> Callable[[Item], Row]:
        return lambda it: cascade_rows[name][it.id]

    max_name = f"always-max (self-consistency n={args.n})"
    strong_name = "always-strong (1.5B direct)"
    policies: dict[str, Callable[[Item], Row]] = {
        "always-direct": fixed("direct"),
        f"fixed-medium (think {args.think})": fixed("think"),
        max_name: fixed("search"),
        strong_name: fixed("strong"),
        **{name: routed(r) for name, r in routers.items()},
        **{name: cascade_pick(name) for name in cascades},
        **{name: (lambda it, rows=rows: rows[it.id]) for name, rows in default_rows.items()},
    }
    # How each policy is sent to the gateway (the live stage): ponder options, or a router.
    requests: dict[str, dict[str, Any]] = {
        "always-direct": {"ponder": {"strategy": "direct"}},
        f"fixed-medium (think {args.think})": {"ponder": {"strategy": "cot", "params": {"thinking_budget": args.think}}},
        max_name: {"ponder": {"strategy": "self_consistency", "params": {"n": args.n, "temperature": 0.7}}},
        strong_name: {"ponder": {"strategy": "direct", "tier": STRONG_TIER}},
        **{name: {"router": spec} for name, spec in router_specs.items()},
        **{name: {"ponder": {"strategy": "cascade", "params": cascade_params(args, cascade_t, rungs)}}
           for name, rungs in cascades.items()},
        # No ponder options and no router config: the gateway's shipped policy decides.
        "default": {"default_policy": True}, "default-small": {"default_policy": True},
    }  # fmt: skip
    adaptive = [*routers, *cascades, *default_rows]
    results = []
    for split, chosen in (("test", test), ("all", items)):
        for name, pick in policies.items():
            row = summarize(name, [pick(it) for it in chosen], split, factor)
            row["adaptive"] = name in adaptive
            row["fitted_on_train"] = name in adaptive
            if name in default_rows:
                row |= verification_stats([pick(it) for it in chosen])
            results.append(row)
            print(json.dumps(row), flush=True)
    # The winner: the adaptive policy most accurate on test; ties go to the cheaper one.
    on_test = [r for r in results if r["split"] == "test" and r["adaptive"]]
    winner = max(on_test, key=lambda r: (r["accuracy"], -r["cost_usd"]))["policy"]
    meta = {
        "items": len(items), "train_items": len(train), "test_items": len(test),
        "train_examples": len(examples), "train_positives": sum(e.label for e in examples),
        "cascade_threshold": cascade_t, "cascade_escalate_share": args.escalate,
        "pool_hits": pools.hits, "pool_misses": pools.misses,
        "learned_router": learned_note or "trained",
        "router_escalation": escalation,
        "router_share": round(route_share, 3),
        "router_thresholds": {n: round(s["threshold"], 4) for n, s in router_specs.items()},
        "train_acc_maybe_classes": {r: round(acc(r), 3) for r in ("direct", "think", "search", "strong")},
        "by_kind": {k: sum(1 for it in items if it.kind == k) for k in ("math", "code", "text")},
        "by_kind_test": {k: sum(1 for it in test if it.kind == k) for k in ("math", "code", "text")},
        "strong_price_factor": factor, "winner": winner,
        "default_policy_same_as_shipped": same_as_shipped,
        "default_policy_fitted": {form: {c: e["plan"] for c, e in body["classes"].items()}
                                  | {"(default)": (body["default"] or {}).get("plan")}
                                  for form, body in fitted["forms"].items()},
        "lookup_tokens_vs_direct": lookup_ratio(test, default_rows["default"], per_rung["direct"]),
    }  # fmt: skip
    print(json.dumps(meta))
    table(results, max_name, strong_name)
    saved = {
        "meta": meta,
        "results": results,
        "requests": requests,
        "winner": winner,
        "test_ids": [it.id for it in test],
        "per_item": {
            name: {
                it.id: {"correct": r.correct, "reasoning": r.reasoning, "output": r.output,
                        "strong": r.strong_generated, "latency_s": round(r.latency_s, 3)}
                for it in items
                for r in (pick(it),)  # once per item: a router's pick plans the prompt
            }
            for name, pick in policies.items()
        },
    }  # fmt: skip
    (out / "replay.json").write_text(json.dumps(saved, indent=1))
    return saved


def plan_settings(plan: Any) -> tuple[str, dict[str, Any], bool]:
    """(strategy, params, on the strong tier) of a router plan, as the gateway runs it."""
    params = dict(plan.params)
    if plan.thinking_budget:
        params["thinking_budget"] = plan.thinking_budget
    return plan.strategy, params, plan.tier == STRONG_TIER


async def replay_plan(
    pools: Pools, times: dict[str, float], item: Item, plan: Any, args: argparse.Namespace
) -> Row:
    strategy, params, on_strong = plan_settings(plan)
    return await replay_one(pools, times, item, strategy, params, on_strong, plan.verifier)


async def calibration_rows(
    pools: Pools, times: dict[str, float], items: Sequence[Item], args: argparse.Namespace
) -> dict[tuple[str, str], Row]:
    """Every candidate plan of the shipped policy on every item it applies to."""
    from ponder.config import RouteClassSettings
    from ponder.router.calibrate import CANDIDATE_PLANS
    from ponder.router.policy import Router

    rows: dict[tuple[str, str], Row] = {}
    for name, policy in CANDIDATE_PLANS.items():
        uses_program = "program" in (policy.get("params") or {}).get("rungs", ())
        # A router with only this plan, so the plan (and the verifier) is what it resolves.
        for it in items:
            if uses_program and not has_program(it):
                continue
            cls = task_class(it)
            settings = RouterSettings_for(cls, RouteClassSettings.model_validate(policy))
            plan = Router(settings, tiers=[SMALL_TIER, STRONG_TIER]).plan_text(it.problem().prompt)
            row = await replay_plan(pools, times, it, plan, args)
            row.item = it
            rows[(it.id, name)] = row
    return rows


def RouterSettings_for(cls: str, policy: Any) -> Any:  # noqa: N802  # a settings factory
    from ponder.config import RouterSettings

    return RouterSettings(classes={cls: policy}, policy="none")


def calibration_record(r: Row, plan: str, factor: float) -> dict[str, Any]:
    return {
        "item_id": r.item.id, "task_class": task_class(r.item), "plan": plan,
        "split": "test" if is_test(r.item) else "train", "correct": r.correct,
        "generated_tokens": r.reasoning + r.output, "cost_usd": round(cost_usd(r, factor), 10),
        "strong_generated_tokens": r.strong_generated, "verdict": r.verdict,
        "verifier": r.verifier, "kind": r.item.kind,
    }  # fmt: skip


def verification_stats(rows: Sequence[Row]) -> dict[str, Any]:
    """The confidence signal's precision: of the answers verified (pass), how many right."""
    passed = [r for r in rows if r.verdict == "pass"]
    failed = [r for r in rows if r.verdict == "fail"]
    return {
        "verified_pass": len(passed),
        "verified_fail": len(failed),
        "verdict_unknown": sum(1 for r in rows if r.verdict in (None, "unknown")),
        "pass_precision": round(sum(r.correct for r in passed) / len(passed), 4)
        if passed
        else None,
        "fail_accuracy": round(sum(r.correct for r in failed) / len(failed), 4) if failed else None,
    }


def lookup_ratio(
    items: Sequence[Item], rows: dict[str, Row], direct: dict[str, Row]
) -> float | None:
    """Generated tokens of a policy on the lookup-class items over direct's."""
    ids = [it.id for it in items if task_class(it) == "lookup"]
    base = sum(direct[i].reasoning + direct[i].output for i in ids)
    spent = sum(rows[i].reasoning + rows[i].output for i in ids)
    return round(spent / base, 3) if base else None


async def first_confidence(
    pools: Pools, times: dict[str, float], item: Item, args: argparse.Namespace
) -> float:
    outcome = await solve(pools.small, item, "cascade", cascade_params(args, 0.0, ("direct",)))
    first = next(e for e in outcome.trace if e.name == "rung" and "confidence" in e.data)
    return float(first.data["confidence"])


def _share(a: float | None, b: float | None) -> str:
    return f"{a / b:.0%}" if a is not None and b else "-"


def table(results: Sequence[dict[str, Any]], max_name: str, strong_name: str) -> None:
    print(
        "\n| split | policy | items | accuracy | reasoning tok | output tok | of which 1.5B "
        "| p50 s | p95 s | $/correct | acc / always-max | tok / always-max | acc / always-strong "
        "| tok / always-strong | $ / always-strong |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for split in ("test", "all"):
        rows = [r for r in results if r["split"] == split]
        mx = next(r for r in rows if r["policy"] == max_name)
        st = next(r for r in rows if r["policy"] == strong_name)
        for r in rows:
            cpc = r["cost_per_correct_usd"]
            star = "*" if split == "all" and r["fitted_on_train"] else ""
            print(
                f"| {split} | {r['policy']}{star} | {r['items']} | {r['accuracy']:.3f} "
                f"| {r['reasoning_tokens']} | {r['output_tokens']} | {r['strong_generated_tokens']} "
                f"| {r['latency_p50_s']} | {r['latency_p95_s']} "
                f"| {'-' if cpc is None else f'{cpc:.2e}'} "
                f"| {_share(r['accuracy'], mx['accuracy'])} | {_share(r['generated_tokens'], mx['generated_tokens'])} "
                f"| {_share(r['accuracy'], st['accuracy'])} | {_share(r['generated_tokens'], st['generated_tokens'])} "
                f"| {_share(r['cost_usd'], st['cost_usd'])} |"
            )  # fmt: skip


# --------------------------------------------------------------------------- live


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_toml(
    args: argparse.Namespace,
    db: Path,
    router: dict[str, Any] | None,
    *,
    default_policy: bool = False,
    strong: bool = True,
) -> str:
    """``ponder.toml`` of the live run: both models as embedded tiers, ledger in ``db``.

    ``default_policy``: no ``[router]`` section at all (the shipped policy routes);
    ``strong=False``: the 0.5B alone (the single-tier form).
    """
    factor = args.strong_price_factor

    def tier(name: str, model: str, f: float) -> str:
        return (
            f'[tiers.{name}]\nbackend = "llama_cpp"\nmodel = "{model}"\n'
            f"price = {{ input = {PRICE_IN * f}, output = {PRICE_OUT * f} }}\n"
            # A slow shared CPU: never time out or retry a call that is merely slow.
            "first_token_s = 600\ntotal_timeout_s = 900\nretries = 0\n"
            f"options = {{ max_sequences = {max(8, args.n * 2) if name == SMALL_TIER else 4} }}\n"
        )

    lines = [
        "[engine]",
        "n_ctx = 4096",
        f"threads = {args.threads}",
        "",
        "[server]",
        f'tier = "{SMALL_TIER}"',
        "request_timeout_s = 900",
        "",
        "[ledger]",
        f'url = "sqlite:///{db}"',
        "",
        tier(SMALL_TIER, MODEL, 1.0),
    ]
    if strong:
        lines.append(tier(STRONG_TIER, STRONG_MODEL, factor))
    if router is None and not default_policy:
        lines += ["[router]", "enabled = false", ""]
    elif router is not None:
        lines += ["[router]", f"threshold = {router['threshold']}"]
        if router.get("classifier"):
            lines.append(f'classifier = "{router["classifier"]}"')
        for cls, pol in router["classes"].items():
            lines.append(f"[router.classes.{cls}]")
            for k, v in pol.items():
                lines.append(f"{k} = {json.dumps(v) if not isinstance(v, dict) else _inline(v)}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _inline(d: dict[str, Any]) -> str:
    parts = []
    for k, v in d.items():
        parts.append(f"{k} = {_inline(v) if isinstance(v, dict) else json.dumps(v)}")
    return "{ " + ", ".join(parts) + " }"


def start_gateway(toml: str, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    cfg = workdir / "ponder.toml"
    cfg.write_text(toml)
    env = {**os.environ, "PONDER_CONFIG": str(cfg), "OMP_WAIT_POLICY": "PASSIVE"}
    exe = Path(sys.executable).with_name("ponder")
    log = open(workdir / "gateway.log", "wb")  # noqa: SIM115  # the child owns it
    proc = subprocess.Popen(
        [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < 300:
        if proc.poll() is not None:
            sys.exit(f"ponder serve exited ({proc.returncode}); see {workdir / 'gateway.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.terminate()
    sys.exit(f"ponder serve did not come up in 300 s; see {workdir / 'gateway.log'}")


async def live(args: argparse.Namespace, items: Sequence[Item]) -> dict[str, Any]:
    from openai import AsyncOpenAI

    from ponder.eval.metrics import percentile
    from ponder.ledger import Store

    out = Path(args.dir)
    saved = json.loads((out / "replay.json").read_text())
    name = args.live_policy or saved["winner"]
    spec = saved["requests"][name]
    replayed = saved["per_item"][name]
    by_id = {it.id: it for it in items}
    test = [by_id[i] for i in saved["test_ids"] if i in by_id]
    chosen = random.Random(args.seed).sample(test, min(args.live_items, len(test)))

    workdir = Path(tempfile.mkdtemp(prefix="routing-live-", dir=out)).resolve()
    db = workdir / "ledger.db"
    port = free_port()
    two_tier = name != "default-small"
    toml = gateway_toml(
        args, db, spec.get("router"), default_policy=bool(spec.get("default_policy")),
        strong=two_tier,
    )  # fmt: skip
    proc = start_gateway(toml, port, workdir)
    import httpx

    served = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()["data"]
    tiers = sorted((m.get("ponder") or {}).get("tier", "") for m in served)
    if tiers != sorted([SMALL_TIER, STRONG_TIER] if two_tier else [SMALL_TIER]):
        proc.terminate()
        sys.exit(f"the gateway serves tiers {tiers}, not {SMALL_TIER} and {STRONG_TIER}")
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=1800)
    gate = asyncio.Semaphore(args.live_concurrency)
    rows: list[dict[str, Any]] = []

    async def one(item: Item) -> None:
        extra = {"ponder": spec["ponder"]} if "ponder" in spec else {}
        async with gate:
            t0 = time.monotonic()
            resp = await client.chat.completions.create(
                # A model naming a tier pins the request to it; the shipped policy's
                # tiers apply to requests whose model names no tier.
                model="ponder" if spec.get("default_policy") else MODEL,
                messages=[m.model_dump(include={"role", "content"}) for m in item.messages],  # type: ignore[misc]
                max_tokens=max_tokens_for(item),
                seed=item_seed(item.id),
                extra_body=extra,
            )
            latency = time.monotonic() - t0
        text = resp.choices[0].message.content or ""
        correct = await asyncio.to_thread(item.grade, text)
        usage = resp.usage
        reasoning = (
            usage.completion_tokens_details.reasoning_tokens
            if usage and usage.completion_tokens_details
            else 0
        )
        info = (resp.model_extra or {}).get("ponder") or {}
        row = {
            "item": item.id, "id": resp.id, "correct": bool(correct), "latency_s": round(latency, 2),
            "reasoning": reasoning or 0, "output": (usage.completion_tokens if usage else 0) - (reasoning or 0),
            "prompt": usage.prompt_tokens if usage else 0,
            "strategy": info.get("strategy"), "tier_usage": info.get("tier_usage"),
            "replayed_correct": replayed[item.id]["correct"], "same_answer_verdict":
                bool(correct) == replayed[item.id]["correct"],
            # A run on the strong tier reports it as ``tier``; a cascade calling it, in tier_usage.
            "strong_live": (usage.completion_tokens if usage else 0) if info.get("tier") == STRONG_TIER
                else ((info.get("tier_usage") or {}).get(STRONG_TIER) or {}).get("completion_tokens", 0),
            "strong_replayed": replayed[item.id]["strong"],
        }  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)

    started = time.monotonic()
    try:
        await asyncio.gather(*(one(it) for it in chosen))
    finally:
        await client.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    wall = time.monotonic() - started

    # The ledger: one row per request, with the tokens of every tier it used.
    store = Store(f"sqlite:///{db}")
    ledger = {r.id: r for r in store.rows()}
    store.close()
    ids = [r["id"] for r in rows]
    found = [ledger[i] for i in ids if i in ledger]
    strong_ledger = sum(
        (r.plan.get("tiers") or {}).get(STRONG_TIER, {}).get("completion_tokens", 0) for r in found
    )

    def totals(runs: Sequence[dict[str, Any]], strong_key: str) -> dict[str, Any]:
        lat = [r["latency_s"] for r in runs]
        return {
            "accuracy": round(sum(r["correct"] for r in runs) / len(runs), 4),
            "reasoning_tokens": sum(r["reasoning"] for r in runs),
            "output_tokens": sum(r["output"] for r in runs),
            "strong_generated_tokens": sum(r[strong_key] for r in runs),
            "latency_p50_s": round(percentile(lat, 50), 2),
            "latency_p95_s": round(percentile(lat, 95), 2),
        }

    summary = {
        "policy": name,
        "items": len(rows),
        "wall_min": round(wall / 60, 2),
        "live": totals(rows, "strong_live"),
        "replayed": totals([replayed[it.id] for it in chosen], "strong"),
        "verdict_agreement": round(sum(r["same_answer_verdict"] for r in rows) / len(rows), 4),
        # Whether the 1.5B was called for an item, live and in the replay.
        "strong_calls": {
            "live": sum(r["strong_live"] > 0 for r in rows),
            "replayed": sum(r["strong_replayed"] > 0 for r in rows),
            "same_decision": sum(
                (r["strong_live"] > 0) == (r["strong_replayed"] > 0) for r in rows
            ),
        },
        "ledger": {
            "rows_for_these_requests": len(found),
            "input_tokens": sum(r.input_tokens for r in found),
            "reasoning_tokens": sum(r.reasoning_tokens for r in found),
            "output_tokens": sum(r.output_tokens for r in found),
            "strong_completion_tokens": strong_ledger,
            "cost_usd": round(sum(r.cost_micro for r in found) / 1e6, 8),
            "tiers": sorted({r.tier or "-" for r in found}),
            "strategies": sorted({r.strategy for r in found}),
        },
        "usage_matches_ledger": len(found) == len(rows)
        and sum(r.reasoning_tokens + r.output_tokens for r in found)
        == sum(r["reasoning"] + r["output"] for r in rows),
    }
    print(json.dumps(summary))
    record = json.dumps({"summary": summary, "rows": rows}, indent=1)
    (workdir / "live.json").write_text(record)  # beside this run's gateway log and ledger
    (out / "live.json").write_text(record)  # the latest, where replay.json is
    lv, rp = summary["live"], summary["replayed"]
    print(f"\nlive vs replay, policy {name}, {len(rows)} test items")
    print("| run | accuracy | reasoning tok | output tok | of which 1.5B | p50 s | p95 s |")
    print("|---|---|---|---|---|---|---|")
    for label, s in (("live (gateway)", lv), ("replay (pool)", rp)):
        print(
            f"| {label} | {s['accuracy']:.3f} | {s['reasoning_tokens']} | {s['output_tokens']} "
            f"| {s['strong_generated_tokens']} | {s['latency_p50_s']} | {s['latency_p95_s']} |"
        )
    return summary


# The pool as committed to the repository: generating it costs hours on 2 cores, and
# runs/ is not versioned, so a new machine starts from here and a later session grows it.
PACKED = Path(__file__).resolve().parent / "data" / "routing"
POOL_FILES = ("pool.jsonl", "pool-strong.jsonl", "latency.jsonl")


def unpack(out: Path, packed: Path = PACKED) -> list[str]:
    """Copy the committed pool into ``out`` where ``out`` lacks a file; returns those copied."""
    import gzip
    import shutil

    copied = []
    out.mkdir(parents=True, exist_ok=True)
    for name in POOL_FILES:
        src, dst = packed / f"{name}.gz", out / name
        if src.exists() and not dst.exists():
            with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            copied.append(name)
    return copied


def pack(out: Path, packed: Path = PACKED) -> dict[str, int]:
    """Compress the pool in ``out`` into ``packed`` (byte-stable: no timestamps in the gzip)."""
    import gzip

    packed.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name in POOL_FILES:
        src = out / name
        if not src.exists():
            continue
        data = src.read_bytes()
        target = packed / f"{name}.gz"
        with (
            open(target, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as fh,
        ):
            fh.write(data)
        sizes[name] = target.stat().st_size
    return sizes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("stage", choices=["pool", "replay", "live", "all", "pack"])
    ap.add_argument("--dir", default="runs/routing", help="where the pool lives")
    ap.add_argument(
        "--per-level", type=int, default=30, help="reasoning-gym items per task and level"
    )
    # The defaults are the published workload (docs/results/routing.md).
    ap.add_argument("--gsm", type=int, default=30, help="gsm_symbolic items")
    ap.add_argument("--humaneval", type=int, default=12)
    ap.add_argument("--simple", type=int, default=len(SIMPLE))
    ap.add_argument("--limit", type=int, default=None, help="only the first N items of the order")
    ap.add_argument("--think", type=int, default=256, help="thinking budget of the medium rung")
    ap.add_argument("--n", type=int, default=4, help="samples of the search rung")
    ap.add_argument("--escalate", type=float, default=0.5, help="cascade: target escalation share")
    ap.add_argument(
        "--strong-price-factor", type=float, default=3.0, help="price of the 1.5B / the 0.5B"
    )
    ap.add_argument("--concurrency", type=int, default=2, help="pool: items in flight")
    ap.add_argument(
        "--deadline-min", type=float, default=None, help="pool: start no item after this"
    )
    ap.add_argument("--threads", type=int, default=1, help="engine threads")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--live-items", type=int, default=30, help="live: test items sent")
    ap.add_argument("--live-concurrency", type=int, default=2)
    ap.add_argument("--live-policy", default=None, help="live: a policy name (default: winner)")
    ap.add_argument(
        "--write-policy",
        default=None,
        help="replay: also write the policy fitted on train here (e.g. "
        "src/ponder/router/default_policy.json) and judge that one as 'default'",
    )
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.stage == "pack":
        print(json.dumps({"packed": str(PACKED), "bytes": pack(Path(args.dir))}))
        return
    copied = unpack(Path(args.dir))
    if copied:
        print(json.dumps({"unpacked": copied, "from": str(PACKED), "into": args.dir}), flush=True)
    items = workload(args)
    if args.limit is not None:
        items = items[: args.limit]
    if args.stage in ("pool", "all"):
        asyncio.run(build_pool(args, items))
    if args.stage in ("replay", "all"):
        asyncio.run(replay(args, items))
    if args.stage in ("live", "all"):
        asyncio.run(live(args, items))


if __name__ == "__main__":
    main()
