"""The sandbox against hostile candidates: each escape is contained, on a host that can
isolate (bubblewrap) and on one that cannot (where the code is refused, never run).

Tests that need bubblewrap skip when it is missing, unless ``PONDER_REQUIRE_SANDBOX=1``
(CI), where a missing sandbox fails them.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ponder.backends.fake import FakeBackend
from ponder.budget.metered import MeteredBackend
from ponder.config import SandboxSettings, ServerSettings
from ponder.server.app import create_app
from ponder.strategies import ProgramAided, RunContext
from ponder.strategies.base import SamplingDefaults
from ponder.types import Budget, Problem, as_messages
from ponder.verifiers import sandbox as sandbox_module
from ponder.verifiers.sandbox import (
    SandboxLimits,
    SandboxUnavailable,
    arun_python,
    check_sandbox,
    run_python,
    sandbox_status,
)

LIMITS = SandboxLimits(timeout_s=3.0, memory_mb=256)
SECRET = "ponder-test-secret-8d1f9c"
# bwrap pointed at a binary that does not exist: the host "cannot isolate".
NO_SANDBOX = SandboxSettings(bwrap="/nonexistent/bwrap")
UNSAFE = SandboxSettings(bwrap="/nonexistent/bwrap", allow_unsafe_unsandboxed=True)


@pytest.fixture
def runs_without_sandbox() -> None:
    """Marks a test that needs no sandbox on this host (it checks the refusal)."""


@pytest.fixture(autouse=True)
def _sandbox_required(request: pytest.FixtureRequest) -> None:
    if "runs_without_sandbox" in request.fixturenames:
        return
    reason = sandbox_status()
    if reason is None:
        return
    if os.environ.get("PONDER_REQUIRE_SANDBOX") == "1":
        pytest.fail(f"PONDER_REQUIRE_SANDBOX=1 but {reason}")
    pytest.skip(f"no sandbox on this host: {reason}")


@pytest.fixture(autouse=True)
def _parent_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every run below has a secret in the parent's environment that must never show.
    monkeypatch.setenv("PONDER_TEST_SECRET", SECRET)


def _shadow_secret() -> str:
    """A line of the host's /etc/shadow that only a privileged reader could print."""
    try:
        lines = Path("/etc/shadow").read_text().splitlines()
    except OSError:
        return "root:"  # not readable by this test either: its first field must not show
    return next(ln for ln in lines if ln.startswith("root:"))


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _everything(result: sandbox_module.SandboxResult) -> str:
    return result.stdout + result.stderr + (result.error or "") + repr(result.tests)


# ----------------------------------------------------------------------------- the escapes

SHADOW_VIA_BASH = (
    "import subprocess\n"  # subprocess is _posixsubprocess.fork_exec underneath
    "out = subprocess.run(['bash', '-c', 'id -u; cat /etc/shadow'], capture_output=True, text=True)\n"
    "print('uid', out.stdout, out.stderr)\n"
)


def test_fork_exec_runs_bash_only_as_nobody_and_cannot_read_etc_shadow() -> None:
    code = (
        "import _posixsubprocess, os, subprocess\n"
        "assert subprocess._fork_exec is _posixsubprocess.fork_exec\n" + SHADOW_VIA_BASH
    )
    result = run_python(code, limits=LIMITS)

    assert result.sandboxed
    assert result.ok, result.error  # bash itself runs: the boundary is the OS, not a hook
    assert result.stdout.startswith("uid 65534")
    assert "No such file or directory" in result.stdout  # /etc is not in the sandbox
    assert _shadow_secret() not in _everything(result)


def test_reading_etc_shadow_directly_fails() -> None:
    result = run_python("print(open('/etc/shadow').read())", tests=["assert True"], limits=LIMITS)

    assert not result.ok and result.passed == 0
    assert "FileNotFoundError" in (result.error or "")
    assert _shadow_secret() not in _everything(result)


def test_the_host_filesystem_is_invisible_and_the_system_read_only(tmp_path: Path) -> None:
    code = (
        "import os\n"
        f"print(os.path.exists({str(tmp_path)!r}), os.path.exists('/work'), os.path.exists('/root'),"
        " os.path.exists('/home'))\n"
        "for target in ('/usr/ponder_escape', '/ponder_escape', '/etc/ponder_escape'):\n"
        "    try:\n"
        "        open(target, 'w').write('x')\n"
        "        print('wrote', target)\n"
        "    except OSError as exc:\n"
        "        print(type(exc).__name__)\n"
    )
    result = run_python(code, limits=LIMITS)

    assert result.ok, result.error
    assert result.stdout.splitlines()[0] == "False False False False"
    assert "wrote" not in result.stdout
    assert not any(Path(p).exists() for p in ("/usr/ponder_escape", "/ponder_escape"))


def test_a_setsid_double_fork_survivor_dies_at_the_timeout() -> None:
    marker = f"ponder-survivor-{os.getpid()}-{time.monotonic_ns()}"
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
        "print('forked', flush=True)\n"
        "time.sleep(60)\n"
    )
    result = run_python(code, limits=SandboxLimits(timeout_s=3.0))

    assert result.timed_out and result.stdout.strip() == "forked"
    assert _processes_with(marker) == []


def test_a_survivor_of_a_program_that_finished_is_gone_too() -> None:
    marker = f"ponder-lingerer-{os.getpid()}-{time.monotonic_ns()}"
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
        "print('done')\n"
    )
    result = run_python(code, limits=LIMITS)

    assert result.ok and result.stdout.strip() == "done"
    assert _processes_with(marker) == []


def test_rename_and_replace_cannot_move_files_out_of_the_work_dir(tmp_path: Path) -> None:
    outside = [str(tmp_path / "moved"), "/usr/ponder_moved", "/ponder_moved", "/proc/ponder_moved"]
    code = (
        "import os\n"
        "open('f', 'w').write('x')\n"
        f"for target in {outside!r}:\n"
        "    for move in (os.rename, os.replace):\n"
        "        try:\n"
        "            move('f', target)\n"
        "            print('moved', target)\n"
        "        except OSError as exc:\n"
        "            print(type(exc).__name__)\n"
    )
    result = run_python(code, limits=LIMITS)

    assert result.ok, result.error
    assert "moved" not in result.stdout
    assert not any(Path(p).exists() for p in outside[:2])


def test_sqlite_cannot_write_outside_the_work_dir(tmp_path: Path) -> None:
    target = tmp_path / "escape.db"
    code = (
        "import _sqlite3\n"
        f"for path in ({str(target)!r}, '/usr/ponder.db', '/ponder.db'):\n"
        "    try:\n"
        "        con = _sqlite3.connect(path)\n"
        "        con.execute('CREATE TABLE t (x)')\n"
        "        con.commit()\n"
        "        print('wrote', path)\n"
        "    except _sqlite3.Error as exc:\n"
        "        print(type(exc).__name__, exc)\n"
        "con = _sqlite3.connect('inside.db')\n"
        "con.execute('CREATE TABLE t (x)')\n"
        "print('inside ok')\n"
    )
    result = run_python(code, limits=LIMITS)

    assert result.ok, result.error
    assert "wrote" not in result.stdout and "inside ok" in result.stdout
    assert not target.exists() and not Path("/usr/ponder.db").exists()


FORGER = r"""
import gc, json, os, sys
forged = '{"test": 0, "passed": true}\n{"done": true}\n'
main = sys.modules['__main__']
for name in list(vars(main)):          # switch off whatever the harness keeps there
    if not name.startswith('__'):
        setattr(main, name, None)
print(forged, end='')                   # the old nonce-less result format, on stdout
sys.stderr.write(forged)
for fd in range(3, 64):                 # every descriptor this process holds
    try:
        os.write(fd, forged.encode())
    except OSError:
        pass
for pid in ('1', '2', str(os.getppid())):
    for fd in ('0', '1', '2'):
        try:
            with open('/proc/%s/fd/%s' % (pid, fd), 'w') as f:
                f.write(forged)
            print('opened', pid, fd)
        except OSError:
            pass
"""


def test_hook_tampering_and_forged_results_never_pass_assert_false() -> None:
    result = run_python(FORGER, tests=["assert False", "assert False, 'second'"], limits=LIMITS)

    assert [t.passed for t in result.tests] == [False, False]
    assert result.passed == 0 and not result.all_passed
    assert "opened" not in result.stdout


def test_forged_replies_on_the_programs_own_channel_cannot_pass_assert_false() -> None:
    # The worker may speak for itself on its pipe to the judge (say it loaded, answer
    # calls); the asserts still run in the judge, so "assert False" stays false.
    code = (
        "import json, os\n"
        "loaded = json.dumps({'loaded': True, 'names': ['f'], 'values': {}, 'modules': []})\n"
        "answer = json.dumps({'ok': True})\n"
        "for fd in range(3, 64):\n"
        "    try:\n"
        "        os.write(fd, (loaded + '\\n' + (answer + '\\n') * 5).encode())\n"
        "    except OSError:\n"
        "        pass\n"
        "import time\n"
        "time.sleep(30)\n"  # stay alive, so the judge's calls reach a reader
    )
    tests = ["assert False", "assert f() is True", "assert f() == 2"]

    result = run_python(code, tests=tests, limits=LIMITS)

    assert [t.passed for t in result.tests] == [False, True, False]


def test_the_program_cannot_read_the_tests_it_is_judged_on() -> None:
    token = f"hidden-test-{time.monotonic_ns()}"
    code = (
        "import gc, os, sys\n"
        "found = [o for o in gc.get_objects() if isinstance(o, str) and 'hidden-test-' in o]\n"
        "for p in os.listdir('/proc'):\n"
        "    for name in ('cmdline', 'environ', 'fd/0', 'mem'):\n"
        "        try:\n"
        "            data = open('/proc/%s/%s' % (p, name), 'rb').read(1 << 20)\n"
        "            found += [data.decode(errors='replace')] if b'hidden-test-' in data else []\n"
        "        except OSError:\n"
        "            pass\n"
        "print(found)\n"
        "def f():\n"
        "    return 1\n"
    )

    result = run_python(code, tests=[f"assert f() == 1, {token!r}"], limits=LIMITS)

    assert result.tests[0].passed
    assert token not in result.stdout


def test_a_value_that_equals_everything_does_not_pass_a_test() -> None:
    code = (
        "class Anything:\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "    __hash__ = object.__hash__\n"
        "def f():\n"
        "    return Anything()\n"
        "sorted = lambda *a, **k: 1\n"  # shadowing a builtin the test uses
        "def g():\n"
        "    return [3, 1]\n"
    )
    tests = ["assert f() == 5", "assert sorted(g()) == [1, 2]", "assert sorted(g()) == [1, 3]"]

    result = run_python(code, tests=tests, limits=LIMITS)

    assert [t.passed for t in result.tests] == [False, False, True]


def test_the_parents_proc_environ_and_mem_are_out_of_reach() -> None:
    host_pid = os.getpid()
    code = (
        "import os\n"
        f"print('host pid visible', os.path.exists('/proc/{host_pid}'))\n"
        "print('pids', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
        "for pid in (os.getppid(), 1):\n"
        "    for name in ('environ', 'mem', 'cmdline'):\n"
        "        try:\n"
        "            with open('/proc/%d/%s' % (pid, name), 'rb') as f:\n"
        "                data = f.read(1 << 16)\n"
        "            print(pid, name, 'read', data[:2000])\n"
        "        except OSError as exc:\n"
        "            print(pid, name, type(exc).__name__)\n"
    )
    result = run_python(code, limits=LIMITS)

    assert result.ok, result.error
    lines = result.stdout.splitlines()
    assert lines[0] == "host pid visible False"
    assert max(eval(lines[1][len("pids ") :])) <= 8  # only the sandbox's own few processes
    judge = [ln for ln in lines[2:] if ln.startswith(str(_ppid_of(lines)))]
    assert any("environ PermissionError" in ln for ln in judge)
    assert any("mem PermissionError" in ln for ln in judge)
    assert SECRET not in _everything(result)


def _ppid_of(lines: list[str]) -> int:
    return int(lines[2].split()[0])


def test_a_socket_to_a_server_on_the_hosts_loopback_fails() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[object] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            accepted.append(conn)
            conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        code = (
            "import socket\n"
            "for host in ('127.0.0.1', 'localhost'):\n"
            "    try:\n"
            f"        socket.create_connection((host, {port}), timeout=1).sendall(b'hi')\n"
            "        print('connected', host)\n"
            "    except OSError as exc:\n"
            "        print(type(exc).__name__)\n"
        )
        result = run_python(code, limits=LIMITS)
    finally:
        stop.set()
        thread.join()
        server.close()

    assert result.ok, result.error
    assert "connected" not in result.stdout
    assert accepted == []


def test_a_fork_bomb_stops_at_the_process_limit_and_leaves_nothing_behind() -> None:
    marker = f"ponder-bomb-{os.getpid()}-{time.monotonic_ns()}"
    code = (
        "import os, sys, time\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        f"            os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
        "        n += 1\n"
        "except OSError as exc:\n"
        "    print('stopped after', n, type(exc).__name__, flush=True)\n"
    )
    result = run_python(code, limits=SandboxLimits(timeout_s=5.0, processes=20))

    assert result.ok, result.error
    words = result.stdout.split()
    assert words[:2] == ["stopped", "after"] and int(words[2]) < 20
    assert words[3] in ("BlockingIOError", "PermissionError")
    assert _processes_with(marker) == []


FORK_BOMB_COUNT = (
    "import os, time\n"
    "n = 0\n"
    "try:\n"
    "    while True:\n"
    "        if os.fork() == 0:\n"
    "            time.sleep(30)\n"
    "            os._exit(0)\n"
    "        n += 1\n"
    "except OSError:\n"
    "    print(n, flush=True)\n"
    "time.sleep(1.5)\n"  # hold the processes while the other sandbox forks too
)


def test_the_process_limit_is_per_sandbox_so_one_bomb_cannot_starve_another() -> None:
    counts: list[int] = []

    def bomb() -> None:
        result = run_python(FORK_BOMB_COUNT, limits=SandboxLimits(timeout_s=5.0, processes=20))
        counts.append(int(result.stdout.split()[0]))

    threads = [threading.Thread(target=bomb) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(counts) == 2 and all(10 <= c < 20 for c in counts), counts


def test_the_work_dir_is_size_capped() -> None:
    code = (
        "total = 0\n"
        "try:\n"
        "    for i in range(1000):\n"
        "        with open('fill%d' % i, 'wb') as f:\n"
        "            for _ in range(4):\n"
        "                f.write(b'x' * (1 << 20))\n"
        "                total += 1\n"
        "except OSError as exc:\n"
        "    print(total, exc.errno)\n"
    )

    result = run_python(code, limits=SandboxLimits(timeout_s=10.0, tmpfs_mb=16, file_mb=8))

    total, errno = result.stdout.split()
    assert int(total) <= 16 and int(errno) == 28  # ENOSPC


def test_a_secret_in_the_parents_environment_is_not_visible() -> None:
    code = (
        "import os\n"
        "print(dict(os.environ))\n"
        "for p in os.listdir('/proc'):\n"
        "    try:\n"
        "        print(open('/proc/%s/environ' % p, 'rb').read())\n"
        "    except OSError:\n"
        "        pass\n"
    )
    result = run_python(code, limits=LIMITS)

    assert result.ok, result.error
    assert "'PATH': '/usr/bin:/bin'" in result.stdout
    assert SECRET not in _everything(result)
    assert "PONDER_TEST_SECRET" not in result.stdout


HOSTILE = {
    "infinite loop": "while True:\n    pass\n",
    "huge allocation": "x = bytearray(8 * 1024**3)\n",
    "growing list": "x = []\nwhile True:\n    x.append(' ' * 10**7)\n",
    "flood stdout": "while True:\n    print('x' * 10000)\n",
    "read outside": "print(open('/etc/passwd').read())\n",
    "sys.exit(0)": "import sys\nsys.exit(0)\n",
    "os._exit(0)": "import os\nos._exit(0)\n",
    "kill parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    "kill group": "import os, signal\nos.killpg(0, signal.SIGKILL)\n",
    "ctypes kill": "import ctypes\nctypes.CDLL(None).kill(0, 9)\n",
    "kill everything": "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
    "spoofed result": FORGER + "import sys\nsys.exit(0)\n",
}


@pytest.mark.parametrize("code", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_candidates_are_contained_and_fail(code: str) -> None:
    result = run_python(code, tests=["assert True"], limits=LIMITS)

    assert result.sandboxed
    assert not result.all_passed
    assert result.passed == 0
    assert result.error  # says why


# ----------------------------------------------------------------------------- no sandbox here

ESCAPES = {
    "fork_exec bash": SHADOW_VIA_BASH,
    "etc shadow": "print(open('/etc/shadow').read())\n",
    "forger": FORGER,
    "environment": "import os\nprint(dict(os.environ))\n",
    **HOSTILE,
}


@pytest.mark.parametrize("code", ESCAPES.values(), ids=ESCAPES.keys())
def test_without_isolation_code_is_refused_not_run(
    code: str, tmp_path: Path, runs_without_sandbox: None
) -> None:
    ran = tmp_path / "ran"
    program = f"open({str(ran)!r}, 'w').write('x')\n" + code

    with pytest.raises(SandboxUnavailable) as info:
        run_python(program, tests=["assert True"], limits=LIMITS, settings=NO_SANDBOX)

    assert not ran.exists()
    message = info.value.message
    assert message.startswith("code verification unavailable on this host")
    assert "bubblewrap" in message and "allow_unsafe_unsandboxed" in message
    assert info.value.status == 400 and info.value.code == "code_verification_unavailable"


def test_check_sandbox_refuses_up_front_and_the_unsafe_option_lets_code_run(
    runs_without_sandbox: None,
) -> None:
    with pytest.raises(SandboxUnavailable):
        check_sandbox(NO_SANDBOX)
    check_sandbox(UNSAFE)  # the operator said so

    result = run_python("print(6 * 7)", tests=["assert True"], settings=UNSAFE)

    assert result.ok and result.stdout.strip() == "42" and not result.sandboxed
    assert result.tests[0].passed


@pytest.fixture
def bwrap_without_user_namespaces() -> Iterator[str]:
    """A bwrap that fails as it does where user namespaces are disabled."""
    folder = tempfile.mkdtemp(prefix="ponder-fake-bwrap-")
    os.chmod(folder, 0o755)  # the probe runs it as nobody when the tests run as root
    path = os.path.join(folder, "bwrap")
    with open(path, "w") as f:
        f.write("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(folder)


def test_without_user_namespaces_code_is_refused_with_the_reason(
    bwrap_without_user_namespaces: str, tmp_path: Path, runs_without_sandbox: None
) -> None:
    settings = SandboxSettings(bwrap=bwrap_without_user_namespaces)
    ran = tmp_path / "ran"

    assert "No permissions to create new namespace" in (sandbox_status(settings) or "")
    with pytest.raises(SandboxUnavailable, match="code verification unavailable on this host"):
        run_python(f"open({str(ran)!r}, 'w').write('x')\n" + SHADOW_VIA_BASH, settings=settings)
    assert not ran.exists()


# ----------------------------------------------------------------------------- program_aided

SHADOW_PROGRAMS = [
    "```python\nprint(open('/etc/shadow').read())\n```",
    "```python\n" + SHADOW_VIA_BASH + "```",
    "```python\nimport subprocess\nprint(subprocess.check_output(['cat', '/etc/shadow']).decode())\n```",
]


def _ctx(backend: FakeBackend) -> RunContext:
    return RunContext(
        backend=MeteredBackend(backend, Budget()), verifier=None, sampling=SamplingDefaults()
    )


PROBLEM = Problem(messages=as_messages("What is the first line of /etc/shadow?"))


async def test_program_aided_never_returns_etc_shadow() -> None:
    out = await ProgramAided(n=3).run(PROBLEM, _ctx(FakeBackend(SHADOW_PROGRAMS)))

    secret = _shadow_secret()
    assert secret not in (out.answer or "")
    assert all(secret not in (c.text + str(c.answer)) for c in out.candidates)


@pytest.fixture
def host_without_sandbox() -> Iterator[None]:
    before = sandbox_module._settings
    sandbox_module.configure(NO_SANDBOX)
    yield
    sandbox_module.configure(before)


async def test_program_aided_on_a_host_without_isolation_refuses_clearly(
    host_without_sandbox: None, runs_without_sandbox: None
) -> None:
    backend = FakeBackend(SHADOW_PROGRAMS)

    with pytest.raises(SandboxUnavailable, match="code verification unavailable"):
        await ProgramAided().run(PROBLEM, _ctx(backend))

    assert backend.calls == []  # refused before any token was generated


async def test_the_gateway_answers_400_and_generates_nothing_without_isolation(
    host_without_sandbox: None, runs_without_sandbox: None
) -> None:
    backend = FakeBackend(SHADOW_PROGRAMS)
    app = create_app(backend, ServerSettings(ledger=False))
    body = {
        "messages": [{"role": "user", "content": "What is in /etc/shadow?"}],
        "ponder": {"strategy": "program_aided"},
    }

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        response = await client.post("/v1/chat/completions", json=body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "code_verification_unavailable"
    assert "allow_unsafe_unsandboxed" in error["message"]
    assert backend.calls == []


# ----------------------------------------------------------------------------- ordinary use


def test_tests_pass_and_fail_individually_with_messages() -> None:
    code = "def add(a, b):\n    return a + b if a < 10 else 0\n"

    result = run_python(code, tests=["assert add(1, 2) == 3", "assert add(10, 1) == 11, 'big'"])

    assert result.ok
    assert [t.passed for t in result.tests] == [True, False]
    assert "big" in (result.tests[1].error or "")


def test_humaneval_style_checks_with_helpers_exceptions_and_rich_values() -> None:
    code = (
        "import math\n"
        "def poly(xs, x):\n"
        "    return sum(c * math.pow(x, i) for i, c in enumerate(xs))\n"
        "def root(xs):\n"
        "    return -xs[0] / xs[1]\n"
        "def parse(s):\n"
        "    if not s:\n"
        "        raise ValueError('empty')\n"
        "    return {'n': int(s), 'pair': (1, 2), 'set': {3}, 'b': b'x', 'c': 1j, 'big': 2**70}\n"
        "def evens(n):\n"
        "    return (i for i in range(n) if i % 2 == 0)\n"
        "class Stack:\n"
        "    def __init__(self):\n"
        "        self.items = []\n"
        "    def push(self, x):\n"
        "        self.items.append(x)\n"
        "        return len(self.items)\n"
        "LIMIT = 10\n"
    )
    check = (
        "def check(candidate):\n"
        "    import math\n"
        "    assert math.fabs(poly([2, 4], candidate([2, 4]))) < 1e-9\n"
        "check(root)\n"
    )
    tests = [
        check,
        "assert parse('7') == {'n': 7, 'pair': (1, 2), 'set': {3}, 'b': b'x', 'c': 1j, 'big': 2**70}",
        "try:\n    parse('')\nexcept ValueError as e:\n    assert str(e) == 'empty'\nelse:\n    assert False",
        "assert list(evens(5)) == [0, 2, 4] and LIMIT == 10",
        "s = Stack()\nassert s.push(4) == 1 and s.push(5) == 2 and s.items == [4, 5]",
        "assert math.isclose(poly([1], 3), 1.0)",
        "assert root([2, 4]) == 0",
    ]

    result = run_python(code, tests=tests, limits=LIMITS)

    assert [t.passed for t in result.tests] == [True] * 6 + [False], result.tests
    assert "AssertionError" in (result.tests[-1].error or "")


def test_a_big_global_table_stays_in_the_program_and_small_ones_reach_the_tests() -> None:
    code = "TABLE = list(range(2_000_000))\nSMALL = [1, 2]\ndef f(i):\n    return TABLE[i]\n"

    result = run_python(code, tests=["assert f(5) == 5 and SMALL == [1, 2]"], limits=LIMITS)

    assert result.ok and result.tests[0].passed, result.tests


def test_a_candidate_that_exits_while_tests_run_fails_the_tests_that_call_it() -> None:
    code = "import os, sys\ndef f():\n    sys.exit(0)\ndef g():\n    os._exit(3)\ndef h():\n    return 1\n"

    result = run_python(code, tests=["f()", "assert h() == 1", "g()", "assert h() == 1"])

    assert [t.passed for t in result.tests] == [False, True, False, False]
    assert "SystemExit" in (result.tests[0].error or "")
    assert "ended" in (result.tests[2].error or "")


def test_standard_library_imports_and_own_directory_files_work() -> None:
    code = (
        "import json, collections, math, re, itertools\n"
        "open('note.txt', 'w').write('hi')\n"
        "print(json.dumps({'r': open('note.txt').read(), 'pi': round(math.pi, 2)}))\n"
    )

    result = run_python(code, stdin="", limits=LIMITS)

    assert result.ok, result.error
    assert result.stdout.strip() == '{"r": "hi", "pi": 3.14}'


def test_stdin_and_extra_files_reach_the_program() -> None:
    result = run_python(
        "print(input()[::-1], open('data.txt').read())", stdin="abc\n", files={"data.txt": "d"}
    )

    assert result.stdout.strip() == "cba d"


def test_a_timed_out_candidate_reports_what_it_printed() -> None:
    result = run_python(
        "import time\nprint('started', flush=True)\ntime.sleep(60)\n",
        limits=SandboxLimits(timeout_s=2.0),
    )

    assert result.timed_out and not result.ok
    assert "timed out" in (result.error or "")
    assert result.stdout.strip() == "started"


def test_the_host_process_survives_a_candidate_that_kills_what_it_can() -> None:
    before = os.getpid()

    run_python("import os, signal\nos.kill(-1, signal.SIGKILL)\n", limits=LIMITS)
    result = run_python("print(6 * 7)", limits=LIMITS)

    assert os.getpid() == before
    assert result.ok and result.stdout.strip() == "42"


async def test_async_runs_do_not_block_and_work_off_the_main_thread() -> None:
    out: list[str] = []

    def worker() -> None:
        out.append(run_python("print('thread')").stdout.strip())

    t = threading.Thread(target=worker)
    t.start()
    result = await arun_python("print('loop')")
    t.join()

    assert result.stdout.strip() == "loop"
    assert out == ["thread"]
