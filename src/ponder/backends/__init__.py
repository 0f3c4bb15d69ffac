"""Model backends and their registry.

Built-in backends register through the ``ponder.backends`` entry-point group,
exactly like third-party ones: ``get_backend("llama_cpp", model=...)``.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from ponder.backends.base import Backend
from ponder.backends.fake import FakeBackend, FunctionBackend, Reply
from ponder.errors import InvalidRequest

__all__ = [
    "Backend",
    "FakeBackend",
    "FunctionBackend",
    "Reply",
    "available_backends",
    "get_backend",
]

_BUILTIN = {
    "fake": "ponder.backends.fake:FakeBackend",
    "function": "ponder.backends.fake:FunctionBackend",
    "llama_cpp": "ponder.backends.llama_cpp:LlamaCppBackend",
    "openai_compat": "ponder.backends.openai_compat:OpenAICompatBackend",
    "anthropic": "ponder.backends.anthropic:AnthropicBackend",
    "vllm": "ponder.backends.vllm:VLLMBackend",
}


def available_backends() -> dict[str, str]:
    found = dict(_BUILTIN)
    for ep in entry_points(group="ponder.backends"):
        found[ep.name] = ep.value
    return found


def get_backend(name: str, **kwargs: Any) -> Backend:
    """Instantiate a registered backend by name."""
    for ep in entry_points(group="ponder.backends"):
        if ep.name == name:
            return ep.load()(**kwargs)  # type: ignore[no-any-return]
    target = _BUILTIN.get(name)
    if target is None:
        raise InvalidRequest(
            f"unknown backend {name!r}; available: {', '.join(sorted(available_backends()))}"
        )
    module, _, attr = target.partition(":")
    import importlib

    return getattr(importlib.import_module(module), attr)(**kwargs)  # type: ignore[no-any-return]
