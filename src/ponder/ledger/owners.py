"""Who holds a quota reservation or a job claim: host, pid and the process's start time.

An owner is ``host:pid:start``, where ``start`` is field 22 of ``/proc/<pid>/stat``
(clock ticks since boot). The start time tells a dead holder from a new process that
was given the same pid, so a restarted server can free a killed one's holds at once
instead of waiting for their TTL. Only owners on this host can be judged; another
host's holds are left to their TTL or lease.
"""

from __future__ import annotations

import os
import socket

__all__ = ["owner_is_dead", "process_owner", "process_start"]

# Hostnames are at most 253 characters; the owner column keeps 160 in all.
_HOST_CHARS = 100
_own: tuple[int, str] | None = None


def _host() -> str:
    return socket.gethostname()[:_HOST_CHARS]


def process_start(pid: int) -> str | None:
    """The start time of ``pid`` (``/proc/<pid>/stat`` field 22), or None when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')'.
    fields = stat.rpartition(")")[2].split()
    # fields[0] is field 3 (state), so field 22 is fields[19].
    return fields[19] if len(fields) > 19 else None


def process_owner() -> str:
    """This process as an owner of holds and claims (recomputed after a fork)."""
    global _own
    pid = os.getpid()
    if _own is None or _own[0] != pid:
        _own = (pid, f"{_host()}:{pid}:{process_start(pid) or 0}")
    return _own[1]


def owner_is_dead(owner: str | None) -> bool:
    """True when ``owner`` ran on this host in a process that no longer exists.

    A pid that is alive but started at another time than recorded is a new process
    that reused the pid: the owner is dead. Owners of other hosts, or that cannot be
    parsed, are never judged dead here.
    """
    if not owner:
        return False
    host, _, rest = owner.rpartition(":")
    host, _, pid_text = host.rpartition(":")
    start = rest
    if host != _host() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if owner == process_owner():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, as another user's process: its start time still tells
    except OSError:
        return False
    now_start = process_start(pid)
    # "0": the start time was unknown when recorded (no /proc); only the pid tells.
    return start != "0" and now_start is not None and now_start != start
