"""A thinking budget for servers with no native control, enforced from the client side.

Think until the budget (the call stops at the close tag or at ``max_tokens`` = the
budget), force the end of thinking, then ask for the answer; a thought closed too
early is extended s1-style with "Wait". Where the server can continue a partial
assistant message the thought is continued in place; elsewhere the closed thought
is sent back with a request for the final answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from ponder.backends.openai_wire import Choice
from ponder.backends.scratchpad import ASK_FOR_ANSWER, scratchpad_messages
from ponder.backends.usage_attribution import Mode
from ponder.types import Delta, Generation, GenRequest, Message, ThinkingConfig, Usage

__all__ = ["ClientThinkingCap"]


class _Host(Protocol):
    """What the cap needs from the backend it is mixed into."""

    continuation: str

    async def generate(self, req: GenRequest) -> list[Generation]: ...

    def stream(self, req: GenRequest) -> AsyncIterator[Delta]: ...

    async def _sample(
        self, req: GenRequest, messages: Sequence[Message], mode: Mode = "split"
    ) -> list[tuple[Choice, Usage]]: ...

    def _stream_once(
        self, req: GenRequest, messages: Sequence[Message], *, mode: Mode
    ) -> AsyncIterator[Delta]: ...


class ClientThinkingCap:
    """Mixin for :class:`~ponder.backends.openai_compat.OpenAICompatBackend`."""

    continuation: str

    def _cap_plan(self, req: GenRequest) -> tuple[ThinkingConfig, int, list[Message]]:
        cfg = req.thinking
        assert cfg is not None
        # Keep room for the answer, as the embedded engine does.
        reserve = max(min(req.max_tokens // 4, 64), 1)
        cap = max(min(cfg.budget_tokens, req.max_tokens - reserve), 0)
        messages = (
            scratchpad_messages(list(req.messages), cfg) if cfg.prompted else list(req.messages)
        )
        return cfg, cap, messages

    def _think_call(
        self,
        req: GenRequest,
        messages: list[Message],
        cfg: ThinkingConfig,
        thought: str,
        cap: int,
    ) -> tuple[GenRequest, list[Message]]:
        """The request that thinks (on) from ``thought``, stopping at the close tag."""
        sub = req.model_copy(
            update={
                "max_tokens": cap,
                "stop": [cfg.close_tag],
                "logprobs": False,
                "thinking": None,
                "continue_final": self.continuation != "none",
            }
        )
        if self.continuation == "none":
            return sub, messages
        prefix = f"{cfg.open_tag}\n{thought}"
        return sub, [*messages, Message(role="assistant", content=prefix)]

    def _answer_call(
        self,
        req: GenRequest,
        messages: list[Message],
        cfg: ThinkingConfig,
        thought: str,
        left: int,
    ) -> tuple[GenRequest, list[Message]]:
        """The request that writes the answer after a closed (or forcibly closed) thought."""
        closed = f"{cfg.open_tag}\n{thought.strip()}\n{cfg.close_tag}\n\n"
        sub = req.model_copy(
            update={
                "n": 1,
                "max_tokens": max(left, 1),
                "thinking": None,
                "continue_final": self.continuation != "none",
            }
        )
        if self.continuation != "none":
            return sub, [*messages, Message(role="assistant", content=closed)]
        return sub, [
            *messages,
            Message(role="assistant", content=closed),
            Message(role="user", content=ASK_FOR_ANSWER),
        ]

    async def _generate_capped(self, req: GenRequest) -> list[Generation]:
        host: _Host = self  # type: ignore[assignment]
        cfg, cap, messages = self._cap_plan(req)
        if cap < 8:
            # Too small a budget to open and close a thought: answer directly.
            return await host.generate(req.model_copy(update={"thinking": None}))
        sub, msgs = self._think_call(req, messages, cfg, "", cap)
        first = await host._sample(sub, msgs, "reasoning")

        async def finish_one(choice: Choice, usage: Usage) -> Generation:
            thought, total = choice.reasoning, usage
            extensions = 0
            # s1-style: a thought closed too early is extended with "Wait".
            while (
                choice.finish == "stop"
                and total.reasoning < cfg.min_tokens
                and extensions < cfg.max_extensions
                and host.continuation != "none"
                and cap - total.reasoning > 0
            ):
                extensions += 1
                thought = f"{thought.rstrip()}\n{cfg.extend_with}"
                sub2, msgs2 = self._think_call(
                    req.model_copy(update={"n": 1}), messages, cfg, thought, cap - total.reasoning
                )
                ((choice, more),) = await host._sample(sub2, msgs2, "reasoning")
                thought += choice.reasoning
                total = total + more
            sub3, msgs3 = self._answer_call(
                req, messages, cfg, thought, req.max_tokens - total.reasoning
            )
            ((answer, ausage),) = await host._sample(sub3, msgs3, "text")
            return Generation(
                text=answer.text,
                reasoning=thought.strip(),
                finish_reason=answer.finish,
                usage=total + ausage,
                logprobs=answer.logprobs,
            )

        return list(await asyncio.gather(*(finish_one(c, u) for c, u in first)))

    async def _stream_capped(self, req: GenRequest) -> AsyncIterator[Delta]:
        host: _Host = self  # type: ignore[assignment]
        cfg, cap, messages = self._cap_plan(req)
        if cap < 8:
            async for d in host.stream(req.model_copy(update={"thinking": None})):
                yield d
            return
        sub, msgs = self._think_call(req, messages, cfg, "", cap)
        thought_parts: list[str] = []
        think_usage = Usage()
        async for d in host._stream_once(sub, msgs, mode="reasoning"):
            if d.usage is not None:
                think_usage = d.usage
            elif d.reasoning:
                piece = d.reasoning
                if not thought_parts and host.continuation == "none":
                    piece = piece.replace(cfg.open_tag, "", 1)
                thought_parts.append(piece)
                yield Delta(reasoning=piece)
        thought = "".join(thought_parts)
        sub2, msgs2 = self._answer_call(
            req, messages, cfg, thought, req.max_tokens - think_usage.completion_tokens
        )
        async for d in host._stream_once(sub2, msgs2, mode="text"):
            if d.usage is not None:
                yield Delta(finish_reason=d.finish_reason, usage=think_usage + d.usage)
            else:
                yield d
