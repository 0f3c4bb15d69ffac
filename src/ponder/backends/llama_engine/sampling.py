"""Token choice of the embedded engine: greedy, temperature, top-k and nucleus sampling in NumPy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ponder.types import GenRequest

__all__ = ["adjusted", "draw", "sample"]

# Nucleus sampling looks at the top tokens only; the nucleus of a real model
# practically always fits in this many tokens, and sorting 150k logits per
# token would dominate the step time.
_TOP_P_POOL = 1024


def adjusted(req: GenRequest, raw: np.ndarray, *generated: Sequence[int]) -> np.ndarray:
    """``raw`` with the request's logit bias and OpenAI's presence and frequency
    penalties over the tokens ``generated`` so far, given in parts (thought, answer)
    so that the per-token call joins nothing unless a penalty applies (a copy; ``raw``
    when none apply)."""
    penalised = any(generated) and bool(req.presence_penalty or req.frequency_penalty)
    if not req.logit_bias and not penalised:
        return raw
    logits = raw.copy()
    if req.logit_bias:
        ids = np.fromiter(req.logit_bias, dtype=np.int64)
        logits[ids] += np.fromiter(req.logit_bias.values(), dtype=np.float32)
    if penalised:
        tokens = np.concatenate([np.asarray(part, dtype=np.int64) for part in generated])
        ids, counts = np.unique(tokens, return_counts=True)
        logits[ids] -= (
            counts * np.float32(req.frequency_penalty) + np.float32(req.presence_penalty)
        ).astype(np.float32)
    return logits


def sample(
    req: GenRequest,
    raw: np.ndarray,
    rng: np.random.Generator,
    banned: np.ndarray | None = None,
) -> tuple[int, np.ndarray | None]:
    """The next token for ``req`` from raw logits, and the log-probabilities if asked for.

    ``banned`` tokens (end-of-generation when it may not end yet) get no mass.
    """
    logits = raw
    if banned is not None and banned.size:
        logits = raw.copy()
        logits[banned] = -np.inf
    logp = None
    if req.logprobs:
        m = logits.max()
        logp = logits - (m + np.log(np.exp(logits - m).sum()))
    if req.temperature <= 0.0:
        return int(np.argmax(logits)), logp
    scaled = logits * np.float32(1.0 / req.temperature)
    if req.top_k > 0 and req.top_k < scaled.size:
        pool = np.argpartition(-scaled, req.top_k)[: req.top_k]
    elif req.top_p < 1.0:
        pool = np.argpartition(-scaled, _TOP_P_POOL)[:_TOP_P_POOL]
    else:
        # Full-vocabulary sampling, exact, without a 150k-long cumsum per token.
        weights = np.exp(scaled - scaled.max())
        return draw(weights, rng), logp
    values = scaled[pool].astype(np.float64)
    probs = np.exp(values - values.max())
    probs /= probs.sum()
    if req.top_p < 1.0:
        order = np.argsort(-probs)
        cum = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cum, req.top_p)) + 1]
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    return int(pool[draw(probs, rng)]), logp


def draw(weights: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn with probability proportional to ``weights`` (inverse CDF in two levels)."""
    block = 1024
    if weights.size <= block:
        cdf = np.cumsum(weights, dtype=np.float64)
        u = rng.random() * cdf[-1]
        return min(int(np.searchsorted(cdf, u, side="right")), weights.size - 1)
    starts = np.arange(0, weights.size, block)
    block_cdf = np.cumsum(np.add.reduceat(weights, starts), dtype=np.float64)
    u = rng.random() * block_cdf[-1]
    b = min(int(np.searchsorted(block_cdf, u, side="right")), len(starts) - 1)
    inner = np.cumsum(weights[starts[b] : starts[b] + block], dtype=np.float64)
    u -= block_cdf[b - 1] if b else 0.0
    return int(starts[b]) + min(int(np.searchsorted(inner, u, side="right")), inner.size - 1)
