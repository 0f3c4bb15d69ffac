"""The store behind keys, quotas and the ledger (SQLAlchemy Core; SQLite or PostgreSQL).

Correctness rests on two statements:

- **reserve** runs, in one transaction, a conditional ``UPDATE ... SET reserved =
  reserved + :amount WHERE used + reserved + :amount <= :limit`` per binding
  limit (in a fixed order, so concurrent transactions cannot deadlock). The row
  lock of PostgreSQL and the write lock of SQLite (``BEGIN IMMEDIATE``) make the
  check and the increment one step; if any limit refuses, the whole
  transaction rolls back and nothing is held.
- **settle** moves the reservation to actual usage *and* inserts the ledger row
  in one transaction, committed before the response is sent: a request that
  returned has its row, and an error leaves no half-row.

Every database error is raised as :class:`StoreUnavailable` (the gateway fails
closed). Calls are synchronous; the gateway runs them in a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import SQLAlchemyError

from ponder.budget.quota import (
    Demand,
    Limit,
    Metric,
    Refusal,
    Scope,
    Window,
    applicable,
    window_bounds,
)
from ponder.errors import InvalidRequest, StoreUnavailable
from ponder.ledger import schema as s

logger = logging.getLogger("ponder.ledger")

_T = TypeVar("_T")

__all__ = [
    "Crossing",
    "KeyRecord",
    "LedgerRow",
    "QuotaStatus",
    "Reservation",
    "Store",
    "StoreUnavailable",
    "default_url",
    "hash_key",
]

KEY_PREFIX = "pk-"
SCOPE_NAMES = ("reasoning", "strategies", "admin")


def default_url() -> str:
    """``sqlite:///$XDG_DATA_HOME/ponder/ponder.db`` (keys and ledger are data, not cache)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(base) / 'ponder' / 'ponder.db'}"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    """An API key as stored: never the secret, only its hash and a display prefix."""

    id: str
    prefix: str
    name: str
    user: str
    team: str | None
    scopes: frozenset[str]
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prefix": self.prefix,
            "name": self.name,
            "user": self.user,
            "team": self.team,
            "scopes": sorted(self.scopes),
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True)
class Reservation:
    id: str
    # (limit, counter subject, window_start, amount)
    items: tuple[tuple[Limit, str, int, int], ...]
    demand: Demand


@dataclass(frozen=True)
class Crossing:
    """A counter that crossed a fraction of its limit at settlement (for alerts)."""

    limit: Limit
    subject: str
    threshold: float
    used: int


@dataclass(frozen=True)
class QuotaStatus:
    limit: Limit
    subject: str
    used: int
    reserved: int
    resets_at: int


@dataclass
class LedgerRow:
    """One request as the ledger keeps it."""

    id: str
    task_class: str
    strategy: str
    plan: dict[str, Any]
    status: str
    http_status: int
    at: float = field(default_factory=time.time)
    key_id: str | None = None
    user: str | None = None
    team: str | None = None
    session: str | None = None
    tier: str | None = None
    model: str | None = None
    error_code: str | None = None
    input_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False
    cost_micro: int = 0
    engine_s: float = 0.0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    truncated: bool = False
    verdict: str | None = None
    # The router's features of the request (see ledger.schema), None without a router.
    features: dict[str, Any] | None = None

    def values(self) -> dict[str, Any]:
        # Shallow on purpose: plan and features are serialized here, so the deep copy
        # that asdict() makes of them (a large part of writing a row) would be discarded.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["plan"] = json.dumps(self.plan, sort_keys=True, default=str)
        if self.features is not None:
            data["features"] = json.dumps(self.features, sort_keys=True, default=str)
        return data

    @classmethod
    def from_db(cls, found: Any) -> LedgerRow:
        data = dict(found._mapping)
        data["plan"] = json.loads(data["plan"])
        if data.get("features") is not None:
            data["features"] = json.loads(data["features"])
        return cls(**data)


class _Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal


def _record(row: Mapping[str, Any]) -> KeyRecord:
    return KeyRecord(
        id=row["id"],
        prefix=row["prefix"],
        name=row["name"],
        user=row["user"],
        team=row["team"],
        scopes=frozenset(x for x in row["scopes"].split(",") if x),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


def _counter_key(
    scope: Scope, subject: str, metric: Metric, window: Window, start: int
) -> dict[str, Any]:
    """The bind parameters that name one counter row (see :class:`_Statements`)."""
    return {
        "k_scope": scope,
        "k_subject": subject,
        "k_metric": metric,
        "k_window": window,
        "k_start": start,
    }


# How long a thread waits for this process's SQLite writer (as busy_timeout across processes).
_WRITE_LOCK_TIMEOUT_S = 30.0


_SQLITE_AUTOCHECKPOINT = 1000  # pages, SQLite's default
_SQLITE_BACKSTOP_AUTOCHECKPOINT = 20_000  # ~80 MB of WAL, with a checkpoint thread


def _sqlite_setup(dbapi_conn: Any) -> None:
    """Every SQLite connection of the store: ponder issues BEGIN itself, WAL, and waits
    for other processes' writers instead of failing."""
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL: a commit survives the process being killed (not a power cut).
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _dbapi(conn: sa.Connection) -> Any:
    """The DB-API connection under a SQLAlchemy one (same transaction)."""
    return conn.connection.dbapi_connection


class _Raw:
    """A Core statement compiled once for the store's dialect, run on a DB-API connection.

    The statements of every gateway request (key lookup, limits, hold, charge, the
    ledger row) are tiny: SQLite runs one in ~10 us, while SQLAlchemy's execution
    path (cache key, parameter processing, result wrapping) adds ~50-100 us to each.
    The SQL still comes from the Core statement (quoting, paramstyle, RETURNING per
    dialect); only the execution skips the layers. Every bound value here is a
    str, int, float, bool or None, which both drivers take as they are.
    """

    __slots__ = ("fixed", "names", "sql")

    def __init__(
        self, stmt: Any, dialect: sa.Dialect, column_keys: Sequence[str] | None = None
    ) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=column_keys)
        self.sql = str(compiled)
        # qmark (SQLite): values in the order the placeholders appear; else by name.
        self.names = tuple(compiled.positiontup or ()) if dialect.positional else None
        # Values the statement itself binds (e.g. LIMIT 1), merged under each call's.
        self.fixed = {k: v for k, v in compiled.params.items() if v is not None}

    def _run(self, db: Any, params: Mapping[str, Any]) -> Any:
        if self.fixed:
            params = {**self.fixed, **params}
        cursor = db.cursor()
        args = params if self.names is None else tuple(params[n] for n in self.names)
        cursor.execute(self.sql, args)
        return cursor

    def rowcount(self, db: Any, params: Mapping[str, Any]) -> int:
        cursor = self._run(db, params)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def first(self, db: Any, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        cursor = self._run(db, params)
        try:
            return cursor.fetchone()  # type: ignore[no-any-return]
        finally:
            cursor.close()

    def all(self, db: Any, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        cursor = self._run(db, params)
        try:
            return list(cursor.fetchall())
        finally:
            cursor.close()


_LIMIT_COLUMNS = ("scope", "subject", "metric", "window", "limit")
_KEY_COLUMNS = ("id", "prefix", "name", "user", "team", "scopes", "created_at", "revoked_at")
_COUNTER_COLUMNS = ("scope", "subject", "metric", "window", "window_start", "used", "reserved")


class _Statements:
    """The statements of every gateway request, compiled once per store.

    They take bind parameters (``k_*``, so they never collide with column names in
    an UPDATE) and run through :class:`_Raw`.
    """

    def __init__(self, dialect: sa.Dialect) -> None:
        c = s.counters.c
        key = (
            c.scope == sa.bindparam("k_scope"),
            c.subject == sa.bindparam("k_subject"),
            c.metric == sa.bindparam("k_metric"),
            c.window == sa.bindparam("k_window"),
            c.window_start == sa.bindparam("k_start"),
        )
        amount = sa.bindparam("k_amount", type_=sa.BigInteger)
        limit = sa.bindparam("k_limit", type_=sa.BigInteger)
        # The conditional increment that makes a reservation atomic.
        self.hold = _Raw(
            sa.update(s.counters)
            .where(*key, c.used + c.reserved + amount <= limit)
            .values(reserved=c.reserved + amount),
            dialect,
        )
        self.counter = _Raw(sa.select(c.used, c.reserved).where(*key), dialect)
        insert = pg_dialect.insert if dialect.name == "postgresql" else sqlite_dialect.insert
        self.create_counter = _Raw(
            insert(s.counters).on_conflict_do_nothing(), dialect, _COUNTER_COLUMNS
        )
        charge = (
            sa.update(s.counters)
            .where(*key)
            .values(
                reserved=c.reserved - sa.bindparam("k_release", type_=sa.BigInteger),
                used=c.used + sa.bindparam("k_used", type_=sa.BigInteger),
            )
        )
        self.charge = _Raw(charge, dialect)
        # With RETURNING the usage after the charge comes back without a second query.
        self.charge_returning = (
            _Raw(charge.returning(c.used), dialect) if dialect.update_returning else None
        )
        self.add_reservation = _Raw(
            sa.insert(s.reservations), dialect, ("id", "created_at", "expires_at", "items")
        )
        self.drop_reservation = _Raw(
            sa.delete(s.reservations).where(s.reservations.c.id == sa.bindparam("k_id")),
            dialect,
        )
        self.add_row = _Raw(sa.insert(s.requests), dialect, [f.name for f in fields(LedgerRow)])
        self.limits = _Raw(sa.select(*(s.limits.c[n] for n in _LIMIT_COLUMNS)), dialect)
        k = s.api_keys.c
        self.key_by_hash = _Raw(
            sa.select(*(k[n] for n in _KEY_COLUMNS)).where(
                k.hash == sa.bindparam("k_hash"), k.revoked_at.is_(None)
            ),
            dialect,
        )
        self.any_key = _Raw(sa.select(k.id).where(k.revoked_at.is_(None)).limit(1), dialect)


class Store:
    """Keys, quota limits and counters, and the request ledger in one database."""

    def __init__(self, url: str | None = None, *, connect_timeout_s: float = 5.0) -> None:
        self.url = url or default_url()
        parsed = sa.make_url(self.url)
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                raise InvalidRequest(
                    "an in-memory SQLite store would not survive a restart; give a file, "
                    "e.g. sqlite:///ponder.db"
                )
            Path(parsed.database or "").expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(
                parsed, connect_args={"timeout": 30, "check_same_thread": False}
            )
            self._sqlite_transactions(self.engine)
            self._sqlite_path = str(Path(parsed.database or "").expanduser())
        else:
            self.engine = sa.create_engine(
                parsed,
                pool_size=8,
                max_overflow=8,
                pool_pre_ping=True,
                connect_args={"connect_timeout": int(max(connect_timeout_s, 1))},
            )
        # SQLite has one writer at a time: threads of this process queue on a lock
        # (woken the moment it is free) instead of SQLite's busy handler, which polls
        # with sleeps of 1-100 ms. Other processes still wait through busy_timeout.
        self._write_lock = threading.RLock() if self.dialect == "sqlite" else None
        # The hot path's own SQLite connections, one per thread (see _db).
        self._local = threading.local()
        self._own: list[Any] = []
        self._own_lock = threading.Lock()
        # WAL pages after which a committing connection checkpoints (see
        # checkpoint_in_background); SQLite's default until a checkpointer runs.
        self._autocheckpoint = _SQLITE_AUTOCHECKPOINT
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_stop = threading.Event()
        # Errors of statements run on the DB-API cursor (see _Raw) are the driver's own.
        self._driver_error: type[Exception] = self.engine.dialect.loaded_dbapi.Error
        self.migrate()
        # After migrate: the dialect knows the server version (RETURNING support) by now.
        self._st = _Statements(self.engine.dialect)

    # ---- plumbing

    @staticmethod
    def _sqlite_transactions(engine: sa.Engine) -> None:
        # pysqlite's own transaction handling defers BEGIN and cannot take the
        # write lock up front; take it ourselves so read-check-write is atomic.
        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            _sqlite_setup(dbapi_conn)

        @event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(
            f"the ponder store ({self.dialect}) failed: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}; requests are refused until it is "
            "reachable again (check the ledger URL and the database server)"
        )

    @contextmanager
    def _writer(self) -> Iterator[None]:
        """This process's SQLite write lock (nothing on PostgreSQL), or StoreUnavailable."""
        lock = self._write_lock
        if lock is None:
            yield
            return
        if not lock.acquire(timeout=_WRITE_LOCK_TIMEOUT_S):
            raise StoreUnavailable(
                f"the ponder store (sqlite) stayed locked by this process's writers for "
                f"{_WRITE_LOCK_TIMEOUT_S:g} s; requests are refused until it is free again"
            )
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        with self._writer():
            try:
                with self.engine.begin() as conn:
                    yield conn
            except (SQLAlchemyError, self._driver_error) as exc:
                raise self._unavailable(exc) from exc

    @contextmanager
    def _db(self, *, read: bool = False) -> Iterator[Any]:
        """A DB-API connection in one transaction (``read``: for ONE read statement, in
        autocommit), for the statements of every gateway request.

        SQLAlchemy's connection and transaction handling costs ~40 us per read and
        ~75 us per transaction on SQLite, against ~6 us for BEGIN IMMEDIATE and COMMIT
        themselves: with four per request it was a third of the store's time. Same
        guarantees as :meth:`_tx`: SQLite writers take the process's write lock and
        BEGIN IMMEDIATE; driver errors become StoreUnavailable (fail closed).
        """
        if self.dialect == "sqlite":
            with self._sqlite_db(read) as db:
                yield db
            return
        try:
            fairy = self.engine.raw_connection()  # the pool's, pre-pinged
        except (SQLAlchemyError, self._driver_error) as exc:  # the pool raises the driver's
            raise self._unavailable(exc) from exc
        driver = fairy.driver_connection
        try:
            if read:
                driver.autocommit = True  # type: ignore[union-attr]
            yield fairy
            if not read:
                fairy.commit()
        except self._driver_error as exc:
            fairy.invalidate()  # a connection that failed is not handed out again
            raise self._unavailable(exc) from exc
        except BaseException:
            if not read:
                fairy.rollback()
            raise
        finally:
            if read and fairy.dbapi_connection is not None:
                driver.autocommit = False  # type: ignore[union-attr]
            fairy.close()

    @contextmanager
    def _sqlite_db(self, read: bool) -> Iterator[Any]:
        local = self._local
        db = getattr(local, "db", None)
        try:
            if db is None:
                db = sqlite3.connect(
                    self._sqlite_path, timeout=30, isolation_level=None, check_same_thread=False
                )
                _sqlite_setup(db)
                local.db, local.autocheckpoint = db, _SQLITE_AUTOCHECKPOINT
                with self._own_lock:
                    self._own.append(db)
            if local.autocheckpoint != self._autocheckpoint:
                db.execute(f"PRAGMA wal_autocheckpoint={int(self._autocheckpoint)}")
                local.autocheckpoint = self._autocheckpoint
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc
        if read:
            try:
                yield db
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from exc
            return
        with self._writer():
            try:
                db.execute("BEGIN IMMEDIATE")
                yield db
                db.execute("COMMIT")
            except BaseException as exc:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._unavailable(exc) from exc
                raise

    def transaction(self) -> AbstractContextManager[sa.Connection]:
        """One transaction (SQLite: holding the write lock); errors become StoreUnavailable."""
        return self._tx()

    def checkpoint_in_background(self, interval_s: float = 0.2) -> None:
        """SQLite: copy the WAL into the database from a thread of its own.

        Otherwise the commit that pushes the WAL past 1,000 pages checkpoints it, and
        fsyncs, inline: ~9 ms, every ~150 requests of the gateway, which is its whole p99.
        The request path's connections keep a far larger threshold as a backstop, so the
        WAL stays bounded should this thread fall behind. A no-op on PostgreSQL.
        """
        if self.dialect != "sqlite" or self._checkpointer is not None:
            return
        self._checkpoint_stop.clear()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, args=(interval_s,), name="ponder-wal-checkpoint",
            daemon=True,
        )  # fmt: skip
        self._checkpointer.start()
        self._autocheckpoint = _SQLITE_BACKSTOP_AUTOCHECKPOINT

    def _checkpoint_loop(self, interval_s: float) -> None:
        db = sqlite3.connect(self._sqlite_path, timeout=30, isolation_level=None)
        try:
            _sqlite_setup(db)
            while not self._checkpoint_stop.wait(interval_s):
                try:
                    self._checkpoint(db)
                except sqlite3.Error as exc:  # the request path fails closed on its own
                    logger.warning("WAL checkpoint failed: %s", exc)
        finally:
            db.close()

    def _checkpoint(self, db: sqlite3.Connection) -> None:
        # PASSIVE: as far as readers allow, never waiting for them or for writers.
        _, log, done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if log > _SQLITE_AUTOCHECKPOINT and done < log:
            # Writers kept appending while it copied, so it never caught up and the WAL
            # cannot start over (it only restarts once fully copied). Finish the few
            # frames left while this process's writers wait: a short, rare pause.
            lock = self._write_lock
            assert lock is not None
            with lock:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def stop_background_checkpoint(self) -> None:
        thread, self._checkpointer = self._checkpointer, None
        self._autocheckpoint = _SQLITE_AUTOCHECKPOINT
        if thread is not None:
            self._checkpoint_stop.set()
            thread.join()

    def close(self) -> None:
        self.stop_background_checkpoint()
        with self._own_lock:
            own, self._own = self._own, []
        for db in own:
            with contextlib.suppress(sqlite3.Error):
                db.close()
        self._local = threading.local()
        self.engine.dispose()

    def migrate(self) -> int:
        """Create or upgrade the schema; returns the version now in place."""
        with self._tx() as conn:
            s.schema_info.create(conn, checkfirst=True)
            version = conn.execute(sa.select(s.schema_info.c.version)).scalar()
            if version is None:
                version = 0
                conn.execute(sa.insert(s.schema_info).values(id=1, version=0))
            if version > s.SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"the database has schema version {version}, newer than this ponder "
                    f"({s.SCHEMA_VERSION}); upgrade ponder"
                )
            for step in s.MIGRATIONS[version:]:
                step(conn)
            conn.execute(sa.update(s.schema_info).values(version=s.SCHEMA_VERSION))
        return s.SCHEMA_VERSION

    def ping(self) -> None:
        with self._tx() as conn:
            conn.execute(sa.select(1))

    # ---- keys

    def create_key(
        self,
        user: str,
        *,
        team: str | None = None,
        scopes: Sequence[str] = (),
        name: str = "",
    ) -> tuple[KeyRecord, str]:
        """A new key; returns its record and the secret (shown once, stored only hashed)."""
        unknown = sorted(set(scopes) - set(SCOPE_NAMES))
        if unknown:
            raise InvalidRequest(
                f"unknown scope(s) {', '.join(unknown)}; scopes are {', '.join(SCOPE_NAMES)}",
                param="scopes",
            )
        if not user.strip():
            raise InvalidRequest("a key must belong to a user; give a user name", param="user")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(
            id="key_" + secrets.token_hex(8),
            prefix=secret[:10],
            name=name,
            user=user,
            team=team,
            scopes=frozenset(scopes),
            created_at=time.time(),
        )
        with self._tx() as conn:
            conn.execute(
                sa.insert(s.api_keys).values(
                    id=record.id,
                    hash=hash_key(secret),
                    prefix=record.prefix,
                    name=name,
                    user=user,
                    team=team,
                    scopes=",".join(sorted(record.scopes)),
                    created_at=record.created_at,
                )
            )
        return record, secret

    def lookup_key(self, secret: str) -> KeyRecord | None:
        """The active key with this secret, or None."""
        with self._db(read=True) as db:
            row = self._st.key_by_hash.first(db, {"k_hash": hash_key(secret)})
        return None if row is None else _record(dict(zip(_KEY_COLUMNS, row, strict=True)))

    def get_key(self, key_id: str) -> KeyRecord | None:
        """The key with this id (revoked or not), or None."""
        with self._tx() as conn:
            row = conn.execute(sa.select(s.api_keys).where(s.api_keys.c.id == key_id)).first()
        return None if row is None else _record(row._mapping)

    def list_keys(self, *, include_revoked: bool = False) -> list[KeyRecord]:
        q = sa.select(s.api_keys).order_by(s.api_keys.c.created_at)
        if not include_revoked:
            q = q.where(s.api_keys.c.revoked_at.is_(None))
        with self._tx() as conn:
            return [_record(r._mapping) for r in conn.execute(q)]

    def revoke_key(self, key_id: str) -> bool:
        """Revoke a key; False when no active key has this id."""
        with self._tx() as conn:
            done = conn.execute(
                sa.update(s.api_keys)
                .where(s.api_keys.c.id == key_id, s.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        return bool(done.rowcount)

    def has_keys(self) -> bool:
        with self._db(read=True) as db:
            return self._st.any_key.first(db, {}) is not None

    # ---- limits

    def set_limit(self, limit: Limit) -> None:
        if limit.limit < 0:
            raise InvalidRequest(f"a limit must be >= 0, got {limit.limit}", param="limit")
        key = {
            "scope": limit.scope,
            "subject": limit.subject,
            "metric": limit.metric,
            "window": limit.window,
        }
        with self._tx() as conn:
            t = s.limits
            conn.execute(sa.delete(t).where(*(t.c[k] == v for k, v in key.items())))
            conn.execute(sa.insert(t).values(**key, limit=limit.limit))

    def delete_limit(self, scope: Scope, subject: str, metric: Metric, window: Window) -> bool:
        t = s.limits
        with self._tx() as conn:
            done = conn.execute(
                sa.delete(t).where(
                    t.c.scope == scope,
                    t.c.subject == subject,
                    t.c.metric == metric,
                    t.c.window == window,
                )
            )
        return bool(done.rowcount)

    def limits(self) -> list[Limit]:
        with self._db(read=True) as db:
            return [Limit(*r) for r in self._st.limits.all(db, {})]

    def status(
        self, subjects: Mapping[Scope, str | None], now: float | None = None
    ) -> list[QuotaStatus]:
        """Every limit that binds these subjects, with its current usage."""
        now = time.time() if now is None else now
        out: list[QuotaStatus] = []
        with self._db() as db:
            limits = [Limit(*r) for r in self._st.limits.all(db, {})]
            for lim in applicable(limits, subjects):
                subject = subjects[lim.scope] or ""
                start, end = window_bounds(lim.window, now)
                used = reserved = 0
                if lim.window != "request":
                    row = self._st.counter.first(db, self._counter_params(lim, subject, start))
                    if row is not None:
                        used, reserved = int(row[0]), int(row[1])
                out.append(QuotaStatus(lim, subject, used, reserved, end))
        return out

    # ---- reservation and settlement

    @staticmethod
    def _counter_params(lim: Limit, subject: str, start: int) -> dict[str, Any]:
        return _counter_key(lim.scope, subject, lim.metric, lim.window, start)

    def _hold(
        self, db: Any, lim: Limit, subject: str, start: int, amount: int
    ) -> tuple[int, int] | None:
        """Add ``amount`` to the counter's hold if it fits; else (used, reserved) as they are."""
        st = self._st
        key = self._counter_params(lim, subject, start)
        hold = {**key, "k_amount": amount, "k_limit": lim.limit}
        if st.hold.rowcount(db, hold) == 1:
            return None
        # No row matched: over the limit, or no counter yet, when this window's first
        # request (ours or a concurrent one, still uncommitted then) had not created it.
        # Only a hold on a counter known to exist can refuse: a concurrent creator may
        # have committed it since (PostgreSQL), so the row found now proves nothing.
        if st.counter.first(db, key) is None:
            # A concurrent creator's row wins the conflict (waiting for its commit).
            st.create_counter.rowcount(
                db,
                {
                    "scope": lim.scope,
                    "subject": subject,
                    "metric": lim.metric,
                    "window": lim.window,
                    "window_start": start,
                    "used": 0,
                    "reserved": 0,
                },
            )
        if st.hold.rowcount(db, hold) == 1:
            return None
        found = st.counter.first(db, key)
        assert found is not None  # created above (or by a concurrent creator)
        return int(found[0]), int(found[1])

    def reserve(
        self,
        subjects: Mapping[Scope, str | None],
        demand: Demand,
        *,
        ttl_s: float,
        now: float | None = None,
        limits: Sequence[Limit] | None = None,
    ) -> Reservation | Refusal:
        """Hold ``demand`` against every binding limit, or hold nothing and say which refused.

        ``limits``: the configured limits when the caller has just read them (the gateway
        reads them with the key), so the transaction need not read them again.
        """
        try:
            now = time.time() if now is None else now
            return self._reserve(subjects, demand, ttl_s, now, limits)
        except _Refused as refused:
            return refused.refusal

    def _reserve(
        self,
        subjects: Mapping[Scope, str | None],
        demand: Demand,
        ttl_s: float,
        now: float,
        limits: Sequence[Limit] | None,
    ) -> Reservation | Refusal:
        with self._db() as db:
            if limits is None:
                limits = [Limit(*r) for r in self._st.limits.all(db, {})]
            binding = applicable(limits, subjects)
            # Per-request caps first: they need no counter and refuse cheaply.
            for lim in binding:
                if lim.window == "request" and demand.get(lim.metric) > lim.limit:
                    return Refusal(lim, subjects[lim.scope] or "", 0, 0, demand.get(lim.metric), 0)
            ordered = sorted(
                (lim for lim in binding if lim.window != "request"),
                key=lambda lim: (lim.scope, subjects[lim.scope] or "", lim.metric, lim.window),
            )
            items = [
                (lim, subjects[lim.scope] or "", window_bounds(lim.window, now)[0],
                 demand.get(lim.metric))
                for lim in ordered
            ]  # fmt: skip
            res = Reservation(id=uuid.uuid4().hex, items=tuple(items), demand=demand)
            if not items:
                return res
            # The reservation row first, the holds last: a hold locks its counter row
            # (PostgreSQL) until the commit, and every request of a key or team queues
            # on that lock, so nothing else may run while it is held.
            self._st.add_reservation.rowcount(
                db,
                {
                    "id": res.id,
                    "created_at": now,
                    "expires_at": now + ttl_s,
                    "items": json.dumps(
                        [
                            [lim.scope, subj, lim.metric, lim.window, start, amt]
                            for lim, subj, start, amt in items
                        ]
                    ),
                },
            )
            for lim, subject, start, amount in items:
                refused = self._hold(db, lim, subject, start, amount)
                if refused is not None:
                    used, reserved = refused
                    _, end = window_bounds(lim.window, now)
                    # Raising rolls back the holds taken so far and the reservation row.
                    raise _Refused(Refusal(lim, subject, used, reserved, amount, end))
        return res

    def settle(
        self,
        reservation: Reservation,
        actual: Demand,
        row: LedgerRow | None,
        *,
        thresholds: Sequence[float] = (),
        also: Callable[[sa.Connection], None] | None = None,
    ) -> list[Crossing]:
        """Replace the hold with actual usage and write the ledger row, in one transaction.

        Returns the counters whose usage crossed one of ``thresholds`` (fractions of the limit).
        ``also(conn)`` runs in the same transaction after the row is written (a job
        saves its result there); if it raises, nothing is committed.
        """
        return self._write(lambda db: self._settle(db, reservation, actual, row, thresholds), also)

    def _write(self, body: Callable[[Any], _T], also: Callable[[sa.Connection], None] | None) -> _T:
        """``body(db)`` in one transaction; with ``also``, which writes through SQLAlchemy,
        on the DB-API connection under a SQLAlchemy transaction that ``also(conn)`` shares."""
        if also is None:
            with self._db() as db:
                return body(db)
        with self._tx() as conn:
            result = body(_dbapi(conn))
            also(conn)
        return result

    def _settle(
        self,
        db: Any,
        reservation: Reservation,
        actual: Demand,
        row: LedgerRow | None,
        thresholds: Sequence[float],
    ) -> list[Crossing]:
        crossings: list[Crossing] = []
        st = self._st
        if reservation.items:
            held = st.drop_reservation.rowcount(db, {"k_id": reservation.id}) == 1
        else:
            held = False
        # The row before the charges: they lock counter rows until the commit (see _reserve).
        if row is not None:
            st.add_row.rowcount(db, row.values())
        for lim, subject, start, amount in reservation.items:
            used = actual.get(lim.metric)
            key = self._counter_params(lim, subject, start)
            # The sweeper may already have released a stale hold.
            charge = {**key, "k_release": amount if held else 0, "k_used": used}
            if not (thresholds and used):
                st.charge.rowcount(db, charge)
                continue
            if st.charge_returning is not None:
                found = st.charge_returning.first(db, charge)
            else:
                st.charge.rowcount(db, charge)
                found = st.counter.first(db, key)
            assert found is not None  # the counter holds this reservation's amount
            after = int(found[0])
            before = after - used
            for t in thresholds:
                mark = t * lim.limit
                if before < mark <= after:
                    crossings.append(Crossing(lim, subject, t, after))
        return crossings

    def release(self, reservation: Reservation) -> None:
        """Give back a hold for a request that did not run."""
        self.settle(reservation, Demand(requests=0), None)

    def release_stale(self, now: float | None = None) -> int:
        """Release holds of requests whose process died; returns how many."""
        now = time.time() if now is None else now
        with self._tx() as conn:
            stale = list(
                conn.execute(sa.select(s.reservations).where(s.reservations.c.expires_at < now))
            )
            c = s.counters.c
            for r in stale:
                for scope, subject, metric, window, start, amount in json.loads(r.items):
                    conn.execute(
                        sa.update(s.counters)
                        .where(
                            c.scope == scope,
                            c.subject == subject,
                            c.metric == metric,
                            c.window == window,
                            c.window_start == start,
                        )
                        .values(reserved=c.reserved - amount)
                    )
                conn.execute(sa.delete(s.reservations).where(s.reservations.c.id == r.id))
        return len(stale)

    def counter(
        self, scope: Scope, subject: str, metric: Metric, window: Window, now: float | None = None
    ) -> tuple[int, int]:
        """(used, reserved) of one counter in the window containing ``now``."""
        start, _ = window_bounds(window, time.time() if now is None else now)
        with self._db(read=True) as db:
            row = self._st.counter.first(db, _counter_key(scope, subject, metric, window, start))
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    # ---- ledger

    def insert_row(
        self, row: LedgerRow, *, also: Callable[[sa.Connection], None] | None = None
    ) -> None:
        self._write(lambda db: self._st.add_row.rowcount(db, row.values()), also)

    def row(self, request_id: str) -> LedgerRow | None:
        """The ledger row of one request, or None."""
        with self._tx() as conn:
            found = conn.execute(sa.select(s.requests).where(s.requests.c.id == request_id)).first()
        if found is None:
            return None
        return LedgerRow.from_db(found)

    def set_verdict(self, request_id: str, verdict: str | None) -> bool:
        """Record whether a request's answer was right; False when there is no such row."""
        with self._tx() as conn:
            done = conn.execute(
                sa.update(s.requests).where(s.requests.c.id == request_id).values(verdict=verdict)
            )
        return bool(done.rowcount)

    def rows(self, *, since: float | None = None) -> list[LedgerRow]:
        q = sa.select(s.requests).order_by(s.requests.c.at)
        if since is not None:
            q = q.where(s.requests.c.at >= since)
        with self._tx() as conn:
            return [LedgerRow.from_db(r) for r in conn.execute(q)]

    def row_ids(self) -> set[str]:
        with self._tx() as conn:
            return set(conn.execute(sa.select(s.requests.c.id)).scalars())
