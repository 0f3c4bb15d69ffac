"""The embedded engine: llama.cpp (low-level API) behind one continuous-batching loop.

One background thread owns the llama.cpp context. Requests are admitted into
a shared, unified KV cache; each request's prompt is evaluated once and its
KV cells are shared (``llama_memory_seq_cp``) by its ``n`` sequences. Every
step decodes one token for *every* active sequence of *every* request in a
single ``llama_decode`` call, so concurrent requests and ``n`` samples batch
together. Sampling, stop strings, logprobs and the thinking budget are
handled per sequence in Python/NumPy.

Thinking control (for models that emit ``<think>`` or are prompted into a
delimited scratchpad): the engine counts thinking tokens; when the budget is
about to run out it forces the end-of-thinking delimiter and lets the answer
follow; when thinking ends before ``min_tokens`` it rolls the sequence back to
before the delimiter and continues with "Wait" (s1-style budget forcing).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import itertools
import os
import queue
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ponder.backends.catalog import CATALOG, resolve_model
from ponder.errors import BackendError, ContextOverflow, InvalidRequest
from ponder.tools import prompt_tools, template_messages, with_tool_calls
from ponder.types import (
    Capabilities,
    Delta,
    Generation,
    GenRequest,
    Message,
    ThinkingConfig,
    TokenLogprob,
    Usage,
)

__all__ = ["LlamaCppBackend", "SCRATCHPAD_INSTRUCTION", "scratchpad_messages"]

SCRATCHPAD_INSTRUCTION = (
    "Before answering, think step by step inside {open} ... {close}. "
    "After {close}, give only the final answer."
)
# Nucleus sampling looks at the top tokens only; the nucleus of a real model
# practically always fits in this many tokens, and sorting 150k logits per
# token would dominate the step time.
_TOP_P_POOL = 1024


def scratchpad_messages(messages: list[Message], cfg: ThinkingConfig) -> list[Message]:
    """Ask a model without native thinking to think in a delimited scratchpad."""
    instruction = SCRATCHPAD_INSTRUCTION.format(open=cfg.open_tag, close=cfg.close_tag)
    if messages and messages[0].role == "system":
        first = Message(role="system", content=f"{messages[0].content}\n\n{instruction}")
        return [first, *messages[1:]]
    return [Message(role="system", content=instruction), *messages]


@dataclass
class _Seq:
    """One sampled sequence of a job."""

    seq_id: int
    index: int
    pos: int
    rng: np.random.Generator
    thinking: bool
    next_token: int = -1
    forced: list[int] = field(default_factory=list)
    # Per phase: the tokens, their byte pieces and the decoded text so far.
    think_tokens: list[int] = field(default_factory=list)
    think_bytes: bytearray = field(default_factory=bytearray)
    out_tokens: list[int] = field(default_factory=list)
    out_bytes: bytearray = field(default_factory=bytearray)
    out_text: str = ""
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("ignore"))
    emitted_out: int = 0
    emitted_think: int = 0
    think_decoder: Any = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("ignore")
    )
    think_text: str = ""
    closing: bool = False  # the close-tag tokens are being forced
    extensions: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish: str | None = None
    # The answer's grammar state (ponder.structured.TokenConstraint) when constrained.
    constraint: Any = None

    @property
    def n_generated(self) -> int:
        return len(self.think_tokens) + len(self.out_tokens)


@dataclass
class _Job:
    req: GenRequest
    prompt: list[int]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Generation]] | None
    stream: asyncio.Queue[Delta | BaseException] | None
    max_new: int
    think_cap: int
    seqs: list[_Seq] = field(default_factory=list)
    cancelled: bool = False

    @property
    def cells(self) -> int:
        return len(self.prompt) + self.req.n * self.max_new


class LlamaCppBackend:
    """The embedded llama.cpp engine: a catalog model or any local ``.gguf`` file."""

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
        self._model = _internals.LlamaModel(
            path_model=str(self.model_path), params=mparams, verbose=verbose
        )
        n_threads = threads or max(os.cpu_count() or 1, 1)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = max_sequences
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        # One KV buffer shared by all sequences: a prompt copied to n sequences
        # is stored once (the cells just gain sequence ids).
        cparams.kv_unified = True
        # Expert knobs of llama_context_params (e.g. flash_attn_type, type_k).
        for key, value in (context_params or {}).items():
            setattr(cparams, key, value)
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
        self._batch = llama_cpp.llama_batch_init(max(n_batch, max_sequences), 0, 1)
        self._template = self._load_template()
        self._piece_cache: dict[int, bytes] = {}
        self.capabilities = Capabilities(
            native_n=True,
            logprobs=True,
            thinking_budget=True,
            continue_final=True,
            prefix_cache=False,
            max_context=self.n_ctx,
            constrained_decoding=True,
            tools=True,
        )
        self._grammars: Any = None  # a GrammarCompiler for this vocabulary, built on first use
        self._seed_counter = itertools.count(seed)
        self._free_ids = list(range(max_sequences))
        self._cells_in_use = 0
        self._pending: queue.Queue[_Job | None] = queue.Queue()
        self._waiting: list[_Job] = []
        self._active: list[_Job] = []
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="ponder-llama", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ text

    def _load_template(self) -> Any:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        source = self._model.metadata().get("tokenizer.chat_template")
        self._template_source = source or ""
        if not source:
            return None

        def raise_exception(message: str) -> None:
            raise InvalidRequest(f"chat template rejected the messages: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
        return env.from_string(source)

    def render(self, req: GenRequest) -> str:
        """The prompt text: chat template, scratchpad and any partial assistant prefix."""
        return "".join(text for text, _ in self._render_parts(req))

    def prompt_tokens(self, req: GenRequest) -> list[int]:
        """The prompt's tokens, with message text never read as control tokens.

        Only the chat template's own text may produce special tokens: a user
        message or document containing ``<|im_start|>system`` must stay text, or
        any caller could forge a system turn.
        """
        tokens: list[int] = []
        for text, is_template in self._render_parts(req):
            if text:
                tokens += self.tokenize(text, special=is_template)
        return tokens

    def _render_parts(self, req: GenRequest) -> list[tuple[str, bool]]:
        """The rendered prompt as (text, is_template_text) pieces, in order."""
        messages = list(req.messages)
        prefix = ""
        if req.continue_final:
            if messages[-1].role != "assistant":
                raise InvalidRequest(
                    "continue_final needs the last message to be a partial assistant message",
                    param="messages",
                )
            prefix = messages.pop().content
        opened = ""
        if req.thinking is not None and req.thinking.prompted and not req.continue_final:
            messages = scratchpad_messages(messages, req.thinking)
            opened = req.thinking.open_tag + "\n"
        messages, tools = prompt_tools(messages, req, self._template_source)
        contents = [m.content for m in messages]
        # Render with placeholders, then put each content back as plain text.
        marks = [
            f"\x00ponder{secrets.token_hex(8)}:{i}\x00" if c else "" for i, c in enumerate(contents)
        ]
        dicts = [
            {**d, "content": mark}
            for d, mark in zip(template_messages(messages), marks, strict=True)
        ]
        if self._template is None:
            body = "".join(f"{m['role']}: {m['content']}\n" for m in dicts) + "assistant: "
        else:
            body = self._template.render(
                messages=dicts,
                tools=tools,
                add_generation_prompt=True,
                bos_token=self._token_text(self._model.token_bos()),
                eos_token=self._token_text(self._model.token_eos()),
            )
        parts: list[tuple[str, bool]] = []
        rest = body
        for mark, content in zip(marks, contents, strict=True):
            if not mark:
                continue
            head, found, rest_after = rest.partition(mark)
            if not found or mark in rest_after:
                # The template rewrote or repeated the content (rare): fall back.
                return self._render_plain(req, messages, prefix, opened)
            parts += [(head, True), (content, False)]
            rest = rest_after
        parts += [(rest, True), (opened, True), (prefix, False)]
        return parts

    def _render_plain(
        self, req: GenRequest, messages: list[Message], prefix: str, opened: str
    ) -> list[tuple[str, bool]]:
        """Whole-prompt rendering for templates that rewrite message contents."""
        for m in messages:
            if self.tokenize(m.content, special=True) != self.tokenize(m.content, special=False):
                raise InvalidRequest(
                    "a message contains control-token text (e.g. '<|im_start|>') that this "
                    "model's chat template cannot keep apart from its own; remove it",
                    param="messages",
                )
        assert self._template is not None
        messages, tools = prompt_tools(messages, req, self._template_source)
        body = self._template.render(
            messages=template_messages(messages),
            tools=tools,
            add_generation_prompt=True,
            bos_token=self._token_text(self._model.token_bos()),
            eos_token=self._token_text(self._model.token_eos()),
        )
        return [(body, True), (opened, True), (prefix, False)]

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._piece(token, special=True).decode("utf-8", "ignore")

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return list(self._model.tokenize(text.encode("utf-8"), add_bos=False, special=special))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text, special=False))

    def _piece(self, token: int, special: bool = False) -> bytes:
        if not special and token in self._piece_cache:
            return self._piece_cache[token]
        buf = ctypes.create_string_buffer(64)
        n = self._ll.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        piece = buf.raw[: max(n, 0)]
        if not special:
            self._piece_cache[token] = piece
        return piece

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

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pending.put(None)
        self._thread.join(timeout=30)
        if self._batch is not None:
            self._ll.llama_batch_free(self._batch)
            self._batch = None
        self._ctx.close()  # type: ignore[no-untyped-call]
        self._model.close()  # type: ignore[no-untyped-call]

    # ------------------------------------------------------------ admission

    def _make_job(
        self,
        req: GenRequest,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[list[Generation]] | None,
        stream: asyncio.Queue[Delta | BaseException] | None,
    ) -> _Job:
        if self._closed:
            raise BackendError("the embedded engine is closed")
        if req.n > self.max_sequences:
            raise InvalidRequest(
                f"n={req.n} exceeds this engine's {self.max_sequences} parallel sequences; "
                "ask for fewer samples or start the engine with more max_sequences",
                param="n",
            )
        if req.thinking is not None and not req.continue_final:
            close_len = len(self._close_tokens(req.thinking))
            if req.thinking.budget_tokens <= close_len or req.max_tokens <= 4 * close_len:
                # Too small a budget to open and close a thought: no thinking at all.
                req = req.model_copy(update={"thinking": None})
        if req.constraint is not None:
            self._grammar_compiler().grammar(req.constraint)
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
        return _Job(req, prompt, loop, future, stream, max_new, think_cap)

    def _submit(self, job: _Job) -> None:
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
            fits = len(self._free_ids) >= job.req.n and (
                self._cells_in_use + job.cells <= self.n_ctx
            )
            if fits:
                try:
                    self._start(job)
                except Exception as exc:  # a failed prompt decode fails this job only
                    self._fail(job, exc)
            else:
                still_waiting.append(job)
        self._waiting = still_waiting

    def _start(self, job: _Job) -> None:
        ids = [self._free_ids.pop(0) for _ in range(job.req.n)]
        self._cells_in_use += job.cells
        self._active.append(job)
        base = job.req.seed if job.req.seed is not None else next(self._seed_counter)
        thinking = job.req.thinking is not None and (
            not job.req.continue_final or self._unclosed_think(job.req)
        )
        for i, sid in enumerate(ids):
            job.seqs.append(
                _Seq(
                    seq_id=sid,
                    index=i,
                    pos=len(job.prompt),
                    rng=np.random.default_rng([base, i]),
                    thinking=thinking,
                    constraint=self._grammar_compiler().matcher(job.req.constraint)
                    if job.req.constraint is not None
                    else None,
                )
            )
        # Evaluate the prompt once, on the first sequence, in chunks.
        first = ids[0]
        mem = self._ll.llama_get_memory(self._ctx.ctx)
        for s in ids:
            self._ll.llama_memory_seq_rm(mem, s, -1, -1)
        for start in range(0, len(job.prompt), self.n_batch):
            chunk = job.prompt[start : start + self.n_batch]
            last = start + len(chunk) == len(job.prompt)
            self._fill_batch(
                [(t, start + j, first, last and j == len(chunk) - 1) for j, t in enumerate(chunk)]
            )
            self._decode()
        # Share the prompt's KV cells with the other sequences (no copy, no recompute).
        for s in ids[1:]:
            self._ll.llama_memory_seq_cp(mem, first, s, -1, -1)
        logits = self._logits(len(self._last_batch_logit_rows) - 1)
        for seq in job.seqs:
            self._choose(job, seq, logits)

    @staticmethod
    def _unclosed_think(req: GenRequest) -> bool:
        cfg = req.thinking
        assert cfg is not None
        text = req.messages[-1].content
        return cfg.open_tag in text and cfg.close_tag not in text.split(cfg.open_tag)[-1]

    # ---------------------------------------------------------------- decode

    _last_batch_logit_rows: list[int]

    def _fill_batch(self, rows: list[tuple[int, int, int, bool]]) -> None:
        """rows: (token, position, seq_id, want_logits)."""
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
        self._last_batch_logit_rows = logit_rows

    def _decode(self) -> None:
        rc = self._ll.llama_decode(self._ctx.ctx, self._batch)
        if rc != 0:
            raise BackendError(f"llama_decode failed with code {rc}")

    def _logits(self, row: int) -> np.ndarray:
        ptr = self._ll.llama_get_logits_ith(self._ctx.ctx, self._last_batch_logit_rows[row])
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

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
            return
        self._fill_batch([(seq.next_token, seq.pos, seq.seq_id, True) for _, seq in live])
        self._decode()
        for row, (job, seq) in enumerate(live):
            seq.pos += 1
            self._choose(job, seq, self._logits(row))
        for job in list(self._active):
            self._finish_if_done(job)

    # -------------------------------------------------------------- sampling

    def _sample(self, req: GenRequest, seq: _Seq, raw: np.ndarray) -> tuple[int, np.ndarray | None]:
        logits = raw
        if seq.constraint is not None and not seq.thinking:
            logits = seq.constraint.apply(raw)  # disallowed tokens at -inf
        # An answer must follow a thought: ending right after the delimiter would
        # leave the caller with hidden reasoning and an empty reply.
        answer_start = req.thinking is not None and not seq.thinking and not seq.out_tokens
        if (req.ignore_eos or answer_start) and self._eog.size:
            logits = logits.copy()
            logits[self._eog] = -np.inf
        logp = None
        if req.logprobs:
            m = logits.max()
            logp = logits - (m + np.log(np.exp(logits - m).sum()))
        if req.temperature <= 0.0:
            return int(np.argmax(logits)), logp
        scaled = logits * np.float32(1.0 / req.temperature)
        if req.top_k > 0 and req.top_k < scaled.size:
            pool = np.argpartition(-scaled, req.top_k)[: req.top_k]
        elif req.top_p < 1.0:
            pool = np.argpartition(-scaled, _TOP_P_POOL)[:_TOP_P_POOL]
        else:
            # Full-vocabulary sampling, exact, without a 150k-long cumsum per token.
            weights = np.exp(scaled - scaled.max())
            return self._draw(weights, seq.rng), logp
        values = scaled[pool].astype(np.float64)
        probs = np.exp(values - values.max())
        probs /= probs.sum()
        if req.top_p < 1.0:
            order = np.argsort(-probs)
            cum = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cum, req.top_p)) + 1]
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask / mask.sum()
        return int(pool[self._draw(probs, seq.rng)]), logp

    def _draw(self, weights: np.ndarray, rng: np.random.Generator) -> int:
        """Index drawn with probability proportional to ``weights`` (inverse CDF in two levels)."""
        block = 1024
        if weights.size <= block:
            cdf = np.cumsum(weights, dtype=np.float64)
            u = rng.random() * cdf[-1]
            return min(int(np.searchsorted(cdf, u, side="right")), weights.size - 1)
        starts = np.arange(0, weights.size, block)
        block_cdf = np.cumsum(np.add.reduceat(weights, starts), dtype=np.float64)
        u = rng.random() * block_cdf[-1]
        b = min(int(np.searchsorted(block_cdf, u, side="right")), len(starts) - 1)
        inner = np.cumsum(weights[starts[b] : starts[b] + block], dtype=np.float64)
        u -= block_cdf[b - 1] if b else 0.0
        return int(starts[b]) + min(int(np.searchsorted(inner, u, side="right")), inner.size - 1)

    def _choose(self, job: _Job, seq: _Seq, raw: np.ndarray) -> None:
        """Pick this sequence's next token (forced or sampled) and account for it."""
        req = job.req
        logp = None
        if seq.forced:
            token = seq.forced.pop(0)
        else:
            token, logp = self._sample(req, seq, raw)
        in_thought = seq.thinking
        if in_thought:
            seq.think_tokens.append(token)
        else:
            seq.out_tokens.append(token)
            if req.logprobs:
                entry = TokenLogprob(
                    token=self._piece(token).decode("utf-8", "replace"),
                    logprob=float(logp[token]) if logp is not None else 0.0,
                )
                if logp is not None and req.top_logprobs:
                    top = np.argpartition(-logp, req.top_logprobs)[: req.top_logprobs]
                    entry.top = {
                        self._piece(int(t)).decode("utf-8", "replace"): float(logp[t]) for t in top
                    }
                seq.logprobs.append(entry)
        seq.next_token = token
        is_eog = token in self._eog_set
        if seq.constraint is not None and not in_thought and not is_eog:
            seq.constraint.advance(token)
        if not is_eog:
            piece = self._piece(token)
            if in_thought:
                seq.think_bytes += piece
                seq.think_text += seq.think_decoder.decode(piece)
            else:
                seq.out_bytes += piece
                seq.out_text += seq.decoder.decode(piece)

        if in_thought:
            self._after_think_token(job, seq, is_eog)
        elif is_eog:
            seq.finish = "stop"
        else:
            self._check_stop(req, seq)
        if seq.finish is None and seq.n_generated >= job.max_new:
            seq.finish = "length"
        if job.stream is not None:
            self._emit(job, seq)

    def _after_think_token(self, job: _Job, seq: _Seq, is_eog: bool) -> None:
        cfg = job.req.thinking
        assert cfg is not None
        close = cfg.close_tag
        if seq.closing:
            if not seq.forced:  # the forced close tag is complete: answer from here
                seq.closing = False
                seq.thinking = False
            return
        if is_eog:
            # The model tried to stop inside its thoughts: close them and ask for the answer.
            seq.think_tokens.pop()
            self._force_close(job, seq)
            seq.next_token = seq.forced.pop(0)
            seq.think_tokens.append(seq.next_token)
            self._add_think_piece(seq, seq.next_token)
            return
        if seq.think_text.rstrip().endswith(close):
            if len(seq.think_tokens) < cfg.min_tokens and seq.extensions < cfg.max_extensions:
                self._extend(job, seq, cfg)
            else:
                seq.thinking = False
            return
        # Force the delimiter early enough that reasoning never exceeds the cap.
        if len(seq.think_tokens) + len(self._close_tokens(cfg)) >= job.think_cap:
            self._force_close(job, seq)

    def _close_tokens(self, cfg: ThinkingConfig) -> list[int]:
        return self.tokenize("\n" + cfg.close_tag + "\n\n", special=False)

    def _force_close(self, job: _Job, seq: _Seq) -> None:
        assert job.req.thinking is not None
        seq.forced = self._close_tokens(job.req.thinking)
        seq.closing = True

    def _add_think_piece(self, seq: _Seq, token: int) -> None:
        piece = self._piece(token)
        seq.think_bytes += piece
        seq.think_text += seq.think_decoder.decode(piece)

    def _extend(self, job: _Job, seq: _Seq, cfg: ThinkingConfig) -> None:
        """s1-style: undo the end-of-thinking delimiter and continue with "Wait"."""
        cut = seq.think_text.rstrip().rfind(cfg.close_tag)
        # Find how many trailing tokens make up the delimiter (and whitespace before it).
        drop, text_len = 0, len(seq.think_text)
        while drop < len(seq.think_tokens) and text_len > cut:
            drop += 1
            piece = self._piece(seq.think_tokens[-drop]).decode("utf-8", "ignore")
            text_len -= len(piece)
        kept = seq.think_tokens[:-drop] if drop else seq.think_tokens
        # Tokens fed to the model so far are all but the last accepted one.
        first_removed_pos = seq.pos - (drop - 1)
        mem = self._ll.llama_get_memory(self._ctx.ctx)
        self._ll.llama_memory_seq_rm(mem, seq.seq_id, first_removed_pos, -1)
        seq.pos = first_removed_pos
        seq.think_tokens = list(kept)
        seq.think_bytes = bytearray(b"".join(self._piece(t) for t in kept))
        seq.think_text = seq.think_bytes.decode("utf-8", "ignore")
        seq.think_decoder.reset()
        seq.extensions += 1
        wait = self.tokenize("\n" + cfg.extend_with, special=False)
        seq.next_token = wait[0]
        seq.forced = wait[1:]
        seq.think_tokens.append(wait[0])
        self._add_think_piece(seq, wait[0])
        # The extension tokens are part of the reasoning; the pieces of the rest
        # arrive as they are "chosen" from the forced queue.

    def _check_stop(self, req: GenRequest, seq: _Seq) -> None:
        if not req.stop:
            return
        window = seq.out_text[-(max(len(s) for s in req.stop) + 16) :]
        for s in req.stop:
            if s and s in window:
                start = len(seq.out_text) - len(window) + window.index(s)
                seq.out_text = seq.out_text[:start]
                seq.finish = "stop"
                return

    # ------------------------------------------------------------- delivery

    def _emit(self, job: _Job, seq: _Seq) -> None:
        """Stream what is safe to show: hold back text that may start a stop string or tag."""
        assert job.stream is not None
        cfg = job.req.thinking
        think_visible = self._visible_reasoning(seq.think_text, cfg)
        hold_t = (
            0
            if seq.finish or not seq.thinking
            else self._holdback(think_visible, [cfg.close_tag] if cfg else [])
        )
        new_think = think_visible[seq.emitted_think : len(think_visible) - hold_t]
        out_visible = seq.out_text.lstrip() if cfg is not None else seq.out_text
        hold_o = 0 if seq.finish else self._holdback(out_visible, job.req.stop)
        new_out = out_visible[seq.emitted_out : len(out_visible) - hold_o]
        if new_think:
            seq.emitted_think += len(new_think)
        if new_out:
            seq.emitted_out += len(new_out)
        if new_think or new_out:
            self._post(job, Delta(index=seq.index, text=new_out, reasoning=new_think))
        if seq.finish is not None:
            gen = self._generation(job, seq)
            self._post(
                job, Delta(index=seq.index, finish_reason=gen.finish_reason, usage=gen.usage)
            )

    @staticmethod
    def _holdback(text: str, markers: list[str]) -> int:
        hold = 0
        for m in markers:
            for k in range(min(len(m) - 1, len(text)), 0, -1):
                if text.endswith(m[:k]):
                    hold = max(hold, k)
                    break
        return hold

    def _post(self, job: _Job, item: Delta | BaseException) -> None:
        assert job.stream is not None
        job.loop.call_soon_threadsafe(job.stream.put_nowait, item)

    @staticmethod
    def _visible_reasoning(text: str, cfg: ThinkingConfig | None) -> str:
        if cfg is None:
            return text
        cut = text.find(cfg.close_tag)
        return (text if cut < 0 else text[:cut]).lstrip("\n")

    def _generation(self, job: _Job, seq: _Seq) -> Generation:
        cfg = job.req.thinking
        reasoning = self._visible_reasoning(seq.think_text, cfg).strip() if cfg else ""
        text = seq.out_text.lstrip() if cfg is not None else seq.out_text
        finish = seq.finish or "length"
        gen = Generation(
            text=text,
            reasoning=reasoning,
            finish_reason=finish,  # type: ignore[arg-type]
            usage=Usage(
                input=len(job.prompt) if seq.index == 0 else 0,
                reasoning=len(seq.think_tokens),
                output=len(seq.out_tokens),
            ),
            logprobs=seq.logprobs if job.req.logprobs else None,
        )
        return with_tool_calls(gen, job.req.tools, job.req.tool_choice)

    def _grammar_compiler(self) -> Any:
        if self._grammars is None:
            from ponder.structured import GrammarCompiler

            self._grammars = GrammarCompiler.for_llama_vocab(
                self._vocab, lambda data: list(self._model.tokenize(data, False, False))
            )
        return self._grammars

    def _finish_if_done(self, job: _Job) -> None:
        if job in self._active and all(s.finish is not None for s in job.seqs):
            self._release(job, deliver=True)

    def _release(self, job: _Job, deliver: bool) -> None:
        mem = self._ll.llama_get_memory(self._ctx.ctx)
        for seq in job.seqs:
            self._ll.llama_memory_seq_rm(mem, seq.seq_id, -1, -1)
            self._free_ids.append(seq.seq_id)
        self._free_ids.sort()
        self._cells_in_use -= job.cells
        self._active.remove(job)
        if not deliver:
            return
        if job.future is not None:
            gens = [self._generation(job, s) for s in job.seqs]
            job.loop.call_soon_threadsafe(_resolve, job.future, gens)
        elif job.stream is not None:
            for seq in job.seqs:
                if seq.finish == "deadline":
                    self._emit(job, seq)

    def _fail(self, job: _Job, exc: BaseException) -> None:
        if job in self._active:
            with contextlib.suppress(Exception):
                self._release(job, deliver=False)
        if job.future is not None:
            job.loop.call_soon_threadsafe(_reject, job.future, exc)
        elif job.stream is not None:
            job.loop.call_soon_threadsafe(job.stream.put_nowait, exc)


def _resolve(future: asyncio.Future[list[Generation]], value: list[Generation]) -> None:
    if not future.done():
        future.set_result(value)


def _reject(future: asyncio.Future[list[Generation]], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
