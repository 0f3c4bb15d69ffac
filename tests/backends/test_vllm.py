"""The in-process vLLM backend: runs only where vLLM and a GPU are present."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from ponder.types import GenRequest, Message

if importlib.util.find_spec("vllm") is None:
    pytest.skip(
        "vLLM is not installed (pip install 'ponder[vllm]'; needs a CUDA GPU)",
        allow_module_level=True,
    )
if shutil.which("nvidia-smi") is None:
    pytest.skip(
        "no NVIDIA GPU on this machine; the vllm backend needs one", allow_module_level=True
    )


@pytest.fixture(scope="module")
def engine(request):
    import os

    from ponder.backends.vllm import VLLMBackend

    path = os.environ.get("PONDER_VLLM_TEST_MODEL")
    if not path:
        pytest.skip("set PONDER_VLLM_TEST_MODEL to a local Hugging Face model directory")
    return VLLMBackend(path, max_model_len=2048, gpu_memory_utilization=0.5)


@pytest.mark.model
async def test_n_samples_share_one_request_and_report_usage(engine):
    msgs = [Message(role="user", content="Count from 1 to 5.")]
    gens = await engine.generate(GenRequest(messages=msgs, n=3, max_tokens=16, logprobs=True))
    assert len(gens) == 3
    assert gens[0].usage.input > 0 and all(g.usage.input == 0 for g in gens[1:])
    assert all(g.logprobs and len(g.logprobs) == g.usage.output for g in gens)
