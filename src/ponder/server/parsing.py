"""Request bodies in: JSON decoding and validation with errors that name the field."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ponder.errors import InvalidRequest
from ponder.server.protocol import ChatCompletionRequest, PonderOptions

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_JSON_INT",
    "BodyTooLarge",
    "InvalidJSON",
    "check_text",
    "parse_json",
    "parse_model",
    "parse_request",
]

# Bounds on every JSON body, checked before anything reads its meaning: a chat request
# with long documents is a few MB; nothing legitimate nests 64 deep.
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_JSON_DEPTH = 64
# Signed 64-bit: what PostgreSQL BIGINT and SQLite INTEGER hold. Fields that count
# tokens have tighter bounds of their own (``ponder.server.protocol``).
MAX_JSON_INT = 2**63 - 1

_M = TypeVar("_M", bound=BaseModel)


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class BodyTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


def check_text(text: str, where: str) -> None:
    """Refuse text no store or upstream can take: NUL bytes and lone UTF-16 surrogates.

    ``where`` is the field's path in the body ("" for the body itself)."""
    if "\x00" in text:
        raise InvalidJSON(
            f"{where or 'body'}: text must not contain NUL (\\u0000) characters",
            param=where or None,
        )
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidJSON(
                f"{where or 'body'}: text contains a lone UTF-16 surrogate "
                f"({text[exc.start]!a}); send valid Unicode",
                param=where or None,
            ) from exc


def _check_tree(value: Any) -> None:
    """Depth, integer range and text of a decoded body, without recursion."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        node, depth, where = stack.pop()
        if isinstance(node, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise InvalidJSON(
                    f"request body nests deeper than {MAX_JSON_DEPTH} levels (at {where})",
                    param=where or None,
                )
            if isinstance(node, dict):
                for key, item in node.items():
                    check_text(key, where)
                    stack.append((item, depth + 1, f"{where}.{key}" if where else key))
            else:
                stack.extend((item, depth + 1, f"{where}[{i}]") for i, item in enumerate(node))
        elif isinstance(node, str):
            check_text(node, where)
        elif isinstance(node, int) and not -MAX_JSON_INT - 1 <= node <= MAX_JSON_INT:
            raise InvalidJSON(
                f"{where or 'body'}: integer out of range (at most {MAX_JSON_INT} in magnitude)",
                param=where or None,
            )


def parse_json(raw: bytes) -> Any:
    """Decode a request body; raise :class:`InvalidJSON` with where it broke.

    Bodies are bounded in size (:data:`MAX_BODY_BYTES`, 413) and depth
    (:data:`MAX_JSON_DEPTH`); integers must fit in 64 bits and text must be
    encodable (no NUL, no lone surrogate), so nothing malformed reaches the store.
    """
    if len(raw) > MAX_BODY_BYTES:
        raise BodyTooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        raise InvalidJSON("request body is not valid JSON: the body is empty; send a JSON object")
    try:
        decoded = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidJSON(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except RecursionError as exc:  # the C decoder's own depth limit
        raise InvalidJSON(f"request body nests deeper than {MAX_JSON_DEPTH} levels") from exc
    except ValueError as exc:  # undecodable bytes
        raise InvalidJSON(f"request body is not valid JSON: {exc}") from exc
    _check_tree(decoded)
    return decoded


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
