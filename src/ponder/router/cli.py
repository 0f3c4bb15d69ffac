"""``ponder route explain | train | calibrate | retrain | rollback``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["add_route_commands"]


def add_route_commands(sub: Any) -> None:
    route = sub.add_parser("route", help="explain, train and calibrate the router")
    rsub = route.add_subparsers(dest="route_cmd", metavar="explain|train|calibrate|retrain|rollback",
                          required=True)  # fmt: skip

    ex = rsub.add_parser("explain", help="features, class, plan and why, for one prompt")
    ex.add_argument("prompt")
    ex.add_argument("--preset", default=None, help="as if the request named this preset")
    ex.add_argument("--team", default=None, help="as if a key of this team sent it")
    ex.add_argument("--key", default=None, help="as if this API key id sent it")
    ex.add_argument("--stream", action="store_true", help="as an interactive (streamed) request")
    ex.add_argument("--latency", choices=["interactive", "async"], default=None,
                    help="as if the request declared this latency class")  # fmt: skip
    ex.add_argument("--classifier", default=None, help="a model from `ponder route train`")
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(func=_cmd_explain)

    tr = rsub.add_parser("train", help="train the learned router from eval results or the ledger")
    src = tr.add_mutually_exclusive_group(required=True)
    src.add_argument("--from", dest="source", nargs="+",
                     help="results.jsonl file(s) from `ponder eval` (or runs/routing)")  # fmt: skip
    src.add_argument("--from-ledger", dest="ledger", metavar="DB_URL",
                     help="the gateway's ledger (sqlite:///path, postgresql://..., or a "
                     "SQLite file): train on graded requests")  # fmt: skip
    tr.add_argument("--min-rows", type=int, default=20,
                    help="graded direct answers needed to train from the ledger")  # fmt: skip
    tr.add_argument("--holdout", type=float, default=0.2,
                    help="share of ledger rows held out to score the model")  # fmt: skip
    tr.add_argument("--dataset", action="append", default=[],
                    help="dataset spec of the eval, for records without a prompt (repeatable)")  # fmt: skip
    tr.add_argument("--per-level", type=int, default=10)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--direct", default="direct", help="the baseline strategy name")
    tr.add_argument("--out", required=True, help="where to write the model (joblib)")
    tr.set_defaults(func=_cmd_train)

    ca = rsub.add_parser("calibrate", help="thresholds and the compute-optimal policy per bin")
    ca.add_argument("--from", dest="source", required=True, nargs="+")
    ca.add_argument(
        "--write-policy",
        metavar="PATH",
        default=None,
        help="fit the default routing policy on the train split of calibration "
        "records (benchmarks/routing.py replay writes calibration.jsonl) and "
        "write it here (ponder/router/default_policy.json ships it)",
    )
    ca.add_argument(
        "--min-items",
        type=int,
        default=4,
        help="with --write-policy: classes with fewer train items share one plan",
    )
    ca.add_argument("--target-share", type=float, default=0.3,
                    help="share of requests that should escalate / get thinking")  # fmt: skip
    ca.add_argument("--baseline", default=None, help="config key of the difficulty baseline "
                    "(default: the direct configuration)")  # fmt: skip
    ca.add_argument("--bins", type=int, default=3)
    ca.add_argument("--tolerance", type=float, default=0.0,
                    help="accept a cheaper config within this many accuracy points")  # fmt: skip
    ca.add_argument("--classifier", default=None, help="score prompts with this router model")
    ca.add_argument("--dataset", action="append", default=[])
    ca.add_argument("--per-level", type=int, default=10)
    ca.add_argument("--seed", type=int, default=0)
    ca.add_argument("--json", action="store_true")
    ca.set_defaults(func=_cmd_calibrate)
    _add_retrain_commands(rsub)


def _add_retrain_commands(rsub: Any) -> None:
    rt = rsub.add_parser(
        "retrain",
        help="fit a policy from graded ledger rows; promote it only if better on held-out rows",
    )
    rt.add_argument("--from-ledger", dest="ledger", required=True, metavar="DB_URL",
                    help="the gateway's ledger (sqlite:///path, postgresql://..., or a SQLite file)")  # fmt: skip
    rt.add_argument("--dir", default=None,
                    help="where the promoted policy, its history and reports live "
                    "(default: [router.retrain] dir)")  # fmt: skip
    rt.add_argument("--holdout", type=float, default=None, help="share of requests held out")
    rt.add_argument("--min-rows", type=int, default=None,
                    help="graded rows a plan needs in a class to compete")  # fmt: skip
    rt.add_argument("--min-gain", type=float, default=0.0,
                    help="held-out accuracy the candidate must gain (ties: cheaper wins)")  # fmt: skip
    rt.add_argument("--z", type=float, default=1.64,
                    help="standard errors of the held-out difference a gain must exceed")  # fmt: skip
    rt.add_argument("--dry-run", action="store_true", help="compare and report, write nothing")
    rt.add_argument("--json", action="store_true")
    rt.set_defaults(func=_cmd_retrain)

    rb = rsub.add_parser("rollback", help="serve the policy the last promotion replaced")
    rb.add_argument("--dir", default=None, help="default: [router.retrain] dir")
    rb.set_defaults(func=_cmd_rollback)


def _retrain_dir(given: str | None) -> str:
    if given:
        return given
    from ponder.config import load_settings

    configured = load_settings().router.retrain.dir
    if configured is None:
        raise SystemExit(
            "no policy directory: pass --dir, or set [router.retrain] dir in ponder.toml "
            "(the gateway serves the policy promoted there)"
        )
    return configured


def _cmd_retrain(args: argparse.Namespace, out: Console, err: Console) -> int:
    from rich.markup import escape

    from ponder.config import load_settings
    from ponder.errors import PonderError
    from ponder.router.calibrate import embedded_tiers
    from ponder.router.retrain import retrain

    settings = load_settings()
    conf = settings.router.retrain
    directory = _retrain_dir(args.dir)
    tiers = list(settings.tiers) or embedded_tiers(settings.cache_dir)
    try:
        result = retrain(
            _ledger_rows(args.ledger),
            directory,
            tiers=tiers,
            holdout=args.holdout if args.holdout is not None else conf.holdout,
            min_rows=args.min_rows if args.min_rows is not None else conf.min_rows,
            min_gain=args.min_gain,
            z=args.z,
            dry_run=args.dry_run,
        )
    except (ValueError, PonderError) as exc:
        err.print(f"[red]{escape(str(exc))}[/red]", highlight=False, soft_wrap=True)
        return 2
    if args.json:
        out.print_json(json.dumps(result.report | {"paths": result.paths}))
        return 0
    rep = result.report
    out.print(("PROMOTED: " if result.promoted else "kept the serving policy: ") + result.reason,
              highlight=False, soft_wrap=True)  # fmt: skip
    for name in ("serving", "candidate"):
        s = rep[name]
        acc = "n/a" if s["accuracy"] is None else f"{s['accuracy']:.4f}"
        auc = "n/a" if s["auc"] is None else f"{s['auc']:.3f}"
        out.print(f"  {name}: held-out accuracy {acc}, AUC extra compute pays {auc}",
                  highlight=False, soft_wrap=True)  # fmt: skip
    for key, path in result.paths.items():
        out.print(f"  {key}: {path}", highlight=False, soft_wrap=True)
    return 0


def _cmd_rollback(args: argparse.Namespace, out: Console, err: Console) -> int:
    from ponder.router.retrain import rollback

    try:
        now = rollback(_retrain_dir(args.dir))
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]", highlight=False, soft_wrap=True)
        return 2
    out.print(f"rolled back: serving {now}", highlight=False, soft_wrap=True)
    return 0


def _load(paths: Sequence[str]) -> list[dict[str, Any]]:
    from ponder.eval.runner import ResultStore

    records: list[dict[str, Any]] = []
    for p in paths:
        path = Path(p)
        path = path if path.suffix == ".jsonl" else path / "results.jsonl"
        if not path.exists():
            raise SystemExit(f"no results at {path}; run `ponder eval ... --out <dir>` first")
        records += ResultStore(path).load()
    if not records:
        raise SystemExit(f"no records in {', '.join(paths)}")
    return records


def _prompts(args: argparse.Namespace) -> dict[str, str]:
    if not args.dataset:
        return {}
    from ponder.eval.datasets import load_dataset

    out = {}
    for spec in args.dataset:
        for item in load_dataset(spec, seed=args.seed, per_level=args.per_level):
            out[item.id] = item.problem().prompt
    return out


def _router(classifier: str | None) -> Any:
    from ponder.config import load_settings
    from ponder.router.calibrate import embedded_tiers
    from ponder.router.policy import Router

    settings = load_settings()
    rs = settings.router
    if classifier:
        rs = rs.model_copy(update={"classifier": classifier})
    # No [tiers]: the embedded models a gateway would serve (the 1.5B as "strong").
    tiers = list(settings.tiers) or embedded_tiers(settings.cache_dir)
    return Router(rs, tiers=tiers or None)


def suggest_buckets(
    records: Sequence[dict[str, Any]], prompts: dict[str, str], direct: str = "direct"
) -> dict[str, dict[str, Any]]:
    """Per inferred task class: ``use`` / ``maybe`` / ``avoid`` from the recorded outcomes.

    ``avoid`` where extra compute almost never paid off: either direct was already right
    (trivial) or nothing was (beyond the model's reach); ``use`` where it paid off for
    at least half of the items; ``maybe`` (let the scorer decide) in between.
    """
    from ponder.router.classifier import infer_class
    from ponder.router.features import extract

    by_item: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_item.setdefault(str(r["item_id"]), []).append(r)
    stats: dict[str, list[tuple[bool, bool]]] = {}
    for item, rows in by_item.items():
        if item not in prompts:
            continue
        base = [bool(r["correct"]) for r in rows if r.get("strategy") == direct]
        heavy = [bool(r["correct"]) for r in rows if r.get("strategy") != direct]
        if not base or not heavy:
            continue
        text = prompts[item]
        stats.setdefault(infer_class(text, extract(text)), []).append((any(base), any(heavy)))
    out: dict[str, dict[str, Any]] = {}
    for name, outcomes in sorted(stats.items()):
        n = len(outcomes)
        paid = sum(1 for d, h in outcomes if h and not d) / n
        out[name] = {
            "items": n,
            "direct_right": sum(1 for d, _ in outcomes if d) / n,
            "paid_off": paid,
            "beyond_reach": sum(1 for d, h in outcomes if not d and not h) / n,
            "bucket": "use" if paid >= 0.5 else ("avoid" if paid < 0.05 else "maybe"),
        }
    return out


def _cmd_explain(args: argparse.Namespace, out: Console, err: Console) -> int:
    from ponder.router.policy import PolicyError

    try:
        router = _router(args.classifier)
        caller = argparse.Namespace(key_id=args.key, team=args.team)
        plan = router.plan_text(
            args.prompt,
            caller=caller,
            preset=args.preset,
            stream=args.stream,
            latency=args.latency,
        )
    except (PolicyError, FileNotFoundError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        return 2
    if args.json:
        out.print_json(json.dumps(plan.as_dict()))
        return 0
    feats = Table(title="features", show_header=False)
    for k, v in plan.features.as_dict().items():
        feats.add_row(k, str(v))
    out.print(feats)
    out.print(
        f"[bold]class[/bold] {plan.task_class} ({plan.bucket})   "
        f"[bold]plan[/bold] {plan.strategy} {plan.params or ''} thinking_budget={plan.thinking_budget} "
        f"tier={plan.tier or 'default'} latency={plan.latency} max_spend={plan.max_spend}"
    )
    if plan.deferred is not None:
        d = plan.deferred
        out.print(
            f"[bold]continues async[/bold] {d['strategy']} {d['params'] or ''} "
            f"thinking_budget={d['thinking_budget']} (as a job; its id is in the response)"
        )
    out.print(
        f"[bold]{plan.scorer} score[/bold] {plan.score:.3f}   planned in {plan.elapsed_us:.0f} µs"
    )
    out.print("[bold]why[/bold]")
    for reason in plan.reasons:
        out.print(f"  - {reason}")
    return 0


def _ledger_rows(url: str) -> list[Any]:
    """Every ledger row of the store at ``url`` (a URL, or a SQLite file that must exist)."""
    from ponder.errors import InvalidRequest
    from ponder.ledger import Store

    path: Path | None = None
    if "://" not in url:
        path = Path(url).expanduser()
        url = f"sqlite:///{path.resolve()}"
    elif url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///")).expanduser()
    if path is not None and not path.is_file():
        # Opening it would create an empty database.
        raise InvalidRequest(
            f"no ledger at {path}; give the gateway's database (ledger.url in ponder.toml, "
            "or the --db of `ponder serve`)"
        )
    store = Store(url)
    try:
        return store.rows()
    finally:
        store.close()


def _train_from_ledger(args: argparse.Namespace, out: Console, err: Console) -> int:
    from rich.markup import escape

    from ponder.errors import PonderError
    from ponder.router.classifier import NotEnoughData, train_from_ledger

    try:
        rows = _ledger_rows(args.ledger)
        result = train_from_ledger(rows, min_rows=args.min_rows, holdout=args.holdout)
    except (NotEnoughData, ValueError, PonderError) as exc:
        err.print(f"[red]{escape(str(exc))}[/red]", highlight=False, soft_wrap=True)
        return 2
    path = result.classifier.save(args.out)
    out.print(
        f"trained on {result.direct_rows + result.compute_rows} graded requests "
        f"({result.direct_rows} direct, {result.compute_rows} with extra compute); wrote {path}",
        highlight=False,
        soft_wrap=True,
    )
    for name, score in result.heldout.items():
        if "auc" in score:
            auc = "n/a (one outcome)" if score["auc"] is None else f"{score['auc']:.3f}"
            out.print(
                f"held out ({name}, {score['rows']} rows): P(correct) accuracy "
                f"{score['accuracy']:.3f}, ROC AUC {auc}",
                highlight=False,
                soft_wrap=True,
            )
        else:
            out.print(f"held out ({name}): {score['note']}", highlight=False, soft_wrap=True)
    out.print(f"score = {result.classifier.meta['label']}", highlight=False, soft_wrap=True)
    for note in result.notes:
        out.print(f"note: {note}", highlight=False, soft_wrap=True)
    out.print(
        f'use it: \\[router] classifier = "{path}" in ponder.toml', highlight=False, soft_wrap=True
    )
    return 0


def _cmd_train(args: argparse.Namespace, out: Console, err: Console) -> int:
    from ponder.router.classifier import LearnedClassifier, training_examples

    if args.ledger is not None:
        return _train_from_ledger(args, out, err)
    records = _load(args.source)
    examples = training_examples(records, prompts=_prompts(args), direct=args.direct)
    if not examples:
        err.print(
            "[red]no training examples: each item needs a direct record, a compute-heavy "
            "record and its prompt (records carry 'prompt', or pass --dataset SPEC)[/red]"
        )
        return 2
    try:
        model = LearnedClassifier.fit(examples)
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        return 2
    path = model.save(args.out)
    pos = model.meta["positives"]
    out.print(
        f"trained on {len(examples)} items ({pos} where extra compute paid off); wrote {path}\n"
        f'use it: \\[router] classifier = "{path}" in ponder.toml'
    )
    return 0


def _write_policy(args: argparse.Namespace, out: Console, err: Console) -> int:
    from ponder.router.calibrate import fit_policy

    records = _load(args.source)
    missing = [k for k in ("task_class", "plan", "split") if records and k not in records[0]]
    if not records or missing:
        err.print(
            f"[red]--write-policy needs calibration records (fields task_class, plan, split, "
            f"correct, cost_usd, generated_tokens); missing {missing or 'records'}. "
            "benchmarks/routing.py replay writes them to <dir>/calibration.jsonl[/red]"
        )
        return 2
    try:
        policy = fit_policy(records, min_items=args.min_items, source=" ".join(args.source))
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        return 2
    Path(args.write_policy).write_text(json.dumps(policy, indent=1) + "\n")
    summary = {
        form: {c: e["plan"] for c, e in body["classes"].items()}
        | {"(default)": (body["default"] or {}).get("plan")}
        for form, body in policy["forms"].items()
    }
    if args.json:
        out.print_json(json.dumps({"written": args.write_policy, "plans": summary}))
    else:
        out.print(f"wrote {args.write_policy}")
        for form, plans in summary.items():
            out.print(f"  {form}: " + ", ".join(f"{c} -> {p}" for c, p in plans.items()))
    return 0


def _cmd_calibrate(args: argparse.Namespace, out: Console, err: Console) -> int:
    from ponder.eval.metrics import compute_optimal, difficulty_bins
    from ponder.router.policy import select_threshold

    if args.write_policy:
        return _write_policy(args, out, err)
    records = _load(args.source)
    baseline = args.baseline or next(
        (r["config_key"] for r in records if r["strategy"] == "direct"), None
    )
    if baseline is None:
        err.print("[red]no direct configuration to estimate difficulty from; pass --baseline[/red]")
        return 2
    bins = difficulty_bins(records, baseline, bins=args.bins)
    # compute_optimal prefers a record's own difficulty; calibrate on the estimated bins.
    binned = [{**r, "difficulty": bins.get(r["item_id"])} for r in records if r["item_id"] in bins]
    optimal = compute_optimal(binned, bins, tolerance=args.tolerance)
    result: dict[str, Any] = {
        "baseline": baseline,
        "items": len(bins),
        "compute_optimal": {str(k): v for k, v in optimal.items()},
    }
    confidences = [float(r["confidence"]) for r in records if r.get("confidence") is not None]
    if confidences:
        result["cascade_threshold"] = select_threshold(confidences, args.target_share)
    prompts = _prompts(args)
    for r in records:
        if r.get("prompt"):
            prompts.setdefault(r["item_id"], r["prompt"])
    if prompts:
        from ponder.router.features import extract

        router = _router(args.classifier)
        scores = [router.scorer.score(t, extract(t)) for t in prompts.values()]
        # Think when score >= threshold: the (1 - share) quantile of "not thinking".
        result["router_threshold"] = 1.0 - select_threshold(
            [1.0 - s for s in scores], args.target_share
        )
        result["router_scorer"] = router.scorer.name
        result["buckets"] = suggest_buckets(records, prompts)
    if args.json:
        out.print_json(json.dumps(result))
        return 0
    table = Table(title=f"compute-optimal configuration per difficulty bin (baseline {baseline})")
    for col in ("bin", "config", "accuracy", "best accuracy", "tokens/item"):
        table.add_column(col, overflow="fold")
    for level, row in optimal.items():
        table.add_row(str(level), row["config"], f"{row['accuracy']:.2f}",
                      f"{row['best_accuracy']:.2f}", f"{row['tokens']:.0f}")  # fmt: skip
    out.print(table)
    out.print(f"target escalation share {args.target_share:.0%}:")
    if "cascade_threshold" in result:
        out.print(f"  cascade: threshold = {result['cascade_threshold']:.4f}  (strategy param)")
    if "router_threshold" in result:
        out.print(
            f"  \\[router] threshold = {result['router_threshold']:.4f}  "
            f"({result['router_scorer']} score; in ponder.toml)"
        )
    if result.get("buckets"):
        out.print("suggested buckets per task class (from where extra compute paid off):")
        for name, row in result["buckets"].items():
            out.print(
                f"  {name}: {row['bucket']}  ({row['items']} items, direct right "
                f"{row['direct_right']:.0%}, extra compute paid off {row['paid_off']:.0%}, "
                f"nothing right {row['beyond_reach']:.0%})"
            )
    if "cascade_threshold" not in result and "router_threshold" not in result:
        out.print("  (no confidences or prompts in the records: pass --dataset to score prompts)")
    return 0
