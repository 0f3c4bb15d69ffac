"""``ponder keys``, ``ponder quota`` and ``ponder stats`` (``cli.stats``): the store from the
command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ponder.cli.common import DB_HELP, tokens
from ponder.cli.stats import add_stats_command
from ponder.config import load_settings
from ponder.errors import InvalidRequest
from ponder.wiring import open_store

__all__ = ["add_governance_commands"]


def _cmd_keys(args: argparse.Namespace, out: Console, err: Console) -> int:
    store = open_store(load_settings(), args.db)
    try:
        if args.keys_cmd == "create":
            record, secret = store.create_key(
                args.user, team=args.team, scopes=args.scope, name=args.name
            )
            if args.json:
                sys.stdout.write(json.dumps({**record.public(), "key": secret}) + "\n")
                return 0
            out.print(Text(f"created {record.id} for user {record.user}", style="bold"))
            out.print(Text(secret))
            err.print(Text("the key is shown only now; store it safely", style="dim"))
            return 0
        if args.keys_cmd == "revoke":
            if not store.revoke_key(args.id):
                raise InvalidRequest(f"no active key with id {args.id!r}; see `ponder keys list`")
            out.print(Text(f"revoked {args.id}"))
            return 0
        keys = store.list_keys(include_revoked=args.all)
        if args.json:
            sys.stdout.write(json.dumps([k.public() for k in keys]) + "\n")
            return 0
        table = Table(title="API keys", title_justify="left")
        for col in ("id", "prefix", "user", "team", "scopes", "name", "state"):
            table.add_column(col, no_wrap=True)
        for k in keys:
            table.add_row(
                k.id,
                k.prefix + "...",
                k.user,
                k.team or "",
                ",".join(sorted(k.scopes)),
                k.name,
                "active" if k.active else "revoked",
            )
        out.print(table)
        return 0
    finally:
        store.close()


def _subjects(args: argparse.Namespace) -> dict[str, str | None]:
    return {"key": args.key, "user": args.user, "team": args.team, "session": args.session}


def _cmd_quota(args: argparse.Namespace, out: Console, err: Console) -> int:
    from ponder.budget.pricing import to_micro
    from ponder.budget.quota import Limit

    store = open_store(load_settings(), args.db)
    try:
        if args.quota_cmd == "set":
            given = [(scope, v) for scope, v in _subjects(args).items() if v is not None]
            if len(given) != 1:
                raise InvalidRequest(
                    "name exactly one of --key, --user, --team, --session "
                    "(use '*' to give every user/team/... its own limit)"
                )
            scope, subject = given[0]
            if (args.limit is None) == (args.usd is None) and not args.remove:
                raise InvalidRequest("give the limit as --limit N, or --usd X for --metric cost")
            if args.usd is not None and args.metric != "cost":
                raise InvalidRequest("--usd is only for --metric cost; use --limit N")
            if args.remove:
                removed = store.delete_limit(scope, subject, args.metric, args.window)  # type: ignore[arg-type]
                out.print(Text("removed" if removed else "no such limit"))
                return 0
            limit = args.limit if args.usd is None else to_micro(args.usd)
            lim = Limit(scope, subject, args.metric, args.window, limit)  # type: ignore[arg-type]
            store.set_limit(lim)
            out.print(Text(f"set {lim.describe()}"))
            return 0
        subjects = _subjects(args)
        table = Table(title="quotas", title_justify="left")
        for col in ("scope", "subject", "metric", "window", "limit", "used", "reserved", "resets"):
            table.add_column(col, no_wrap=True)
        if any(subjects.values()):
            from datetime import UTC, datetime

            for q in store.status(subjects):  # type: ignore[arg-type]
                lim = q.limit
                resets = (
                    ""
                    if lim.window == "request"
                    else datetime.fromtimestamp(q.resets_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
                )
                table.add_row(
                    lim.scope,
                    q.subject,
                    lim.metric,
                    lim.window,
                    str(lim.limit),
                    str(q.used),
                    str(q.reserved),
                    resets,
                )
        else:
            for lim in store.limits():
                table.add_row(lim.scope, lim.subject, lim.metric, lim.window, str(lim.limit))
        out.print(table)
        return 0
    finally:
        store.close()


def add_governance_commands(sub: Any) -> None:
    db_help = DB_HELP
    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    keys_sub = keys.add_subparsers(dest="keys_cmd", metavar="create|list|revoke", required=True)
    create = keys_sub.add_parser("create", help="create a key (shown once)")
    create.add_argument("--user", required=True)
    create.add_argument("--team")
    create.add_argument(
        "--scope",
        action="append",
        default=[],
        choices=["reasoning", "strategies", "admin"],
        help="repeatable: reasoning (see traces), strategies (choose them), admin",
    )
    create.add_argument("--name", default="")
    create.add_argument("--json", action="store_true")
    create.add_argument("--db", help=db_help)
    klist = keys_sub.add_parser("list", help="list keys (never their secrets)")
    klist.add_argument("--all", action="store_true", help="include revoked keys")
    klist.add_argument("--json", action="store_true")
    klist.add_argument("--db", help=db_help)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")
    revoke.add_argument("--db", help=db_help)
    keys.set_defaults(func=_cmd_keys)

    quota = sub.add_parser("quota", help="set and show quotas")
    quota_sub = quota.add_subparsers(dest="quota_cmd", metavar="set|show", required=True)
    qset = quota_sub.add_parser("set", help="set (or --remove) one limit")
    qshow = quota_sub.add_parser("show", help="limits, or one caller's usage against them")
    for qp in (qset, qshow):
        for scope in ("key", "user", "team", "session"):
            qp.add_argument(f"--{scope}")
        qp.add_argument("--db", help=db_help)
    qset.add_argument(
        "--metric", required=True, choices=["requests", "tokens", "reasoning_tokens", "cost"]
    )
    qset.add_argument(
        "--window",
        required=True,
        choices=["minute", "day", "month", "request"],
        help="request = a per-request cap",
    )
    qset.add_argument("--limit", type=tokens(0), help="requests, tokens or micro-USD")
    qset.add_argument("--usd", type=float, help="for --metric cost: the limit in USD")
    qset.add_argument("--remove", action="store_true")
    quota.set_defaults(func=_cmd_quota)

    add_stats_command(sub, db_help)
