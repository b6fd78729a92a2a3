"""8-bit activation quantisers: ggml's Q8_0, Q8_1 and Q8_K (the ``vec_dot_type`` of the weights).

Before a quantised dot product, llama.cpp's CPU backend quantises the activations
``x`` block by block, then multiplies integers. Per block of ``QK`` values::

    Q8_0, Q8_1 (QK = 32)                    Q8_K (QK_K = 256)
    amax = max |x_j|                        max  = the x_j of largest |x_j| (first one)
    d    = amax / 127          (float32)    iscale = -127 / max, q_j = nearest_int(iscale x_j)
    id   = 1/d if d else 0                  d    = 1 / iscale   (float32, kept as float32)
    q_j  = roundf(x_j * id)    (int8)       bsums[g] = sum of q over each 16 values (int16)
    stored d: f16(d)                        (all zero if amax == 0)
    Q8_1 also: s = f16(d * sum_j q_j)       # unrounded d times the integer sum

``roundf`` rounds halves away from zero; ``nearest_int`` (the 1.5*2^23 trick)
rounds halves to even. Block layouts::

    block_q8_0  34 bytes | d f16 | qs[32] int8 |
    block_q8_1  36 bytes | d f16 | s f16 | qs[32] int8 |      (gguf-py's table still says 40)
    block_q8_K 292 bytes | d f32 | qs[256] int8 | bsums[16] int16 |

``variant="ref"`` is ggml's portable reference (``quantize_row_q8_0_ref`` /
``quantize_row_q8_1_ref``), which the generic CPU code uses. ``variant="x86"``
mirrors the AVX / AVX2 ``quantize_row_q8_0`` / ``quantize_row_q8_1`` that an
x86 build of llama.cpp actually runs: ``id = 127 / amax`` (not ``1 / d``) and
``_mm256_round_ps(_MM_ROUND_NEAREST)`` (halves to even). The two differ in the
last bit of ``id`` and so, rarely, by one in a ``q``. Q8_K has a single variant.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..foundation.errors import ConfigError
from ..foundation.ggml_types import QK_K
from . import q8_simd
from .half import to_f16

QK8_0 = QK8_1 = 32
SIZEOF_BLOCK_Q8_0 = 2 + QK8_0
SIZEOF_BLOCK_Q8_1 = 2 + 2 + QK8_1
SIZEOF_BLOCK_Q8_K = 4 + QK_K + 2 * (QK_K // 16)
VARIANTS = ("ref", "x86")


def _blocks(x: np.ndarray, qk: int, what: str) -> tuple[np.ndarray, tuple[int, ...]]:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] % qk:
        raise ConfigError(f"{what}: the last dimension ({x.shape[-1] if x.ndim else 'scalar'}) "
                          f"must be a multiple of {qk}")
    return x.reshape(-1, qk), x.shape


def _f16(v: np.ndarray) -> np.ndarray:
    """float32 -> float16 as ggml's FP32_TO_FP16 (nearest even; too large -> inf, as the hardware does)."""
    with np.errstate(over="ignore"):
        return v.astype("<f2")


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ConfigError(f"unknown q8 variant {variant!r}; expected one of {VARIANTS}")


def roundf(v: np.ndarray) -> np.ndarray:
    """C's ``roundf``: nearest integer, halves away from zero (exact: computed in float64)."""
    v = v.astype(np.float64)
    return np.copysign(np.floor(np.abs(v) + 0.5), v)


def _q8_scale_and_quants(blocks: np.ndarray, variant: str) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 32) float32 -> d (n,) float32 (unrounded), q (n, 32) int8``."""
    amax = np.abs(blocks).max(axis=1)  # (n,) float32
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        if variant == "ref":
            inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
            q = roundf(blocks * inv[:, None])
        else:
            inv = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
            with np.errstate(invalid="ignore", over="ignore"):
                q = np.rint(blocks * inv[:, None])
            # amax < 127/FLT_MAX makes inv = inf: _mm256_cvtps_epi32 turns inf / nan into INT_MIN,
            # which the packs saturate to -128 (and Q8_1's int32 sum wraps: see quantize_q8_1)
            q = np.where(np.isfinite(q), q, -128.0)
    return d, q.astype(np.int8)


def quantize_q8_0(x: np.ndarray, variant: str = "ref") -> np.ndarray:
    """``x (..., n) float32 -> (..., n/32*34) uint8``: block_q8_0 bytes (numpy reference)."""
    _check_variant(variant)
    blocks, shape = _blocks(x, QK8_0, "quantize_q8_0")
    d, q = _q8_scale_and_quants(blocks, variant)
    out = np.empty((blocks.shape[0], SIZEOF_BLOCK_Q8_0), np.uint8)
    out[:, 0:2] = _f16(d).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.view(np.uint8)
    return out.reshape(*shape[:-1], -1)


def quantize_q8_1(x: np.ndarray, variant: str = "ref") -> np.ndarray:
    """``x (..., n) float32 -> (..., n/32*36) uint8``: block_q8_1 bytes (numpy reference)."""
    _check_variant(variant)
    blocks, shape = _blocks(x, QK8_1, "quantize_q8_1")
    d, q = _q8_scale_and_quants(blocks, variant)
    qi = q.astype(np.int64)
    if variant == "x86":  # the AVX2 sum is of the int32 conversions (INT_MIN for -128 from inf), wrapping
        qi = np.where(q == -128, -(2 ** 31), qi)
    s = ((qi.sum(axis=1) + 2 ** 31) % 2 ** 32 - 2 ** 31).astype(np.float32) * d  # float32: sum * d
    out = np.empty((blocks.shape[0], SIZEOF_BLOCK_Q8_1), np.uint8)
    out[:, 0:2] = _f16(d).view(np.uint8).reshape(-1, 2)
    out[:, 2:4] = _f16(s).view(np.uint8).reshape(-1, 2)
    out[:, 4:] = q.view(np.uint8)
    return out.reshape(*shape[:-1], -1)


def quantize_q8_K(x: np.ndarray) -> np.ndarray:
    """``x (..., n) float32 -> (..., n/256*292) uint8``: block_q8_K bytes (numpy reference)."""
    blocks, shape = _blocks(x, QK_K, "quantize_q8_K")
    n = blocks.shape[0]
    imax = np.abs(blocks).argmax(axis=1)  # first index of the largest |x|
    vmax = blocks[np.arange(n), imax]
    zero = np.abs(vmax) == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(zero, np.float32(0), np.float32(-127) / vmax).astype(np.float32)
        v = blocks * iscale[:, None]
        # nearest_int: ties to even; of inf / nan (|vmax| < 127/FLT_MAX: iscale = inf) it gives 0 mod 256
        q = np.where(np.isfinite(v), np.minimum(np.rint(v), 127), 0).astype(np.int8)
        d = np.where(zero, np.float32(0), np.float32(1) / iscale).astype(np.float32)
    q[zero] = 0
    bsums = q.reshape(n, QK_K // 16, 16).astype(np.int16).sum(axis=2, dtype=np.int16)
    out = np.empty((n, SIZEOF_BLOCK_Q8_K), np.uint8)
    out[:, 0:4] = d.astype("<f4").view(np.uint8).reshape(-1, 4)
    out[:, 4:4 + QK_K] = q.view(np.uint8)
    out[:, 4 + QK_K:] = bsums.astype("<i2").view(np.uint8).reshape(n, -1)
    return out.reshape(*shape[:-1], -1)


# -- byte blocks -> planes (used by the references and the tests) ------------------------
def q8_0_planes(raw: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """block_q8_0 rows ``(m, n/32*34)`` -> ``q (m, n) int8``, ``d (m, n/32) float32``."""
    b = np.ascontiguousarray(raw).reshape(-1, n // QK8_0, SIZEOF_BLOCK_Q8_0)
    d = np.ascontiguousarray(b[..., 0:2]).view("<f2")[..., 0].astype(np.float32)
    q = np.ascontiguousarray(b[..., 2:]).view(np.int8).reshape(-1, n)
    return q, d


def q8_1_planes(raw: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """block_q8_1 rows -> ``q (m, n) int8``, ``d, s (m, n/32) float32``."""
    b = np.ascontiguousarray(raw).reshape(-1, n // QK8_1, SIZEOF_BLOCK_Q8_1)
    d = np.ascontiguousarray(b[..., 0:2]).view("<f2")[..., 0].astype(np.float32)
    s = np.ascontiguousarray(b[..., 2:4]).view("<f2")[..., 0].astype(np.float32)
    q = np.ascontiguousarray(b[..., 4:]).view(np.int8).reshape(-1, n)
    return q, d, s


def q8_K_planes(raw: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """block_q8_K rows -> ``q (m, n) int8``, ``d (m, n/256) float32``, ``bsums (m, n/16) int16``."""
    b = np.ascontiguousarray(raw).reshape(-1, n // QK_K, SIZEOF_BLOCK_Q8_K)
    d = np.ascontiguousarray(b[..., 0:4]).view("<f4")[..., 0].astype(np.float32)
    q = np.ascontiguousarray(b[..., 4:4 + QK_K]).view(np.int8).reshape(-1, n)
    bsums = np.ascontiguousarray(b[..., 4 + QK_K:]).view("<i2").reshape(-1, n // 16).astype(np.int16)
    return q, d, bsums


# -- Numba: x (n_tok, n) float32 -> block-transposed planes, parallel over tokens -------------
# The matmul kernels want the quants of each token in the "lane" layout of matmul.py: value
# j = K*jj + k of group b at xT[t, jj, b*K + k] (K = lanes per group, a power of two), and the
# scales already rounded as the block bytes hold them.
@njit(cache=True, inline="always")
def _roundf(v):
    """C's roundf (halves away from zero), exact: float32 + 0.5 is exact in float64."""
    a = math.floor(abs(np.float64(v)) + 0.5)
    return -a if v < 0 else a


@njit(cache=True, nogil=True)
def round_f16(v):
    """float32 ``v`` rounded to the nearest float16 (ties to even, overflow to inf), as float32.

    Same result as numpy's / F16C's conversion (checked for all 2^32 inputs but NaN payloads):
    ``(a + c) - c`` with ``c = 2^23 * quantum`` rounds ``a`` to a multiple of the f16 quantum
    of its binade (2^-24 for f16 subnormals) in one IEEE float32 addition.
    """
    a = abs(v)
    if not a < np.float32(65520.0):  # nan, inf, or rounds past the largest half (65504)
        if a != a:
            return v
        return np.float32(np.inf) if v > 0 else np.float32(-np.inf)
    if a < np.float32(6.103515625e-05):  # below 2^-14: f16 subnormals, quantum 2^-24
        c = np.float32(0.5)
    else:
        e = math.frexp(a)[1]  # a = m 2^e, 0.5 <= m < 1: f16 quantum 2^(e - 11)
        c = np.float32(math.ldexp(1.0, e + 12))
    r = (a + c) - c
    return np.float32(math.copysign(r, v))


@njit(cache=True, inline="always")
def _abs_max_bits(xbits, t, o, n):
    """The bit pattern of ``max |x_j|`` over ``x[t, o:o+n]``, read as int32 bits.

    Non-negative floats order as their bit patterns do, so an integer max (which vectorises,
    unlike a float max with its NaN rules) finds ``amax``; a NaN counts as 0, as ggml's strict
    ``|x_j| > amax`` test skips it."""
    m = np.int32(0)
    for j in range(n):
        b = xbits[t, o + j] & np.int32(0x7FFFFFFF)
        m = max(m, b if b <= np.int32(0x7F800000) else np.int32(0))
    return m


@njit(cache=True, inline="always")
def _q8_32_token(x, xbits, t, x86, with_sum, kshift, xT, xd, xs):
    """Quantise row ``t`` of ``x`` to Q8_0 / Q8_1 into the lane layout (see q8_32_T), K = 2**kshift."""
    K = 1 << kshift
    for ib in range(x.shape[1] // 32):
        o = ib * 32
        amax = abs(x[t, o + _first_with_abs_bits(xbits, t, o, _abs_max_bits(xbits, t, o, 32))])
        d = amax / np.float32(127)
        if x86:
            inv = np.float32(127) / amax if amax != 0 else np.float32(0)
        else:
            inv = np.float32(1) / d if d != 0 else np.float32(0)
        s = 0
        for j in range(32):
            v = x[t, o + j] * inv
            qi = np.int32(np.rint(v)) if x86 else np.int32(_roundf(v))
            xT[t, j >> kshift, ib * K + (j & (K - 1))] = qi
            s += qi
        xd[t, ib] = to_f16(d)  # = round_f16(d), in one instruction
        if with_sum:
            xs[t, ib] = to_f16(np.float32(s) * d)


@njit(cache=True, inline="always")
def _first_with_abs_bits(xbits, t, o, mbits):
    """The first ``j`` with ``|x[t, o + j]|`` of bit pattern ``mbits`` (0 if none: amax = 0 or NaN only)."""
    if mbits == 0:
        return 0
    j = 0
    while xbits[t, o + j] & np.int32(0x7FFFFFFF) != mbits:
        j += 1
    return j


def _kshift(K: int) -> int:
    if K < 1 or K & (K - 1):
        raise ValueError(f"lanes per group K must be a power of two, got {K}")
    return K.bit_length() - 1


@njit(cache=True, nogil=True)
def _q8_32_T_serial(x, xbits, x86, with_sum, kshift):
    n_tok, n = x.shape
    K = 1 << kshift
    xT = np.empty((n_tok, 32 // K, n // 32 * K), np.int8)
    xd = np.empty((n_tok, n // 32), np.float32)
    xs = np.zeros((n_tok, n // 32), np.float32)
    for t in range(n_tok):
        _q8_32_token(x, xbits, t, x86, with_sum, kshift, xT, xd, xs)
    return xT, xd, xs


@njit(cache=True, parallel=True, nogil=True)
def _q8_32_T_parallel(x, xbits, x86, with_sum, kshift):
    n_tok, n = x.shape
    K = 1 << kshift
    xT = np.empty((n_tok, 32 // K, n // 32 * K), np.int8)
    xd = np.empty((n_tok, n // 32), np.float32)
    xs = np.zeros((n_tok, n // 32), np.float32)
    for t in prange(n_tok):
        _q8_32_token(x, xbits, t, x86, with_sum, kshift, xT, xd, xs)
    return xT, xd, xs


def q8_32_T(x: np.ndarray, x86: bool, with_sum: bool, K: int):
    """Q8_0 / Q8_1 of ``x (n_tok, n) float32`` (C-contiguous) -> ``xT (n_tok, 32/K, n/32*K) int8``
    (lane layout), ``xd (n_tok, n/32) float32`` = f16(d), ``xs`` = f16(d * sum q) (zeros unless
    ``with_sum``). Serial for a few tokens (a parallel launch costs more than the work)."""
    kernel = _q8_32_T_parallel if x.shape[0] >= 8 else _q8_32_T_serial
    return kernel(x, x.view(np.int32), x86, with_sum, _kshift(K))


@njit(cache=True, inline="always")
def _q8_K_token(x, xbits, t, kshift, xT, xd, bsums):
    """Quantise row ``t`` of ``x`` to Q8_K into the lane layout (see q8_K_T), K = 2**kshift."""
    K = 1 << kshift
    for ib in range(x.shape[1] // QK_K):
        o = ib * QK_K
        mbits = _abs_max_bits(xbits, t, o, QK_K)
        if mbits == 0:
            continue  # d = 0, q = 0, bsums = 0 (the arrays start zeroed)
        iscale = np.float32(-127) / x[t, o + _first_with_abs_bits(xbits, t, o, mbits)]  # ggml's `max`
        for g in range(o // 16, o // 16 + 16):
            s = 0
            for j in range(16):
                qi = min(127, np.int32(np.rint(iscale * x[t, 16 * g + j])))  # nearest_int: ties to even
                xT[t, j >> kshift, g * K + (j & (K - 1))] = qi
                s += qi
            bsums[t, g] = s
        xd[t, ib] = np.float32(1) / iscale


@njit(cache=True, nogil=True)
def _q8_K_T_serial(x, xbits, kshift):
    n_tok, n = x.shape
    K = 1 << kshift
    xT = np.zeros((n_tok, 16 // K, n // 16 * K), np.int8)
    xd = np.zeros((n_tok, n // QK_K), np.float32)
    bsums = np.zeros((n_tok, n // 16), np.int32)
    for t in range(n_tok):
        _q8_K_token(x, xbits, t, kshift, xT, xd, bsums)
    return xT, xd, bsums


@njit(cache=True, parallel=True, nogil=True)
def _q8_K_T_parallel(x, xbits, kshift):
    n_tok, n = x.shape
    K = 1 << kshift
    xT = np.zeros((n_tok, 16 // K, n // 16 * K), np.int8)
    xd = np.zeros((n_tok, n // QK_K), np.float32)
    bsums = np.zeros((n_tok, n // 16), np.int32)
    for t in prange(n_tok):
        _q8_K_token(x, xbits, t, kshift, xT, xd, bsums)
    return xT, xd, bsums


def q8_K_T(x: np.ndarray, K: int):
    """Q8_K of ``x (n_tok, n) float32`` (C-contiguous) -> ``xT (n_tok, 16/K, n/16*K) int8`` (lane
    layout, groups of 16), ``xd (n_tok, n/256) float32``, ``bsums (n_tok, n/16) int32``."""
    kernel = _q8_K_T_parallel if x.shape[0] >= 8 else _q8_K_T_serial
    return kernel(x, x.view(np.int32), _kshift(K))


def quantize_q8_32_planes(x: np.ndarray, with_sum: bool, variant: str = "ref"):
    """Q8_0 (``with_sum=False``) / Q8_1 of ``x (n_tok, n)`` with the Numba kernel, as plain planes:
    ``xq (n_tok, n) int8``, float32 ``xd`` = f16(d) and, for Q8_1, ``xs`` = f16(d * sum q), each
    ``(n_tok, n/32)``: exactly the values the block bytes of :func:`quantize_q8_0` / ``_1`` hold."""
    _check_variant(variant)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if variant == "x86" and q8_simd.AVAILABLE and x.ndim == 2 and x.shape[1] % 32 == 0:
        xq, xd, xs = q8_simd.q8_32_planes(x, with_sum)  # the same values, as vector code
        return (xq, xd, xs) if with_sum else (xq, xd)
    xT, xd, xs = q8_32_T(x, variant == "x86", with_sum, 32)  # K = 32: the lane layout is the plain one
    xq = xT.reshape(x.shape)
    return (xq, xd, xs) if with_sum else (xq, xd)


def quantize_q8_K_planes(x: np.ndarray):
    """Q8_K of ``x (n_tok, n)``: ``xq int8 (n_tok, n)``, ``xd float32 (n_tok, n/256)``,
    ``bsums int16 (n_tok, n/16)`` (:mod:`.q8_simd`'s vector code where the CPU has AVX2, else the Numba kernel)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if q8_simd.AVAILABLE and x.ndim == 2 and x.shape[1] % QK_K == 0:
        return q8_simd.q8_K_planes(x)
    xT, xd, bsums = q8_K_T(x, 16)  # K = 16: the lane layout is the plain one
    return xT.reshape(x.shape), xd, bsums.astype(np.int16)
