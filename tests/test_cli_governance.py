"""`ponder keys`, `ponder quota`, `ponder stats` against a throwaway SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ponder import cli
from ponder.ledger import LedgerRow, Store


@pytest.fixture
def db(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    url = f"sqlite:///{tmp_path / 'ponder.db'}"
    monkeypatch.setenv("PONDER_LEDGER__URL", url)
    return url


def test_keys_create_list_revoke(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        cli.main(
            ["keys", "create", "--user", "alice", "--team", "ml", "--scope", "admin", "--json"]
        )
        == 0
    )
    created = json.loads(capsys.readouterr().out)
    secret = created["key"]
    store = Store(db)
    assert store.lookup_key(secret) is not None

    assert cli.main(["keys", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [k["id"] for k in listed] == [created["id"]]
    assert secret not in json.dumps(listed)

    assert cli.main(["keys", "list"]) == 0
    table = capsys.readouterr().out
    assert created["id"] in table and secret not in table

    assert cli.main(["keys", "revoke", created["id"]]) == 0
    assert store.lookup_key(secret) is None
    assert cli.main(["keys", "revoke", created["id"]]) == 2
    assert "no active key" in capsys.readouterr().err


def test_quota_set_and_show(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        cli.main(
            ["quota", "set", "--team", "ml", "--metric", "cost", "--window", "day", "--usd", "5"]
        )
        == 0
    )
    assert "5000000 micro-USD per day" in capsys.readouterr().out
    assert (
        cli.main(
            [
                "quota",
                "set",
                "--user",
                "*",
                "--metric",
                "tokens",
                "--window",
                "minute",
                "--limit",
                "1000",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert cli.main(["quota", "show", "--team", "ml", "--user", "bob"]) == 0
    out = capsys.readouterr().out
    assert "5000000" in out and "1000" in out and "bob" in out

    # Exactly one subject, and a limit, or a message that says what to give.
    assert cli.main(["quota", "set", "--metric", "tokens", "--window", "day", "--limit", "1"]) == 2
    assert "exactly one of --key, --user" in capsys.readouterr().err
    assert cli.main(["quota", "set", "--team", "ml", "--metric", "tokens", "--window", "day"]) == 2
    assert "--limit N" in capsys.readouterr().err
    assert (
        cli.main(
            ["quota", "set", "--team", "ml", "--metric", "cost", "--window", "day", "--remove"]
        )
        == 0
    )
    assert {lim.metric for lim in Store(db).limits()} == {"tokens"}


def test_stats_per_class(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(db)
    for i, (cls, ms, status, verdict) in enumerate(
        [
            ("math", 10.0, "ok", "correct"),
            ("math", 30.0, "ok", "wrong"),
            ("math", 20.0, "error", None),
            ("code", 5.0, "ok", None),
        ]
    ):
        store.insert_row(
            LedgerRow(
                id=f"r{i}",
                task_class=cls,
                strategy="cot",
                plan={},
                status=status,
                http_status=200,
                latency_ms=ms,
                reasoning_tokens=10,
                output_tokens=2,
                input_tokens=3,
                cost_micro=1_000,
                verdict=verdict,
            )
        )
    assert cli.main(["stats", "--json"]) == 0
    stats = {s["task_class"]: s for s in json.loads(capsys.readouterr().out)}
    math = stats["math"]
    assert math["requests"] == 3 and math["success_rate"] == pytest.approx(2 / 3)
    assert (math["p50_latency_ms"], math["p95_latency_ms"]) == (20.0, 30.0)
    assert math["reasoning_tokens"] == 30 and math["total_tokens"] == 45
    assert math["cost_usd"] == pytest.approx(0.003)
    assert math["cost_per_correct_usd"] == pytest.approx(0.003)
    assert stats["code"]["cost_per_correct_usd"] is None
    assert cli.main(["stats"]) == 0
    assert "math" in capsys.readouterr().out


def test_stats_on_an_empty_ledger(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["stats"]) == 0
    assert "no requests yet" in capsys.readouterr().out
