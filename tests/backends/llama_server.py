"""Runs llama-cpp-python's OpenAI-compatible server, with plain weights on AMX CPUs.

llama.cpp repacks weights for its AMX kernels, which segfault on the first decode on
some hosts (llama.cpp#20824; see ponder.backends.llama_cpp.cpu_has_amx). The embedded
engine turns repacking off there; ``llama_cpp.server`` has no setting for it, so this
launcher sets the model parameter's default before the server loads the model.

    python tests/backends/llama_server.py --model M.gguf --port 8000 [server options]
"""

from __future__ import annotations

import runpy

import llama_cpp.llama_cpp as llama_raw

from ponder.backends.llama_cpp import cpu_has_amx

if cpu_has_amx():
    _defaults = llama_raw.llama_model_default_params

    def _plain_weights() -> llama_raw.llama_model_params:
        params = _defaults()
        params.use_extra_bufts = False
        return params

    # llama_cpp.Llama reads this module attribute when it builds a model's parameters.
    llama_raw.llama_model_default_params = _plain_weights

runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
