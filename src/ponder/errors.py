"""Errors with a user-facing message, an OpenAI error type and an HTTP status."""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BudgetExhausted",
    "ContextOverflow",
    "InvalidRequest",
    "ModelNotAvailable",
    "PonderError",
    "UnknownStrategy",
]


class PonderError(Exception):
    """Base of ponder's errors. ``message`` says what was wrong and what to do."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_openai(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(PonderError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class UnknownStrategy(InvalidRequest):
    code = "unknown_strategy"


class ContextOverflow(InvalidRequest):
    code = "context_length_exceeded"


class ModelNotAvailable(PonderError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class BackendError(PonderError):
    status = 502
    type = "upstream_error"
    code = "backend_error"


class BudgetExhausted(PonderError):
    """Raised by the metering wrapper; strategies catch it and return what they have."""

    status = 429
    type = "budget_exhausted"
    code = "budget_exhausted"

    def __init__(self, message: str, *, reason: str = "budget") -> None:
        super().__init__(message)
        self.reason = reason
