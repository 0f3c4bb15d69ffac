"""``ponder eval`` and ``ponder report``: run a grid resumably, then write the report."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ponder.backends.base import Backend

__all__ = ["add_eval_commands"]


def _budgets(text: str) -> list[int | None]:
    return [None if b.strip().lower() in ("none", "") else int(b) for b in text.split(",")]


def add_eval_commands(sub: Any) -> None:
    ev = sub.add_parser("eval", help="run strategies x budgets x models over a dataset (resumable)")
    ev.add_argument(
        "--dataset",
        required=True,
        help="humaneval, game24, rg:<task>, gsm8k, math500 or a .jsonl file",
    )
    ev.add_argument(
        "--limit", type=int, default=None, help="fixed random sample of this many items"
    )
    ev.add_argument(
        "--per-level", type=int, default=10, help="reasoning-gym items per difficulty level"
    )
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--strategies", default="", help="comma list of strategy names")
    ev.add_argument(
        "--strategy",
        action="append",
        default=[],
        metavar="NAME[:K=V,...]",
        help="a strategy with parameters, e.g. best_of_n:temperature=0.7 (repeatable)",
    )
    ev.add_argument("--n", default="1,2,4,8", help="sample counts for sampling strategies")
    ev.add_argument("--budgets", default="none", help="token budgets per item, e.g. none,2000")
    ev.add_argument(
        "--model", action="append", default=None, help="catalog model or .gguf (repeatable)"
    )
    ev.add_argument("--endpoint", action="append", default=[], metavar="NAME=URL",
                    help="also run the grid against an OpenAI-compatible endpoint (comparison mode)")  # fmt: skip
    ev.add_argument("--max-tokens", type=int, default=512)
    ev.add_argument(
        "--threads", type=int, default=None,
        help="embedded engine CPU threads (default: all cores; 1 when sharing the machine)",
    )  # fmt: skip
    ev.add_argument("--n-ctx", type=int, default=32768, help="embedded engine KV cells (shared)")
    ev.add_argument(
        "--max-sequences", type=int, default=32, help="embedded engine parallel sequences"
    )
    ev.add_argument("--concurrency", type=int, default=4)
    ev.add_argument("--out", required=True, help="run directory; results.jsonl there is resumed")
    ev.add_argument("--no-pool", action="store_true",
                    help="do not store/replay samples in <out>/pool.jsonl")  # fmt: skip
    ev.set_defaults(func=_cmd_eval)

    rp = sub.add_parser("report", help="write Markdown + HTML + plots from an eval run")
    rp.add_argument("run", help="run directory (or results.jsonl)")
    rp.add_argument("--out", default=None, help="report directory (default: <run>/report)")
    rp.add_argument("--title", default=None)
    rp.add_argument(
        "--prices", default=None, help='JSON: {"model": {"input": $/1M, "output": $/1M}}'
    )
    rp.add_argument(
        "--common-items",
        action="store_true",
        help="compare only items every configuration has finished (for a partial run)",
    )
    rp.set_defaults(func=_cmd_report)


def _backends(args: argparse.Namespace) -> dict[str, Backend]:
    from ponder.backends.llama_cpp import LlamaCppBackend

    backends: dict[str, Backend] = {}
    for model in args.model or ["qwen2.5-coder-0.5b-instruct"]:
        # A large shared KV cache lets several N-sample requests decode together.
        backends[model] = LlamaCppBackend(
            model, n_ctx=args.n_ctx, max_sequences=args.max_sequences, threads=args.threads
        )
    for spec in args.endpoint:
        name, _, url = spec.partition("=")
        if not url:
            raise SystemExit(f"--endpoint wants NAME=URL, got {spec!r}")
        from ponder.backends import get_backend

        backends[name] = get_backend("openai", base_url=url)
    return backends


def _cmd_eval(args: argparse.Namespace, out: Console, err: Console) -> int:
    from ponder.eval.datasets import load_dataset
    from ponder.eval.runner import ResultStore, expand_grid, run_eval
    from ponder.eval.selection import selection_verifier

    items = load_dataset(args.dataset, limit=args.limit, seed=args.seed, per_level=args.per_level)
    backends = _backends(args)
    if not args.no_pool:
        from ponder.eval.pool import PooledBackend

        backends = {
            name: PooledBackend(b, Path(args.out) / "pool.jsonl", model=name)
            for name, b in backends.items()
        }
    specs = [s.strip() for s in args.strategies.split(",") if s.strip()] + args.strategy
    if not specs:
        specs = ["direct", "self_consistency", "best_of_n"]
    configs = expand_grid(
        specs,
        ns=[int(n) for n in args.n.split(",")],
        budgets=_budgets(args.budgets),
        models=list(backends),
        max_tokens=args.max_tokens,
    )
    store = ResultStore(Path(args.out) / "results.jsonl")
    done = store.done()
    total = sum(1 for c in configs for it in items if (c.key, it.id) not in done)
    out.print(
        f"{len(items)} items x {len(configs)} configs; {total} to run, {len(done)} already done"
    )
    with Progress(
        TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[acc]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err,
    ) as bar:  # fmt: skip
        task = bar.add_task("eval", total=total, acc="")
        seen = {"n": 0, "ok": 0}

        def tick(record: dict[str, Any]) -> None:
            seen["n"] += 1
            seen["ok"] += int(record["correct"])
            bar.update(task, advance=1, acc=f"acc {100 * seen['ok'] / seen['n']:.0f}%")

        try:
            asyncio.run(
                run_eval(
                    items,
                    configs,
                    backends,
                    store,
                    concurrency=args.concurrency,
                    selection_verifier=selection_verifier,
                    on_result=tick,
                )  # fmt: skip
            )
        finally:
            for b in backends.values():
                close = getattr(b, "close", None)
                if callable(close):
                    close()
    out.print(f"results in {store.path}; next: ponder report {args.out}")
    return 0


def _cmd_report(args: argparse.Namespace, out: Console, err: Console) -> int:
    from ponder.eval.report import write_report
    from ponder.eval.runner import ResultStore

    run = Path(args.run)
    path = run if run.suffix == ".jsonl" else run / "results.jsonl"
    records = ResultStore(path).load()
    if args.common_items:
        from ponder.eval.metrics import common_items

        records = common_items(records)
    target = Path(args.out) if args.out else path.parent / "report"
    prices = json.loads(args.prices) if args.prices else None
    files = write_report(
        records, target, title=args.title or f"ponder eval: {path.parent.name}", prices=prices
    )
    for name, f in files.items():
        out.print(f"{name}: {f}")
    return 0
