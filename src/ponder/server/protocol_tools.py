"""Wire schemas of tool calls, structured output and logprobs (OpenAI's shapes).

Part of :mod:`ponder.server.protocol`, which re-exports every name here.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ponder.types import TokenLogprob, ToolCall

__all__ = [
    "ChoiceLogprobs",
    "ChunkToolCall",
    "FunctionCall",
    "FunctionParam",
    "NamedToolChoice",
    "ResponseFormat",
    "TokenLogprobInfo",
    "ToolParam",
    "WireToolCall",
    "logprobs_to_openai",
    "tool_calls_to_openai",
]

# Function names are written into the prompt by the chat template: letters, digits,
# '_', '.', '-' only, so a name can never carry control-token text.
_NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=_NAME_PATTERN)
    # JSON text, as OpenAI sends it (a model's arguments may be invalid JSON).
    arguments: str = "{}"

    @field_validator("arguments", mode="before")
    @classmethod
    def _arguments_text(cls, v: Any) -> Any:
        # Some clients send the arguments as an object; keep them as JSON text.

        return json.dumps(v) if isinstance(v, dict) else v


class WireToolCall(BaseModel):
    """A tool call in an assistant message (request) or in ``message.tool_calls`` (response)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=200)
    type: Literal["function"] = "function"
    function: FunctionCall

    def to_core(self) -> ToolCall:
        return ToolCall(id=self.id, name=self.function.name, arguments=self.function.arguments)


def tool_calls_to_openai(calls: list[ToolCall]) -> list[WireToolCall]:
    return [
        WireToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
        for c in calls
    ]


class FunctionParam(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=_NAME_PATTERN)
    description: str = ""
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolParam(BaseModel):
    """One entry of ``tools``: ``{"type": "function", "function": {...}}``."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: FunctionParam


class _ChoiceFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    """``tool_choice: {"type": "function", "function": {"name": "get_weather"}}``."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: _ChoiceFunction


class _JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    # "schema" shadows a BaseModel attribute, hence the alias.
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``response_format``: ``text``, ``json_object`` or ``json_schema`` (OpenAI's shapes)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError('type "json_schema" needs a json_schema object with name and schema')
        return self


class _TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobInfo(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[_TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    """``choices[i].logprobs`` as OpenAI shapes it (``refusal`` is never produced here)."""

    content: list[TokenLogprobInfo] | None = None
    refusal: list[TokenLogprobInfo] | None = None


def logprobs_to_openai(entries: list[TokenLogprob] | None) -> ChoiceLogprobs | None:
    """The engine's per-token logprobs in OpenAI's shape (``None`` when none were taken)."""
    if entries is None:
        return None
    return ChoiceLogprobs(
        content=[
            TokenLogprobInfo(
                token=e.token,
                logprob=e.logprob,
                bytes=list(e.token.encode("utf-8")),
                top_logprobs=[
                    _TopLogprob(token=t, logprob=lp, bytes=list(t.encode("utf-8")))
                    for t, lp in sorted(e.top.items(), key=lambda kv: -kv[1])
                ],
            )
            for e in entries
        ]
    )


class _ChunkFunction(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ChunkToolCall(BaseModel):
    """A tool-call delta: the first for a call carries id and name, later ones more arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: _ChunkFunction

    @classmethod
    def whole(cls, index: int, call: ToolCall) -> ChunkToolCall:
        """One delta with the complete call (OpenAI clients accept calls in one piece)."""
        return cls(
            index=index,
            id=call.id,
            type="function",
            function=_ChunkFunction(name=call.name, arguments=call.arguments),
        )
