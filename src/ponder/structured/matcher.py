"""Token masks from a grammar: one :class:`TokenConstraint` per generated sequence.

The engine samples in NumPy over the full logits vector, so the interface is a
mask per step: :meth:`TokenConstraint.apply` (or :meth:`allowed_mask`) before
sampling, :meth:`TokenConstraint.advance` with the chosen token after. The
grammar engine is llguidance (Earley parser over a lexer, masks computed in
Rust); compiling is done once per constraint and tokenizer and cached.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ponder.errors import InvalidRequest
from ponder.types import OutputConstraint

__all__ = ["GrammarCompiler", "TokenConstraint", "grammar_source"]

# The JSON the model writes: the separators models are trained on (Python json.dumps),
# and no free whitespace (a small model can loop on newlines forever).
_JSON_OPTIONS: Any = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


def grammar_source(constraint: OutputConstraint) -> str:
    """The llguidance grammar for a constraint (tokenizer-independent)."""
    import llguidance

    matcher = llguidance.LLMatcher
    if constraint.kind == "json_object":
        return matcher.grammar_from_json_schema({"type": "object"}, overrides=_JSON_OPTIONS)
    if constraint.kind == "json_schema":
        schema = constraint.json_schema or {}
        try:
            return matcher.grammar_from_json_schema(schema, overrides=_JSON_OPTIONS)
        except ValueError as e:
            raise InvalidRequest(f"the JSON schema cannot be enforced: {e}") from e
    if constraint.kind == "regex":
        if not constraint.pattern:
            raise InvalidRequest("a regex constraint needs a pattern")
        return matcher.grammar_from_regex(constraint.pattern)
    if not constraint.grammar:
        raise InvalidRequest("a lark constraint needs a grammar")
    return matcher.grammar_from_lark(constraint.grammar)


class _Vocabulary:
    """What llguidance needs to know about a tokenizer (its TokenizerWrapper protocol)."""

    def __init__(
        self,
        tokens: Sequence[bytes],
        eos: Sequence[int],
        special: Iterable[int],
        tokenize: Callable[[bytes], list[int]],
    ) -> None:
        special_ids = set(special) | set(eos)
        # llguidance reads a leading 0xff as "special token": never produced by text.
        self.tokens = [b"\xff" + t if i in special_ids else t for i, t in enumerate(tokens)]
        self.eos_token_id = eos[0]
        self.bos_token_id = None
        self.special_token_ids = sorted(special_ids)
        self._tokenize = tokenize

    def __call__(self, text: bytes | str) -> list[int]:
        return self._tokenize(text.encode("utf-8") if isinstance(text, str) else text)


class GrammarCompiler:
    """Compiles constraints for one tokenizer; hands out per-sequence matchers."""

    def __init__(
        self,
        tokens: Sequence[bytes],
        *,
        eos: Sequence[int],
        tokenize: Callable[[bytes], list[int]],
        special: Iterable[int] = (),
    ) -> None:
        """``tokens[i]`` is token i's bytes; ``eos`` the end-of-generation ids (the
        first is the canonical one); ``tokenize`` the model's own tokenizer (llguidance
        keeps forced text canonically tokenized); ``special`` the control tokens that
        text never produces."""
        import llguidance

        if not eos:
            raise ValueError("a grammar needs at least one end-of-generation token")
        self._llg = llguidance
        self.n_vocab = len(tokens)
        vocab = _Vocabulary(tokens, eos, special, tokenize)
        self._tokenizer = llguidance.LLTokenizer(
            llguidance.TokenizerWrapper(vocab), n_vocab=self.n_vocab, eos_token=list(eos)
        )
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_llama_vocab(cls, vocab: Any, tokenize: Callable[[bytes], list[int]]) -> GrammarCompiler:
        """From a llama.cpp ``llama_vocab*`` (the embedded engine); about 1 s for 150k tokens."""
        import ctypes

        import llama_cpp

        n = llama_cpp.llama_vocab_n_tokens(vocab)
        buf = ctypes.create_string_buffer(256)
        tokens: list[bytes] = []
        control: list[int] = []
        eos: list[int] = []
        for t in range(n):
            size = llama_cpp.llama_token_to_piece(vocab, t, buf, len(buf), 0, True)
            tokens.append(buf.raw[: max(size, 0)])
            # Only control tokens are special: user-defined ones such as Qwen's
            # <tool_call> are text the grammar may spell out.
            if llama_cpp.llama_vocab_get_attr(vocab, t) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL:
                control.append(t)
            if llama_cpp.llama_vocab_is_eog(vocab, t):
                eos.append(t)
        canonical = llama_cpp.llama_vocab_eos(vocab)
        if canonical in eos:
            eos.remove(canonical)
            eos.insert(0, canonical)
        return cls(tokens, eos=eos, tokenize=tokenize, special=control)

    def grammar(self, constraint: OutputConstraint) -> str:
        """The compiled, validated grammar (cached; a bad one is a 400)."""
        key = constraint.model_dump_json()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        source = grammar_source(constraint)
        is_error, messages = self._llg.LLMatcher.validate_grammar_with_warnings(
            source, self._tokenizer
        )
        if is_error:
            raise InvalidRequest(f"the output constraint cannot be enforced: {messages[0]}")
        with self._lock:
            if len(self._cache) >= 256:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = source
        return source

    def matcher(self, constraint: OutputConstraint) -> TokenConstraint:
        """A fresh matcher at the start of the constrained text."""
        m = self._llg.LLMatcher(self._tokenizer, self.grammar(constraint), log_level=0)
        if m.is_error():
            raise InvalidRequest(f"the output constraint cannot be enforced: {m.get_error()}")
        return TokenConstraint(m, self.n_vocab)


class TokenConstraint:
    """The grammar state of one sequence: which tokens may come next."""

    def __init__(self, matcher: Any, n_vocab: int) -> None:
        self._matcher = matcher
        self.n_vocab = n_vocab
        self._bits = np.zeros((n_vocab + 31) // 32, dtype=np.int32)

    def allowed_mask(self) -> np.ndarray:
        """Boolean array over the vocabulary: True where the token keeps the text valid."""
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        bits = np.unpackbits(self._bits.view(np.uint8), bitorder="little", count=self.n_vocab)
        return bits.view(np.bool_)

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """A copy of ``logits`` with every disallowed token at -inf."""
        return np.where(self.allowed_mask(), logits, np.float32(-np.inf))

    def advance(self, token: int) -> None:
        """Consume the sampled token (it must have been allowed)."""
        if not self._matcher.consume_token(token):
            raise ValueError(f"token {token} violates the constraint: {self._matcher.get_error()}")

    @property
    def accepting(self) -> bool:
        """The text so far is a complete match (end of generation is allowed)."""
        return bool(self._matcher.is_accepting())

    @property
    def finished(self) -> bool:
        """Nothing but end of generation can follow."""
        return bool(self._matcher.is_stopped())

    def forced_tokens(self) -> list[int]:
        """Tokens the grammar forces from here (may be empty); the engine can skip sampling."""
        return list(self._matcher.compute_ff_tokens())
