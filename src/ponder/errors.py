"""Errors with a user-facing message, an OpenAI error type and an HTTP status."""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BudgetExhausted",
    "CircuitOpen",
    "ContextOverflow",
    "Forbidden",
    "InvalidRequest",
    "ModelNotAvailable",
    "PonderError",
    "QuotaExceeded",
    "StoreUnavailable",
    "Unauthorized",
    "UnknownStrategy",
    "UpstreamAnswerLost",
    "UpstreamError",
    "UpstreamReadTimeout",
    "UpstreamTimeout",
    "openai_error_body",
]


def openai_error_body(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> dict[str, object]:
    """The OpenAI error object every error response carries (the one place it is built)."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


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
        return openai_error_body(self.message, type=self.type, param=self.param, code=self.code)

    def headers(self) -> dict[str, str]:
        """HTTP headers that go with this error (e.g. ``retry-after``)."""
        return {}


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


class Unauthorized(PonderError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(PonderError):
    status = 403
    type = "permission_error"
    code = "insufficient_scope"


class QuotaExceeded(PonderError):
    """A request refused before it ran: it spent nothing. Says which limit, the usage, the reset."""

    status = 429
    type = "insufficient_quota"
    code = "quota_exceeded"

    def __init__(
        self,
        message: str,
        *,
        limit: dict[str, object],
        usage: dict[str, object],
        resets_at: int | None,
        retry_after_s: int | None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.limit = limit
        self.usage = usage
        self.resets_at = resets_at
        self.retry_after_s = retry_after_s
        if code is not None:
            self.code = code

    def to_openai(self) -> dict[str, object]:
        body = super().to_openai()
        error = body["error"]
        assert isinstance(error, dict)
        error.update(limit=self.limit, usage=self.usage, resets_at=self.resets_at)
        return body

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"retry-after": str(self.retry_after_s)}


class StoreUnavailable(PonderError):
    """The key/quota/ledger store cannot be reached: requests are refused (fail closed)."""

    status = 503
    type = "server_error"
    code = "store_unavailable"


class UpstreamError(BackendError):
    """An upstream model server failed or refused a call.

    ``retryable`` says whether the same call may succeed later (5xx, 429, timeouts,
    dropped connections, garbled bodies); ``reason`` is the upstream's own words.
    The HTTP status reported to ponder's client follows the upstream's: its 4xx
    rejections of the request become 400s, outages 502/503/504.
    """

    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        upstream: str | None = None,
        upstream_status: int | None = None,
        reason: str | None = None,
        retryable: bool = False,
        retry_after_s: float | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.upstream = upstream
        self.upstream_status = upstream_status
        self.reason = reason
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        if upstream_status == 429:
            self.status, self.type, self.code = 429, "rate_limit_error", "upstream_rate_limited"
        elif upstream_status in (400, 404, 413, 422):
            self.status, self.type, self.code = 400, "invalid_request_error", "upstream_rejected"

    def to_openai(self) -> dict[str, object]:
        body = super().to_openai()
        err = body["error"]
        assert isinstance(err, dict)
        err["upstream"] = self.upstream
        err["upstream_status"] = self.upstream_status
        return body


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer (connect, first token or total) in time."""

    status = 504
    code = "upstream_timeout"


class CircuitOpen(UpstreamError):
    """Calls to an upstream are suspended after repeated failures."""

    status = 503
    code = "upstream_unavailable"


class UpstreamAnswerLost(UpstreamError):
    """The upstream may have read (and billed) the request, but no whole answer came back.

    The connection was reset or closed after the request was sent, the body or stream was
    cut short, or what came back was not the JSON promised. Sending the request again could
    make the upstream do (and charge for) the work twice, so it is never resent
    automatically: ``retryable`` is False. It still means the upstream is failing, which
    is what a fallback tier or a circuit breaker wants to know.
    """

    code = "upstream_answer_lost"

    def __init__(self, message: str, **kwargs: object) -> None:
        kwargs["retryable"] = False
        super().__init__(message, **kwargs)  # type: ignore[arg-type]


class UpstreamReadTimeout(UpstreamTimeout, UpstreamAnswerLost):
    """The upstream read the request but sent nothing for too long (read timeout or the
    request's deadline). HTTP 504 ``upstream_timeout``; never resent automatically."""
