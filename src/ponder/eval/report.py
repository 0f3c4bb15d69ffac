"""Reports from eval records: Markdown + HTML with matplotlib plots."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ponder.eval.metrics import (
    ConfigSummary,
    compute_optimal,
    difficulty_bins,
    pareto_frontier,
    summarize,
)

__all__ = ["write_report"]


def _label(s: ConfigSummary, *, curve: bool = False) -> str:
    """A configuration's name; ``curve=True``: the scaling curve it belongs to (no N, budget)."""
    variant = f" ({s.variant})" if s.variant else ""
    extra = f" n={s.n}" if s.n > 1 and not curve else ""
    budget = f" b={s.budget}" if s.budget and not curve else ""
    return f"{s.strategy}{variant}{extra}{budget} [{s.model}]"


def _plots(summaries: Sequence[ConfigSummary], out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, str] = {}
    by_strategy: dict[str, list[ConfigSummary]] = {}
    for s in summaries:
        by_strategy.setdefault(_label(s, curve=True), []).append(s)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in sorted(by_strategy.items()):
        rows = sorted(rows, key=lambda r: r.total_tokens)
        ax.errorbar(
            [r.total_tokens for r in rows],
            [100 * r.accuracy for r in rows],
            yerr=[
                [100 * (r.accuracy - r.ci_low) for r in rows],
                [100 * (r.ci_high - r.accuracy) for r in rows],
            ],
            marker="o",
            capsize=3,
            label=name,
        )
    front = pareto_frontier(summaries)
    ax.plot(
        [f.total_tokens for f in front],
        [100 * f.accuracy for f in front],
        "k--",
        linewidth=1,
        label="Pareto frontier",
    )
    ax.set_xscale("log")
    ax.set_xlabel("tokens per item (input + reasoning + output, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy vs. compute")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=120)
    plt.close(fig)
    files["scaling"] = "scaling.png"

    levels = sorted({lv for s in summaries for lv in s.by_difficulty})
    if levels:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        width = 0.8 / max(len(summaries), 1)
        for i, s in enumerate(summaries):
            ax.bar(
                [lv + i * width - 0.4 + width / 2 for lv in levels],
                [100 * s.by_difficulty.get(lv, 0.0) for lv in levels],
                width=width,
                label=_label(s),
            )
        ax.set_xticks(levels)
        ax.set_xlabel("difficulty level (1 = easiest)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("Accuracy by difficulty")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "difficulty.png", dpi=120)
        plt.close(fig)
        files["difficulty"] = "difficulty.png"
    return files


def _table(summaries: Sequence[ConfigSummary]) -> list[list[str]]:
    rows = [
        [
            "config", "items", "accuracy (95% CI)", "pass@k", "input", "reasoning",
            "output", "p50 s", "p95 s", "cost per correct",
        ]
    ]  # fmt: skip
    for s in summaries:
        pak = ", ".join(f"@{k} {100 * v:.1f}" for k, v in s.pass_at_k.items())
        rows.append(
            [
                _label(s),
                str(s.items),
                f"{100 * s.accuracy:.1f}% ({100 * s.ci_low:.0f}-{100 * s.ci_high:.0f})",
                pak or "-",
                f"{s.input_tokens:.0f}",
                f"{s.reasoning_tokens:.0f}",
                f"{s.output_tokens:.0f}",
                f"{s.latency_p50:.2f}",
                f"{s.latency_p95:.2f}",
                f"${s.cost_per_correct:.6f}" if s.cost_per_correct is not None else "-",
            ]
        )
    return rows


def write_report(
    records: list[dict[str, Any]],
    out_dir: str | Path,
    *,
    title: str = "ponder eval",
    prices: dict[str, dict[str, float]] | None = None,
    baseline: str | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.html``, ``summary.json`` and PNG plots into ``out_dir``."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not records:
        raise ValueError("no records to report: run `ponder eval` first")
    # Difficulty: given per item, else estimated from the baseline's pass rate.
    estimated: dict[str, int] = {}
    if any(r.get("difficulty") is None for r in records):
        base = baseline or min(
            {r["config_key"] for r in records},
            key=lambda k: sum(sum(r["usage"].values()) for r in records if r["config_key"] == k),
        )
        estimated = difficulty_bins(records, base)
    summaries = summarize(records, prices=prices, difficulty=estimated)
    plots = _plots(summaries, out)
    optimal = compute_optimal(records, estimated)
    table = _table(summaries)

    md = [
        f"# {title}",
        "",
        f"{len(records)} results, {len({r['item_id'] for r in records})} items.",
        "",
    ]
    md.append("| " + " | ".join(table[0]) + " |")
    md.append("|" + "---|" * len(table[0]))
    md += ["| " + " | ".join(row) + " |" for row in table[1:]]
    md += ["", "## Compute-optimal configuration per difficulty bin", ""]
    md += [
        "| bin | config | accuracy | tokens per item | best accuracy in bin |",
        "|---|---|---|---|---|",
    ]
    for level, o in optimal.items():
        md.append(
            f"| {level} | {o['config']} | {100 * o['accuracy']:.1f}% | {o['tokens']:.0f} | {100 * o['best_accuracy']:.1f}% |"
        )
    md += ["", "## Pareto frontier (accuracy vs. tokens)", ""]
    md += [
        f"- {_label(s)}: {100 * s.accuracy:.1f}% at {s.total_tokens:.0f} tokens"
        for s in pareto_frontier(summaries)
    ]
    md += [""] + [f"![{name}]({path})" for name, path in plots.items()]
    (out / "report.md").write_text("\n".join(md) + "\n")

    cells = "".join(
        "<tr>"
        + "".join(
            f"<{'th' if i == 0 else 'td'}>{html.escape(c)}</{'th' if i == 0 else 'td'}>"
            for c in row
        )
        + "</tr>"
        for i, row in enumerate(table)
    )
    imgs = "".join(f'<img src="{p}" alt="{n}" style="max-width:48%">' for n, p in plots.items())
    (out / "report.html").write_text(
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 8px;border-bottom:1px solid #ddd}}</style>"
        f"<h1>{html.escape(title)}</h1><table>{cells}</table>{imgs}"
    )
    (out / "summary.json").write_text(
        json.dumps(
            {"summaries": [s.as_dict() for s in summaries], "compute_optimal": optimal}, indent=2
        )
    )
    files = {
        "markdown": out / "report.md",
        "html": out / "report.html",
        "summary": out / "summary.json",
    }
    files.update({name: out / path for name, path in plots.items()})
    return files
