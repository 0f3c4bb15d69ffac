"""End to end: a real `ponder serve` on the embedded model serves real requests, then
headless Chromium drives /dashboard and the numbers on the page must equal the ledger.

Uses the system Chromium (Debian `chromium`) through Playwright; no browser is ever
downloaded. Skips, saying why, without Chromium, Playwright or the model, unless
``PONDER_REQUIRE_BROWSER=1`` (CI), where a missing browser fails the test.
``PONDER_SAVE_SCREENSHOT=1`` also writes the screenshot to docs/img/dashboard.png.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from ponder.budget.quota import Limit
from ponder.ledger import LedgerRow, Store
from ponder.ledger.stats import percentile
from ponder.router.savings import routing_report
from ponder.server.dashboard import latest_eval

pytestmark = pytest.mark.model

MODEL = "qwen2.5-coder-0.5b-instruct"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
EVAL_DIR = REPO / "docs" / "eval"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("PONDER_REQUIRE_BROWSER") == "1":
        pytest.fail(f"PONDER_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} is missing; install Debian's chromium (make test does, as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed; pip install -e '.[dev]'")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def _model_ready() -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (ponder[llama])")
    from ponder.backends import catalog
    from ponder.config import load_settings

    if catalog.model_status(MODEL, load_settings().cache_dir) != "installed":
        pytest.skip(f"the embedded model {MODEL} is not installed; run `make model`")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(db: str, port: int, tmp: Path) -> subprocess.Popen[bytes]:
    config = tmp / "ponder.toml"
    config.write_text(
        "[engine]\nn_ctx = 2048\nmax_sequences = 4\n\n"
        f'[server]\neval_results_dir = "{EVAL_DIR}"\n\n'
        # A price, so cost is a real number to compare (USD per 1M tokens).
        "[pricing.default]\ninput = 100.0\noutput = 400.0\nreasoning = 800.0\n"
    )
    # One model: the page's figures do not depend on whether the 1.5B is installed.
    env = {**os.environ, "PONDER_CONFIG": str(config), "PONDER_SERVER__EMBEDDED_TIERS": "false"}
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115 - handed to the child process
    cmd = [sys.executable, "-m", "ponder.cli", "serve", "--model", MODEL]
    cmd += ["--port", str(port), "--db", db]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ponder serve exited: {(tmp / 'serve.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("ponder serve did not become healthy within 300 s")


def _send_requests(base_url: str, user_key: str, admin_key: str) -> None:
    from openai import OpenAI

    user = OpenAI(base_url=base_url, api_key=user_key, max_retries=0, timeout=300)
    admin = OpenAI(base_url=base_url, api_key=admin_key, max_retries=0, timeout=300)
    ask = [{"role": "user", "content": "What is 7 * 6? Answer with the number only."}]
    # Left to the router (class inferred, server default strategy).
    user.chat.completions.create(model=MODEL, messages=ask, max_tokens=12)
    # A stream: the ledger records its time to first token.
    stream = user.chat.completions.create(model=MODEL, messages=ask, max_tokens=12, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    user.chat.completions.create(
        model=MODEL,
        messages=ask,
        max_tokens=32,
        extra_body={"ponder": {"strategy": "cot", "params": {"thinking_budget": 16}}},
    )
    user.chat.completions.create(
        model=MODEL,
        messages=ask,
        max_tokens=12,
        extra_body={"ponder": {"strategy": "self_consistency", "params": {"n": 2}}},
    )
    code = [{"role": "user", "content": "Write a Python function that returns the square of x."}]
    user.chat.completions.create(model=MODEL, messages=code, max_tokens=8)
    admin.chat.completions.create(model=MODEL, messages=ask, max_tokens=8)


SHADOW_PAIRS = 6


def _add_shadow_pairs(store: Store) -> None:
    """Served rows of a class of their own, each with an always-strong shadow at exactly
    three times its cost: the page must show that routing saved twice what it spent."""
    now = time.time()

    def row(rid: str, at: float, cost: int, **extra: Any) -> LedgerRow:
        return LedgerRow(
            id=rid, task_class="shadowed", strategy="direct", plan={"params": {}},
            status="ok", http_status=200, verdict="correct", at=at, cost_micro=cost, **extra,
        )  # fmt: skip

    for i in range(SHADOW_PAIRS):
        rid = f"chatcmpl-served-{i}"
        store.insert_row(row(rid, now - 60 + i, 1000 * (i + 1), tier="small"))
        shadow = {"shadow_of": rid, "shadow_plan": "strong"}
        store.insert_row(
            row(f"{rid}-shadow", now - 59 + i, 3000 * (i + 1), tier="strong",
                team="ponder-shadow", features=shadow)
        )  # fmt: skip


def _usd(micro: int) -> str:
    """As the page writes micro-dollars: exact, six decimals."""
    return f"${micro // 1_000_000:,}.{micro % 1_000_000:06d}"


def _text(page: Any, testid: str) -> str:
    return str(page.get_by_test_id(testid).inner_text()).strip()


def test_dashboard_shows_what_the_ledger_holds(chromium: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    _model_ready()
    db = f"sqlite:///{tmp_path / 'ponder.db'}"
    store = Store(db)
    try:
        _, user_key = store.create_key(
            "alice", team="research", scopes=["strategies", "reasoning"], name="alice laptop"
        )
        _, admin_key = store.create_key("ops", scopes=["admin"], name="dashboard")
        # Five requests of six: the fifth crosses 80% and raises an alert.
        store.set_limit(Limit("user", "alice", "requests", "day", 6))
        store.set_limit(Limit("user", "*", "tokens", "day", 20_000))
    finally:
        store.close()

    port = _free_port()
    proc = _serve(db, port, tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        _send_requests(f"{base}/v1", user_key, admin_key)

        store = Store(db)
        try:
            _add_shadow_pairs(store)
            rows = store.rows()
        finally:
            store.close()
        assert len(rows) == 6 + 2 * SHADOW_PAIRS and all(r.status == "ok" for r in rows)

        page = chromium.new_page(viewport={"width": 1440, "height": 1000})
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

        def console(msg: Any) -> None:
            # The refused key's fetches log their 403s; anything else is a problem.
            if msg.type == "error" and "status of 403" not in msg.text:
                problems.append(f"console {msg.type}: {msg.text}")

        page.on("console", console)
        page.goto(f"{base}/dashboard")
        page.get_by_test_id("range").select_option("all")

        # A key without the admin scope is refused, and the page says why.
        page.get_by_test_id("admin-key").fill(user_key)
        page.get_by_test_id("connect").click()
        expect(page.get_by_test_id("login-error")).to_contain_text("'admin' scope")
        assert page.get_by_test_id("login").is_visible()

        page.get_by_test_id("admin-key").fill(admin_key)
        page.get_by_test_id("connect").click()
        # Locator waits, not wait_for_function: the page's CSP forbids evaluating strings.
        expect(page.get_by_test_id("status")).to_have_attribute("data-state", "ok", timeout=30_000)

        # Totals: served requests; shadow runs are spend shown apart.
        served = [r for r in rows if not (r.features or {}).get("shadow_of")]
        shadows = [r for r in rows if r not in served]
        assert _text(page, "total-requests") == f"{len(served):,}"
        assert _text(page, "total-errors") == "0"
        for testid, column in (
            ("total-input-tokens", "input_tokens"),
            ("total-reasoning-tokens", "reasoning_tokens"),
            ("total-output-tokens", "output_tokens"),
        ):
            assert _text(page, testid) == f"{sum(getattr(r, column) for r in served):,}", testid
        total = sum(
            r.input_tokens + r.cached_input_tokens + r.reasoning_tokens + r.output_tokens
            for r in served
        )
        assert _text(page, "total-tokens") == f"{total:,}"
        cost = sum(r.cost_micro for r in served)
        assert cost > 0 and _text(page, "total-cost") == _usd(cost)
        assert page.get_by_test_id("shadow-spend").is_visible()
        assert _text(page, "shadow-requests") == str(len(shadows)) == str(SHADOW_PAIRS)
        assert _text(page, "shadow-cost") == _usd(sum(r.cost_micro for r in shadows))
        assert sum(r.reasoning_tokens for r in rows) > 0  # the cot request thought
        p95 = page.get_by_test_id("latency-p95").get_attribute("data-value")
        assert float(p95) == pytest.approx(percentile([r.latency_ms for r in served], 95))
        ttft = [r.ttft_ms for r in served if r.ttft_ms is not None]
        assert ttft, "the streamed request should have a time to first token"
        p50 = page.get_by_test_id("ttft-p50").get_attribute("data-value")
        assert float(p50) == pytest.approx(percentile(ttft, 50))

        # Requests per strategy.
        per_strategy = Counter(r.strategy for r in served)
        assert {"direct", "cot", "self_consistency"} <= set(per_strategy)
        shown = page.locator("#strategy-table tbody tr").count()
        assert shown == len(per_strategy)
        for name, count in per_strategy.items():
            assert _text(page, f"strategy-requests-{name}") == str(count), name

        # The live feed: newest first.
        feed_ids = page.locator("#feed tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.requestId)"
        )
        assert feed_ids == [r.id for r in sorted(rows, key=lambda r: (-r.at, r.id))]
        marked = page.locator("#feed tbody tr.shadow").evaluate_all(
            "rows => rows.map(r => [r.dataset.requestId, r.dataset.shadowOf])"
        )
        assert sorted(marked) == sorted([r.id, r.features["shadow_of"]] for r in shadows)
        assert "ponder-shadow" in page.locator("#feed tbody tr.shadow").first.inner_text()

        # Quotas and the alert the fifth request raised.
        alice = page.locator("[data-testid=quota-row][data-subject=alice][data-metric=requests]")
        assert alice.get_attribute("data-state") == "warning"
        assert "5 / 6" in alice.inner_text()
        alerts = page.locator("[data-testid=alert][data-kind=quota_threshold]")
        assert alerts.count() == 1 and "alice" in alerts.inner_text()

        # The latest eval results (the repository's own), frontier and curves.
        expected = latest_eval(EVAL_DIR)
        if "frontier" in expected:
            assert page.get_by_test_id("frontier-row").count() == len(expected["frontier"])
        else:
            assert _text(page, "eval-message") == expected["message"]

        # What routing saved: a row per class (and counterfactual plan), with the estimate.
        report = routing_report(rows)
        assert page.get_by_test_id("savings-row").count() == sum(
            max(len(c["savings"]), 1) for c in report["classes"]
        )
        assert page.get_by_test_id("savings-empty").is_hidden()
        (strong,) = next(c for c in report["classes"] if c["task_class"] == "shadowed")["savings"]
        spent = sum(1000 * (i + 1) for i in range(SHADOW_PAIRS))
        assert strong["savings_usd"]["value"] == pytest.approx(2 * spent / 1e6)
        saved = page.get_by_test_id("saved-shadowed-strong")
        assert float(saved.get_attribute("data-value")) == pytest.approx(2 * spent / 1e6)
        assert _usd(2 * spent) in saved.inner_text() and "66.7%" in saved.inner_text()
        shadowed = page.locator("[data-testid=savings-row][data-class=shadowed]")
        assert _usd(3 * spent) in shadowed.inner_text()  # always-strong would have cost 3x
        # Across classes: only "shadowed" has pairs, so the total is its estimate, and
        # the other classes' spend is named beside it.
        (everything,) = [t for t in report["total"] if t["plan"] == "strong"]
        assert everything["classes"] == ["shadowed"]
        whole = page.locator("[data-testid=savings-total][data-plan=strong]")
        assert _usd(3 * spent) in whole.inner_text()
        total_saved = page.get_by_test_id("saved-total-strong")
        assert float(total_saved.get_attribute("data-value")) == pytest.approx(2 * spent / 1e6)
        assert _usd(round(everything["uncovered_usd"] * 1e6)) in whole.inner_text()
        assert page.get_by_test_id("chart-escalation").get_attribute("data-series") == str(
            len(report["classes"])
        )

        # Charts drew something (not a blank canvas).
        for chart in (
            "chart-latency",
            "chart-volume",
            "chart-strategy",
            "chart-groups",
            "chart-escalation",
        ):
            drawn = page.evaluate(
                "id => { const c = document.getElementById(id);"
                " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                " for (let i = 3; i < d.length; i += 4) if (d[i]) return true; return false; }",
                chart,
            )
            assert drawn, f"{chart} is blank"

        assert not problems, problems
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("PONDER_SAVE_SCREENSHOT") == "1":
            target = REPO / "docs" / "img" / "dashboard.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, target)
        page.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
