"""Other APIs' wire formats, translated to and from the chat completion gateway's.

Each surface is pure translation: its request -> :class:`ChatCompletionRequest`,
:class:`ChatCompletion` -> its response, the chat chunk stream -> its stream
events, and :class:`PonderError` -> its error body. The request itself then
takes the gateway's one governed path (plan, reserve, run, settle, respond), so
quotas, the ledger, guardrails, routing and metrics hold for every surface.
Bodies are validated with :func:`ponder.server.parsing.parse_model`, so a bad
field gets the same 400 wording on every surface.
"""

__all__: list[str] = []
