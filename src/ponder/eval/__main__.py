"""``python -m ponder.eval eval|report ...`` (the same commands as ``ponder eval|report``)."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from ponder.eval.cli import add_eval_commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ponder.eval")
    add_eval_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args, Console(), Console(stderr=True)))


if __name__ == "__main__":
    sys.exit(main())
