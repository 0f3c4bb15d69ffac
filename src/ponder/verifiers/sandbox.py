"""Run untrusted Python in a contained subprocess.

Layers, each enough for the common hostile cases and together hard to slip:

- a fresh interpreter (``-I -S -B``: no site-packages, no environment, no
  bytecode writes) in a temporary directory, with an empty environment;
- resource limits set before the candidate runs: address space (memory), CPU
  seconds, file size, no core dumps;
- an audit hook the candidate cannot remove that refuses sockets, process
  creation (fork, exec, spawn, subprocess), signals to other processes,
  ctypes, and opening files outside its directory (the standard library stays
  readable so imports work);
- a network namespace with no interfaces when ``unshare -rn`` works on the host;
- a wall-clock timeout after which the whole process group is killed.

Results travel back as lines tagged with a random nonce that the candidate never
sees, so a program that exits early (``sys.exit(0)``, ``os._exit``) or prints
fake results is reported as failed, never as passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SandboxLimits", "SandboxResult", "TestResult", "arun_python", "run_python"]


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run."""

    timeout_s: float = 5.0
    memory_mb: int = 512
    file_mb: int = 4
    output_chars: int = 20_000


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

    @property
    def passed(self) -> int:
        return sum(t.passed for t in self.tests)

    @property
    def all_passed(self) -> bool:
        return self.ok and all(t.passed for t in self.tests)


# Runs inside the sandboxed interpreter. It reads its configuration (nonce, tests,
# stdin) from its own stdin before any candidate code exists in the process.
_BOOT = r"""
import io, json, os, resource, sys
cfg = json.loads(sys.stdin.read())
NONCE = cfg.pop("nonce")
TESTS = cfg.pop("tests")
_out = sys.stdout
def _emit(obj):
    _out.write(NONCE + json.dumps(obj) + "\n")
    _out.flush()
mem = cfg["memory_mb"] * 1024 * 1024
for lim, val in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cfg["cpu_s"]),
                 (resource.RLIMIT_FSIZE, cfg["file_mb"] * 1024 * 1024), (resource.RLIMIT_CORE, 0)):
    try:
        resource.setrlimit(lim, (val, val))
    except (ValueError, OSError):
        pass
HOME = os.path.realpath(os.getcwd())
READ_ONLY = tuple(os.path.realpath(p) for p in cfg["read_only"])
DEVICES = ("/dev/null", "/dev/urandom", "/dev/zero")
BLOCKED = ("socket.", "os.fork", "os.forkpty", "os.exec", "os.spawn", "os.posix_spawn",
           "os.system", "os.popen", "subprocess.", "os.kill", "os.killpg", "signal.pthread_kill",
           "ctypes.", "os.link", "os.symlink", "os.setuid", "os.setgid", "os.chroot",
           "winreg.", "_winapi.", "pty.", "webbrowser.", "os.startfile", "sys.remote_exec")
PATH_EVENTS = {"os.listdir": 0, "os.scandir": 0, "os.remove": 0, "os.rmdir": 0, "os.rename": 0,
               "os.mkdir": 0, "os.chmod": 0, "os.chown": 0, "os.truncate": 0, "os.utime": 0,
               "shutil.rmtree": 0, "os.walk": 0, "glob.glob": 0}
def _inside(path, roots):
    return any(path == r or path.startswith(r + os.sep) for r in roots)
def _hook(event, args):
    if event.startswith(BLOCKED):
        raise PermissionError("sandbox: " + event + " is not allowed")
    if event == "open" or event in PATH_EVENTS:
        path = args[0] if args else None
        if path is None or isinstance(path, int):
            return
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        real = os.path.realpath(os.fspath(path))
        if _inside(real, (HOME,)):
            return
        writing = False
        if event == "open":
            mode = args[1] if len(args) > 1 else "r"
            flags = args[2] if len(args) > 2 else 0
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
        if not writing and (real in DEVICES or (event == "open" and _inside(real, READ_ONLY))):
            return
        raise PermissionError("sandbox: access to " + str(path) + " is outside the sandbox")
def _expect(value, expected, call):
    if isinstance(value, float) or isinstance(expected, float):
        try:
            if abs(value - expected) <= 1e-6 * max(1.0, abs(expected)):
                return
        except TypeError:
            pass
    elif value == expected:
        return
    raise AssertionError(call + " returned " + repr(value)[:200] + ", expected " + repr(expected)[:200])
with open("main.py") as f:
    SOURCE = f.read()
sys.stdin = io.StringIO(cfg["stdin"])
sys.argv = ["main.py"]
sys.dont_write_bytecode = True
import traceback
sys.addaudithook(_hook)
g = {"__name__": "__main__" if not TESTS else "candidate", "__ponder_expect": _expect}
def _why(exc):
    return (type(exc).__name__ + ": " + str(exc))[:500]
try:
    exec(compile(SOURCE, "main.py", "exec"), g)
except BaseException as exc:
    _emit({"load_error": _why(exc), "trace": traceback.format_exc()[-1500:]})
    _out.flush()
    os._exit(0)
for i, test in enumerate(TESTS):
    try:
        exec(compile(test, "test_%d" % i, "exec"), dict(g))
        _emit({"test": i, "passed": True})
    except BaseException as exc:
        _emit({"test": i, "passed": False, "error": _why(exc)})
_emit({"done": True})
sys.stdout.flush()
os._exit(0)
"""


@functools.cache
def _unshare_works() -> bool:
    """Whether an empty network namespace can be made here (user namespaces allowed)."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        done = subprocess.run(
            [exe, "-rn", sys.executable, "-c", "pass"],
            capture_output=True,
            timeout=10,
            env={},
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _read_only_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    dirs = {paths["stdlib"], paths["platstdlib"], os.path.dirname(os.__file__)}
    return sorted(d for d in dirs if d)


def _read_capped(path: str, limit: int) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit)
    except OSError:
        return ""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_python(
    code: str,
    *,
    tests: Sequence[str] = (),
    stdin: str = "",
    limits: SandboxLimits | None = None,
    files: dict[str, str] | None = None,
) -> SandboxResult:
    """Run ``code`` (then each test snippet, if any) in a sandboxed interpreter.

    Blocking; use :func:`arun_python` from async code. Never raises for anything
    the candidate does: failures come back in the result.
    """
    lim = limits or SandboxLimits()
    nonce = "@@" + secrets.token_hex(16) + "@@"
    cfg: dict[str, Any] = {
        "nonce": nonce,
        "tests": list(tests),
        "stdin": stdin,
        "memory_mb": lim.memory_mb,
        "file_mb": lim.file_mb,
        "cpu_s": max(1, int(lim.timeout_s) + 1),
        "read_only": _read_only_dirs(),
    }
    cmd = [sys.executable, "-I", "-S", "-B", "-c", _BOOT]
    if _unshare_works():
        cmd = [shutil.which("unshare") or "unshare", "-rn", *cmd]
    with tempfile.TemporaryDirectory(prefix="ponder-sandbox-") as tmp:
        work = os.path.join(tmp, "work")
        os.mkdir(work)
        with open(os.path.join(work, "main.py"), "w", encoding="utf-8") as f:
            f.write(code)
        for name, content in (files or {}).items():
            target = os.path.realpath(os.path.join(work, name))
            if not target.startswith(work + os.sep):
                raise ValueError(f"sandbox file name {name!r} must stay inside the sandbox")
            with open(target, "w", encoding="utf-8") as f:
                f.write(content)
        # Output goes to files outside the candidate's directory (it cannot read or
        # rewrite them) and is capped by the file-size limit, so no pipe can fill up.
        out_path, err_path = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        timed_out = False
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd=work,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True,
                close_fds=True,
            )
            try:
                proc.communicate(json.dumps(cfg).encode(), timeout=lim.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            except BrokenPipeError:
                pass
            finally:
                _kill_group(proc)
                proc.wait()
        raw_out = _read_capped(out_path, 4 * lim.output_chars + 100_000)
        stderr = _read_capped(err_path, lim.output_chars)
    return _parse(raw_out, stderr, proc.returncode, timed_out, nonce, list(tests), lim)


def _parse(
    raw_out: str,
    stderr: str,
    returncode: int | None,
    timed_out: bool,
    nonce: str,
    tests: list[str],
    lim: SandboxLimits,
) -> SandboxResult:
    stdout_lines: list[str] = []
    results: dict[int, TestResult] = {}
    done = False
    error: str | None = None
    for line in raw_out.splitlines():
        if not line.startswith(nonce):
            stdout_lines.append(line)
            continue
        try:
            msg = json.loads(line[len(nonce) :])
        except ValueError:
            continue
        if "load_error" in msg:
            error = msg["load_error"]
            stderr = (stderr + "\n" + msg.get("trace", "")).strip()
        elif "test" in msg and isinstance(msg["test"], int) and 0 <= msg["test"] < len(tests):
            i = msg["test"]
            results[i] = TestResult(tests[i], bool(msg.get("passed")), msg.get("error"))
        elif msg.get("done"):
            done = True
    if timed_out:
        error = f"timed out after {lim.timeout_s:g}s"
    elif not done and error is None:
        error = _exit_reason(returncode, stderr)
    all_tests = [
        results.get(i, TestResult(t, False, error or "did not run")) for i, t in enumerate(tests)
    ]
    return SandboxResult(
        ok=done and error is None,
        returncode=returncode,
        stdout="\n".join(stdout_lines)[: lim.output_chars],
        stderr=stderr[-lim.output_chars :],
        timed_out=timed_out,
        error=error,
        tests=all_tests,
    )


def _exit_reason(returncode: int | None, stderr: str) -> str:
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by signal {name}"
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    return f"exited early (status {returncode}){': ' + last if last else ''}"


async def arun_python(
    code: str,
    *,
    tests: Sequence[str] = (),
    stdin: str = "",
    limits: SandboxLimits | None = None,
    files: dict[str, str] | None = None,
) -> SandboxResult:
    """:func:`run_python` in a worker thread, so the event loop keeps serving."""
    return await asyncio.to_thread(
        run_python, code, tests=tests, stdin=stdin, limits=limits, files=files
    )
