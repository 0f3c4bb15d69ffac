"""The OpenAI-compatible gateway: ``create_app(backend)`` and its framework-free handlers.

FastAPI is an optional dependency (``pip install 'ponder[server]'``), so it is
imported only when :func:`create_app` is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ponder.server.gateway import Gateway
from ponder.server.planning import Plan, plan
from ponder.server.protocol import ErrorResult, StreamResult

if TYPE_CHECKING:
    from ponder.server.app import create_app

__all__ = ["ErrorResult", "Gateway", "Plan", "StreamResult", "create_app", "plan"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from ponder.server.app import create_app

        return create_app
    raise AttributeError(f"module 'ponder.server' has no attribute {name!r}")
