"""Weight quantisers: float32 rows -> GGUF block bytes, as llama.cpp writes model files.

``quantize(x, qtype)`` takes ``x: (..., n_cols) float32`` and returns
``(..., row_bytes) uint8``, the bytes a GGUF tensor of that type holds
(:func:`~.dequant.dequantize` reads them back). Each format follows ggml's
reference quantiser (``quantize_row_*_ref`` in ``ggml-quants.c``, which
``llama-quantize`` runs when no importance matrix is given), in float32, in
ggml's order of operations, so the bytes are ggml's bit for bit. Per block of
``QK = 32`` weights ``x_0..x_31``::

    Q8_0  8.5 bpw   amax = max |x_j|          d = amax / 127       id = 1/d (0 if d = 0)
                    q_j = roundf(x_j * id)                         in -127..127   w = d q
    Q4_0  4.5 bpw   M = the x_j of largest |x_j| (the first one)   d = M / -8     id = 1/d
                    q_j = min(15, trunc(x_j * id + 8.5))           in 0..15       w = d (q - 8)
    Q5_0  5.5 bpw   d = M / -16,  q_j = min(31, trunc(x_j * id + 16.5))           w = d (q - 16)
    Q4_1  5 bpw     lo = min x_j, hi = max x_j,  d = (hi - lo) / 15,  id = 1/d
                    q_j = min(15, trunc((x_j - lo) * id + 0.5))    in 0..15       w = d q + m, m = lo
    Q5_1  6 bpw     d = (hi - lo) / 31,  q_j = trunc((x_j - lo) * id + 0.5)       in 0..31

``trunc(v + 0.5)`` rounds to nearest for ``v >= 0``. ``d`` and ``m`` are
stored as IEEE halves (``FP32_TO_FP16``: nearest even), but the quants are
computed with the float32 ``d``, as ggml does. Bits per weight count the scale
bytes: a Q4_0 block is 2 + 16 = 18 bytes for 32 weights, ``18 * 8 / 32 = 4.5``.

Q4_0 and Q5_0 are *symmetric* (zero maps to zero); dividing by the signed
extreme ``M`` (not ``|M|``) sends ``M`` to ``q = 0``, i.e. ``-8 d = M``, so
the extreme is stored exactly and the unused level sits on the other side.
Q4_1 and Q5_1 are *asymmetric*: their grid spans ``[lo, hi]``.

The float types are one value per "block": F32 (the bits), F16 (nearest even,
overflow to inf) and BF16 (``float_formats.fp32_to_bf16_bits``).

The K-quants Q4_K (4.5 bpw) and Q6_K (6.5625 bpw) quantise super-blocks of 256
weights, with a small search for each sub-block's scale (their section below
has the formulas); most published GGUF files use them.

:func:`quantize` runs a Numba kernel, parallel over rows;
:func:`quantize_reference` is the readable numpy version (one ``quantize_blocks_*``
function per format; not the K-quants). The tests check them against gguf-py
and against ggml's own compiled ``quantize_row_*_ref``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..foundation.errors import ConfigError, UnsupportedTypeError
from ..foundation.ggml_types import BLOCK_GEOMETRY, QK_K, GGMLType
from . import float_formats as ff
from .dequant import dequantize
from .kquants import scale_min
from .q8 import round_f16, roundf

QK = 32  # weights per block of the legacy types


# -- numpy references: (n_blocks, 32) float32 -> (n_blocks, type_size) uint8 ---------------------------
def f16_bytes(v: np.ndarray) -> np.ndarray:
    """``(n,) float32 -> (n, 2) uint8``: little-endian IEEE halves, nearest even (ggml's FP32_TO_FP16)."""
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(v, dtype=np.float32).astype("<f2").view(np.uint8).reshape(-1, 2)


def signed_absmax(blocks: np.ndarray) -> np.ndarray:
    """``(n, 32) -> (n,)``: in each block the value of largest magnitude, sign kept (the first if tied)."""
    imax = np.abs(blocks).argmax(axis=1)
    return blocks[np.arange(blocks.shape[0]), imax]


def inverse(d: np.ndarray) -> np.ndarray:
    """``1/d`` in float32, and 0 where ``d == 0`` (ggml's ``id = d ? 1.0f/d : 0.0f``)."""
    with np.errstate(divide="ignore"):
        return np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """``(n, 32)`` quants -> ``(n, 16) uint8``: low 4 bits of weights 0..15 | those of 16..31 << 4."""
    q = q.astype(np.uint8)
    return (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)


def pack_high_bits(q: np.ndarray) -> np.ndarray:
    """``(n, 32)`` 5-bit quants -> ``(n, 4) uint8``: bit 4 of weight j at bit j of a little-endian u32."""
    bits = ((q.astype(np.uint32) >> 4) & 1) << np.arange(32, dtype=np.uint32)
    return bits.sum(axis=1, dtype=np.uint32).astype("<u4").view(np.uint8).reshape(-1, 4)


def quantize_blocks_q8_0(blocks: np.ndarray) -> np.ndarray:
    """``(n, 32) float32 -> (n, 34) uint8``: d = max|x| / 127, q = roundf(x / d)."""
    d = np.abs(blocks).max(axis=1) / np.float32(127)  # (n,)
    q = roundf(blocks * inverse(d)[:, None]).astype(np.int8)  # (n, 32) in -127..127
    return np.concatenate([f16_bytes(d), q.view(np.uint8)], axis=1)


def quantize_blocks_q4_0(blocks: np.ndarray) -> np.ndarray:
    """``(n, 32) float32 -> (n, 18) uint8``: d = M / -8, q = min(15, trunc(x / d + 8.5))."""
    d = signed_absmax(blocks) / np.float32(-8)  # (n,)
    q = np.minimum(15, np.trunc(blocks * inverse(d)[:, None] + np.float32(8.5)))  # (n, 32) in 0..15
    return np.concatenate([f16_bytes(d), pack_nibbles(q)], axis=1)


def quantize_blocks_q5_0(blocks: np.ndarray) -> np.ndarray:
    """``(n, 32) float32 -> (n, 22) uint8``: d = M / -16, q = min(31, trunc(x / d + 16.5))."""
    d = signed_absmax(blocks) / np.float32(-16)
    q = np.minimum(31, np.trunc(blocks * inverse(d)[:, None] + np.float32(16.5)))  # in 0..31
    return np.concatenate([f16_bytes(d), pack_high_bits(q), pack_nibbles(q)], axis=1)


def quantize_blocks_q4_1(blocks: np.ndarray) -> np.ndarray:
    """``(n, 32) float32 -> (n, 20) uint8``: d = (hi - lo) / 15, m = lo, q = min(15, trunc((x - lo) / d + 0.5))."""
    lo, hi = blocks.min(axis=1), blocks.max(axis=1)  # (n,)
    d = (hi - lo) / np.float32(15)
    q = np.minimum(15, np.trunc((blocks - lo[:, None]) * inverse(d)[:, None] + np.float32(0.5)))
    return np.concatenate([f16_bytes(d), f16_bytes(lo), pack_nibbles(q)], axis=1)


def quantize_blocks_q5_1(blocks: np.ndarray) -> np.ndarray:
    """``(n, 32) float32 -> (n, 24) uint8``: d = (hi - lo) / 31, m = lo, q = trunc((x - lo) / d + 0.5).

    No clamp (as in ggml): ``(x - lo) * id <= 31`` up to a rounding, so ``q <= 31``.
    """
    lo, hi = blocks.min(axis=1), blocks.max(axis=1)
    d = (hi - lo) / np.float32(31)
    q = np.trunc((blocks - lo[:, None]) * inverse(d)[:, None] + np.float32(0.5))
    return np.concatenate([f16_bytes(d), f16_bytes(lo), pack_high_bits(q), pack_nibbles(q)], axis=1)


def quantize_f32(values: np.ndarray) -> np.ndarray:
    """``(n, 1) float32 -> (n, 4) uint8``: the bits."""
    return np.ascontiguousarray(values, dtype="<f4").view(np.uint8)


def quantize_f16(values: np.ndarray) -> np.ndarray:
    """``(n, 1) float32 -> (n, 2) uint8``: nearest half, ties to even, too large -> inf."""
    return f16_bytes(values[:, 0])


def quantize_bf16(values: np.ndarray) -> np.ndarray:
    """``(n, 1) float32 -> (n, 2) uint8``: ggml's ``ggml_compute_fp32_to_bf16`` (nearest even)."""
    return ff.fp32_to_bf16_bits(values[:, 0]).astype("<u2").view(np.uint8).reshape(-1, 2)


REFERENCE = {
    GGMLType.F32: quantize_f32,
    GGMLType.F16: quantize_f16,
    GGMLType.BF16: quantize_bf16,
    GGMLType.Q4_0: quantize_blocks_q4_0,
    GGMLType.Q4_1: quantize_blocks_q4_1,
    GGMLType.Q5_0: quantize_blocks_q5_0,
    GGMLType.Q5_1: quantize_blocks_q5_1,
    GGMLType.Q8_0: quantize_blocks_q8_0,
}

KQUANT_TYPES = (GGMLType.Q4_K, GGMLType.Q6_K)  # Numba only (ggml's search loops, see below)
QUANTIZE_TYPES: tuple[GGMLType, ...] = tuple(REFERENCE) + KQUANT_TYPES


def bits_per_weight(qtype) -> float:
    """Storage per weight, scales included: ``8 * type_size / block_size`` (Q4_0: 8 * 18 / 32 = 4.5)."""
    try:
        block, size = BLOCK_GEOMETRY[GGMLType(int(qtype))]
    except (ValueError, KeyError):
        raise UnsupportedTypeError(f"no block geometry for ggml type {qtype!r}") from None
    return 8 * size / block


# -- Numba: one row at a time ---------------------------------------------------------------------------
# x: (n_cols,) float32; out: (n_cols / 32 * type_size,) uint8. No fastmath: x * id + 8.5 must be
# rounded twice (no FMA), as in ggml's C, to give its bytes.
@njit(cache=True, inline="always")
def f16_bits(v):
    """float32 ``v`` -> the uint16 bits of the nearest IEEE half (ties to even, overflow to inf).

    The value comes from ``q8.round_f16``; its bits are sign | exponent + 15 | 10-bit mantissa
    (subnormals: ``|h| / 2^-24``), exact in float64. NaN -> 0x7E00 (the quiet NaN; payload dropped).
    """
    h = np.float64(round_f16(v))
    sign = 0x8000 if math.copysign(1.0, h) < 0 else 0
    a = abs(h)
    if a != a:
        return 0x7E00 | sign
    if a == math.inf:
        return 0x7C00 | sign
    if a < 6.103515625e-05:  # below 2^-14: subnormal, mantissa counts units of 2^-24
        return sign | int(a * 16777216.0)
    m, e = math.frexp(a)  # a = m 2^e, 0.5 <= m < 1, so a = (2m) 2^(e - 1)
    return sign | ((e + 14) << 10) | int((2.0 * m - 1.0) * 1024.0)


@njit(cache=True, inline="always")
def put_f16(out, o, v):
    """Write ``v`` as a little-endian half at byte ``o`` of ``out``."""
    b = f16_bits(v)
    out[o] = b & 0xFF
    out[o + 1] = b >> 8


@njit(cache=True, inline="always")
def put_u32(out, o, v):
    """Write the uint32 ``v`` little-endian at byte ``o`` of ``out``."""
    for k in range(4):
        out[o + k] = (v >> np.uint32(8 * k)) & np.uint32(0xFF)


@njit(cache=True, inline="always")
def roundf_scalar(v):
    """C's ``roundf`` of a float32: nearest, halves away from zero (exact in float64)."""
    a = math.floor(abs(np.float64(v)) + 0.5)
    return -a if v < 0 else a


@njit(cache=True, nogil=True)
def row_q8_0(x, out):
    for ib in range(x.shape[0] // QK):
        xo, o = ib * QK, ib * 34
        amax = np.float32(0)
        for j in range(QK):
            amax = max(amax, abs(x[xo + j]))
        d = amax / np.float32(127)
        inv = np.float32(1) / d if d != 0 else np.float32(0)
        put_f16(out, o, d)
        for j in range(QK):
            out[o + 2 + j] = np.int32(roundf_scalar(x[xo + j] * inv)) & 0xFF


@njit(cache=True, inline="always")
def signed_absmax_block(x, xo):
    """The value of largest magnitude in ``x[xo:xo + 32]`` (the first if tied), sign kept."""
    amax = np.float32(0)
    m = np.float32(0)
    for j in range(QK):
        a = abs(x[xo + j])
        if amax < a:
            amax = a
            m = x[xo + j]
    return m


@njit(cache=True, inline="always")
def min_max_block(x, xo):
    lo = x[xo]
    hi = x[xo]
    for j in range(1, QK):
        lo = min(lo, x[xo + j])
        hi = max(hi, x[xo + j])
    return lo, hi


@njit(cache=True, nogil=True)
def row_symmetric(x, out, bits):
    """Q4_0 (``bits = 4``) or Q5_0 (``bits = 5``): d = M / -2^(bits-1), w = d (q - 2^(bits-1))."""
    half_range = np.float32(1 << (bits - 1))  # 8 or 16
    qmax = (1 << bits) - 1  # 15 or 31
    size = 18 if bits == 4 else 22
    qs = 2 if bits == 4 else 6  # offset of the nibbles (Q5_0: after qh[4])
    for ib in range(x.shape[0] // QK):
        xo, o = ib * QK, ib * size
        d = signed_absmax_block(x, xo) / -half_range
        inv = np.float32(1) / d if d != 0 else np.float32(0)
        put_f16(out, o, d)
        qh = np.uint32(0)
        for j in range(QK // 2):
            q0 = min(qmax, np.int32(x[xo + j] * inv + (half_range + np.float32(0.5))))
            q1 = min(qmax, np.int32(x[xo + j + 16] * inv + (half_range + np.float32(0.5))))
            out[o + qs + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4)
            qh |= np.uint32((q0 >> 4) & 1) << np.uint32(j)
            qh |= np.uint32((q1 >> 4) & 1) << np.uint32(j + 16)
        if bits == 5:
            put_u32(out, o + 2, qh)


@njit(cache=True, nogil=True)
def row_asymmetric(x, out, bits):
    """Q4_1 (``bits = 4``) or Q5_1 (``bits = 5``): d = (hi - lo) / (2^bits - 1), m = lo, w = d q + m."""
    qmax = (1 << bits) - 1
    size = 20 if bits == 4 else 24
    qs = 4 if bits == 4 else 8
    for ib in range(x.shape[0] // QK):
        xo, o = ib * QK, ib * size
        lo, hi = min_max_block(x, xo)
        d = (hi - lo) / np.float32(qmax)
        inv = np.float32(1) / d if d != 0 else np.float32(0)
        put_f16(out, o, d)
        put_f16(out, o + 2, lo)
        qh = np.uint32(0)
        for j in range(QK // 2):
            q0 = np.int32((x[xo + j] - lo) * inv + np.float32(0.5))
            q1 = np.int32((x[xo + j + 16] - lo) * inv + np.float32(0.5))
            if bits == 4:  # ggml clamps Q4_1 to 15; its Q5_1 has no clamp (q <= 31 anyway)
                q0, q1 = min(q0, 15), min(q1, 15)
            out[o + qs + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4)
            qh |= np.uint32((q0 >> 4) & 1) << np.uint32(j)
            qh |= np.uint32((q1 >> 4) & 1) << np.uint32(j + 16)
        if bits == 5:
            put_u32(out, o + 4, qh)


@njit(cache=True, nogil=True)
def row_bf16(x, out):
    """ggml's ``ggml_compute_fp32_to_bf16``: round the float32 bits to their top 16, nearest even."""
    u = x.view(np.uint32)
    for i in range(x.shape[0]):
        if (u[i] & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):  # NaN: keep it quiet
            b = (u[i] >> np.uint32(16)) | np.uint32(64)
        else:  # finite or inf: + 0x7fff + lsb cannot pass 2^32
            b = (u[i] + np.uint32(0x7FFF) + ((u[i] >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        out[2 * i] = b & np.uint32(0xFF)
        out[2 * i + 1] = b >> np.uint32(8)


# -- K-quants: Q4_K and Q6_K (Numba only; their reference is ggml's C, see the tests) ------------------
# A super-block of QK_K = 256 weights has sub-blocks with their own float scale, found by a small
# search, then those scales are themselves quantised to 6 bits (Q4_K) or 8 bits (Q6_K) against one
# f16 super-scale. Float32 throughout, in ggml's order (its loops are sequential sums: no reordering).
#
# Q4_K (quantize_row_q4_K_ref), 8 sub-blocks of 32, w = (d sc_s) q - (dmin mn_s), q in 0..15:
#   per sub-block: weights w_i = sqrt(sum x^2 / 32) + |x_i|; (scale_s, min_s) = make_qkx2_quants,
#   a weighted least-squares fit of x ~ scale * q - min over 21 trial grids;
#   d = f16(max scale_s / 63), sc_s = nearest(63 scale_s / max scale_s); same for dmin, mn_s;
#   then q_i = clamp(nearest((x_i + dmin mn_s) / (d sc_s)), 0, 15) with the stored (rounded) scales.
# Q6_K (quantize_row_q6_K_ref), 16 sub-blocks of 16, w = (d sc_s)(q - 32), q in 0..63:
#   per sub-block: scale_s = make_qx_quants (symmetric, weights x^2, 19 trial grids);
#   d = f16(max_scale / -128) (max_scale: the scale of largest |.|), sc_s = min(127, nearest(-128 scale_s / max_scale));
#   then q_i = clamp(nearest(x_i / (d sc_s)), -32, 31) + 32.
GROUP_MAX_EPS = np.float32(1e-15)


@njit(cache=True, inline="always")
def nearest_int(v):
    """ggml's ``nearest_int``: float32 ``v`` (``|v| < 2^22``) to the nearest integer, ties to even.

    Adding ``1.5 * 2^23`` leaves the integer part in the low mantissa bits (one float32 rounding).
    """
    t = v + np.float32(12582912.0)
    return np.int32(t - np.float32(12582912.0))


@njit(cache=True, inline="always")
def clamp(v, lo, hi):
    return max(lo, min(hi, v))


@njit(cache=True, nogil=True)
def make_qkx2_quants(x, weights, L, Laux, nmax, rmin, rdelta, nstep):
    """Fit ``x (n,) ~ scale * L - min`` with ``L`` in 0..nmax, minimising sum w (error)^2 (ggml, use_mad=false).

    Start from the min/max grid, then try ``nstep + 1`` grids ``iscale = (nmax + rmin + rdelta k) / (max - min)``
    and for each the closed-form weighted least-squares scale and min. Writes ``L``; returns ``(scale, -min)``.
    """
    n = x.shape[0]
    fmin = x[0]
    fmax = x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        fmin = min(fmin, x[i])
        fmax = max(fmax, x[i])
        sum_w += weights[i]
        sum_x += weights[i] * x[i]
    if fmin > 0:
        fmin = np.float32(0)
    if fmax == fmin:
        for i in range(n):
            L[i] = 0
        return np.float32(0), -fmin
    fnmax = np.float32(nmax)
    iscale = fnmax / (fmax - fmin)
    scale = np.float32(1) / iscale
    best_error = np.float32(0)
    for i in range(n):
        L[i] = clamp(nearest_int(iscale * (x[i] - fmin)), 0, nmax)
        diff = scale * np.float32(L[i]) + fmin - x[i]
        best_error += weights[i] * (diff * diff)
    for k in range(nstep + 1):
        iscale = (rmin + rdelta * np.float32(k) + fnmax) / (fmax - fmin)
        sum_l = np.float32(0)
        sum_l2 = np.float32(0)
        sum_xl = np.float32(0)
        for i in range(n):
            Laux[i] = clamp(nearest_int(iscale * (x[i] - fmin)), 0, nmax)
            wl = weights[i] * np.float32(Laux[i])
            sum_l += wl
            sum_l2 += wl * np.float32(Laux[i])
            sum_xl += wl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = np.float32(0)
                this_scale = sum_xl / sum_l2
            cur_error = np.float32(0)
            for i in range(n):
                diff = this_scale * np.float32(Laux[i]) + this_min - x[i]
                cur_error += weights[i] * (diff * diff)
            if cur_error < best_error:
                for i in range(n):
                    L[i] = Laux[i]
                best_error = cur_error
                scale = this_scale
                fmin = this_min
    return scale, -fmin


@njit(cache=True, nogil=True)
def make_qx_quants(x, L, nmax):
    """Symmetric fit ``x (n,) ~ scale * (L - nmax)``, ``L`` in 0..2 nmax - 1, weights ``x^2`` (ggml, rmse_type=1).

    ``iscale = -nmax / M`` (M: the x of largest |x|), then 18 nearby grids ``-(nmax + 0.1 k) / M``,
    keeping the least-squares scale ``sum w x l / sum w l^2`` of the best one. Writes ``L``; returns the scale.
    """
    n = x.shape[0]
    amax = np.float32(0)
    fmax = np.float32(0)
    for i in range(n):
        if abs(x[i]) > amax:
            amax = abs(x[i])
            fmax = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return np.float32(0)
    fnmax = np.float32(nmax)
    iscale = -fnmax / fmax
    sumlx = np.float32(0)
    suml2 = np.float32(0)
    for i in range(n):
        l = clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1)
        L[i] = l + nmax
        w = x[i] * x[i]
        sumlx += w * x[i] * np.float32(l)
        suml2 += w * np.float32(l) * np.float32(l)
    scale = sumlx / suml2 if suml2 != 0 else np.float32(0)
    best = scale * sumlx
    for k in range(-9, 10):
        if k == 0:
            continue
        iscale = -(fnmax + np.float32(0.1) * np.float32(k)) / fmax
        sumlx = np.float32(0)
        suml2 = np.float32(0)
        for i in range(n):
            l = clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1)
            w = x[i] * x[i]
            sumlx += w * x[i] * np.float32(l)
            suml2 += w * np.float32(l) * np.float32(l)
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[i] = nmax + clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1)
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit(cache=True, inline="always")
def put_scale_min_k4(out, o, j, ls, lm):
    """Pack the 6-bit scale ``ls`` and min ``lm`` of sub-block ``j`` into the 12 bytes at ``out[o:]``
    (the inverse of ``kquants.scale_min``; bytes ``j - 4`` and ``j`` must already hold sub-block
    ``j - 4``'s values when ``j >= 4``)."""
    if j < 4:
        out[o + j] = ls
        out[o + j + 4] = lm
    else:
        out[o + j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
        out[o + j - 4] |= (ls >> 4) << 6
        out[o + j] |= (lm >> 4) << 6


@njit(cache=True, nogil=True)
def row_q4_K(x, out):
    L = np.empty(QK_K, np.uint8)  # quants of the super-block, 0..15
    Laux = np.empty(32, np.uint8)
    weights = np.empty(32, np.float32)
    scales = np.empty(8, np.float32)
    mins = np.empty(8, np.float32)
    for ib in range(x.shape[0] // QK_K):
        xo, o = ib * QK_K, ib * 144
        max_scale = np.float32(0)
        max_min = np.float32(0)
        for j in range(8):
            xs = x[xo + 32 * j: xo + 32 * j + 32]
            sum_x2 = np.float32(0)
            for i in range(32):
                sum_x2 += xs[i] * xs[i]
            av_x = np.sqrt(sum_x2 / np.float32(32))
            for i in range(32):
                weights[i] = av_x + abs(xs[i])
            scales[j], mins[j] = make_qkx2_quants(xs, weights, L[32 * j: 32 * j + 32], Laux, 15,
                                                  np.float32(-1.0), np.float32(0.1), 20)
            max_scale = max(max_scale, scales[j])
            max_min = max(max_min, mins[j])
        inv_scale = np.float32(63) / max_scale if max_scale > 0 else np.float32(0)
        inv_min = np.float32(63) / max_min if max_min > 0 else np.float32(0)
        for k in range(12):
            out[o + 4 + k] = 0
        for j in range(8):
            ls = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)  # C: uint8_t, then MIN(63, .)
            lm = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
            put_scale_min_k4(out, o + 4, j, ls, lm)
        d_f32 = max_scale / np.float32(63)
        dmin_f32 = max_min / np.float32(63)
        put_f16(out, o, d_f32)
        put_f16(out, o + 2, dmin_f32)
        d, dmin = round_f16(d_f32), round_f16(dmin_f32)  # the stored values
        for j in range(8):
            sc, mn = scale_min(out, o + 4, j)
            dj = d * np.float32(sc)
            if dj == 0:
                continue  # keep make_qkx2_quants's L
            dm = dmin * np.float32(mn)
            for i in range(32):
                L[32 * j + i] = clamp(nearest_int((x[xo + 32 * j + i] + dm) / dj), 0, 15)
        for c in range(4):  # qs[32 c + l] = L[64 c + l] | L[64 c + 32 + l] << 4
            for l in range(32):
                out[o + 16 + 32 * c + l] = L[64 * c + l] | (L[64 * c + 32 + l] << 4)


@njit(cache=True, nogil=True)
def row_q6_K(x, out):
    L = np.empty(QK_K, np.uint8)  # quants of the super-block, 0..63
    scales = np.empty(16, np.float32)
    for ib in range(x.shape[0] // QK_K):
        xo, o = ib * QK_K, ib * 210
        max_scale = np.float32(0)
        max_abs_scale = np.float32(0)
        for s in range(16):
            scales[s] = make_qx_quants(x[xo + 16 * s: xo + 16 * s + 16], L[16 * s: 16 * s + 16], 32)
            if abs(scales[s]) > max_abs_scale:
                max_abs_scale = abs(scales[s])
                max_scale = scales[s]
        if max_abs_scale < GROUP_MAX_EPS:  # an all-zero super-block: all bytes 0
            for k in range(210):
                out[o + k] = 0
            continue
        iscale = np.float32(-128) / max_scale
        d_f32 = np.float32(1) / iscale
        put_f16(out, o + 208, d_f32)
        d = round_f16(d_f32)
        for s in range(16):
            sc = min(127, nearest_int(iscale * scales[s]))  # in -128..127
            out[o + 192 + s] = sc & 0xFF
            ds = d * np.float32(sc)
            if ds == 0:
                continue  # keep make_qx_quants's L
            for i in range(16):
                L[16 * s + i] = clamp(nearest_int(x[xo + 16 * s + i] / ds), -32, 31) + 32
        for h in range(2):  # weights 128 h + 32 k + l, k < 4: low nibbles in ql, top 2 bits in qh
            for l in range(32):
                q0, q1, q2, q3 = (L[128 * h + l], L[128 * h + 32 + l], L[128 * h + 64 + l], L[128 * h + 96 + l])
                out[o + 64 * h + l] = (q0 & 0xF) | ((q2 & 0xF) << 4)
                out[o + 64 * h + 32 + l] = (q1 & 0xF) | ((q3 & 0xF) << 4)
                out[o + 128 + 32 * h + l] = (q0 >> 4) | ((q1 >> 4) << 2) | ((q2 >> 4) << 4) | ((q3 >> 4) << 6)


# One kernel per type, parallel over rows: x (n_rows, n_cols) float32 -> out (n_rows, row_bytes) uint8.
# (Separate kernels: a notebook compiles only the types it uses.)
@njit(cache=True, parallel=True, nogil=True)
def quantize_rows_q4_0(x, out):
    for r in prange(x.shape[0]):
        row_symmetric(x[r], out[r], 4)


@njit(cache=True, parallel=True, nogil=True)
def quantize_rows_q5_0(x, out):
    for r in prange(x.shape[0]):
        row_symmetric(x[r], out[r], 5)


@njit(cache=True, parallel=True, nogil=True)
def quantize_rows_q4_1(x, out):
    for r in prange(x.shape[0]):
        row_asymmetric(x[r], out[r], 4)


@njit(cache=True, parallel=True, nogil=True)
def quantize_rows_q5_1(x, out):
    for r in prange(x.shape[0]):
        row_asymmetric(x[r], out[r], 5)


@njit(cache=True, parallel=True, nogil=True)
def quantize_rows_q8_0(x, out):
    for r in prange(x.shape[0]):
        row_q8_0(x[r], out[r])


@njit(cache=True, parallel=True, nogil=True)
def quantize_rows_q4_K(x, out):
    for r in prange(x.shape[0]):
        row_q4_K(x[r], out[r])


@njit(cache=True, parallel=True, nogil=True)
def quantize_rows_q6_K(x, out):
    for r in prange(x.shape[0]):
        row_q6_K(x[r], out[r])


@njit(cache=True, parallel=True, nogil=True)
def quantize_rows_bf16(x, out):
    for r in prange(x.shape[0]):
        row_bf16(x[r], out[r])


KERNELS = {
    GGMLType.Q4_0: quantize_rows_q4_0, GGMLType.Q5_0: quantize_rows_q5_0, GGMLType.Q4_1: quantize_rows_q4_1,
    GGMLType.Q5_1: quantize_rows_q5_1, GGMLType.Q8_0: quantize_rows_q8_0, GGMLType.Q4_K: quantize_rows_q4_K,
    GGMLType.Q6_K: quantize_rows_q6_K, GGMLType.BF16: quantize_rows_bf16,
}


# -- public ---------------------------------------------------------------------------------------------
def check_quantize_type(qtype) -> GGMLType:
    """``qtype`` as a :class:`GGMLType` that :func:`quantize` writes, or :class:`UnsupportedTypeError`."""
    try:
        t = GGMLType(int(qtype))
    except (ValueError, TypeError):
        raise UnsupportedTypeError(f"unknown ggml type {qtype!r}") from None
    if t not in QUANTIZE_TYPES:
        raise UnsupportedTypeError(
            f"quantize cannot write {t.name} (supported: {', '.join(x.name for x in QUANTIZE_TYPES)})")
    return t


def _rows(x: np.ndarray, t: GGMLType) -> tuple[np.ndarray, tuple[int, ...]]:
    """``x (..., n_cols)`` as C-contiguous float32 ``(n_rows, n_cols)``, checked against ``t``'s block size."""
    x = np.asarray(x)
    if x.ndim == 0:
        raise ConfigError("quantize expects rows of shape (..., n_cols), got a scalar")
    if not np.issubdtype(x.dtype, np.floating):
        raise ConfigError(f"quantize expects float weights, got dtype {x.dtype}")
    block, _ = BLOCK_GEOMETRY[t]
    if x.shape[-1] % block:
        raise ConfigError(f"{t.name} rows must hold a multiple of {block} values, got {x.shape[-1]}")
    return np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32), x.shape


def quantize(x: np.ndarray, qtype) -> np.ndarray:
    """``x: (..., n_cols) float32 -> (..., row_bytes) uint8``: GGUF blocks of type ``qtype`` (Numba).

    ``row_bytes = n_cols / block_size * type_size``. Example: a ``(576, 1536)``
    matrix in Q4_0 gives ``(576, 864)`` bytes (48 blocks of 18 bytes per row).
    """
    t = check_quantize_type(qtype)
    rows, shape = _rows(x, t)
    block, size = BLOCK_GEOMETRY[t]
    out = np.empty((rows.shape[0], rows.shape[1] // block * size), np.uint8)
    if t == GGMLType.F32:
        out[:] = rows.view(np.uint8)
    elif t == GGMLType.F16:  # numpy's conversion is ggml's (nearest even, overflow to inf), and fast
        out[:] = f16_bytes(rows.reshape(-1)).reshape(out.shape)
    elif out.size:
        KERNELS[t](rows, out)
    return out.reshape(*shape[:-1], out.shape[1])


def quantize_reference(x: np.ndarray, qtype) -> np.ndarray:
    """Same as :func:`quantize`, with the readable numpy code of each format (``quantize_blocks_*``).

    Not for the K-quants (:data:`KQUANT_TYPES`): their scale search is a scalar loop, written once in Numba.
    """
    t = check_quantize_type(qtype)
    if t not in REFERENCE:
        raise UnsupportedTypeError(f"quantize_reference has no numpy version of {t.name}; use quantize")
    rows, shape = _rows(x, t)
    block, size = BLOCK_GEOMETRY[t]
    blocks = rows.reshape(-1, block)  # (n_rows * n_blocks, block_size) float32
    with np.errstate(invalid="ignore", over="ignore"):
        out = REFERENCE[t](blocks) if blocks.shape[0] else np.empty((0, size), np.uint8)
    return out.reshape(*shape[:-1], rows.shape[1] // block * size)


def round_trip(x: np.ndarray, qtype) -> np.ndarray:
    """``dequantize(quantize(x, qtype), qtype)``: the float32 weights a ``qtype`` file would hold for ``x``."""
    return dequantize(quantize(x, qtype), check_quantize_type(qtype))
