"""Bit-exact mirrors of ggml's element-wise maths in llama.cpp 0.3.36's x86-64 AVX2 build.

The build mirrored is the pinned one (``inference.llama_cpp_builds.PINNED_NAME``:
``-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON``, no
AVX-512), the same machine code on every x86-64 CPU with AVX2; tests/test_ggml_ops.py
holds each function here equal to ggml's own op through a one-op graph.

Each function reproduces the float32 operations of the named ggml routine, in
its order and with its fused multiply-adds (:func:`fma_f32`, the hardware FMA, equal
bit for bit to the software :func:`fma32`), so that its result is bit-identical to llama.cpp's on an AVX2 + FMA
machine. Scalar libm calls (``expf``, ``cosf``, ``sinf``, ``tanhf``) go through Numba's
``math`` functions on float32, which call the same glibc routines ggml links, and
``powf`` through :mod:`~zigllama_lib.foundation.libm` -- never numpy's float32
ufuncs, whose SIMD kernels differ per CPU (tests/test_libm.py).

* :func:`expf_ggml` -- ``ggml_v_expf`` (``ggml-cpu/vec.h``, AVX2 + FMA), the
  ARM-optimized-routines exp: ``n = round(x log2 e)`` by the ``0x1.8p23`` shifter,
  a two-step FMA reduction ``b = x - n ln2``, a degree-5 polynomial in FMAs, the
  scale ``2^n`` built in the exponent bits, with the |n| > 126 (split scale) and
  |n| > 192 (overflow to inf / underflow to 0) branches.
* :func:`silu_ggml` / :func:`swiglu_ggml` -- ``ggml_vec_silu_f32`` /
  ``ggml_vec_swiglu_f32``: each row in chunks of 8 with ``ggml_v_silu``
  (``x / (1 + v_expf(0 - x))``, times ``g`` for swiglu), the last ``n % 8`` with
  the scalar ``ggml_silu_f32`` (libm ``expf``).
* :func:`geglu_ggml` -- ``ggml_vec_geglu_f32`` with ``GGML_GELU_FP16``: GELU
  (tanh form) looked up in a table of all 65536 float16 inputs, ``x <= -10``
  gives 0 and ``x >= 10`` gives ``x``, then times ``g``. The table entry is
  ``f16(0.5 x (1 + tanhf(sqrt(2/pi) x fma(0.044715 x, x, 1))))`` -- the FMA is
  GCC's contraction of ``1.0f + GELU_COEF_A*x*x`` (equal to ggml's exported
  ``ggml_table_gelu_f16`` at every finite input, tested).
* :func:`rms_norm_ggml` -- ``ggml_compute_forward_rms_norm_f32``: float32 squares
  summed in order in a double, ``mean = (float)(sum / n)``, ``scale = 1.0f /
  sqrtf(mean + eps)``, ``y = x * scale``; the weight is a separate float
  multiply (ggml's ``MUL`` node).
* :func:`rope_ggml` -- ``ggml_compute_forward_rope_flt``: per position the angle
  cache ``theta_0 = p``, ``theta *= theta_scale`` (``theta_scale = powf(base,
  -2.0f/n_dims)``), ``cos = cosf(freq_scale*theta)``, ``sin = sinf(...)``, then
  ``rotate_pairs``, which the compiler (GCC, ``-ffp-contract=fast``) builds as
  ``fma(x0, cos, -(x1*sin))`` and ``fma(x0, sin, x1*cos)``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..foundation.errors import ConfigError
from ..foundation.libm import rope_theta_scale
from ..linear_algebra.ggml_exact import fma_f32
from ..linear_algebra.half import f16_bits_to_f32, f32_to_f16_bits

_F = np.float32
SHIFT = _F(float.fromhex("0x1.8p23"))
LOG2E = _F(float.fromhex("0x1.715476p+0"))
LN2_HI = _F(float.fromhex("0x1.62e4p-1"))
LN2_LO = _F(float.fromhex("0x1.7f7d1cp-20"))
P5 = _F(float.fromhex("0x1.0e4020p-7"))
P4 = _F(float.fromhex("0x1.573e2ep-5"))
P3 = _F(float.fromhex("0x1.555e66p-3"))
P2 = _F(float.fromhex("0x1.fffdb6p-2"))
P1 = _F(float.fromhex("0x1.ffffecp-1"))


@njit(cache=True, inline="always")
def _bits(v, tmp_f, tmp_u):
    tmp_f[0] = v
    return tmp_u[0]


@njit(cache=True, inline="always")
def _from_bits(u, tmp_f, tmp_u):
    tmp_u[0] = u
    return tmp_f[0]


@njit(cache=True, inline="always")
def _v_expf(x, tmp_f, tmp_u):
    """One lane of ggml_v_expf (AVX2 + FMA). ``tmp_f``/``tmp_u``: a 1-element float32 array and its uint32 view."""
    z = fma_f32(x, LOG2E, SHIFT)
    n = z - SHIFT
    b = fma_f32(-n, LN2_LO, fma_f32(-n, LN2_HI, x))
    e = np.uint32(_bits(z, tmp_f, tmp_u) << np.uint32(23))
    k = _from_bits(np.uint32(e + np.uint32(0x3F800000)), tmp_f, tmp_u)
    u = b * b
    j = fma_f32(fma_f32(fma_f32(P5, b, P4), u, fma_f32(P3, b, P2)), u, P1 * b)
    an = abs(n)
    if not an > _F(126.0):
        return fma_f32(j, k, k)
    g = np.uint32(0x82000000) if n <= _F(0.0) else np.uint32(0)
    s1 = _from_bits(np.uint32(g + np.uint32(0x7F000000)), tmp_f, tmp_u)
    s2 = _from_bits(np.uint32(e - g), tmp_f, tmp_u)
    if an > _F(192.0):
        return s1 * s1
    return fma_f32(s2, j, s2) * s1


@njit(cache=True, inline="always")
def _v_silu(x, tmp_f, tmp_u):
    return x / (_F(1.0) + _v_expf(_F(0.0) - x, tmp_f, tmp_u))


@njit(cache=True, inline="always")
def _silu_scalar(x):
    return x / (_F(1.0) + _F(math.exp(-x)))  # ggml_silu_f32: libm expf


@njit(cache=True, nogil=True)
def _expf_kernel(x, out):
    tmp_f = np.empty(1, np.float32)
    tmp_u = tmp_f.view(np.uint32)
    for i in range(x.shape[0]):
        out[i] = _v_expf(x[i], tmp_f, tmp_u)


@njit(cache=True, parallel=True, nogil=True)
def _swiglu_kernel(x, g, out, with_g):
    rows, n = x.shape
    n8 = n - n % 8
    for r in prange(rows):
        tmp_f = np.empty(1, np.float32)
        tmp_u = tmp_f.view(np.uint32)
        for i in range(n8):
            s = _v_silu(x[r, i], tmp_f, tmp_u)
            out[r, i] = s * g[r, i] if with_g else s
        for i in range(n8, n):
            s = _silu_scalar(x[r, i])
            out[r, i] = s * g[r, i] if with_g else s


def expf_ggml(x: np.ndarray) -> np.ndarray:
    """``ggml_v_expf`` element-wise on a float32 array (any shape)."""
    x = np.asarray(x, dtype=np.float32)
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(flat)
    _expf_kernel(flat, out)
    return out.reshape(x.shape)


def _rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(x).reshape(-1, x.shape[-1] if x.ndim else 1)


def silu_ggml(x: np.ndarray) -> np.ndarray:
    """``ggml_vec_silu_f32`` over the last axis: chunks of 8 by ``ggml_v_silu``, the tail by ``ggml_silu_f32``."""
    x = np.asarray(x, dtype=np.float32)
    xr = _rows(x)
    out = np.empty_like(xr)
    _swiglu_kernel(xr, xr, out, False)
    return out.reshape(x.shape)


def swiglu_ggml(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """``ggml_vec_swiglu_f32`` over the last axis: ``silu(gate) * up`` with ggml's roundings."""
    gate = np.asarray(gate, dtype=np.float32)
    up = np.asarray(up, dtype=np.float32)
    if gate.shape != up.shape:
        raise ConfigError(f"swiglu_ggml: gate {gate.shape} and up {up.shape} differ")
    gr, ur = _rows(gate), _rows(up)
    out = np.empty_like(gr)
    _swiglu_kernel(gr, ur, out, True)
    return out.reshape(gate.shape)


GELU_COEF_A = np.float32(0.044715)
SQRT_2_OVER_PI = np.float32(0.79788456080286535587989211986876)


@njit(cache=True, nogil=True)
def _gelu_table():
    """``ggml_table_gelu_f16``: float16 bits of GELU at every float16 bit pattern ``i``."""
    out = np.empty(65536, np.uint16)
    for i in range(65536):
        x = f16_bits_to_f32(np.uint16(i))
        inner = fma_f32(GELU_COEF_A * x, x, np.float32(1.0))
        g = np.float32(0.5) * x * (np.float32(1.0) + np.float32(math.tanh(SQRT_2_OVER_PI * x * inner)))
        out[i] = f32_to_f16_bits(g)
    return out


GELU_F16 = _gelu_table()


@njit(cache=True, inline="always")
def geglu_scalar(x, g, table):
    """One element of ``ggml_vec_geglu_f32``: ``gelu(x) * g`` through the float16 table."""
    if x <= np.float32(-10.0):
        return np.float32(0.0)
    if x >= np.float32(10.0):
        return x * g
    return f16_bits_to_f32(table[f32_to_f16_bits(x)]) * g


@njit(cache=True, nogil=True)
def _geglu_kernel(x, g, table, out):
    for i in range(x.shape[0]):
        out[i] = geglu_scalar(x[i], g[i], table)


@njit(cache=True, parallel=True, nogil=True)
def _geglu_kernel_parallel(x, g, table, out):
    for i in prange(x.shape[0]):
        out[i] = geglu_scalar(x[i], g[i], table)


def geglu_ggml(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """``ggml_vec_geglu_f32``: ``gelu(gate) * up`` element-wise with ggml's float16 GELU table."""
    gate = np.asarray(gate, dtype=np.float32)
    up = np.asarray(up, dtype=np.float32)
    if gate.shape != up.shape:
        raise ConfigError(f"geglu_ggml: gate {gate.shape} and up {up.shape} differ")
    out = np.empty(gate.size, np.float32)
    kernel = _geglu_kernel_parallel if gate.size >= 16384 else _geglu_kernel  # a prefill: threads pay off
    kernel(np.ascontiguousarray(gate).reshape(-1), np.ascontiguousarray(up).reshape(-1), GELU_F16, out)
    return out.reshape(gate.shape)


@njit(cache=True, inline="always")
def _rms_norm_row(x, r, eps, out):
    s = 0.0  # ggml_float (double)
    n = x.shape[1]
    for i in range(n):
        v = x[r, i] * x[r, i]  # float32 square
        s += np.float64(v)
    mean = np.float32(s / n)
    scale = np.float32(1.0) / np.float32(math.sqrt(mean + eps))  # sqrtf: correctly rounded
    for i in range(n):
        out[r, i] = x[r, i] * scale


@njit(cache=True, nogil=True)
def _rms_norm_kernel(x, eps, out):
    for r in range(x.shape[0]):
        _rms_norm_row(x, r, eps, out)


@njit(cache=True, parallel=True, nogil=True)
def _rms_norm_kernel_parallel(x, eps, out):
    for r in prange(x.shape[0]):
        _rms_norm_row(x, r, eps, out)


@njit(cache=True, inline="always")
def _rms_norm_weighted_row(x, r, eps, weight, out):
    """:func:`_rms_norm_row` then ``* weight``: ggml's two ops (``rms_norm``, ``mul``), each float32
    product rounded once, in one pass over the row."""
    _rms_norm_row(x, r, eps, out)
    for i in range(x.shape[1]):
        out[r, i] = out[r, i] * weight[i]


@njit(cache=True, nogil=True)
def _rms_norm_weighted_kernel(x, eps, weight, out):
    for r in range(x.shape[0]):
        _rms_norm_weighted_row(x, r, eps, weight, out)


@njit(cache=True, parallel=True, nogil=True)
def _rms_norm_weighted_kernel_parallel(x, eps, weight, out):
    for r in prange(x.shape[0]):
        _rms_norm_weighted_row(x, r, eps, weight, out)


def rms_norm_ggml(x: np.ndarray, weight: np.ndarray | None, eps: float) -> np.ndarray:
    """RMSNorm over the last axis as ggml computes it (then ``* weight``, a separate float multiply)."""
    x = np.asarray(x, dtype=np.float32)
    xr = _rows(x)
    out = np.empty_like(xr)
    parallel = xr.shape[0] >= 8  # rows are independent
    if weight is None:
        (_rms_norm_kernel_parallel if parallel else _rms_norm_kernel)(xr, np.float32(eps), out)
    else:
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        if weight.shape != (xr.shape[1],):
            raise ConfigError(f"rms_norm_ggml: weight {weight.shape} does not match rows of {xr.shape[1]}")
        kernel = _rms_norm_weighted_kernel_parallel if parallel else _rms_norm_weighted_kernel
        kernel(xr, np.float32(eps), weight, out)
    return out.reshape(x.shape)


@njit(cache=True, nogil=True)
def _rope_cache(pos, half, theta_scale, freq_scale, cos_out, sin_out):
    for t in range(pos.shape[0]):
        theta = np.float32(pos[t])
        for i in range(half):
            th = freq_scale * theta
            cos_out[t, i] = np.float32(math.cos(th))  # cosf
            sin_out[t, i] = np.float32(math.sin(th))  # sinf
            theta = theta * theta_scale


@njit(cache=True, parallel=True, nogil=True)
def _rope_cache_parallel(pos, half, theta_scale, freq_scale, cos_out, sin_out):
    """:func:`_rope_cache` with the positions shared out among threads (the same bits per row)."""
    for t in prange(pos.shape[0]):
        _rope_cache(pos[t:t + 1], half, theta_scale, freq_scale, cos_out[t:t + 1], sin_out[t:t + 1])


@njit(cache=True, parallel=True, nogil=True)
def _rope_kernel(x, cos_c, sin_c, n_rot, neox, out):
    n_tok, n_head, d = x.shape
    half = n_rot // 2
    for t in prange(n_tok):
        for h in range(n_head):
            for i in range(half):
                c = cos_c[t, i]
                s = sin_c[t, i]
                if neox:
                    a0, a1 = i, i + half
                else:
                    a0, a1 = 2 * i, 2 * i + 1
                x0 = x[t, h, a0]
                x1 = x[t, h, a1]
                # the compiler contracts rotate_pairs' x0*cos - x1*sin and x0*sin + x1*cos
                # into FMAs on x0's products (found against llama.cpp's tensors; the other
                # contractions and none at all each miss ~10-25% of the values)
                out[t, h, a0] = fma_f32(x0, c, -(x1 * s))
                out[t, h, a1] = fma_f32(x0, s, x1 * c)
            for i in range(n_rot, d):
                out[t, h, i] = x[t, h, i]


_ROPE_ANGLES_MEMO: dict = {}  # a forward pass rotates Q and K of every layer at the same positions


def _rope_angles(pos: np.ndarray, n_rot: int, base: float, freq_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """ggml's ``rope_cache``: (cos, sin) of ``pos * freq_scale * theta_scale^i``, each (n_pos, n_rot/2).

    Memoised for the last few (positions, base, n_rot, freq_scale): the tables are read-only.
    """
    key = (pos.tobytes(), int(n_rot), float(base), float(freq_scale))
    hit = _ROPE_ANGLES_MEMO.get(key)
    if hit is not None:
        return hit
    half = n_rot // 2
    theta_scale = rope_theta_scale(base, n_rot)  # glibc's powf, as ggml
    cos_c = np.empty((len(pos), half), np.float32)
    sin_c = np.empty((len(pos), half), np.float32)
    fill = _rope_cache_parallel if len(pos) >= 8 else _rope_cache
    fill(pos, half, theta_scale, np.float32(freq_scale), cos_c, sin_c)
    cos_c.flags.writeable = sin_c.flags.writeable = False
    if len(_ROPE_ANGLES_MEMO) >= 8:
        _ROPE_ANGLES_MEMO.pop(next(iter(_ROPE_ANGLES_MEMO)))
    _ROPE_ANGLES_MEMO[key] = (cos_c, sin_c)
    return cos_c, sin_c


def rope_ggml(x: np.ndarray, positions: np.ndarray, n_rot: int, base: float,
              mode: str = "norm", freq_scale: float = 1.0) -> np.ndarray:
    """RoPE as ggml's CPU ``rope`` op (no YaRN / freq factors): same arguments as ``apply_rope``."""
    if mode not in ("norm", "neox"):
        raise ConfigError(f"unknown RoPE mode {mode!r}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    pos = np.asarray(positions, dtype=np.int64)
    cos_c, sin_c = _rope_angles(pos, n_rot, base, freq_scale)
    out = np.empty_like(x)
    _rope_kernel(x, cos_c, sin_c, n_rot, mode == "neox", out)
    return out
