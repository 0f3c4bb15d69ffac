"""The store on SQLite and PostgreSQL: keys, atomic reservation, settlement, migrations."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from ponder.budget.quota import Demand, Limit, Refusal
from ponder.errors import InvalidRequest, StoreUnavailable
from ponder.ledger import LedgerRow, Reservation, Store
from ponder.ledger import schema as s
from ponder.ledger.database import Transaction

SUBJECTS = {"key": "key_a", "user": "alice", "team": "ml", "session": None}


def row(rid: str, **extra: object) -> LedgerRow:
    fields: dict[str, object] = {
        "task_class": "general",
        "strategy": "direct",
        "plan": {},
        "status": "ok",
        "http_status": 200,
        **extra,
    }
    return LedgerRow(id=rid, **fields)  # type: ignore[arg-type]


def reserve(store: Store, **demand: int) -> Reservation:
    res = store.reserve(SUBJECTS, Demand(**demand), ttl_s=60)
    assert isinstance(res, Reservation), res
    return res


# --------------------------------------------------------------------------- keys


def test_keys_are_stored_hashed_and_revocable(store: Store) -> None:
    record, secret = store.create_key("alice", team="ml", scopes=["reasoning"], name="laptop")
    assert secret.startswith("pk-") and len(secret) > 40
    found = store.lookup_key(secret)
    assert found is not None and found.id == record.id and found.scopes == {"reasoning"}
    assert store.lookup_key(secret + "x") is None
    with store.engine.connect() as conn:
        dump = repr([tuple(r) for r in conn.execute(sa.select(s.api_keys))])
    assert secret not in dump and secret[10:] not in dump

    assert store.has_keys()
    assert store.revoke_key(record.id)
    assert not store.revoke_key(record.id)  # already revoked
    assert store.lookup_key(secret) is None
    assert not store.has_keys()
    assert [k.id for k in store.list_keys(include_revoked=True)] == [record.id]
    assert store.list_keys() == []


def test_unknown_scope_is_refused_with_the_valid_ones(store: Store) -> None:
    with pytest.raises(InvalidRequest, match="unknown scope.*reasoning, strategies, admin"):
        store.create_key("alice", scopes=["root"])


# --------------------------------------------------------------------------- quotas


def test_reserve_settle_and_refusal(store: Store) -> None:
    store.set_limit(Limit("user", "alice", "tokens", "day", 100))
    first = reserve(store, tokens=60)
    refused = store.reserve(SUBJECTS, Demand(tokens=60), ttl_s=60)
    assert isinstance(refused, Refusal)
    assert (refused.used, refused.reserved, refused.requested) == (0, 60, 60)
    assert "resets at" in refused.message() and refused.retry_after_s() >= 1

    store.settle(first, Demand(tokens=25), row("r1", input_tokens=5, output_tokens=20))
    assert store.counter("user", "alice", "tokens", "day") == (25, 0)
    assert reserve(store, tokens=60)  # 25 used + 60 fits in 100 now
    assert [r.id for r in store.rows()] == ["r1"]


def test_a_refusal_holds_nothing_on_any_limit(store: Store) -> None:
    store.set_limit(Limit("user", "alice", "tokens", "day", 1000))
    store.set_limit(Limit("team", "ml", "tokens", "day", 10))
    assert isinstance(store.reserve(SUBJECTS, Demand(tokens=50), ttl_s=60), Refusal)
    # The user limit was checked (and would have passed): its hold was rolled back.
    assert store.counter("user", "alice", "tokens", "day") == (0, 0)
    assert store.counter("team", "ml", "tokens", "day") == (0, 0)


def test_wildcard_limits_count_each_subject_separately(store: Store) -> None:
    store.set_limit(Limit("user", "*", "requests", "minute", 1))
    assert isinstance(store.reserve(SUBJECTS, Demand(), ttl_s=60), Reservation)
    assert isinstance(store.reserve(SUBJECTS, Demand(), ttl_s=60), Refusal)
    bob = {**SUBJECTS, "user": "bob"}
    assert isinstance(store.reserve(bob, Demand(), ttl_s=60), Reservation)


def test_per_request_caps_need_no_counter(store: Store) -> None:
    store.set_limit(Limit("team", "ml", "reasoning_tokens", "request", 100))
    refused = store.reserve(SUBJECTS, Demand(reasoning_tokens=101), ttl_s=60)
    assert isinstance(refused, Refusal) and "per-request cap" in refused.message()
    assert isinstance(store.reserve(SUBJECTS, Demand(reasoning_tokens=100), ttl_s=60), Reservation)


def test_concurrent_reservations_never_exceed_the_limit(store: Store) -> None:
    store.set_limit(Limit("key", "key_a", "tokens", "day", 100))
    results: list[object] = []
    lock = threading.Lock()

    def worker() -> None:
        r = store.reserve(SUBJECTS, Demand(tokens=7), ttl_s=60)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=worker) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = [r for r in results if isinstance(r, Reservation)]
    assert len(held) == 100 // 7
    assert store.counter("key", "key_a", "tokens", "day") == (0, 7 * len(held))


def test_settlement_is_all_or_nothing(store: Store) -> None:
    store.set_limit(Limit("user", "alice", "tokens", "day", 100))
    store.insert_row(row("dup"))
    res = reserve(store, tokens=40)
    # The ledger insert fails (duplicate id): the counters must not move either.
    with pytest.raises(StoreUnavailable, match="requests are refused until"):
        store.settle(res, Demand(tokens=30), row("dup"))
    assert store.counter("user", "alice", "tokens", "day") == (0, 40)
    assert len(store.rows()) == 1


def test_a_failed_transaction_leaves_the_connection_ready_for_the_next(store: Store) -> None:
    # The per-request statements run on a connection the store keeps (SQLite: one per
    # thread; PostgreSQL: the pool's): a failure must not leave a transaction open on it.
    store.set_limit(Limit("user", "alice", "tokens", "day", 100))
    store.insert_row(row("dup"))
    res = reserve(store, tokens=40)
    with pytest.raises(StoreUnavailable):
        store.settle(res, Demand(tokens=30), row("dup"))

    def fails(tx: Transaction) -> None:
        raise RuntimeError("the job's result could not be saved")

    with pytest.raises(RuntimeError, match="could not be saved"):
        store.settle(res, Demand(tokens=30), row("with-also"), also=fails)
    assert store.counter("user", "alice", "tokens", "day") == (0, 40)
    assert {r.id for r in store.rows()} == {"dup"}
    # The same thread's next request commits as usual.
    store.settle(res, Demand(tokens=30), row("ok"))
    nxt = reserve(store, tokens=10)
    store.settle(nxt, Demand(tokens=5), row("next"))
    assert store.counter("user", "alice", "tokens", "day") == (35, 0)
    assert {r.id for r in store.rows()} == {"dup", "ok", "next"}


def test_stale_reservations_of_dead_processes_are_released(store: Store) -> None:
    store.set_limit(Limit("user", "alice", "tokens", "day", 100))
    res = store.reserve(SUBJECTS, Demand(tokens=80), ttl_s=5, now=1_000.0)
    assert isinstance(res, Reservation)
    assert store.release_stale(now=1_004.0) == 0
    assert store.release_stale(now=1_006.0) == 1
    assert store.counter("user", "alice", "tokens", "day", now=1_000.0) == (0, 0)
    # A late settlement of the released hold must not release it twice.
    store.settle(res, Demand(tokens=10), None)
    assert store.counter("user", "alice", "tokens", "day", now=1_000.0) == (10, 0)


def test_quota_thresholds_are_reported_once_when_crossed(store: Store) -> None:
    store.set_limit(Limit("team", "ml", "tokens", "day", 100))
    crossed = []
    # (held, actually used): the last one overshoots its estimate, as a real prompt can.
    for held, used in ((50, 50), (35, 35), (10, 10), (5, 10)):
        res = reserve(store, tokens=held)
        crossed += store.settle(res, Demand(tokens=used), None, thresholds=(0.8, 1.0))
    assert [(c.threshold, c.used) for c in crossed] == [(0.8, 85), (1.0, 105)]


# --------------------------------------------------------------------------- schema


def test_migrate_is_idempotent_and_refuses_a_newer_schema(store: Store) -> None:
    assert store.migrate() == s.SCHEMA_VERSION
    assert store.migrate() == s.SCHEMA_VERSION
    with store.engine.begin() as conn:
        conn.execute(sa.update(s.schema_info).values(version=s.SCHEMA_VERSION + 1))
    with pytest.raises(StoreUnavailable, match="newer than this ponder"):
        store.migrate()


def test_ledger_rows_round_trip(store: Store) -> None:
    r = row(
        "chatcmpl-1",
        key_id="key_a",
        user="alice",
        team="ml",
        session="s1",
        tier="local",
        input_tokens=3,
        reasoning_tokens=5,
        output_tokens=4,
        cost_micro=12,
        latency_ms=1.5,
        ttft_ms=0.5,
        truncated=True,
        plan={"budget": 9},
    )
    store.insert_row(r)
    (back,) = store.rows()
    assert back == r


def test_unreachable_postgres_fails_closed() -> None:
    with pytest.raises(StoreUnavailable, match="refused until it is reachable"):
        Store("postgresql://postgres@127.0.0.1:9/none", connect_timeout_s=1)


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="give a file"):
        Store("sqlite://")


def test_a_version_4_database_gains_the_conversations_table(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {s.conversations.name}")
        conn.execute(sa.update(s.schema_info).values(version=4))
    assert store.migrate() == s.SCHEMA_VERSION >= 5
    with store.transaction() as tx:
        store.put_conversation(tx, "resp_1", "key_a", '[{"role": "user", "content": "hi"}]')
    assert store.get_conversation("resp_1", "key_a") == [{"role": "user", "content": "hi"}]
    # Only the key that created it reads it back; an unknown id is None too.
    assert store.get_conversation("resp_1", "key_b") is None
    assert store.get_conversation("resp_1", None) is None
    assert store.get_conversation("resp_2", "key_a") is None
