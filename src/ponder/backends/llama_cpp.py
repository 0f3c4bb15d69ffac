"""The embedded engine: llama.cpp (low-level API) behind one continuous-batching loop.

One background thread owns the llama.cpp context. Requests are admitted into
a shared, unified KV cache; each request's prompt is evaluated once and its
KV cells are shared (``llama_memory_seq_cp``) by its ``n`` sequences. Every
step decodes one token for *every* active sequence of *every* request in a
single ``llama_decode`` call, so concurrent requests and ``n`` samples batch
together. Sampling, stop strings, logprobs and the thinking budget are
handled per sequence in Python/NumPy.

Across calls, finished sequences stay in memory as a prefix cache
(:mod:`ponder.backends.prefix_cache`): a prompt that starts like an earlier
prompt or answer copies those KV cells and evaluates only the rest, so search
strategies, refinement rounds and multi-turn chats pay for a shared beginning
once. Idle cached sequences are evicted, least recently used first, whenever
an arriving request needs their sequence ids or cells.

Thinking control (for models that emit ``<think>`` or are prompted into a
delimited scratchpad): see :mod:`ponder.backends.llama_engine.thinking`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import queue
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from ponder.backends.base import PromptState
from ponder.backends.catalog import CATALOG, resolve_model
from ponder.backends.llama_engine.context import BatchDecoder, LlamaMemory
from ponder.backends.llama_engine.delivery import apply_stop, generation, stream_deltas
from ponder.backends.llama_engine.jobs import Job, Seq
from ponder.backends.llama_engine.layer_tap import LayerTap
from ponder.backends.llama_engine.render import ChatText
from ponder.backends.llama_engine.sampling import adjusted, sample
from ponder.backends.llama_engine.thinking import ThinkingControl
from ponder.backends.prefix_cache import CachedSequence, PrefixCache
from ponder.backends.scratchpad import (
    SCRATCHPAD_INSTRUCTION,
    scratchpad_messages,
    unclosed_thought,
)
from ponder.errors import BackendError, ContextOverflow, InvalidRequest
from ponder.types import Capabilities, Delta, Generation, GenRequest, TokenLogprob

__all__ = ["LlamaCppBackend", "SCRATCHPAD_INSTRUCTION", "scratchpad_messages"]

# llama.cpp's upper limit on sequence ids in one context.
_LLAMA_MAX_SEQ = 256


def cpu_has_amx(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU has Intel AMX (Sapphire Rapids and later).

    There llama.cpp repacks the weights for its AMX matrix kernels, and the first decode
    segfaults inside ``ggml_backend_amx_mul_mat`` on some hosts (llama.cpp#20824, open;
    reproduced here with the 0.3.36 wheel on a 2-core Sapphire Rapids VM), so the engine
    loads plain weights there. Not Linux, or unreadable: no.
    """
    try:
        return "amx_int8" in Path(cpuinfo).read_text()
    except OSError:
        return False


class LlamaCppBackend:
    """The embedded llama.cpp engine: a catalog model or any local ``.gguf`` file.

    ``prefix_cache`` keeps finished sequences' KV for later calls that share a
    prefix (reused prompt tokens are reported as ``cached_input``); it keeps up
    to ``max_sequences`` idle sequences beside the active ones, under the same
    ``n_ctx`` cells. ``probe_layers`` makes :meth:`prompt_state` also return those
    layers' states of the prompt's last token (0-based transformer blocks).
    ``weight_repack`` lets llama.cpp repack the weights for its CPU kernels (its
    "extra buffer types"); the default (None) does so except on a CPU with AMX, whose
    kernels crash in llama.cpp on some hosts (see :func:`cpu_has_amx`).
    """

    def __init__(
        self,
        model: str = "qwen2.5-coder-0.5b-instruct",
        *,
        n_ctx: int = 8192,
        max_sequences: int = 16,
        n_batch: int = 512,
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        seed: int = 0,
        verbose: bool = False,
        prefix_cache: bool = True,
        probe_layers: tuple[int, ...] = (),
        weight_repack: bool | None = None,
        context_params: dict[str, Any] | None = None,
    ) -> None:
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._logger import set_verbose

        set_verbose(verbose)  # llama.cpp logs every tensor at load otherwise

        from ponder.config import default_cache_dir

        self._ll = llama_cpp
        self.model_path = resolve_model(
            model, Path(cache_dir) if cache_dir else default_cache_dir()
        )
        self.name = model if model in CATALOG else Path(model).stem
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        self.weight_repack = (not cpu_has_amx()) if weight_repack is None else weight_repack
        mparams.use_extra_bufts = self.weight_repack
        self._model = _internals.LlamaModel(
            path_model=str(self.model_path), params=mparams, verbose=verbose
        )
        # Sequence ids: max_sequences for running requests, as many again for cached ones.
        n_ids = min(2 * max_sequences, _LLAMA_MAX_SEQ) if prefix_cache else max_sequences
        n_threads = threads or max(os.cpu_count() or 1, 1)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = n_ids
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        # One KV buffer shared by all sequences: a prompt copied to n sequences
        # is stored once (the cells just gain sequence ids).
        cparams.kv_unified = True
        # Expert knobs of llama_context_params (e.g. flash_attn_type, type_k).
        for key, value in (context_params or {}).items():
            setattr(cparams, key, value)
        # Middle-layer states for prompt_state (probing reads middle layers). Off by
        # default: the callback slows every decode (1.06x wall: router_signal.py --tap-overhead).
        self._tap = (
            LayerTap(llama_cpp, probe_layers, llama_cpp.llama_model_n_layer(self._model.model))
            if probe_layers
            else None
        )
        if self._tap is not None:
            self._tap.install(cparams)
        self._ctx = _internals.LlamaContext(model=self._model, params=cparams, verbose=verbose)
        self.n_ctx = llama_cpp.llama_n_ctx(self._ctx.ctx)
        self.max_sequences = max_sequences
        self.n_batch = n_batch
        self._vocab = self._model.vocab
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._eog = np.array(
            [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self._vocab, t)],
            dtype=np.int64,
        )
        self._eog_set = frozenset(int(t) for t in self._eog)
        self._decoder = BatchDecoder(
            llama_cpp, self._ctx.ctx, max(n_batch, max_sequences), self.n_vocab
        )
        self._text = ChatText(llama_cpp, self._model)
        self._memory = LlamaMemory(llama_cpp, self._ctx.ctx)
        self._thinking = ThinkingControl(
            self._text, lambda seq_id, p0: self._memory.seq_rm(seq_id, p0, -1)
        )
        self._prefix = PrefixCache(self._memory) if prefix_cache else None
        self.capabilities = Capabilities(
            native_n=True,
            logprobs=True,
            thinking_budget=True,
            continue_final=True,
            prefix_cache=prefix_cache,
            max_context=self.n_ctx,
            constrained_decoding=True,
            tools=True,
        )
        self._grammars: Any = None  # a GrammarCompiler for this vocabulary, built on first use
        self._seed_counter = itertools.count(seed)
        self._free_ids = list(range(n_ids))
        self._running_seqs = 0
        self._cells_in_use = 0
        self._pending: queue.Queue[Job | None] = queue.Queue()
        self._waiting: list[Job] = []
        self._active: list[Job] = []
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="ponder-llama", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ text

    def _grammar_compiler(self) -> Any:
        if self._grammars is None:
            from ponder.structured import GrammarCompiler

            self._grammars = GrammarCompiler.for_llama_vocab(
                self._vocab, lambda data: list(self._model.tokenize(data, False, False))
            )
        return self._grammars

    def render(self, req: GenRequest) -> str:
        """The prompt text: chat template, scratchpad and any partial assistant prefix."""
        return self._text.render(req)

    def prompt_tokens(self, req: GenRequest) -> list[int]:
        """The prompt's tokens, with message text never read as control tokens.

        Only the chat template's own text may produce special tokens: a user
        message or document containing ``<|im_start|>system`` must stay text, or
        any caller could forge a system turn.
        """
        return self._text.prompt_tokens(req)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return self._text.tokenize(text, special=special)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text, special=False))

    def prefix_cache_stats(self) -> dict[str, float]:
        """Prefix cache counters (lookups, hits, prompt/reused tokens, evictions, hit rate)."""
        if self._prefix is None:
            return {}
        return {
            **self._prefix.stats.as_dict(),
            "cached_sequences": len(self._prefix),
            "cached_cells": self._prefix.cells,
        }

    def decode_stats(self) -> dict[str, float]:
        """Seconds inside ``llama_decode`` and rows decoded, for prompts and for generation.

        Read from the caller's thread while the engine runs: a snapshot, not atomic.
        """
        d = self._decoder
        return {
            "prompt_s": d.seconds["prompt"],
            "prompt_rows": d.rows["prompt"],
            "generate_s": d.seconds["generate"],
            "generate_rows": d.rows["generate"],
        }

    # ------------------------------------------------------------ public API

    async def generate(self, req: GenRequest) -> list[Generation]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Generation]] = loop.create_future()
        job = self._make_job(req, loop, future, None)
        self._submit(job)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            job.cancelled = True
            raise

    async def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        if req.n != 1:
            raise InvalidRequest("streaming supports n=1 only", param="n")
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Delta | BaseException] = asyncio.Queue()
        job = self._make_job(req, loop, None, q)
        self._submit(job)
        try:
            while True:
                item = await q.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            job.cancelled = True

    async def prompt_state(self, req: GenRequest) -> PromptState:
        """The final hidden state of the last token of ``req``'s rendered prompt.

        This is the prefill a generation of the same prompt needs anyway: with the
        prefix cache on, the prompt's KV is kept, so a following ``generate`` of this
        request evaluates only its last token again (the router's model-signal
        features cost one token's decode). Without the cache it costs a prefill.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        job = self._make_job(req.model_copy(update={"n": 1}), loop, future, None)
        job.probe, job.max_new = True, 0
        self._submit(job)
        try:
            state: PromptState = await asyncio.shield(future)
            return state
        except asyncio.CancelledError:
            job.cancelled = True
            raise

    @property
    def n_embd(self) -> int:
        return int(self._ll.llama_model_n_embd(self._model.model))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pending.put(None)
        self._thread.join(timeout=30)
        self._decoder.close()
        self._ctx.close()  # type: ignore[no-untyped-call]
        self._model.close()  # type: ignore[no-untyped-call]

    # ------------------------------------------------------------ admission

    def _make_job(
        self,
        req: GenRequest,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any] | None,
        stream: asyncio.Queue[Delta | BaseException] | None,
    ) -> Job:
        if self._closed:
            raise BackendError("the embedded engine is closed")
        if req.n > self.max_sequences:
            raise InvalidRequest(
                f"n={req.n} exceeds this engine's {self.max_sequences} parallel sequences; "
                "ask for fewer samples or start the engine with more max_sequences",
                param="n",
            )
        if req.thinking is not None and not req.continue_final:
            close_len = len(self._thinking.close_tokens(req.thinking))
            if req.thinking.budget_tokens <= close_len or req.max_tokens <= 4 * close_len:
                # Too small a budget to open and close a thought: no thinking at all.
                req = req.model_copy(update={"thinking": None})
        if req.constraint is not None:
            self._grammar_compiler().grammar(req.constraint)  # a bad grammar is a 400 here
        if unknown := [t for t in req.logit_bias if not 0 <= t < self.n_vocab]:
            raise InvalidRequest(
                f"logit_bias: token id {unknown[0]} is not in this model's vocabulary "
                f"(0 to {self.n_vocab - 1})",
                param="logit_bias",
            )
        prompt = self.prompt_tokens(req)
        room = self.n_ctx - len(prompt)
        if room < req.n:
            raise ContextOverflow(
                f"the prompt is {len(prompt)} tokens but the context holds {self.n_ctx} "
                f"(including room for {req.n} sequence(s) to generate); shorten the messages",
                param="messages",
            )
        max_new = min(req.max_tokens, room // req.n)
        think_cap = 0
        if req.thinking is not None:
            # Keep room for the answer: thinking gets at most max_new minus a reserve.
            reserve = min(64, max_new // 4)
            think_cap = max(0, min(req.thinking.budget_tokens, max_new - reserve))
        return Job(req, prompt, loop, future, stream, max_new, think_cap)

    def _submit(self, job: Job) -> None:
        self._pending.put(job)

    def _admit_waiting(self) -> None:
        while True:
            try:
                job = self._pending.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._closed = True
                return
            self._waiting.append(job)
        still_waiting = []
        for job in self._waiting:
            if job.cancelled:
                continue
            try:
                started = self._try_start(job)
            except Exception as exc:  # a failed prompt decode fails this job only
                self._fail(job, exc)
                continue
            if not started:
                still_waiting.append(job)
        self._waiting = still_waiting

    def _fits(self, job: Job) -> bool:
        cached = self._prefix.cells if self._prefix is not None else 0
        return (
            self._running_seqs + job.req.n <= self.max_sequences
            and len(self._free_ids) >= job.req.n
            and self._cells_in_use + cached + job.cells <= self.n_ctx
        )

    def _try_start(self, job: Job) -> bool:
        """Start ``job`` if it fits, evicting idle cached sequences as needed."""
        if self._running_seqs + job.req.n > self.max_sequences:
            return False
        cache = self._prefix
        entry, reuse = cache.match(job.prompt) if cache is not None else (None, 0)
        # Cached sequences are idle: evicting them can always make room, so an
        # arriving request never waits for the cache, only for running requests.
        while cache is not None and not self._fits(job):
            freed = cache.evict_lru(keep=entry)
            if freed is None:
                break
            self._free_ids.append(freed)
        first: int | None = None
        if cache is not None and entry is not None and not self._fits(job):
            # The matched sequence is the last one left: take over its slot.
            reuse = cache.take(entry, reuse)
            first = entry.seq_id
            self._free_ids.append(first)
            if not self._fits(job):
                self._memory.seq_rm(first, -1, -1)
                return False
            entry = None
        elif not self._fits(job):
            return False
        if first is not None:
            self._free_ids.remove(first)
        else:
            first = self._free_ids.pop(0)
        ids = [first] + [self._free_ids.pop(0) for _ in range(job.req.n - 1)]
        self._start(job, ids, entry, reuse)
        return True

    def _start(self, job: Job, ids: list[int], source: CachedSequence | None, reuse: int) -> None:
        """Evaluate the prompt on ``ids[0]`` after ``reuse`` positions copied from ``source``."""
        self._cells_in_use += job.cells
        self._running_seqs += len(ids)
        self._active.append(job)
        base = job.req.seed if job.req.seed is not None else next(self._seed_counter)
        cfg = job.req.thinking
        thinking = cfg is not None and (
            not job.req.continue_final or unclosed_thought(job.req.messages[-1].content, cfg)
        )
        for i, sid in enumerate(ids):
            job.seqs.append(
                Seq(
                    seq_id=sid,
                    index=i,
                    pos=len(job.prompt),
                    rng=np.random.default_rng([base, i]),
                    thinking=thinking,
                    constraint=(
                        self._grammar_compiler().matcher(job.req.constraint)
                        if job.req.constraint is not None
                        else None
                    ),
                )
            )
        first = ids[0]
        taken_over = source is None and reuse > 0  # ids[0] already holds the prefix
        for sid in ids:
            if not (taken_over and sid == first):
                self._memory.seq_rm(sid, -1, -1)
        if source is not None:
            self._memory.seq_cp(source.seq_id, first, 0, reuse)
        job.reused = reuse
        if self._prefix is not None:
            self._prefix.record(len(job.prompt), reuse)
            if source is not None:
                self._prefix.touch(source)
        # Evaluate the rest of the prompt once, on the first sequence, in chunks, and
        # its last token alone: llama.cpp's logits for a token shift slightly with the
        # size of the batch it is in, so a prompt served from the cache (all but its
        # last token) and the same prompt evaluated cold give the same first token.
        end = len(job.prompt) - 1
        if job.probe:
            self._probe(job, reuse, end, first)
            return
        self._evaluate_prompt(job, reuse, end, first)
        self._decoder.run([(job.prompt[end], end, first, True)], "prompt")
        # Share the prompt's KV cells with the other sequences (no copy, no recompute).
        for s in ids[1:]:
            self._memory.seq_cp(first, s, -1, -1)
        logits = self._decoder.logits(0)
        for seq in job.seqs:
            self._choose(job, seq, logits)

    def _evaluate_prompt(self, job: Job, start_at: int, end: int, seq_id: int) -> None:
        """Decode prompt tokens ``start_at`` .. ``end - 1`` into ``seq_id``, in chunks."""
        for start in range(start_at, end, self.n_batch):
            chunk = job.prompt[start : min(start + self.n_batch, end)]
            self._decoder.run(
                [(t, start + j, seq_id, False) for j, t in enumerate(chunk)], "prompt"
            )

    def _probe(self, job: Job, reuse: int, end: int, first: int) -> None:
        """A prompt-state job: evaluate the prompt, keep its states, answer nothing."""
        row = (job.prompt[end], end, first, True)
        if self._tap is None:
            self._evaluate_prompt(job, reuse, end, first)
            job.state = (self._decoder.run_with_state(row, self.n_embd), {}, {})
        else:
            # Armed over the whole prefill: the layers' means cover every evaluated token.
            with self._tap.armed() as capture:
                self._evaluate_prompt(job, reuse, end, first)
                final = self._decoder.run_with_state(row, self.n_embd)
            job.state = (final, capture.last, capture.mean)
        seq = job.seqs[0]
        seq.pos, seq.finish = len(job.prompt), "probe"  # its KV holds the whole prompt
        self._release(job, deliver=True)

    # ---------------------------------------------------------------- decode

    def _loop(self) -> None:
        while not self._closed:
            try:
                if not self._active and not self._waiting:
                    job = self._pending.get()
                    if job is None:
                        break
                    self._waiting.append(job)
                self._admit_waiting()
                if self._closed:
                    break
                self._step()
            except Exception as exc:  # never let the engine thread die silently
                for job in list(self._active):
                    self._fail(job, exc)
                if self._prefix is not None:  # what memory holds after a failure is unknown
                    self._free_ids += self._prefix.clear()
        for job in self._active + self._waiting:
            self._fail(job, BackendError("the embedded engine was closed"))

    def _step(self) -> None:
        now = time.monotonic()
        for job in list(self._active):
            if job.cancelled:
                self._release(job, deliver=False)
            elif job.req.deadline is not None and now >= job.req.deadline:
                for seq in job.seqs:
                    if seq.finish is None:
                        seq.finish = "deadline"
                self._finish_if_done(job)
        live = [(job, seq) for job in self._active for seq in job.seqs if seq.finish is None]
        if not live:
            # Jobs whose sequences all finished on their first token (max_tokens=1).
            for job in list(self._active):
                self._finish_if_done(job)
            return
        self._decoder.run([(seq.next_token, seq.pos, seq.seq_id, True) for _, seq in live])
        for row, (job, seq) in enumerate(live):
            seq.pos += 1
            self._choose(job, seq, self._decoder.logits(row))
        for job in list(self._active):
            self._finish_if_done(job)

    # -------------------------------------------------------------- sampling

    def _choose(self, job: Job, seq: Seq, raw: np.ndarray) -> None:
        """Pick this sequence's next token (forced or sampled) and account for it."""
        req = job.req
        logp = None
        if seq.forced:
            token = seq.forced.pop(0)
        else:
            # An answer must follow a thought: ending right after the delimiter would
            # leave the caller with hidden reasoning and an empty reply.
            answer_start = req.thinking is not None and not seq.thinking and not seq.out_tokens
            banned = self._eog if req.ignore_eos or answer_start else None
            raw = adjusted(req, raw, seq.think_tokens, seq.out_tokens)
            if seq.constraint is not None and not seq.thinking:
                raw = seq.constraint.apply(raw)  # tokens the grammar forbids at -inf
            token, logp = sample(req, raw, seq.rng, banned)
        in_thought = seq.thinking
        if in_thought:
            seq.think_tokens.append(token)
        else:
            seq.out_tokens.append(token)
            if req.logprobs:
                entry = TokenLogprob(
                    token=self._text.piece(token).decode("utf-8", "replace"),
                    logprob=float(logp[token]) if logp is not None else 0.0,
                )
                if logp is not None and req.top_logprobs:
                    top = np.argpartition(-logp, req.top_logprobs)[: req.top_logprobs]
                    entry.top = {
                        self._text.piece(int(t)).decode("utf-8", "replace"): float(logp[t])
                        for t in top
                    }
                seq.logprobs.append(entry)
        seq.next_token = token
        is_eog = token in self._eog_set
        if seq.constraint is not None and not in_thought and not is_eog:
            seq.constraint.advance(token)
        if not is_eog:
            piece = self._text.piece(token)
            if in_thought:
                seq.think_bytes += piece
                seq.think_text += seq.think_decoder.decode(piece)
            else:
                seq.out_bytes += piece
                seq.out_text += seq.decoder.decode(piece)

        if in_thought:
            self._thinking.after_token(job, seq, is_eog)
        elif is_eog:
            seq.finish = "stop"
        else:
            apply_stop(req, seq)
        if seq.finish is None and seq.n_generated >= job.max_new:
            seq.finish = "length"
        if job.stream is not None:
            self._emit(job, seq)

    # ------------------------------------------------------------- delivery

    def _emit(self, job: Job, seq: Seq) -> None:
        for delta in stream_deltas(job, seq):
            self._post(job, delta)

    def _post(self, job: Job, item: Delta | BaseException) -> None:
        assert job.stream is not None
        job.loop.call_soon_threadsafe(job.stream.put_nowait, item)

    def _finish_if_done(self, job: Job) -> None:
        if job in self._active and all(s.finish is not None for s in job.seqs):
            self._release(job, deliver=True)

    def _release(self, job: Job, deliver: bool, keep_kv: bool = True) -> None:
        """Free a finished job's sequences; with the prefix cache, keep their KV for reuse."""
        if self._prefix is not None and keep_kv:
            histories = [(seq.seq_id, seq.kv_tokens(job.prompt)) for seq in job.seqs]
            self._free_ids += self._prefix.insert(histories, shared=len(job.prompt))
        else:
            for seq in job.seqs:
                self._memory.seq_rm(seq.seq_id, -1, -1)
                self._free_ids.append(seq.seq_id)
        self._free_ids.sort()
        self._cells_in_use -= job.cells
        self._running_seqs -= len(job.seqs)
        self._active.remove(job)
        if not deliver:
            return
        if job.probe:
            assert job.future is not None
            final, layers, means = job.state
            state = PromptState(final, len(job.prompt) - job.reused, job.reused, layers, means)
            job.loop.call_soon_threadsafe(_resolve, job.future, state)
        elif job.future is not None:
            gens = [generation(job, s) for s in job.seqs]
            job.loop.call_soon_threadsafe(_resolve, job.future, gens)
        elif job.stream is not None:
            for seq in job.seqs:
                if seq.finish == "deadline":
                    self._emit(job, seq)

    def _fail(self, job: Job, exc: BaseException) -> None:
        if job in self._active:
            with contextlib.suppress(Exception):
                self._release(job, deliver=False, keep_kv=False)
        if job.future is not None:
            job.loop.call_soon_threadsafe(_reject, job.future, exc)
        elif job.stream is not None:
            job.loop.call_soon_threadsafe(job.stream.put_nowait, exc)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _reject(future: asyncio.Future[list[Generation]], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
