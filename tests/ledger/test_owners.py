"""Owners of holds and job claims (host, pid, start time) and the holds of dead ones."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import sqlalchemy as sa

from ponder.budget.quota import Demand, Limit
from ponder.ledger import Reservation, Store
from ponder.ledger import schema as s
from ponder.ledger.owners import owner_is_dead, process_owner, process_start

SUBJECTS = {"key": "key_a", "user": "alice", "team": "ml", "session": None}
HOST = socket.gethostname()[:100]


def _owner_of(proc: subprocess.Popen[bytes]) -> str:
    start = process_start(proc.pid)
    assert start is not None
    return f"{HOST}:{proc.pid}:{start}"


def test_an_owner_is_dead_only_when_its_process_on_this_host_is_gone() -> None:
    assert process_owner() == f"{HOST}:{os.getpid()}:{process_start(os.getpid())}"
    assert not owner_is_dead(process_owner())
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = _owner_of(proc)
        assert not owner_is_dead(live)
        # The same pid with another start time is a newer process that reused the pid.
        host, pid, start = live.rsplit(":", 2)
        assert owner_is_dead(f"{host}:{pid}:{int(start) + 1}")
        # Another host's owner is never judged here (only its TTL or lease can tell).
        assert not owner_is_dead(f"other-host:{proc.pid}:{start}")
    finally:
        proc.kill()
        proc.wait()
    assert owner_is_dead(live)
    assert not owner_is_dead(f"other-host:{proc.pid}:0")
    for garbage in ("", "no-colons", f"{HOST}:notapid:1"):
        assert not owner_is_dead(garbage)


def _set_owner(store: Store, reservation: Reservation, owner: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(s.reservations)
            .where(s.reservations.c.id == reservation.id)
            .values(owner=owner)
        )


def test_holds_of_a_dead_process_are_released_at_once_and_no_others(store: Store) -> None:
    store.set_limit(Limit("user", "alice", "tokens", "day", 1000))
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead_owner = _owner_of(proc)
    proc.kill()
    proc.wait()
    dead = store.reserve(SUBJECTS, Demand(tokens=400), ttl_s=600)
    elsewhere = store.reserve(SUBJECTS, Demand(tokens=20), ttl_s=600)
    mine = store.reserve(SUBJECTS, Demand(tokens=5), ttl_s=600)
    assert all(isinstance(r, Reservation) for r in (dead, elsewhere, mine))
    _set_owner(store, dead, dead_owner)  # type: ignore[arg-type]
    _set_owner(store, elsewhere, "other-host:1:1")  # type: ignore[arg-type]
    assert store.counter("user", "alice", "tokens", "day") == (0, 425)

    # Long before any TTL: the dead process's hold goes, the live and remote ones stay.
    assert store.release_stale() == 1
    assert store.counter("user", "alice", "tokens", "day") == (0, 25)
    assert store.release_stale() == 0
    with store.engine.connect() as conn:
        owners = set(conn.execute(sa.select(s.reservations.c.owner)).scalars())
    assert owners == {"other-host:1:1", process_owner()}
    # The dead request's settlement, had it come late, gives nothing back twice.
    store.settle(dead, Demand(tokens=0), None)  # type: ignore[arg-type]
    assert store.counter("user", "alice", "tokens", "day") == (0, 25)


def test_a_version_3_database_gains_the_owner_and_history_columns(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE {s.reservations.name} DROP COLUMN owner")
        conn.exec_driver_sql(f"ALTER TABLE {s.jobs.name} DROP COLUMN history")
        conn.execute(sa.update(s.schema_info).values(version=3))
    assert store.migrate() == s.SCHEMA_VERSION >= 4
    inspector = sa.inspect(store.engine)
    assert "owner" in {c["name"] for c in inspector.get_columns(s.reservations.name)}
    assert "history" in {c["name"] for c in inspector.get_columns(s.jobs.name)}
    store.set_limit(Limit("user", "alice", "tokens", "day", 100))
    res = store.reserve(SUBJECTS, Demand(tokens=10), ttl_s=1, now=time.time() - 5)
    assert isinstance(res, Reservation)
    assert store.release_stale() == 1
