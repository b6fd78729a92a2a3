"""Layer 2: linear algebra on quantised GGUF tensors.

* :func:`dequantize` / :func:`dequantize_reference` -- raw rows -> float32
  (Numba kernels / readable numpy), bit-exact with ggml;
* :func:`get_rows` -- dequantise selected rows (embedding lookup);
* :class:`QMatrix` + :func:`matmul` -- ``y = x @ W.T`` with the weights kept in
  their GGUF type, in an exact float mode or mirroring llama.cpp's 8-bit
  activation quantisation (mode ``"q8"``);
* :func:`quantize_q8_0` / :func:`quantize_q8_1` -- ggml's activation quantisers.

Formats: one module per family (``float_formats``, ``legacy``, ``kquants``),
each with a header describing its bit layout.
"""
from .dequant import SUPPORTED_TYPES, dequantize, dequantize_reference, get_rows
from .matmul import MODES, VEC_DOT_TYPE, QMatrix, matmul, matmul_reference
from .q8 import quantize_q8_0, quantize_q8_1, quantize_q8_K

__all__ = [
    "SUPPORTED_TYPES", "dequantize", "dequantize_reference", "get_rows",
    "QMatrix", "matmul", "matmul_reference", "MODES", "VEC_DOT_TYPE",
    "quantize_q8_0", "quantize_q8_1", "quantize_q8_K",
]
