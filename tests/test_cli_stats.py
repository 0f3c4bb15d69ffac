"""`ponder stats` on a real SQLite ledger: success, cost per correct answer, escalation
share over time and what routing saved against the shadowed counterfactual plans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ponder import cli
from ponder.ledger import LedgerRow, Store

HOUR = 3600.0 * 472_000  # an hour boundary, some time in 2023


@pytest.fixture
def db(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "250")
    url = f"sqlite:///{tmp_path / 'ponder.db'}"
    monkeypatch.setenv("PONDER_LEDGER__URL", url)
    config = tmp_path / "ponder.toml"
    config.write_text('[router.shadow]\nrate = 0.5\nplan = ["strong", "search"]\n')
    monkeypatch.setenv("PONDER_CONFIG", str(config))
    return url


def fill(store: Store) -> None:
    """math: 12 served (4 thought, in the second hour), 8 with an always-strong shadow at
    exactly twice the cost; code: 6 served, 2 shadowed (too few)."""
    rows = []
    for i in range(12):
        second_hour = i >= 8
        rows.append(
            LedgerRow(
                id=f"m{i}", task_class="math", strategy="cot" if second_hour else "direct",
                plan={"params": {}}, status="ok", http_status=200, tier="small",
                cost_micro=1000, verdict="correct" if i % 2 else "incorrect",
                at=HOUR + (3600 + i if second_hour else i), features={"v": 1},
            )
        )  # fmt: skip
        if i < 8:
            rows.append(shadow_of(rows[-1], "strong", 2000, "correct"))
    for i in range(6):
        rows.append(
            LedgerRow(
                id=f"c{i}", task_class="code", strategy="direct", plan={"params": {}},
                status="ok", http_status=200, tier="small", cost_micro=500, at=HOUR + 10 + i,
            )
        )  # fmt: skip
        if i < 2:
            rows.append(shadow_of(rows[-1], "search", 4000))
    for row in rows:
        store.insert_row(row)


def shadow_of(original: LedgerRow, plan: str, cost: int, verdict: str | None = None) -> LedgerRow:
    strategy, tier = ("direct", "strong") if plan == "strong" else ("self_consistency", "small")
    return LedgerRow(
        id=f"{original.id}-shadow", task_class=original.task_class, strategy=strategy,
        plan={"params": {}}, status="ok", http_status=200, tier=tier, cost_micro=cost,
        verdict=verdict, at=original.at + 0.5, team="ponder-shadow",
        features={"v": 1, "shadow_of": original.id, "shadow_plan": plan},
    )  # fmt: skip


def test_stats_json_has_escalation_and_savings_per_class(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(Store(db))
    assert cli.main(["stats", "--json", "--bucket", "1h"]) == 0
    classes = {c["task_class"]: c for c in json.loads(capsys.readouterr().out)}
    math, code = classes["math"], classes["code"]
    # Shadow rows are not served traffic.
    assert (math["requests"], code["requests"]) == (12, 6)
    assert math["cost_usd"] == pytest.approx(0.012)
    assert math["cost_per_correct_usd"] == pytest.approx(0.012 / 6)
    # Escalation: the 4 cot answers, all in the second hour.
    assert math["escalated"] == 4 and math["escalation_share"] == pytest.approx(4 / 12)
    assert math["escalation"]["bucket_s"] == 3600
    assert [(b["start"], b["requests"], b["share"]) for b in math["escalation"]["buckets"]] == [
        (HOUR, 8, 0.0),
        (HOUR + 3600, 4, 1.0),
    ]
    savings = {s["plan"]: s for s in math["savings"]}
    # Both configured plans are reported; only "strong" was shadowed for math.
    assert set(savings) == {"strong", "search"}
    strong = savings["strong"]
    assert strong["pairs"] == 8 and strong["note"] is None
    cf = strong["counterfactual_usd"]
    assert cf["value"] == pytest.approx(0.024)
    assert cf["low"] == pytest.approx(0.024) and cf["high"] == pytest.approx(0.024)
    assert strong["savings_usd"]["value"] == pytest.approx(0.012)
    assert strong["savings_share"]["value"] == pytest.approx(0.5)
    # Always-strong was right on all 8 graded pairs, the served plan on 4 of them.
    assert strong["graded_pairs"] == 8
    assert strong["quality_diff"]["value"] == pytest.approx(0.5)
    assert savings["search"]["note"] == "not enough shadow pairs (0 < 5)"
    code_search = {s["plan"]: s for s in code["savings"]}["search"]
    assert code_search["pairs"] == 2 and code_search["counterfactual_usd"] is None
    assert code_search["note"] == "not enough shadow pairs (2 < 5)"
    # --min-pairs lowers the bar.
    assert cli.main(["stats", "--json", "--min-pairs", "2"]) == 0
    classes = {c["task_class"]: c for c in json.loads(capsys.readouterr().out)}
    code_search = {s["plan"]: s for s in classes["code"]["savings"]}["search"]
    assert code_search["counterfactual_usd"]["value"] == pytest.approx(8 * 0.003)


def test_stats_table_shows_what_routing_saved(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    fill(Store(db))
    assert cli.main(["stats", "--bucket", "1h"]) == 0
    out = capsys.readouterr().out
    assert "requests by class (18 rows, 10 shadow runs)" in out
    assert "what routing saved" in out
    line = next(x for x in out.splitlines() if "math" in x and "strong" in x)
    assert "0.024000 [0.024000, 0.024000]" in line  # always-strong spend, its interval
    assert "50.0% [50.0%, 50.0%]" in line  # the share saved
    assert "+50.0 pts" in line and "(8 graded)" in line
    assert "not enough shadow pairs (2 < 5)" in out
    # Across classes only math has enough pairs: the total is its estimate, and the
    # other classes' spend is shown as not covered.
    assert "across classes" in out
    total = next(x for x in out.splitlines() if x.lstrip("│ ").startswith("strong") and "math" in x)
    assert "0.024000 [0.024000, 0.024000]" in total
    assert "escalation share over time (buckets of 1h" in out
    assert "100% (4/4)" in out and "0% (0/8)" in out


def test_stats_without_shadows_says_how_to_get_an_estimate(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PONDER_CONFIG", str(tmp_path / "none.toml"))
    Store(db).insert_row(
        LedgerRow(id="r", task_class="chat", strategy="direct", plan={}, status="ok",
                  http_status=200, cost_micro=10)
    )  # fmt: skip
    assert cli.main(["stats"]) == 0
    out = capsys.readouterr().out
    assert "chat" in out and "set [router.shadow] rate" in out
    assert cli.main(["stats", "--bucket", "soon"]) == 2
    assert "not a duration" in capsys.readouterr().err


def test_piped_stats_keep_whole_columns(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # No COLUMNS and no terminal (a pipe, a log file): the tables are not cut to 80.
    monkeypatch.delenv("COLUMNS")
    fill(Store(db))
    assert cli.main(["stats", "--bucket", "1h"]) == 0
    out = capsys.readouterr().out
    assert "USD/correct" in out and "escalated" in out
    assert "0.024000 [0.024000, 0.024000]" in out
