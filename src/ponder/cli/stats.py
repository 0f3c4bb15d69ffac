"""``ponder stats``: per class success, cost per correct answer, escalation share and
what routing saved against the shadowed counterfactual plans."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ponder.cli.common import tokens
from ponder.config import load_settings
from ponder.errors import InvalidRequest
from ponder.wiring import open_store

__all__ = ["add_stats_command"]


def _bucket(text: str) -> float:
    from ponder.router.retrain import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _usd(value: float) -> str:
    return f"{value:.6f}"


def _ci(iv: dict[str, float] | None, fmt: Any) -> str:
    if iv is None:
        return ""
    return f"{fmt(iv['value'])} [{fmt(iv['low'])}, {fmt(iv['high'])}]"


def _share(value: float) -> str:
    return f"{value:.1%}"


def _points(value: float) -> str:
    return f"{100 * value:+.1f} pts"


def _width(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _when(start: float, width: int) -> str:
    stamp = datetime.fromtimestamp(start, UTC)
    return stamp.strftime("%Y-%m-%d" if width >= 86_400 else "%Y-%m-%d %H:%M") + " UTC"


def _plans(settings: Any) -> list[str]:
    """The counterfactual plans ``[router.shadow]`` names, when shadows are on."""
    shadow = settings.router.shadow
    if shadow.rate <= 0 and not any(r > 0 for r in shadow.classes.values()):
        return []
    return [p for p in shadow.plans if p != "auto"]


def _class_table(classes: list[dict[str, Any]], rows: int) -> Table:
    served = sum(c["requests"] for c in classes)
    shadows = f", {rows - served} shadow runs" if rows > served else ""
    table = Table(title=f"requests by class ({served} rows{shadows})", title_justify="left")
    for col in (
        "class",
        "requests",
        "success",
        "p50 ms",
        "p95 ms",
        "reasoning",
        "output",
        "total tokens",
        "cost USD",
        "USD/correct",
        "escalated",
    ):
        table.add_column(col, justify="right" if col != "class" else "left", no_wrap=True)
    for c in classes:
        table.add_row(
            c["task_class"],
            str(c["requests"]),
            f"{c['success_rate']:.1%}",
            f"{c['p50_latency_ms']:.0f}",
            f"{c['p95_latency_ms']:.0f}",
            str(c["reasoning_tokens"]),
            str(c["output_tokens"]),
            str(c["total_tokens"]),
            _usd(c["cost_usd"]),
            "" if c["cost_per_correct_usd"] is None else _usd(c["cost_per_correct_usd"]),
            f"{c['escalation_share']:.1%}",
        )
    return table


def _savings_table(classes: list[dict[str, Any]]) -> Table | None:
    found = [s for c in classes for s in c["savings"]]
    if not found:
        return None
    table = Table(
        title="what routing saved against always running one plan "
        "(from the shadow sample; 95% bootstrap CI)",
        title_justify="left",
    )
    for col in (
        "class",
        "vs always",
        "pairs",
        "spent USD",
        "always USD",
        "saved USD",
        "saved share",
        "accuracy diff (always - served)",
    ):
        table.add_column(col, justify="left" if col in ("class", "vs always") else "right")
    for s in found:
        spend: list[Any] = [_usd(s["actual_usd"])]
        if s["note"] is not None:
            spend += [Text(s["note"], style="dim"), "", ""]
        else:
            spend += [
                _ci(s["counterfactual_usd"], _usd),
                _ci(s["savings_usd"], _usd),
                _ci(s["savings_share"], _share),
            ]
        quality: Any = (
            f"{_ci(s['quality_diff'], _points)} ({s['graded_pairs']} graded)"
            if s["quality_diff"] is not None
            else Text(s["quality_note"] or "", style="dim")
        )
        table.add_row(s["task_class"], s["plan"], str(s["pairs"]), *spend, quality)
    return table


def _total_table(totals: list[dict[str, Any]]) -> Table | None:
    """Across classes: the classes with an estimate summed, per counterfactual plan."""
    found = [t for t in totals if t["counterfactual_usd"] is not None]
    if not found:
        return None
    table = Table(
        title="across classes (those with an estimate; 95% stratified bootstrap CI)",
        title_justify="left",
    )
    for col in ("vs always", "classes", "pairs", "spent USD", "always USD", "saved USD",
                "saved share", "not covered USD"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("vs always", "classes") else "right")
    for t in found:
        table.add_row(
            t["plan"],
            ", ".join(t["classes"]),
            str(t["pairs"]),
            _usd(t["actual_usd"]),
            _ci(t["counterfactual_usd"], _usd),
            _ci(t["savings_usd"], _usd),
            _ci(t["savings_share"], _share),
            _usd(t["uncovered_usd"]),
        )
    return table


def _escalation_table(classes: list[dict[str, Any]], width: int) -> Table | None:
    cells: dict[float, dict[str, str]] = {}
    for c in classes:
        for b in c["escalation"]["buckets"]:
            cells.setdefault(b["start"], {})[c["task_class"]] = (
                f"{b['share']:.0%} ({b['escalated']}/{b['requests']})"
            )
    if not cells:
        return None
    table = Table(
        title=f"escalation share over time (buckets of {_width(width)}; escalated/requests)",
        title_justify="left",
    )
    table.add_column("from", no_wrap=True)
    names = [c["task_class"] for c in classes]
    for name in names:
        table.add_column(name, justify="right", no_wrap=True)
    for start in sorted(cells):
        table.add_row(_when(start, width), *(cells[start].get(n, "") for n in names))
    return table


def _cmd_stats(args: argparse.Namespace, out: Console, err: Console) -> int:
    from ponder.router.savings import routing_report

    settings = load_settings()
    store = open_store(settings, args.db)
    try:
        since = None if args.hours is None else time.time() - args.hours * 3600
        rows = store.rows(since=since)
    finally:
        store.close()
    try:
        report = routing_report(
            rows, bucket_s=args.bucket, plans=_plans(settings), min_pairs=args.min_pairs
        )
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    classes = report["classes"]
    if args.json:
        sys.stdout.write(json.dumps(classes) + "\n")
        return 0
    if not classes:
        out.print(Text("the ledger has no requests yet", style="dim"))
        return 0
    out.print(_class_table(classes, len(rows)))
    savings = _savings_table(classes)
    if savings is None:
        out.print(
            Text(
                "no shadow runs in the ledger: set [router.shadow] rate (and plan, e.g. "
                '["strong", "search"]) to estimate what routing saved',
                style="dim",
            )
        )
    else:
        out.print(savings)
        across = _total_table(report["total"])
        if across is not None:
            out.print(across)
    escalation = _escalation_table(classes, report["bucket_s"])
    if escalation is not None:
        out.print(escalation)
    return 0


def add_stats_command(sub: Any, db_help: str) -> None:
    stats = sub.add_parser(
        "stats",
        help="success, cost per correct answer, escalation share and savings per class",
    )
    stats.add_argument("--hours", type=float, help="only the last H hours")
    stats.add_argument(
        "--bucket",
        type=_bucket,
        help="escalation share buckets, e.g. 1h or 1d (default: from the span of the rows)",
    )
    stats.add_argument(
        "--min-pairs",
        type=tokens(1),
        default=5,  # ponder.router.savings.MIN_PAIRS (not imported: it loads numpy)
        help="fewest shadow pairs for a savings estimate (default 5)",
    )
    stats.add_argument("--json", action="store_true")
    stats.add_argument("--db", help=db_help)
    stats.set_defaults(func=_cmd_stats)
