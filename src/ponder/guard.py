"""Resilience as backend wrappers: timeouts, retries, a circuit breaker, fallback.

``GuardedBackend(inner, timeouts=..., retry=..., breaker=...)`` bounds every
call by a total time (and the wait for a stream's first delta), retries
retryable upstream failures with exponential backoff and jitter (honouring
``Retry-After``), and consults a circuit breaker shared by every caller of one
upstream. ``FallbackBackend([a, b, ...])`` moves to the next backend when one
is out (retryable failure after its retries, open circuit, timeout); a request
the upstream rejected (4xx) is never retried or failed over.

A call never runs past ``GenRequest.deadline``: when the run's own deadline
cuts a call short, :class:`BudgetExhausted` is raised (strategies catch it and
return what they have), or a stream ends with ``finish_reason="deadline"``.

:class:`Tiers` turns the ``[tiers.*]`` of ``ponder.toml`` into guarded backends:
each tier's bare backend (``ponder.backends.tiers.build_backend``) wrapped in a
:class:`GuardedBackend` (one circuit breaker per upstream, shared by every tier
that points at it) and, following ``fallback`` links, in a :class:`FallbackBackend`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from ponder.backends.base import Backend
from ponder.backends.tiers import Builder, build_backend
from ponder.config import TierSettings
from ponder.errors import (
    BudgetExhausted,
    CircuitOpen,
    InvalidRequest,
    ModelNotAvailable,
    UpstreamAnswerLost,
    UpstreamError,
    UpstreamReadTimeout,
    UpstreamTimeout,
)
from ponder.types import Capabilities, Delta, Generation, GenRequest

__all__ = [
    "CircuitBreaker",
    "FallbackBackend",
    "GuardedBackend",
    "RetryPolicy",
    "Tiers",
    "Timeouts",
    "is_outage",
]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the upstream is out (worth another upstream), not that the request is bad.

    An answer lost after the upstream read the request is an outage too, though it is
    never resent to the same upstream (see :class:`~ponder.errors.UpstreamAnswerLost`)."""
    return isinstance(exc, UpstreamError) and (
        exc.retryable or isinstance(exc, CircuitOpen | UpstreamAnswerLost)
    )


@dataclass(frozen=True)
class Timeouts:
    """Time limits of one guarded call, in seconds (``None``: no limit).

    ``total_s`` bounds the whole call, retries and backoff included;
    ``attempt_s`` one attempt; ``first_token_s`` the wait for a stream's first
    delta. The connect timeout belongs to the HTTP backend (``connect_timeout_s``).
    """

    total_s: float | None = 300.0
    attempt_s: float | None = None
    first_token_s: float | None = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of retryable failures: ``attempts`` in all, exponential backoff with full jitter."""

    attempts: int = 3
    base_delay_s: float = 0.25
    max_delay_s: float = 8.0
    multiplier: float = 2.0
    jitter: bool = True

    def delay(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        cap = min(self.max_delay_s, self.base_delay_s * self.multiplier ** (attempt - 1))
        wait = rng.uniform(0, cap) if self.jitter else cap
        if retry_after_s is not None:
            wait = max(wait, min(retry_after_s, self.max_delay_s))
        return wait


class CircuitBreaker:
    """Closed -> open after ``failure_threshold`` consecutive failures; half-open after
    ``reset_after_s``, when one probe call decides between closed and open again."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_after_s: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = max(failure_threshold, 1)
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> Literal["closed", "open", "half_open"]:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_after_s:
            return "half_open"
        return "open"

    def before_call(self) -> None:
        """Raise :class:`CircuitOpen` unless a call may go to the upstream now."""
        state = self.state
        if state == "closed":
            return
        if state == "half_open" and not self._probing:
            self._probing = True  # this call is the probe
            return
        assert self._opened_at is not None
        left = max(self.reset_after_s - (self._clock() - self._opened_at), 0.0)
        raise CircuitOpen(
            f"upstream {self.name} is failing; calls are suspended for {left:.0f} more "
            "seconds (circuit open). Retry later or configure a fallback tier",
            upstream=self.name,
            reason="circuit open",
            retry_after_s=left,
        )

    def record_success(self) -> None:
        self._failures, self._opened_at, self._probing = 0, None, False

    def record_failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
        self._probing = False


class GuardedBackend:
    """Wraps a backend with timeouts, retries and a circuit breaker."""

    def __init__(
        self,
        inner: Backend,
        *,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self.breaker = breaker
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.attempts = 0  # attempts made, for telemetry and tests

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    @capabilities.setter
    def capabilities(self, value: Capabilities) -> None:
        self.inner.capabilities = value

    def _end(self, req: GenRequest) -> tuple[float | None, bool]:
        """When this call must be over, and whether that is the run's deadline."""
        now = self._clock()
        total = now + self.timeouts.total_s if self.timeouts.total_s is not None else None
        if req.deadline is not None and (total is None or req.deadline <= total):
            return req.deadline, True
        return total, False

    def _left(self, end: float | None, by_deadline: bool) -> float | None:
        if end is None:
            return None
        left = end - self._clock()
        if left <= 0:
            raise self._expired(by_deadline)
        return left

    def _expired(self, by_deadline: bool) -> Exception:
        if by_deadline:
            return BudgetExhausted(
                f"the run's deadline passed while waiting for {self.name}; "
                "allow more time (deadline_s)",
                reason="deadline",
            )
        return UpstreamTimeout(
            f"upstream {self.name} did not finish within {self.timeouts.total_s} s "
            "(total timeout); it may be overloaded or hung",
            upstream=self.name,
            reason="total timeout",
            retryable=True,
        )

    def _limit(self, left: float | None, extra: float | None) -> tuple[float | None, bool]:
        """The tighter of the time left and ``extra``, and whether ``extra`` is the tighter."""
        if extra is not None and (left is None or extra < left):
            return extra, True
        return left, False

    def _timed_out(self, what: str, limit: float | None) -> UpstreamTimeout:
        # The request was sent: the upstream may be running it, so it is not sent again.
        return UpstreamReadTimeout(
            f"upstream {self.name}: no answer within {limit} s ({what} timeout)",
            upstream=self.name,
            reason=f"{what} timeout",
        )

    async def _backoff(self, err: UpstreamError, attempt: int, end: float | None) -> None:
        """Wait before the next attempt, or raise ``err`` when no attempt is left."""
        if not err.retryable or attempt >= self.retry.attempts:
            raise err
        wait = self.retry.delay(attempt, err.retry_after_s, self._rng)
        if end is not None and self._clock() + wait >= end:
            raise err  # no time left for another attempt
        await self._sleep(wait)

    def _failed(self, err: UpstreamError) -> None:
        if self.breaker is not None and is_outage(err) and not isinstance(err, CircuitOpen):
            self.breaker.record_failure()

    def _ok(self) -> None:
        if self.breaker is not None:
            self.breaker.record_success()

    async def generate(self, req: GenRequest) -> list[Generation]:
        end, by_deadline = self._end(req)
        attempt = 0
        while True:
            attempt += 1
            left = self._left(end, by_deadline)
            if self.breaker is not None:
                self.breaker.before_call()
            self.attempts += 1
            limit, per_attempt = self._limit(left, self.timeouts.attempt_s)
            try:
                async with asyncio.timeout(limit):
                    gens = await self.inner.generate(req)
            except TimeoutError:
                if not per_attempt:
                    expired = self._expired(by_deadline)
                    if isinstance(expired, UpstreamTimeout):
                        self._failed(expired)
                    raise expired from None
                err: UpstreamError = self._timed_out("attempt", limit)
            except UpstreamError as exc:
                err = exc
            else:
                self._ok()
                return gens
            self._failed(err)
            await self._backoff(err, attempt, end)

    async def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        end, by_deadline = self._end(req)
        attempt = 0
        while True:
            attempt += 1
            self._left(end, by_deadline)
            if self.breaker is not None:
                self.breaker.before_call()
            self.attempts += 1
            started = False
            err: UpstreamError | None = None
            it = aiter(self.inner.stream(req))
            try:
                while True:
                    left = None if end is None else end - self._clock()
                    first = None if started else self.timeouts.first_token_s
                    limit, first_bound = self._limit(left, first)
                    try:
                        async with asyncio.timeout(max(limit, 0) if limit is not None else None):
                            delta = await anext(it)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        if first_bound:
                            err = self._timed_out("first-token", limit)
                            break
                        if started and by_deadline:
                            # Anytime: what was streamed stands; the deadline ended it.
                            yield Delta(finish_reason="deadline")
                            return
                        expired = self._expired(by_deadline)
                        if not isinstance(expired, UpstreamError):
                            raise expired from None
                        err = expired
                        break
                    started = True
                    yield delta
            except UpstreamError as exc:
                err = exc
            finally:
                await it.aclose()  # type: ignore[attr-defined]
            if err is None:
                self._ok()
                return
            self._failed(err)
            if started:
                raise err  # the consumer has part of an answer: no silent restart
            await self._backoff(err, attempt, end)


class FallbackBackend:
    """Tries backends in order; moves on only when one is out (see :func:`is_outage`)."""

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        name: str | None = None,
        should_fall_back: Callable[[BaseException], bool] = is_outage,
    ) -> None:
        if not backends:
            raise ValueError("FallbackBackend needs at least one backend")
        self.backends = list(backends)
        self.name = name or " > ".join(b.name for b in self.backends)
        self.should_fall_back = should_fall_back
        self.last_used: str | None = None  # which backend served the last call

    @property
    def capabilities(self) -> Capabilities:
        return self.backends[0].capabilities

    @capabilities.setter
    def capabilities(self, value: Capabilities) -> None:
        self.backends[0].capabilities = value

    def _give_up(self, errors: list[tuple[str, UpstreamError]]) -> UpstreamError:
        last = errors[-1][1]
        if len(errors) == 1:
            return last
        detail = "; ".join(f"{name}: {e.reason or e.message}" for name, e in errors)
        combined = type(last)(
            f"every upstream failed ({detail}); retry later",
            upstream=last.upstream,
            upstream_status=last.upstream_status,
            reason=last.reason,
            retryable=last.retryable,
            retry_after_s=last.retry_after_s,
        )
        return combined

    async def generate(self, req: GenRequest) -> list[Generation]:
        errors: list[tuple[str, UpstreamError]] = []
        for backend in self.backends:
            try:
                gens = await backend.generate(req)
            except UpstreamError as exc:
                if not self.should_fall_back(exc):
                    raise
                errors.append((backend.name, exc))
                continue
            self.last_used = backend.name
            return gens
        raise self._give_up(errors)

    async def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        errors: list[tuple[str, UpstreamError]] = []
        for backend in self.backends:
            started = False
            try:
                async for delta in backend.stream(req):
                    if not started:
                        started, self.last_used = True, backend.name
                    yield delta
            except UpstreamError as exc:
                if started or not self.should_fall_back(exc):
                    raise
                errors.append((backend.name, exc))
                continue
            return
        raise self._give_up(errors)


class Tiers:
    """The configured tiers, built lazily; one instance per process (it owns the breakers)."""

    def __init__(
        self,
        tiers: Mapping[str, TierSettings],
        *,
        builder: Builder = build_backend,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = dict(tiers)
        self._builder = builder
        self._clock = clock
        self._raw: dict[str, Backend] = {}
        self._guarded: dict[str, GuardedBackend] = {}
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}
        for name, tier in self.settings.items():
            if tier.fallback is not None and tier.fallback not in self.settings:
                raise InvalidRequest(
                    f"tier {name!r} falls back to unknown tier {tier.fallback!r}; "
                    f"tiers: {', '.join(self.settings)}",
                    param="tiers",
                )

    @property
    def names(self) -> list[str]:
        return list(self.settings)

    def _get(self, name: str) -> TierSettings:
        tier = self.settings.get(name)
        if tier is None:
            raise ModelNotAvailable(
                f"no tier named {name!r}; configured tiers: {', '.join(self.settings) or 'none'}",
                param="model",
            )
        return tier

    def resolve(self, model: str | None) -> str:
        """The tier for a request's ``model``: a tier name, else a tier's model; None: the first."""
        if model is None:
            if not self.settings:
                raise ModelNotAvailable("no tiers are configured ([tiers.<name>] in ponder.toml)")
            return next(iter(self.settings))
        if model in self.settings:
            return model
        for name, tier in self.settings.items():
            if tier.model == model:
                return name
        raise ModelNotAvailable(
            f"model {model!r} is not served here; use a tier name "
            f"({', '.join(self.settings)}) or one of their models",
            param="model",
        )

    def raw(self, name: str) -> Backend:
        if name not in self._raw:
            self._raw[name] = self._builder(name, self._get(name))
        return self._raw[name]

    def breaker(self, name: str) -> CircuitBreaker:
        """The breaker of the upstream behind tier ``name`` (shared by tiers on one upstream)."""
        tier = self._get(name)
        key = (tier.backend, tier.base_url or tier.model)
        if key not in self._breakers:
            self._breakers[key] = CircuitBreaker(
                tier.base_url or f"{tier.backend}:{tier.model}",
                failure_threshold=tier.breaker_failures,
                reset_after_s=tier.breaker_reset_s,
                clock=self._clock,
            )
        return self._breakers[key]

    def guarded(self, name: str) -> GuardedBackend:
        if name not in self._guarded:
            tier = self._get(name)
            self._guarded[name] = GuardedBackend(
                self.raw(name),
                timeouts=Timeouts(
                    total_s=tier.total_timeout_s,
                    attempt_s=tier.attempt_timeout_s,
                    first_token_s=tier.first_token_s,
                ),
                retry=RetryPolicy(attempts=tier.retries + 1, base_delay_s=tier.retry_base_delay_s),
                breaker=self.breaker(name),
                clock=self._clock,
                sleep=asyncio.sleep,
            )
        return self._guarded[name]

    def chain(self, name: str) -> list[str]:
        """``name`` and the tiers it falls back to, in order (cycles cut)."""
        out: list[str] = []
        current: str | None = name
        while current is not None and current not in out:
            self._get(current)
            out.append(current)
            current = self.settings[current].fallback
        return out

    def backend(self, name: str, *, fallback: bool = True) -> Backend:
        """Tier ``name`` guarded, falling back along its ``fallback`` links while it is out."""
        names = self.chain(name) if fallback else [name]
        if len(names) == 1:
            return self.guarded(name)
        return FallbackBackend([self.guarded(n) for n in names], name=name)

    async def aclose(self) -> None:
        """Close the HTTP pools (and engines) of the tiers built so far."""
        for backend in self._raw.values():
            closer = getattr(backend, "aclose", None)
            if closer is not None:
                await closer()
            elif callable(getattr(backend, "close", None)):
                backend.close()  # type: ignore[attr-defined]
        self._raw.clear()
        self._guarded.clear()
