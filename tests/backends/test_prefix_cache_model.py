"""The cross-call prefix cache on the real 0.5B model: same greedy outputs, fewer prompt tokens."""

from __future__ import annotations

import asyncio

import pytest

from ponder.api import Ponder
from ponder.strategies import MCTS, BeamSearch
from ponder.types import GenRequest, Message, ThinkingConfig

pytestmark = pytest.mark.model

pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (pip install 'ponder[llama]')"
)

MODEL = "qwen2.5-coder-0.5b-instruct"


@pytest.fixture(scope="module")
def engines():
    from ponder.backends.llama_cpp import LlamaCppBackend

    on = LlamaCppBackend(MODEL, n_ctx=2048, max_sequences=4)
    off = LlamaCppBackend(MODEL, n_ctx=2048, max_sequences=4, prefix_cache=False)
    yield on, off
    on.close()
    off.close()


async def chat(engine, turns: list[str], max_tokens: int = 16):
    messages: list[Message] = []
    gens = []
    for text in turns:
        messages.append(Message(role="user", content=text))
        (g,) = await engine.generate(GenRequest(messages=messages, max_tokens=max_tokens))
        messages.append(Message(role="assistant", content=g.text))
        gens.append(g)
    return gens


async def test_multi_turn_chat_is_identical_and_reuses_earlier_turns(engines) -> None:
    on, off = engines
    turns = ["Name a fruit.", "What color is it?", "Name another one.", "Which is sweeter?"]
    cached, plain = await chat(on, turns), await chat(off, turns)

    assert [g.text for g in cached] == [g.text for g in plain]
    assert [g.usage.prompt_tokens for g in cached] == [g.usage.prompt_tokens for g in plain]
    assert all(g.usage.cached_input == 0 for g in plain)
    # From the second turn on, the earlier turns come from the cache: only the
    # new user turn (and the template around it) is evaluated.
    for g, p in zip(cached[1:], plain[1:], strict=True):
        assert g.usage.cached_input > 0
        assert g.usage.input < p.usage.input / 2
    stats = on.prefix_cache_stats()
    assert stats["hits"] >= 3 and 0 < stats["hit_rate"] < 1


async def test_beam_search_is_identical_with_the_cache(engines) -> None:
    on, off = engines
    strategy = BeamSearch(
        n=2, beam_width=2, max_steps=2, step_tokens=24, final_tokens=24, temperature=0.0
    )
    question = "What is 12 + 30? Explain in two short steps."
    cached = await Ponder(on).asolve(question, strategy, budget=160, seed=1)
    plain = await Ponder(off).asolve(question, strategy, budget=160, seed=1)

    assert cached.answer == plain.answer
    assert cached.usage.completion_tokens == plain.usage.completion_tokens
    assert cached.usage.prompt_tokens == plain.usage.prompt_tokens
    assert cached.usage.cached_input > cached.usage.input  # partial steps are continued
    assert plain.usage.cached_input == 0


@pytest.mark.xfail(
    reason="llama.cpp's CPU logits depend on the batch size a token is decoded in (about 0.3 "
    "in a logit, with or without a cache); on this run a greedy near tie flips a later step",
    strict=False,
)
async def test_mcts_is_identical_with_the_cache(engines) -> None:
    on, off = engines
    strategy = MCTS(iterations=3, expand=2, max_depth=2, step_tokens=20, rollout_tokens=24,
                    temperature=0.0)  # fmt: skip
    question = "What is 7 * 6?"
    cached = await Ponder(on).asolve(question, strategy, budget=200, seed=3)
    plain = await Ponder(off).asolve(question, strategy, budget=200, seed=3)

    assert cached.usage.cached_input > 0 and plain.usage.cached_input == 0
    assert cached.answer == plain.answer
    assert cached.usage.completion_tokens == plain.usage.completion_tokens


async def test_thinking_rollback_and_samples_after_a_cached_prefix(engines) -> None:
    on, _ = engines
    q = [Message(role="user", content="What is 2 + 2?")]
    cfg = ThinkingConfig(budget_tokens=120, min_tokens=60, max_extensions=2)
    req = GenRequest(messages=q, max_tokens=160, thinking=cfg, n=2)
    await on.generate(req)
    again = await on.generate(req)  # same prompt: all but its last token from the cache

    assert again[0].usage.cached_input == again[0].usage.prompt_tokens - 1
    assert again[1].usage.prompt_tokens == 0
    # Greedy samples on KV copied from the cache agree with each other, and the
    # rollback ("Wait") and the cap still hold on the copied sequences.
    assert again[0].reasoning == again[1].reasoning and again[0].text == again[1].text
    assert "Wait" in again[0].reasoning and "</think>" not in again[0].text
    assert 0 < again[0].usage.reasoning <= 120 and again[0].text.strip()


async def test_a_tiny_cell_budget_still_admits_every_request() -> None:
    from ponder.backends.llama_cpp import LlamaCppBackend

    engine = LlamaCppBackend(MODEL, n_ctx=256, max_sequences=2)
    try:
        prompts = [f"Say the word {w} twice." for w in ("red", "green", "blue", "gold")]
        for p in prompts:  # each leaves its sequence cached
            (g,) = await engine.generate(
                GenRequest(messages=[Message(role="user", content=p)], max_tokens=8)
            )
            assert g.text
        # Two at once need both running slots and most of the 256 cells: the idle
        # cached sequences must give way, not keep the requests waiting.
        both = await asyncio.wait_for(
            asyncio.gather(
                *(
                    engine.generate(
                        GenRequest(messages=[Message(role="user", content=p)], max_tokens=80)
                    )
                    for p in prompts[:2]
                )
            ),
            timeout=300,
        )
        assert all(r[0].text for r in both)
        assert engine.prefix_cache_stats()["evictions"] > 0
    finally:
        engine.close()


async def test_prompt_state_is_the_prefill_a_generation_then_reuses(engines) -> None:
    import numpy as np

    on, off = engines
    ask = GenRequest(
        messages=[Message(role="user", content="What is 17*23? Reply with only the number.")],
        max_tokens=8,
    )
    other = ask.model_copy(
        update={"messages": [Message(role="user", content="Name a large city in Japan.")]}
    )
    state, again = await on.prompt_state(ask), await on.prompt_state(ask)
    assert state.vector.shape == (on.n_embd,) and np.isfinite(state.vector).all()
    assert state.evaluated + state.reused == len(on.prompt_tokens(ask))

    # The same prompt gives the same state (the second time from the cache, bar the
    # last token); a different prompt gives a different one.
    def cosine(a, b) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    # (Not bitwise: llama.cpp's CPU results shift with the batch and with what else
    # the KV memory holds, so the same prompt's state moves by ~1e-1 in some dims.)
    assert again.evaluated == 1 and cosine(again.vector, state.vector) > 0.99
    assert cosine((await on.prompt_state(other)).vector, state.vector) < 0.95
    # The generation that follows evaluates only the last prompt token, and answers
    # as a cold engine does.
    (g,) = await on.generate(ask)
    (cold,) = await off.generate(ask)
    assert g.usage.input == 1 and g.usage.cached_input == cold.usage.input - 1
    assert g.text == cold.text
    # Without the cache the probe still works; it just keeps nothing.
    assert cosine((await off.prompt_state(ask)).vector, state.vector) > 0.99


async def test_prompt_state_of_middle_layers(engines) -> None:
    """Probed layers come from the same prefill, and leave its result and the answer alone."""
    import numpy as np

    from ponder.backends.llama_cpp import LlamaCppBackend

    on, off = engines
    with pytest.raises(ValueError, match="probe layers"):
        LlamaCppBackend(MODEL, n_ctx=256, max_sequences=1, probe_layers=(99,))
    tapped = LlamaCppBackend(MODEL, n_ctx=2048, max_sequences=2, probe_layers=(5, 11, 23))
    try:

        def cosine(a, b) -> float:
            return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

        def ask(text: str) -> GenRequest:
            return GenRequest(messages=[Message(role="user", content=text)], max_tokens=8)

        math = ask("What is 17*23? Reply with only the number.")
        state = await tapped.prompt_state(math)
        assert sorted(state.layers) == [5, 11, 23]
        assert all(
            v.shape == (tapped.n_embd,) and np.isfinite(v).all() for v in state.layers.values()
        )
        # Block outputs are not the final normalised state, and differ from layer to layer.
        assert cosine(state.layers[11], state.layers[23]) < 0.9
        assert cosine(state.layers[23], state.vector) < 0.99
        # The final state is what an engine without the tap computes.
        assert cosine(state.vector, (await off.prompt_state(math)).vector) > 0.99
        assert (await off.prompt_state(math)).layers == {}
        # Each layer's mean over the prompt is another reading than its last token's;
        # the last block is computed for the output row only, so its mean is that row.
        assert sorted(state.layer_means) == [5, 11, 23] and state.evaluated > 20
        assert cosine(state.layer_means[11], state.layers[11]) < 0.95
        assert cosine(state.layer_means[23], state.layers[23]) > 0.999
        # The same prompt again (from the cache, bar its last token) reads the same;
        # another prompt reads differently in the middle layer.
        again = await tapped.prompt_state(math)
        assert again.evaluated == 1 and cosine(again.layers[11], state.layers[11]) > 0.99
        # A mean covers the evaluated tokens only: here the one token not from the cache.
        assert cosine(again.layer_means[11], again.layers[11]) > 0.999
        city = await tapped.prompt_state(ask("Name a large city in Japan."))
        assert cosine(city.layers[11], state.layers[11]) < 0.95
        # Generation with the tap installed answers as a plain cold engine does.
        (g,) = await tapped.generate(math)
        (cold,) = await off.generate(math)
        assert g.text == cold.text
    finally:
        tapped.close()


async def test_decode_stats_split_prompt_evaluation_from_generation(engines) -> None:
    """The engine's own account of where its time goes (prefix_cache.py's bound uses it)."""
    on, off = engines
    ask = GenRequest(
        messages=[Message(role="user", content="List three colours, comma separated.")],
        max_tokens=12,
        temperature=0.0,
        ignore_eos=True,
    )
    for engine in (on, off):
        before = engine.decode_stats()
        (g,) = await engine.generate(ask)
        after = engine.decode_stats()
        # Every evaluated prompt token went through a prompt decode; the first answer
        # token comes from the prompt's logits, each later one from a generation step.
        assert after["prompt_rows"] - before["prompt_rows"] == g.usage.input > 0
        assert after["generate_rows"] - before["generate_rows"] == g.usage.output - 1 == 11
        assert after["prompt_s"] > before["prompt_s"]
        assert after["generate_s"] > before["generate_s"]
