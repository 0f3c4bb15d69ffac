"""Every store test runs against SQLite and PostgreSQL.

PostgreSQL tests skip with the reason when no server is reachable, unless
``PONDER_REQUIRE_POSTGRES=1`` (CI), where an unreachable server fails them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ponder.ledger import Store
from ponder.ledger.testing import PostgresUnavailable, temporary_store


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    try:
        with temporary_store(request.param, tmp_path) as s:
            yield s
    except PostgresUnavailable as exc:
        if os.environ.get("PONDER_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PONDER_REQUIRE_POSTGRES=1 but {exc}")
        pytest.skip(str(exc))
