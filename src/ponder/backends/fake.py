"""Scripted and function-driven backends for tests (yours and ours).

``FakeBackend`` replays scripted replies in order; ``FunctionBackend`` calls a
function per sample. Both keep a ``calls`` history, count tokens as
whitespace-separated words (marked estimated) and honour ``max_tokens`` and
stop strings, so budget logic can be tested exactly.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ponder.types import Capabilities, Delta, Generation, GenRequest, TokenLogprob, Usage

__all__ = ["FakeBackend", "FunctionBackend", "Reply", "count_words"]


def count_words(text: str) -> int:
    return len(text.split())


@dataclass
class Reply:
    """A scripted reply. ``logprob`` is given to every token when logprobs are asked for."""

    text: str
    reasoning: str = ""
    logprob: float = -0.5


ReplyLike = str | Reply
ReplyFn = Callable[[GenRequest, int], ReplyLike]


def _as_reply(r: ReplyLike) -> Reply:
    return r if isinstance(r, Reply) else Reply(text=r)


_WORD = re.compile(r"\S+")


def _cut(text: str, limit: int) -> tuple[str, bool]:
    """The first ``limit`` words of ``text``, as the exact prefix a real engine would emit."""
    ends = [m.end() for m in _WORD.finditer(text)]
    if len(ends) <= limit:
        return text, False
    return (text[: ends[limit - 1]] if limit > 0 else ""), True


@dataclass
class FunctionBackend:
    """Calls ``fn(request, sample_index)`` for every sample of every call."""

    fn: ReplyFn
    name: str = "function"
    capabilities: Capabilities = field(
        default_factory=lambda: Capabilities(
            native_n=True, logprobs=True, thinking_budget=True, continue_final=True
        )
    )
    calls: list[GenRequest] = field(default_factory=list)
    delay_s: float = 0.0

    async def generate(self, req: GenRequest) -> list[Generation]:
        self.calls.append(req)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        prompt_tokens = sum(count_words(m.content) for m in req.messages)
        out: list[Generation] = []
        for i in range(req.n):
            out.append(self._one(req, i, prompt_tokens if i == 0 else 0))
        return out

    def _one(self, req: GenRequest, index: int, prompt_tokens: int) -> Generation:
        reply = _as_reply(self.fn(req, index))
        remaining = req.max_tokens
        reasoning = ""
        if req.thinking is not None and reply.reasoning:
            reasoning, _ = _cut(reply.reasoning, min(req.thinking.budget_tokens, remaining))
            remaining -= count_words(reasoning)
        text = reply.text
        for s in req.stop:
            if s and s in text:
                text = text[: text.index(s)]
        text, was_cut = _cut(text, max(remaining, 0))
        n_out = count_words(text)
        logprobs = None
        if req.logprobs:
            logprobs = [TokenLogprob(token=w, logprob=reply.logprob) for w in text.split()]
        return Generation(
            text=text,
            reasoning=reasoning,
            finish_reason="length" if was_cut else "stop",
            usage=Usage(
                input=prompt_tokens,
                reasoning=count_words(reasoning),
                output=n_out,
                input_estimated=True,
                reasoning_estimated=True,
                output_estimated=True,
            ),
            logprobs=logprobs,
        )

    async def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        (gen,) = await self.generate(req.model_copy(update={"n": 1}))
        if gen.reasoning:
            yield Delta(reasoning=gen.reasoning)
        if gen.text:
            for i, word in enumerate(gen.text.split(" ")):
                yield Delta(text=word if i == 0 else " " + word)
        yield Delta(finish_reason=gen.finish_reason, usage=gen.usage)


class FakeBackend(FunctionBackend):
    """Replays ``replies`` in order, one per sample, cycling when it runs out."""

    def __init__(
        self, replies: Iterable[ReplyLike] | Sequence[ReplyLike], name: str = "fake"
    ) -> None:
        self.replies = [_as_reply(r) for r in replies]
        if not self.replies:
            raise ValueError("FakeBackend needs at least one reply")
        self._next = 0
        super().__init__(fn=self._scripted, name=name)

    def _scripted(self, req: GenRequest, index: int) -> Reply:
        reply = self.replies[self._next % len(self.replies)]
        self._next += 1
        return reply
