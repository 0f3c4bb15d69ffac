"""``ponder models``: the catalog, and pulling a model into the cache."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ponder.cli.common import progress
from ponder.config import load_settings

__all__ = ["add_models_command"]


def _size(n_bytes: int) -> str:
    if n_bytes >= 1_000_000_000:
        return f"{n_bytes / 1e9:.1f} GB"
    return f"{n_bytes / 1e6:.0f} MB"


def _cmd_models(args: argparse.Namespace, out: Console, err: Console) -> int:
    from ponder.backends import catalog

    settings = load_settings()
    if args.models_cmd == "pull":
        path = catalog.ensure_model(args.name, settings.cache_dir, progress=progress(err))
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


def add_models_command(sub: Any) -> None:
    models = sub.add_parser("models", help="list catalog models, or pull one")
    models_sub = models.add_subparsers(dest="models_cmd", metavar="pull")
    pull = models_sub.add_parser("pull", help="download and verify a catalog model")
    pull.add_argument("name")
    models.set_defaults(func=_cmd_models)
