"""Deployment entry points: scale the gateway out (``ponder deploy ray``).

Each submodule imports its platform (Ray) lazily, so ``import ponder.deploy``
costs nothing and needs no extra.
"""

from __future__ import annotations

__all__: list[str] = []
