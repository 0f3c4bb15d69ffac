"""Grading generated code on hidden tests, in the same sandbox the code verifier uses."""

from __future__ import annotations

from ponder.verifiers.sandbox import SandboxLimits, run_python

__all__ = ["run_python_tests"]


def run_python_tests(
    program: str, test: str, timeout_s: float = 10.0, memory_mb: int = 1024
) -> bool:
    """True when ``program`` runs and ``test`` (a snippet that raises on failure) passes.

    The test is judged outside the program (see :mod:`ponder.verifiers.sandbox`);
    raises :class:`~ponder.verifiers.sandbox.SandboxUnavailable` where the host
    cannot isolate, so an eval never grades by running code unsandboxed.
    """
    result = run_python(
        program, tests=[test], limits=SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb)
    )
    return result.all_passed
