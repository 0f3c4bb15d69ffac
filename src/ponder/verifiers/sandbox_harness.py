"""The judge and the candidate's worker: the two processes inside the sandbox.

Executed by a bare interpreter in the sandbox (``python -I -S -B -c <this source>
judge``): standard library only, Python 3.8+. The judge forks the worker before it
reads its job, makes itself non-dumpable and evaluates every test itself on plain
values decoded from the worker's replies, so the program can fail a test but never
write a verdict (the design is in :mod:`ponder.verifiers.sandbox`).
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import resource
import sys
from collections.abc import Callable, Iterator
from typing import Any, cast

__all__ = ["decode", "encode", "main"]

MAX_MESSAGE = 8 * 1024 * 1024
MAX_DEPTH = 200
MAX_ITEMS = 100_000
MAX_GLOBAL = 256 * 1024


class ProtocolError(Exception):
    """A reply from the worker that is not a well-formed message."""


# ----------------------------------------------------------------------------- values


def encode(value: Any, refs: list[Any] | None = None, depth: int = 0) -> Any:
    """``value`` as JSON-ready data; objects that are not plain data become handles in ``refs``."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply to leave the sandbox")
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return value if abs(value) < 2**53 else {"$": "int", "v": str(value)}
    if kind is float:
        return (
            value
            if value == value and abs(value) != float("inf")
            else {"$": "float", "v": repr(value)}
        )
    nxt = depth + 1
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return encode(int.__index__(value), refs, depth)
    if isinstance(value, float):
        return encode(float.__float__(value), refs, depth)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (bytes, bytearray)):
        return {"$": "bytes", "v": bytes(value).hex()}
    if isinstance(value, complex):
        return {"$": "complex", "v": [encode(value.real), encode(value.imag)]}
    if isinstance(value, tuple):
        return {"$": "tuple", "v": [encode(x, refs, nxt) for x in tuple.__iter__(value)]}
    if isinstance(value, list):
        return {"$": "list", "v": [encode(x, refs, nxt) for x in list.__iter__(value)]}
    if isinstance(value, frozenset):
        return {"$": "frozenset", "v": [encode(x, refs, nxt) for x in frozenset.__iter__(value)]}
    if isinstance(value, set):
        return {"$": "set", "v": [encode(x, refs, nxt) for x in set.__iter__(value)]}
    if isinstance(value, dict):
        items = dict.items(value)
        return {"$": "dict", "v": [[encode(k, refs, nxt), encode(v, refs, nxt)] for k, v in items]}
    if isinstance(value, range):
        return {"$": "range", "v": [value.start, value.stop, value.step]}
    if isinstance(value, (_Remote,)):
        return {"$": "ref", "v": value._target}
    if refs is not None and _is_iterator(value):
        out: list[Any] = []
        for item in value:
            if len(out) >= MAX_ITEMS:
                raise ValueError(f"an iterator returned more than {MAX_ITEMS} items")
            out.append(encode(item, refs, nxt))
        return {"$": "iter", "v": out}
    if refs is None:
        raise TypeError(f"{kind.__name__} values cannot be passed into the sandboxed program")
    refs.append(value)
    return {"$": "obj", "v": len(refs) - 1, "type": kind.__name__, "repr": _safe_repr(value)}


def _is_iterator(value: Any) -> bool:
    try:
        return hasattr(type(value), "__next__") and hasattr(type(value), "__iter__")
    except Exception:
        return False


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)[:200]
    except BaseException:
        return f"<{type(value).__name__} object>"


def decode(
    data: Any,
    remote: Channel | None = None,
    depth: int = 0,
    resolve: Callable[[Any], Any] | None = None,
) -> Any:
    """Plain builtin values from :func:`encode`'s output, never running the sender's code
    (``remote``: handles to :class:`RemoteObject`; ``resolve``: references to objects)."""
    if depth > MAX_DEPTH:
        raise ProtocolError("value nested too deeply")
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is not dict or "$" not in data:
        raise ProtocolError("malformed value")
    tag, v = data.get("$"), data.get("v")  # v: whatever the sender put there
    v = cast(Any, v)
    try:
        if tag == "int":
            if type(v) is not str or len(v) > 5000:
                raise ProtocolError("malformed int")
            return int(v)
        if tag == "float":
            return float({"nan": "nan", "inf": "inf", "-inf": "-inf"}[v])
        if tag == "bytes":
            return bytes.fromhex(v)
        if tag == "complex":
            return complex(float(v[0]), float(v[1]))
        if tag == "range":
            return range(int(v[0]), int(v[1]), int(v[2]))
        nxt = depth + 1
        if tag in ("list", "tuple", "set", "frozenset", "iter"):
            if type(v) is not list:
                raise ProtocolError("malformed container")
            items = [decode(x, remote, nxt, resolve) for x in v]
            if tag == "tuple":
                return tuple(items)
            if tag == "set":
                return set(items)
            if tag == "frozenset":
                return frozenset(items)
            return iter(items) if tag == "iter" else items
        if tag == "dict":
            return {decode(k, remote, nxt, resolve): decode(x, remote, nxt, resolve) for k, x in v}
        if tag == "ref" and resolve is not None:
            return resolve(v)
        if tag == "obj" and remote is not None:
            return RemoteObject(
                remote, {"id": int(v)}, str(data.get("type"))[:100], str(data.get("repr"))[:200]
            )
    except ProtocolError:
        raise
    except Exception as exc:  # unhashable keys, bad hex, wrong shapes: all the sender's fault
        raise ProtocolError(f"malformed {tag} value: {type(exc).__name__}") from None
    raise ProtocolError("unknown value tag")


# ----------------------------------------------------------------------------- judge side


class CandidateError(Exception):
    """An exception the program raised that is not a builtin one (its type name is kept)."""


class ProgramGone(Exception):
    """The program's process ended or broke the protocol; it can answer no more calls."""


class Channel:
    """The judge's end of the pipes to the worker."""

    def __init__(self, to_worker: int, from_worker: int) -> None:
        self.writer = os.fdopen(to_worker, "w", encoding="utf-8")
        self.reader = os.fdopen(from_worker, "r", encoding="utf-8", newline="\n")
        self.gone: str | None = None

    def send(self, msg: dict[str, Any]) -> None:
        if self.gone:
            raise ProgramGone(self.gone)
        try:
            self.writer.write(json.dumps(msg) + "\n")
            self.writer.flush()
        except (OSError, ValueError):
            self.gone = "the program's process is gone"
            raise ProgramGone(self.gone) from None

    def receive(self) -> dict[str, Any]:
        if self.gone:
            raise ProgramGone(self.gone)
        try:
            line = self.reader.readline(MAX_MESSAGE + 1)
        except (OSError, ValueError, UnicodeDecodeError):
            line = ""
        if not line.endswith("\n"):
            self.gone = (
                "the program's process ended" if not line else "the program sent a malformed reply"
            )
            raise ProgramGone(self.gone)
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            self.gone = "the program sent a malformed reply"
            raise ProgramGone(self.gone) from None
        if type(msg) is not dict:
            self.gone = "the program sent a malformed reply"
            raise ProgramGone(self.gone)
        return msg

    def request(self, msg: dict[str, Any]) -> Any:
        self.send(msg)
        reply = self.receive()
        if "raised" in reply:
            raise _exception(reply["raised"])
        if "ok" not in reply:
            self.gone = "the program sent a malformed reply"
            raise ProgramGone(self.gone)
        try:
            return decode(reply["ok"], self)
        except (ProtocolError, RecursionError) as exc:
            self.gone = f"the program sent a malformed value ({exc})"
            raise ProgramGone(self.gone) from None


def _exception(info: Any) -> Exception:
    name = str(info.get("type", "Exception")) if type(info) is dict else "Exception"
    message = str(info.get("message", "")) if type(info) is dict else ""
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, ProgramGone):
        try:
            return cls(message)
        except Exception:
            pass
    return CandidateError(f"{name[:100]}: {message}")


class _Remote:
    __slots__ = ("_channel", "_target", "_label")
    _channel: Channel
    _target: dict[str, Any]
    _label: str

    def __init__(self, channel: Channel, target: dict[str, Any], label: str) -> None:
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_label", label)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel.request(
            {
                "op": "call",
                "target": self._target,
                "args": [encode(a) for a in args],
                "kwargs": {str(k): encode(v) for k, v in kwargs.items()},
            }
        )

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return self._channel.request({"op": "getattr", "target": self._target, "attr": attr})

    def _op(self, op: str, *args: Any) -> Any:
        return self._channel.request(
            {"op": op, "target": self._target, "args": [encode(a) for a in args]}
        )

    def __iter__(self) -> Iterator[Any]:
        return iter(self._op("list"))

    def __len__(self) -> int:
        return int(self._op("len"))

    def __getitem__(self, key: Any) -> Any:
        return self._op("getitem", key)

    def __contains__(self, item: Any) -> bool:
        return bool(self._op("contains", item))

    def __bool__(self) -> bool:
        return bool(self._op("bool"))

    def __str__(self) -> str:
        return str(self._op("str"))

    def __repr__(self) -> str:
        return self._label


class RemoteFunction(_Remote):
    """A name the program defines, callable from a test; ``==`` is identity, as for functions."""

    __slots__ = ()

    @property
    def __name__(self) -> str:
        return str(self._target["name"])


class RemoteObject(_Remote):
    """An object the program returned that is not plain data; usable, never equal to a value."""

    __slots__ = ()

    def __init__(
        self, channel: Channel, target: dict[str, Any], type_name: str, shown: str
    ) -> None:
        super().__init__(channel, target, f"<{type_name} from the program: {shown}>")


def _expect(value: Any, expected: Any, call: str) -> None:
    if isinstance(value, float) or isinstance(expected, float):
        try:
            if abs(value - expected) <= 1e-6 * max(1.0, abs(expected)):
                return
        except TypeError:
            pass
    elif value == expected:
        return
    raise AssertionError(
        call + " returned " + repr(value)[:200] + ", expected " + repr(expected)[:200]
    )


def _why(exc: BaseException) -> str:
    return (type(exc).__name__ + ": " + str(exc))[:500]


def _set_limits(limits: dict[str, Any], processes: int | None) -> None:
    mb = 1024 * 1024
    pairs = [
        (resource.RLIMIT_AS, limits["memory_mb"] * mb),
        (resource.RLIMIT_CPU, limits["cpu_s"]),
        (resource.RLIMIT_FSIZE, limits["file_mb"] * mb),
        (resource.RLIMIT_NOFILE, limits["open_files"]),
        (resource.RLIMIT_CORE, 0),
    ]
    if processes is not None:
        pairs.append((resource.RLIMIT_NPROC, processes))
    for which, value in pairs:
        resource.setrlimit(which, (value, value))


def _non_dumpable() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE, 0
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def _exported(name: object) -> bool:
    # The program's names must never stand in for a builtin or the judge's helpers:
    # a program-defined ``sorted`` or ``__ponder_expect`` would decide the asserts.
    return (
        type(name) is str
        and name.isidentifier()
        and not name.startswith("__")
        and not hasattr(builtins, name)
    )


def _test_space(channel: Channel, loaded: dict[str, Any]) -> dict[str, Any]:
    space = {}
    values = loaded.get("values")
    for name, data in values.items() if type(values) is dict else ():
        if _exported(name):
            with contextlib.suppress(ProtocolError, RecursionError):
                space[name] = decode(data)
    for name in loaded["names"]:
        if _exported(name):
            space[name] = RemoteFunction(channel, {"name": name}, f"<{name} from the program>")
    stdlib = getattr(sys, "stdlib_module_names", ())
    modules = loaded.get("modules")
    for pair in modules if type(modules) is list else ():
        if type(pair) is list and len(pair) == 2 and _exported(pair[0]) and pair[1] in stdlib:
            with contextlib.suppress(ImportError):
                space[pair[0]] = __import__(pair[1])
    space.update({"__builtins__": builtins, "__name__": "__test__", "__ponder_expect": _expect})
    return space


def _wait(pid: int, timeout_s: float) -> int | None:
    """The worker's wait status within ``timeout_s``, else None."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            return None
        time.sleep(0.002)


def _exit_status(pid: int) -> str:
    status = _wait(pid, 1.0)
    if status is None:
        return ""
    if os.WIFSIGNALED(status):
        import signal

        try:
            return f" (killed by signal {signal.Signals(os.WTERMSIG(status)).name})"
        except ValueError:
            return f" (killed by signal {os.WTERMSIG(status)})"
    return f" (status {os.WEXITSTATUS(status)})"


def _start_worker(stdout_fd: int, stderr_fd: int, workdir: str) -> tuple[int, Channel]:
    """Fork the worker before the judge reads its job; its stdin becomes /dev/null and its
    stdout/stderr the program's output files, so it holds neither job nor verdict."""
    to_worker_r, to_worker_w = os.pipe()
    from_worker_r, from_worker_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(to_worker_w)
            os.close(from_worker_r)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(stdout_fd, 1)
            os.dup2(stderr_fd, 2)
            for fd in (devnull, stdout_fd, stderr_fd):
                os.close(fd)
            os.chdir(workdir)
            worker(to_worker_r, from_worker_w)
        finally:
            os._exit(70)
    for fd in (to_worker_r, from_worker_w, stdout_fd, stderr_fd):
        os.close(fd)
    return pid, Channel(to_worker_w, from_worker_r)


def judge(stdout_fd: int, stderr_fd: int, workdir: str) -> None:
    pid, channel = _start_worker(stdout_fd, stderr_fd, workdir)
    _non_dumpable()
    cfg = json.loads(sys.stdin.read())
    out = sys.stdout

    def emit(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    limits = cfg["limits"]
    _set_limits(dict(limits, memory_mb=max(limits["memory_mb"], 256)), None)
    tests = cfg["tests"]
    try:
        channel.send(
            {
                "program": cfg["program"],
                "files": cfg["files"],
                "stdin": cfg["stdin"],
                "as_main": not tests,
                "limits": limits,
            }
        )
        loaded = channel.receive()
    except ProgramGone as exc:
        loaded = {"load_error": str(exc) + _exit_status(pid)}
    if "load_error" in loaded or "names" not in loaded or type(loaded["names"]) is not list:
        emit(
            {
                "load_error": str(loaded.get("load_error", "the program did not load"))[:500],
                "trace": str(loaded.get("trace", ""))[-1500:],
            }
        )
        return
    space = _test_space(channel, loaded)
    for i, test in enumerate(tests):
        try:
            exec(compile(test, f"test_{i}", "exec"), dict(space))
            emit({"test": i, "passed": True})
        except BaseException as exc:
            emit({"test": i, "passed": False, "error": _why(exc)})
    emit({"done": True})
    with contextlib.suppress(OSError):
        channel.writer.close()
    if _wait(pid, 1.0) is None:
        import signal

        os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- worker side


def worker(read_fd: int, write_fd: int) -> None:
    reader = os.fdopen(read_fd, "r", encoding="utf-8")
    writer = os.fdopen(write_fd, "w", encoding="utf-8")

    def reply(msg: dict[str, Any]) -> None:
        try:
            text = json.dumps(msg)
        except (ValueError, TypeError, RecursionError) as exc:
            text = json.dumps(
                {"raised": {"type": "TypeError", "message": f"cannot return value: {exc}"}}
            )
        writer.write(text + "\n")
        writer.flush()

    job = json.loads(reader.readline())
    _set_limits(job["limits"], job["limits"]["processes"])
    for name, content in job["files"].items():
        with open(name, "w", encoding="utf-8") as f:
            f.write(content)
    with open("main.py", "w", encoding="utf-8") as f:
        f.write(job["program"])
    sys.stdin = io.StringIO(job["stdin"])
    sys.argv = ["main.py"]
    g = {"__name__": "__main__" if job["as_main"] else "candidate", "__builtins__": builtins}
    try:
        exec(compile(job["program"], "main.py", "exec"), g)
    except BaseException as exc:
        sys.stdout.flush()
        import traceback

        reply({"load_error": _why(exc), "trace": traceback.format_exc()[-1500:]})
        os._exit(0)
    sys.stdout.flush()
    names: list[str] = []
    values: dict[str, Any] = {}
    modules: list[list[str]] = []
    for name, value in list(g.items()):
        if name.startswith("__"):
            continue
        if isinstance(value, type(os)):
            modules.append([name, value.__name__])
        elif callable(value):
            names.append(name)
        else:
            # Plain-data globals (constants, tables) are copied for the tests; a big
            # one is left out rather than overflow the judge's message limit.
            with contextlib.suppress(Exception):
                data = encode(value)
                if len(json.dumps(data)) <= MAX_GLOBAL:
                    values[name] = data
    reply({"loaded": True, "names": names, "values": values, "modules": modules})
    refs: list[Any] = []

    def resolve(target: Any) -> Any:
        # A proxy the judge passes back as an argument is the program's own object again.
        return g[target["name"]] if "name" in target else refs[target["id"]]

    while True:
        line = reader.readline()
        if not line:
            break
        try:
            msg = json.loads(line)
            target = msg["target"]
            obj = resolve(target)
            args = [decode(a, resolve=resolve) for a in msg.get("args", [])]
            op = msg["op"]
            result: Any
            if op == "call":
                kwargs = {k: decode(v, resolve=resolve) for k, v in msg.get("kwargs", {}).items()}
                result = obj(*args, **kwargs)
            elif op == "getattr":
                result = getattr(obj, msg["attr"])
            elif op == "list":
                result = list(obj)
            elif op == "len":
                result = len(obj)
            elif op == "getitem":
                result = obj[args[0]]
            elif op == "contains":
                result = args[0] in obj
            elif op == "bool":
                result = bool(obj)
            else:
                result = str(obj)
            encoded = encode(result, refs)
        except BaseException as exc:
            sys.stdout.flush()
            reply({"raised": {"type": type(exc).__name__, "message": str(exc)[:500]}})
            continue
        sys.stdout.flush()
        reply({"ok": encoded})
    sys.stdout.flush()
    os._exit(0)


def main(argv: list[str]) -> None:
    if argv[1:2] == ["judge"] and len(argv) == 5:
        judge(int(argv[2]), int(argv[3]), argv[4])
    else:
        raise SystemExit("usage: judge STDOUT_FD STDERR_FD WORKDIR")


if __name__ == "__main__":
    main(sys.argv)
