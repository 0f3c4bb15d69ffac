"""The prefix cache's bookkeeping against a simulated KV memory (no model needed)."""

from __future__ import annotations

import pytest

from ponder.backends.prefix_cache import PrefixCache, common_prefix


class SimulatedMemory:
    """KV memory as a set of positions per sequence id, like llama.cpp's seq_* operations."""

    def __init__(self, partial_removal: bool = True) -> None:
        self.seqs: dict[int, set[int]] = {}
        self.partial_removal = partial_removal

    def fill(self, seq_id: int, length: int) -> None:
        self.seqs[seq_id] = set(range(length))

    def seq_rm(self, seq_id: int, p0: int, p1: int) -> bool:
        held = self.seqs.setdefault(seq_id, set())
        whole = p0 < 0 and p1 < 0
        if not whole and not self.partial_removal:
            return False
        hi = float("inf") if p1 < 0 else p1
        self.seqs[seq_id] = {p for p in held if not (max(p0, 0) <= p < hi)}
        return True

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        hi = float("inf") if p1 < 0 else p1
        self.seqs.setdefault(dst, set()).update(
            p for p in self.seqs.get(src, set()) if max(p0, 0) <= p < hi
        )


def cache_with(memory: SimulatedMemory, *rows: tuple[int, list[int]], shared: int = 0):
    cache = PrefixCache(memory)
    for seq_id, tokens in rows:
        memory.fill(seq_id, len(tokens))
    cache.insert(list(rows), shared=shared)
    return cache


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [1]) == 0


def test_match_is_the_longest_common_prefix_and_leaves_the_last_prompt_token() -> None:
    mem = SimulatedMemory()
    cache = cache_with(mem, (0, [1, 2, 3, 4, 5]))
    cache.insert([(1, [1, 2, 9, 9])], shared=2)
    mem.fill(1, 4)

    entry, k = cache.match([1, 2, 3, 4, 7, 8])
    assert entry is not None and entry.seq_id == 0 and k == 4
    # A prompt the cache holds whole still re-evaluates its last token (for its logits).
    entry, k = cache.match([1, 2, 3])
    assert entry is not None and k == 2
    assert cache.match([7, 1, 2]) == (None, 0)
    assert cache.match([1]) == (None, 0)


def test_insert_drops_duplicates_and_sequences_another_one_extends() -> None:
    mem = SimulatedMemory()
    for sid in (0, 1, 2):
        mem.fill(sid, 5)
    cache = PrefixCache(mem)
    freed = cache.insert([(0, [1, 2, 3]), (1, [1, 2, 3, 4]), (2, [1, 2, 3, 4])], shared=3)

    assert sorted(freed) == [0, 2]  # the first of two equal histories is kept
    assert len(cache) == 1
    kept = cache.entries()[0]
    assert kept.tokens == (1, 2, 3, 4)
    for sid in freed:
        assert mem.seqs[sid] == set()  # the memory of a dropped sequence is freed

    # A later, longer history of the same beginning subsumes the cached one.
    mem.fill(5, 6)
    freed = cache.insert([(5, [1, 2, 3, 4, 5, 6])], shared=4)
    assert freed == [kept.seq_id]
    assert [e.seq_id for e in cache.entries()] == [5]


def test_eviction_is_least_recently_used_and_spares_the_matched_sequence() -> None:
    mem = SimulatedMemory()
    cache = cache_with(mem, (0, [1, 1, 1]))
    mem.fill(1, 3)
    cache.insert([(1, [2, 2, 2])], shared=3)
    mem.fill(2, 3)
    cache.insert([(2, [3, 3, 3])], shared=3)
    entry, _ = cache.match([1, 1, 1, 1])
    assert entry is not None
    cache.touch(entry)  # 0 is now the most recent

    assert cache.evict_lru(keep=None) == 1
    assert cache.evict_lru(keep=entry) == 2
    assert cache.evict_lru(keep=entry) is None
    assert cache.stats.evictions == 2
    assert mem.seqs[1] == set() and mem.seqs[2] == set() and mem.seqs[0] == {0, 1, 2}


def test_cells_count_a_shared_prompt_once_and_return_to_zero() -> None:
    mem = SimulatedMemory()
    for sid in (0, 1, 2):
        mem.fill(sid, 14)
    cache = PrefixCache(mem)
    cache.insert([(0, [0] * 10 + [1] * 4), (1, [0] * 10 + [2] * 2), (2, [0] * 10 + [3])], shared=10)
    # Real cells: 10 shared + 4 + 2 + 1.
    assert cache.cells == 17
    assert cache.evict_lru() == 0
    assert cache.evict_lru() == 1
    assert cache.cells == 10 + 1  # the last member still holds the shared prompt
    cache.clear()
    assert cache.cells == 0 and len(cache) == 0
    assert all(not held for held in mem.seqs.values())


def test_take_hands_over_the_slot_cut_to_the_shared_prefix() -> None:
    mem = SimulatedMemory()
    cache = cache_with(mem, (3, [1, 2, 3, 4, 5, 6]), shared=6)
    entry, k = cache.match([1, 2, 3, 9])
    assert entry is not None and k == 3

    assert cache.take(entry, k) == 3
    assert mem.seqs[3] == {0, 1, 2}
    assert len(cache) == 0 and cache.cells == 0


def test_take_empties_the_slot_when_the_memory_cannot_cut_a_sequence() -> None:
    mem = SimulatedMemory(partial_removal=False)
    cache = cache_with(mem, (3, [1, 2, 3, 4]), shared=4)
    entry, k = cache.match([1, 2, 3, 9])
    assert entry is not None

    assert cache.take(entry, k) == 0
    assert mem.seqs[3] == set()


@pytest.mark.parametrize(("prompt", "reused"), [(20, 19), (0, 0)])
def test_hit_rate_counts_reused_prompt_tokens(prompt: int, reused: int) -> None:
    cache = PrefixCache(SimulatedMemory())
    cache.record(10, 0)
    cache.record(prompt, reused)
    assert cache.stats.lookups == 2
    assert cache.stats.hits == (1 if reused else 0)
    assert cache.stats.hit_rate == pytest.approx(reused / (10 + prompt))
