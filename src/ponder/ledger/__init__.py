"""The governance store: API keys, quota limits and counters, and the request ledger.

SQLite (WAL) by default, PostgreSQL by URL (``pip install 'psycopg[binary]'``).
"""

from ponder.ledger.store import (
    KeyRecord,
    LedgerRow,
    QuotaStatus,
    Reservation,
    Store,
    StoreUnavailable,
    default_url,
)

__all__ = [
    "KeyRecord",
    "LedgerRow",
    "QuotaStatus",
    "Reservation",
    "Store",
    "StoreUnavailable",
    "default_url",
]
