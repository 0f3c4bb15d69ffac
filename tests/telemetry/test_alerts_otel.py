"""Alerts (log + webhook) and OpenTelemetry spans of gateway requests."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from ponder.backends.fake import FakeBackend, FunctionBackend, Reply
from ponder.config import ServerSettings
from ponder.server.gateway import Gateway
from ponder.server.protocol import ChatCompletion, ErrorResult
from ponder.telemetry.alerts import Alert, Alerts, webhook_sender
from ponder.telemetry.otel import OtelTracer
from ponder.types import GenRequest

BODY = {"messages": [{"role": "user", "content": "What is 2+2?"}], "reasoning_effort": "low"}


async def test_webhook_receives_alerts_and_a_failing_one_is_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    received: list[dict[str, object]] = []

    def hook(request: httpx.Request) -> httpx.Response:
        received.append(json.loads(request.content))
        return httpx.Response(200 if len(received) == 1 else 500)

    alerts = Alerts(
        sender=webhook_sender("http://hooks.test/x", transport=httpx.MockTransport(hook))
    )
    alerts.emit(Alert("quota_threshold", "team 'ml' reached 80%", {"threshold": 0.8}))
    alerts.emit(Alert("quota_threshold", "team 'ml' reached 100%", {"threshold": 1.0}))
    with caplog.at_level(logging.WARNING, logger="ponder.alerts"):
        await alerts.drain()
    assert [r["threshold"] for r in received] == [0.8, 1.0]
    assert received[0]["kind"] == "quota_threshold"
    assert "alert webhook failed (HTTPStatusError" in caplog.text


async def test_upstream_error_burst_alerts_once_per_burst() -> None:
    def broken(req: GenRequest, i: int) -> Reply:
        from ponder.errors import BackendError

        raise BackendError("upstream said 503; retry later")

    alerts = Alerts(error_burst=3, error_window_s=60)
    gateway = Gateway(FunctionBackend(broken), ServerSettings(), alerts=alerts)
    results = [await gateway.chat(BODY) for _ in range(4)]
    assert all(isinstance(r, ErrorResult) and r.status == 502 for r in results)
    (alert,) = alerts.sent
    assert alert.kind == "upstream_errors" and alert.data["errors"] == 3
    # Errors outside the window do not add up to a burst.
    alerts.upstream_error("t", "x", now=0.0)
    alerts.upstream_error("t", "x", now=100.0)
    alerts.upstream_error("t", "x", now=200.0)
    assert len(alerts.sent) == 1


async def test_otel_span_has_genai_usage_attributes() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    backend = FakeBackend([Reply("The answer is 4", reasoning="two plus two makes four")])
    gateway = Gateway(backend, ServerSettings(), otel=OtelTracer(provider.get_tracer("test")))
    result = await gateway.chat(BODY)
    assert isinstance(result, ChatCompletion)
    (span,) = exporter.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.usage.input_tokens"] == 3
    assert attrs["gen_ai.usage.output_tokens"] == 9  # reasoning + visible, as OpenAI counts
    assert attrs["gen_ai.usage.reasoning.output_tokens"] == 5
    assert attrs["gen_ai.response.id"] == result.id
    assert attrs["ponder.strategy"] == "cot"


def test_engine_prefix_cache_counters_are_exported_per_tier() -> None:
    from ponder.backends.fake import FakeBackend
    from ponder.config import ServerSettings
    from ponder.server.gateway import Gateway

    class CachingEngine(FakeBackend):
        def prefix_cache_stats(self) -> dict[str, float]:
            return {
                "lookups": 4,
                "hits": 3,
                "prompt_tokens": 40,
                "reused_tokens": 25,
                "evictions": 1,
                "hit_rate": 0.625,
            }

    gateway = Gateway(CachingEngine(["ok"], name="small"), ServerSettings())
    lines = gateway.metrics_text().decode().splitlines()
    assert 'ponder_prefix_cache_reused_tokens_total{tier="small"} 25.0' in lines
    assert 'ponder_prefix_cache_hit_rate{tier="small"} 0.625' in lines
    # A backend without a cache exports no series.
    plain = Gateway(FakeBackend(["ok"], name="plain"), ServerSettings())
    assert not [
        x
        for x in plain.metrics_text().decode().splitlines()
        if 'tier="plain"' in x and "prefix_cache" in x
    ]
