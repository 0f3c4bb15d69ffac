"""Other APIs' wire formats, translated to and from the chat completion gateway's.

Each surface is pure translation: its request -> :class:`ChatCompletionRequest`,
:class:`ChatCompletion` -> its response, the chat chunk stream -> its stream
events, and :class:`PonderError` -> its error body. The request itself then
takes the gateway's one governed path (plan, reserve, run, settle, respond), so
quotas, the ledger, guardrails, routing and metrics hold for every surface.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ponder.errors import InvalidRequest

__all__ = ["validate_body"]

_M = TypeVar("_M", bound=BaseModel)


def validate_body(cls: type[_M], body: Any) -> _M:
    """``cls`` from a decoded body; a bad one raises :class:`InvalidRequest` naming the field."""
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"request body must be a JSON object, got a JSON {type(body).__name__}"
        )
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        shown = []
        for e in errors[:3]:
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"])
            shown.append(
                f"{where.lstrip('.') or 'body'}: {str(e['msg']).removeprefix('Value error, ')}"
            )
        first = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in errors[0]["loc"])
        raise InvalidRequest(
            "invalid request: " + "; ".join(shown), param=first.lstrip(".") or None
        ) from exc
