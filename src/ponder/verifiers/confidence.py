"""Confidence verifiers that need no reference: vote share, token probability, self-certainty.

Self-certainty (Kang et al., 2025) is the mean KL divergence of each token's
predictive distribution from uniform: peaked distributions (a confident model)
score high. Engines return only the top-k alternatives, so it is computed over
those k, renormalized; ask for them with ``top_logprobs`` (strategies read the
verifier's ``top_logprobs`` attribute).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ponder.types import Candidate, Problem, Score, TokenLogprob
from ponder.verifiers.simple import AgreementVerifier, MeanLogprobVerifier

__all__ = [
    "AgreementVerifier",
    "MeanLogprobVerifier",
    "SelfCertaintyVerifier",
    "TokenProbVerifier",
    "self_certainty",
]


def _token_certainty(tok: TokenLogprob) -> float | None:
    dist = dict(tok.top)
    dist.setdefault(tok.token, tok.logprob)
    k = len(dist)
    if k < 2:
        return None
    # Renormalize the top-k, then KL(uniform_k || p) = -log k - mean(log p).
    log_z = math.log(sum(math.exp(lp) for lp in dist.values()))
    mean_log_p = sum(lp - log_z for lp in dist.values()) / k
    return -math.log(k) - mean_log_p


def self_certainty(tokens: Sequence[TokenLogprob]) -> float | None:
    """Mean per-token KL(uniform || p) over tokens with alternatives; None without any."""
    values = [v for v in (_token_certainty(t) for t in tokens) if v is not None]
    return sum(values) / len(values) if values else None


@dataclass
class SelfCertaintyVerifier:
    """Score = self-certainty of the candidate's tokens (>= 0; higher is more confident)."""

    top_logprobs: int = 5

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        out = []
        for c in candidates:
            toks = c.generation.logprobs if c.generation is not None else None
            v = self_certainty(toks or [])
            out.append(Score(value=v if v is not None else 0.0, detail={"self_certainty": v}))
        return out


class TokenProbVerifier:
    """Score = geometric-mean token probability, exp(mean logprob), in [0, 1].

    Non-negative, so it suits weighted best-of-N (a confidence-weighted vote).
    """

    async def score(self, problem: Problem, candidates: Sequence[Candidate]) -> list[Score]:
        out = []
        for c in candidates:
            lp = c.generation.mean_logprob if c.generation is not None else None
            out.append(
                Score(value=math.exp(lp) if lp is not None else 0.0, detail={"mean_logprob": lp})
            )
        return out
