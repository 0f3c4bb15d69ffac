"""A serving gateway releases quota holds left by dead processes, not only at startup."""

from __future__ import annotations

import asyncio
import time

from ponder.backends.fake import FakeBackend
from ponder.budget.quota import Demand, Limit
from ponder.ledger import Reservation, Store
from ponder.server.app import _sweep_stale_holds
from ponder.server.gateway import Gateway

SUBJECTS = {"key": "key_a", "user": "alice", "team": "ml", "session": None}


async def test_the_sweeper_releases_expired_holds_while_serving(store: Store) -> None:
    store.set_limit(Limit("user", "alice", "tokens", "day", 100))
    # A hold of a request whose process died: it expired a second ago.
    held = store.reserve(SUBJECTS, Demand(tokens=80), ttl_s=1, now=time.time() - 2)
    live = store.reserve(SUBJECTS, Demand(tokens=10), ttl_s=600)
    assert isinstance(held, Reservation) and isinstance(live, Reservation)
    gateway = Gateway(FakeBackend(["ok"]), store=store)

    sweeper = asyncio.create_task(_sweep_stale_holds(gateway, every_s=0.05))
    try:
        for _ in range(100):
            if store.counter("user", "alice", "tokens", "day")[1] == 10:
                break
            await asyncio.sleep(0.05)
    finally:
        sweeper.cancel()

    # The dead request's 80 are free again; the live request keeps its 10.
    assert store.counter("user", "alice", "tokens", "day") == (0, 10)
