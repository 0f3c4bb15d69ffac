"""The store's records: API keys, reservations, quota states and ledger rows (plain data)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ponder.budget.quota import Demand, Limit

__all__ = [
    "KEY_PREFIX",
    "SCOPE_NAMES",
    "Crossing",
    "KeyRecord",
    "LedgerRow",
    "QuotaStatus",
    "Reservation",
    "default_url",
    "hash_key",
    "key_record",
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


def key_record(row: Mapping[Any, Any]) -> KeyRecord:
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
