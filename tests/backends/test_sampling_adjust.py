"""The embedded engine's logit adjustments: OpenAI's logit_bias and repetition penalties."""

from __future__ import annotations

import numpy as np

from ponder.backends.llama_engine.sampling import adjusted
from ponder.types import GenRequest, Message

HI = [Message(role="user", content="hi")]


def test_no_adjustment_returns_the_logits_themselves() -> None:
    raw = np.zeros(8, dtype=np.float32)
    assert adjusted(GenRequest(messages=HI), raw, [1, 2]) is raw
    # Penalties need something generated to act on.
    assert adjusted(GenRequest(messages=HI, presence_penalty=1.0), raw, [], []) is raw


def test_bias_and_penalties_follow_openais_definition() -> None:
    raw = np.arange(6, dtype=np.float32)
    req = GenRequest(
        messages=HI, logit_bias={0: 10.0, 5: -100.0}, presence_penalty=0.5, frequency_penalty=0.25
    )
    got = adjusted(req, raw, [2, 2], [2, 3])  # thought and answer count alike
    # token 2: generated 3 times -> 2 - 3 * 0.25 - 0.5; token 3 once -> 3 - 0.25 - 0.5.
    expected = np.array([10.0, 1.0, 2 - 0.75 - 0.5, 3 - 0.25 - 0.5, 4.0, -95.0], np.float32)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert raw[2] == 2.0  # the engine's logits are left as they were
