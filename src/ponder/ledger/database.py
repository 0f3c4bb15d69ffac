"""The store's database: its one transaction API, connections, the SQLite write lock and WAL.

Every statement of ponder's store runs inside :meth:`Database.transaction`, whichever
caller it serves (a gateway request, a job, the dashboard, an admin command). A
:class:`Transaction` offers two ways to run statements on the same connection:

- ``tx.db``, the DB-API connection, for the statements of every gateway request,
  compiled once (:mod:`ponder.ledger.statements`): SQLAlchemy's execution path would
  add ~50-100 us to each of them, and its connection handling ~40-75 us to each
  transaction, a third of the store's time per request on SQLite;
- ``tx.execute(stmt)``, for any SQLAlchemy Core statement (admin, jobs, dashboard):
  a SQLAlchemy connection over the same DB-API connection, opened on first use.

Modes: ``write`` (default; SQLite: this process's write lock and ``BEGIN IMMEDIATE``,
so read-check-write is atomic), ``read`` (a read-only snapshot over several statements
that never waits for a writer) and ``autocommit`` (ONE read statement, no transaction).
Database errors become :class:`StoreUnavailable` (fail closed).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from ponder.errors import InvalidRequest, StoreUnavailable
from ponder.ledger import schema as s

__all__ = ["Database", "Mode", "Transaction", "redacted_url", "url_backend"]

logger = logging.getLogger("ponder.ledger")

Mode = Literal["write", "read", "autocommit"]
_MODES = ("write", "read", "autocommit")

# How long a thread waits for this process's SQLite writer (as busy_timeout across processes).
_WRITE_LOCK_TIMEOUT_S = 30.0
_SQLITE_AUTOCHECKPOINT = 1000  # pages, SQLite's default
_SQLITE_BACKSTOP_AUTOCHECKPOINT = 20_000  # ~80 MB of WAL, with a checkpoint thread


def url_backend(url: str) -> str:
    """The database kind a store URL names (``sqlite``, ``postgresql``...); ValueError if none."""
    try:
        return sa.make_url(url).get_backend_name()
    except Exception as exc:
        raise ValueError(str(exc)) from exc


def redacted_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable>"


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


class Transaction:
    """One transaction of the store: ``db`` (DB-API) and :meth:`execute` (Core) share it."""

    __slots__ = ("_core", "_engine", "_fairy", "db")

    def __init__(self, db: Any, engine: sa.Engine, fairy: Any) -> None:
        self.db = db
        self._engine = engine
        # A pool connection (PostgreSQL: the pool's own; SQLite: over this thread's).
        self._fairy = fairy
        self._core: sa.Connection | None = None

    def execute(self, statement: Any) -> sa.CursorResult[Any]:
        """Run a SQLAlchemy Core statement in this transaction."""
        if self._core is None:
            self._core = sa.Connection(self._engine, connection=self._fairy())
        return self._core.execute(statement)

    def _close_core(self) -> None:
        # After the DB-API commit or rollback: SQLAlchemy's own rollback is a no-op then.
        core, self._core = self._core, None
        if core is not None:
            core.close()


class Database:
    """Connections of one store URL (SQLite file or PostgreSQL) and the transactions on them."""

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0) -> None:
        self.url = url
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
            self._sqlite_transactions()
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
        # SQLite: the transactions' own connections, one per thread (see _sqlite).
        self._local = threading.local()
        self._own: set[Any] = set()
        self._own_lock = threading.Lock()
        # WAL pages after which a committing connection checkpoints (see
        # checkpoint_in_background); SQLite's default until a checkpointer runs.
        self._autocheckpoint = _SQLITE_AUTOCHECKPOINT
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_stop = threading.Event()
        # Errors of statements run on the DB-API cursor are the driver's own.
        self._driver_error: type[Exception] = self.engine.dialect.loaded_dbapi.Error
        self.migrate()

    # ---- the one transaction API

    def transaction(self, mode: Mode = "write") -> AbstractContextManager[Transaction]:
        """One transaction (see the module docstring for the modes)."""
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
        # Returned, not wrapped: a context manager layer costs ~1 us per transaction.
        return self._sqlite(mode) if self.dialect == "sqlite" else self._postgres(mode)

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
    def _postgres(self, mode: Mode) -> Iterator[Transaction]:
        errors = (SQLAlchemyError, self._driver_error)
        try:
            fairy = self.engine.raw_connection()  # the pool's, pre-pinged
        except errors as exc:  # the pool raises the driver's
            raise self._unavailable(exc) from exc
        driver = fairy.driver_connection
        tx = Transaction(fairy, self.engine, lambda: fairy)
        try:
            if mode == "autocommit":
                driver.autocommit = True  # type: ignore[union-attr]
            elif mode == "read":
                # One snapshot for every statement of the transaction; read only.
                cursor = fairy.cursor()
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                cursor.close()
            yield tx
            if mode == "write":
                fairy.commit()
            elif mode == "read":
                fairy.rollback()
        except errors as exc:
            fairy.invalidate()  # a connection that failed is not handed out again
            raise self._unavailable(exc) from exc
        except BaseException:
            if mode != "autocommit":
                fairy.rollback()
            raise
        finally:
            if mode == "autocommit" and fairy.dbapi_connection is not None:
                driver.autocommit = False  # type: ignore[union-attr]
            core = tx._core
            tx._core = None
            if core is not None:
                core.close()  # hands the pool connection back
            else:
                fairy.close()

    @contextmanager
    def _sqlite(self, mode: Mode) -> Iterator[Transaction]:
        local = self._local
        db = getattr(local, "db", None)
        try:
            if db is None:
                db = sqlite3.connect(
                    self._sqlite_path, timeout=30, isolation_level=None, check_same_thread=False
                )
                _sqlite_setup(db)
                local.db, local.autocheckpoint = db, _SQLITE_AUTOCHECKPOINT
                # Core statements reach this connection through a pool of its own that
                # never closes or resets it (the transaction ends with our COMMIT).
                connection: Any = db
                local.pool = StaticPool(
                    lambda: connection, reset_on_return=None, dialect=self.engine.dialect
                )
                with self._own_lock:
                    self._own.add(db)
            if local.autocheckpoint != self._autocheckpoint:
                db.execute(f"PRAGMA wal_autocheckpoint={int(self._autocheckpoint)}")
                local.autocheckpoint = self._autocheckpoint
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc
        tx = Transaction(db, self.engine, local.pool.connect)
        errors = (sqlite3.Error, SQLAlchemyError)
        if mode == "autocommit":
            try:
                yield tx
            except errors as exc:
                raise self._unavailable(exc) from exc
            finally:
                if tx._core is not None:
                    tx._close_core()
            return
        # A read snapshot (deferred BEGIN) takes no lock and waits for no writer.
        writer = self._writer() if mode == "write" else contextlib.nullcontext()
        with writer:
            try:
                db.execute("BEGIN IMMEDIATE" if mode == "write" else "BEGIN")
                yield tx
                db.execute("COMMIT")
            except BaseException as exc:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                if isinstance(exc, errors):
                    raise self._unavailable(exc) from exc
                raise
            finally:
                if tx._core is not None:
                    tx._close_core()

    # ---- schema

    def _sqlite_transactions(self) -> None:
        # pysqlite's own transaction handling defers BEGIN and cannot take the write lock
        # up front; the engine's connections (migrations) take it themselves. Core
        # statements on this store's own connections run in the transaction already open.
        @event.listens_for(self.engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            _sqlite_setup(dbapi_conn)

        @event.listens_for(self.engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            if conn.connection.dbapi_connection not in self._own:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

    def migrate(self) -> int:
        """Create or upgrade the schema; returns the version now in place."""
        # DDL and the migrations' table inspection need SQLAlchemy's engine connection.
        try:
            with self._writer(), self.engine.begin() as conn:
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
        except (SQLAlchemyError, self._driver_error) as exc:
            raise self._unavailable(exc) from exc
        return s.SCHEMA_VERSION

    def ping(self) -> None:
        with self.transaction("autocommit") as tx:
            tx.execute(sa.select(1))

    # ---- SQLite WAL checkpoints

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
            own, self._own = self._own, set()
        for db in own:
            with contextlib.suppress(sqlite3.Error):
                db.close()
        self._local = threading.local()
        self.engine.dispose()
