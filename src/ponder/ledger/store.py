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
closed). Calls are synchronous; the gateway runs them in a worker thread. All of
them go through the one transaction API of :class:`~ponder.ledger.database.Database`.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa

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
from ponder.ledger.database import Database, Transaction
from ponder.ledger.owners import owner_is_dead, process_owner
from ponder.ledger.records import (
    KEY_PREFIX,
    SCOPE_NAMES,
    Crossing,
    KeyRecord,
    LedgerRow,
    QuotaStatus,
    Reservation,
    default_url,
    hash_key,
    key_record,
)
from ponder.ledger.statements import KEY_COLUMNS, Statements, counter_key

__all__ = [
    "BIGINT_MAX",
    "KEY_PREFIX",
    "Crossing",
    "KeyRecord",
    "LedgerRow",
    "QuotaStatus",
    "Reservation",
    "Store",
    "StoreUnavailable",
    "check_demand",
    "default_url",
    "hash_key",
]

_T = TypeVar("_T")
# Work done in a store transaction alongside a settlement (a job saves its result there).
Also = Callable[[Transaction], None]


# The largest integer a BIGINT column (and SQLite's INTEGER) holds: a bind value above it
# is an OverflowError in the driver, so it is refused as a 400 before any statement.
BIGINT_MAX = 2**63 - 1


def _checked_text(value: str | None, param: str) -> None:
    # PostgreSQL text cannot hold NUL (SQLite would store it): refuse it on both.
    if value is not None and "\x00" in value:
        raise InvalidRequest(f"{param} must not contain a NUL byte", param=param)


def _checked_amount(value: int, param: str) -> None:
    if not -BIGINT_MAX <= value <= BIGINT_MAX:
        raise InvalidRequest(
            f"{param} must be at most {BIGINT_MAX} (a 64-bit integer), got {value}", param=param
        )


def check_demand(demand: Demand) -> None:
    """Refuse (400) a worst case no counter could hold, before anything is reserved."""
    for metric, amount in demand.as_dict().items():
        if amount > BIGINT_MAX:
            raise InvalidRequest(
                f"the request's worst case of {amount} {metric.replace('_', ' ')} is more than "
                f"a quota counter holds ({BIGINT_MAX}); lower max_tokens or ponder.budget",
                param="max_tokens",
            )


def _plain_id(value: str) -> bool:
    """An id that can name a row: one with a NUL byte names none (and PostgreSQL refuses it)."""
    return "\x00" not in value


class _Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal


class Store(Database):
    """Keys, quota limits and counters, and the request ledger in one database."""

    def __init__(self, url: str | None = None, *, connect_timeout_s: float = 5.0) -> None:
        super().__init__(url or default_url(), connect_timeout_s=connect_timeout_s)
        # After migrate: the dialect knows the server version (RETURNING support) by now.
        self._st = Statements(self.engine.dialect)

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
        for param, text in (("user", user), ("team", team), ("name", name)):
            _checked_text(text, param)
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
        with self.transaction() as tx:
            tx.execute(
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
        with self.transaction("autocommit") as tx:
            db = tx.db
            row = self._st.key_by_hash.first(db, {"k_hash": hash_key(secret)})
        return None if row is None else key_record(dict(zip(KEY_COLUMNS, row, strict=True)))

    def get_key(self, key_id: str) -> KeyRecord | None:
        """The key with this id (revoked or not), or None."""
        if not _plain_id(key_id):
            return None
        with self.transaction("read") as tx:
            row = tx.execute(sa.select(s.api_keys).where(s.api_keys.c.id == key_id)).first()
        return None if row is None else key_record(row._mapping)

    def list_keys(self, *, include_revoked: bool = False) -> list[KeyRecord]:
        q = sa.select(s.api_keys).order_by(s.api_keys.c.created_at)
        if not include_revoked:
            q = q.where(s.api_keys.c.revoked_at.is_(None))
        with self.transaction("read") as tx:
            return [key_record(r._mapping) for r in tx.execute(q)]

    def revoke_key(self, key_id: str) -> bool:
        """Revoke a key; False when no active key has this id."""
        if not _plain_id(key_id):
            return False
        with self.transaction() as tx:
            done = tx.execute(
                sa.update(s.api_keys)
                .where(s.api_keys.c.id == key_id, s.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        return bool(done.rowcount)

    def has_keys(self) -> bool:
        with self.transaction("autocommit") as tx:
            db = tx.db
            return self._st.any_key.first(db, {}) is not None

    # ---- limits

    def set_limit(self, limit: Limit) -> None:
        if limit.limit < 0:
            raise InvalidRequest(f"a limit must be >= 0, got {limit.limit}", param="limit")
        _checked_amount(limit.limit, "limit")
        _checked_text(limit.subject, "subject")
        key = {
            "scope": limit.scope,
            "subject": limit.subject,
            "metric": limit.metric,
            "window": limit.window,
        }
        with self.transaction() as tx:
            t = s.limits
            tx.execute(sa.delete(t).where(*(t.c[k] == v for k, v in key.items())))
            tx.execute(sa.insert(t).values(**key, limit=limit.limit))

    def delete_limit(self, scope: Scope, subject: str, metric: Metric, window: Window) -> bool:
        if not _plain_id(subject):
            return False
        t = s.limits
        with self.transaction() as tx:
            done = tx.execute(
                sa.delete(t).where(
                    t.c.scope == scope,
                    t.c.subject == subject,
                    t.c.metric == metric,
                    t.c.window == window,
                )
            )
        return bool(done.rowcount)

    def limits(self) -> list[Limit]:
        with self.transaction("autocommit") as tx:
            db = tx.db
            return [Limit(*r) for r in self._st.limits.all(db, {})]

    def status(
        self, subjects: Mapping[Scope, str | None], now: float | None = None
    ) -> list[QuotaStatus]:
        """Every limit that binds these subjects, with its current usage."""
        now = time.time() if now is None else now
        out: list[QuotaStatus] = []
        with self.transaction() as tx:
            db = tx.db
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
        return counter_key(lim.scope, subject, lim.metric, lim.window, start)

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
        check_demand(demand)
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
        with self.transaction() as tx:
            db = tx.db
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
                    "owner": process_owner(),
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
        also: Also | None = None,
    ) -> list[Crossing]:
        """Replace the hold with actual usage and write the ledger row, in one transaction.

        Returns the counters whose usage crossed one of ``thresholds`` (fractions of the limit).
        ``also(tx)`` runs in the same transaction after the row is written (a job
        saves its result there); if it raises, nothing is committed.
        """
        return self._write(lambda db: self._settle(db, reservation, actual, row, thresholds), also)

    def _write(self, body: Callable[[Any], _T], also: Also | None) -> _T:
        """``body(db)`` and then ``also(tx)`` in one transaction."""
        with self.transaction() as tx:
            result = body(tx.db)
            if also is not None:
                also(tx)
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

    def release_stale(
        self,
        now: float | None = None,
        *,
        dead: Callable[[str], bool] = owner_is_dead,
    ) -> int:
        """Release holds that expired or whose owner process died; returns how many.

        ``dead(owner)`` judges an owner (by default: a process of this host that no
        longer exists, see :mod:`ponder.ledger.owners`); its holds go at once, whatever
        their TTL. Each hold is released by whoever deletes its row, this sweep or the
        request's own settlement, so it is never given back twice.
        """
        now = time.time() if now is None else now
        r = s.reservations
        released = 0
        with self.transaction() as tx:
            owners = tx.execute(
                sa.select(r.c.owner).where(r.c.owner.is_not(None)).distinct()
            ).scalars()
            gone = [o for o in owners if dead(o)]
            stale = r.c.expires_at < now
            if gone:
                stale = sa.or_(stale, r.c.owner.in_(gone))
            c = s.counters.c
            for row in list(tx.execute(sa.select(r.c.id, r.c["items"]).where(stale))):
                if tx.execute(sa.delete(r).where(r.c.id == row.id)).rowcount != 1:
                    continue  # settled meanwhile: its settlement gave the hold back
                released += 1
                for scope, subject, metric, window, start, amount in json.loads(row.items):
                    tx.execute(
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
        return released

    def counter(
        self, scope: Scope, subject: str, metric: Metric, window: Window, now: float | None = None
    ) -> tuple[int, int]:
        """(used, reserved) of one counter in the window containing ``now``."""
        start, _ = window_bounds(window, time.time() if now is None else now)
        with self.transaction("autocommit") as tx:
            db = tx.db
            row = self._st.counter.first(db, counter_key(scope, subject, metric, window, start))
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    # ---- ledger

    def insert_row(self, row: LedgerRow, *, also: Also | None = None) -> None:
        self._write(lambda db: self._st.add_row.rowcount(db, row.values()), also)

    def row(self, request_id: str) -> LedgerRow | None:
        """The ledger row of one request, or None."""
        with self.transaction("read") as tx:
            found = tx.execute(sa.select(s.requests).where(s.requests.c.id == request_id)).first()
        if found is None:
            return None
        return LedgerRow.from_db(found)

    def set_verdict(self, request_id: str, verdict: str | None) -> bool:
        """Record whether a request's answer was right; False when there is no such row."""
        with self.transaction() as tx:
            done = tx.execute(
                sa.update(s.requests).where(s.requests.c.id == request_id).values(verdict=verdict)
            )
        return bool(done.rowcount)

    def rows(self, *, since: float | None = None) -> list[LedgerRow]:
        q = sa.select(s.requests).order_by(s.requests.c.at)
        if since is not None:
            q = q.where(s.requests.c.at >= since)
        with self.transaction("read") as tx:
            return [LedgerRow.from_db(r) for r in tx.execute(q)]

    # ---- Responses API conversations (previous_response_id)

    @staticmethod
    def put_conversation(
        tx: Transaction, response_id: str, key_id: str | None, messages: str
    ) -> None:
        """Keep a response's conversation (JSON text) inside a settlement transaction."""
        tx.execute(
            sa.insert(s.conversations).values(
                id=response_id, key_id=key_id, created_at=time.time(), messages=messages
            )
        )

    def get_conversation(self, response_id: str, key_id: str | None) -> list[Any] | None:
        """The conversation kept under ``response_id``, for the key that created it only."""
        with self.transaction("read") as tx:
            found = tx.execute(
                sa.select(s.conversations.c.key_id, s.conversations.c.messages).where(
                    s.conversations.c.id == response_id
                )
            ).first()
        if found is None or found[0] != key_id:
            return None
        messages: list[Any] = json.loads(found[1])
        return messages

    def row_ids(self) -> set[str]:
        with self.transaction("read") as tx:
            return set(tx.execute(sa.select(s.requests.c.id)).scalars())
