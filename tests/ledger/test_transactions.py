"""The store's one transaction API: compiled and Core statements in one transaction, read
snapshots, and the modes (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from ponder.budget.quota import Demand, Limit
from ponder.ledger import LedgerRow, Reservation, Store
from ponder.ledger import schema as s
from ponder.ledger.database import Transaction

SUBJECTS = {"key": None, "user": "alice", "team": None, "session": None}


def row(request_id: str) -> LedgerRow:
    return LedgerRow(
        id=request_id, task_class="chat", strategy="direct", plan={}, status="ok",
        http_status=200, user="alice", output_tokens=3,
    )  # fmt: skip


def test_core_statements_see_the_compiled_statements_of_their_transaction(store: Store) -> None:
    store.set_limit(Limit("user", "alice", "tokens", "day", 100))
    res = store.reserve(SUBJECTS, Demand(tokens=10), ttl_s=60)
    assert isinstance(res, Reservation)
    seen: dict[str, object] = {}

    def also(tx: Transaction) -> None:
        # The row was written on tx.db a moment ago and is not committed yet: only the
        # same transaction can update it (another connection would not see it, or wait).
        r = s.requests.c
        done = tx.execute(sa.update(s.requests).where(r.id == "req").values(verdict="right"))
        seen["updated"] = done.rowcount
        seen["counter"] = tx.execute(
            sa.select(s.counters.c.used).where(s.counters.c.subject == "alice")
        ).scalar_one()

    store.settle(res, Demand(tokens=7), row("req"), also=also)
    assert seen == {"updated": 1, "counter": 7}
    found = store.row("req")
    assert found is not None and found.verdict == "right"
    assert store.counter("user", "alice", "tokens", "day") == (7, 0)


def test_a_read_transaction_is_one_snapshot(store: Store) -> None:
    store.insert_row(row("before"))
    counted: list[int] = []

    def count(tx: Transaction) -> int:
        return int(tx.execute(sa.select(sa.func.count()).select_from(s.requests)).scalar_one())

    with store.transaction("read") as tx:
        counted.append(count(tx))
        # A write commits meanwhile (from another thread: this one's connection reads).
        writer = threading.Thread(target=store.insert_row, args=(row("during"),))
        writer.start()
        writer.join(timeout=20)
        assert not writer.is_alive(), "a write waited for a read transaction"
        counted.append(count(tx))
    with store.transaction("read") as tx:
        counted.append(count(tx))
    assert counted == [1, 1, 2]


def test_an_unknown_mode_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="mode must be one of write, read, autocommit"):
        store.transaction("exclusive")  # type: ignore[arg-type]
