"""Parts of the embedded llama.cpp engine (:mod:`ponder.backends.llama_cpp`)."""

__all__: list[str] = []
