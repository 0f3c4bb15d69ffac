"""``ponder deploy ray`` and ``python -m ponder.deploy.ray``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ponder.config import RayDeploySettings, Settings, load_settings
from ponder.deploy.ray.app import deploy
from ponder.deploy.ray.plan import DeployConfigError, load_deploy_settings, plan_deployment
from ponder.errors import PonderError

__all__ = ["add_deploy_commands", "main"]


@contextlib.contextmanager
def _config_env(path: str | None) -> Iterator[None]:
    """PONDER_CONFIG pointed at ``path`` while the settings load (config.py reads it)."""
    if path is None:
        yield
        return
    old = os.environ.get("PONDER_CONFIG")
    os.environ["PONDER_CONFIG"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PONDER_CONFIG", None)
        else:
            os.environ["PONDER_CONFIG"] = old


def _load(args: argparse.Namespace) -> tuple[Settings, RayDeploySettings]:
    if args.config is not None and not Path(args.config).exists():
        raise DeployConfigError(f"config file {args.config} does not exist")
    with _config_env(args.config):
        settings = load_settings()
    data = load_deploy_settings(args.config).model_dump()
    if args.host is not None:
        data["host"] = args.host
    if args.port is not None:
        data["port"] = args.port
    if args.gateway_replicas is not None:
        data["gateway"].update(replicas=args.gateway_replicas, autoscaling=None)
    try:
        return settings, RayDeploySettings.model_validate(data)
    except ValidationError as exc:  # the command-line values, checked like the file's
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise DeployConfigError(f"invalid option: {problems}") from exc


def _cmd_deploy_ray(args: argparse.Namespace, out: Any = None, err: Any = None) -> int:
    settings, d = _load(args)
    plan = plan_deployment(settings, d)  # configuration errors before Ray starts
    if args.dry_run:
        sys.stdout.write(json.dumps(plan.describe(), indent=2, default=str) + "\n")
        return 0
    if args.detach and args.address is None:
        raise DeployConfigError(
            "--detach needs --address (a running Ray cluster): a Ray started here stops "
            "when this command exits"
        )
    try:
        import ray  # noqa: F401
    except ImportError:
        raise DeployConfigError(
            "ponder deploy ray needs Ray Serve: pip install 'ponder[ray]'"
        ) from None
    url = deploy(settings, d, address=args.address)
    sys.stderr.write(f"ponder gateway on Ray Serve at {url}/v1 ({len(plan.tiers)} tiers)\n")
    if args.detach:
        return 0
    from ray import serve

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # A service manager stops with SIGTERM: shut the application down as on Ctrl-C.
    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        sys.stderr.write("shutting the application down\n")
        serve.shutdown()  # type: ignore[no-untyped-call]
    return 0


def add_deploy_commands(sub: Any) -> None:
    """``ponder deploy ray`` (added to the main parser)."""
    deploy_parser = sub.add_parser("deploy", help="scale the gateway out (Ray Serve)")
    dsub = deploy_parser.add_subparsers(dest="deploy_cmd", metavar="ray", required=True)
    ray_parser = dsub.add_parser(
        "ray",
        help="deploy the gateway and its tiers as a Ray Serve application",
        description="Deploy the gateway (several replicas) and one deployment per tier on "
        "Ray Serve. Quotas and the ledger are shared through PostgreSQL (ledger.url). "
        "See docs/DEPLOY.md.",
    )
    _add_ray_arguments(ray_parser)


def _add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        help="ponder.toml with [tiers.*], [ledger] and [deploy.ray] "
        "(default: $PONDER_CONFIG or ./ponder.toml)",
    )
    parser.add_argument(
        "--address",
        help="Ray cluster to join (auto, or ray://head:10001); default: start Ray here",
    )
    parser.add_argument("--gateway-replicas", type=int, help="fixed gateway replicas")
    parser.add_argument("--host", help="HTTP proxy host (default [deploy.ray] host)")
    parser.add_argument("--port", type=int, help="HTTP proxy port (default [deploy.ray] port)")
    parser.add_argument(
        "--detach", action="store_true", help="return once deployed (needs --address)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the deployments as JSON; start nothing"
    )
    parser.set_defaults(func=_cmd_deploy_ray)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ponder.deploy.ray``: the same as ``ponder deploy ray``."""
    parser = argparse.ArgumentParser(prog="python -m ponder.deploy.ray")
    _add_ray_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return _cmd_deploy_ray(args)
    except PonderError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
