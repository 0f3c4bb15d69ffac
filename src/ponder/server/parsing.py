"""Request bodies in: JSON decoding and validation with errors that name the field."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ponder.errors import InvalidRequest
from ponder.server.protocol import ChatCompletionRequest, PonderOptions

__all__ = ["InvalidJSON", "parse_json", "parse_model", "parse_request"]

_M = TypeVar("_M", bound=BaseModel)


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


def parse_json(raw: bytes) -> Any:
    """Decode a request body; raise :class:`InvalidJSON` with where it broke."""
    if not raw.strip():
        raise InvalidJSON("request body is not valid JSON: the body is empty; send a JSON object")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidJSON(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except ValueError as exc:  # undecodable bytes
        raise InvalidJSON(f"request body is not valid JSON: {exc}") from exc


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(error: Any) -> str:
    path = _loc(error["loc"]) or "body"
    if error["type"] == "extra_forbidden" and error["loc"][:1] == ("ponder",):
        known = ", ".join(PonderOptions.model_fields)
        return f"{path}: unknown option; ponder accepts {known}"
    msg = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    # Echo scalars only: a whole echoed object would drown the message.
    show = error["type"] != "missing" and not isinstance(value, dict | list)
    return f"{path}: {msg} (got {_short(value)})" if show else f"{path}: {msg}"


def parse_request(body: Any) -> ChatCompletionRequest:
    """Validate a decoded body; raise :class:`InvalidRequest` naming the field and the problem."""
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"request body must be a JSON object, got a JSON {type(body).__name__}"
        )
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        shown = [_describe(e) for e in errors[:3]]
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise InvalidRequest(
            "invalid request: " + "; ".join(shown) + more,
            param=_loc(errors[0]["loc"]) or None,
        ) from exc


def parse_model(model: type[_M], body: Any) -> _M:
    """Validate an admin body against ``model`` (same error wording as chat requests)."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"request body must be a JSON object, got {type(body).__name__}")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise InvalidRequest(
            "invalid request: " + "; ".join(_describe(e) for e in errors[:3]),
            param=_loc(errors[0]["loc"]) or None,
        ) from exc
