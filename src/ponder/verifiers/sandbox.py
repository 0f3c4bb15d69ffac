"""Run untrusted Python inside an operating-system sandbox (bubblewrap).

Each run is one ``bwrap`` sandbox, reused for every test of one candidate:

- its own user, pid, network, mount, ipc, uts (and cgroup) namespaces; inside it the
  program runs as uid/gid 65534 with no capabilities, and when this server runs as
  root, ``bwrap`` itself is started as nobody, so the sandbox is nobody on the host
  too (never root mapped to another name);
- the system read-only (``/usr``, the ``/bin``/``/lib`` links, the interpreter's
  prefix), no ``/etc``, ``/home``, ``/root`` or the project's files; a private
  size-capped tmpfs at ``/tmp`` as work dir; its own ``/proc`` (only its own
  processes); a minimal ``/dev``; no network interface but loopback;
- a cleared environment (``PATH``, ``HOME``, ``LANG`` only), ``--new-session``,
  ``--die-with-parent``, no further user namespaces;
- limits: address space, CPU seconds, file size, open files and process count
  (``RLIMIT_NPROC``, counted per user namespace, so a fork bomb stops at its own
  sandbox's ceiling), set before any candidate code exists in the process;
- a wall-clock deadline, after which the sandbox's pid 1 is killed: the kernel then
  kills every process in the pid namespace, including ``setsid``/double-fork
  survivors, before this function returns.

**Where the verdict comes from.** Inside the sandbox a *judge* process starts the
candidate as a separate *worker* interpreter and evaluates every test itself; the
program's functions are proxies whose calls travel over a pipe and come back as
plain builtin values (see :mod:`ponder.verifiers.sandbox_harness`). The judge is
non-dumpable (no ptrace, no ``/proc/<pid>/mem``), and its verdict lines go to a
file outside the sandbox that the worker holds no descriptor for. The program's
own stdout and stderr are separate files. So a candidate can make its tests fail,
or return values of its choosing, but cannot write or forge a pass.

**Where the host cannot isolate** (no ``bwrap``, user namespaces disabled, no
interpreter the sandbox user can read), untrusted code does not run:
:func:`run_python` raises :class:`SandboxUnavailable` (HTTP 400, code
``code_verification_unavailable``) unless ``[sandbox] allow_unsafe_unsandboxed``
is set, which runs the same judge and worker as plain subprocesses with only the
resource limits and a scrubbed environment (no isolation at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ponder.config import SandboxSettings
from ponder.errors import InvalidRequest

__all__ = [
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "TestResult",
    "arun_python",
    "check_sandbox",
    "configure",
    "run_python",
    "sandbox_status",
]

log = logging.getLogger(__name__)

NOBODY = 65534
WORKDIR = "/tmp"
# Two interpreter starts and the namespace setup, on top of the candidate's own time.
STARTUP_ALLOWANCE_S = 0.5
_HARNESS = (Path(__file__).with_name("sandbox_harness.py")).read_text(encoding="utf-8")


class SandboxUnavailable(InvalidRequest):
    """Model-written code cannot run here: the host cannot isolate it."""

    code = "code_verification_unavailable"


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run (each applies to every process of the candidate)."""

    timeout_s: float = 5.0
    memory_mb: int = 512
    file_mb: int = 4
    output_chars: int = 20_000
    processes: int = 64
    open_files: int = 256
    tmpfs_mb: int = 64


@dataclass
class TestResult:
    test: str
    passed: bool
    error: str | None = None


@dataclass
class SandboxResult:
    """What a sandboxed run did. ``ok``: the program ran to its end (tests may still fail)."""

    ok: bool
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    error: str | None = None
    tests: list[TestResult] = field(default_factory=list)
    sandboxed: bool = True

    @property
    def passed(self) -> int:
        return sum(t.passed for t in self.tests)

    @property
    def all_passed(self) -> bool:
        return self.ok and all(t.passed for t in self.tests)


_settings = SandboxSettings()


def configure(settings: SandboxSettings) -> None:
    """Set the process-wide sandbox settings (entry points call this with ``[sandbox]``)."""
    global _settings
    _settings = settings


@dataclass(frozen=True)
class _Isolation:
    bwrap: str
    python: str


def _drop_to_nobody() -> dict[str, Any]:
    # As root, bwrap maps the sandbox user onto uid 0 and RLIMIT_NPROC does not bind
    # uid 0: start bwrap as nobody so the sandbox is unprivileged on the host as well.
    if os.geteuid() == 0:
        return {"user": NOBODY, "group": NOBODY, "extra_groups": []}
    return {}


def _bwrap_argv(bwrap: str, python: str, limits: SandboxLimits, info_fd: int | None) -> list[str]:
    argv = [
        bwrap,
        "--unshare-user",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--uid",
        str(NOBODY),
        "--gid",
        str(NOBODY),
        "--disable-userns",
        "--hostname",
        "sandbox",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "HOME",
        WORKDIR,
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    prefix = os.path.dirname(os.path.dirname(python))
    if prefix not in ("/", "/usr") and not prefix.startswith("/usr/"):
        argv += ["--ro-bind", prefix, prefix]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    argv += [
        "--ro-bind-try",
        "/etc/ld.so.cache",
        "/etc/ld.so.cache",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(limits.tmpfs_mb * 1024 * 1024),
        "--tmpfs",
        WORKDIR,
        "--remount-ro",
        "/",
        "--chdir",
        WORKDIR,
    ]
    return argv


def _python_candidates(configured: str | None) -> list[str]:
    if configured:
        return [configured]
    own = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    # A pyenv or /root install is not readable by nobody; the system Python is.
    return list(dict.fromkeys([own, "/usr/bin/python3"]))


# A working sandbox is remembered for good; a failed probe only briefly, so a probe
# that timed out on a busy host does not switch code verification off for the process.
_FAILED_PROBE_TTL_S = 30.0
_probes: dict[tuple[str, str | None], tuple[float, _Isolation | str]] = {}


def _isolation(bwrap: str, python: str | None) -> _Isolation | str:
    """The sandbox this host can make, or why it cannot."""
    key = (bwrap, python)
    cached = _probes.get(key)
    if cached is not None and (
        isinstance(cached[1], _Isolation) or time.monotonic() - cached[0] < _FAILED_PROBE_TTL_S
    ):
        return cached[1]
    found = _probe(bwrap, python)
    _probes[key] = (time.monotonic(), found)
    return found


def _probe(bwrap: str, python: str | None) -> _Isolation | str:
    exe = shutil.which(bwrap)
    if exe is None:
        return f"bubblewrap ({bwrap!r}) is not installed"
    reasons = []
    for candidate in _python_candidates(python):
        real = os.path.realpath(candidate)
        if not os.path.isfile(real):
            reasons.append(f"{candidate}: no such interpreter")
            continue
        argv = _bwrap_argv(exe, real, SandboxLimits(), None) + [
            real,
            "-I",
            "-S",
            "-B",
            "-c",
            "import ctypes, json, resource, subprocess; print('ok')",
        ]
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                timeout=20,
                env={"PATH": "/usr/bin:/bin"},
                **_drop_to_nobody(),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            reasons.append(f"{candidate}: {exc}")
            continue
        if done.returncode == 0 and done.stdout.strip() == b"ok":
            return _Isolation(exe, real)
        last = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        reasons.append(f"{candidate}: {last[0][:200]}")
    return "bubblewrap cannot start a sandbox here (" + "; ".join(reasons) + ")"


def _unavailable_message(reason: str) -> str:
    return (
        f"code verification unavailable on this host: {reason}. Install bubblewrap "
        "(Debian: apt-get install bubblewrap) and enable unprivileged user namespaces, or "
        "set [sandbox] allow_unsafe_unsandboxed = true (PONDER_SANDBOX__ALLOW_UNSAFE_UNSANDBOXED"
        "=true) to run model-written code without isolation."
    )


def sandbox_status(settings: SandboxSettings | None = None) -> str | None:
    """None when untrusted code runs sandboxed here; else why it cannot."""
    s = settings or _settings
    iso = _isolation(s.bwrap, s.python)
    return iso if isinstance(iso, str) else None


def check_sandbox(settings: SandboxSettings | None = None) -> None:
    """Raise :class:`SandboxUnavailable` when code may not run here (cheap after the first call).

    Callers that would charge for work before running code (a gateway request
    planned for code verification) call this first, so a refusal costs nothing.
    """
    s = settings or _settings
    reason = sandbox_status(s)
    if reason is not None and not s.allow_unsafe_unsandboxed:
        raise SandboxUnavailable(_unavailable_message(reason))


def _check_file_names(files: dict[str, str]) -> None:
    for name in files:
        if not name or "/" in name or name in (".", "..", "main.py") or "\0" in name:
            raise ValueError(f"sandbox file name {name!r} must be a plain file name")


def run_python(
    code: str,
    *,
    tests: Sequence[str] = (),
    stdin: str = "",
    limits: SandboxLimits | None = None,
    files: dict[str, str] | None = None,
    settings: SandboxSettings | None = None,
) -> SandboxResult:
    """Run ``code`` (then each test snippet, judged outside the program) in the sandbox.

    Blocking; use :func:`arun_python` from async code. Never raises for anything the
    candidate does: failures come back in the result. Raises
    :class:`SandboxUnavailable` when the host cannot isolate and unsafe runs are off.
    """
    lim = limits or SandboxLimits()
    s = settings or _settings
    files = dict(files or {})
    _check_file_names(files)
    iso = _isolation(s.bwrap, s.python)
    if isinstance(iso, str):
        if not s.allow_unsafe_unsandboxed:
            raise SandboxUnavailable(_unavailable_message(iso))
        log.warning("running model-written code WITHOUT a sandbox (%s)", iso)
    cfg: dict[str, Any] = {
        "program": code,
        "tests": list(tests),
        "stdin": stdin,
        "files": files,
        "limits": {
            "memory_mb": lim.memory_mb,
            "file_mb": lim.file_mb,
            "cpu_s": max(1, int(lim.timeout_s) + 1),
            "open_files": lim.open_files,
            "processes": lim.processes,
        },
    }
    with tempfile.TemporaryDirectory(prefix="ponder-sandbox-") as tmp:
        paths = {k: os.path.join(tmp, k) for k in ("verdict", "judge", "stdout", "stderr")}
        handles = {k: open(p, "wb") for k, p in paths.items()}  # noqa: SIM115 - closed below
        info_r, info_w = os.pipe()
        try:
            out_fd, err_fd = handles["stdout"].fileno(), handles["stderr"].fileno()
            popen: dict[str, Any] = {}
            if isinstance(iso, _Isolation):
                workdir = WORKDIR
                argv = [*_bwrap_argv(iso.bwrap, iso.python, lim, info_w), iso.python]
                popen = _drop_to_nobody()
                cwd = "/"
            else:
                workdir = cwd = os.path.join(tmp, "work")
                os.mkdir(cwd, 0o700)
                argv = [sys.executable]
            argv += ["-I", "-S", "-B", "-c", _HARNESS, "judge", str(out_fd), str(err_fd), workdir]
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=handles["verdict"],
                stderr=handles["judge"],
                pass_fds=(out_fd, err_fd, info_w),
                cwd=cwd,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True,
                close_fds=True,
                **popen,
            )
            os.close(info_w)
            info_w = -1
            timed_out = False
            try:
                proc.communicate(
                    json.dumps(cfg).encode(), timeout=lim.timeout_s + STARTUP_ALLOWANCE_S
                )
            except subprocess.TimeoutExpired:
                timed_out = True
            except BrokenPipeError:
                pass
            finally:
                _end(proc, _sandbox_pid(info_r))
        finally:
            for h in handles.values():
                h.close()
            for fd in (info_r, info_w):
                if fd >= 0:
                    os.close(fd)
        verdict = _read_capped(paths["verdict"], 4 * lim.output_chars + 100_000)
        judge_err = _read_capped(paths["judge"], lim.output_chars)
        stdout = _read_capped(paths["stdout"], lim.output_chars)
        stderr = _read_capped(paths["stderr"], lim.output_chars)
    return _parse(
        verdict,
        stdout,
        (stderr + ("\n" + judge_err if judge_err.strip() else "")).strip(),
        proc.returncode,
        timed_out,
        list(tests),
        lim,
        sandboxed=isinstance(iso, _Isolation),
    )


def _sandbox_pid(info_r: int) -> int | None:
    """The host pid of the sandbox's pid 1, from bwrap's ``--info-fd`` (if it got that far)."""
    os.set_blocking(info_r, False)
    try:
        data = os.read(info_r, 4096)
    except (BlockingIOError, OSError):
        return None
    try:
        pid = json.loads(data.decode()).get("child-pid")
    except (ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) and pid > 1 else None


def _end(proc: subprocess.Popen[bytes], sandbox_pid: int | None) -> None:
    # Killing the sandbox's pid 1 makes the kernel kill every process in its pid
    # namespace; bwrap exits only once they are gone, so nothing outlives this call.
    if proc.poll() is None and sandbox_pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(sandbox_pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if sandbox_pid is not None:
        _wait_gone(sandbox_pid, 5.0)


def _wait_gone(pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[-1].split()[0]
        except (OSError, IndexError):
            return
        if state in (b"Z", b"X"):
            return
        time.sleep(0.005)


def _read_capped(path: str, limit: int) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit)
    except OSError:
        return ""


def _parse(
    verdict: str,
    stdout: str,
    stderr: str,
    returncode: int | None,
    timed_out: bool,
    tests: list[str],
    lim: SandboxLimits,
    *,
    sandboxed: bool,
) -> SandboxResult:
    results: dict[int, TestResult] = {}
    done = False
    error: str | None = None
    for line in verdict.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if not isinstance(msg, dict):
            continue
        if "load_error" in msg:
            error = str(msg["load_error"])
            stderr = (stderr + "\n" + str(msg.get("trace", ""))).strip()
        elif isinstance(msg.get("test"), int) and 0 <= msg["test"] < len(tests):
            i = msg["test"]
            results[i] = TestResult(tests[i], msg.get("passed") is True, msg.get("error"))
        elif msg.get("done") is True:
            done = True
    if timed_out:
        error = f"timed out after {lim.timeout_s:g}s"
    elif not done and error is None:
        error = _exit_reason(returncode, stderr, sandboxed=sandboxed)
    all_tests = [
        results.get(i, TestResult(t, False, error or "did not run")) for i, t in enumerate(tests)
    ]
    return SandboxResult(
        ok=done and error is None,
        returncode=returncode,
        stdout=stdout[: lim.output_chars],
        stderr=stderr[-lim.output_chars :],
        timed_out=timed_out,
        error=error,
        tests=all_tests,
        sandboxed=sandboxed,
    )


def _exit_reason(returncode: int | None, stderr: str, *, sandboxed: bool) -> str:
    # bwrap reports a child killed by signal N as status 128 + N.
    signum = -returncode if returncode is not None and returncode < 0 else None
    if sandboxed and returncode is not None and 128 < returncode < 128 + 65:
        signum = returncode - 128
    if signum is not None:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        return f"the run was killed by signal {name} before its tests finished"
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    return f"exited early (status {returncode}){': ' + last if last else ''}"


async def arun_python(
    code: str,
    *,
    tests: Sequence[str] = (),
    stdin: str = "",
    limits: SandboxLimits | None = None,
    files: dict[str, str] | None = None,
    settings: SandboxSettings | None = None,
) -> SandboxResult:
    """:func:`run_python` in a worker thread, so the event loop keeps serving."""
    return await asyncio.to_thread(
        run_python, code, tests=tests, stdin=stdin, limits=limits, files=files, settings=settings
    )
