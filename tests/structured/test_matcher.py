"""Token masks from llguidance over a small byte-level vocabulary (no model needed).

The vocabulary has every single byte plus a few merged tokens, like a real BPE
vocabulary, so masks must reason about multi-byte tokens, and a control token
(end of generation) that text never produces.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ponder.errors import InvalidRequest
from ponder.structured import GrammarCompiler, TokenConstraint
from ponder.types import OutputConstraint

pytest.importorskip("llguidance")

MERGES = [b'{"', b'":', b'", "', b"true", b"false", b"name", b"<tool_call>", b"  "]
TOKENS = [bytes([i]) for i in range(256)] + MERGES + [b"<|end|>"]
EOS = len(TOKENS) - 1


def greedy_tokenize(data: bytes) -> list[int]:
    """Longest-match tokenization over TOKENS (never produces the control token)."""
    out, i = [], 0
    while i < len(data):
        best = max(
            (t for t in range(EOS) if data.startswith(TOKENS[t], i)), key=lambda t: len(TOKENS[t])
        )
        out.append(best)
        i += len(TOKENS[best])
    return out


@pytest.fixture(scope="module")
def compiler() -> GrammarCompiler:
    return GrammarCompiler(TOKENS, eos=[EOS], tokenize=greedy_tokenize, special=[EOS])


def sample_greedy(constraint: TokenConstraint, preference: np.ndarray, limit: int = 200) -> bytes:
    """Decode with fixed 'logits' under the mask, as the engine does."""
    out = b""
    for _ in range(limit):
        token = int(np.argmax(constraint.apply(preference)))
        if token == EOS:
            assert constraint.accepting
            return out
        constraint.advance(token)
        out += TOKENS[token]
    raise AssertionError(f"no end of generation after {limit} tokens: {out!r}")


def test_schema_masks_force_a_valid_instance_even_against_the_model(compiler):
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    constraint = compiler.matcher(OutputConstraint(kind="json_schema", json_schema=schema))
    # A "model" that would rather write spaces, letters and the end token.
    preference = np.zeros(len(TOKENS), dtype=np.float32)
    preference[ord(" ")] = 5
    preference[ord("x")] = 4
    preference[EOS] = 3
    preference[ord("7")] = 2
    preference[ord("}")] = 2.5
    text = sample_greedy(constraint, preference)
    value = json.loads(text)
    assert set(value) == {"ok", "n"}
    assert isinstance(value["ok"], bool) and isinstance(value["n"], int)


def test_mask_allows_merged_tokens_and_hides_control_tokens(compiler):
    constraint = compiler.matcher(OutputConstraint(kind="json_object"))
    mask = constraint.allowed_mask()
    assert mask.shape == (len(TOKENS),) and mask.dtype == np.bool_
    assert mask[ord("{")]
    assert mask[TOKENS.index(b'{"')]  # a multi-byte token that starts an object
    assert not mask[ord("a")]
    assert not mask[EOS]  # an empty answer is not an object


def test_end_of_generation_only_once_the_text_is_complete(compiler):
    constraint = compiler.matcher(OutputConstraint(kind="regex", pattern=r"(yes|no)!"))
    for token in greedy_tokenize(b"yes"):
        constraint.advance(token)
    assert not constraint.accepting
    assert not constraint.allowed_mask()[EOS]
    constraint.advance(ord("!"))
    assert constraint.accepting
    mask = constraint.allowed_mask()
    assert mask[EOS] and mask.sum() == 1


def test_a_disallowed_token_is_refused(compiler):
    constraint = compiler.matcher(OutputConstraint(kind="json_object"))
    with pytest.raises(ValueError, match="violates the constraint"):
        constraint.advance(ord("a"))


def test_lark_grammar_with_embedded_schema_for_a_tool_call(compiler):
    args = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    call = {
        "type": "object",
        "properties": {"name": {"const": "weather"}, "arguments": args},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }
    grammar = f'start: "<tool_call>\\n" call "\\n</tool_call>"\ncall: %json {json.dumps(call)}'
    constraint = compiler.matcher(OutputConstraint(kind="lark", grammar=grammar))
    # The merged <tool_call> token is text the grammar may use.
    assert constraint.allowed_mask()[TOKENS.index(b"<tool_call>")]
    text = '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    for token in greedy_tokenize(text.encode()):
        assert constraint.allowed_mask()[token], TOKENS[token]
        constraint.advance(token)
    assert constraint.accepting


def test_each_sequence_has_its_own_state(compiler):
    spec = OutputConstraint(kind="regex", pattern=r"ab|cd")
    first, second = compiler.matcher(spec), compiler.matcher(spec)
    first.advance(ord("a"))
    assert second.allowed_mask()[ord("c")]
    assert not first.allowed_mask()[ord("c")]


def test_an_unenforceable_grammar_is_a_client_error(compiler):
    with pytest.raises(InvalidRequest, match="cannot be enforced"):
        compiler.matcher(OutputConstraint(kind="lark", grammar="start: undefined_rule"))


def test_compiled_grammars_are_cached(compiler):
    spec = OutputConstraint(kind="json_schema", json_schema={"type": "array"})
    assert compiler.grammar(spec) is compiler.grammar(spec)
