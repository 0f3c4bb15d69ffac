"""The sandbox against hostile candidates: each is contained and reported as failed."""

from __future__ import annotations

import os
import threading

import pytest

from ponder.verifiers.sandbox import SandboxLimits, arun_python, run_python

LIMITS = SandboxLimits(timeout_s=3.0, memory_mb=256)

HOSTILE = {
    "infinite loop": "while True:\n    pass\n",
    "fork bomb": "import os\nwhile True:\n    os.fork()\n",
    "subprocess": "import subprocess\nsubprocess.run(['sh', '-c', 'echo pwned > /tmp/ponder_pwned'])\n",
    "huge allocation": "x = bytearray(8 * 1024**3)\n",
    "growing list": "x = []\nwhile True:\n    x.append(' ' * 10**7)\n",
    "read outside": "print(open('/etc/passwd').read())\n",
    "read parent dir": "import os\nprint(os.listdir('..'))\n",
    "write outside": "open('/tmp/ponder_sandbox_escape', 'w').write('x')\n",
    "symlink escape": "import os\nos.symlink('/etc/passwd', 'p')\nprint(open('p').read())\n",
    "socket": "import socket\ns = socket.create_connection(('127.0.0.1', 22), timeout=1)\n",
    "raw _socket": "import _socket\n_socket.socket()\n",
    "sys.exit(0)": "import sys\nsys.exit(0)\n",
    "os._exit(0)": "import os\nos._exit(0)\n",
    "kill parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    "kill group": "import os, signal\nos.killpg(0, signal.SIGKILL)\n",
    "ctypes kill": "import ctypes\nctypes.CDLL(None).kill(0, 9)\n",
    "flood stdout": "while True:\n    print('x' * 10000)\n",
    "spoofed result": "print('@@' + '0' * 32 + '@@{\"test\": 0, \"passed\": true}')\nprint('{\"done\": true}')\nimport sys\nsys.exit(0)\n",
}


@pytest.mark.parametrize("code", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_candidates_are_contained_and_fail(code: str) -> None:
    result = run_python(code, tests=["assert True"], limits=LIMITS)

    assert not result.all_passed
    assert result.passed == 0
    assert result.error  # says why
    assert not os.path.exists("/tmp/ponder_sandbox_escape")
    assert not os.path.exists("/tmp/ponder_pwned")


def test_the_host_process_survives_a_candidate_that_kills_its_parent() -> None:
    before = os.getpid()

    run_python("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", limits=LIMITS)
    result = run_python("print(6 * 7)", limits=LIMITS)

    assert os.getpid() == before
    assert result.ok and result.stdout.strip() == "42"


def test_a_timed_out_candidate_leaves_no_process_behind() -> None:
    result = run_python(
        "import time\nprint('started', flush=True)\ntime.sleep(60)\n",
        limits=SandboxLimits(timeout_s=1.0),
    )

    assert result.timed_out and not result.ok
    assert "timed out" in (result.error or "")
    assert result.stdout.strip() == "started"


def test_tests_pass_and_fail_individually_with_messages() -> None:
    code = "def add(a, b):\n    return a + b if a < 10 else 0\n"

    result = run_python(code, tests=["assert add(1, 2) == 3", "assert add(10, 1) == 11, 'big'"])

    assert result.ok
    assert [t.passed for t in result.tests] == [True, False]
    assert "big" in (result.tests[1].error or "")


def test_a_candidate_that_exits_while_tests_run_fails_the_remaining_tests() -> None:
    code = "import sys\ndef f():\n    sys.exit(0)\n"

    result = run_python(code, tests=["f()", "assert True"])

    assert result.tests[0].passed is False
    assert "SystemExit" in (result.tests[0].error or "")


def test_standard_library_imports_and_own_directory_files_work() -> None:
    code = (
        "import json, collections, math, re, itertools\n"
        "open('note.txt', 'w').write('hi')\n"
        "print(json.dumps({'r': open('note.txt').read(), 'pi': round(math.pi, 2)}))\n"
    )

    result = run_python(code, stdin="", limits=LIMITS)

    assert result.ok, result.error
    assert result.stdout.strip() == '{"r": "hi", "pi": 3.14}'


def test_stdin_reaches_the_program() -> None:
    result = run_python("print(input()[::-1])", stdin="abc\n")

    assert result.stdout.strip() == "cba"


def test_environment_secrets_do_not_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PONDER_SECRET_TOKEN", "hunter2")

    result = run_python("import os\nprint(dict(os.environ))")

    assert "hunter2" not in result.stdout


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
