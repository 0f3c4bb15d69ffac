from __future__ import annotations

import json
from pathlib import Path

from ponder.eval.report import write_report

FIXTURE = Path(__file__).parent / "fixtures" / "small_results.jsonl"


def load():
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


def test_report_writes_markdown_html_summary_and_plots(tmp_path):
    files = write_report(
        load(), tmp_path, title="fixture run", prices={"m": {"input": 1, "output": 2}}
    )
    for name in ("markdown", "html", "summary", "scaling", "difficulty"):
        assert files[name].exists() and files[name].stat().st_size > 0, name
    assert files["scaling"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = files["markdown"].read_text()
    # One table row per configuration, with the accuracy the fixture implies.
    assert "| direct [m] | 4 | 50.0%" in md
    assert "| self_consistency n=4 [m] | 4 | 75.0%" in md
    assert "Compute-optimal configuration per difficulty bin" in md
    summary = json.loads(files["summary"].read_text())
    assert {s["strategy"] for s in summary["summaries"]} == {"direct", "self_consistency"}
    assert set(summary["compute_optimal"]) == {"1", "2"}
    assert "<table>" in files["html"].read_text()


def test_report_refuses_empty_results(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="no records"):
        write_report([], tmp_path)
