"""The 8-bit activation quantisers of prefill as LLVM vector code: ggml's x86 Q8_0 / Q8_1 and Q8_K.

:mod:`.q8`'s Numba kernels spell each block out one value at a time (in a 128-token Gemma 3
prefill they took 10.6 of 257 ms in ``zigllama profile``; this module's kernels: 1.7 ms). Here each block is a handful of vector instructions, the same
operations ggml's x86 build runs (see :mod:`.q8` for the maths), so the same bits:

* Q8_0 / Q8_1 (``quantize_row_q8_0`` / ``_1``, AVX2): ``amax`` as the integer max of the
  ``|x|`` bit patterns (non-negative floats order as their bits do), ``d = amax / 127``,
  ``id = 127 / amax`` (0 if ``amax`` is 0), ``q = cvtps2dq(roundeven(x * id))`` saturated to
  int8 (ggml's ``packs``: an infinite ``x * id`` gives ``INT_MIN``, then -128), stored
  ``f16(d)`` and, for Q8_1, ``f16(d * float(sum q))`` with the int32 sum of the unsaturated
  ``cvtps2dq`` values (it wraps as ggml's does).
* Q8_K (``quantize_row_q8_K_ref``, which x86 builds call): ``max`` the first value of largest
  ``|x|`` (a compare and ``cttz`` per 32 values), ``iscale = -127 / max``,
  ``q = min(127, nearest_int(iscale * x))`` with ``nearest_int``'s float trick itself
  (``bits(v + 12582912) & 0x7FFFFF) - 0x400000``, exact for every input), stored as int8,
  ``bsums`` the int16 sums of each 16 stored values, ``d = 1 / iscale``; all zero when
  ``amax`` is 0.

Plain layout only (token ``t``'s quants at ``xq[t]``), rows shared out among threads.
Used where the CPU has AVX2 and F16C (every CPU the pinned llama.cpp build runs on); tested
against ggml's own quantisers through ctypes (tests/test_ggml_ops.py).
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..foundation.errors import ConfigError

_FEATURES = llvm.get_host_cpu_features().flatten().split(",")
AVAILABLE = "+avx2" in _FEATURES and "+f16c" in _FEATURES

I1, I8, I16, I32, I64, F16, F32 = (ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64),
                                   ir.HalfType(), ir.FloatType())


def _vec(t, n):
    return ir.VectorType(t, n)


def _splat(t, n, value):
    return ir.Constant(_vec(t, n), [ir.Constant(t, value)] * n)


def _fn(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _ptr(builder, addr, ty, offset):
    return builder.inttoptr(builder.add(addr, offset), ty.as_pointer())


def _f16_round(builder, v):
    """float32 -> the nearest float16 (ties to even), back as float32 (``vcvtps2ph``)."""
    return builder.fpext(builder.fptrunc(v, F16), F32)


def _abs_bits(builder, xv, n):
    """``<n x i32>``: the bit patterns of ``|x|``, NaNs as 0 (ggml's ``>`` tests never pick one)."""
    bits = builder.and_(builder.bitcast(xv, _vec(I32, n)), _splat(I32, n, 0x7FFFFFFF))
    return builder.select(builder.icmp_unsigned("<=", bits, _splat(I32, n, 0x7F800000)), bits, _splat(I32, n, 0))


def _umax(builder, v, n):
    return builder.call(_fn(builder, f"llvm.vector.reduce.umax.v{n}i32", I32, [_vec(I32, n)]), [v])


def _add_reduce(builder, v, n):
    return builder.call(_fn(builder, f"llvm.vector.reduce.add.v{n}i32", I32, [_vec(I32, n)]), [v])


def _clamp_i8(builder, v, n):
    """Signed saturation of ``<n x i32>`` to ``<n x i8>`` (ggml's ``packs_epi32`` then ``packs_epi16``)."""
    lo = builder.select(builder.icmp_signed("<", v, _splat(I32, n, -128)), _splat(I32, n, -128), v)
    return builder.trunc(builder.select(builder.icmp_signed(">", lo, _splat(I32, n, 127)), _splat(I32, n, 127), lo),
                         _vec(I8, n))


def _emit_q8_32_row(builder, with_sum, args):
    """One token's row: Q8_0 (``with_sum`` False) or Q8_1 blocks of 32."""
    x, nb, q, d_out, s_out = args
    v32f, v8f = _vec(F32, 32), _vec(F32, 8)
    roundeven = _fn(builder, "llvm.roundeven.v8f32", v8f, [v8f])
    cvt = _fn(builder, "llvm.x86.avx.cvt.ps2dq.256", _vec(I32, 8), [v8f])
    with cgutils.for_range(builder, nb) as loop:
        b = loop.index
        xv = builder.load(_ptr(builder, x, v32f, builder.mul(b, ir.Constant(I64, 128))), align=4)
        amax = builder.bitcast(_umax(builder, _abs_bits(builder, xv, 32), 32), F32)
        d = builder.fdiv(amax, ir.Constant(F32, 127.0))
        nonzero = builder.fcmp_unordered("!=", amax, ir.Constant(F32, 0.0))
        inv = builder.select(nonzero, builder.fdiv(ir.Constant(F32, 127.0), amax), ir.Constant(F32, 0.0))
        scaled = builder.fmul(xv, builder.shuffle_vector(builder.insert_element(ir.Constant(v32f, ir.Undefined), inv,
                                                                               ir.Constant(I32, 0)),
                                                         ir.Constant(v32f, ir.Undefined), ir.Constant(_vec(I32, 32), [0] * 32)))
        parts = []
        for k in range(4):  # cvtps2dq of each 8 (rounded already: exact, INT_MIN for inf / NaN)
            part = builder.shuffle_vector(scaled, scaled, ir.Constant(_vec(I32, 8), list(range(8 * k, 8 * k + 8))))
            parts.append(builder.call(cvt, [builder.call(roundeven, [part])]))
        ints = builder.shuffle_vector(builder.shuffle_vector(parts[0], parts[1], ir.Constant(_vec(I32, 16), list(range(16)))),
                                      builder.shuffle_vector(parts[2], parts[3], ir.Constant(_vec(I32, 16), list(range(16)))),
                                      ir.Constant(_vec(I32, 32), list(range(32))))
        builder.store(_clamp_i8(builder, ints, 32), _ptr(builder, q, _vec(I8, 32), builder.mul(b, ir.Constant(I64, 32))), align=1)
        off4 = builder.mul(b, ir.Constant(I64, 4))
        builder.store(_f16_round(builder, d), _ptr(builder, d_out, F32, off4), align=4)
        if with_sum:
            total = builder.sitofp(_add_reduce(builder, ints, 32), F32)
            builder.store(_f16_round(builder, builder.fmul(d, total)), _ptr(builder, s_out, F32, off4), align=4)


def _emit_q8_K_row(builder, args):
    """One token's row of Q8_K super-blocks (256 values, 8 chunks of 32)."""
    x, nb, q, d_out, bsums_out = args
    v32f = _vec(F32, 32)
    cttz = _fn(builder, "llvm.cttz.i32", I32, [I32, I1])
    with cgutils.for_range(builder, nb) as loop:
        b = loop.index
        base = builder.mul(b, ir.Constant(I64, 1024))
        chunks = [builder.load(_ptr(builder, x, v32f, builder.add(base, ir.Constant(I64, 128 * c))), align=4) for c in range(8)]
        abits = [_abs_bits(builder, xv, 32) for xv in chunks]
        m = abits[0]
        for a in abits[1:]:
            m = builder.select(builder.icmp_unsigned(">", a, m), a, m)
        mbits = _umax(builder, m, 32)
        first = ir.Constant(I32, 0)  # the first j with |x_j| of bits mbits (0 if amax is 0)
        for c in reversed(range(8)):
            hits = builder.bitcast(builder.icmp_unsigned("==", abits[c], builder.shuffle_vector(
                builder.insert_element(ir.Constant(_vec(I32, 32), ir.Undefined), mbits, ir.Constant(I32, 0)),
                ir.Constant(_vec(I32, 32), ir.Undefined), ir.Constant(_vec(I32, 32), [0] * 32))), I32)
            at = builder.add(ir.Constant(I32, 32 * c), builder.call(cttz, [hits, ir.Constant(I1, 1)]))
            first = builder.select(builder.icmp_unsigned("!=", hits, ir.Constant(I32, 0)), at, first)
        vmax = builder.load(_ptr(builder, x, F32, builder.add(base, builder.mul(builder.zext(first, I64), ir.Constant(I64, 4)))), align=4)
        zero_block = builder.icmp_unsigned("==", mbits, ir.Constant(I32, 0))
        iscale = builder.select(zero_block, ir.Constant(F32, 0.0), builder.fdiv(ir.Constant(F32, -127.0), vmax))
        splat = builder.shuffle_vector(builder.insert_element(ir.Constant(v32f, ir.Undefined), iscale, ir.Constant(I32, 0)),
                                       ir.Constant(v32f, ir.Undefined), ir.Constant(_vec(I32, 32), [0] * 32))
        for c, xv in enumerate(chunks):
            v = builder.fadd(builder.fmul(splat, xv), _splat(F32, 32, 12582912.0))  # nearest_int's trick
            ints = builder.sub(builder.and_(builder.bitcast(v, _vec(I32, 32)), _splat(I32, 32, 0x007FFFFF)), _splat(I32, 32, 0x00400000))
            ints = builder.select(builder.icmp_signed(">", ints, _splat(I32, 32, 127)), _splat(I32, 32, 127), ints)
            stored = builder.trunc(ints, _vec(I8, 32))  # (int8_t) MIN(127, v)
            builder.store(stored, _ptr(builder, q, _vec(I8, 32), builder.add(builder.mul(b, ir.Constant(I64, 256)), ir.Constant(I64, 32 * c))), align=1)
            wide = builder.sext(stored, _vec(I32, 32))
            for h in range(2):
                group = builder.shuffle_vector(wide, wide, ir.Constant(_vec(I32, 16), list(range(16 * h, 16 * h + 16))))
                offset = builder.add(builder.mul(b, ir.Constant(I64, 32)), ir.Constant(I64, 4 * c + 2 * h))
                builder.store(builder.trunc(_add_reduce(builder, group, 16), I16), _ptr(builder, bsums_out, I16, offset), align=2)
        d = builder.select(zero_block, ir.Constant(F32, 0.0), builder.fdiv(ir.Constant(F32, 1.0), iscale))
        builder.store(d, _ptr(builder, d_out, F32, builder.mul(b, ir.Constant(I64, 4))), align=4)


@intrinsic
def quantize_row(typingctx, kind, x_addr, nb, q_addr, d_addr, s_addr):
    """One token: ``nb`` blocks of float32 at ``x_addr`` -> int8 quants at ``q_addr``, float32 ``d``
    at ``d_addr`` and, at ``s_addr``, Q8_1's float32 ``s`` or Q8_K's int16 bsums. ``kind`` (a
    literal): 0 Q8_0, 1 Q8_1, 2 Q8_K."""
    from numba.core.errors import TypingError

    if not isinstance(kind, types.IntegerLiteral) or kind.literal_value not in (0, 1, 2):
        raise TypingError("quantize_row: kind must be the literal 0, 1 or 2")
    which = kind.literal_value
    sig = types.none(kind, *([types.int64] * 5))

    def codegen(context, builder, signature, args):
        if which == 2:
            _emit_q8_K_row(builder, args[1:])
        else:
            _emit_q8_32_row(builder, which == 1, args[1:])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def _row(kind, x, t, q, d, s):
    xa, qa = x.ctypes.data + t * x.strides[0], q.ctypes.data + t * q.strides[0]
    da, sa = d.ctypes.data + t * d.strides[0], s.ctypes.data + t * s.strides[0]
    if kind == 0:
        quantize_row(0, xa, d.shape[1], qa, da, sa)
    elif kind == 1:
        quantize_row(1, xa, d.shape[1], qa, da, sa)
    else:
        quantize_row(2, xa, d.shape[1], qa, da, sa)


@njit(cache=True, nogil=True)
def _rows_serial(kind, x, q, d, s):
    for t in range(x.shape[0]):
        _row(kind, x, t, q, d, s)


@njit(cache=True, parallel=True, nogil=True)
def _rows_parallel(kind, x, q, d, s):
    for t in prange(x.shape[0]):
        _row(kind, x, t, q, d, s)


def _run(kind: int, x: np.ndarray, q, d, s):
    if x.dtype != np.float32 or x.ndim != 2 or not x.flags.c_contiguous:
        raise ConfigError(f"q8_simd: x must be a C-contiguous (n_tok, n) float32 array, got {x.dtype} {x.shape}")
    (_rows_parallel if x.shape[0] >= 8 else _rows_serial)(kind, x, q, d, s)


def q8_32_planes(x: np.ndarray, with_sum: bool):
    """ggml's x86 Q8_0 / Q8_1 of ``x (n_tok, n) float32`` (C-contiguous, ``n % 32 == 0``):
    ``xq (n_tok, n) int8``, ``xd``, ``xs (n_tok, n/32) float32`` (``xs`` zeros for Q8_0)."""
    n_tok, n = x.shape
    q = np.empty((n_tok, n), np.int8)
    d = np.empty((n_tok, n // 32), np.float32)
    s = np.empty_like(d) if with_sum else np.zeros_like(d)
    _run(1 if with_sum else 0, x, q, d, s)
    return q, d, s


def q8_K_planes(x: np.ndarray):
    """ggml's Q8_K of ``x (n_tok, n) float32`` (C-contiguous, ``n % 256 == 0``): ``xq (n_tok, n) int8``,
    ``xd (n_tok, n/256) float32``, ``bsums (n_tok, n/16) int16``."""
    n_tok, n = x.shape
    q = np.empty((n_tok, n), np.int8)
    d = np.empty((n_tok, n // 256), np.float32)
    bsums = np.empty((n_tok, n // 16), np.int16)
    _run(2, x, q, d, bsums)
    return q, d, bsums
