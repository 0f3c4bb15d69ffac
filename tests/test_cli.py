"""The ``ponder`` command, with fake backends injected through its seams."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ponder import cli
from ponder.api import Ponder
from ponder.backends.catalog import CATALOG
from ponder.backends.fake import FakeBackend, Reply
from ponder.cli import ask as ask_command
from ponder.cli import serve as serve_command


@pytest.fixture(autouse=True)
def hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ponder.toml from the checkout, and a fresh model cache."""
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setenv("PONDER_CACHE_DIR", str(cache))
    monkeypatch.setenv("COLUMNS", "160")
    # Keys, quotas and the ledger go to a throwaway database, never ~/.local/share.
    monkeypatch.setenv("PONDER_LEDGER__URL", f"sqlite:///{tmp_path / 'ponder.db'}")
    return cache


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    fake = FakeBackend([Reply("The answer is 4", reasoning="two plus two makes four")])
    monkeypatch.setattr(ask_command, "_build_ponder", lambda model: Ponder(fake))
    return fake


def test_models_lists_the_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert len(CATALOG) == 3
    for name in CATALOG:
        assert name in out
    assert "not installed" in out
    assert "ponder models pull" in out


def test_models_pull_unknown_model_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models", "pull", "gpt-17"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'gpt-17'" in err
    assert "qwen2.5-coder-0.5b-instruct" in err
    assert "Traceback" not in err


def test_ask_prints_answer_and_accounting(
    backend: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        ["ask", "What is 2+2?", "-s", "cot", "--thinking-budget", "50", "--show-reasoning"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "two plus two makes four" in out
    assert "The answer is 4" in out
    assert "cot" in out
    assert "3 in / 5 reasoning / 4 out" in out
    assert backend.calls[0].thinking is not None
    assert backend.calls[0].thinking.budget_tokens == 50


def test_ask_hides_reasoning_by_default(
    backend: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["ask", "What is 2+2?", "--strategy", "cot"]) == 0
    assert "two plus two" not in capsys.readouterr().out


def test_ask_json(backend: FakeBackend, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ask", "What is 2+2?", "--json", "--budget", "100", "--seed", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["answer"] == "The answer is 4"
    assert data["strategy"] == "direct"
    assert data["usage"]["output"] == 4
    assert "trace" not in data
    assert backend.calls[0].seed == 3

    assert cli.main(["ask", "What is 2+2?", "--json", "--trace"]) == 0
    assert json.loads(capsys.readouterr().out)["trace"]


def test_ask_params_reach_the_strategy(
    backend: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["ask", "What is 2+2?", "-s", "self_consistency", "-p", "n=3", "-p", "temperature=0.5"]
    assert cli.main(args) == 0
    assert backend.calls[0].n == 3
    assert backend.calls[0].temperature == 0.5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ask", "hi", "--strategy", "nope"], "unknown strategy 'nope'"),
        (["ask", "hi", "--param", "q=1"], "has no parameter(s) ['q']"),
        (["ask", "hi", "--param", "novalue"], "--param expects key=value"),
        (["ask", "hi", "--thinking-budget", "8"], "has no parameter(s) ['thinking_budget']"),
    ],
)
def test_ask_user_errors_exit_2_without_traceback(
    backend: FakeBackend, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert backend.calls == []


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ask", "hi", "--budget", "-1"]) == 2
    assert "must be >= 0" in capsys.readouterr().err
    assert cli.main([]) == 2


def test_serve_builds_the_app_and_prints_how_to_call_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    gguf = tmp_path / "local.gguf"
    gguf.write_bytes(b"GGUF")
    fake = FakeBackend(["hello"], name="local")
    built: dict[str, Any] = {}
    monkeypatch.setattr(serve_command, "_build_backend", lambda model, settings, progress: fake)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: built.update(app=app, **kw))

    assert cli.main(["serve", "--model", str(gguf), "--port", "8123"]) == 0
    assert built["port"] == 8123
    assert built["host"] == "127.0.0.1"
    assert built["app"].state.gateway.backend is fake
    out = capsys.readouterr().out
    assert "http://127.0.0.1:8123/v1" in out
    assert "curl http://127.0.0.1:8123/v1/chat/completions" in out


def test_serve_unknown_model_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--model", "no-such-model"]) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_missing_engine_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_engine(model: str) -> Ponder:
        raise ModuleNotFoundError("No module named 'llama_cpp'", name="llama_cpp")

    monkeypatch.setattr(ask_command, "_build_ponder", no_engine)
    assert cli.main(["ask", "hi"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'ponder[llama]'" in err
    assert "Traceback" not in err


def test_ask_trace_prints_the_search_tree(monkeypatch, capsys):
    from ponder import cli
    from ponder.api import Ponder
    from ponder.backends.fake import FakeBackend

    monkeypatch.setattr(
        ask_command,
        "_build_ponder",
        lambda model: Ponder(FakeBackend(["Answer: 4", "Answer: 5", "Answer: 4"])),
    )
    assert (
        cli.main(["ask", "2+2?", "--strategy", "self_consistency", "--param", "n=3", "--trace"])
        == 0
    )
    out = capsys.readouterr().out
    assert "search tree" in out and out.count("Answer: 4") >= 2 and "*" in out
