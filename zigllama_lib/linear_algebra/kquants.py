"""K-quants: super-blocks of ``QK_K = 256`` weights with quantised sub-block scales.

A super-block has one or two f16 scales (``d``, ``dmin``) and, per sub-block
of 16 or 32 weights, a small integer scale (and min) that multiplies them.
Layouts (``ggml-common.h``) and how each weight is rebuilt, float32 throughout,
in this order (ggml's ``dequantize_row_q*_K``, gguf-py):

``block_q2_K`` -- 84 bytes, 2.625 bits per weight; 16 sub-blocks of 16::

    | scales[16] | qs[64] | d f16 | dmin f16 |
    scales[s] = (min_s << 4) | sc_s                     (4 + 4 bits)
    w = (d * sc_s) * q - (dmin * min_s),  q in 0..3
    weight i = 128h + 32j + l  (h < 2, j < 4, l < 32):
        q = (qs[32h + l] >> 2j) & 3,   s = 8h + 2j + l // 16

``block_q3_K`` -- 110 bytes, 3.4375 bits per weight; 16 sub-blocks of 16::

    | hmask[32] | qs[64] | scales[12] | d f16 |
    w = (d * (sc_s - 32)) * q,  q = lo2 - (0 if hmask bit set else 4) in -4..3
    weight i = 128h + 32j + l: lo2 = (qs[32h + l] >> 2j) & 3,
        high bit = bit (4h + j) of hmask[l],  s = 8h + 2j + l // 16
    6-bit scales sc_s, s < 16: low 4 bits = nibble (s // 8) of scales[s % 8],
        high 2 bits = bits 2(s // 4) .. of scales[8 + s % 4]

``block_q4_K`` -- 144 bytes, 4.5 bits per weight; 8 sub-blocks of 32::

    | d f16 | dmin f16 | scales[12] | qs[128] |
    w = (d * sc_s) * q - (dmin * min_s),  q in 0..15
    weight i = 64c + 32k + l  (c < 4, k < 2): q = nibble k of qs[32c + l],  s = 2c + k
    6-bit sc/min packed in scales[12] (get_scale_min_k4)::
        s < 4:  sc = scales[s] & 63          min = scales[s + 4] & 63
        s >= 4: sc = (scales[s + 4] & 15) | (scales[s - 4] >> 6) << 4
                min = (scales[s + 4] >> 4) | (scales[s] >> 6) << 4
    i.e. byte:  0..3  mmSSSSSS (sc 0..3,  top bits of sc 4..7 in mm)
                4..7  mmMMMMMM (min 0..3, top bits of min 4..7 in mm)
                8..11 MMMMSSSS (low nibbles: sc 4..7, high nibbles: min 4..7)

``block_q5_K`` -- 176 bytes, 5.5 bits per weight; as q4_K plus one high bit::

    | d f16 | dmin f16 | scales[12] | qh[32] | qs[128] |
    q = nibble + 16 * (bit s of qh[l]),  in 0..31  (s = 2c + k, l < 32)

``block_q6_K`` -- 210 bytes, 6.5625 bits per weight; 16 sub-blocks of 16::

    | ql[128] | qh[64] | scales[16] int8 | d f16 |
    w = (d * sc_s) * (q - 32),  q in 0..63
    weight i = 128h + 32k + l  (h < 2, k < 4, l < 32):
        low 4 = nibble (k // 2) of ql[64h + 32(k % 2) + l]
        high 2 = (qh[32h + l] >> 2k) & 3
        s = 8h + 2k + l // 16
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..foundation.ggml_types import QK_K

K_SCALE_SIZE = 12
SIZEOF_BLOCK_Q2_K = QK_K // 16 + QK_K // 4 + 2 + 2
SIZEOF_BLOCK_Q3_K = QK_K // 8 + QK_K // 4 + 12 + 2
SIZEOF_BLOCK_Q4_K = 2 + 2 + K_SCALE_SIZE + QK_K // 2
SIZEOF_BLOCK_Q5_K = 2 + 2 + K_SCALE_SIZE + QK_K // 8 + QK_K // 2
SIZEOF_BLOCK_Q6_K = QK_K // 2 + QK_K // 4 + QK_K // 16 + 2


# -- numpy references ----------------------------------------------------------
def _f16(field: np.ndarray) -> np.ndarray:
    """``(n, 2) uint8`` little-endian halves -> ``(n, 1) float32``."""
    return np.ascontiguousarray(field).view(np.float16).astype(np.float32)


def _crumbs(q: np.ndarray) -> np.ndarray:
    """``(n, 2, 32)`` bytes -> ``(n, 2, 4, 32)``: the 2-bit fields at shifts 0, 2, 4, 6."""
    return (q[:, :, None, :] >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3


def scale_min_k4(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 12) uint8`` packed 6-bit scales -> ``(sc, min)``, each ``(n, 8) uint8`` (get_scale_min_k4)."""
    lo, mid, hi = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = np.concatenate([lo & 63, (hi & 15) | ((lo >> 6) << 4)], axis=1)
    mn = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=1)
    return sc, mn


# Each unpack_* splits (n, type_size) super-blocks into named fields, with one
# scale (and min) per group of 16 weights for every type (the 32-weight
# sub-blocks of q4_K / q5_K repeat theirs twice):
#   d, dmin: (n,) float32 (dmin = 0 for q3_K, q6_K); sc, mn: (n, 16) int32; q: (n, 256) int8
def unpack_q2_K(blocks: np.ndarray):
    n = blocks.shape[0]
    scales, qs = blocks[:, 0:16], blocks[:, 16:80]
    d, dmin = _f16(blocks[:, 80:82])[:, 0], _f16(blocks[:, 82:84])[:, 0]
    q = _crumbs(qs.reshape(n, 2, 32)).reshape(n, QK_K)  # [h, j, l] -> weight 128h + 32j + l
    return d, dmin, (scales & 15).astype(np.int32), (scales >> 4).astype(np.int32), q.astype(np.int8)


def unpack_q3_K(blocks: np.ndarray):
    n = blocks.shape[0]
    hmask, qs, scales = blocks[:, 0:32], blocks[:, 32:96], blocks[:, 96:108]
    d = _f16(blocks[:, 108:110])[:, 0]
    low4 = np.concatenate([scales[:, 0:8] & 15, scales[:, 0:8] >> 4], axis=1)  # (n, 16)
    high2 = _crumbs(scales[:, None, 8:12]).reshape(n, 16)  # [k, i] -> s = 4k + i
    sc = (low4 | (high2 << 4)).astype(np.int32) - 32
    lo2 = _crumbs(qs.reshape(n, 2, 32)).astype(np.int8)  # (n, 2, 4, 32) [h, j, l]
    bit = (hmask[:, None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1  # (n, 8, 32) [4h + j, l]
    q = lo2 - ((bit.reshape(n, 2, 4, 32) ^ 1) << 2).astype(np.int8)
    return d, np.zeros_like(d), sc, np.zeros_like(sc), q.reshape(n, QK_K)


def unpack_q4_K(blocks: np.ndarray):
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, 0:2])[:, 0], _f16(blocks[:, 2:4])[:, 0]
    sc, mn = scale_min_k4(blocks[:, 4:16])
    q = (blocks[:, 16:144].reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8)[:, None]) & 15  # [c, k, l]
    return (d, dmin, np.repeat(sc, 2, axis=1).astype(np.int32), np.repeat(mn, 2, axis=1).astype(np.int32),
            q.reshape(n, QK_K).astype(np.int8))


def unpack_q5_K(blocks: np.ndarray):
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, 0:2])[:, 0], _f16(blocks[:, 2:4])[:, 0]
    sc, mn = scale_min_k4(blocks[:, 4:16])
    qh, qs = blocks[:, 16:48], blocks[:, 48:176]
    lo = (qs.reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8)[:, None]) & 15  # (n, 4, 2, 32)
    hi = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1  # (n, 8, 32) [s, l]
    q = lo.reshape(n, 8, 32) | (hi << 4)
    return (d, dmin, np.repeat(sc, 2, axis=1).astype(np.int32), np.repeat(mn, 2, axis=1).astype(np.int32),
            q.reshape(n, QK_K).astype(np.int8))


def unpack_q6_K(blocks: np.ndarray):
    n = blocks.shape[0]
    ql, qh = blocks[:, 0:128], blocks[:, 128:192]
    sc = blocks[:, 192:208].view(np.int8).astype(np.int32)
    d = _f16(blocks[:, 208:210])[:, 0]
    lo = (ql.reshape(n, 2, 1, 2, 32) >> np.array([0, 4], np.uint8)[:, None, None]) & 15  # [h, k//2, k%2, l]
    hi = _crumbs(qh.reshape(n, 2, 32))  # (n, 2, 4, 32) [h, k, l]
    q = (lo.reshape(n, 2, 4, 32) | (hi << 4)).astype(np.int8) - np.int8(32)
    return d, np.zeros_like(d), sc, np.zeros_like(sc), q.reshape(n, QK_K)


UNPACK = {"Q2_K": unpack_q2_K, "Q3_K": unpack_q3_K, "Q4_K": unpack_q4_K, "Q5_K": unpack_q5_K,
          "Q6_K": unpack_q6_K}


def _dequantize(unpack, blocks: np.ndarray, with_min: bool) -> np.ndarray:
    """``w = (d * sc) * q - (dmin * mn)`` per group of 16 (the min term only for q2/q4/q5_K)."""
    n = blocks.shape[0]
    d, dmin, sc, mn, q = unpack(blocks)
    ds = (d[:, None] * sc.astype(np.float32))[:, :, None]  # (n, 16, 1)
    w = ds * q.reshape(n, 16, 16).astype(np.float32)
    if with_min:
        w = w - (dmin[:, None] * mn.astype(np.float32))[:, :, None]
    return w.reshape(n, QK_K)


def dequantize_blocks_q2_K(blocks: np.ndarray) -> np.ndarray:
    """``(n, 84) uint8 -> (n, 256) float32``."""
    return _dequantize(unpack_q2_K, blocks, True)


def dequantize_blocks_q3_K(blocks: np.ndarray) -> np.ndarray:
    """``(n, 110) uint8 -> (n, 256) float32``."""
    return _dequantize(unpack_q3_K, blocks, False)


def dequantize_blocks_q4_K(blocks: np.ndarray) -> np.ndarray:
    """``(n, 144) uint8 -> (n, 256) float32``."""
    return _dequantize(unpack_q4_K, blocks, True)


def dequantize_blocks_q5_K(blocks: np.ndarray) -> np.ndarray:
    """``(n, 176) uint8 -> (n, 256) float32``."""
    return _dequantize(unpack_q5_K, blocks, True)


def dequantize_blocks_q6_K(blocks: np.ndarray) -> np.ndarray:
    """``(n, 210) uint8 -> (n, 256) float32``."""
    return _dequantize(unpack_q6_K, blocks, False)


# -- Numba: one row at a time ------------------------------------------------------
# row: (n_superblocks * type_size,) uint8; out: (n_superblocks * 256,) float32. No fastmath (bit-exact).
@njit(cache=True, inline="always")
def half(row, o, lut):
    return lut[np.int64(row[o]) | (np.int64(row[o + 1]) << 8)]


@njit(cache=True, inline="always")
def scale_min(row, o, s):
    """(sc, min) of sub-block ``s`` from the 12 packed bytes at ``row[o:]`` (get_scale_min_k4)."""
    if s < 4:
        return np.int32(row[o + s] & 63), np.int32(row[o + s + 4] & 63)
    sc = (row[o + s + 4] & 15) | ((row[o + s - 4] >> 6) << 4)
    mn = (row[o + s + 4] >> 4) | ((row[o + s] >> 6) << 4)
    return np.int32(sc), np.int32(mn)


@njit(cache=True, inline="always")
def row_q2_K(row, lut, out):
    for ib in range(out.shape[0] // QK_K):
        o, y = ib * SIZEOF_BLOCK_Q2_K, ib * QK_K
        d, dmin = half(row, o + 80, lut), half(row, o + 82, lut)
        for h in range(2):
            for j in range(4):
                for half_ in range(2):
                    s = 8 * h + 2 * j + half_
                    dl = d * np.float32(row[o + s] & 15)
                    ml = dmin * np.float32(row[o + s] >> 4)
                    for l in range(16 * half_, 16 * half_ + 16):
                        q = (row[o + 16 + 32 * h + l] >> (2 * j)) & 3
                        out[y + 128 * h + 32 * j + l] = dl * np.float32(q) - ml


@njit(cache=True, inline="always")
def q3_scale(row, o, s):
    """Sub-block scale ``s`` (0..15) of a q3_K block, in -32..31; ``o`` = offset of scales[12]."""
    low4 = (row[o + s % 8] >> (4 * (s // 8))) & 15
    high2 = (row[o + 8 + s % 4] >> (2 * (s // 4))) & 3
    return np.int32(low4 | (high2 << 4)) - 32


@njit(cache=True, inline="always")
def row_q3_K(row, lut, out):
    for ib in range(out.shape[0] // QK_K):
        o, y = ib * SIZEOF_BLOCK_Q3_K, ib * QK_K
        d = half(row, o + 108, lut)
        for h in range(2):
            for j in range(4):
                for half_ in range(2):
                    s = 8 * h + 2 * j + half_
                    dl = d * np.float32(q3_scale(row, o + 96, s))
                    for l in range(16 * half_, 16 * half_ + 16):
                        lo2 = np.int32((row[o + 32 + 32 * h + l] >> (2 * j)) & 3)
                        hbit = (row[o + l] >> (4 * h + j)) & 1
                        q = lo2 - (0 if hbit else 4)
                        out[y + 128 * h + 32 * j + l] = dl * np.float32(q)


@njit(cache=True, inline="always")
def row_q4_K(row, lut, out):
    for ib in range(out.shape[0] // QK_K):
        o, y = ib * SIZEOF_BLOCK_Q4_K, ib * QK_K
        d, dmin = half(row, o, lut), half(row, o + 2, lut)
        for c in range(4):
            sc0, mn0 = scale_min(row, o + 4, 2 * c)
            sc1, mn1 = scale_min(row, o + 4, 2 * c + 1)
            d0, m0 = d * np.float32(sc0), dmin * np.float32(mn0)
            d1, m1 = d * np.float32(sc1), dmin * np.float32(mn1)
            for l in range(32):
                b = row[o + 16 + 32 * c + l]
                out[y + 64 * c + l] = d0 * np.float32(b & 15) - m0
                out[y + 64 * c + 32 + l] = d1 * np.float32(b >> 4) - m1


@njit(cache=True, inline="always")
def row_q5_K(row, lut, out):
    for ib in range(out.shape[0] // QK_K):
        o, y = ib * SIZEOF_BLOCK_Q5_K, ib * QK_K
        d, dmin = half(row, o, lut), half(row, o + 2, lut)
        for c in range(4):
            sc0, mn0 = scale_min(row, o + 4, 2 * c)
            sc1, mn1 = scale_min(row, o + 4, 2 * c + 1)
            d0, m0 = d * np.float32(sc0), dmin * np.float32(mn0)
            d1, m1 = d * np.float32(sc1), dmin * np.float32(mn1)
            for l in range(32):
                b = row[o + 48 + 32 * c + l]
                h = row[o + 16 + l]
                q0 = (b & 15) | (((h >> (2 * c)) & 1) << 4)
                q1 = (b >> 4) | (((h >> (2 * c + 1)) & 1) << 4)
                out[y + 64 * c + l] = d0 * np.float32(q0) - m0
                out[y + 64 * c + 32 + l] = d1 * np.float32(q1) - m1


@njit(cache=True, inline="always")
def row_q6_K(row, lut, out):
    for ib in range(out.shape[0] // QK_K):
        o, y = ib * SIZEOF_BLOCK_Q6_K, ib * QK_K
        d = half(row, o + 208, lut)
        sc = row[o + 192 : o + 208].view(np.int8)
        for h in range(2):
            for k in range(4):
                shift = 4 * (k // 2)
                for l in range(32):
                    lo = (row[o + 64 * h + 32 * (k % 2) + l] >> shift) & 15
                    hi = (row[o + 128 + 32 * h + l] >> (2 * k)) & 3
                    q = np.int32(lo | (hi << 4)) - 32
                    ds = d * np.float32(sc[8 * h + 2 * k + l // 16])
                    out[y + 128 * h + 32 * k + l] = ds * np.float32(q)


# -- Numba: unpack a row for the integer dot products with Q8_K ------------------------------
# wq: (n,) int8; wsc, wmn: (n/16,) int32 per group of 16; wd, wdm: (n/256,) float32.
@njit(cache=True, inline="always")
def unpack_row(code, row, lut, wq, wsc, wmn, wd, wdm):
    """Row of ggml type ``code`` (Q2_K..Q6_K: 10..14) -> the planes of ``unpack_*``."""
    for ib in range(wd.shape[0]):
        y, g = ib * QK_K, ib * 16
        if code == 12 or code == 13:  # Q4_K, Q5_K
            size = SIZEOF_BLOCK_Q4_K if code == 12 else SIZEOF_BLOCK_Q5_K
            o = ib * size
            wd[ib], wdm[ib] = half(row, o, lut), half(row, o + 2, lut)
            for s in range(8):
                sc, mn = scale_min(row, o + 4, s)
                wsc[g + 2 * s] = sc
                wsc[g + 2 * s + 1] = sc
                wmn[g + 2 * s] = mn
                wmn[g + 2 * s + 1] = mn
            qo = o + 16 if code == 12 else o + 48
            for c in range(4):
                for l in range(32):
                    b = np.int32(row[qo + 32 * c + l])
                    lo, hi = b & 15, b >> 4
                    if code == 13:
                        h = np.int32(row[o + 16 + l])
                        lo |= ((h >> (2 * c)) & 1) << 4
                        hi |= ((h >> (2 * c + 1)) & 1) << 4
                    wq[y + 64 * c + l] = lo
                    wq[y + 64 * c + 32 + l] = hi
        elif code == 14:  # Q6_K
            o = ib * SIZEOF_BLOCK_Q6_K
            wd[ib], wdm[ib] = half(row, o + 208, lut), 0
            sc = row[o + 192 : o + 208].view(np.int8)
            for s in range(16):
                wsc[g + s] = sc[s]
                wmn[g + s] = 0
            for h in range(2):
                for k in range(4):
                    shift = 4 * (k // 2)
                    for l in range(32):
                        lo = (np.int32(row[o + 64 * h + 32 * (k % 2) + l]) >> shift) & 15
                        hi = (np.int32(row[o + 128 + 32 * h + l]) >> (2 * k)) & 3
                        wq[y + 128 * h + 32 * k + l] = (lo | (hi << 4)) - 32
        elif code == 10:  # Q2_K
            o = ib * SIZEOF_BLOCK_Q2_K
            wd[ib], wdm[ib] = half(row, o + 80, lut), half(row, o + 82, lut)
            for s in range(16):
                wsc[g + s] = np.int32(row[o + s] & 15)
                wmn[g + s] = np.int32(row[o + s] >> 4)
            for h in range(2):
                for j in range(4):
                    for l in range(32):
                        wq[y + 128 * h + 32 * j + l] = (np.int32(row[o + 16 + 32 * h + l]) >> (2 * j)) & 3
        else:  # Q3_K
            o = ib * SIZEOF_BLOCK_Q3_K
            wd[ib], wdm[ib] = half(row, o + 108, lut), 0
            for s in range(16):
                wsc[g + s] = q3_scale(row, o + 96, s)
                wmn[g + s] = 0
            for h in range(2):
                for j in range(4):
                    for l in range(32):
                        lo2 = (np.int32(row[o + 32 + 32 * h + l]) >> (2 * j)) & 3
                        hbit = (np.int32(row[o + l]) >> (4 * h + j)) & 1
                        wq[y + 128 * h + 32 * j + l] = lo2 - (0 if hbit else 4)
