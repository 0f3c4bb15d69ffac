"""Plain data shared by every layer: messages, requests, generations, usage, outcomes.

No I/O here. Everything is a pydantic model so it serializes to JSON for traces,
ledgers and the wire.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "Budget",
    "Candidate",
    "Capabilities",
    "Delta",
    "GenRequest",
    "Generation",
    "Message",
    "Outcome",
    "OutputConstraint",
    "Problem",
    "Role",
    "Score",
    "ThinkingConfig",
    "TokenLogprob",
    "ToolCall",
    "ToolChoice",
    "ToolSpec",
    "TraceEvent",
    "TraceNode",
    "Usage",
    "as_messages",
]

Role = Literal["system", "user", "assistant", "tool", "developer"]
FinishReason = Literal["stop", "length", "deadline", "budget", "error", "tool_calls"]
# "auto": the model may call a tool; "none": it must answer in text; "required": it
# must call one; a function name: it must call that one.
ToolChoice = Literal["auto", "none", "required"] | str


class ToolCall(BaseModel):
    """One function call made by the model; ``arguments`` is JSON text, as in OpenAI."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    arguments: str = "{}"


class ToolSpec(BaseModel):
    """A function the model may call: its name, description and JSON Schema parameters."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    # OpenAI's strict mode: the arguments must match the schema exactly.
    strict: bool = False


class OutputConstraint(BaseModel):
    """What the generated text must match, enforced token by token on engines that can.

    ``json_object``: any JSON object; ``json_schema``: an instance of ``schema``;
    ``regex``: a match of ``pattern``; ``lark``: a sentence of ``grammar`` (llguidance's
    Lark dialect, used for tool calls).
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal["json_object", "json_schema", "regex", "lark"]
    json_schema: dict[str, Any] | None = None
    pattern: str | None = None
    grammar: str | None = None


class Message(BaseModel):
    """One chat message.

    Assistant messages may carry ``tool_calls`` (with empty ``content``); a ``tool``
    message answers the call named by ``tool_call_id``.
    """

    model_config = ConfigDict(frozen=True)

    role: Role
    content: str
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None


def as_messages(prompt: str | Sequence[Message | dict[str, Any]]) -> list[Message]:
    """Accept a bare prompt, Message objects or OpenAI-style dicts."""
    if isinstance(prompt, str):
        return [Message(role="user", content=prompt)]
    return [m if isinstance(m, Message) else Message.model_validate(m) for m in prompt]


class Usage(BaseModel):
    """Token usage in exclusive buckets.

    ``input`` + ``cached_input`` are prompt tokens (evaluated vs. served from cache),
    ``reasoning`` + ``output`` are generated tokens (hidden thinking vs. visible answer).
    No token is in two buckets. Each bucket has a flag telling whether it was
    estimated (e.g. by tokenizing text) rather than reported by the engine.
    """

    input: int = Field(default=0, ge=0)
    cached_input: int = Field(default=0, ge=0)
    reasoning: int = Field(default=0, ge=0)
    output: int = Field(default=0, ge=0)
    input_estimated: bool = False
    cached_input_estimated: bool = False
    reasoning_estimated: bool = False
    output_estimated: bool = False
    # Tokens an upstream reported beyond what its call could have used (above max_tokens,
    # or more prompt tokens than the prompt has bytes): left out of the buckets above, so
    # they are never charged, and kept here as a usage anomaly.
    clamped: int = Field(default=0, ge=0)

    @property
    def prompt_tokens(self) -> int:
        return self.input + self.cached_input

    @property
    def completion_tokens(self) -> int:
        return self.reasoning + self.output

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input=self.input + other.input,
            cached_input=self.cached_input + other.cached_input,
            reasoning=self.reasoning + other.reasoning,
            output=self.output + other.output,
            input_estimated=self.input_estimated or other.input_estimated,
            cached_input_estimated=self.cached_input_estimated or other.cached_input_estimated,
            reasoning_estimated=self.reasoning_estimated or other.reasoning_estimated,
            output_estimated=self.output_estimated or other.output_estimated,
            clamped=self.clamped + other.clamped,
        )

    def __radd__(self, other: object) -> Usage:
        # Lets the builtin ``sum(usages)`` start from its default 0.
        if other == 0:
            return self
        return NotImplemented

    @classmethod
    def sum(cls, usages: Iterable[Usage]) -> Usage:
        total = cls()
        for u in usages:
            total = total + u
        return total

    def to_openai(self) -> dict[str, Any]:
        """OpenAI ``usage`` object: completion tokens = reasoning + visible output."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_input},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning},
        }


class ThinkingConfig(BaseModel):
    """How much hidden thinking one generation may do.

    ``budget_tokens`` caps the thinking: when it is reached the end-of-thinking
    delimiter is forced and the answer follows. ``min_tokens`` extends thinking
    s1-style: an early end of thinking is replaced by ``extend_with`` ("Wait").
    ``prompted`` asks models without native thinking to think in a delimited
    scratchpad (the delimiters are then prefilled / forced by the engine).
    """

    budget_tokens: int = Field(ge=0)
    min_tokens: int = Field(default=0, ge=0)
    extend_with: str = "Wait"
    max_extensions: int = Field(default=2, ge=0)
    open_tag: str = "<think>"
    close_tag: str = "</think>"
    prompted: bool = True


class GenRequest(BaseModel):
    """One call to a backend: a conversation, sampling settings, n samples."""

    messages: list[Message]
    n: int = Field(default=1, ge=1)
    max_tokens: int = Field(default=512, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = Field(default=0, ge=0, le=20)
    # OpenAI's repetition controls: subtracted from a token's logit once it has been
    # generated (presence) and per time it has (frequency), in this generation.
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    # Added to the logits of these token ids (of the serving model's vocabulary).
    logit_bias: dict[int, float] = Field(default_factory=dict)
    # Continue the last assistant message instead of starting a new turn
    # (step-level search extends partial solutions this way).
    continue_final: bool = False
    thinking: ThinkingConfig | None = None
    # Generate exactly max_tokens (benchmarks); end-of-generation tokens are skipped.
    ignore_eos: bool = False
    # Absolute time.monotonic() after which the backend should stop decoding.
    deadline: float | None = None
    model: str | None = None
    # Functions the model may call (rendered through the model's chat template).
    tools: list[ToolSpec] = Field(default_factory=list)
    tool_choice: ToolChoice = "auto"
    # Grammar the answer must follow (engines without constrained decoding ignore it;
    # the caller validates their output instead).
    constraint: OutputConstraint | None = None

    @field_validator("messages")
    @classmethod
    def _non_empty(cls, v: list[Message]) -> list[Message]:
        if not v:
            raise ValueError("messages must contain at least one message")
        return v


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    top: dict[str, float] = Field(default_factory=dict)


class Generation(BaseModel):
    """One sampled completion.

    ``usage`` is this sequence's share of the call: the prompt is attributed to
    the first generation of a call only (it was evaluated once), so summing the
    usages of a call gives the call's true cost.
    """

    text: str
    reasoning: str = ""
    finish_reason: FinishReason = "stop"
    usage: Usage = Field(default_factory=Usage)
    logprobs: list[TokenLogprob] | None = None
    # Calls parsed out of the text (``text`` then holds only the visible prose, if any).
    tool_calls: list[ToolCall] | None = None
    # The request's stop string that ended this generation (cut from ``text``), if one did.
    stop_sequence: str | None = None

    @property
    def mean_logprob(self) -> float | None:
        if not self.logprobs:
            return None
        return sum(t.logprob for t in self.logprobs) / len(self.logprobs)


class Delta(BaseModel):
    """A streamed piece of one generation."""

    index: int = 0
    text: str = ""
    reasoning: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    # With the finish: the request's stop string that ended the generation, if one did.
    stop_sequence: str | None = None


class Capabilities(BaseModel):
    """What a backend can do natively; strategies adapt to it."""

    native_n: bool = False
    logprobs: bool = False
    thinking_budget: bool = False
    continue_final: bool = False
    prefix_cache: bool = False
    # Token-level grammar constraints (GenRequest.constraint) are enforced.
    constrained_decoding: bool = False
    # GenRequest.tools reach the model (rendered or passed through).
    tools: bool = False
    max_context: int | None = None


class Problem(BaseModel):
    """What a strategy solves: the conversation plus optional grading hints."""

    messages: list[Message]
    # Ground truth or tests are for verifiers that are allowed to see them.
    reference: str | None = None
    task: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")


class Candidate(BaseModel):
    """A complete answer proposed by a strategy, with the key it votes under."""

    text: str
    reasoning: str = ""
    answer: str | None = None
    generation: Generation | None = None
    truncated: bool = False


class Score(BaseModel):
    value: float
    detail: dict[str, Any] = Field(default_factory=dict)


class Budget(BaseModel):
    """A hard compute budget for one strategy run.

    ``tokens`` caps generated tokens (reasoning + output) summed over every
    internal call; ``deadline_s`` caps wall time. ``None`` means unlimited.
    """

    tokens: int | None = Field(default=None, ge=0)
    deadline_s: float | None = Field(default=None, gt=0)


class TraceEvent(BaseModel):
    name: str
    at: float = Field(default_factory=time.monotonic)
    data: dict[str, Any] = Field(default_factory=dict)


class TraceNode(BaseModel):
    """One node of a strategy's search tree: a (partial) solution and what it cost.

    ``text`` is what this node adds to its parent's text (a step, a sample, a
    revision); ``chosen`` marks the path to the returned answer.
    """

    id: int
    text: str = ""
    kind: str = "node"
    score: float | None = None
    tokens: int = 0
    chosen: bool = False
    detail: dict[str, Any] = Field(default_factory=dict)
    children: list[TraceNode] = Field(default_factory=list)


class Outcome(BaseModel):
    """What a strategy returns: the answer and everything it cost."""

    answer: str
    reasoning: str = ""
    strategy: str
    candidates: list[Candidate] = Field(default_factory=list)
    scores: list[Score] = Field(default_factory=list)
    chosen: int | None = None
    usage: Usage = Field(default_factory=Usage)
    latency_s: float = 0.0
    truncated: bool = False
    stop_reason: str | None = None
    calls: int = 0
    trace: list[TraceEvent] = Field(default_factory=list)
    # The search tree of the run (root = the problem); see ponder.strategies.tree.
    tree: TraceNode | None = None
