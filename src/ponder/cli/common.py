"""Argument types and console helpers shared by the ``ponder`` commands."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.text import Text

from ponder.errors import InvalidRequest

__all__ = ["DB_HELP", "close", "parse_params", "progress", "tokens"]

DB_HELP = "store URL (default: ledger.url from ponder.toml / PONDER_LEDGER__URL)"


def tokens(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def parse_params(items: Sequence[str]) -> dict[str, Any]:
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


def progress(err: Console) -> Callable[[str], None]:
    return lambda message: err.print(Text(message, style="dim"))


def close(backend: Any) -> None:
    close = getattr(backend, "close", None)
    if callable(close):
        close()
