"""The dashboard's eval panel: scaling curves and the Pareto frontier of the newest eval run."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import fields
from pathlib import Path
from typing import Any

__all__ = ["eval_stamp", "latest_eval"]


def _candidates(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found: list[Path] = []
    for pattern in ("results.jsonl", "*/results.jsonl", "*/*/results.jsonl"):
        found += root.glob(pattern)
    if not found:
        for pattern in ("summary.json", "*/summary.json", "*/*/summary.json"):
            found += root.glob(pattern)
    return found


def _summaries(path: Path) -> tuple[list[Any], int]:
    from ponder.eval.metrics import ConfigSummary, summarize
    from ponder.eval.runner import ResultStore

    if path.suffix == ".jsonl":
        records = ResultStore(path).load()
        return summarize(records), len(records)
    data = json.loads(path.read_text())
    names = {f.name for f in fields(ConfigSummary)}
    summaries = [
        ConfigSummary(**{k: v for k, v in d.items() if k in names}) for d in data["summaries"]
    ]
    return summaries, sum(x.items for x in summaries)


def eval_stamp(root: Path | None) -> list[tuple[str, int, int]] | None:
    """What the eval answer depends on: each candidate file's path, mtime and size."""
    if root is None:
        return []
    try:
        root = Path(root).expanduser()
        found = _candidates(root) if root.exists() else []
        return [(str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in found]
    except OSError:
        return None  # a file changing under us: do not cache


def latest_eval(root: Path | None) -> dict[str, Any]:
    """Scaling curves and the Pareto frontier of the newest eval run under ``root``.

    ``root`` is a run directory, a directory of runs, or a ``results.jsonl``; a
    report's ``summary.json`` is used where no ``results.jsonl`` is found.
    """
    if root is None:
        return {
            "configured": False,
            "message": "no eval results configured: set server.eval_results_dir "
            "(PONDER_SERVER__EVAL_RESULTS_DIR) to the directory `ponder eval --out` writes",
        }
    root = Path(root).expanduser()
    found = _candidates(root) if root.exists() else []
    if not found:
        return {
            "configured": True,
            "source": str(root),
            "message": f"no results.jsonl or summary.json under {root}; run `ponder eval --out "
            f"{root}/RUN` first",
        }
    try:
        path = max(found, key=lambda p: p.stat().st_mtime)
    except OSError as exc:
        return {"configured": True, "source": str(root), "message": f"cannot read {root}: {exc}"}
    from ponder.eval.metrics import pareto_frontier

    try:
        summaries, records = _summaries(path)
        modified = path.stat().st_mtime
    except (OSError, KeyError, TypeError, ValueError) as exc:
        return {
            "configured": True,
            "source": str(path),
            "message": f"{path} is not an eval results file ({type(exc).__name__}: {exc}); "
            "point server.eval_results_dir at a `ponder eval --out` directory",
        }

    def point(x: Any) -> dict[str, Any]:
        return {
            "config": x.config,
            "strategy": x.strategy,
            "model": x.model,
            "n": x.n,
            "budget": x.budget,
            "items": x.items,
            "accuracy": x.accuracy,
            "ci_low": x.ci_low,
            "ci_high": x.ci_high,
            "tokens": x.total_tokens,
            "reasoning_tokens": x.reasoning_tokens,
        }

    curves: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for x in summaries:
        curves[f"{x.strategy} [{x.model}]"].append(point(x))
    return {
        "configured": True,
        "source": str(path),
        "modified_at": modified,
        "records": records,
        "curves": [
            {"name": name, "points": sorted(points, key=lambda p: p["tokens"])}
            for name, points in sorted(curves.items())
        ],
        "frontier": [point(x) for x in pareto_frontier(summaries)],
    }
