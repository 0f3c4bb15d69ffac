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

__all__ = ["Capture", "LayerTap"]


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


class Capture:
    """What one armed span read: each layer's last row, and the mean of all its rows."""

    def __init__(self) -> None:
        self.last: dict[int, np.ndarray] = {}
        self._sums: dict[int, np.ndarray] = {}
        self._rows: dict[int, int] = {}

    def add(self, layer: int, data: np.ndarray) -> None:
        self.last[layer] = data[-1].copy()  # the row of the batch's last token
        total = data.sum(axis=0, dtype=np.float64)
        if layer in self._sums:
            self._sums[layer] += total
        else:
            self._sums[layer] = total
        self._rows[layer] = self._rows.get(layer, 0) + len(data)

    @property
    def mean(self) -> dict[int, np.ndarray]:
        """Each layer's output averaged over every token decoded while armed."""
        return {i: (s / self._rows[i]).astype(np.float32) for i, s in self._sums.items()}


class LayerTap:
    """While armed, reads each wanted layer's output (``l_out-<i>``) for every row decoded.

    The last transformer block is read only for rows that ask for logits (llama.cpp
    drops the others before it), so its mean is over those rows alone.
    """

    def __init__(self, ll: Any, layers: Sequence[int], n_layer: int) -> None:
        bad = [i for i in layers if not 0 <= i < n_layer]
        if bad or not layers:
            raise ValueError(f"probe layers must be in 0..{n_layer - 1}, got {list(layers)}")
        self.layers = tuple(sorted(set(layers)))
        self._lib = _ggml(ll)
        self._wanted = {f"l_out-{i}".encode(): i for i in self.layers}
        self._armed = False
        self._capture = Capture()
        # Kept on self: ctypes frees a callback whose Python object is collected.
        self.callback = ll.ggml_backend_sched_eval_callback(self._on_tensor)

    def install(self, cparams: Any) -> None:
        cparams.cb_eval = self.callback
        cparams.cb_eval_user_data = None

    @contextmanager
    def armed(self) -> Iterator[Capture]:
        """Capture during the block; what it yields holds the layers' states afterwards."""
        self._capture = Capture()
        self._armed = True
        try:
            yield self._capture
        finally:
            self._armed = False
        missing = [i for i in self.layers if i not in self._capture.last]
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
                if rows == 0:
                    return True
                width = self._lib.ggml_nelements(tensor) // rows
                if self._lib.ggml_nbytes(tensor) != 4 * rows * width:
                    return True  # not float32 (a quantised or f16 graph): not read
                data = np.ctypeslib.as_array(self._lib.ggml_get_data_f32(tensor), (rows, width))
                self._capture.add(layer, data)
        except Exception:  # noqa: BLE001  # reported as missing layers by armed()
            pass
        return True
