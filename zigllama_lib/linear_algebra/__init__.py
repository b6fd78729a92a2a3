"""Layer 2: linear algebra on quantised GGUF tensors.

* :func:`dequantize` / :func:`dequantize_reference` -- raw GGUF rows
  ``(..., row_bytes) uint8`` -> ``(..., n_cols) float32`` (Numba kernels /
  readable numpy), bit-exact with ggml for every type in :data:`SUPPORTED_TYPES`:
  F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K;
* :func:`get_rows` -- dequantise selected rows (the embedding lookup);
* :class:`QMatrix` + :func:`matmul` -- ``y = x @ W.T`` with ``W`` kept in its
  GGUF type; mode ``"float"`` (exact float maths) or ``"q8"`` / ``"q8_x86"``
  (llama.cpp's CPU path: activations quantised to the weights' ``vec_dot_type``,
  integer block dot products); :func:`matmul_reference` is the numpy version;
* :func:`quantize_q8_0` / :func:`quantize_q8_1` / :func:`quantize_q8_K` --
  ggml's activation quantisers, returning block bytes.

One module per format family, each opening with its bit layouts:
``float_formats`` (F32 / F16 / BF16), ``legacy`` (Q4_0..Q8_0), ``kquants``
(Q2_K..Q6_K), ``q8`` (Q8_0 / Q8_1 / Q8_K); ``dequant`` and ``matmul`` hold the
public entry points; ``bench`` times matmul. Imports only ``foundation``.

Numba caches each kernel keyed on the source file that defines it, not on the
helpers inlined into it from other modules: after editing a row function in
``float_formats`` / ``legacy`` / ``kquants`` / ``q8``, delete
``zigllama_lib/linear_algebra/__pycache__/*.nb[ic]`` (or touch ``dequant.py``
and ``matmul.py``) so the kernels are rebuilt.
"""
from .dequant import SUPPORTED_TYPES, dequantize, dequantize_reference, get_rows
from .matmul import MODES, VEC_DOT_TYPE, QMatrix, matmul, matmul_reference
from .q8 import quantize_q8_0, quantize_q8_1, quantize_q8_K

__all__ = [
    "SUPPORTED_TYPES", "dequantize", "dequantize_reference", "get_rows",
    "QMatrix", "matmul", "matmul_reference", "MODES", "VEC_DOT_TYPE",
    "quantize_q8_0", "quantize_q8_1", "quantize_q8_K",
]
