"""Plain floating-point tensor types: F32, F16, BF16 (one value per "block").

Bit layouts, most significant bit first (all little-endian in the file)::

    F32   s eeeeeeee mmmmmmmmmmmmmmmmmmmmmmm   (32 bits per weight)
    F16   s eeeee mmmmmmmmmm                   (16 bpw; IEEE half, bias 15)
    BF16  s eeeeeeee mmmmmmm                   (16 bpw; the top half of an F32)

so ``f16 -> f32`` is an exact widening (numpy does it, and fills our table),
and ``bf16 -> f32`` is ``bits << 16``.

The other direction rounds, as ggml does when it converts activations for a
dot product with F16 / BF16 weights (``ggml_cpu_fp32_to_fp16`` /
``ggml_cpu_fp32_to_bf16``): both round to nearest, ties to even; bf16 first
turns a NaN into a quiet NaN (keeps the sign and top mantissa bits, sets bit 6).

Numba has no float16 type on the CPU, so kernels convert halves with the
65,536-entry table :data:`FP16_TO_FP32` (256 KiB, built by numpy: exact,
NaN payloads included). ggml keeps the same table (``ggml_table_f32_f16``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# every float16 bit pattern -> its float32 value; (65536,) float32
FP16_TO_FP32: np.ndarray = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
FP16_TO_FP32.setflags(write=False)


# -- numpy references ----------------------------------------------------------
def dequantize_f32_ref(rows: np.ndarray) -> np.ndarray:
    """``(n, 4k) uint8 -> (n, k) float32``: a reinterpretation."""
    return rows.view(np.float32).copy()


def dequantize_f16_ref(rows: np.ndarray) -> np.ndarray:
    """``(n, 2k) uint8 -> (n, k) float32``: IEEE half widened exactly."""
    return rows.view(np.float16).astype(np.float32)


def dequantize_bf16_ref(rows: np.ndarray) -> np.ndarray:
    """``(n, 2k) uint8 -> (n, k) float32``: f32 bits = bf16 bits << 16."""
    return (rows.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_to_f16(x: np.ndarray) -> np.ndarray:
    """float32 rounded to float16 (nearest, ties to even; overflow to inf) and back to float32."""
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


def fp32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """ggml's ``ggml_compute_fp32_to_bf16``: uint16 bits of float32 ``x`` rounded to bfloat16.

    NaN -> quiet NaN ``(bits >> 16) | 64``; otherwise ``(bits + 0x7fff + ((bits >> 16) & 1)) >> 16``
    (round to nearest even; large values round up to inf as IEEE does).
    """
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    quiet = (u >> 16) | 64
    return np.where(nan, quiet, rounded).astype(np.uint16)


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 rounded to bfloat16 as ggml does, and back to float32."""
    return (fp32_to_bf16_bits(x).astype(np.uint32) << 16).view(np.float32)


# -- Numba kernels ---------------------------------------------------------------
# Per-row converters (inlined into the drivers in dequant.py and matmul.py).
# No fastmath here: results must be bit-identical to the references.
@njit(cache=True, inline="always")
def row_f32(row, out):
    """``row: (4k,) uint8 -> out: (k,) float32``."""
    out[:] = row.view(np.float32)


@njit(cache=True, inline="always")
def row_f16(row, lut, out):
    """``row: (2k,) uint8 -> out: (k,) float32`` through the half -> float table."""
    h = row.view(np.uint16)
    for i in range(out.shape[0]):
        out[i] = lut[h[i]]


@njit(cache=True, inline="always")
def row_bf16(row, out):
    """``row: (2k,) uint8 -> out: (k,) float32``: f32 bits = bf16 bits << 16."""
    h = row.view(np.uint16)
    o = out.view(np.uint32)
    for i in range(out.shape[0]):
        o[i] = np.uint32(h[i]) << 16
