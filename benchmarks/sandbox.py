"""Per-candidate cost of running code: the bubblewrap sandbox vs. the old in-process hooks.

Variants, interleaved round-robin in one run on the same programs:
  old          the audit-hook subprocess sandbox this replaced (loaded from git, --baseline)
  unsandboxed  the judge + worker processes without bubblewrap (the unsafe fallback):
               separates the cost of judging outside the program from bwrap's own
  bwrap        the default: judge + worker inside a bubblewrap sandbox
Workloads: ``tests`` (a function and 8 asserts, as the code verifier runs a candidate),
``program`` (a script whose output is the answer, as program_aided runs it), and
``per_test`` (the same 8 asserts, one sandbox per assert: what reusing one sandbox
for all tests of a candidate saves). Prints one JSON line per variant and workload
and a summary line with the ratios.

    .venv/bin/python benchmarks/sandbox.py --repeats 20
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from ponder.config import SandboxSettings
from ponder.verifiers import sandbox

FUNCTION = (
    "def longest(strings):\n"
    "    best = None\n"
    "    for s in strings:\n"
    "        if best is None or len(s) > len(best):\n"
    "            best = s\n"
    "    return best\n"
)
TESTS = [f"assert longest({['a' * i, 'b' * (i + 1)]!r}) == {'b' * (i + 1)!r}" for i in range(8)]
PROGRAM = "print(sum(i * i for i in range(1000)))\n"
UNSAFE = SandboxSettings(bwrap="/nonexistent/bwrap", allow_unsafe_unsandboxed=True)


def _load_old(rev: str) -> Any:
    """The sandbox module as it was at ``rev`` (None when git or the revision is missing)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        source = subprocess.run(
            ["git", "show", f"{rev}:src/ponder/verifiers/sandbox.py"],
            cwd=root,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = os.path.join(tempfile.mkdtemp(prefix="ponder-bench-"), "old_sandbox.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("old_sandbox", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_sandbox"] = module
    spec.loader.exec_module(module)
    return module


def _humaneval() -> None:
    from ponder.eval.datasets import humaneval

    items = humaneval()
    t0 = time.perf_counter()

    def reply(item: Any, body: str) -> str:
        return f"```python\n{item.metadata['prompt']}{body}\n```"

    reference = [it.id for it in items if not it.grade(reply(it, str(it.reference)))]
    wrong = [it.id for it in items if it.grade(reply(it, "    return None\n"))]
    print(
        json.dumps(
            {
                "humaneval": len(items),
                "references_failed": reference,
                "return_none_passed": wrong,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--baseline", default="0bcc0a4", help="git revision of the old sandbox")
    parser.add_argument("--humaneval", action="store_true")
    args = parser.parse_args()
    if args.humaneval:
        _humaneval()

    old = _load_old(args.baseline)
    if sandbox.sandbox_status() is not None:
        raise SystemExit(f"no bubblewrap sandbox here: {sandbox.sandbox_status()}")

    def new(settings: SandboxSettings | None) -> Callable[..., Any]:
        return lambda code, tests=(): sandbox.run_python(code, tests=tests, settings=settings)

    variants: dict[str, Callable[..., Any]] = {}
    if old is not None:
        variants["old"] = lambda code, tests=(): old.run_python(code, tests=tests)
    variants["unsandboxed"] = new(UNSAFE)
    variants["bwrap"] = new(None)

    def tests_run(run: Callable[..., Any]) -> bool:
        return bool(run(FUNCTION, TESTS).all_passed)

    def program_run(run: Callable[..., Any]) -> bool:
        return bool(run(PROGRAM).stdout.strip() == "332833500")

    def per_test_run(run: Callable[..., Any]) -> bool:
        return all(run(FUNCTION, [t]).all_passed for t in TESTS)

    workloads = {"tests": tests_run, "program": program_run, "per_test": per_test_run}
    times: dict[tuple[str, str], list[float]] = {(v, w): [] for v in variants for w in workloads}
    for run in variants.values():  # warm-up: page in interpreters, probe bwrap once
        assert tests_run(run) and program_run(run)
    for _ in range(args.repeats):
        for wname, workload in workloads.items():
            for vname, run in variants.items():
                t0 = time.perf_counter()
                ok = workload(run)
                times[(vname, wname)].append(time.perf_counter() - t0)
                if not ok:
                    raise SystemExit(f"{vname} got {wname} wrong")
    median = {k: statistics.median(v) * 1000 for k, v in times.items()}
    for (vname, wname), values in times.items():
        print(
            json.dumps(
                {
                    "variant": vname,
                    "workload": wname,
                    "runs": len(values),
                    "median_ms": round(median[(vname, wname)], 1),
                    "mean_ms": round(statistics.mean(values) * 1000, 1),
                    "p90_ms": round(sorted(values)[int(0.9 * (len(values) - 1))] * 1000, 1),
                }
            )
        )
    summary: dict[str, Any] = {
        "summary": True,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "bwrap_python": sandbox._isolation("bwrap", None).python,  # type: ignore[union-attr]
    }
    for wname in workloads:
        if old is not None:
            summary[f"{wname}_bwrap_over_old"] = round(
                median[("bwrap", wname)] / median[("old", wname)], 2
            )
        summary[f"{wname}_bwrap_over_unsandboxed"] = round(
            median[("bwrap", wname)] / median[("unsandboxed", wname)], 2
        )
    summary["per_test_over_tests_bwrap"] = round(
        median[("bwrap", "per_test")] / median[("bwrap", "tests")], 2
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
