"""Bit-exact mirrors of ggml's x86 AVX2 quantised dot products (llama.cpp's CPU build).

llama.cpp quantises activations to 8 bits before each integer dot product, and
that rounding is chaotic: a last-bit change of a float that feeds a quantiser
can flip a ``q`` and move the final logits by ~0.1. To reproduce llama.cpp's
numbers we must therefore reproduce not only the integers but every float
operation of its kernels, in its order, with its fused multiply-adds.

What an AVX2 build runs (``ggml/src/ggml-cpu/arch/x86/quants.c``)
------------------------------------------------------------------
``ggml_vec_dot_q4_1_q8_1`` and ``ggml_vec_dot_q8_0_q8_0``, per block ``b`` of 32::

    lane[i] = sum_{j=4i}^{4i+3} qw_j * qx_j        i = 0..7   (maddubs + madd: exact int32)
    d       = f32(d_w * d_x)                                   (_mm256_mul_ps / scalar mul)
    acc[i]  = fma(d, float(lane[i]), acc[i])                   (_mm256_fmadd_ps, one rounding)
    q4_1 only: summs = f32(summs + f32(m_w * s_x))             (scalar; see below)

then ``hsum_float_8(acc) = ((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7))`` (the
extract/movehl/movehdup pairing) and, for q4_1, ``+ summs``. For q4_1 the weight
nibbles are 0..15 and ``s_x = f16(d_x * sum q_x)`` comes from the Q8_1 block.
The scalar ``summs += m * s`` is *not* contracted into an FMA in the shipped
binary: this was checked against ``libggml-cpu.so`` through ctypes (see
``tests/test_ggml_exact.py``), which is also how every kernel here is held to
ggml's.

Prefill (``n_tok >= 2``): ``ggml_compute_forward_mul_mat`` first offers the
product to llamafile's ``llamafile_sgemm``. It has no Q4_1 kernel (falls back to
the vec_dot above). For Q8_0 x Q8_0, ``tinyBLAS_Q0_AVX`` computes per block
``Cv = madd(set1(d_a * d_b), updot(a, b), Cv)`` with the same 8 int32 lanes, the
same FMA and the same ``hsum``: the float result is identical to the vec_dot's,
so one kernel serves both.

Exact float32 FMA in Numba
--------------------------
``fma(a, b, c)`` rounds ``a*b + c`` once. ``a*b`` of two float32 is exact in
float64 (48 significant bits). ``s = p + c`` in float64 may round; TwoSum gives
the exact error ``e`` (``p + c = s + e``). Rounding ``s`` to float32 is then
correct unless ``s`` sits exactly on a float32 rounding boundary (a midpoint)
while ``e != 0`` -- the double-rounding case. There the result is the neighbour
of the midpoint on the side of ``e``'s sign. (The midpoint test: mirror the
rounded ``r`` through ``s``; the image is a float32 only if ``s`` is halfway.) So :func:`fma32` is the correctly rounded FMA for
all finite inputs (not merely "almost always"), at the cost of a TwoSum.
"""

from __future__ import annotations

import weakref

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..foundation.errors import ConfigError
from ..foundation.ggml_types import GGMLType
from .legacy import SIZEOF_BLOCK_Q4_1, SIZEOF_BLOCK_Q8_0, unpack_q4_1, unpack_q8_0
from .matmul import QMatrix
from .q8 import quantize_q8_32_planes

SUPPORTED = (GGMLType.Q4_1, GGMLType.Q8_0)


# -- float32 primitives -----------------------------------------------------------------
@njit(cache=True, inline="always")
def fma32(a, b, c):
    """Correctly rounded float32 ``a*b + c`` (one rounding), as ``vfmadd`` computes it."""
    p = np.float64(a) * np.float64(b)  # exact
    c64 = np.float64(c)
    s = p + c64
    bb = s - p
    e = (p - (s - bb)) + (c64 - bb)  # TwoSum: p + c == s + e exactly
    r = np.float32(s)
    if e != 0.0:
        r64 = np.float64(r)
        if r64 != s:
            # s is a float32 midpoint iff the point mirrored through it, m2 = r + 2(s - r), is a float32
            # (both steps exact); then the true value s + e lies on the side of e's sign
            m2 = r64 + 2.0 * (s - r64)
            if np.float64(np.float32(m2)) == m2:
                if (e > 0.0) == (m2 > r64):
                    r = np.float32(m2)
    return r


@intrinsic
def fma_f32(typingctx, a, b, c):
    """The same FMA by the hardware: LLVM's ``llvm.fma.f32`` (one rounding by definition; ``vfmadd``
    on a CPU with FMA3, a correctly rounded library call elsewhere). Equal to :func:`fma32`
    bit for bit (tested); the fast kernels use this one."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.FloatType(), [ir.FloatType()] * 3)
        return builder.call(cgutils.get_or_insert_function(builder.module, fnty, "llvm.fma.f32"), args)

    return sig, codegen


@njit(cache=True, nogil=True)
def fma_f32_array(a, b, c, out):
    """Elementwise :func:`fma_f32` of float32 arrays (to test it against :func:`fma32`)."""
    for j in range(a.size):
        out[j] = fma_f32(a[j], b[j], c[j])


@njit(cache=True, inline="always")
def hsum8(a0, a1, a2, a3, a4, a5, a6, a7):
    """``hsum_float_8`` / tinyBLAS ``hsum(__m256)``: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)), float32."""
    r0 = a4 + a0
    r1 = a5 + a1
    r2 = a6 + a2
    r3 = a7 + a3
    return (r0 + r2) + (r1 + r3)


# -- kernels ----------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _row_dot(wq, wd, wm, r, xq, xd, xs, t, with_min, acc):
    nb = wd.shape[1]
    acc[:] = 0
    summs = np.float32(0.0)
    for b in range(nb):
        d = wd[r, b] * xd[t, b]  # float32 product
        if with_min:
            summs = summs + wm[r, b] * xs[t, b]  # two float32 roundings (not fused)
        o = 32 * b
        for i in range(8):
            j = o + 4 * i
            li = (np.int32(wq[r, j]) * np.int32(xq[t, j]) + np.int32(wq[r, j + 1]) * np.int32(xq[t, j + 1])
                  + np.int32(wq[r, j + 2]) * np.int32(xq[t, j + 2]) + np.int32(wq[r, j + 3]) * np.int32(xq[t, j + 3]))
            acc[i] = fma32(d, np.float32(li), acc[i])
    s = hsum8(acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7])
    if with_min:
        s = s + summs
    return s


@njit(cache=True, parallel=True, nogil=True)
def _mm_kernel(wq, wd, wm, xq, xd, xs, with_min, out):
    n_out = wq.shape[0]
    n_tok = xq.shape[0]
    for r in prange(n_out):
        acc = np.empty(8, np.float32)
        for t in range(n_tok):
            out[t, r] = _row_dot(wq, wd, wm, r, xq, xd, xs, t, with_min, acc)


@njit(cache=True, nogil=True)
def _mm_kernel_serial(wq, wd, wm, xq, xd, xs, with_min, out):
    n_out = wq.shape[0]
    n_tok = xq.shape[0]
    acc = np.empty(8, np.float32)
    for r in range(n_out):
        for t in range(n_tok):
            out[t, r] = _row_dot(wq, wd, wm, r, xq, xd, xs, t, with_min, acc)


# -- weights: unpacked once per QMatrix -------------------------------------------------
_PLANES: "weakref.WeakKeyDictionary[QMatrix, tuple]" = weakref.WeakKeyDictionary()


def weight_planes(w: QMatrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``q (n_out, n_in) int8`` (Q4_1: nibbles 0..15; Q8_0: the int8), ``d, m (n_out, n_in/32) float32``."""
    planes = _PLANES.get(w)
    if planes is None:
        nb = w.n_in // 32
        if w.qtype == GGMLType.Q4_1:
            d, m, q = unpack_q4_1(np.ascontiguousarray(w.raw).reshape(-1, SIZEOF_BLOCK_Q4_1))
        elif w.qtype == GGMLType.Q8_0:
            d, q = unpack_q8_0(np.ascontiguousarray(w.raw).reshape(-1, SIZEOF_BLOCK_Q8_0))
            m = np.zeros_like(d)
        else:
            raise ConfigError(f"matmul_ggml supports {[t.name for t in SUPPORTED]}, not {w.qtype.name}")
        planes = (np.ascontiguousarray(q).reshape(w.n_out, w.n_in),
                  np.ascontiguousarray(d, dtype=np.float32).reshape(w.n_out, nb),
                  np.ascontiguousarray(m, dtype=np.float32).reshape(w.n_out, nb))
        _PLANES[w] = planes
    return planes


def matmul_ggml(w: QMatrix, x: np.ndarray) -> np.ndarray:
    """``y = x @ W.T`` exactly as llama.cpp's AVX2 CPU build computes it: ``x (n_tok, n_in)`` or
    ``(n_in,)`` float32 -> ``(n_tok, n_out)`` / ``(n_out,)`` float32.

    Q4_1 weights: ``x`` quantised to Q8_1 (x86 quantiser), ``ggml_vec_dot_q4_1_q8_1``.
    Q8_0 weights: ``x`` quantised to Q8_0 (x86 quantiser), ``ggml_vec_dot_q8_0_q8_0`` (= tinyBLAS).
    """
    if not isinstance(w, QMatrix):
        raise ConfigError(f"matmul_ggml expects a QMatrix, got {type(w).__name__}")
    x = np.asarray(x, dtype=np.float32)
    vector = x.ndim == 1
    if x.ndim not in (1, 2) or x.shape[-1] != w.n_in:
        raise ConfigError(f"matmul_ggml: x has shape {x.shape}, expected (n_tok, {w.n_in})")
    x = np.ascontiguousarray(x.reshape(-1, w.n_in))
    wq, wd, wm = weight_planes(w)
    with_min = w.qtype == GGMLType.Q4_1
    if with_min:
        xq, xd, xs = quantize_q8_32_planes(x, True, "x86")
    else:
        xq, xd = quantize_q8_32_planes(x, False, "x86")
        xs = np.zeros_like(xd)
    out = np.empty((x.shape[0], w.n_out), np.float32)
    kernel = _mm_kernel if w.n_out * x.shape[0] >= 64 else _mm_kernel_serial
    kernel(wq, wd, wm, xq, xd, xs, with_min, out)
    return out[0] if vector else out
