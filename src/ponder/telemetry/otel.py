"""OpenTelemetry spans for gateway requests, with GenAI semantic-convention attributes.

Optional: needs ``pip install 'ponder[otel]'``; the exporter is configured the
standard way (an SDK ``TracerProvider`` installed by the application, or the
``OTEL_*`` environment with ``opentelemetry-instrument``). Without a provider
the API is a no-op, so enabling this costs nothing until an exporter exists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ponder.types import Usage

if TYPE_CHECKING:
    from ponder.ledger.store import LedgerRow

__all__ = ["OtelTracer", "span_attributes"]


def span_attributes(row: LedgerRow, usage: Usage) -> dict[str, Any]:
    """GenAI semconv attributes (plus ``ponder.*``) for one finished request."""
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "ponder",
        "gen_ai.request.model": row.model or "",
        "gen_ai.response.model": row.model or "",
        "gen_ai.response.id": row.id,
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
        "gen_ai.usage.reasoning.output_tokens": usage.reasoning,
        "gen_ai.usage.cache_read.input_tokens": usage.cached_input,
        "ponder.task_class": row.task_class,
        "ponder.strategy": row.strategy,
        "ponder.tier": row.tier or "",
        "ponder.caller": row.key_id or "anonymous",
        "ponder.cost_usd": row.cost_micro / 1_000_000,
        "ponder.truncated": row.truncated,
        "ponder.status": row.status,
        "http.response.status_code": row.http_status,
    }
    if row.ttft_ms is not None:
        attrs["ponder.ttft_ms"] = row.ttft_ms
    if row.error_code:
        attrs["error.type"] = row.error_code
    return attrs


class OtelTracer:
    """Records one span per finished request on the global tracer provider."""

    def __init__(self, tracer: Any = None) -> None:
        if tracer is None:
            from opentelemetry import trace

            tracer = trace.get_tracer("ponder")
        self.tracer = tracer

    def record(self, row: LedgerRow, usage: Usage) -> None:
        import time

        end_ns = time.time_ns()
        start_ns = end_ns - int(row.latency_ms * 1_000_000)
        span = self.tracer.start_span(
            f"chat {row.model or 'ponder'}",
            start_time=start_ns,
            attributes=span_attributes(row, usage),
        )
        if row.status != "ok":
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, row.error_code or row.status))
        span.end(end_time=end_ns)
