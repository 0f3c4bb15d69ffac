"""The statements of every gateway request, compiled once per store and run on DB-API.

The statements of every gateway request (key lookup, limits, hold, charge, the ledger
row) are tiny: SQLite runs one in ~10 us, while SQLAlchemy's execution path (cache key,
parameter processing, result wrapping) adds ~50-100 us to each. The SQL still comes from
the Core statement (quoting, paramstyle, RETURNING per dialect); only the execution
skips the layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from ponder.budget.quota import Metric, Scope, Window
from ponder.ledger import schema as s
from ponder.ledger.records import LedgerRow

__all__ = [
    "COUNTER_COLUMNS",
    "KEY_COLUMNS",
    "LIMIT_COLUMNS",
    "Compiled",
    "Statements",
    "counter_key",
]


def counter_key(
    scope: Scope, subject: str, metric: Metric, window: Window, start: int
) -> dict[str, Any]:
    """The bind parameters that name one counter row (see :class:`Statements`)."""
    return {
        "k_scope": scope,
        "k_subject": subject,
        "k_metric": metric,
        "k_window": window,
        "k_start": start,
    }


# How long a thread waits for this process's SQLite writer (as busy_timeout across processes).


class Compiled:
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


LIMIT_COLUMNS = ("scope", "subject", "metric", "window", "limit")
KEY_COLUMNS = ("id", "prefix", "name", "user", "team", "scopes", "created_at", "revoked_at")
COUNTER_COLUMNS = ("scope", "subject", "metric", "window", "window_start", "used", "reserved")


class Statements:
    """The statements of every gateway request, compiled once per store.

    They take bind parameters (``k_*``, so they never collide with column names in
    an UPDATE) and run through :class:`Compiled`.
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
        self.hold = Compiled(
            sa.update(s.counters)
            .where(*key, c.used + c.reserved + amount <= limit)
            .values(reserved=c.reserved + amount),
            dialect,
        )
        self.counter = Compiled(sa.select(c.used, c.reserved).where(*key), dialect)
        insert = pg_dialect.insert if dialect.name == "postgresql" else sqlite_dialect.insert
        self.create_counter = Compiled(
            insert(s.counters).on_conflict_do_nothing(), dialect, COUNTER_COLUMNS
        )
        charge = (
            sa.update(s.counters)
            .where(*key)
            .values(
                reserved=c.reserved - sa.bindparam("k_release", type_=sa.BigInteger),
                used=c.used + sa.bindparam("k_used", type_=sa.BigInteger),
            )
        )
        self.charge = Compiled(charge, dialect)
        # With RETURNING the usage after the charge comes back without a second query.
        self.charge_returning = (
            Compiled(charge.returning(c.used), dialect) if dialect.update_returning else None
        )
        self.add_reservation = Compiled(
            sa.insert(s.reservations),
            dialect,
            ("id", "created_at", "expires_at", "items", "owner"),
        )
        self.drop_reservation = Compiled(
            sa.delete(s.reservations).where(s.reservations.c.id == sa.bindparam("k_id")),
            dialect,
        )
        self.add_row = Compiled(sa.insert(s.requests), dialect, [f.name for f in fields(LedgerRow)])
        self.limits = Compiled(sa.select(*(s.limits.c[n] for n in LIMIT_COLUMNS)), dialect)
        k = s.api_keys.c
        self.key_by_hash = Compiled(
            sa.select(*(k[n] for n in KEY_COLUMNS)).where(
                k.hash == sa.bindparam("k_hash"), k.revoked_at.is_(None)
            ),
            dialect,
        )
        self.any_key = Compiled(sa.select(k.id).where(k.revoked_at.is_(None)).limit(1), dialect)
