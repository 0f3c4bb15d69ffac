"""Thin wrappers over one llama.cpp context: its KV memory operations and batched decoding."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ponder.errors import BackendError

__all__ = ["BatchDecoder", "LlamaMemory"]


class LlamaMemory:
    """llama.cpp's KV memory operations on one context (``llama_memory_seq_*``)."""

    def __init__(self, ll: Any, ctx: Any) -> None:
        self._ll = ll
        self._ctx = ctx

    def seq_rm(self, seq_id: int, p0: int, p1: int) -> bool:
        mem = self._ll.llama_get_memory(self._ctx)
        return bool(self._ll.llama_memory_seq_rm(mem, seq_id, p0, p1))

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        mem = self._ll.llama_get_memory(self._ctx)
        self._ll.llama_memory_seq_cp(mem, src, dst, p0, p1)


class BatchDecoder:
    """One reusable ``llama_batch``: fill it with (token, position, seq_id, want_logits) rows."""

    def __init__(self, ll: Any, ctx: Any, capacity: int, n_vocab: int) -> None:
        self._ll = ll
        self._ctx = ctx
        self._batch = ll.llama_batch_init(capacity, 0, 1)
        self._n_vocab = n_vocab
        self._logit_rows: list[int] = []
        # Seconds and rows inside llama_decode, by what was decoded ("prompt" or
        # "generate"): where an engine's time goes (benchmarks/prefix_cache.py).
        self.seconds = {"prompt": 0.0, "generate": 0.0}
        self.rows = {"prompt": 0, "generate": 0}

    @property
    def n_logits(self) -> int:
        return len(self._logit_rows)

    def run(self, rows: list[tuple[int, int, int, bool]], kind: str = "generate") -> None:
        """Decode the rows in one ``llama_decode`` call (``kind`` only labels the timing)."""
        b = self._batch
        b.n_tokens = len(rows)
        logit_rows = []
        for i, (tok, pos, sid, want) in enumerate(rows):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = sid
            b.logits[i] = 1 if want else 0
            if want:
                logit_rows.append(i)
        self._logit_rows = logit_rows
        started = time.perf_counter()
        rc = self._ll.llama_decode(self._ctx, b)
        self.seconds[kind] += time.perf_counter() - started
        self.rows[kind] += len(rows)
        if rc != 0:
            raise BackendError(f"llama_decode failed with code {rc}")

    def run_with_state(self, row: tuple[int, int, int, bool], n_embd: int) -> np.ndarray:
        """Decode one row with embeddings on and return its final hidden state (a copy).

        The graph is the same as a plain decode (logits and KV included); llama.cpp
        only also copies out the last layer's normalized output for the row.
        """
        self._ll.llama_set_embeddings(self._ctx, True)
        try:
            self.run([row], "prompt")
            ptr = self._ll.llama_get_embeddings_ith(self._ctx, 0)
            if not ptr:
                raise BackendError("llama.cpp returned no hidden state for the prompt")
            return np.ctypeslib.as_array(ptr, shape=(n_embd,)).copy()
        finally:
            self._ll.llama_set_embeddings(self._ctx, False)

    def logits(self, k: int) -> np.ndarray:
        """The logits of the ``k``-th row that asked for them (a view: copy to keep)."""
        ptr = self._ll.llama_get_logits_ith(self._ctx, self._logit_rows[k])
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))

    def close(self) -> None:
        if self._batch is not None:
            self._ll.llama_batch_free(self._batch)
            self._batch = None
