"""Copy chosen transformer layers' outputs out of llama.cpp's graph (its eval callback).

llama.cpp hands out only the last layer's normalised state (``llama_get_embeddings``);
probing work reads middle layers, which llama.cpp exposes only through the scheduler's
per-tensor eval callback (``llama_context_params.cb_eval``). The callback runs for every
graph node of every decode once installed (about 850 on the 0.5B), so an engine installs
one only when asked for layers, and the tap copies nothing unless armed for a probe row.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ponder.errors import BackendError

__all__ = ["LayerTap"]


def _ggml(ll: Any) -> ctypes.CDLL:
    """A private handle on the ggml tensor getters (llama-cpp-python binds none of them)."""
    lib = ctypes.CDLL(ll.llama_cpp._lib._name)  # libllama resolves ggml's symbols
    lib.ggml_get_name.restype = ctypes.c_char_p
    lib.ggml_get_name.argtypes = [ctypes.c_void_p]
    lib.ggml_nelements.restype = ctypes.c_int64
    lib.ggml_nelements.argtypes = [ctypes.c_void_p]
    lib.ggml_nrows.restype = ctypes.c_int64
    lib.ggml_nrows.argtypes = [ctypes.c_void_p]
    lib.ggml_get_data_f32.restype = ctypes.POINTER(ctypes.c_float)
    lib.ggml_get_data_f32.argtypes = [ctypes.c_void_p]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
    lib.ggml_is_contiguous.restype = ctypes.c_bool
    lib.ggml_is_contiguous.argtypes = [ctypes.c_void_p]
    return lib


class LayerTap:
    """While armed, keeps the last row of each wanted layer's output (``l_out-<i>``)."""

    def __init__(self, ll: Any, layers: Sequence[int], n_layer: int) -> None:
        bad = [i for i in layers if not 0 <= i < n_layer]
        if bad or not layers:
            raise ValueError(f"probe layers must be in 0..{n_layer - 1}, got {list(layers)}")
        self.layers = tuple(sorted(set(layers)))
        self._lib = _ggml(ll)
        self._wanted = {f"l_out-{i}".encode(): i for i in self.layers}
        self._armed = False
        self._captured: dict[int, np.ndarray] = {}
        # Kept on self: ctypes frees a callback whose Python object is collected.
        self.callback = ll.ggml_backend_sched_eval_callback(self._on_tensor)

    def install(self, cparams: Any) -> None:
        cparams.cb_eval = self.callback
        cparams.cb_eval_user_data = None

    @contextmanager
    def armed(self) -> Iterator[dict[int, np.ndarray]]:
        """Capture during the block; the dict it yields holds layer -> state afterwards."""
        self._captured = {}
        self._armed = True
        try:
            yield self._captured
        finally:
            self._armed = False
        missing = [i for i in self.layers if i not in self._captured]
        if missing:
            raise BackendError(
                f"the model's graph produced no output for layers {missing} "
                "(it names no 'l_out-<layer>' tensors)"
            )

    def _on_tensor(self, tensor: int, ask: bool, _user_data: int) -> bool:
        # An exception cannot cross into C: ctypes would print it and return False,
        # which in the data phase aborts the decode. So nothing here may raise.
        if not self._armed:
            return not ask  # want nothing; in the data phase, go on
        try:
            layer = self._wanted.get(self._lib.ggml_get_name(tensor))
            if ask:
                return layer is not None
            if layer is not None and self._lib.ggml_is_contiguous(tensor):
                rows = self._lib.ggml_nrows(tensor)
                width = self._lib.ggml_nelements(tensor) // rows
                if self._lib.ggml_nbytes(tensor) != 4 * rows * width:
                    return True  # not float32 (a quantised or f16 graph): not read
                data = np.ctypeslib.as_array(self._lib.ggml_get_data_f32(tensor), (rows, width))
                self._captured[layer] = data[-1].copy()  # the row of the batch's last token
        except Exception:  # noqa: BLE001  # reported as missing layers by armed()
            pass
        return True
