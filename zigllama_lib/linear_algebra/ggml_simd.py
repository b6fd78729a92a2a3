"""llama.cpp's AVX2 quantised dot products, written as LLVM vector code: the fast path.

:mod:`.ggml_exact` spells out llama.cpp's arithmetic one scalar at a time
(readable, and ~1.5 GMAC/s). Numba's compiler will not turn its 8-lane inner
loops into SIMD code (they are too short for the loop vectoriser, and Numba
turns the SLP vectoriser off). So here each block's work is written directly
as LLVM IR with vector types -- the same instructions ggml's C intrinsics
produce -- and handed to Numba as an ``@intrinsic``. Per block of 32 (Q4_1
weights, Q8_1 activations; ``ggml_vec_dot_q4_1_q8_1``)::

    qs   = load <16 x i8>  (the block's packed nibbles)         ; 16 bytes
    qx   = concat(qs & 15, qs >> 4)          <32 x i8>          ; weights 0..31, 0..15
    qy   = load <32 x i8>  (the activations' int8 quants)
    p16  = pmaddubsw(qx, qy)                 <16 x i16>         ; qx_2j qy_2j + qx_2j+1 qy_2j+1
    lane = pmaddwd(p16, 1)                   <8 x i32>          ; lane l = sum_{j=4l}^{4l+3} qx_j qy_j
    acc  = fma(splat(d_w * d_x), float(lane), acc)   <8 x float>  ; one rounding per lane
    summs = summs + m_w * s_x                                    ; scalar, two roundings

then ``hsum8(acc) + summs`` -- exactly :func:`.ggml_exact.matmul_ggml`'s value,
bit for bit (tested). Q8_0 x Q8_0 is the same with ``qx`` loaded as 32 int8
and ``p16 = pmaddubsw(|qx|, sign(qy, qx))`` (no saturation: |q_y| <= 127);
Q5_0 x Q8_0 builds its int8 ``qx`` from nibbles and fifth bits, then does the
same. The K-quants pair with Q8_K activations (super-blocks of 256): Q6_K as
ggml's ``ggml_vec_dot_q6_K_q8_K`` for 1-7 tokens and, from 8 tokens on, as ggml-cpu's tiled
K-quant matmul (one FMA chain over super-blocks, :func:`kind_for`), Q4_K as the repacked kernels llama.cpp's
AVX2 build actually runs for it (``ggml_gemv/gemm_q4_K_8x8_q8_K``, see
:func:`_emit_q4_K`) -- computed here on the file's own row layout. One
intrinsic, :func:`dot_row`, does all five weight types, for one token (decode)
or a group of four or eight (prefill: each weight block unpacked once for the group).
Decode splits a matrix's rows between threads (:func:`_mm_parallel`); prefill splits tiles
of :data:`ROW_TILE` rows and runs each tile over the batch group by group
(:func:`_mm_tiles_parallel`), so a group's activations stay in L1.

The kernels read the weight rows straight from the GGUF bytes (the
memory-mapped file: no copy) and the activations from the planes
of :func:`.q8.quantize_q8_32_planes` / :func:`.q8.quantize_q8_K_planes`. One exception: a Q4_K
prefill runs on a copy with eight rows per vector (:mod:`.ggml_repack`, the same bits), built on
the matrix's first prefill. One
trap, measured: left to itself LLVM loads a block's float16 scale with
``vpinsrw`` into whatever vector register is at hand -- often the accumulator --
which chains every block to the previous block's FMA and doubled the cost of a
block; :func:`_load_f16_pair`, :func:`_load_f16x4` and :func:`_load_f16` avoid it. On a CPU without AVX2 the same lane sums
are built from portable IR (widen, multiply, add adjacent pairs), which LLVM
lowers to whatever SIMD the CPU has; the integers, hence the result, are equal.
"""

from __future__ import annotations

import contextlib
import contextvars

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core import config as numba_config
from numba.extending import intrinsic

from ..foundation.errors import ConfigError
from ..foundation.ggml_types import GGMLType
from .kquants import SIZEOF_BLOCK_Q4_K, SIZEOF_BLOCK_Q6_K
from .legacy import SIZEOF_BLOCK_Q4_1, SIZEOF_BLOCK_Q5_0, SIZEOF_BLOCK_Q8_0
from .matmul import QMatrix
from .q8 import quantize_q8_32_planes, quantize_q8_K_planes

SUPPORTED = (GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.Q5_0, GGMLType.Q4_K, GGMLType.Q6_K)
# weight kinds of dot_row (a literal): the block layout and the activations' Q8 type
KIND_Q8_0, KIND_Q4_1, KIND_Q5_0, KIND_Q4_K, KIND_Q6_K = 0, 1, 2, 3, 4
KIND = {GGMLType.Q8_0: KIND_Q8_0, GGMLType.Q4_1: KIND_Q4_1, GGMLType.Q5_0: KIND_Q5_0,
        GGMLType.Q4_K: KIND_Q4_K, GGMLType.Q6_K: KIND_Q6_K}
# Q6_K in a batch of >= TILED_MIN_TOKENS tokens: ggml-cpu's tiled K-quant matmul, another float order
KIND_Q6_K_TILED = 5
# Q4_K in a batch, each token as llama.cpp's one-token gemv does it (batch_invariant_kernels)
KIND_Q4_K_ROWS = 6
TILED_MIN_TOKENS = 8  # ggml_tiled_min_batch: the tiled path from 8 rows of src1 (tokens) on
_FEATURES = llvm.get_host_cpu_features().flatten().split(",")
HAS_AVX2 = "+avx2" in _FEATURES
HAS_F16C = "+f16c" in _FEATURES
# VNNI's ``vpdpbusd`` only where Numba compiles for this very CPU (NUMBA_CPU_NAME=haswell must not emit it)
_NUMBA_TARGETS_HOST = numba_config.CPU_NAME in (None, "host") and not numba_config.CPU_FEATURES
HAS_VNNI_256 = _NUMBA_TARGETS_HOST and (
    "+avxvnni" in _FEATURES or {"+avx512vnni", "+avx512vl"} <= set(_FEATURES))

I8, I16, I32, I64, F16, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.HalfType(), ir.FloatType()


# -- IR helpers -------------------------------------------------------------------------
def _vec(t: ir.Type, n: int) -> ir.VectorType:
    return ir.VectorType(t, n)


def _splat(t: ir.Type, n: int, value) -> ir.Constant:
    return ir.Constant(_vec(t, n), [ir.Constant(t, value)] * n)


def _indices(idx) -> ir.Constant:
    return ir.Constant(_vec(I32, len(idx)), list(idx))


def _load(builder, ty: ir.Type, addr, offset=0, align: int = 1):
    """Load a ``ty`` at byte address ``addr + offset`` (``addr`` an i64)."""
    if offset:
        addr = builder.add(addr, offset if isinstance(offset, ir.Value) else ir.Constant(I64, offset))
    return builder.load(builder.inttoptr(addr, ty.as_pointer()), align=align)


def _function(builder, name: str, ret: ir.Type, args: list[ir.Type]):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _load_f16_pair(builder, addr, offset=0):
    """The two float16 at ``addr + offset`` and ``+ 2`` as float32 (exact), from one 32-bit load.

    A lone ``load half; fpext`` becomes ``vpinsrw`` into whatever vector register is at hand, often
    a loop's accumulator: a false dependency that chains every block's scale conversion to the
    previous block's FMA (measured: ~11 cycles per block). A 32-bit load is a ``vmovd``, which
    zeroes the rest of its register: no such input."""
    if not HAS_F16C:
        return (builder.fpext(_load(builder, F16, addr, offset), F32),
                builder.fpext(_load(builder, F16, addr, offset + 2), F32))
    word = _load(builder, I32, addr, offset)
    v = builder.insert_element(ir.Constant(_vec(I32, 4), ir.Undefined), word, ir.Constant(I32, 0))
    cvt = _function(builder, "llvm.x86.vcvtph2ps.128", _vec(F32, 4), [_vec(I16, 8)])
    f = builder.call(cvt, [builder.bitcast(v, _vec(I16, 8))])
    return builder.extract_element(f, ir.Constant(I32, 0)), builder.extract_element(f, ir.Constant(I32, 1))


def _load_f16(builder, addr, offset=0):
    """The float16 at ``addr + offset`` as a float32 (exact), computed in integer registers.

    F16C's ``vcvtph2ps`` needs the 16 bits in a vector register, and LLVM puts them there with
    ``vpinsrw`` into whatever register is at hand -- often the loop's accumulator, chaining every
    block to the previous block's FMA (and it narrows any wider load back to that when one half is
    used: see :func:`_load_f16_pair`). Here the bits move as a float32 with the same sign, exponent
    field and mantissa (``(h & 0x7fff) << 13``, sign to bit 31), which read as a float32 is the
    value times ``2^-112`` for every finite half, subnormals included; one exact multiply by
    ``2^112`` restores it. Exponent 31 (inf / NaN) gets the float32 exponent 255 first."""
    h = builder.zext(_load(builder, I16, addr, offset), I32)
    c = lambda v: ir.Constant(I32, v)  # noqa: E731
    magnitude = builder.shl(builder.and_(h, c(0x7FFF)), c(13))
    special = builder.icmp_unsigned("==", builder.and_(h, c(0x7C00)), c(0x7C00))
    magnitude = builder.select(special, builder.or_(magnitude, c(0x7F800000)), magnitude)
    bits = builder.or_(magnitude, builder.shl(builder.and_(h, c(0x8000)), c(16)))
    return builder.fmul(builder.bitcast(bits, F32), ir.Constant(F32, 2.0 ** 112))


def _load_f16x4(builder, addrs):
    """Four float16 (at the i64 ``addrs``) as ``<4 x float>``, exact: paired into two 32-bit words in
    integer registers, moved with ``vmovd`` / ``vpinsrd`` (which write a whole register, or merge
    into the one just written), converted by one ``vcvtph2ps``: no live register as input, and a
    quarter of :func:`_load_f16`'s work per value."""
    if not HAS_F16C:
        v = ir.Constant(_vec(F32, 4), ir.Undefined)
        for i, a in enumerate(addrs):
            v = builder.insert_element(v, builder.fpext(_load(builder, F16, a), F32), ir.Constant(I32, i))
        return v
    h = [builder.zext(_load(builder, I16, a), I32) for a in addrs]
    words = [builder.or_(h[0], builder.shl(h[1], ir.Constant(I32, 16))),
             builder.or_(h[2], builder.shl(h[3], ir.Constant(I32, 16)))]
    v = ir.Constant(_vec(I32, 4), [ir.Constant(I32, 0)] * 4)
    for i, w in enumerate(words):
        v = builder.insert_element(v, w, ir.Constant(I32, i))
    cvt = _function(builder, "llvm.x86.vcvtph2ps.128", _vec(F32, 4), [_vec(I16, 8)])
    return builder.call(cvt, [builder.bitcast(v, _vec(I16, 8))])


def _pairs(builder, v, n: int):
    """Adjacent pairs of an ``n``-vector summed: ``(v0+v1, v2+v3, ...)``."""
    even = builder.shuffle_vector(v, v, _indices(range(0, n, 2)))
    odd = builder.shuffle_vector(v, v, _indices(range(1, n, 2)))
    return builder.add(even, odd)


def _maddubs(builder, qx_u8, qy_i8):
    """``pmaddubsw``: ``<16 x i16>`` pair sums ``qx_2j qy_2j + qx_2j+1 qy_2j+1`` of unsigned ``qx`` and
    signed ``qy`` (32 x i8). Elsewhere the same integers from widened products: our operands never
    reach the instruction's int16 saturation (at most 2 * 128 * 127 in magnitude)."""
    if HAS_AVX2:
        return builder.call(_function(builder, "llvm.x86.avx2.pmadd.ub.sw", _vec(I16, 16), [_vec(I8, 32)] * 2),
                            [qx_u8, qy_i8])
    return _pairs(builder, builder.mul(builder.zext(qx_u8, _vec(I16, 32)), builder.sext(qy_i8, _vec(I16, 32))), 32)


def _maddwd(builder, a16, b16):
    """``pmaddwd``: ``<8 x i32>`` pair sums ``a_2j b_2j + a_2j+1 b_2j+1`` of two ``<16 x i16>``."""
    if HAS_AVX2:
        return builder.call(_function(builder, "llvm.x86.avx2.pmadd.wd", _vec(I32, 8), [_vec(I16, 16)] * 2),
                            [a16, b16])
    return _pairs(builder, builder.mul(builder.sext(a16, _vec(I32, 16)), builder.sext(b16, _vec(I32, 16))), 16)


def _lane_sums(builder, qx_u8, qy_i8):
    """``<8 x i32>`` lane sums ``sum_{j=4l}^{4l+3} qx_j * qy_j`` of unsigned ``qx`` and signed ``qy`` (32 x i8):
    ``pmaddubsw`` then ``pmaddwd`` with ones, the two instructions ggml's AVX2 build uses.

    With VNNI, one ``vpdpbusd`` gives the same sums. They are equal because nothing saturates:
    ``pmaddubsw`` clamps each pair ``a_0 b_0 + a_1 b_1`` to int16, and our callers keep
    ``qx <= 128`` (Q8_0 after the sign trick) and ``|qy| <= 127``, so ``|pair| <= 2*128*127 = 32512``;
    the int32 sums are exact either way (integer addition does not round)."""
    if HAS_VNNI_256:
        vpdpbusd = _function(builder, "llvm.x86.avx512.vpdpbusd.256", _vec(I32, 8),
                             [_vec(I32, 8), _vec(I8, 32), _vec(I8, 32)])
        return builder.call(vpdpbusd, [_splat(I32, 8, 0), qx_u8, qy_i8])
    return _maddwd(builder, _maddubs(builder, qx_u8, qy_i8), _splat(I16, 16, 1))


def _halves_i32(builder, v):
    """``<4 x i32>``: the low half of an ``<8 x i32>`` plus its high half."""
    return builder.add(builder.shuffle_vector(v, v, _indices(range(4))), builder.shuffle_vector(v, v, _indices(range(4, 8))))


def _hsum_i32(builder, v):
    """Sum of the 8 int32 lanes of ``v`` by a shuffle tree (exact: integer order does not matter)."""
    h = _halves_i32(builder, v)
    h = builder.add(h, builder.shuffle_vector(h, h, _indices([2, 3, 0, 1])))
    return builder.add(builder.extract_element(h, ir.Constant(I32, 0)), builder.extract_element(h, ir.Constant(I32, 1)))


def _hsum4_i32(builder, vs):
    """``<4 x i32>`` of the lane sums of four ``<8 x i32>`` vectors (a transposing shuffle tree)."""
    t = [_halves_i32(builder, v) for v in vs]
    u = [builder.add(builder.shuffle_vector(a, b, _indices([0, 4, 1, 5])), builder.shuffle_vector(a, b, _indices([2, 6, 3, 7])))
         for a, b in ((t[0], t[1]), (t[2], t[3]))]  # [a0+a2, b0+b2, a1+a3, b1+b3]
    return builder.add(builder.shuffle_vector(u[0], u[1], _indices([0, 1, 4, 5])),
                       builder.shuffle_vector(u[0], u[1], _indices([2, 3, 6, 7])))


def _hsum8(builder, acc):
    """ggml's ``hsum_float_8``: ``((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7))``."""
    a = [builder.extract_element(acc, ir.Constant(I32, lane)) for lane in range(8)]
    r0, r1, r2, r3 = (builder.fadd(a[4 + j], a[j]) for j in range(4))
    return builder.fadd(builder.fadd(r0, r2), builder.fadd(r1, r3))


def _fma_block(builder, d, lanes, acc):
    """``acc = fma(splat(d), float(lanes), acc)`` (``_mm256_fmadd_ps``)."""
    v8f = _vec(F32, 8)
    fma = _function(builder, "llvm.fma.v8f32", v8f, [v8f] * 3)
    dv = builder.insert_element(ir.Constant(v8f, ir.Undefined), d, ir.Constant(I32, 0))
    dv = builder.shuffle_vector(dv, dv, _indices([0] * 8))
    return builder.call(fma, [dv, builder.sitofp(lanes, v8f), acc])


def _nibbles(builder, qs):
    """``<32 x i8>``: the low nibbles of 16 bytes, then the high ones (ggml's ``bytes_from_nibbles_32``)."""
    return builder.shuffle_vector(builder.and_(qs, _splat(I8, 16, 15)), builder.lshr(qs, _splat(I8, 16, 4)),
                                  _indices(range(32)))


def _weight_block(builder, kind: int, blk, with_d: bool = True):
    """Block ``blk`` (an i64 address) of a weight row: ``(d_w, m_w or None, unsigned quants, signed quants or None)``
    (``d_w`` None if not ``with_d``: Q8_0 / Q5_0 scales then come four blocks at a time).

    Q4_1 quants are 0..15 already. Q8_0 / Q5_0 quants are signed: ggml feeds ``pmaddubsw`` with
    ``|q|`` and moves the signs onto the activations (:func:`_sign`), so ``q`` is returned too.
    """
    if kind == KIND_Q4_1:  # d, m, 16 bytes of nibbles
        d_w, m_w = _load_f16_pair(builder, blk)
        return d_w, m_w, _nibbles(builder, _load(builder, _vec(I8, 16), blk, 4)), None
    d_w = _load_f16(builder, blk) if with_d else None
    if kind == KIND_Q8_0:  # d, 32 int8
        qw = _load(builder, _vec(I8, 32), blk, 2)
    else:  # Q5_0: d, qh (the 32 fifth bits), 16 bytes of nibbles; q - 16 = nibble | (0xF0 unless the bit is set)
        high = builder.bitcast(_load(builder, I32, blk, 2), _vec(ir.IntType(1), 32))  # bit j -> element j
        qw = builder.or_(_nibbles(builder, _load(builder, _vec(I8, 16), blk, 6)),
                         builder.select(high, _splat(I8, 32, 0), _splat(I8, 32, 0xF0)))
    v32 = _vec(I8, 32)
    absolute = builder.call(_function(builder, "llvm.abs.v32i8", v32, [v32, ir.IntType(1)]),
                            [qw, ir.Constant(ir.IntType(1), 0)])  # vpabsb (|-128| = 128 as unsigned)
    return d_w, None, absolute, qw


def _sign(builder, qy, qw):
    """``qy`` times the sign of ``qw`` (``psignb``: 0 where ``qw`` is 0, where ``|qw|`` is 0 too)."""
    if HAS_AVX2:
        v32 = _vec(I8, 32)
        return builder.call(_function(builder, "llvm.x86.avx2.psign.b", v32, [v32, v32]), [qy, qw])
    negative = builder.icmp_signed("<", qw, _splat(I8, 32, 0))
    return builder.select(negative, builder.neg(qy), qy)


# -- the dot product ----------------------------------------------------------------------
SCALE_CHUNK = 64  # Q8_0 / Q5_0: blocks whose d_w * d_x products are staged on the stack at a time
TOKENS_PER_PASS = 4  # prefill: tokens that share one unpacking of a weight block
WIDE_PASS = 8  # tiled Q6_K: tokens per pass (ggml-cpu's tiled kernel also works on 8 columns at once)
BLOCK_BYTES = {KIND_Q4_1: SIZEOF_BLOCK_Q4_1, KIND_Q8_0: SIZEOF_BLOCK_Q8_0, KIND_Q5_0: SIZEOF_BLOCK_Q5_0,
               KIND_Q4_K: SIZEOF_BLOCK_Q4_K, KIND_Q6_K: SIZEOF_BLOCK_Q6_K, KIND_Q6_K_TILED: SIZEOF_BLOCK_Q6_K,
               KIND_Q4_K_ROWS: SIZEOF_BLOCK_Q4_K}


class _Operands:
    """Addresses of one token's operands in :func:`dot_row` (i64 values), and how to load from them."""

    def __init__(self, builder, args, t: int):
        _, _, self.w, x, x_stride, xd, xd_stride, xs, xs_stride, _, out, out_stride = args
        tok = ir.Constant(I64, t)
        self.builder = builder
        self.x = builder.add(x, builder.mul(tok, x_stride))  # int8 quants
        self.xd = builder.add(xd, builder.mul(tok, xd_stride))  # float32 scales, one per block
        self.xs = builder.add(xs, builder.mul(tok, xs_stride))  # Q8_1: float32 s; Q8_K: int16 bsums
        self.out = builder.add(out, builder.mul(tok, out_stride))

    def store(self, value):
        self.builder.store(value, self.builder.inttoptr(self.out, F32.as_pointer()), align=4)


def _emit_q32(builder, kind: int, n_t: int, args, nb):
    """Blocks of 32 (Q4_1 x Q8_1, Q8_0 / Q5_0 x Q8_0): ggml's ``vec_dot`` (see the module docstring).
    Q8_0 / Q5_0 go four blocks at a time: their four weight scales in one conversion
    (:func:`_load_f16x4`) and ``d_w * d_x`` as one 4-lane multiply per token (the same products)."""
    tok = [_Operands(builder, args, t) for t in range(n_t)]
    const = lambda v: ir.Constant(I64, v)  # noqa: E731
    v8f = _vec(F32, 8)
    accs = [cgutils.alloca_once_value(builder, ir.Constant(v8f, [ir.Constant(F32, 0.0)] * 8)) for _ in range(n_t)]
    summs = [cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0)) for _ in range(n_t)]
    block_addr = lambda b: builder.add(tok[0].w, builder.mul(b, const(BLOCK_BYTES[kind])))  # noqa: E731

    def one_block(b, scales=None):
        """Block ``b`` for every token; ``scales``: each token's ``d_w * d_x``, if already computed."""
        b4, b32 = builder.mul(b, const(4)), builder.mul(b, const(32))
        d_w, m_w, qx, qw = _weight_block(builder, kind, block_addr(b), with_d=scales is None)
        for t, op in enumerate(tok):
            qy = _load(builder, _vec(I8, 32), op.x, b32)
            if qw is not None:
                qy = _sign(builder, qy, qw)
            if m_w is not None:  # summs += m_w * s_x: two roundings, not fused (as ggml's binary does)
                s_x = _load(builder, F32, op.xs, b4, 4)
                builder.store(builder.fadd(builder.load(summs[t]), builder.fmul(m_w, s_x)), summs[t])
            d = scales[t] if scales is not None else builder.fmul(d_w, _load(builder, F32, op.xd, b4, 4))
            builder.store(_fma_block(builder, d, _lane_sums(builder, qx, qy), builder.load(accs[t])), accs[t])

    if kind == KIND_Q4_1:  # d and m come as a pair already (_load_f16_pair)
        with cgutils.for_range(builder, nb) as loop:
            one_block(loop.index)
    else:
        # d_w * d_x of SCALE_CHUNK blocks per token go to a stack buffer first, four blocks per
        # conversion and multiply; the block loop then reads each as a memory operand broadcast
        # into its FMA (``{1to8}``), where extracting it from a register cost two shuffles.
        scratch = builder.ptrtoint(cgutils.alloca_once(builder, ir.ArrayType(F32, SCALE_CHUNK * n_t)), I64)
        scale_at = lambda t, j: builder.add(scratch, builder.mul(builder.add(const(t * SCALE_CHUNK), j), const(4)))  # noqa: E731
        n4x4 = builder.mul(builder.udiv(nb, const(4)), const(4))
        with cgutils.for_range_slice(builder, const(0), n4x4, const(SCALE_CHUNK)) as (c0, _):
            c1 = builder.select(builder.icmp_unsigned("<", builder.add(c0, const(SCALE_CHUNK)), n4x4),
                                builder.add(c0, const(SCALE_CHUNK)), n4x4)
            with cgutils.for_range_slice(builder, c0, c1, const(4)) as (b0, _):
                d_w4 = _load_f16x4(builder, [block_addr(builder.add(b0, const(i))) for i in range(4)])
                for t, op in enumerate(tok):
                    product = builder.fmul(d_w4, _load(builder, _vec(F32, 4), op.xd, builder.mul(b0, const(4)), 4))
                    builder.store(product, builder.inttoptr(scale_at(t, builder.sub(b0, c0)), _vec(F32, 4).as_pointer()), align=4)
            with cgutils.for_range_slice(builder, c0, c1, const(4)) as (b0, _):
                for i in range(4):
                    b = builder.add(b0, const(i))
                    one_block(b, [_load(builder, F32, scale_at(t, builder.sub(b, c0)), 0, 4) for t in range(n_t)])
        with cgutils.for_range_slice(builder, n4x4, nb, const(1)) as (b, _):
            one_block(b)
    for t, op in enumerate(tok):
        total = _hsum8(builder, builder.load(accs[t]))
        if kind == KIND_Q4_1:
            total = builder.fadd(total, builder.load(summs[t]))
        op.store(total)


def _splat_lane(builder, v, lane: int, n: int):
    """Lane ``lane`` of vector ``v`` repeated ``n`` times."""
    return builder.shuffle_vector(v, v, _indices([lane] * n))


def _q4_K_scales_mins(builder, blk):
    """The 8 six-bit scales and 8 mins of a Q4_K super-block as ``<16 x i16>`` (scales, then mins):
    ggml's ``utmp`` shuffle of the 12 packed bytes at ``blk + 4``."""
    u0, u1, u2 = (_load(builder, I32, blk, 4 + 4 * i) for i in range(3))
    c = lambda v: ir.Constant(I32, v)  # noqa: E731
    low6, low4, top2 = c(0x3F3F3F3F), c(0x0F0F0F0F), c(0x03030303)
    sc_lo = builder.and_(u0, low6)  # scales 0..3
    sc_hi = builder.or_(builder.and_(u2, low4), builder.shl(builder.and_(builder.lshr(u0, c(6)), top2), c(4)))
    mn_lo = builder.and_(u1, low6)  # mins 0..3
    mn_hi = builder.or_(builder.and_(builder.lshr(u2, c(4)), low4), builder.shl(builder.and_(builder.lshr(u1, c(6)), top2), c(4)))
    words = ir.Constant(_vec(I32, 4), ir.Undefined)
    for i, w in enumerate((sc_lo, sc_hi, mn_lo, mn_hi)):
        words = builder.insert_element(words, w, ir.Constant(I32, i))
    return builder.zext(builder.bitcast(words, _vec(I8, 16)), _vec(I16, 16))


def _emit_q4_K(builder, n_t: int, args, nb, gemv: bool | None = None):
    """Q4_K x Q8_K as llama.cpp's AVX2 build runs it: the repacked kernels of its CPU_REPACK buffer
    (which takes every Q4_K matrix with a multiple of 8 rows). Exact integers per sub-block ``j``,
    ``isum_j = sc_j sum_i q_i y_i`` and ``imin_j = m_j sum_i y_i``, then two FMA chains per row::

        acc  = fma(float(isum), d_w * d_y, acc)        accm = fma(float(imin), dmin_w * d_y, accm)

    folding the integers of a whole super-block per FMA for one token (``ggml_gemv_q4_K_8x8_q8_K``)
    and of each pair of sub-blocks for four (``ggml_gemm_q4_K_8x8_q8_K``); the result ``acc - accm``.
    ``gemv`` (default: ``n_t == 1``) takes the one-token order for all ``n_t`` tokens."""
    gemv = n_t == 1 if gemv is None else gemv
    tok = [_Operands(builder, args, t) for t in range(n_t)]
    const = lambda v: ir.Constant(I64, v)  # noqa: E731
    fma = _function(builder, "llvm.fma.f32", F32, [F32] * 3)
    zero = ir.Constant(F32, 0.0)
    accs = [cgutils.alloca_once_value(builder, zero) for _ in range(n_t)]
    accms = [cgutils.alloca_once_value(builder, zero) for _ in range(n_t)]
    with cgutils.for_range(builder, nb) as loop:
        b = loop.index
        blk = builder.add(tok[0].w, builder.mul(b, const(SIZEOF_BLOCK_Q4_K)))
        d_w, dmin_w = _load_f16_pair(builder, blk)
        sm = _q4_K_scales_mins(builder, blk)
        scale = [_splat_lane(builder, sm, j, 16) for j in range(8)]
        mins = builder.zext(builder.shuffle_vector(sm, sm, _indices(range(8, 16))), _vec(I32, 8))
        quants = []  # (low nibbles, high nibbles) of each 64 weights: sub-blocks 2p and 2p+1
        for p in range(4):
            qs = _load(builder, _vec(I8, 32), blk, 16 + 32 * p)
            quants.append((builder.and_(qs, _splat(I8, 32, 15)), builder.lshr(qs, _splat(I8, 32, 4))))
        for t, op in enumerate(tok):
            y = builder.add(op.x, builder.mul(b, const(256)))
            bsums = builder.sext(_load(builder, _vec(I16, 16), op.xs, builder.mul(b, const(32)), 2), _vec(I32, 16))
            min_terms = builder.mul(_pairs(builder, bsums, 16), mins)  # m_j * (sum of y over sub-block j)
            d_y = _load(builder, F32, op.xd, builder.mul(b, const(4)), 4)
            dd, ddm = builder.fmul(d_w, d_y), builder.fmul(dmin_w, d_y)
            pair_lanes = []  # per pair of sub-blocks: 8 int32 lanes of sc_j * q_i * y_i
            for p, (lo, hi) in enumerate(quants):
                y_lo, y_hi = _load(builder, _vec(I8, 32), y, 64 * p), _load(builder, _vec(I8, 32), y, 64 * p + 32)
                pair_lanes.append(builder.add(_maddwd(builder, _maddubs(builder, lo, y_lo), scale[2 * p]),
                                              _maddwd(builder, _maddubs(builder, hi, y_hi), scale[2 * p + 1])))
            if gemv:  # one FMA per super-block
                total = builder.add(builder.add(pair_lanes[0], pair_lanes[1]), builder.add(pair_lanes[2], pair_lanes[3]))
                isums = [builder.sitofp(_hsum_i32(builder, total), F32)]
                imins = [builder.sitofp(_hsum_i32(builder, min_terms), F32)]
            else:  # gemm: one FMA per pair of sub-blocks
                iv = builder.sitofp(_hsum4_i32(builder, pair_lanes), _vec(F32, 4))
                mv = builder.sitofp(_pairs(builder, min_terms, 8), _vec(F32, 4))
                isums = [builder.extract_element(iv, ir.Constant(I32, p)) for p in range(4)]
                imins = [builder.extract_element(mv, ir.Constant(I32, p)) for p in range(4)]
            for isum, imin in zip(isums, imins):
                builder.store(builder.call(fma, [isum, dd, builder.load(accs[t])]), accs[t])
                builder.store(builder.call(fma, [imin, ddm, builder.load(accms[t])]), accms[t])
    for t, op in enumerate(tok):
        op.store(builder.fsub(builder.load(accs[t]), builder.load(accms[t])))


def _transpose4_i32(builder, rows):
    """The 4x4 transpose of four ``<4 x i32>``: element ``i`` of result ``j`` is element ``j`` of row ``i``."""
    lo = [builder.shuffle_vector(rows[a], rows[b], _indices([0, 4, 1, 5])) for a, b in ((0, 1), (2, 3))]
    hi = [builder.shuffle_vector(rows[a], rows[b], _indices([2, 6, 3, 7])) for a, b in ((0, 1), (2, 3))]
    return [builder.shuffle_vector(lo[0], lo[1], _indices([0, 1, 4, 5])), builder.shuffle_vector(lo[0], lo[1], _indices([2, 3, 6, 7])),
            builder.shuffle_vector(hi[0], hi[1], _indices([0, 1, 4, 5])), builder.shuffle_vector(hi[0], hi[1], _indices([2, 3, 6, 7]))]


def _emit_q4_K_gemm(builder, n_t: int, args, nb):
    """:func:`_emit_q4_K`'s gemm order for ``n_t`` (a multiple of 4) tokens, four tokens per vector:
    per pair of sub-blocks the 64 weights are unpacked once and fed to every token, one horizontal
    sum gives four tokens' ``isum`` (:func:`_hsum4_i32`), and the two FMA chains run 4 lanes wide
    (``acc = fma(float(isum), d_w * d_y, acc)``, ``accm = fma(float(imin), dmin_w * d_y, accm)``, pairs
    in order): per token exactly the operations of the four-token loop."""
    tok = [_Operands(builder, args, t) for t in range(n_t)]
    const = lambda v: ir.Constant(I64, v)  # noqa: E731
    v4f = _vec(F32, 4)
    fma4 = _function(builder, "llvm.fma.v4f32", v4f, [v4f] * 3)
    groups = [tok[g:g + 4] for g in range(0, n_t, 4)]
    zero4 = ir.Constant(v4f, [ir.Constant(F32, 0.0)] * 4)
    accs = [cgutils.alloca_once_value(builder, zero4) for _ in groups]
    accms = [cgutils.alloca_once_value(builder, zero4) for _ in groups]
    with cgutils.for_range(builder, nb) as loop:
        b = loop.index
        blk = builder.add(tok[0].w, builder.mul(b, const(SIZEOF_BLOCK_Q4_K)))
        d_w, dmin_w = _load_f16_pair(builder, blk)
        sm = _q4_K_scales_mins(builder, blk)
        ys = [builder.add(op.x, builder.mul(b, const(256))) for op in tok]
        isums = []  # per pair p: per group, <4 x float> of the four tokens' isum
        for p in range(4):
            qs = _load(builder, _vec(I8, 32), blk, 16 + 32 * p)
            lo, hi = builder.and_(qs, _splat(I8, 32, 15)), builder.lshr(qs, _splat(I8, 32, 4))
            s_lo, s_hi = _splat_lane(builder, sm, 2 * p, 16), _splat_lane(builder, sm, 2 * p + 1, 16)
            lanes = []
            for t in range(n_t):
                y_lo, y_hi = _load(builder, _vec(I8, 32), ys[t], 64 * p), _load(builder, _vec(I8, 32), ys[t], 64 * p + 32)
                lanes.append(builder.add(_maddwd(builder, _maddubs(builder, lo, y_lo), s_lo),
                                         _maddwd(builder, _maddubs(builder, hi, y_hi), s_hi)))
            isums.append([builder.sitofp(_hsum4_i32(builder, lanes[4 * g:4 * g + 4]), v4f) for g in range(len(groups))])
        mins = builder.zext(builder.shuffle_vector(sm, sm, _indices(range(8, 16))), _vec(I32, 8))
        imins = []  # per group: per pair p, <4 x float> of the four tokens' imin
        for ops in groups:
            per_token = []  # <4 x i32>: m_2p S_2p + m_2p+1 S_2p+1 for p = 0..3
            for op in ops:
                bsums = builder.sext(_load(builder, _vec(I16, 16), op.xs, builder.mul(b, const(32)), 2), _vec(I32, 16))
                per_token.append(_pairs(builder, builder.mul(_pairs(builder, bsums, 16), mins), 8))
            imins.append([builder.sitofp(v, v4f) for v in _transpose4_i32(builder, per_token)])
        d_w4 = _splat_lane(builder, builder.insert_element(ir.Constant(v4f, ir.Undefined), d_w, ir.Constant(I32, 0)), 0, 4)
        dmin4 = _splat_lane(builder, builder.insert_element(ir.Constant(v4f, ir.Undefined), dmin_w, ir.Constant(I32, 0)), 0, 4)
        for g, ops in enumerate(groups):
            d_y = _gather4(builder, ops, b)
            dd, ddm = builder.fmul(d_w4, d_y), builder.fmul(dmin4, d_y)
            acc, accm = builder.load(accs[g]), builder.load(accms[g])
            for p in range(4):
                acc = builder.call(fma4, [isums[p][g], dd, acc])
                accm = builder.call(fma4, [imins[g][p], ddm, accm])
            builder.store(acc, accs[g])
            builder.store(accm, accms[g])
    for g, ops in enumerate(groups):
        res = builder.fsub(builder.load(accs[g]), builder.load(accms[g]))
        for i, op in enumerate(ops):
            op.store(builder.extract_element(res, ir.Constant(I32, i)))


def _emit_q6_K(builder, n_t: int, args, nb, tiled: bool = False):
    """Q6_K x Q8_K: ggml's AVX2 ``ggml_vec_dot_q6_K_q8_K``. Per 32 weights (chunk ``k`` of half ``j``)
    the unsigned 6-bit ``q = ql | qh << 4`` times ``y`` (``pmaddubsw``), times the two 16-weight scales
    (``pmaddwd``), into 8 int32 lanes; the offset ``-32`` enters once per super-block through the
    bsums: lane ``l`` loses ``32 (sc_2l bsum_2l + sc_2l+1 bsum_2l+1)``. Then
    ``acc = fma(d_y * d_w, float(lanes), acc)``; the result ``hsum8(acc)``.

    ``tiled``: the same exact integers, but summed over the whole super-block first, then one scalar
    chain ``acc = fma(d_w * float(isum), d_y, acc)`` -- ggml-cpu's tiled K-quant matmul
    (``tiled_run_microtile_avx2<16, false, 32, 1, true>``: ``res = d0 * cvt(s1)``, ``buf = fma(res, d1, buf)``
    per 256-weight slab), which llama.cpp runs for Q6_K weights once a batch has 8 tokens or more."""
    tok = [_Operands(builder, args, t) for t in range(n_t)]
    const = lambda v: ir.Constant(I64, v)  # noqa: E731
    v8f = _vec(F32, 8)
    if tiled:
        fma1 = _function(builder, "llvm.fma.f32", F32, [F32] * 3)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0)) for _ in range(n_t)]
    else:
        accs = [cgutils.alloca_once_value(builder, ir.Constant(v8f, [ir.Constant(F32, 0.0)] * 8)) for _ in range(n_t)]
    m4, m3 = _splat(I8, 32, 15), _splat(I8, 32, 3)
    shift = lambda v, n: builder.lshr(v, _splat(I8, 32, n))  # noqa: E731
    high = lambda h, n: builder.shl(builder.and_(shift(h, n) if n else h, m3), _splat(I8, 32, 4))  # noqa: E731
    with cgutils.for_range(builder, nb) as loop:
        b = loop.index
        blk = builder.add(tok[0].w, builder.mul(b, const(SIZEOF_BLOCK_Q6_K)))
        d_w = _load_f16(builder, blk, 208)
        sc = builder.sext(_load(builder, _vec(I8, 16), blk, 192), _vec(I16, 16))
        chunks = []  # (6-bit quants, scales as 8 + 8 int16) of weights 128 j + 32 k .. + 31
        for j in range(2):
            ql1, ql2 = _load(builder, _vec(I8, 32), blk, 64 * j), _load(builder, _vec(I8, 32), blk, 64 * j + 32)
            qh = _load(builder, _vec(I8, 32), blk, 128 + 32 * j)
            q = (builder.or_(builder.and_(ql1, m4), high(qh, 0)), builder.or_(builder.and_(ql2, m4), high(qh, 2)),
                 builder.or_(shift(ql1, 4), high(qh, 4)), builder.or_(shift(ql2, 4), high(qh, 6)))
            for k in range(4):
                s = 8 * j + 2 * k
                chunks.append((q[k], builder.shuffle_vector(sc, sc, _indices([s] * 8 + [s + 1] * 8))))
        for t, op in enumerate(tok):
            y = builder.add(op.x, builder.mul(b, const(256)))
            lanes = ir.Constant(_vec(I32, 8), [ir.Constant(I32, 0)] * 8)
            for c, (q, scale) in enumerate(chunks):
                lanes = builder.add(lanes, _maddwd(builder, scale, _maddubs(builder, q, _load(builder, _vec(I8, 32), y, 32 * c))))
            bsums = _load(builder, _vec(I16, 16), op.xs, builder.mul(b, const(32)), 2)
            lanes = builder.sub(lanes, builder.shl(_maddwd(builder, bsums, sc), _splat(I32, 8, 5)))  # the -32 offset
            d_y = _load(builder, F32, op.xd, builder.mul(b, const(4)), 4)
            if tiled:
                res = builder.fmul(d_w, builder.sitofp(_hsum_i32(builder, lanes), F32))
                builder.store(builder.call(fma1, [res, d_y, builder.load(accs[t])]), accs[t])
            else:
                builder.store(_fma_block(builder, builder.fmul(d_y, d_w), lanes, builder.load(accs[t])), accs[t])
    for t, op in enumerate(tok):
        op.store(builder.load(accs[t]) if tiled else _hsum8(builder, builder.load(accs[t])))


def _gather4(builder, ops, index):
    """``<4 x float>``: the float32 at ``op.xd + 4 * index`` of four tokens' operands."""
    v = ir.Constant(_vec(F32, 4), ir.Undefined)
    off = builder.mul(index, ir.Constant(I64, 4))
    for i, op in enumerate(ops):
        v = builder.insert_element(v, _load(builder, F32, op.xd, off, 4), ir.Constant(I32, i))
    return v


def _emit_q6_K_tiled(builder, n_t: int, args, nb):
    """:func:`_emit_q6_K` ``tiled`` for ``n_t`` (a multiple of 4) tokens, arranged as ggml-cpu's tiled
    kernel arranges its work: each 32-weight chunk is unpacked once and fed to every token's int32
    lanes (``n_t`` accumulators in registers), then four tokens at a time one horizontal sum
    (:func:`_hsum4_i32`) and one 4-lane ``acc = fma(d_w * float(isum), d_y, acc)``. Per token the
    same integers and the same two float roundings per super-block as the one-token loop."""
    tok = [_Operands(builder, args, t) for t in range(n_t)]
    const = lambda v: ir.Constant(I64, v)  # noqa: E731
    v4f = _vec(F32, 4)
    fma4 = _function(builder, "llvm.fma.v4f32", v4f, [v4f] * 3)
    groups = [tok[g:g + 4] for g in range(0, n_t, 4)]
    accs = [cgutils.alloca_once_value(builder, ir.Constant(v4f, [ir.Constant(F32, 0.0)] * 4)) for _ in groups]
    m4, m3 = _splat(I8, 32, 15), _splat(I8, 32, 3)
    shift = lambda v, n: builder.lshr(v, _splat(I8, 32, n))  # noqa: E731
    high = lambda h, n: builder.shl(builder.and_(shift(h, n) if n else h, m3), _splat(I8, 32, 4))  # noqa: E731
    with cgutils.for_range(builder, nb) as loop:
        b = loop.index
        blk = builder.add(tok[0].w, builder.mul(b, const(SIZEOF_BLOCK_Q6_K)))
        sc = builder.sext(_load(builder, _vec(I8, 16), blk, 192), _vec(I16, 16))
        ys = [builder.add(op.x, builder.mul(b, const(256))) for op in tok]
        lanes = [ir.Constant(_vec(I32, 8), [ir.Constant(I32, 0)] * 8)] * n_t
        for j in range(2):
            ql1, ql2 = _load(builder, _vec(I8, 32), blk, 64 * j), _load(builder, _vec(I8, 32), blk, 64 * j + 32)
            qh = _load(builder, _vec(I8, 32), blk, 128 + 32 * j)
            q = (builder.or_(builder.and_(ql1, m4), high(qh, 0)), builder.or_(builder.and_(ql2, m4), high(qh, 2)),
                 builder.or_(shift(ql1, 4), high(qh, 4)), builder.or_(shift(ql2, 4), high(qh, 6)))
            for k in range(4):
                s, c = 8 * j + 2 * k, 4 * j + k
                scale = builder.shuffle_vector(sc, sc, _indices([s] * 8 + [s + 1] * 8))
                for t in range(n_t):
                    y = _load(builder, _vec(I8, 32), ys[t], 32 * c)
                    lanes[t] = builder.add(lanes[t], _maddwd(builder, scale, _maddubs(builder, q[k], y)))
        for t, op in enumerate(tok):  # the -32 offset
            bsums = _load(builder, _vec(I16, 16), op.xs, builder.mul(b, const(32)), 2)
            lanes[t] = builder.sub(lanes[t], builder.shl(_maddwd(builder, bsums, sc), _splat(I32, 8, 5)))
        d_w = _load_f16(builder, blk, 208)
        d_w4 = _splat_lane(builder, builder.insert_element(ir.Constant(v4f, ir.Undefined), d_w, ir.Constant(I32, 0)), 0, 4)
        for g, ops in enumerate(groups):
            isum = builder.sitofp(_hsum4_i32(builder, lanes[4 * g:4 * g + 4]), v4f)
            res = builder.fmul(d_w4, isum)
            builder.store(builder.call(fma4, [res, _gather4(builder, ops, b), builder.load(accs[g])]), accs[g])
    for g, ops in enumerate(groups):
        acc = builder.load(accs[g])
        for i, op in enumerate(ops):
            op.store(builder.extract_element(acc, ir.Constant(I32, i)))


@intrinsic
def dot_row(typingctx, kind, n_tok, w_addr, x_addr, x_stride, xd_addr, xd_stride, xs_addr, xs_stride, nb,
            out_addr, out_stride):
    """One weight row (``nb`` GGUF blocks at ``w_addr``) times ``n_tok`` tokens' 8-bit activations, in
    one pass over the blocks: each block is unpacked once and used for every token; per token
    llama.cpp's operations, bit for bit. Token ``t``'s result goes to ``out_addr + t * out_stride``
    (float32).

    ``kind`` (an integer literal, as ``n_tok``): :data:`KIND_Q4_1` (x Q8_1), :data:`KIND_Q8_0` or
    :data:`KIND_Q5_0` (x Q8_0), :data:`KIND_Q4_K` or :data:`KIND_Q6_K` (x Q8_K; ``nb`` super-blocks).
    Token ``t``'s int8 quants are at ``x_addr + t * x_stride``, its float32 block scales at
    ``xd_addr + t * xd_stride`` and its Q8_1 sums (float32) or Q8_K bsums (int16) at ``xs_addr + t * xs_stride``.
    """
    from numba.core.errors import TypingError

    for name, arg in (("kind", kind), ("n_tok", n_tok)):
        if not isinstance(arg, types.IntegerLiteral):
            raise TypingError(f"dot_row: {name} must be an integer literal")
    w_kind, n_t = kind.literal_value, n_tok.literal_value
    if w_kind not in BLOCK_BYTES:
        raise TypingError(f"dot_row: unknown kind {w_kind}")
    sig = types.none(kind, n_tok, *([types.int64] * 10))

    def codegen(context, builder, signature, args):
        nb = args[9]
        if w_kind == KIND_Q4_K and n_t % 4 == 0:
            _emit_q4_K_gemm(builder, n_t, args, nb)
        elif w_kind == KIND_Q4_K:
            _emit_q4_K(builder, n_t, args, nb)
        elif w_kind == KIND_Q4_K_ROWS:  # the gemv order for every token
            _emit_q4_K(builder, n_t, args, nb, gemv=True)
        elif w_kind == KIND_Q6_K_TILED and n_t % 4 == 0:
            _emit_q6_K_tiled(builder, n_t, args, nb)
        elif w_kind in (KIND_Q6_K, KIND_Q6_K_TILED):
            _emit_q6_K(builder, n_t, args, nb, tiled=w_kind == KIND_Q6_K_TILED)
        else:
            _emit_q32(builder, w_kind, n_t, args, nb)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def prefetch_row(typingctx, addr, n_bytes):
    """Ask the CPU to start loading the ``n_bytes`` at ``addr`` into its caches (one ``prefetcht0``
    per 64-byte line; a hint: it never faults, whatever the address). A one-token product reads each
    weight row once: prefetching a few rows ahead keeps more loads in flight than the hardware
    prefetcher alone (Gemma's 178 MB output head: ~15% faster, measured)."""
    sig = types.none(types.int64, types.int64)

    def codegen(context, builder, signature, args):
        addr, n_bytes = args
        fn = _function(builder, "llvm.prefetch.p0", ir.VoidType(), [I8.as_pointer(), I32, I32, I32])
        with cgutils.for_range_slice(builder, ir.Constant(I64, 0), n_bytes, ir.Constant(I64, 64)) as (off, _):
            ptr = builder.inttoptr(builder.add(addr, off), I8.as_pointer())
            builder.call(fn, [ptr, ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])
        return context.get_dummy_value()

    return sig, codegen


PREFETCH_ROWS = 4  # how far ahead one-token products prefetch


@njit(cache=True, inline="always")
def dot_any(kind, n_tok, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride):
    """:func:`dot_row` for a ``kind`` known at run time and ``n_tok`` of 1 or :data:`TOKENS_PER_PASS`
    (each branch passes literals, so each compiles its own specialised loop)."""
    if kind == KIND_Q4_1:
        if n_tok == 1:
            dot_row(1, 1, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride)
        elif n_tok == 4:
            dot_row(1, 4, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride)
        else:
            dot_row(1, 8, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride)
    elif kind == KIND_Q8_0:
        if n_tok == 1:
            dot_row(0, 1, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride)
        elif n_tok == 4:
            dot_row(0, 4, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride)
        else:
            dot_row(0, 8, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride)
    elif kind == KIND_Q5_0:
        if n_tok == 1:
            dot_row(2, 1, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride)
        elif n_tok == 4:
            dot_row(2, 4, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride)
        else:
            dot_row(2, 8, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride)
    elif kind == KIND_Q4_K:
        if n_tok == 1:
            dot_row(3, 1, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride)
        elif n_tok == 4:
            dot_row(3, 4, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride)
        else:
            dot_row(3, 8, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride)
    elif kind == KIND_Q4_K_ROWS:
        if n_tok == 1:
            dot_row(6, 1, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride)
        elif n_tok == 4:
            dot_row(6, 4, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride)
        else:
            dot_row(6, 8, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride)
    elif kind == KIND_Q6_K:
        if n_tok == 1:
            dot_row(4, 1, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride)
        else:
            dot_row(4, 4, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride)
    else:  # KIND_Q6_K_TILED
        if n_tok == 1:
            dot_row(5, 1, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride)
        elif n_tok == 4:
            dot_row(5, 4, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride)
        else:
            dot_row(5, 8, w, xa, x_stride, xda, xd_stride, xsa, xs_stride, nb, oa, o_stride)


# -- matrix products --------------------------------------------------------------------
@njit(cache=True, inline="always")
def _pass_width(kind, t, n_tok):
    """How many tokens, from token ``t`` on, one :func:`dot_any` call takes."""
    wide = WIDE_PASS if (kind == KIND_Q8_0 or kind == KIND_Q4_1 or kind == KIND_Q5_0 or kind == KIND_Q4_K or kind == KIND_Q6_K_TILED or kind == KIND_Q4_K_ROWS) else TOKENS_PER_PASS
    if t + wide <= n_tok:
        return wide
    if t + TOKENS_PER_PASS <= n_tok:
        return TOKENS_PER_PASS
    return 1


@njit(cache=True, inline="always")
def _row_pass(w0, row_stride, r, kind, t, step, xq, xd, xs, out):
    """Row ``r`` times tokens ``t .. t+step-1`` (``out`` C-contiguous)."""
    dot_any(kind, step, w0 + r * row_stride, xq.ctypes.data + t * xq.strides[0], xq.strides[0],
            xd.ctypes.data + t * xd.strides[0], xd.strides[0], xs.ctypes.data + t * xs.strides[0], xs.strides[0],
            xd.shape[1], out.ctypes.data + t * out.strides[0] + r * out.strides[1], out.strides[0])


@njit(cache=True, inline="always")
def _row_times_tokens(w0, row_stride, r, kind, xq, xd, xs, out):
    """Row ``r`` times every token: eight or four at a time, the rest one by one."""
    t = 0
    while t < xq.shape[0]:
        step = _pass_width(kind, t, xq.shape[0])
        _row_pass(w0, row_stride, r, kind, t, step, xq, xd, xs, out)
        t += step


ROW_TILE = 16  # prefill: weight rows that share one pass over a group of tokens' activations


@njit(cache=True, parallel=True, nogil=True)
def _mm_parallel(raw, kind, xq, xd, xs, out):
    """``out (1, n_out)``: every row of ``raw`` times one token (decode), rows split between threads,
    a few rows prefetched ahead."""
    w0, row_stride = raw.ctypes.data, raw.strides[0]
    n_out = raw.shape[0]
    for r in prange(n_out):
        if r + PREFETCH_ROWS < n_out:
            prefetch_row(w0 + (r + PREFETCH_ROWS) * row_stride, row_stride)
        _row_times_tokens(w0, row_stride, r, kind, xq, xd, xs, out)


@njit(cache=True, parallel=True, nogil=True)
def _mm_tiles_parallel(raw, kind, xq, xd, xs, out):
    """``out (n_tok, n_out)``: every row of ``raw`` times every token of a batch (prefill).

    Tiles of :data:`ROW_TILE` rows go to threads, and within a tile token groups are outer, so a
    group's activations (8 tokens x ``n_in`` int8) stay in L1 while the tile's rows go by, instead of
    every row streaming the whole batch's activations from L2. Every dot product is computed the same
    way as in :func:`_mm_parallel`'s order.
    """
    w0, row_stride = raw.ctypes.data, raw.strides[0]
    n_out, n_tok = raw.shape[0], xq.shape[0]
    n_tiles = -(-n_out // ROW_TILE)
    for tile in prange(n_tiles):
        r0 = tile * ROW_TILE
        r1 = min(n_out, r0 + ROW_TILE)
        t = 0
        while t < n_tok:
            step = _pass_width(kind, t, n_tok)
            for r in range(r0, r1):
                if t == 0 and r + PREFETCH_ROWS < n_out:  # first pass over the tile: rows come from DRAM
                    prefetch_row(w0 + (r + PREFETCH_ROWS) * row_stride, row_stride)
                _row_pass(w0, row_stride, r, kind, t, step, xq, xd, xs, out)
            t += step


@njit(cache=True, nogil=True)
def _mm_serial(raw, kind, xq, xd, xs, out):
    w0, row_stride = raw.ctypes.data, raw.strides[0]
    for r in range(raw.shape[0]):
        _row_times_tokens(w0, row_stride, r, kind, xq, xd, xs, out)


def quantize_activations(qtype: GGMLType, x: np.ndarray):
    """The 8-bit activations llama.cpp pairs with ``qtype`` (x86 rounding), as planes ``(xq, xd, xs)``.

    ``x (n_tok, n_in)`` -> ``xq (n_tok, n_in) int8`` and: Q8_1 for Q4_1 (``xd``, ``xs (n_tok, n_in/32)
    float32``), Q8_0 for Q8_0 / Q5_0 (``xs`` zeros), Q8_K for Q4_K / Q6_K (``xd (n_tok, n_in/256)
    float32``, ``xs`` = bsums ``(n_tok, n_in/16) int16``).
    """
    if qtype == GGMLType.Q4_1:
        return quantize_q8_32_planes(x, True, "x86")
    if qtype in (GGMLType.Q4_K, GGMLType.Q6_K):
        return quantize_q8_K_planes(x)
    xq, xd = quantize_q8_32_planes(x, False, "x86")
    return xq, xd, np.zeros_like(xd)


# the activation type each weight type pairs with: products of one input share its quantisation
ACTIVATION_TYPE = {GGMLType.Q4_1: "q8_1", GGMLType.Q8_0: "q8_0", GGMLType.Q5_0: "q8_0",
                   GGMLType.Q4_K: "q8_K", GGMLType.Q6_K: "q8_K"}


class SharedInput(np.ndarray):
    """A read-only view of one product input that remembers its 8-bit quantisations (one per
    activation type), so the products that read the same ``x`` -- q, k and v; gate and up -- quantise
    it once, as llama.cpp's graph does (``mul_mat`` converts ``src1`` once per ``vec_dot_type``).
    Made by :func:`share_input`; :func:`matmul_simd` looks the planes up while the view is read-only."""

    def __array_finalize__(self, obj):
        self.q8_planes = {}


def share_input(x: np.ndarray) -> SharedInput:
    """``x`` (float32, C-contiguous) as a read-only :class:`SharedInput` view."""
    view = np.ascontiguousarray(x, dtype=np.float32).view(SharedInput)
    view.flags.writeable = False
    return view


def _uses_q4_K_x8(w: QMatrix, n_tok: int) -> bool:
    """Whether a product of ``w`` with ``n_tok`` tokens runs on the repacked Q4_K copy
    (:mod:`.ggml_repack`: the same bits, eight rows per vector): prefill-sized batches of a Q4_K
    matrix with a multiple of 8 rows, outside :func:`batch_invariant_kernels`."""
    return (w.qtype == GGMLType.Q4_K and n_tok >= TOKENS_PER_PASS and w.n_out % 8 == 0
            and not _ROW_KERNELS_ONLY.get())


def matmul_q8_planes(w: QMatrix, xq: np.ndarray, xd: np.ndarray, xs: np.ndarray,
                     repacked: bool | None = None) -> np.ndarray:
    """``y (n_tok, n_out)`` for activations already quantised by :func:`quantize_activations`.
    ``repacked``: a Q4_K batch on the eight-rows-per-vector copy (True, where it applies) or on the
    file's rows (False); None picks the copy where it applies. The bits are the same either way."""
    n_tok = xq.shape[0]
    if _uses_q4_K_x8(w, n_tok) if repacked is None else (repacked and _uses_q4_K_x8(w, n_tok)):
        from .ggml_repack import matmul_q4_K_x8, repack_q4_K_x8  # it builds on this module's IR helpers

        if w.q4_K_x8 is None:
            w.q4_K_x8 = repack_q4_K_x8(w.raw)
        return matmul_q4_K_x8(w.q4_K_x8, xq, xd, xs)
    out = np.empty((n_tok, w.n_out), np.float32)
    if w.n_out * n_tok < 64:
        kernel = _mm_serial
    else:
        kernel = _mm_parallel if n_tok == 1 else _mm_tiles_parallel
    kernel(w.raw, kind_for(w.qtype, xq.shape[0]), xq, xd, xs, out)
    return out


_ROW_KERNELS_ONLY = contextvars.ContextVar("zigllama_row_kernels_only", default=False)


@contextlib.contextmanager
def batch_invariant_kernels(enabled: bool = True):
    """Within this block, a batch of any size computes every token as the one-token kernel does
    (no tiled Q6_K, no 4-token Q4_K gemm: llama.cpp's repacked Q4_K folds two sub-blocks per FMA for
    4 tokens, a whole super-block for one), so each row's products are the bits that row gets alone. Continuous batching uses it:
    a sequence's tokens then do not depend on how many others share its step."""
    token = _ROW_KERNELS_ONLY.set(bool(enabled))
    try:
        yield
    finally:
        _ROW_KERNELS_ONLY.reset(token)


def kind_for(qtype: GGMLType, n_tok: int) -> int:
    """The :func:`dot_row` kind llama.cpp's AVX2 CPU backend uses for ``qtype`` weights times a batch
    of ``n_tok`` tokens: :data:`KIND` [qtype], except Q6_K in a batch of :data:`TILED_MIN_TOKENS` or
    more, which ggml-cpu hands to its tiled K-quant matmul (``ggml_compute_forward_mul_mat_tiled``:
    Q6_K is not repacked on AVX2, so its ``mul_mat`` takes that path before ``vec_dot``) -- unless
    inside :func:`batch_invariant_kernels`."""
    if _ROW_KERNELS_ONLY.get():
        return KIND_Q4_K_ROWS if qtype == GGMLType.Q4_K and n_tok > 1 else KIND[qtype]
    if qtype == GGMLType.Q6_K and n_tok >= TILED_MIN_TOKENS:
        return KIND_Q6_K_TILED
    return KIND[qtype]


def matmul_simd(w: QMatrix, x: np.ndarray) -> np.ndarray:
    """``y = x @ W.T`` as llama.cpp's AVX2 CPU backend computes it, bit for bit (for Q4_1 / Q8_0 also
    :func:`.ggml_exact.matmul_ggml`'s scalar result).

    ``x (n_tok, n_in)`` or ``(n_in,)`` float32 -> ``(n_tok, n_out)`` / ``(n_out,)`` float32.
    """
    if not isinstance(w, QMatrix):
        raise ConfigError(f"matmul_simd expects a QMatrix, got {type(w).__name__}")
    if w.qtype not in SUPPORTED:
        raise ConfigError(f"matmul_simd supports {[t.name for t in SUPPORTED]}, not {w.qtype.name}")
    if w.raw.strides[1] != 1:
        raise ConfigError("matmul_simd needs weight rows stored contiguously (raw.strides[1] == 1)")
    if not isinstance(x, SharedInput):
        x = np.asarray(x, dtype=np.float32)
    vector = x.ndim == 1
    if x.ndim not in (1, 2) or x.shape[-1] != w.n_in:
        raise ConfigError(f"matmul_simd: x has shape {x.shape}, expected (n_tok, {w.n_in})")
    memo = x.q8_planes if isinstance(x, SharedInput) and not x.flags.writeable else {}
    planes = memo.get(ACTIVATION_TYPE[w.qtype])
    if planes is None:
        planes = quantize_activations(w.qtype, np.ascontiguousarray(x.reshape(-1, w.n_in)).view(np.ndarray))
        memo[ACTIVATION_TYPE[w.qtype]] = planes
    out = matmul_q8_planes(w, *planes)
    return out[0] if vector else out


# -- float32 dot products in ggml's lane orders (attention over a float16 cache) ---------
def _f32x8(builder, addr, index):
    """The 8 float32 at ``addr + 32 * index`` bytes."""
    return _load(builder, _vec(F32, 8), addr, builder.mul(index, ir.Constant(I64, 32)), 4)


@intrinsic
def dot_f32_lanes8(typingctx, a_addr, b_addr, n):
    """tinyBLAS's dot (prefill attention): ``acc[l] = fma(a[8i+l], b[8i+l], acc[l])`` over ``n``
    (a multiple of 8) float32, then ``hsum8(acc)``."""
    sig = types.float32(types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        a_addr, b_addr, n = args
        v8f = _vec(F32, 8)
        fma = _function(builder, "llvm.fma.v8f32", v8f, [v8f] * 3)
        acc_p = cgutils.alloca_once_value(builder, ir.Constant(v8f, [ir.Constant(F32, 0.0)] * 8))
        with cgutils.for_range(builder, builder.udiv(n, ir.Constant(I64, 8))) as loop:
            i = loop.index
            builder.store(builder.call(fma, [_f32x8(builder, a_addr, i), _f32x8(builder, b_addr, i),
                                             builder.load(acc_p)]), acc_p)
        return _hsum8(builder, builder.load(acc_p))

    return sig, codegen


@intrinsic
def dot_f32_lanes8_rows(typingctx, n_rows, a_addr, a_stride, b_addr, n, out_addr):
    """:func:`dot_f32_lanes8` of ``n_rows`` (an integer literal) rows ``a_addr + r * a_stride`` with one
    ``b``, into the float32 ``out_addr[r]``: each row its own accumulator, in the same order as the
    one-row loop (the same bits), but the ``n_rows`` FMA chains run side by side (one dot alone
    waits on its FMA's latency every step) and each ``b`` vector is loaded once for all rows."""
    from numba.core.errors import TypingError

    if not isinstance(n_rows, types.IntegerLiteral):
        raise TypingError("dot_f32_lanes8_rows: n_rows must be an integer literal")
    rows = n_rows.literal_value
    sig = types.none(n_rows, types.int64, types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        _, a_addr, a_stride, b_addr, n, out_addr = args
        v8f = _vec(F32, 8)
        fma = _function(builder, "llvm.fma.v8f32", v8f, [v8f] * 3)
        a_rows = [builder.add(a_addr, builder.mul(ir.Constant(I64, r), a_stride)) for r in range(rows)]
        accs = [cgutils.alloca_once_value(builder, ir.Constant(v8f, [ir.Constant(F32, 0.0)] * 8)) for _ in range(rows)]
        with cgutils.for_range(builder, builder.udiv(n, ir.Constant(I64, 8))) as loop:
            i = loop.index
            b = _f32x8(builder, b_addr, i)
            for a, acc in zip(a_rows, accs):
                builder.store(builder.call(fma, [_f32x8(builder, a, i), b, builder.load(acc)]), acc)
        for r, acc in enumerate(accs):
            ptr = builder.inttoptr(builder.add(out_addr, ir.Constant(I64, 4 * r)), F32.as_pointer())
            builder.store(_hsum8(builder, builder.load(acc)), ptr, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def dot_f32_ggml_f16(typingctx, a_addr, b_addr, n32):
    """``ggml_vec_dot_f16``'s main loop (decode attention) over ``n32`` (a multiple of 32) float32:
    four 8-lane FMA accumulators (element ``i`` in accumulator ``(i % 32) // 8``, lane ``i % 8``),
    reduced as ``x = (acc0 + acc2) + (acc1 + acc3)``, ``((x0+x4) + (x1+x5)) + ((x2+x6) + (x3+x7))``."""
    sig = types.float32(types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        a_addr, b_addr, n32 = args
        v8f = _vec(F32, 8)
        fma = _function(builder, "llvm.fma.v8f32", v8f, [v8f] * 3)
        zero = ir.Constant(v8f, [ir.Constant(F32, 0.0)] * 8)
        acc_p = [cgutils.alloca_once_value(builder, zero) for _ in range(4)]
        with cgutils.for_range(builder, builder.udiv(n32, ir.Constant(I64, 32))) as loop:
            base = builder.mul(loop.index, ir.Constant(I64, 4))
            for j in range(4):
                idx = builder.add(base, ir.Constant(I64, j))
                builder.store(builder.call(fma, [_f32x8(builder, a_addr, idx), _f32x8(builder, b_addr, idx),
                                                 builder.load(acc_p[j])]), acc_p[j])
        acc = [builder.load(p) for p in acc_p]
        x = builder.fadd(builder.fadd(acc[0], acc[2]), builder.fadd(acc[1], acc[3]))
        e = [builder.extract_element(x, ir.Constant(I32, lane)) for lane in range(8)]
        t = [builder.fadd(e[j], e[j + 4]) for j in range(4)]
        return builder.fadd(builder.fadd(t[0], t[1]), builder.fadd(t[2], t[3]))

    return sig, codegen
