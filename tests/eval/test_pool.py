from __future__ import annotations

from ponder.backends.fake import FunctionBackend
from ponder.eval.pool import PooledBackend
from ponder.types import GenRequest, Message


def sampler(req, index):
    return f"sample {index} seed {req.seed}"


def req(n, seed=1, temperature=0.7):
    return GenRequest(
        messages=[Message(role="user", content="q")], n=n, seed=seed, temperature=temperature
    )


async def test_smaller_n_is_served_from_a_larger_stored_call(tmp_path):
    inner = FunctionBackend(sampler)
    pool = PooledBackend(inner, tmp_path / "pool.jsonl", model="m")
    eight = await pool.generate(req(8))
    two = await pool.generate(req(2))
    assert [g.text for g in two] == [g.text for g in eight[:2]]
    assert len(inner.calls) == 1 and pool.hits == 1
    # The prompt is still counted once, on the first replayed generation.
    assert two[0].usage.input == eight[0].usage.input and two[1].usage.input == 0


async def test_different_settings_or_more_samples_call_the_engine(tmp_path):
    inner = FunctionBackend(sampler)
    pool = PooledBackend(inner, tmp_path / "pool.jsonl", model="m")
    await pool.generate(req(2))
    await pool.generate(req(2, seed=2))
    await pool.generate(req(2, temperature=0.3))
    await pool.generate(req(4))  # more than stored: generate again, keep the larger call
    assert len(inner.calls) == 4
    again = await pool.generate(req(3))
    assert len(inner.calls) == 4 and [g.text for g in again] == [
        f"sample {i} seed 1" for i in range(3)
    ]


async def test_pool_persists_across_instances(tmp_path):
    path = tmp_path / "pool.jsonl"
    first = FunctionBackend(sampler)
    await PooledBackend(first, path, model="m").generate(req(4))
    second = FunctionBackend(sampler)
    replay = PooledBackend(second, path, model="m")
    gens = await replay.generate(req(4))
    assert not second.calls and len(gens) == 4 and len(replay) == 1
    other_model = PooledBackend(FunctionBackend(sampler), path, model="other")
    await other_model.generate(req(4))
    assert other_model.misses == 1


async def test_logprobs_requests_share_samples_with_plain_ones(tmp_path):
    inner = FunctionBackend(sampler)
    pool = PooledBackend(inner, tmp_path / "pool.jsonl", model="m")
    with_lp = await pool.generate(req(4).model_copy(update={"logprobs": True}))
    plain = await pool.generate(req(4))
    assert len(inner.calls) == 1
    assert [g.text for g in plain] == [g.text for g in with_lp]
    assert all(g.logprobs is None for g in plain) and all(g.logprobs for g in with_lp)
    # Stored without logprobs, asked with: the engine runs again.
    other = PooledBackend(FunctionBackend(sampler), tmp_path / "other.jsonl", model="m")
    await other.generate(req(2))
    await other.generate(req(2).model_copy(update={"logprobs": True}))
    assert other.misses == 2


def test_request_keys_of_committed_pools_stay_stable():
    # The key of a plain request is pinned: a field added to GenRequest or Message must
    # leave it unchanged at its default, or the committed pools under benchmarks/data
    # silently stop replaying (routing.py replay found 0 of 886 items once).
    from ponder.eval.pool import request_key
    from ponder.types import ToolSpec

    plain = GenRequest(messages=[Message(role="user", content="q")], seed=1, max_tokens=8)
    assert request_key(plain, "m") == (
        "1998559d9c9bb1d9b2158fe2fe1a87c4e81f20081de3b4f0412806cf68e46e25"
    )
    with_tools = plain.model_copy(
        update={"tools": [ToolSpec(name="f", parameters={"type": "object"})]}
    )
    assert request_key(with_tools, "m") != request_key(plain, "m")
    for changed in (
        {"presence_penalty": 0.5},
        {"frequency_penalty": 1.0},
        {"logit_bias": {3: 1.0}},
    ):
        assert request_key(plain.model_copy(update=changed), "m") != request_key(plain, "m")
