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
    "conversations",
    "counters",
    "jobs",
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
    # The process holding it (host:pid:start, see ponder.ledger.owners): a restart
    # frees the holds of a dead process on its host at once, not after expires_at.
    sa.Column("owner", sa.String(160), nullable=True),
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
    # The router's view of the request (JSON: features, score, scorer; the prompt text
    # only when router.record_prompts is set), for `ponder route train --from-ledger`.
    sa.Column("features", sa.Text, nullable=True),
)


jobs = sa.Table(
    "ponder_jobs",
    metadata,
    # Unguessable (128 random bits): knowing the id is not enough to read a job,
    # but ids in logs or URLs must not be enumerable either.
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),  # queued/running/succeeded/failed/cancelled
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("key_id", sa.String(32), nullable=True),
    sa.Column("user", sa.String(200), nullable=True),
    sa.Column("team", sa.String(200), nullable=True),
    sa.Column("session", sa.String(200), nullable=True),
    # The caller's scopes when it had no key (an open gateway); keyed callers are
    # looked up again when the job runs, so a revoked key runs nothing.
    sa.Column("scopes", sa.String(200), nullable=False, default=""),
    # The validated chat-completion body and the x-ponder-* headers (never credentials).
    sa.Column("request", sa.Text, nullable=False),
    sa.Column("headers", sa.Text, nullable=False),
    # The id of the run's ledger row (and of its chat.completion): one per job, so a
    # run can be recorded once only.
    sa.Column("request_id", sa.String(64), nullable=False, unique=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    # Who runs it and until when that claim holds (renewed while it runs).
    sa.Column("worker", sa.String(160), nullable=True),
    sa.Column("lease_until", sa.Float, nullable=True),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("http_status", sa.Integer, nullable=True),
    sa.Column("result", sa.Text, nullable=True),  # chat.completion JSON
    sa.Column("error", sa.Text, nullable=True),  # OpenAI error body JSON
    # JSON list of the earlier attempts that did not finish (interrupted, requeued).
    sa.Column("history", sa.Text, nullable=True),
    sa.Index("ix_ponder_jobs_status_created", "status", "created_at"),
    sa.Index("ix_ponder_jobs_key_created", "key_id", "created_at"),
)

# The conversation of a Responses API answer, for a later ``previous_response_id``.
conversations = sa.Table(
    "ponder_conversations",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    # The key that created it: only that key reads it back (None: an open gateway).
    sa.Column("key_id", sa.String(32), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    # JSON list of chat messages (the request's conversation and the answer).
    sa.Column("messages", sa.Text, nullable=False),
)


def _v1(conn: sa.Connection) -> None:
    # Only the tables of version 1: later tables come with their own migration. (Later
    # columns of these tables are created here too, from the current definition, so the
    # migration that adds one checks first.)
    metadata.create_all(
        conn, tables=[schema_info, api_keys, limits, counters, reservations, requests]
    )


def _v2(conn: sa.Connection) -> None:
    jobs.create(conn, checkfirst=True)


def _add_column(conn: sa.Connection, table: sa.Table, column: str) -> None:
    present = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    if column not in present:
        col = table.c[column]
        kind = col.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column}" {kind}')


def _v3(conn: sa.Connection) -> None:
    _add_column(conn, requests, "features")


def _v4(conn: sa.Connection) -> None:
    _add_column(conn, reservations, "owner")
    _add_column(conn, jobs, "history")


def _v5(conn: sa.Connection) -> None:
    conversations.create(conn, checkfirst=True)


# MIGRATIONS[i] takes a database at version i to version i + 1.
MIGRATIONS: list[Callable[[sa.Connection], None]] = [_v1, _v2, _v3, _v4, _v5]
SCHEMA_VERSION = len(MIGRATIONS)
