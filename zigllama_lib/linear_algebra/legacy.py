"""ggml's original block quantisations: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

Every block holds ``QK = 32`` consecutive weights of a row. Scales are IEEE
halves (``ggml_half``); integers are packed little-endian. Layouts (``ggml-common.h``)
and how weight ``j`` (0..31) of a block is rebuilt:

``block_q4_0`` -- 18 bytes, 4.5 bits per weight; ``w = d * (q - 8)``, q in 0..15::

    offset 0      2                     18
           | d f16 | qs[16]              |
    qs[j] = (q[j+16] << 4) | q[j]        # j < 16: low nibbles are weights 0..15,
                                         #         high nibbles weights 16..31

``block_q4_1`` -- 20 bytes, 5 bits per weight; ``w = d * q + m``, q in 0..15::

    | d f16 | m f16 | qs[16] |           # qs packed as in q4_0

``block_q5_0`` -- 22 bytes, 5.5 bits per weight; ``w = d * (q - 16)``, q in 0..31::

    | d f16 | qh[4] | qs[16] |
    q[j] = lo4[j] | (bit j of the little-endian u32 qh) << 4
    lo4 as in q4_0: low nibbles of qs hold j < 16, high nibbles j >= 16

``block_q5_1`` -- 24 bytes, 6 bits per weight; ``w = d * q + m``, q in 0..31::

    | d f16 | m f16 | qh[4] | qs[16] |   # q as in q5_0

``block_q8_0`` -- 34 bytes, 8.5 bits per weight; ``w = d * q``, q int8::

    | d f16 | qs[32] int8 |

All arithmetic is float32, in the order written above (``d * q`` rounded, then
``+ m`` rounded), which is what ggml's ``dequantize_row_*`` and gguf-py do.
"""

from __future__ import annotations

import numpy as np
from numba import njit

QK4_0 = QK4_1 = QK5_0 = QK5_1 = QK8_0 = 32

# type_size (bytes per block) of each block struct
SIZEOF_BLOCK_Q4_0 = 2 + QK4_0 // 2
SIZEOF_BLOCK_Q4_1 = 2 + 2 + QK4_1 // 2
SIZEOF_BLOCK_Q5_0 = 2 + 4 + QK5_0 // 2
SIZEOF_BLOCK_Q5_1 = 2 + 2 + 4 + QK5_1 // 2
SIZEOF_BLOCK_Q8_0 = 2 + QK8_0


# -- numpy references ----------------------------------------------------------
def _f16(field: np.ndarray) -> np.ndarray:
    """``(n, 2) uint8`` little-endian halves -> ``(n, 1) float32``."""
    return np.ascontiguousarray(field).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """``(n, 16) uint8 -> (n, 32) uint8``: low nibbles (weights 0..15), then high (16..31)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """``(n, 4) uint8`` = a little-endian u32 -> ``(n, 32) uint8``: bit j of it, for j = 0..31."""
    bits = np.ascontiguousarray(qh).view("<u4")  # (n, 1)
    return ((bits >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


def dequantize_blocks_q4_0(blocks: np.ndarray) -> np.ndarray:
    """``(n, 18) uint8 -> (n, 32) float32``."""
    d, qs = _f16(blocks[:, 0:2]), blocks[:, 2:18]
    q = _nibbles(qs).astype(np.int8) - np.int8(8)
    return d * q.astype(np.float32)


def dequantize_blocks_q4_1(blocks: np.ndarray) -> np.ndarray:
    """``(n, 20) uint8 -> (n, 32) float32``."""
    d, m, qs = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4]), blocks[:, 4:20]
    return d * _nibbles(qs).astype(np.float32) + m


def dequantize_blocks_q5_0(blocks: np.ndarray) -> np.ndarray:
    """``(n, 22) uint8 -> (n, 32) float32``."""
    d, qh, qs = _f16(blocks[:, 0:2]), blocks[:, 2:6], blocks[:, 6:22]
    q = (_nibbles(qs) | (_high_bits(qh) << 4)).astype(np.int8) - np.int8(16)
    return d * q.astype(np.float32)


def dequantize_blocks_q5_1(blocks: np.ndarray) -> np.ndarray:
    """``(n, 24) uint8 -> (n, 32) float32``."""
    d, m, qh, qs = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4]), blocks[:, 4:8], blocks[:, 8:24]
    q = _nibbles(qs) | (_high_bits(qh) << 4)
    return d * q.astype(np.float32) + m


def dequantize_blocks_q8_0(blocks: np.ndarray) -> np.ndarray:
    """``(n, 34) uint8 -> (n, 32) float32``."""
    d, qs = _f16(blocks[:, 0:2]), blocks[:, 2:34]
    return d * qs.view(np.int8).astype(np.float32)


# -- Numba: one row at a time ------------------------------------------------------
# row: (n_blocks * type_size,) uint8; out: (n_blocks * 32,) float32.
# No fastmath: ``d * q + m`` must not be fused into an FMA, to stay bit-exact.
@njit(cache=True, inline="always")
def half(row, o, lut):
    """The little-endian half at byte ``o`` of ``row``, as float32."""
    return lut[np.int64(row[o]) | (np.int64(row[o + 1]) << 8)]


@njit(cache=True, inline="always")
def qh_u32(row, o):
    """The little-endian u32 at byte ``o`` of ``row`` (q5's high bits)."""
    return (np.uint32(row[o]) | (np.uint32(row[o + 1]) << 8)
            | (np.uint32(row[o + 2]) << 16) | (np.uint32(row[o + 3]) << 24))


@njit(cache=True, inline="always")
def row_q4_0(row, lut, out):
    for ib in range(out.shape[0] // 32):
        o, y = ib * SIZEOF_BLOCK_Q4_0, ib * 32
        d = half(row, o, lut)
        for j in range(16):
            b = row[o + 2 + j]
            out[y + j] = d * np.float32(np.int32(b & 0x0F) - 8)
            out[y + j + 16] = d * np.float32(np.int32(b >> 4) - 8)


@njit(cache=True, inline="always")
def row_q4_1(row, lut, out):
    for ib in range(out.shape[0] // 32):
        o, y = ib * SIZEOF_BLOCK_Q4_1, ib * 32
        d, m = half(row, o, lut), half(row, o + 2, lut)
        for j in range(16):
            b = row[o + 4 + j]
            out[y + j] = d * np.float32(b & 0x0F) + m
            out[y + j + 16] = d * np.float32(b >> 4) + m


@njit(cache=True, inline="always")
def row_q5_0(row, lut, out):
    for ib in range(out.shape[0] // 32):
        o, y = ib * SIZEOF_BLOCK_Q5_0, ib * 32
        d, qh = half(row, o, lut), qh_u32(row, o + 2)
        for j in range(16):
            b = np.uint32(row[o + 6 + j])
            q0 = (b & 0x0F) | (((qh >> j) & 1) << 4)
            q1 = (b >> 4) | (((qh >> (j + 16)) & 1) << 4)
            out[y + j] = d * np.float32(np.int32(q0) - 16)
            out[y + j + 16] = d * np.float32(np.int32(q1) - 16)


@njit(cache=True, inline="always")
def row_q5_1(row, lut, out):
    for ib in range(out.shape[0] // 32):
        o, y = ib * SIZEOF_BLOCK_Q5_1, ib * 32
        d, m, qh = half(row, o, lut), half(row, o + 2, lut), qh_u32(row, o + 4)
        for j in range(16):
            b = np.uint32(row[o + 8 + j])
            q0 = (b & 0x0F) | (((qh >> j) & 1) << 4)
            q1 = (b >> 4) | (((qh >> (j + 16)) & 1) << 4)
            out[y + j] = d * np.float32(q0) + m
            out[y + j + 16] = d * np.float32(q1) + m


@njit(cache=True, inline="always")
def row_q8_0(row, lut, out):
    for ib in range(out.shape[0] // 32):
        o, y = ib * SIZEOF_BLOCK_Q8_0, ib * 32
        d = half(row, o, lut)
        qs = row[o + 2 : o + 34].view(np.int8)
        for j in range(32):
            out[y + j] = d * np.float32(qs[j])
