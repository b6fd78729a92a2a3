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


# Each unpack_* splits (n, type_size) blocks into named fields:
# d, m: (n,) float32; q: (n, 32) int8 -- the integers the dot products use.
def unpack_q4_0(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """block_q4_0 -> d, q = nibble - 8 (in -8..7)."""
    d, qs = _f16(blocks[:, 0:2])[:, 0], blocks[:, 2:18]
    return d, _nibbles(qs).astype(np.int8) - np.int8(8)


def unpack_q4_1(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """block_q4_1 -> d, m, q = nibble (in 0..15)."""
    d, m, qs = _f16(blocks[:, 0:2])[:, 0], _f16(blocks[:, 2:4])[:, 0], blocks[:, 4:20]
    return d, m, _nibbles(qs).astype(np.int8)


def unpack_q5_0(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """block_q5_0 -> d, q = (nibble | high bit << 4) - 16 (in -16..15)."""
    d, qh, qs = _f16(blocks[:, 0:2])[:, 0], blocks[:, 2:6], blocks[:, 6:22]
    return d, (_nibbles(qs) | (_high_bits(qh) << 4)).astype(np.int8) - np.int8(16)


def unpack_q5_1(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """block_q5_1 -> d, m, q = nibble | high bit << 4 (in 0..31)."""
    d, m, qh, qs = _f16(blocks[:, 0:2])[:, 0], _f16(blocks[:, 2:4])[:, 0], blocks[:, 4:8], blocks[:, 8:24]
    return d, m, (_nibbles(qs) | (_high_bits(qh) << 4)).astype(np.int8)


def unpack_q8_0(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """block_q8_0 -> d, q (int8)."""
    return _f16(blocks[:, 0:2])[:, 0], np.ascontiguousarray(blocks[:, 2:34]).view(np.int8)


def dequantize_blocks_q4_0(blocks: np.ndarray) -> np.ndarray:
    """``(n, 18) uint8 -> (n, 32) float32``: d * (q - 8)."""
    d, q = unpack_q4_0(blocks)
    return d[:, None] * q.astype(np.float32)


def dequantize_blocks_q4_1(blocks: np.ndarray) -> np.ndarray:
    """``(n, 20) uint8 -> (n, 32) float32``: d * q + m."""
    d, m, q = unpack_q4_1(blocks)
    return d[:, None] * q.astype(np.float32) + m[:, None]


def dequantize_blocks_q5_0(blocks: np.ndarray) -> np.ndarray:
    """``(n, 22) uint8 -> (n, 32) float32``: d * (q - 16)."""
    d, q = unpack_q5_0(blocks)
    return d[:, None] * q.astype(np.float32)


def dequantize_blocks_q5_1(blocks: np.ndarray) -> np.ndarray:
    """``(n, 24) uint8 -> (n, 32) float32``: d * q + m."""
    d, m, q = unpack_q5_1(blocks)
    return d[:, None] * q.astype(np.float32) + m[:, None]


def dequantize_blocks_q8_0(blocks: np.ndarray) -> np.ndarray:
    """``(n, 34) uint8 -> (n, 32) float32``: d * q."""
    d, q = unpack_q8_0(blocks)
    return d[:, None] * q.astype(np.float32)


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
        for j in range(16):  # low nibbles: weights 0..15
            out[y + j] = d * np.float32(np.int32(row[o + 2 + j] & 0x0F) - 8)
        for j in range(16):  # high nibbles: weights 16..31
            out[y + 16 + j] = d * np.float32(np.int32(row[o + 2 + j] >> 4) - 8)


@njit(cache=True, inline="always")
def row_q4_1(row, lut, out):
    for ib in range(out.shape[0] // 32):
        o, y = ib * SIZEOF_BLOCK_Q4_1, ib * 32
        d, m = half(row, o, lut), half(row, o + 2, lut)
        for j in range(16):
            out[y + j] = d * np.float32(row[o + 4 + j] & 0x0F) + m
        for j in range(16):
            out[y + 16 + j] = d * np.float32(row[o + 4 + j] >> 4) + m


@njit(cache=True, inline="always")
def row_q5_0(row, lut, out):
    for ib in range(out.shape[0] // 32):
        o, y = ib * SIZEOF_BLOCK_Q5_0, ib * 32
        d, qh = half(row, o, lut), qh_u32(row, o + 2)
        for j in range(16):
            q = (np.uint32(row[o + 6 + j]) & 0x0F) | (((qh >> j) & 1) << 4)
            out[y + j] = d * np.float32(np.int32(q) - 16)
        for j in range(16):
            q = (np.uint32(row[o + 6 + j]) >> 4) | (((qh >> (j + 16)) & 1) << 4)
            out[y + 16 + j] = d * np.float32(np.int32(q) - 16)


@njit(cache=True, inline="always")
def row_q5_1(row, lut, out):
    for ib in range(out.shape[0] // 32):
        o, y = ib * SIZEOF_BLOCK_Q5_1, ib * 32
        d, m, qh = half(row, o, lut), half(row, o + 2, lut), qh_u32(row, o + 4)
        for j in range(16):
            q = (np.uint32(row[o + 8 + j]) & 0x0F) | (((qh >> j) & 1) << 4)
            out[y + j] = d * np.float32(q) + m
        for j in range(16):
            q = (np.uint32(row[o + 8 + j]) >> 4) | (((qh >> (j + 16)) & 1) << 4)
            out[y + 16 + j] = d * np.float32(q) + m


@njit(cache=True, inline="always")
def row_q8_0(row, lut, out):
    for ib in range(out.shape[0] // 32):
        o, y = ib * SIZEOF_BLOCK_Q8_0, ib * 32
        d = half(row, o, lut)
        for j in range(32):
            out[y + j] = d * np.float32(np.int8(row[o + 2 + j]))


# -- Numba: unpack a row for the integer dot products ------------------------------------
# wq: (n,) int8 quants as in unpack_*; wd, wm: (n/32,) float32 (wm = 0 for types without m).
@njit(cache=True, inline="always")
def unpack_row(code, row, lut, wq, wd, wm):
    """Row of ggml type ``code`` (Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0: 2, 3, 6, 7, 8) -> wq, wd, wm."""
    for ib in range(wd.shape[0]):
        y = ib * 32
        if code == 8:  # Q8_0
            o = ib * SIZEOF_BLOCK_Q8_0
            wd[ib], wm[ib] = half(row, o, lut), 0
            qs = row[o + 2 : o + 34].view(np.int8)
            for j in range(32):
                wq[y + j] = qs[j]
        elif code == 2 or code == 3:  # Q4_0, Q4_1
            if code == 2:
                o, off, qo = ib * SIZEOF_BLOCK_Q4_0, 8, 2
                wd[ib], wm[ib] = half(row, o, lut), 0
            else:
                o, off, qo = ib * SIZEOF_BLOCK_Q4_1, 0, 4
                wd[ib], wm[ib] = half(row, o, lut), half(row, o + 2, lut)
            for j in range(16):
                b = np.int32(row[o + qo + j])
                wq[y + j] = (b & 0x0F) - off
                wq[y + j + 16] = (b >> 4) - off
        else:  # Q5_0, Q5_1
            if code == 6:
                o, off, qo = ib * SIZEOF_BLOCK_Q5_0, 16, 2
                wd[ib], wm[ib] = half(row, o, lut), 0
            else:
                o, off, qo = ib * SIZEOF_BLOCK_Q5_1, 0, 4
                wd[ib], wm[ib] = half(row, o, lut), half(row, o + 2, lut)
            qh = qh_u32(row, o + qo)
            for j in range(16):
                b = np.int32(row[o + qo + 4 + j])
                h0 = np.int32((qh >> j) & 1) << 4
                h1 = np.int32((qh >> (j + 16)) & 1) << 4
                wq[y + j] = ((b & 0x0F) | h0) - off
                wq[y + j + 16] = ((b >> 4) | h1) - off
