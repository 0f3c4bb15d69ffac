"""Throwaway stores for tests (yours and ours): SQLite in a temp dir, PostgreSQL in a fresh schema.

    with temporary_store("sqlite", tmp_path) as store: ...
    with temporary_store("postgresql") as store: ...   # PONDER_TEST_POSTGRES_URL or 127.0.0.1

A PostgreSQL store lives in its own schema, dropped afterwards, so parallel
test runs sharing one database do not see each other's rows.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ponder.ledger.store import Store

__all__ = ["DEFAULT_POSTGRES_URL", "PostgresUnavailable", "postgres_url", "temporary_store"]

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server (or no driver) to test against; the message says why."""


def postgres_url() -> str:
    return os.environ.get("PONDER_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def _admin_engine(url: str):  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise PostgresUnavailable(
            "psycopg is not installed; pip install 'psycopg[binary]'"
        ) from exc
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as exc:
        engine.dispose()
        raise PostgresUnavailable(
            f"cannot reach PostgreSQL at {url} ({type(exc).__name__}); start one or set "
            "PONDER_TEST_POSTGRES_URL"
        ) from exc
    return engine


@contextmanager
def temporary_store(kind: str, directory: Path | None = None) -> Iterator[Store]:
    """A fresh, empty :class:`Store` of ``kind`` ("sqlite" or "postgresql")."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            store = Store(f"sqlite:///{Path(tmp) / 'ponder.db'}")
            try:
                yield store
            finally:
                store.close()
        return
    if kind != "postgresql":
        raise ValueError(f"kind must be 'sqlite' or 'postgresql', got {kind!r}")
    import sqlalchemy as sa

    url = postgres_url()
    admin = _admin_engine(url)
    schema = "ponder_test_" + secrets.token_hex(6)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    scoped = sa.make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    store = Store(scoped.render_as_string(hide_password=False))
    try:
        yield store
    finally:
        store.close()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
