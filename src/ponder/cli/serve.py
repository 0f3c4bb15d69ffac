"""``ponder serve``: the governed OpenAI-compatible gateway on the embedded engine or tiers."""

from __future__ import annotations

import argparse
import gc
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from ponder.backends.base import Backend
from ponder.cli.common import DB_HELP, progress
from ponder.config import Settings, load_settings
from ponder.errors import InvalidRequest
from ponder.verifiers.sandbox import configure as configure_sandbox
from ponder.wiring import build_gateway, embedded_backend, tier_builder

if TYPE_CHECKING:
    from ponder.guard import Tiers

__all__ = ["add_serve_command"]


def _build_backend(model: str, settings: Settings, progress: Callable[[str], None]) -> Backend:
    """The engine that ``serve`` runs on, its model pulled first (tests replace this)."""
    return embedded_backend(model, settings, progress)


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
    if args.backend != "fake" and not settings.tiers and settings.server.embedded_tiers:
        from ponder.router.calibrate import embedded_tier_settings

        embedded = embedded_tier_settings(model, settings.cache_dir)
        if embedded:
            # Both catalog models are installed: the small one answers by default, the
            # router sends what pays to the strong one (the default policy's two tiers).
            server = settings.server.model_copy(update={"tier": "small"})
            settings = settings.model_copy(update={"tiers": embedded, "server": server})
            args.model = None
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
        from ponder.guard import Tiers

        default = settings.server.tier or next(iter(settings.tiers))
        if default not in settings.tiers:
            raise InvalidRequest(
                f"server.tier = {default!r} is not a configured tier; tiers: "
                f"{', '.join(settings.tiers)}",
                param="server.tier",
            )
        server = settings.server.model_copy(update={"tier": default})
        settings = settings.model_copy(update={"server": server})
        tiers = Tiers(settings.tiers, builder=tier_builder(settings, progress(err)))
        backend = tiers.backend(default)
    else:
        if model not in catalog.CATALOG:
            catalog.resolve_model(model, settings.cache_dir)  # a .gguf path, or a clear error
        backend = _build_backend(model, settings, progress(err))
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


def add_serve_command(sub: Any) -> None:
    db_help = DB_HELP
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
