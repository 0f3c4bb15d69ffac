"""``ponder ask``: answer one prompt with a test-time-compute strategy."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from ponder.api import Ponder
from ponder.cli.common import close, parse_params, tokens
from ponder.config import load_settings
from ponder.strategies import available_strategies, get_strategy
from ponder.types import Outcome
from ponder.verifiers.sandbox import configure as configure_sandbox

__all__ = ["add_ask_command"]


def _build_ponder(model: str) -> Ponder:
    """The Ponder that ``ask`` runs on (tests replace this with a fake backend)."""
    return Ponder.embedded(model)


def _cmd_ask(args: argparse.Namespace, out: Console, err: Console) -> int:
    settings = load_settings()
    configure_sandbox(settings.sandbox)
    params = parse_params(args.param)
    if args.thinking_budget is not None:
        params["thinking_budget"] = args.thinking_budget
    # Build the strategy before loading the model: a typo fails in milliseconds.
    strategy = get_strategy(args.strategy or settings.server.default_strategy, **params)
    thinking = getattr(strategy, "thinking_budget", None) or 0
    # Completion tokens include the thinking, so by default the answer gets its
    # full share on top of it (the gateway does the same).
    max_tokens = args.max_tokens or settings.server.max_tokens_default + thinking

    ponder = _build_ponder(args.model or settings.engine.model)
    try:
        outcome = ponder.solve(
            args.prompt,
            strategy,
            budget=args.budget,
            max_tokens=max_tokens,
            temperature=args.temperature,
            seed=args.seed,
        )
    finally:
        close(ponder.backend)

    if args.json:
        exclude = None if args.trace else {"trace"}
        sys.stdout.write(outcome.model_dump_json(exclude=exclude, indent=2) + "\n")
        return 0
    _print_outcome(outcome, out, show_reasoning=args.show_reasoning)
    if args.trace and outcome.tree is not None:
        from ponder.strategies import render_tree

        out.print(
            Panel(Text(render_tree(outcome.tree)), title="search tree (* = chosen)", expand=False)
        )
    return 0


def _print_outcome(outcome: Outcome, out: Console, *, show_reasoning: bool) -> None:
    if show_reasoning and outcome.reasoning:
        out.print(Panel(Text(outcome.reasoning, style="dim"), title="reasoning", expand=False))
    out.print(Text(outcome.answer or "(no answer)"))
    u = outcome.usage
    summary = Text.assemble(
        ("strategy ", "dim"),
        (outcome.strategy, "bold"),
        ("  tokens ", "dim"),
        f"{u.prompt_tokens} in / {u.reasoning} reasoning / {u.output} out",
        ("  calls ", "dim"),
        str(outcome.calls),
        ("  latency ", "dim"),
        f"{outcome.latency_s:.2f}s",
        ("  truncated ", "dim"),
        (f"yes ({outcome.stop_reason})", "yellow") if outcome.truncated else "no",
    )
    out.print(summary)


def add_ask_command(sub: Any) -> None:
    ask = sub.add_parser("ask", help="answer a prompt with a test-time-compute strategy")
    ask.add_argument("prompt")
    ask.add_argument(
        "--strategy",
        "-s",
        help=f"one of: {', '.join(sorted(available_strategies()))} (default: direct)",
    )
    ask.add_argument("--budget", type=tokens(0), help="generated tokens over all internal calls")
    ask.add_argument("--thinking-budget", type=tokens(0), help="hidden-thinking tokens per call")
    ask.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="K=V",
        help="strategy parameter, repeatable (e.g. -p n=5)",
    )
    ask.add_argument("--model", "-m", help="catalog name or path to a .gguf file")
    ask.add_argument("--max-tokens", type=tokens(1), help="tokens per generation")
    ask.add_argument("--temperature", type=float)
    ask.add_argument("--seed", type=int)
    ask.add_argument("--show-reasoning", action="store_true", help="print the hidden reasoning")
    ask.add_argument("--json", action="store_true", help="print the whole outcome as JSON")
    ask.add_argument(
        "--trace", action="store_true", help="print the search tree (with --json: the trace events)"
    )
    ask.set_defaults(func=_cmd_ask)
