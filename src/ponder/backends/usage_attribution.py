"""Usage of one upstream call: checked against what the call could use, then split over choices.

An upstream's usage report is what gets charged, so it is checked first: a call
asked for at most ``max_tokens`` per choice, and its prompt cannot hold more tokens
than its text has bytes (plus template framing). Anything above that is dropped from
the buckets, kept as ``Usage.clamped`` and recorded as an anomaly on the current
:mod:`~ponder.backends.upstream_log` report: a buggy or hostile upstream cannot blow
a quota. The checked total is then split over the call's choices; reasoning tokens a
server does not report are estimated by tokenizing the reasoning text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from ponder.backends.openai_wire import Choice, ServerUsage
from ponder.backends.scratchpad import split_think
from ponder.backends.upstream_log import UsageAnomaly, current_upstream_report
from ponder.types import Message, Usage

__all__ = [
    "Mode",
    "UsageBounds",
    "attribute",
    "bound_usage",
    "prompt_token_bound",
    "split_total",
]

Mode = Literal["split", "reasoning", "text"]
TokenCounter = Callable[[str], Awaitable[int]]

# Tokens a chat template (and a provider's own preamble) may add around the text.
_FRAMING_PER_MESSAGE = 16
_FRAMING_FIXED = 512


def prompt_token_bound(messages: Sequence[Message] | str) -> int:
    """The most prompt tokens ``messages`` can be: a byte-level tokenizer never makes
    more tokens than the text has UTF-8 bytes; framing tokens are allowed on top."""
    if isinstance(messages, str):
        return len(messages.encode("utf-8", "surrogatepass")) + _FRAMING_FIXED
    return _FRAMING_FIXED + sum(
        len(m.content.encode("utf-8", "surrogatepass")) + _FRAMING_PER_MESSAGE for m in messages
    )


@dataclass(frozen=True)
class UsageBounds:
    """The most one call may use: prompt tokens, and generated tokens per choice."""

    prompt: int
    completion_per_choice: int


def _record(anomaly: UsageAnomaly) -> None:
    report = current_upstream_report()
    if report is not None:
        report.anomalies.append(anomaly)


def bound_usage(
    usage: ServerUsage, bounds: UsageBounds, choices: int, *, upstream: str
) -> tuple[ServerUsage, int]:
    """``usage`` within ``bounds`` for a call that returned ``choices`` choices, and the
    number of tokens dropped (recorded as an anomaly when above zero)."""
    allowed_completion = bounds.completion_per_choice * max(choices, 1)
    prompt = min(usage.prompt, bounds.prompt)
    completion = min(usage.completion, allowed_completion)
    clamped = (usage.prompt - prompt) + (usage.completion - completion)
    if clamped == 0:
        return usage, 0
    _record(
        UsageAnomaly(
            upstream=upstream,
            reported_prompt=usage.prompt,
            reported_completion=usage.completion,
            allowed_prompt=bounds.prompt,
            allowed_completion=allowed_completion,
        ),
    )
    checked = replace(
        usage,
        prompt=prompt,
        cached=min(usage.cached, prompt),
        completion=completion,
        reasoning=None if usage.reasoning is None else min(usage.reasoning, completion),
    )
    return checked, clamped


def split_total(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` that sum exactly to it."""
    if not weights:
        return []
    wsum = sum(weights)
    if wsum == 0:
        base = [total // len(weights)] * len(weights)
        base[0] += total - sum(base)
        return base
    parts = [total * w // wsum for w in weights]
    order = sorted(range(len(weights)), key=lambda i: -(total * weights[i] % wsum))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _assign_text(choices: list[Choice], mode: Mode) -> None:
    """Move thinking out of the answer text, as ``mode`` says the text is to be read."""
    for ch in choices:
        if mode == "split" and not ch.reasoning:
            thought, answer = split_think(ch.text)
            if thought:
                ch.reasoning, ch.text = thought, answer
        elif mode == "reasoning":
            head = ch.text.lstrip()
            body = head[len("<think>") :] if head.startswith("<think>") else ch.text
            ch.reasoning, ch.text = ch.reasoning + body, ""


async def _estimated(
    choices: list[Choice],
    prompt_estimate: Callable[[], Awaitable[int]],
    count_tokens: TokenCounter,
    bounds: UsageBounds | None,
    upstream: str,
) -> list[tuple[Choice, Usage]]:
    """No usage reported: count the texts; a choice longer than it could be is clamped."""
    prompt = await prompt_estimate()
    out = []
    for i, ch in enumerate(choices):
        r = await count_tokens(ch.reasoning)
        exact = ch.tokens is not None and not ch.reasoning
        o = int(ch.tokens or 0) if exact else await count_tokens(ch.text)
        clamped = 0
        if bounds is not None and r + o > bounds.completion_per_choice:
            limit = bounds.completion_per_choice
            clamped = r + o - limit
            _record(
                UsageAnomaly(
                    upstream=upstream,
                    reported_prompt=0,
                    reported_completion=r + o,
                    allowed_prompt=0,
                    allowed_completion=limit,
                ),
            )
            r = min(r, limit)
            o = limit - r
        usage = Usage(
            input=prompt if i == 0 else 0,
            reasoning=r,
            output=o,
            input_estimated=True,
            reasoning_estimated=r > 0,
            output_estimated=not exact,
            clamped=clamped,
        )
        out.append((ch, usage))
    return out


async def attribute(
    choices: list[Choice],
    usage: ServerUsage | None,
    mode: Mode,
    *,
    count_tokens: TokenCounter,
    prompt_estimate: Callable[[], Awaitable[int]],
    bounds: UsageBounds | None = None,
    upstream: str = "upstream",
) -> list[tuple[Choice, Usage]]:
    """Split one call's usage over its choices; the prompt goes to the first.

    ``mode`` says what the generated text is: ``split`` (reasoning fields or
    ``<think>`` tags mark the thinking), ``reasoning`` (all of it is thinking,
    for the client-side cap) or ``text`` (all of it is answer).
    """
    _assign_text(choices, mode)
    if usage is None:
        return await _estimated(choices, prompt_estimate, count_tokens, bounds, upstream)
    clamped = 0
    if bounds is not None:
        usage, clamped = bound_usage(usage, bounds, len(choices), upstream=upstream)
    # The reported total is kept exactly; over several choices it is split by their
    # token counts (from logprobs) or else in proportion to their length.
    if len(choices) == 1:
        per = [usage.completion]
    elif all(c.tokens is not None for c in choices):
        per = split_total(usage.completion, [int(c.tokens or 0) for c in choices])
    else:
        per = split_total(
            usage.completion, [await count_tokens(c.reasoning + c.text) for c in choices]
        )
    r_split = (
        split_total(usage.reasoning, [await count_tokens(c.reasoning) for c in choices])
        if usage.reasoning is not None
        else None
    )
    out = []
    for i, ch in enumerate(choices):
        est = False
        if r_split is not None:
            r = min(r_split[i], per[i])
        elif mode == "reasoning":
            r = per[i]
        elif ch.reasoning:
            # Not reported: tokenize the reasoning text; the output is the rest.
            r, est = min(await count_tokens(ch.reasoning), per[i]), True
        else:
            r = 0
        first = i == 0
        out.append(
            (
                ch,
                Usage(
                    input=max(usage.prompt - usage.cached, 0) if first else 0,
                    cached_input=usage.cached if first else 0,
                    reasoning=r,
                    output=per[i] - r,
                    reasoning_estimated=est,
                    output_estimated=est,
                    clamped=clamped if first else 0,
                ),
            )
        )
    return out
