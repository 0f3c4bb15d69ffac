"""Tables of the governance store (SQLAlchemy Core) and their migrations.

``SCHEMA_VERSION`` is the version this code writes; :func:`migrate` brings an
older database up to it, one step at a time, in a transaction per step.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "api_keys",
    "counters",
    "limits",
    "metadata",
    "requests",
    "reservations",
    "schema_info",
]

metadata = sa.MetaData()

schema_info = sa.Table(
    "ponder_schema",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

api_keys = sa.Table(
    "ponder_api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    # SHA-256 of the whole secret: keys are 256-bit random, so a fast hash is enough
    # and lookups stay one indexed read. The secret itself is never stored.
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("name", sa.String(200), nullable=False, default=""),
    sa.Column("user", sa.String(200), nullable=False),
    sa.Column("team", sa.String(200), nullable=True),
    sa.Column("scopes", sa.String(200), nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
)

limits = sa.Table(
    "ponder_quota_limits",
    metadata,
    sa.Column("scope", sa.String(16), primary_key=True),
    sa.Column("subject", sa.String(200), primary_key=True),
    sa.Column("metric", sa.String(32), primary_key=True),
    sa.Column("window", sa.String(16), primary_key=True),
    sa.Column("limit", sa.BigInteger, nullable=False),
)

counters = sa.Table(
    "ponder_quota_counters",
    metadata,
    sa.Column("scope", sa.String(16), primary_key=True),
    sa.Column("subject", sa.String(200), primary_key=True),
    sa.Column("metric", sa.String(32), primary_key=True),
    sa.Column("window", sa.String(16), primary_key=True),
    sa.Column("window_start", sa.BigInteger, primary_key=True),
    sa.Column("used", sa.BigInteger, nullable=False, default=0),
    sa.Column("reserved", sa.BigInteger, nullable=False, default=0),
)

reservations = sa.Table(
    "ponder_reservations",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    # After this a crashed holder's reservation is released by the sweeper.
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
    # JSON list of [scope, subject, metric, window, window_start, amount].
    sa.Column("items", sa.Text, nullable=False),
)

requests = sa.Table(
    "ponder_requests",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("at", sa.Float, nullable=False, index=True),
    sa.Column("key_id", sa.String(32), nullable=True, index=True),
    sa.Column("user", sa.String(200), nullable=True),
    sa.Column("team", sa.String(200), nullable=True),
    sa.Column("session", sa.String(200), nullable=True),
    sa.Column("task_class", sa.String(64), nullable=False),
    sa.Column("strategy", sa.String(64), nullable=False),
    sa.Column("tier", sa.String(64), nullable=True),
    sa.Column("model", sa.String(200), nullable=True),
    sa.Column("plan", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("http_status", sa.Integer, nullable=False),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("cached_input_tokens", sa.BigInteger, nullable=False),
    sa.Column("reasoning_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    sa.Column("estimated", sa.Boolean, nullable=False),
    sa.Column("cost_micro", sa.BigInteger, nullable=False),
    sa.Column("engine_s", sa.Float, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("ttft_ms", sa.Float, nullable=True),
    sa.Column("truncated", sa.Boolean, nullable=False),
    sa.Column("verdict", sa.String(32), nullable=True),
)


def _v1(conn: sa.Connection) -> None:
    metadata.create_all(conn)


# MIGRATIONS[i] takes a database at version i to version i + 1.
MIGRATIONS: list[Callable[[sa.Connection], None]] = [_v1]
SCHEMA_VERSION = len(MIGRATIONS)
