"""Cross-call KV prefix cache of the embedded engine: cache on vs. off, in one run.

Two engines on the same model, identical but for ``prefix_cache``, run the same
workloads with the same seeds: beam search, MCTS, self-refine, the cascade
(direct -> think -> search) and a five-turn chat. The two variants are
interleaved per workload (on, off, on, off, ...) so that load from other
processes on the machine hits both; every repeat asks a different question (the same for both variants), so no
repeat finds an earlier repeat's answer cached; figures are sums over repeats.
Search runs greedily by default (``--temperature 0``) so that outputs can be
compared exactly. Prints one JSON line per workload and variant (with the seconds
each engine spent inside ``llama_decode`` on prompts and on generation), then a summary
that includes the bound a prefix cache cannot beat: the uncached wall time less its
prompt evaluation.

    .venv/bin/python benchmarks/prefix_cache.py --repeats 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ponder.api import Ponder
from ponder.backends.llama_cpp import LlamaCppBackend
from ponder.strategies import MCTS, BeamSearch, Cascade, SelfRefine
from ponder.types import GenRequest, Message, Usage

MODEL = "qwen2.5-coder-0.5b-instruct"
# One question (and one chat) per repeat, the same for both variants: a repeat
# must not find the previous repeat's answer in the cache.
QUESTIONS = [
    "A shop sells pencils at 3 for 45 cents. Tom buys 12 pencils and pays with a 5 dollar "
    "bill. How much change does he get, in cents?",
    "A train leaves at 9:40 and the trip takes 2 hours 35 minutes. It is 10 minutes late. "
    "At what time does it arrive?",
    "Anna has 4 boxes of 18 marbles. She gives 25 marbles away and splits the rest equally "
    "between 3 friends. How many marbles does each friend get?",
]
CHATS = [
    [
        "I am planning a small vegetable garden. Name three easy vegetables for beginners.",
        "Which of those needs the most sun?",
        "How often should I water it in summer?",
        "What should I plant next to it?",
        "Summarize our plan in one sentence.",
    ],
    [
        "I want to start running. How far should I run in my first week?",
        "How many days a week?",
        "What should I eat before a run?",
        "How do I avoid sore knees?",
        "Summarize our plan in one sentence.",
    ],
    [
        "I am learning Python. Which three topics should I learn first?",
        "Give me a tiny exercise for the first one.",
        "How long should I practice each day?",
        "Which book or site would you suggest?",
        "Summarize our plan in one sentence.",
    ],
]

Run = Callable[[LlamaCppBackend, int], Awaitable[dict[str, Any]]]


def _usage(u: Usage) -> dict[str, int]:
    return {"input": u.input, "cached_input": u.cached_input, "generated": u.completion_tokens}


def strategy_run(strategy: Any, budget: int, seed: int) -> Run:
    async def run(engine: LlamaCppBackend, rep: int) -> dict[str, Any]:
        question = QUESTIONS[rep % len(QUESTIONS)]
        out = await Ponder(engine).asolve(question, strategy, budget=budget, seed=seed)
        return {"output": out.answer, **_usage(out.usage)}

    return run


def chat_run(max_tokens: int) -> Run:
    async def run(engine: LlamaCppBackend, rep: int) -> dict[str, Any]:
        chat = CHATS[rep % len(CHATS)]
        messages: list[Message] = []
        total = Usage()
        texts, ttft = [], 0.0
        for turn, text in enumerate(chat):
            messages.append(Message(role="user", content=text))
            req = GenRequest(messages=messages, max_tokens=max_tokens)
            if turn < len(chat) - 1:
                (g,) = await engine.generate(req)
                answer, usage = g.text, g.usage
            else:  # the last turn streams: its time to first token is what a user waits
                t0 = time.perf_counter()
                pieces, usage, first = [], Usage(), None
                async for d in engine.stream(req):
                    if d.text and first is None:
                        first = time.perf_counter() - t0
                    pieces.append(d.text)
                    usage = d.usage or usage
                answer, ttft = "".join(pieces), first or 0.0
            messages.append(Message(role="assistant", content=answer))
            texts.append(answer)
            total = total + usage
        return {"output": texts, "ttft_last_turn_s": round(ttft, 3), **_usage(total)}

    return run


def workloads(args: argparse.Namespace) -> dict[str, Run]:
    t = args.temperature
    return {
        "beam_search": strategy_run(
            BeamSearch(
                n=4, beam_width=2, max_steps=3, step_tokens=40, final_tokens=64, temperature=t
            ),
            budget=600,
            seed=1,
        ),  # fmt: skip
        "mcts": strategy_run(
            MCTS(
                iterations=4,
                expand=2,
                max_depth=3,
                step_tokens=40,
                rollout_tokens=64,
                temperature=t,
            ),
            budget=600,
            seed=2,
        ),  # fmt: skip
        "self_refine": strategy_run(SelfRefine(rounds=2), budget=400, seed=3),
        "cascade": strategy_run(
            Cascade(
                rungs=("direct", "think", "search"),
                threshold=0.99,
                thinking_budget=96,
                search_n=2,
                search_temperature=t,
            ),
            budget=600,
            seed=4,
        ),  # fmt: skip
        "chat_5_turns": chat_run(args.chat_tokens),
    }


async def main(args: argparse.Namespace) -> None:
    common = {"n_ctx": args.n_ctx, "max_sequences": args.max_sequences, "threads": args.threads}
    engines = {
        "cached": LlamaCppBackend(MODEL, prefix_cache=True, **common),
        "uncached": LlamaCppBackend(MODEL, prefix_cache=False, **common),
    }
    for engine in engines.values():  # page the weights in before timing
        await engine.generate(
            GenRequest(messages=[Message(role="user", content="hi")], max_tokens=2)
        )
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    chosen = workloads(args)
    names = [n for n in chosen if not args.only or n in args.only]
    summed = ("wall_s", "input", "cached_input", "generated", "ttft_last_turn_s",
              "prompt_eval_s", "generate_s")  # fmt: skip
    try:
        for name in names:
            for rep in range(args.repeats):
                for variant, engine in engines.items():  # interleaved: on, off, on, off, ...
                    before = engine.decode_stats()
                    t0 = time.perf_counter()
                    result = await chosen[name](engine, rep)
                    result["wall_s"] = time.perf_counter() - t0
                    after = engine.decode_stats()
                    # Time inside llama_decode evaluating prompts vs generating tokens.
                    result["prompt_eval_s"] = after["prompt_s"] - before["prompt_s"]
                    result["generate_s"] = after["generate_s"] - before["generate_s"]
                    row = rows.setdefault((name, variant), {"outputs": []})
                    row["outputs"].append(result.pop("output"))
                    for key in summed:
                        if key in result:
                            row[key] = row.get(key, 0) + result[key]
            for variant in engines:
                row = rows[(name, variant)]
                line = {"workload": name, "variant": variant, "repeats": args.repeats,
                        **{k: round(v, 3) for k, v in row.items() if k != "outputs"}}  # fmt: skip
                print(json.dumps(line), flush=True)
        stats = engines["cached"].prefix_cache_stats()
    finally:
        for engine in engines.values():
            engine.close()

    def total(variant: str, key: str, which: list[str]) -> float:
        return sum(rows[(n, variant)][key] for n in which)

    search = [n for n in names if n != "chat_5_turns"]
    identical = {n: rows[(n, "cached")]["outputs"] == rows[(n, "uncached")]["outputs"]
                 for n in names}  # fmt: skip
    summary: dict[str, Any] = {
        "summary": True,
        "model": MODEL,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "repeats": args.repeats,
        "search_temperature": args.temperature,
        "identical_outputs": all(identical.values()),
        "identical_by_workload": identical,
        "wall_ratio_by_workload": {
            n: round(rows[(n, "cached")]["wall_s"] / rows[(n, "uncached")]["wall_s"], 3)
            for n in names
        },
        "prefix_cache": stats,
    }
    if search:
        summary["cached_over_uncached_wall"] = round(
            total("cached", "wall_s", search) / total("uncached", "wall_s", search), 3
        )
        # What a prefix cache can remove at most: the uncached engine's prompt
        # evaluation. With it free and everything else unchanged, the ratio would be:
        off_wall = total("uncached", "wall_s", search)
        off_prompt = total("uncached", "prompt_eval_s", search)
        summary["uncached_prompt_eval_share_search"] = round(off_prompt / off_wall, 3)
        summary["wall_ratio_if_prompts_were_free_search"] = round(
            (off_wall - off_prompt) / off_wall, 3
        )
    summary["prompt_tokens_evaluated_ratio"] = round(
        total("cached", "input", names) / max(total("uncached", "input", names), 1), 3
    )
    if "chat_5_turns" in names:
        summary["ttft_turn5_ratio"] = round(
            rows[("chat_5_turns", "cached")]["ttft_last_turn_s"]
            / max(rows[("chat_5_turns", "uncached")]["ttft_last_turn_s"], 1e-9),
            3,
        )
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--temperature", type=float, default=0.0, help="beam search / MCTS sampling")
    p.add_argument("--chat-tokens", type=int, default=48)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--max-sequences", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", nargs="*", help="run only these workloads")
    asyncio.run(main(p.parse_args()))
