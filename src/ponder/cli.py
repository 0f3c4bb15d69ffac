"""The ``ponder`` command: ask the embedded model, manage catalog models, serve the gateway.

    ponder ask "What is 17*23?" --strategy self_consistency --param n=5 --budget 2000
    ponder models
    ponder models pull qwen2.5-coder-0.5b-instruct
    ponder serve --port 8000

User errors (bad strategy, unknown model, ...) print one message on stderr and
exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ponder.api import Ponder
from ponder.backends.base import Backend
from ponder.config import Settings, load_settings
from ponder.errors import InvalidRequest, PonderError
from ponder.strategies import available_strategies, get_strategy
from ponder.types import Outcome

__all__ = ["main"]

# Optional dependencies and the extra that installs each.
_EXTRAS = {
    "llama_cpp": "llama",
    "numpy": "llama",
    "jinja2": "llama",
    "fastapi": "server",
    "uvicorn": "server",
    "starlette": "server",
}


# --------------------------------------------------------------------------- seams for tests


def _build_ponder(model: str) -> Ponder:
    """The Ponder that ``ask`` runs on (tests replace this with a fake backend)."""
    return Ponder.embedded(model)


def _build_backend(model: str, settings: Settings, progress: Callable[[str], None]) -> Backend:
    """The engine that ``serve`` runs on, its model pulled first (tests replace this)."""
    # Import the engine before pulling: a missing extra fails before a long download.
    from ponder.backends import catalog
    from ponder.backends.llama_cpp import LlamaCppBackend

    if model in catalog.CATALOG:
        catalog.ensure_model(model, settings.cache_dir, progress=progress)
    engine = settings.engine
    return LlamaCppBackend(
        model=model,
        n_ctx=engine.n_ctx,
        max_sequences=engine.max_sequences,
        n_batch=engine.n_batch,
        threads=engine.threads,
        cache_dir=settings.cache_dir,
        seed=engine.seed,
    )


def _close(backend: Any) -> None:
    close = getattr(backend, "close", None)
    if callable(close):
        close()


# --------------------------------------------------------------------------- argument types


def _tokens(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``k=v`` pairs; values are read as JSON when they parse (``n=5`` -> 5), else as text."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidRequest(f"--param expects key=value (e.g. --param n=5), got {item!r}")
        try:
            params[key.strip()] = json.loads(raw)
        except ValueError:
            params[key.strip()] = raw
    return params


# --------------------------------------------------------------------------- commands


def _cmd_ask(args: argparse.Namespace, out: Console, err: Console) -> int:
    settings = load_settings()
    params = _parse_params(args.param)
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
        _close(ponder.backend)

    if args.json:
        exclude = None if args.trace else {"trace"}
        sys.stdout.write(outcome.model_dump_json(exclude=exclude, indent=2) + "\n")
        return 0
    _print_outcome(outcome, out, show_reasoning=args.show_reasoning)
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


def _size(n_bytes: int) -> str:
    if n_bytes >= 1_000_000_000:
        return f"{n_bytes / 1e9:.1f} GB"
    return f"{n_bytes / 1e6:.0f} MB"


def _progress(err: Console) -> Callable[[str], None]:
    return lambda message: err.print(Text(message, style="dim"))


def _cmd_models(args: argparse.Namespace, out: Console, err: Console) -> int:
    from ponder.backends import catalog

    settings = load_settings()
    if args.models_cmd == "pull":
        path = catalog.ensure_model(args.name, settings.cache_dir, progress=_progress(err))
        out.print(Text(str(path)))
        return 0
    table = Table(title=f"catalog models (cache: {settings.cache_dir})", title_justify="left")
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("tier", justify="right")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("description")
    for name, model in catalog.CATALOG.items():
        status = catalog.model_status(name, settings.cache_dir)
        style = {"installed": "green", "partial": "yellow"}.get(status, "dim")
        table.add_row(
            name, str(model.tier), _size(model.size), Text(status, style=style), model.description
        )
    out.print(table)
    out.print(Text("install one with: ponder models pull NAME", style="dim"))
    return 0


def _cmd_serve(args: argparse.Namespace, out: Console, err: Console) -> int:
    # Import the server stack first: a missing extra fails before a long model pull.
    import uvicorn

    from ponder.backends import catalog
    from ponder.server.app import create_app

    settings = load_settings()
    model = args.model or settings.engine.model
    host = args.host or settings.server.host
    port = args.port or settings.server.port
    if model not in catalog.CATALOG:
        catalog.resolve_model(model, settings.cache_dir)  # a .gguf path, or a clear error
    backend = _build_backend(model, settings, _progress(err))
    app = create_app(backend, settings.server)

    url = f"http://{host}:{port}"
    example = json.dumps(
        {
            "model": backend.name,
            "messages": [{"role": "user", "content": "What is 17*23?"}],
            "reasoning_effort": "low",
        }
    )
    out.print(Text(f"ponder serving {model} at {url}/v1", style="bold"))
    out.print(
        Text(
            f"try: curl {url}/v1/chat/completions -H 'content-type: application/json' "
            f"-d '{example}'",
            style="dim",
        ),
        soft_wrap=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0


# --------------------------------------------------------------------------- parser and main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ponder",
        description="Decide how much thinking each LLM request gets, spend it well, "
        "and account for every token.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ask = sub.add_parser("ask", help="answer a prompt with a test-time-compute strategy")
    ask.add_argument("prompt")
    ask.add_argument(
        "--strategy",
        "-s",
        help=f"one of: {', '.join(sorted(available_strategies()))} (default: direct)",
    )
    ask.add_argument("--budget", type=_tokens(0), help="generated tokens over all internal calls")
    ask.add_argument("--thinking-budget", type=_tokens(0), help="hidden-thinking tokens per call")
    ask.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="K=V",
        help="strategy parameter, repeatable (e.g. -p n=5)",
    )
    ask.add_argument("--model", "-m", help="catalog name or path to a .gguf file")
    ask.add_argument("--max-tokens", type=_tokens(1), help="tokens per generation")
    ask.add_argument("--temperature", type=float)
    ask.add_argument("--seed", type=int)
    ask.add_argument("--show-reasoning", action="store_true", help="print the hidden reasoning")
    ask.add_argument("--json", action="store_true", help="print the whole outcome as JSON")
    ask.add_argument("--trace", action="store_true", help="with --json: include the trace")
    ask.set_defaults(func=_cmd_ask)

    models = sub.add_parser("models", help="list catalog models, or pull one")
    models_sub = models.add_subparsers(dest="models_cmd", metavar="pull")
    pull = models_sub.add_parser("pull", help="download and verify a catalog model")
    pull.add_argument("name")
    models.set_defaults(func=_cmd_models)

    serve = sub.add_parser("serve", help="run the OpenAI-compatible gateway")
    serve.add_argument("--model", "-m", help="catalog name or path to a .gguf file")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=_cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ponder`` command; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    out, err = Console(), Console(stderr=True)
    try:
        return int(args.func(args, out, err))
    except PonderError as exc:
        err.print(Text.assemble(("error: ", "bold red"), exc.message))
        return 2
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        err.print(
            Text.assemble(
                ("error: ", "bold red"),
                f"this command needs {exc.name}, which is not installed; "
                f"install it with: pip install 'ponder[{extra}]'",
            )
        )
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
