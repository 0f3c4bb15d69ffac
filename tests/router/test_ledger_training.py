"""``ponder route train --from-ledger``: the learned router retrained from gateway logs.

A SQLite ledger is filled through the gateway (fake backend, router on) and graded
with ``POST /v1/feedback``; the model trained from it must score "extra compute pays
off" high only where direct answers fail and compute answers succeed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from ponder.backends.fake import FakeBackend, Reply
from ponder.cli import main
from ponder.config import RouterSettings, ServerSettings
from ponder.ledger import Store
from ponder.ledger import schema as s
from ponder.router.classifier import LearnedClassifier, NotEnoughData, train_from_ledger
from ponder.router.features import NoveltyTracker, extract
from ponder.router.policy import Router
from ponder.server.app import create_app
from ponder.server.gateway import Gateway
from ponder.strategies import available_strategies


def trivial(i: int) -> str:
    return f"What is {i + 2}+{3 * i + 1}?"


def needs_thinking(i: int) -> str:
    return (
        f"A shop sells {i + 4} boxes with {i + 6} pens each. Then it sells {i + 2} more boxes, "
        f"after that it returns {i + 1} pens per box. How many pens were sold in total?"
    )


def beyond_reach(i: int) -> str:
    steps = " ".join(
        f"{k}. Then multiply the result by {k + i + 3}, add {2 * k + 7}, and take the "
        f"remainder modulo {k + 11}."
        for k in range(1, 9)
    )
    return f"Start from {i + 97}. {steps} After each step, if it is even halve it. What is left?"


# (prompt, is direct right?, is extra compute right?)
GROUPS = [(trivial, True, True), (needs_thinking, False, True), (beyond_reach, False, False)]


@pytest.fixture(autouse=True)
def no_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PONDER_CONFIG", str(tmp_path / "none.toml"))


def gateway_for(store: Store, *, record_prompts: bool = False) -> httpx.AsyncClient:
    backend = FakeBackend([Reply("The answer is 12", reasoning="step by step")])
    router = Router(
        RouterSettings(record_prompts=record_prompts), strategies=available_strategies()
    )
    gateway = Gateway(backend, ServerSettings(), store=store, router=router)
    app = create_app(backend, gateway=gateway)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def ask_and_grade(client: httpx.AsyncClient, prompt: str, effort: str, correct: bool) -> str:
    r = await client.post(
        "/v1/chat/completions",
        json={
            "model": "m",
            "messages": [{"role": "user", "content": prompt}],
            "reasoning_effort": effort,
        },
    )
    assert r.status_code == 200, r.text
    request_id = r.json()["id"]
    graded = await client.post(
        "/v1/feedback",
        json={"request_id": request_id, "verdict": "correct" if correct else "incorrect"},
    )
    assert graded.status_code == 200, graded.text
    return str(request_id)


async def fill(store: Store, per_group: int = 10, **kwargs: Any) -> None:
    """Prompts of each kind, some answered directly (reasoning_effort none), others with
    thinking (high), each graded as that kind's answers are."""
    async with gateway_for(store, **kwargs) as client:
        for i in range(per_group):
            for make, direct_ok, compute_ok in GROUPS:
                await ask_and_grade(client, make(i), "none", direct_ok)
                await ask_and_grade(client, make(i + 100), "high", compute_ok)
        # Ungraded traffic is left out of training.
        await client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hello there"}]},
        )


def score(model: LearnedClassifier, text: str) -> float:
    """The model's score of ``text`` with the features the gateway's router would compute
    after the traffic of :func:`fill` (novelty is measured against recent requests)."""
    seen = NoveltyTracker()
    for i in range(10):
        for make, _, _ in GROUPS:
            seen.score(make(i))
    return model.score(text, extract(text, novelty=seen))


async def test_the_gateway_records_features_but_not_the_prompt(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'ledger.db'}")
    await fill(store, per_group=1)
    rows = store.rows()
    assert len(rows) == 7
    for row in rows:
        assert row.features is not None and row.features["features"]["words"] > 0
        assert "text" not in row.features
    prompt = needs_thinking(100)  # the one answered with thinking
    (row,) = [r for r in rows if r.strategy == "cot" and r.features["features"]["numbers"] == 4]
    assert prompt not in json.dumps(row.features)
    assert row.features["features"] == extract(prompt).as_dict() | {
        "novelty": row.features["features"]["novelty"]
    }


async def test_record_prompts_keeps_the_text_when_the_operator_opts_in(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'ledger.db'}")
    await fill(store, per_group=1, record_prompts=True)
    texts = {r.features["text"] for r in store.rows() if r.features}
    assert needs_thinking(0) in texts and trivial(0) in texts


async def test_train_from_ledger_learns_where_extra_compute_pays_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "ledger.db"
    store = Store(f"sqlite:///{db}")
    await fill(store, per_group=10)
    store.close()
    out = tmp_path / "router.joblib"
    assert main(["route", "train", "--from-ledger", f"sqlite:///{db}", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "trained on 60 graded requests (30 direct, 30 with extra compute)" in printed
    assert "held out (direct" in printed and "held out (compute" in printed
    assert "P(correct with extra compute) - P(correct direct)" in printed
    assert "features only" in printed

    model = LearnedClassifier.load(out)
    assert model.meta["kind"] == "ledger" and model.meta["uses_text"] is False
    # Unseen prompts of each kind: only the middle one gains from extra compute.
    easy, middle, hard = (
        score(model, trivial(40)),
        score(model, needs_thinking(40)),
        score(model, beyond_reach(40)),
    )
    assert middle > 0.5, (easy, middle, hard)
    assert easy < 0.2 and hard < 0.2, (easy, middle, hard)

    # A plain file path works too, and retraining gives the same model.
    again = tmp_path / "again.joblib"
    assert main(["route", "train", "--from-ledger", str(db), "--out", str(again)]) == 0
    assert score(LearnedClassifier.load(again), needs_thinking(41)) == score(
        model, needs_thinking(41)
    )
    # The router uses it like any learned model.
    plan = Router(RouterSettings(classifier=str(out))).plan_text(needs_thinking(3))
    text = needs_thinking(3)
    assert plan.scorer == "learned" and plan.score == model.score(text, extract(text))


async def test_the_held_out_score_is_measured_on_rows_it_did_not_train_on(
    tmp_path: Path,
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'ledger.db'}")
    await fill(store, per_group=10)
    # The split is by request id; the gateway's ids are random, so fix them here.
    rows = [dataclasses.replace(r, id=f"req-{i}") for i, r in enumerate(store.rows())]
    result = train_from_ledger(rows, holdout=0.3)
    direct, compute = result.heldout["direct"], result.heldout["compute"]
    assert (direct["rows"], compute["rows"]) == (9, 7)
    # Correctness follows the kind of prompt, which the features show: the held-out
    # rows (prompts the split model never saw) are ranked far better than chance.
    assert direct["auc"] >= 0.85 and direct["accuracy"] >= 0.85, result.heldout
    assert compute["auc"] >= 0.85 and compute["accuracy"] >= 0.85, result.heldout
    # The same rows, told apart by other ids, fall on other sides of the split.
    other = train_from_ledger([dataclasses.replace(r, id=f"x{r.id}") for r in rows], holdout=0.3)
    assert (other.heldout["direct"]["rows"], other.heldout["compute"]["rows"]) != (9, 7)
    # The saved model is trained on every graded row.
    assert result.classifier.meta["examples"] == 60


async def test_too_few_graded_rows_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "ledger.db"
    store = Store(f"sqlite:///{db}")
    await fill(store, per_group=2)
    store.close()
    code = main(["route", "train", "--from-ledger", str(db), "--out", str(tmp_path / "m.joblib")])
    assert code == 2
    err = capsys.readouterr().err
    assert "only 6 graded direct answers (need 20)" in err
    assert "1 without a verdict" in err and "POST /v1/feedback" in err
    assert not (tmp_path / "m.joblib").exists()


def test_one_outcome_only_is_refused() -> None:
    class Row:
        def __init__(self, i: int) -> None:
            self.id, self.status, self.verdict = f"r{i}", "ok", "correct"
            self.strategy, self.plan = "direct", {"thinking_budget": None}
            self.features = {"features": extract(trivial(i)).as_dict()}

    with pytest.raises(NotEnoughData, match="all 25 graded direct answers are correct"):
        train_from_ledger([Row(i) for i in range(25)])


def test_a_missing_ledger_file_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.db"
    for source in (str(missing), f"sqlite:///{missing}"):
        code = main(["route", "train", "--from-ledger", source, "--out", str(tmp_path / "m")])
        assert code != 0
    assert not missing.exists()


def test_a_version_2_ledger_gains_the_features_column(store: Store) -> None:
    def columns() -> set[str]:
        with store.engine.connect() as conn:
            return {c["name"] for c in sa.inspect(conn).get_columns("ponder_requests")}

    # Back to the database schema version 2 left: no features column.
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE ponder_requests DROP COLUMN features")
        conn.execute(sa.update(s.schema_info).values(version=2))
    assert "features" not in columns()
    # Every later migration runs too (version 4 added hold owners and job history).
    assert s.SCHEMA_VERSION >= 3
    assert store.migrate() == s.SCHEMA_VERSION
    assert "features" in columns()
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(s.schema_info.c.version)).scalar() == s.SCHEMA_VERSION
    # Migrating again changes nothing.
    assert store.migrate() == s.SCHEMA_VERSION and "features" in columns()
