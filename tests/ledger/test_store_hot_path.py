"""The per-request path of the store (SQLite and PostgreSQL): reads that never wait for a
writer, counters created by the first request of a window, and threshold crossings with
and without UPDATE ... RETURNING."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ponder.budget.quota import Demand, Limit, Refusal
from ponder.ledger import Reservation, Store

SUBJECTS = {"key": "key_a", "user": "alice", "team": "ml", "session": None}


def test_reads_of_a_request_do_not_wait_for_a_writer(store: Store) -> None:
    record, secret = store.create_key("alice", team="ml")
    store.set_limit(Limit("team", "ml", "tokens", "day", 1_000))
    got: dict[str, object] = {}

    def read() -> None:
        got["key"] = store.lookup_key(secret)
        got["limits"] = store.limits()
        got["has_keys"] = store.has_keys()

    # A writer holds its transaction (SQLite: the write lock) while a request reads.
    with store.transaction():
        reader = threading.Thread(target=read)
        reader.start()
        reader.join(timeout=20)
        finished_while_writing = not reader.is_alive()
    reader.join()
    assert finished_while_writing, "a read waited for the writer's transaction to end"
    assert got["key"] is not None and got["key"].id == record.id  # type: ignore[attr-defined]
    assert got["limits"] == [Limit("team", "ml", "tokens", "day", 1_000)]
    assert got["has_keys"] is True


def test_first_request_of_a_window_creates_the_counter_or_is_refused(store: Store) -> None:
    store.set_limit(Limit("user", "alice", "tokens", "minute", 100))
    # Too big for the limit before any counter exists: refused, nothing held.
    refused = store.reserve(SUBJECTS, Demand(tokens=101), ttl_s=60, now=600.0)
    assert isinstance(refused, Refusal)
    assert (refused.used, refused.reserved, refused.requested) == (0, 0, 101)
    assert store.counter("user", "alice", "tokens", "minute", now=600.0) == (0, 0)
    # The next window starts a new counter; a fitting request holds on it.
    held = store.reserve(SUBJECTS, Demand(tokens=60), ttl_s=60, now=660.0)
    assert isinstance(held, Reservation)
    assert store.counter("user", "alice", "tokens", "minute", now=660.0) == (0, 60)
    assert store.counter("user", "alice", "tokens", "minute", now=600.0) == (0, 0)
    again = store.reserve(SUBJECTS, Demand(tokens=41), ttl_s=60, now=661.0)
    assert isinstance(again, Refusal) and (again.used, again.reserved) == (0, 60)


def test_a_counter_created_concurrently_is_held_on_not_refused(store: Store) -> None:
    # The race of a window's first requests: ours finds no counter to hold on, then a
    # concurrent request creates it, holds and commits before ours reads it back.
    # Seeing the counter now proves nothing about the limit: ours must hold, not refuse.
    if store.dialect == "sqlite":
        pytest.skip("SQLite's BEGIN IMMEDIATE runs writers one at a time: no such race")
    store.set_limit(Limit("user", "alice", "tokens", "minute", 1_000))
    other = Store(store.url)
    statements = store._st  # noqa: SLF001
    real, raced = statements.counter, []

    class CounterAfterARace:
        def first(self, db: object, params: dict[str, object]) -> object:
            if not raced:
                raced.append(other.reserve(SUBJECTS, Demand(tokens=1), ttl_s=60, now=600.0))
            return real.first(db, params)

    statements.counter = CounterAfterARace()  # type: ignore[assignment]
    try:
        mine = store.reserve(SUBJECTS, Demand(tokens=1), ttl_s=60, now=600.0)
    finally:
        statements.counter = real
        other.close()
    assert isinstance(raced[0], Reservation)
    assert isinstance(mine, Reservation), mine
    assert store.counter("user", "alice", "tokens", "minute", now=600.0) == (0, 2)


@pytest.mark.parametrize("returning", [True, False], ids=["returning", "read-back"])
def test_threshold_crossings_with_and_without_update_returning(
    store: Store, returning: bool
) -> None:
    if not returning:
        # Servers without UPDATE ... RETURNING (SQLite before 3.35) read the counter back.
        store._st.charge_returning = None
    store.set_limit(Limit("team", "ml", "tokens", "day", 100))
    crossed = []
    # (held, actually used): the last one overshoots its estimate, as a real prompt can.
    for held, used in ((50, 50), (35, 35), (10, 10), (5, 10)):
        res = store.reserve(SUBJECTS, Demand(tokens=held), ttl_s=60)
        assert isinstance(res, Reservation)
        crossed += store.settle(res, Demand(tokens=used), None, thresholds=(0.8, 1.0))
    assert [(c.threshold, c.used) for c in crossed] == [(0.8, 85), (1.0, 105)]
    assert store.counter("team", "ml", "tokens", "day") == (105, 0)


def test_background_checkpoints_copy_the_wal_without_a_committing_request(tmp_path: Path) -> None:
    from ponder.ledger import LedgerRow

    store = Store(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:

        def autocheckpoint() -> int:
            with store.transaction("autocommit") as tx:  # the request path's connection
                return int(tx.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0])

        assert autocheckpoint() == 1000  # SQLite's own until a checkpointer runs
        store.checkpoint_in_background(interval_s=0.05)
        # The request path no longer checkpoints inline, but keeps a backstop.
        assert autocheckpoint() == 20_000
        db_file = tmp_path / "ledger.db"
        before = db_file.stat().st_size
        for i in range(200):  # ~200 pages of rows: far below an inline checkpoint
            store.insert_row(
                LedgerRow(id=f"r{i}", task_class="c", strategy="direct", plan={"p": "x" * 3000},
                          status="ok", http_status=200)
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while db_file.stat().st_size < before + 200 * 3000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert db_file.stat().st_size >= before + 200 * 3000, "the WAL was not copied back"
        store.stop_background_checkpoint()
        assert autocheckpoint() == 1000
        assert len(store.rows()) == 200
    finally:
        store.close()
