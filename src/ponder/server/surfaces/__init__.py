"""Other APIs' wire formats, translated to and from the chat completion gateway's.

Each surface is pure translation: its request -> :class:`ChatCompletionRequest`,
:class:`ChatCompletion` -> its response, the chat chunk stream -> its stream
events, and :class:`PonderError` -> its error body. The request itself then
takes the gateway's one governed path (plan, reserve, run, settle, respond), so
quotas, the ledger, guardrails, routing and metrics hold for every surface.
Bodies are validated with :func:`ponder.server.parsing.parse_model`, so a bad
field gets the same 400 wording on every surface.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["chat_chunks"]


async def chat_chunks(events: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """The chunk dicts inside the gateway's chat SSE strings (``StreamResult.events``).

    ``[DONE]`` ends the stream; an error payload comes through as ``{"error": ...}``
    for the surface to turn into its own error event.
    """
    async for event in events:
        for line in event.splitlines():
            if not line.startswith("data:"):
                continue
            payload = line[len("data:") :].strip()
            if payload == "[DONE]":
                return
            yield json.loads(payload)
