"""A request in the embedded engine (a job) and its sampled sequences."""

from __future__ import annotations

import asyncio
import codecs
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ponder.types import Delta, GenRequest, TokenLogprob

__all__ = ["Job", "Seq"]


def _utf8_decoder() -> Any:
    return codecs.getincrementaldecoder("utf-8")("ignore")


@dataclass
class Seq:
    """One sampled sequence of a job.

    Invariant: the KV memory of ``seq_id`` holds positions ``0 .. pos-1``, which
    are the job's prompt followed by ``think_tokens + out_tokens`` except the
    last one (``next_token``, decoded on the next step).
    """

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
    decoder: Any = field(default_factory=_utf8_decoder)
    emitted_out: int = 0
    emitted_think: int = 0
    think_decoder: Any = field(default_factory=_utf8_decoder)
    think_text: str = ""
    closing: bool = False  # the close-tag tokens are being forced
    extensions: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish: str | None = None
    stop_sequence: str | None = None  # the stop string that ended it
    # The answer's grammar state (ponder.structured.TokenConstraint) when constrained.
    constraint: Any = None

    @property
    def n_generated(self) -> int:
        return len(self.think_tokens) + len(self.out_tokens)

    def kv_tokens(self, prompt: list[int]) -> list[int]:
        """The tokens whose KV this sequence holds, position by position."""
        return (prompt + self.think_tokens + self.out_tokens)[: self.pos]


@dataclass
class Job:
    req: GenRequest
    prompt: list[int]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any] | None  # generations, or a probe's state
    stream: asyncio.Queue[Delta | BaseException] | None
    max_new: int
    think_cap: int
    seqs: list[Seq] = field(default_factory=list)
    cancelled: bool = False
    # Prompt tokens served from the prefix cache instead of evaluated.
    reused: int = 0
    # A prompt-state probe (LlamaCppBackend.prompt_state): evaluate the prompt, answer
    # with the last prompt token's final hidden state, generate nothing.
    probe: bool = False
    state: Any = None

    @property
    def cells(self) -> int:
        return len(self.prompt) + self.req.n * self.max_new
