"""Cross-call KV prefix cache of the embedded engine: which idle sequence holds which tokens.

When a request finishes, the KV of its sequences stays in the engine's memory
under their sequence ids, and this cache remembers the tokens at positions
``0 .. len-1`` of each. A new request whose prompt starts with the same tokens
copies those cells (``seq_cp``, no recompute) and evaluates only the rest.
Matching is longest-common-prefix over token ids, so a prompt that re-renders
an earlier answer a little differently still reuses everything up to the first
differing token.

The cache only does bookkeeping; the memory operations go through a
:class:`SequenceMemory`, so the logic is testable without a model. Cell
accounting is an upper bound of the cells the cached sequences really hold:
the sequences of one request share its prompt cells and are counted as one
group, and cells shared with other groups are counted twice, never zero times.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["CachedSequence", "PrefixCache", "PrefixStats", "SequenceMemory", "common_prefix"]


class SequenceMemory(Protocol):
    """The two KV memory operations the cache needs (llama.cpp's ``llama_memory_seq_*``)."""

    def seq_rm(self, seq_id: int, p0: int, p1: int) -> bool: ...

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None: ...


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class _Group:
    """The cached sequences of one finished request: they share ``shared`` prompt cells."""

    shared: int
    members: int = 0


@dataclass
class CachedSequence:
    seq_id: int
    tokens: tuple[int, ...]
    group: _Group
    last_used: int

    @property
    def own_cells(self) -> int:
        return len(self.tokens) - self.group.shared


@dataclass
class PrefixStats:
    """Counters since the engine started; ``hit_rate`` is reused / all prompt tokens."""

    lookups: int = 0
    hits: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    evictions: int = 0

    @property
    def hit_rate(self) -> float:
        return self.reused_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "lookups": self.lookups,
            "hits": self.hits,
            "prompt_tokens": self.prompt_tokens,
            "reused_tokens": self.reused_tokens,
            "evictions": self.evictions,
            "hit_rate": round(self.hit_rate, 4),
        }


class PrefixCache:
    """Idle sequences kept for reuse, evicted least recently used first."""

    def __init__(self, memory: SequenceMemory) -> None:
        self._memory = memory
        self._entries: dict[int, CachedSequence] = {}
        self._clock = itertools.count()
        self.cells = 0
        self.stats = PrefixStats()

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[CachedSequence]:
        return list(self._entries.values())

    def match(self, prompt: Sequence[int]) -> tuple[CachedSequence | None, int]:
        """The cached sequence sharing the longest prefix with ``prompt``, and that length.

        The length stops one short of the whole prompt: the last prompt token is
        always evaluated again, since its logits choose the first new token.
        """
        best: CachedSequence | None = None
        length = 0
        for entry in self._entries.values():
            k = common_prefix(entry.tokens, prompt)
            if k > length or (
                k == length and best is not None and entry.last_used > best.last_used
            ):
                best, length = entry, k
        length = min(length, len(prompt) - 1)
        return (best, length) if best is not None and length > 0 else (None, 0)

    def record(self, prompt_tokens: int, reused: int) -> None:
        self.stats.lookups += 1
        self.stats.prompt_tokens += prompt_tokens
        self.stats.reused_tokens += reused
        if reused:
            self.stats.hits += 1

    def touch(self, entry: CachedSequence) -> None:
        entry.last_used = next(self._clock)

    def evict_lru(self, keep: CachedSequence | None = None) -> int | None:
        """Drop the least recently used sequence (never ``keep``); its id, or None if none."""
        victims = [e for e in self._entries.values() if e is not keep]
        if not victims:
            return None
        victim = min(victims, key=lambda e: e.last_used)
        self._drop(victim)
        self.stats.evictions += 1
        return victim.seq_id

    def take(self, entry: CachedSequence, length: int) -> int:
        """Hand ``entry``'s slot to a new request with its first ``length`` positions.

        Returns how many positions the slot keeps: ``length``, or 0 when the
        memory cannot cut a sequence short (then the slot is emptied).
        """
        self._forget(entry)
        if self._memory.seq_rm(entry.seq_id, length, -1):
            return length
        self._memory.seq_rm(entry.seq_id, -1, -1)
        return 0

    def insert(self, histories: Sequence[tuple[int, Sequence[int]]], shared: int) -> list[int]:
        """Keep the finished sequences ``(seq_id, tokens in KV)`` of one request.

        ``shared`` is how many leading positions they share (the prompt). Duplicate
        or subsumed sequences are dropped, new or old; returns the ids freed.
        """
        freed: list[int] = []
        kept: list[tuple[int, tuple[int, ...]]] = []
        for seq_id, tokens in sorted(histories, key=lambda h: -len(h[1])):
            toks = tuple(tokens)
            if not toks or any(k[: len(toks)] == toks for _, k in kept):
                self._memory.seq_rm(seq_id, -1, -1)
                freed.append(seq_id)
            else:
                kept.append((seq_id, toks))
        for old in list(self._entries.values()):
            if any(toks[: len(old.tokens)] == old.tokens for _, toks in kept):
                self._drop(old)
                freed.append(old.seq_id)
        if not kept:
            return freed
        group = _Group(shared=min(shared, *(len(t) for _, t in kept)))
        self.cells += group.shared
        for seq_id, toks in kept:
            entry = CachedSequence(seq_id, toks, group, next(self._clock))
            group.members += 1
            self.cells += entry.own_cells
            self._entries[seq_id] = entry
        return freed

    def clear(self) -> list[int]:
        """Drop every cached sequence; the ids freed."""
        ids = list(self._entries)
        for entry in list(self._entries.values()):
            self._drop(entry)
        return ids

    def _forget(self, entry: CachedSequence) -> None:
        del self._entries[entry.seq_id]
        self.cells -= entry.own_cells
        entry.group.members -= 1
        if entry.group.members == 0:
            self.cells -= entry.group.shared

    def _drop(self, entry: CachedSequence) -> None:
        self._forget(entry)
        self._memory.seq_rm(entry.seq_id, -1, -1)
