"""Streaming responses: server-sent events of one admitted run.

A strategy that streams its tokens (:class:`~ponder.strategies.base.StreamsTokens`)
sends its answer as it is decoded; any other streams progress events while it
runs, then the chosen answer. Either way every path settles the reservation,
including a client that goes away mid-stream (``finally``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from ponder.backends.base import Backend
from ponder.budget.pricing import to_usd
from ponder.errors import BudgetExhausted, PonderError
from ponder.server.execution import Execution, RunState
from ponder.server.output import StreamShield, guard_outcome
from ponder.server.planning import Plan
from ponder.server.protocol import (
    ChatCompletionChunk,
    ChunkChoice,
    ChunkDelta,
    ChunkToolCall,
    ErrorResult,
    PonderInfo,
    PonderProgress,
    StreamProgress,
    StreamResult,
)
from ponder.server.responses import completion, final_choice, pieces, sse, stream_headers
from ponder.server.settlement import Settler
from ponder.strategies.base import Progress, streams_tokens
from ponder.tools import ToolCallStreamParser, tools_for_prompt
from ponder.types import Delta, ToolCall

__all__ = ["PROGRESS_HEARTBEAT_S", "Streams"]

# A stream of a multi-sample strategy sends a progress event at least this often.
PROGRESS_HEARTBEAT_S = 5.0


async def _aclose(it: AsyncIterator[Any]) -> None:
    # Backends' stream() are usually async generators; closing one runs its cleanup.
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


class _Chunks:
    """SSE chunk strings of one response (its id, creation time and model fixed)."""

    def __init__(self, state: RunState, model: str) -> None:
        self.id, self.created, self.model = state.id, int(time.time()), model

    def __call__(self, choices: list[ChunkChoice], **extra: Any) -> str:
        c = ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=choices, **extra
        )
        return sse(c.model_dump_json(exclude_none=True))

    def first(self) -> str:
        return self([ChunkChoice(delta=ChunkDelta(role="assistant", content=""))])

    def progress(self, snapshot: Progress) -> str:
        info = PonderProgress(progress=StreamProgress(**dataclasses.asdict(snapshot)))
        return self([ChunkChoice()], ponder=info)


def _error_events(body: dict[str, Any]) -> list[str]:
    return [sse(json.dumps(body)), sse("[DONE]")]


class _CallDeltas:
    """A stream's tool calls: ``<tool_call>`` blocks cut out of the text, sent as OpenAI's
    tool-call deltas (one with the call's id and name, one with its arguments)."""

    def __init__(self, p: Plan) -> None:
        s = p.sampling
        active = bool(s.tools) and s.tool_choice != "none"
        self.parser = (
            ToolCallStreamParser(tools_for_prompt(s.tools, s.tool_choice)) if active else None
        )
        self.count = 0

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        if self.parser is None or not text:
            return text, []
        return self.parser.feed(text)

    def finish(self) -> tuple[str, list[ToolCall]]:
        return self.parser.finish() if self.parser is not None else ("", [])

    def deltas(self, calls: list[ToolCall]) -> list[ChunkDelta]:
        out: list[ChunkDelta] = []
        for call in calls:
            head = ChunkToolCall.model_validate(
                {
                    "index": self.count,
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }
            )
            arguments = ChunkToolCall.model_validate(
                {"index": self.count, "function": {"arguments": call.arguments}}
            )
            out += [ChunkDelta(tool_calls=[head]), ChunkDelta(tool_calls=[arguments])]
            self.count += 1
        return out


class Streams:
    """Starts the stream of an admitted run and settles it whichever way it ends."""

    def __init__(self, settler: Settler, tiers: Mapping[str, Backend]) -> None:
        self.settler = settler
        self.tiers = tiers

    async def start(
        self, state: RunState, continuation: Callable[[RunState], Awaitable[None]]
    ) -> StreamResult | ErrorResult:
        """The stream's events and headers; ``continuation`` runs once its answer is out
        (continue_async queues the full plan there)."""
        if not streams_tokens(state.plan.instance):
            return StreamResult(events=self._progress_events(state), headers=stream_headers(state))
        run = Execution(state, self.tiers)
        deltas: AsyncIterator[Delta] | None = None
        first: Delta | None = None
        try:
            deltas = run.deltas()
            # Pull the first delta before answering 200, so errors that happen up
            # front (context overflow, engine down) still get their HTTP status.
            first = await anext(deltas)
        except (StopAsyncIteration, BudgetExhausted):
            # Anytime semantics: a zero budget gives an empty, truncated answer.
            pass
        except Exception as exc:
            if deltas is not None:
                await _aclose(deltas)
            return await self.settler.fail(state, exc)
        assert deltas is not None
        return StreamResult(
            events=self._token_events(state, run, deltas, first, continuation),
            headers=stream_headers(state),
        )

    async def _token_events(
        self,
        state: RunState,
        run: Execution,
        deltas: AsyncIterator[Delta],
        first: Delta | None,
        continuation: Callable[[RunState], Awaitable[None]],
    ) -> AsyncIterator[str]:
        p, meter = state.plan, run.meter
        chunk = _Chunks(state, self.settler.model_of(state.tier))
        try:
            yield chunk.first()
            engine_finish: str | None = None
            engine_stop: str | None = None
            # Output guardrails: text leaves only once no later scan could redact it.
            shield = StreamShield(p)
            # With tools, <tool_call> blocks leave as tool-call deltas, never as text.
            calls = _CallDeltas(p)
            try:
                delta = first
                while delta is not None:
                    text, done = calls.feed(delta.text)
                    piece = shield.piece(text, delta.reasoning)
                    if piece is not None:
                        yield chunk([ChunkChoice(delta=piece)])
                    if shield.refused is not None:
                        break  # stop decoding: nothing more of this answer will be sent
                    for call_delta in calls.deltas(done):
                        yield chunk([ChunkChoice(delta=call_delta)])
                    engine_finish = delta.finish_reason or engine_finish
                    engine_stop = delta.stop_sequence or engine_stop
                    delta = await anext(deltas, None)
                if shield.refused is None:
                    text, done = calls.finish()
                    piece = shield.piece(text, "")
                    if piece is not None:
                        yield chunk([ChunkChoice(delta=piece)])
                    for call_delta in calls.deltas(done):
                        yield chunk([ChunkChoice(delta=call_delta)])
                piece = shield.flush()
                if piece is not None:
                    yield chunk([ChunkChoice(delta=piece)])
                state.screened = shield.screened
            except Exception as exc:
                await _aclose(deltas)
                failed = await self.settler.fail(state, exc)
                for event in _error_events(failed.body):
                    yield event
                return
            await _aclose(deltas)

            truncated = meter.exhausted is not None or engine_finish not in (
                None,
                "stop",
                "tool_calls",
            )
            await continuation(state)
            settlement = self.settler.price(
                state, status="ok", http_status=200, truncated=truncated
            )
            try:
                await self.settler.settle(state, settlement)
            except PonderError as exc:
                for event in _error_events(exc.to_openai()):
                    yield event
                return
            info = PonderInfo(
                strategy=p.strategy,
                task_class=p.task_class,
                params=p.params,
                budget=p.budget.tokens,
                thinking_budget=p.thinking_budget,
                truncated=truncated,
                stop_reason=meter.exhausted or engine_finish,
                calls=meter.calls,
                latency_s=round(time.monotonic() - meter.started, 4),
                n_candidates=1 if first is not None else 0,
                cost_usd=to_usd(settlement.cost_micro),
                tier=state.tier,
                job=state.job,
            )
            last = final_choice(state, truncated, called=calls.count > 0, stop_sequence=engine_stop)
            yield chunk([last], ponder=info)
            if p.include_usage:
                yield chunk([], usage=meter.usage.to_openai())
            yield sse("[DONE]")
        finally:
            if not state.settled:
                # The client went away mid-stream: what was generated is still spent.
                await _aclose(deltas)
                self.settler.settle_abandoned(state, status="cancelled")

    async def _progress_events(self, state: RunState) -> AsyncIterator[str]:
        p = state.plan
        chunk = _Chunks(state, self.settler.model_of(state.tier))
        updates: asyncio.Queue[Progress] = asyncio.Queue()
        run = Execution(state, self.tiers, on_progress=updates.put_nowait)
        tracker = run.tracker
        assert tracker is not None
        task: asyncio.Task[Any] | None = None
        try:
            yield chunk.first()
            yield chunk.progress(tracker.snapshot())
            task = asyncio.create_task(run.outcome())
            next_update: asyncio.Task[Progress] | None = None
            try:
                while True:
                    if next_update is None:
                        next_update = asyncio.ensure_future(updates.get())
                    done, _ = await asyncio.wait(
                        {task, next_update},
                        timeout=PROGRESS_HEARTBEAT_S,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if next_update in done:
                        yield chunk.progress(next_update.result())
                        next_update = None
                    elif task in done:
                        break
                    else:  # a heartbeat: still running (keeps proxies from timing out)
                        if tracker.phase == "started":
                            tracker.phase = "running"
                        yield chunk.progress(tracker.snapshot())
            finally:
                if next_update is not None:
                    next_update.cancel()
            while not updates.empty():
                yield chunk.progress(updates.get_nowait())
            try:
                outcome = task.result()
            except Exception as exc:
                failed = await self.settler.fail(state, exc)
                for event in _error_events(failed.body):
                    yield event
                return
            outcome, state.screened = guard_outcome(p, outcome)
            settlement = self.settler.price(
                state, status="ok", http_status=200, truncated=outcome.truncated
            )
            try:
                await self.settler.settle(state, settlement)
            except PonderError as exc:
                for event in _error_events(exc.to_openai()):
                    yield event
                return
            model = self.settler.model_of(state.tier)
            body = completion(state, outcome, settlement, model)
            message = body.choices[0].message
            if message.reasoning_content:
                yield chunk(
                    [ChunkChoice(delta=ChunkDelta(reasoning_content=message.reasoning_content))]
                )
            for piece in pieces(message.content or ""):
                yield chunk([ChunkChoice(delta=ChunkDelta(content=piece))])
            for call_delta in _CallDeltas(p).deltas(
                [c.to_core() for c in message.tool_calls or []]
            ):
                yield chunk([ChunkChoice(delta=call_delta)])
            final = final_choice(state, outcome.truncated, called=bool(message.tool_calls))
            yield chunk([final], ponder=body.ponder)
            if p.include_usage:
                yield chunk([], usage=outcome.usage.to_openai())
            yield sse("[DONE]")
        finally:
            if task is not None and not task.done():
                # The client went away: stop the search; what it generated is still spent.
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            if not state.settled:
                self.settler.settle_abandoned(state, status="cancelled")
