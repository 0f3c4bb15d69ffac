"""In-process tiers on Ray Serve: a :class:`TierServer` deployment per tier, and the
:class:`ServeTierBackend` the gateway calls it through."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ponder.config import EngineSettings, TierSettings
from ponder.errors import PonderError, UpstreamError
from ponder.types import Capabilities, Delta, Generation, GenRequest
from ponder.wiring import engine_tier_backend

__all__ = ["ServeTierBackend", "TierServer", "local_request", "portable_request"]


def portable_request(req: GenRequest, now: float | None = None) -> tuple[GenRequest, float | None]:
    """``req`` without its deadline, and the seconds left until it.

    A deadline is a ``time.monotonic()`` instant, meaningless in another process on
    another host; the seconds left travel instead and :func:`local_request` rebuilds it.
    """
    if req.deadline is None:
        return req, None
    now = time.monotonic() if now is None else now
    return req.model_copy(update={"deadline": None}), max(req.deadline - now, 0.0)


def local_request(
    req: GenRequest, remaining_s: float | None, now: float | None = None
) -> GenRequest:
    """The request with its deadline on this process's clock."""
    if remaining_s is None:
        return req
    now = time.monotonic() if now is None else now
    return req.model_copy(update={"deadline": now + remaining_s})


class TierServer:
    """One tier's in-process engine as a Serve deployment (each replica loads the model).

    The gateway calls ``generate`` / ``stream`` with a request whose deadline travels as
    seconds left (see :func:`portable_request`); ponder errors reach the gateway as
    themselves.
    """

    def __init__(
        self,
        name: str,
        tier: TierSettings,
        engine: EngineSettings,
        cache_dir: Path,
        threads: int | None = None,
    ) -> None:
        self.tier = name
        # Catalog models are pulled first; the [engine] settings apply under the tier's own.
        self.backend = engine_tier_backend(name, tier, engine, Path(cache_dir), threads=threads)

    def info(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "name": self.backend.name,
            "capabilities": self.backend.capabilities.model_dump(),
        }

    async def generate(self, req: GenRequest, remaining_s: float | None = None) -> list[Generation]:
        return await self.backend.generate(local_request(req, remaining_s))

    async def stream(
        self, req: GenRequest, remaining_s: float | None = None
    ) -> AsyncIterator[Delta]:
        async for delta in self.backend.stream(local_request(req, remaining_s)):
            yield delta

    def __del__(self) -> None:
        # The engine owns a model and a decode thread: free them with the replica.
        close = getattr(getattr(self, "backend", None), "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()


def _remote_error(tier: str, exc: BaseException) -> PonderError:
    """A failed handle call as a ponder error: the engine's own error when it raised one."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, PonderError):
        return cause
    if isinstance(exc, PonderError):
        return exc
    # Ray puts the replica's traceback first and the error itself last.
    last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]
    try:
        from ray.exceptions import RayTaskError

        # The engine itself raised: the same call would fail again.
        retryable = not isinstance(exc, RayTaskError)
    except ImportError:  # pragma: no cover - only reachable through Ray
        retryable = True
    return UpstreamError(
        f"tier {tier!r} (Ray Serve deployment) failed: {type(exc).__name__}: {last}",
        upstream=tier,
        reason=last,
        retryable=retryable,
    )


class ServeTierBackend:
    """A ponder :class:`~ponder.backends.base.Backend` over a :class:`TierServer` handle.

    ``capabilities`` come from the tier replica at :meth:`connect` (the gateway replica's
    startup). No ``count_tokens``: a remote call cannot run inside the synchronous quota
    estimate, which then bounds the prompt by its UTF-8 bytes.
    """

    def __init__(self, handle: Any, *, tier: str, name: str) -> None:
        self.handle = handle
        self.tier = tier
        self.name = name
        self.capabilities = Capabilities()

    async def connect(self) -> None:
        try:
            info = await self.handle.info.remote()
        except Exception as exc:
            raise _remote_error(self.tier, exc) from exc
        self.capabilities = Capabilities.model_validate(info["capabilities"])

    async def generate(self, req: GenRequest) -> list[Generation]:
        req, remaining = portable_request(req)
        response = self.handle.generate.remote(req, remaining)
        try:
            generations: list[Generation] = await response
        except asyncio.CancelledError:
            # The gateway gave up (deadline, client gone): free the engine's slots too.
            response.cancel()
            raise
        except Exception as exc:
            raise _remote_error(self.tier, exc) from exc
        return generations

    async def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        req, remaining = portable_request(req)
        deltas = self.handle.options(stream=True).stream.remote(req, remaining)
        finished = False
        try:
            async for delta in deltas:
                yield delta
            finished = True
        except Exception as exc:
            finished = True
            raise _remote_error(self.tier, exc) from exc
        finally:
            if not finished:
                deltas.cancel()
