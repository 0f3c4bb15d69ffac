"""Prometheus metrics of the gateway (``GET /metrics``).

Each :class:`GatewayMetrics` owns its registry, so two gateways in one process
(tests, embedded use) never share counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ponder.types import Usage

__all__ = ["CONTENT_TYPE", "GatewayMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LABELS = ("task_class", "tier", "strategy", "caller")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ponder_requests",
            "Requests that ran, by outcome status",
            (*_LABELS, "status"),
            registry=r,
        )
        self.refused = Counter(
            "ponder_refused_requests",
            "Requests refused before running (auth, validation, quota, store down)",
            ("caller", "code"),
            registry=r,
        )
        self.tokens = Counter(
            "ponder_tokens",
            "Tokens by exclusive bucket: input, cached_input, reasoning, output",
            (*_LABELS, "bucket"),
            registry=r,
        )
        self.cost = Counter("ponder_cost_usd", "Cost in USD", _LABELS, registry=r)
        self.latency = Histogram(
            "ponder_request_latency_seconds",
            "Request latency",
            _LABELS,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "ponder_time_to_first_token_seconds",
            "Time to the first token (whole answer for non-streamed requests)",
            _LABELS,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_attempts = Counter(
            "ponder_upstream_attempts",
            "Requests sent (or tried) to upstreams, by outcome: ok or the error code",
            ("tier", "outcome"),
            registry=r,
        )
        self.usage_clamped = Counter(
            "ponder_usage_clamped_tokens",
            "Tokens upstreams reported beyond what the calls could use (not charged)",
            ("tier",),
            registry=r,
        )
        self.guardrails = Counter(
            "ponder_guardrail_actions",
            "Guardrail actions: untrusted blocks wrapped (kind tool / document), leaks "
            "redacted or refused (kind system_prompt / secret)",
            ("kind", "action"),
            registry=r,
        )

    def observe(
        self,
        *,
        task_class: str,
        tier: str,
        strategy: str,
        caller: str,
        status: str,
        usage: Usage,
        cost_usd: float,
        latency_s: float,
        ttft_s: float | None,
        by_tier: Mapping[str, tuple[Usage, float]] | None = None,
    ) -> None:
        """One finished request; ``by_tier`` (tier -> (usage, cost_usd)) splits tokens and
        cost over the tiers a request used when there were several (a cascade)."""
        labels = (task_class, tier, strategy, caller)
        self.requests.labels(*labels, status).inc()
        for t, (u, c) in (by_tier or {tier: (usage, cost_usd)}).items():
            spent = (task_class, t, strategy, caller)
            for bucket in ("input", "cached_input", "reasoning", "output"):
                value = getattr(u, bucket)
                if value:
                    self.tokens.labels(*spent, bucket).inc(value)
            if c:
                self.cost.labels(*spent).inc(c)
        self.latency.labels(*labels).observe(latency_s)
        if ttft_s is not None:
            self.ttft.labels(*labels).observe(ttft_s)

    def guardrail(self, kind: str, action: str, count: int = 1) -> None:
        self.guardrails.labels(kind, action).inc(count)

    def refuse(self, caller: str, code: str) -> None:
        self.refused.labels(caller, code).inc()

    def watch_prefix_caches(
        self, source: Callable[[], Iterable[tuple[str, Mapping[str, float]]]]
    ) -> None:
        """Export the engines' prefix-cache counters, read from ``source`` at each scrape:
        ``(tier, prefix_cache_stats())`` pairs of the tiers whose engine has a cache."""
        self.registry.register(_PrefixCacheCollector(source))

    def watch_shadows(self, source: Callable[[], tuple[int, int] | None]) -> None:
        """Export shadow-run counters, read from ``source`` at each scrape: ``(started,
        skipped_busy)`` of the gateway's sampler, or None when shadows are off."""
        self.registry.register(_ShadowCollector(source))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PrefixCacheCollector:
    """Prefix-cache counters of the embedded engines, as Prometheus metrics."""

    _COUNTERS = (
        ("lookups", "Prompts looked up in the prefix cache"),
        ("hits", "Prompts that reused a cached prefix"),
        ("prompt_tokens", "Prompt tokens of looked-up prompts"),
        ("reused_tokens", "Prompt tokens served from the cache instead of evaluated"),
        ("evictions", "Cached sequences evicted"),
    )

    def __init__(self, source: Callable[[], Iterable[tuple[str, Mapping[str, float]]]]) -> None:
        self._source = source

    def collect(self) -> Iterable[Any]:
        stats = list(self._source())
        for key, doc in self._COUNTERS:
            family = CounterMetricFamily(f"ponder_prefix_cache_{key}", doc, labels=["tier"])
            for tier, s in stats:
                family.add_metric([tier], float(s.get(key, 0)))
            yield family
        rate = GaugeMetricFamily(
            "ponder_prefix_cache_hit_rate",
            "Share of looked-up prompt tokens served from the cache",
            labels=["tier"],
        )
        for tier, s in stats:
            rate.add_metric([tier], float(s.get("hit_rate", 0.0)))
        yield rate


class _ShadowCollector:
    """Sampled shadow runs that started, and those dropped because the engine was busy.

    A dropped sample is never queued behind traffic, so on a busy deployment the
    shadow rate that reaches the ledger is below the configured one; this says by how
    much.
    """

    def __init__(self, source: Callable[[], tuple[int, int] | None]) -> None:
        self._source = source

    def collect(self) -> Iterable[Any]:
        counts = self._source()
        if counts is None:
            return
        family = CounterMetricFamily(
            "ponder_shadow_runs",
            "Sampled shadow runs ([router.shadow]) by outcome: started, or skipped_busy "
            "(dropped: an interactive request or another shadow was running)",
            labels=["outcome"],
        )
        started, skipped = counts
        family.add_metric(["started"], float(started))
        family.add_metric(["skipped_busy"], float(skipped))
        yield family
