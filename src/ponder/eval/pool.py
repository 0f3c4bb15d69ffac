"""A persistent sample pool: generate once, replay exactly.

``PooledBackend`` wraps any backend and stores every call's generations on
disk, keyed by the request without ``n``. A later request for ``k`` samples
with the same settings is served from a stored call with at least ``k``
samples: its first ``k``. This is exact, not an approximation, on engines
whose sample ``i`` depends only on ``(seed, i)`` (the embedded engine seeds
each sequence that way), so one N = 8 run also yields the N = 1, 2, 4 points
of a scaling curve, and every policy of a routing benchmark can be replayed
over the same candidates. Usage is replayed with the generations, so the
token accounting of a replayed run equals that of a live one.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from ponder.backends.base import Backend
from ponder.types import Capabilities, Delta, Generation, GenRequest

__all__ = ["PooledBackend", "request_key"]


# Fields added to the request types after pools were recorded: left out of the key at
# their defaults, so a request that does not use them keeps the key it always had (a
# new field must be added here, or every committed pool stops replaying).
_LATER_REQUEST_FIELDS = {
    "tools": [],
    "tool_choice": "auto",
    "constraint": None,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "logit_bias": {},
}
_LATER_MESSAGE_FIELDS = {"tool_calls": [], "tool_call_id": None, "name": None}


def request_key(req: GenRequest, model: str) -> str:
    # Logprobs do not change what is sampled: one stored call serves both kinds.
    data = req.model_dump(mode="json", exclude={"n", "deadline", "logprobs", "top_logprobs"})
    for name, default in _LATER_REQUEST_FIELDS.items():
        if data.get(name) == default:
            data.pop(name, None)
    for message in data["messages"]:
        for name, default in _LATER_MESSAGE_FIELDS.items():
            if message.get(name) == default:
                message.pop(name, None)
    data["model"] = model
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class PooledBackend:
    """Serve repeated requests from a JSONL pool; generate (and store) what is missing."""

    def __init__(self, inner: Backend, path: str | Path, model: str | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.model = model or inner.name
        self.capabilities: Capabilities = inner.capabilities
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pool: dict[str, list[Generation]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        if self.path.exists():
            with open(self.path) as fh:
                for line in fh:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # torn last line
                    gens = [Generation.model_validate(g) for g in row["generations"]]
                    if len(gens) >= len(self._pool.get(row["key"], [])):
                        self._pool[row["key"]] = gens

    def __len__(self) -> int:
        return len(self._pool)

    async def generate(self, req: GenRequest) -> list[Generation]:
        key = request_key(req, self.model)
        stored = self._pool.get(key)
        if stored is not None and len(stored) >= req.n and self._has_logprobs(stored, req):
            self.hits += 1
            served = [g.model_copy(deep=True) for g in stored[: req.n]]
            if not req.logprobs:
                for g in served:
                    g.logprobs = None
            return served
        self.misses += 1
        gens = await self.inner.generate(req)
        if all(g.finish_reason != "deadline" for g in gens):  # a cut-short call is not reusable
            self._store(key, gens)
        return gens

    @staticmethod
    def _has_logprobs(stored: list[Generation], req: GenRequest) -> bool:
        return not req.logprobs or all(g.logprobs is not None for g in stored)

    def _store(self, key: str, gens: list[Generation]) -> None:
        with self._lock:
            old = self._pool.get(key, [])
            richer = all(g.logprobs is not None for g in gens) and any(
                g.logprobs is None for g in old
            )
            if len(gens) < len(old) or (len(gens) == len(old) and not richer):
                return
            self._pool[key] = gens
            with open(self.path, "a") as fh:
                fh.write(
                    json.dumps(
                        {"key": key, "generations": [g.model_dump(mode="json") for g in gens]}
                    )
                    + "\n"
                )
                fh.flush()
                os.fsync(fh.fileno())

    def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        return self.inner.stream(req)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()
