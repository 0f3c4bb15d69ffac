"""``ponder route retrain`` / ``rollback``: a policy fitted from graded ledger rows is
promoted only when it beats the serving one on held-out requests, served live by a
router built before the promotion, and rolled back to what served before."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from ponder.backends.fake import FakeBackend, Reply
from ponder.cli import main
from ponder.config import RetrainSettings, RouterSettings, ServerSettings
from ponder.ledger import LedgerRow, Store
from ponder.router.calibrate import CANDIDATE_PLANS, load_default_policy
from ponder.router.policy import Router
from ponder.router.retrain import _held_out, examples_from_rows, plan_name, retrain, rollback
from ponder.server.app import create_app
from ponder.server.gateway import Gateway
from ponder.strategies import available_strategies

# Per plan, what a graded answer costs (micro-USD).
COST = {"direct": 30, "think": 90, "search": 150, "strong": 80}


@pytest.fixture(autouse=True)
def no_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PONDER_CONFIG", str(tmp_path / "none.toml"))
    # No embedded 1.5B: the CLI scores the single-tier form, as the test gateway serves.
    monkeypatch.setenv("PONDER_CACHE_DIR", str(tmp_path / "cache"))


def ledger_row(
    request: str,
    task_class: str,
    plan: str,
    correct: bool | None,
    *,
    shadow_of: str | None = None,
    verification: str | None = None,
) -> LedgerRow:
    """A row as the gateway writes it for a run of candidate plan ``plan``."""
    spec = CANDIDATE_PLANS[plan]
    features: dict[str, Any] = {"v": 1, "features": {"words": 8}}
    if shadow_of is not None:
        features["shadow_of"] = shadow_of
    if verification is not None:
        features["verification"] = {"verdict": verification, "verifier": "regex"}
    return LedgerRow(
        id=request,
        task_class=task_class,
        strategy=spec["strategy"],
        plan={"params": spec.get("params", {}), "thinking_budget": spec.get("thinking_budget")},
        status="ok",
        http_status=200,
        tier=spec.get("tier"),
        cost_micro=COST.get(plan, 100),
        verdict=None if correct is None else ("correct" if correct else "incorrect"),
        features=features,
    )


def fill(store: Store, accuracy: dict[str, dict[str, float]], requests: int, seed: int = 0,
         serving: dict[str, str] | None = None) -> None:  # fmt: skip
    """``requests`` per class answered by the serving plan, each with a shadow run of
    every other plan in ``accuracy[class]``; correct with that plan's probability."""
    rng = random.Random(seed)
    serving = serving or {}
    for task_class, plans in accuracy.items():
        first = serving.get(task_class, "direct")
        for i in range(requests):
            rid = f"{task_class}-{seed}-{i}"
            store.insert_row(ledger_row(rid, task_class, first, rng.random() < plans[first]))
            for plan, p in plans.items():
                if plan != first:
                    store.insert_row(
                        ledger_row(
                            f"{rid}-{plan}", task_class, plan, rng.random() < p, shadow_of=rid
                        )  # fmt: skip
                    )


def test_a_logged_run_maps_back_to_its_candidate_plan() -> None:
    for name, spec in CANDIDATE_PLANS.items():
        assert plan_name(spec["strategy"], spec.get("tier"), spec.get("params")) == name
    assert plan_name("mcts", None, {}) is None


def test_verdicts_come_from_feedback_or_the_recorded_verification() -> None:
    rows = [
        ledger_row("a", "math", "direct", True),
        ledger_row("b", "math", "direct", None, verification="fail"),
        ledger_row("c", "math", "direct", None, verification="unknown"),
        ledger_row("d", "math", "think", False, shadow_of="a"),
    ]
    examples, skipped = examples_from_rows(rows)
    assert [(e.request, e.plan, e.correct, e.shadow) for e in examples] == [
        ("a", "direct", True, False),
        ("b", "direct", False, False),
        ("a", "think", False, True),
    ]
    assert skipped == {"ungraded": 1}


def test_a_better_candidate_is_promoted_with_its_report(store: Store, tmp_path: Path) -> None:
    # The shipped single-tier policy answers lookups directly; here thinking pays.
    assert load_default_policy()["forms"]["single_tier"]["classes"]["lookup"]["plan"] == "direct"
    # Chat is answered right either way: thinking does not pay there.
    both = {"lookup": {"direct": 0.3, "think": 0.95}, "chat": {"direct": 1.0, "think": 1.0}}
    fill(store, both, requests=80)
    result = retrain(store.rows(), tmp_path / "policy")
    assert result.promoted, result.reason
    live = json.loads((tmp_path / "policy" / "policy.json").read_text())
    assert live["forms"]["single_tier"]["classes"]["lookup"]["plan"] == "think"
    rep = result.report
    assert rep["candidate"]["accuracy"] > rep["serving"]["accuracy"] + 0.15
    lookup = rep["candidate"]["classes"]["lookup"], rep["serving"]["classes"]["lookup"]
    assert lookup[0]["accuracy"] > lookup[1]["accuracy"] + 0.4
    assert rep["candidate_plans"]["chat"] == "direct"  # a tie goes to the cheaper plan
    # Serving answers both classes directly: its score cannot rank them (AUC 0.5); the
    # candidate's ranks the lookups, where thinking pays, above the chats.
    assert rep["serving"]["auc"] == 0.5 and rep["candidate"]["auc"] > 0.75
    saved = json.loads(Path(result.paths["report_json"]).read_text())
    assert saved["promoted"] is True and saved["candidate_plans"]["lookup"] == "think"
    md = Path(result.paths["report_md"]).read_text()
    assert "**Promoted**" in md and "| lookup | direct | think |" in md


def test_a_dry_run_compares_and_writes_nothing(store: Store, tmp_path: Path) -> None:
    fill(store, {"lookup": {"direct": 0.3, "think": 0.95}}, requests=80)
    result = retrain(store.rows(), tmp_path / "policy", dry_run=True)
    assert not result.promoted and "dry run" in result.reason
    assert result.report["candidate_plans"]["lookup"] == "think"
    assert not (tmp_path / "policy").exists() and result.paths == {}


def test_a_worse_candidate_is_never_promoted(store: Store, tmp_path: Path) -> None:
    directory = tmp_path / "policy"
    # Both plans always right: thinking only costs more, so no promotion.
    for i in range(120):
        store.insert_row(ledger_row(f"r{i}", "lookup", "direct", True))
        store.insert_row(ledger_row(f"r{i}-t", "lookup", "think", True, shadow_of=f"r{i}"))
    same = retrain(store.rows(), directory)
    assert not same.promoted and "not better" in same.reason

    # Train rows say thinking pays on lookups, the held-out rows say the opposite: the
    # candidate fitted on train (think) loses on held-out and must not be promoted.
    rows = []
    for i in range(120):
        rid = f"w{i}"
        held = _held_out(rid, 0.3)
        rows.append(ledger_row(rid, "lookup", "direct", held))
        rows.append(ledger_row(f"{rid}-t", "lookup", "think", not held, shadow_of=rid))
    worse = retrain(rows, directory)
    assert worse.report["candidate_plans"]["lookup"] == "think"
    assert worse.report["candidate"]["accuracy"] < worse.report["serving"]["accuracy"]
    assert not worse.promoted
    assert not (directory / "policy.json").exists()
    assert not (directory / "history").exists()
    # The report is written anyway.
    assert json.loads(Path(worse.paths["report_json"]).read_text())["promoted"] is False


def gateway_client(router: Router, store: Store) -> httpx.AsyncClient:
    backend = FakeBackend([Reply("The answer is 12", reasoning="step by step")])
    gateway = Gateway(backend, ServerSettings(), store=store, router=router)
    app = create_app(backend, gateway=gateway)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def ask(client: httpx.AsyncClient, prompt: str) -> httpx.Response:
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": prompt}]},
    )
    assert r.status_code == 200, r.text
    return r


async def test_a_promoted_policy_is_live_without_a_restart_and_rollback_restores(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "policy"
    settings = RouterSettings(retrain=RetrainSettings(dir=str(directory), reload_seconds=0))
    router = Router(settings, strategies=available_strategies())
    prompt = "What is the capital of France?"
    async with gateway_client(router, Store(f"sqlite:///{tmp_path / 'gw.db'}")) as client:
        before = await ask(client, prompt)
        assert before.headers["x-ponder-class"] == "lookup"
        assert before.headers["x-ponder-strategy"] == "direct"

        db = tmp_path / "ledger.db"
        ledger = Store(f"sqlite:///{db}")
        fill(ledger, {"lookup": {"direct": 0.3, "think": 0.95}}, requests=80)
        ledger.close()
        argv = ["route", "retrain", "--from-ledger", str(db), "--dir", str(directory)]
        assert main(argv) == 0
        printed = capsys.readouterr().out
        assert "PROMOTED" in printed and "report_md" in printed

        after = await ask(client, prompt)
        assert after.headers["x-ponder-strategy"] == "cot"
        assert router.policy_form.startswith("single_tier, promoted")

        # A second retrain on the same evidence: the candidate is the serving policy now.
        assert main(argv) == 0
        assert "kept the serving policy" in capsys.readouterr().out

        assert main(["route", "rollback", "--dir", str(directory)]) == 0
        assert "the shipped default policy" in capsys.readouterr().out
        assert not (directory / "policy.json").exists()
        rolled = await ask(client, prompt)
        assert rolled.headers["x-ponder-strategy"] == "direct"
    # Nothing more to roll back: a clear error.
    assert main(["route", "rollback", "--dir", str(directory)]) == 2
    assert "nothing to roll back" in capsys.readouterr().err


def test_rollback_restores_the_previously_promoted_policy(store: Store, tmp_path: Path) -> None:
    directory = tmp_path / "policy"
    fill(store, {"lookup": {"direct": 0.3, "think": 0.95}}, requests=80)
    assert retrain(store.rows(), directory).promoted
    first = (directory / "policy.json").read_text()
    # Thinking starts to fail on lookups; search now pays there.
    fill(store, {"lookup": {"direct": 0.3, "think": 0.2, "search": 0.97}}, requests=120,
         seed=1, serving={"lookup": "think"})  # fmt: skip
    second = retrain(store.rows(), directory)
    assert second.promoted, second.reason
    live = json.loads((directory / "policy.json").read_text())
    assert live["forms"]["single_tier"]["classes"]["lookup"]["plan"] == "search"
    assert "the policy promoted before" in rollback(directory)
    assert (directory / "policy.json").read_text() == first


def test_a_broken_promoted_file_keeps_the_serving_policy(tmp_path: Path) -> None:
    directory = tmp_path / "policy"
    settings = RouterSettings(retrain=RetrainSettings(dir=str(directory), reload_seconds=0))
    router = Router(settings)
    before = router.plan_text("What is the capital of France?").strategy
    directory.mkdir()
    (directory / "policy.json").write_text("{not json")
    assert router.refresh() is False
    assert router.plan_text("What is the capital of France?").strategy == before


def test_retrain_needs_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "ledger.db"
    Store(f"sqlite:///{db}").close()
    with pytest.raises(SystemExit, match="no policy directory"):
        main(["route", "retrain", "--from-ledger", str(db)])


async def test_the_gateway_retrains_on_its_schedule(tmp_path: Path) -> None:
    import asyncio

    from ponder.router.retrain import parse_duration, retrain_every

    assert parse_duration("1d") == 86400 and parse_duration("30m") == 1800
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("0h")
    with pytest.raises(ValueError):
        RetrainSettings(every="daily")
    directory = tmp_path / "policy"
    store = Store(f"sqlite:///{tmp_path / 'ledger.db'}")
    fill(store, {"lookup": {"direct": 0.3, "think": 0.95}}, requests=80)
    # Off unless every, dir and a store are all set.
    settings = RouterSettings(retrain=RetrainSettings(dir=str(directory), every="1d"))
    gateway = Gateway(FakeBackend([Reply("x")]), ServerSettings(), store=store,
                      router=Router(settings))  # fmt: skip
    assert Gateway(FakeBackend([Reply("x")]), ServerSettings(), router=Router(settings)
                   ).start_retraining() is None  # fmt: skip
    task = gateway.start_retraining()
    assert task is not None and not task.done()
    await gateway.aclose()
    await asyncio.sleep(0)
    assert task.cancelled()
    # The loop itself, on a short interval: the first round promotes.
    loop = asyncio.create_task(
        retrain_every(0.01, lambda since: store.rows(since=since), directory, window_s=3600)
    )
    for _ in range(500):
        if (directory / "policy.json").exists():
            break
        await asyncio.sleep(0.01)
    loop.cancel()
    live = json.loads((directory / "policy.json").read_text())
    assert live["forms"]["single_tier"]["classes"]["lookup"]["plan"] == "think"


def test_ponder_toml_declares_retraining_and_shadows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ponder.config import load_settings

    toml = tmp_path / "ponder.toml"
    toml.write_text(
        '[router.retrain]\ndir = "/srv/router"\nevery = "6h"\n'
        "[router.shadow]\nrate = 0.02\nclasses = { math = 0.5 }\n"
    )
    monkeypatch.setenv("PONDER_CONFIG", str(toml))
    router = load_settings().router
    assert (router.retrain.dir, router.retrain.every) == ("/srv/router", "6h")
    assert router.shadow.rate == 0.02 and router.shadow.classes == {"math": 0.5}
    toml.write_text("[router.shadow]\nclasses = { math = 2.0 }\n")
    with pytest.raises(ValueError, match="between 0 and 1"):
        load_settings()
