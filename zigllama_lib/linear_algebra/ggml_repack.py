"""Q4_K prefill on a repacked copy: eight weight rows side by side in the lanes of one vector.

:mod:`.ggml_simd` computes Q4_K products on the file's row layout: a vector holds 32 weights of
*one* row, so every (row, token, pair of sub-blocks) ends in a horizontal sum of 8 int32 lanes
-- shuffles that do no multiply-adds (about 40% of that kernel's instructions). llama.cpp's
CPU_REPACK buffer interleaves 8 rows instead (``block_q4_Kx8``); this module does the same
with a layout of its own, made for VNNI's ``vpdpbusd``: lane ``r`` of a 256-bit vector holds
four consecutive weights of row ``r``, and one token's four matching activations are
broadcast to all lanes, so ::

    acc_r += q_r0 y_0 + q_r1 y_1 + q_r2 y_2 + q_r3 y_3          (one vpdpbusd, 8 rows at once)

leaves each row's dot product in its own lane: no horizontal sums at all. (Without VNNI,
``pmaddubsw`` + ``pmaddwd`` give the same lane sums: nothing saturates, ``q <= 15``, ``|y| <= 128``.)

**The same bits as the row kernel.** Per row and token, :func:`.ggml_simd._emit_q4_K` computes
exact integers per sub-block ``j``, ``isum_j = sc_j sum_i q_i y_i`` and ``imin_j = m_j S_j``
(``S_j``: the sum of the token's quants over the sub-block), then two float chains::

    gemm (groups of 4 tokens):   acc = fma(float(isum_2p + isum_2p+1), d_w d_y, acc)   p = 0..3
    gemv (the other tokens):     acc = fma(float(sum_j isum_j),        d_w d_y, acc)   once per super-block

(``accm`` likewise with ``imin`` and ``dmin_w d_y``; the result ``acc - accm``). Here the
integers are summed in another order -- integer addition is exact, so they are the same
integers -- and the float operations per lane are exactly those, in the same order: the
results are bit-identical (tested against the row kernel and, through it, llama.cpp).

Layout of one group of 8 rows (:func:`repack_q4_K_x8`), per super-block, 1184 bytes::

    d[8], dmin[8]                          float16, as in the file                 32 B
    sc[8 sub-blocks][8 rows], mn[8][8]     uint8 (the 6-bit scales, unpacked)     128 B
    qs[4 pairs][8 chunks][8 rows][4 bytes] the nibbles: byte i of pair p         1024 B
        holds weight 64p + i (low nibble, sub-block 2p) and 64p + 32 + i (high, 2p + 1)

1184 bytes where the file has 8 x 144 = 1152 (3% more); built once per matrix, on its first prefill.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..foundation.errors import ConfigError
from .ggml_simd import (HAS_VNNI_256, I8, I16, I32, I64, F16, F32, KIND_Q4_K, _function, _load, _maddubs, _maddwd,
                        _pairs, _pass_width, _splat, _vec)
from .kquants import QK_K, SIZEOF_BLOCK_Q4_K, scale_min_k4

X8_ROWS = 8  # rows per repacked group: the lanes of one <8 x i32>
_D, _DMIN, _SC, _MN, _QS = 0, 16, 32, 96, 160  # byte offsets within a group's super-block
X8_BLOCK_BYTES = 1184
GROUPS_PER_TILE = 2  # prefill: groups (16 rows) that share one pass over a group of tokens' activations


def repack_q4_K_x8(raw: np.ndarray) -> np.ndarray:
    """Q4_K rows ``raw (n_out, nb * 144) uint8`` -> ``(n_out / 8, nb, 1184) uint8`` in the layout of the
    module docstring (``n_out`` a multiple of 8)."""
    n_out, row_bytes = raw.shape
    if n_out % X8_ROWS or row_bytes % SIZEOF_BLOCK_Q4_K:
        raise ConfigError(f"repack_q4_K_x8: needs a multiple of {X8_ROWS} rows of whole Q4_K super-blocks, got {raw.shape}")
    n_groups, nb = n_out // X8_ROWS, row_bytes // SIZEOF_BLOCK_Q4_K
    blocks = np.ascontiguousarray(raw).reshape(n_groups, X8_ROWS, nb, SIZEOF_BLOCK_Q4_K)  # (g, r, b, 144)
    out = np.empty((n_groups, nb, X8_BLOCK_BYTES), np.uint8)

    def halves(offset):  # (g, r, b, 2) bytes of a float16 at ``offset`` -> (g, b, 16): the 8 rows' halves
        return blocks[..., offset:offset + 2].transpose(0, 2, 1, 3).reshape(n_groups, nb, 16)

    out[..., _D:_DMIN] = halves(0)
    out[..., _DMIN:_SC] = halves(2)
    sc, mn = scale_min_k4(blocks[..., 4:16].reshape(-1, 12))  # (g*r*b, 8 sub-blocks) each
    for offset, v in ((_SC, sc), (_MN, mn)):
        out[..., offset:offset + 64] = v.reshape(n_groups, X8_ROWS, nb, 8).transpose(0, 2, 3, 1).reshape(n_groups, nb, 64)
    qs = blocks[..., 16:].reshape(n_groups, X8_ROWS, nb, 4, 8, 4)  # (g, r, b, pair, chunk, byte)
    out[..., _QS:] = qs.transpose(0, 2, 3, 4, 1, 5).reshape(n_groups, nb, 1024)
    return out


def _splat_i32(builder, v, n: int = 8):
    """An i32 scalar in all ``n`` lanes."""
    vec = builder.insert_element(ir.Constant(_vec(I32, n), ir.Undefined), v, ir.Constant(I32, 0))
    return builder.shuffle_vector(vec, vec, ir.Constant(_vec(I32, n), [0] * n))


def _splat_f32(builder, v):
    vec = builder.insert_element(ir.Constant(_vec(F32, 8), ir.Undefined), v, ir.Constant(I32, 0))
    return builder.shuffle_vector(vec, vec, ir.Constant(_vec(I32, 8), [0] * 8))


def _dot4_lanes(builder, acc, qx_u8, y_quad):
    """``acc + (sum of four u8 x s8 products per lane)``: ``vpdpbusd`` with VNNI, else ``pmaddubsw`` +
    ``pmaddwd`` by ones + add (the same integers: nothing saturates here)."""
    if HAS_VNNI_256:
        vpdpbusd = _function(builder, "llvm.x86.avx512.vpdpbusd.256", _vec(I32, 8), [_vec(I32, 8), _vec(I8, 32), _vec(I8, 32)])
        return builder.call(vpdpbusd, [acc, qx_u8, y_quad])
    return builder.add(acc, _maddwd(builder, _maddubs(builder, qx_u8, y_quad), _splat(I16, 16, 1)))


def _f16x8(builder, addr, offset):
    """Eight float16 at ``addr + offset`` as ``<8 x float>`` (exact; ``vcvtph2ps`` with F16C)."""
    return builder.fpext(_load(builder, _vec(F16, 8), addr, offset, 2), _vec(F32, 8))


def _zext8(builder, addr, offset):
    """Eight uint8 at ``addr + offset`` as ``<8 x i32>`` (one ``vpmovzxbd``)."""
    return builder.zext(_load(builder, _vec(I8, 8), addr, offset), _vec(I32, 8))


def _emit_q4_K_x8(builder, n_t: int, gemv: bool, args):
    """8 rows (one repacked group) times ``n_t`` tokens; per token an ``<8 x float>`` store of the 8
    rows' results. ``gemv``: one FMA per super-block, else one per pair of sub-blocks."""
    _, _, w, nb, x, x_stride, xd, xd_stride, xs, xs_stride, out, out_stride = args
    const = lambda v: ir.Constant(I64, v)  # noqa: E731
    v8f, v8i = _vec(F32, 8), _vec(I32, 8)
    fma8 = _function(builder, "llvm.fma.v8f32", v8f, [v8f] * 3)
    zero_f, zero_i = ir.Constant(v8f, [ir.Constant(F32, 0.0)] * 8), ir.Constant(v8i, [ir.Constant(I32, 0)] * 8)
    at = lambda base, stride, t: builder.add(base, builder.mul(const(t), stride))  # noqa: E731
    xs_t = [at(x, x_stride, t) for t in range(n_t)]
    xd_t = [at(xd, xd_stride, t) for t in range(n_t)]
    bs_t = [at(xs, xs_stride, t) for t in range(n_t)]
    accs = [cgutils.alloca_once_value(builder, zero_f) for _ in range(n_t)]
    accms = [cgutils.alloca_once_value(builder, zero_f) for _ in range(n_t)]
    low4 = _splat(I8, 32, 15)
    with cgutils.for_range(builder, nb) as loop:
        b = loop.index
        blk = builder.add(w, builder.mul(b, const(X8_BLOCK_BYTES)))
        d8, dmin8 = _f16x8(builder, blk, _D), _f16x8(builder, blk, _DMIN)
        dd, ddm, sub_sums = [], [], []
        for t in range(n_t):
            d_y = _splat_f32(builder, _load(builder, F32, xd_t[t], builder.mul(b, const(4)), 4))
            dd.append(builder.fmul(d8, d_y))
            ddm.append(builder.fmul(dmin8, d_y))
            bsums = builder.sext(_load(builder, _vec(I16, 16), bs_t[t], builder.mul(b, const(32)), 2), _vec(I32, 16))
            sub_sums.append(_pairs(builder, bsums, 16))  # <8 x i32>: S_j, the token's sum over sub-block j
        ys = [builder.add(xs_t[t], builder.mul(b, const(QK_K))) for t in range(n_t)]
        isum_all, imin_all = [zero_i] * n_t, [zero_i] * n_t
        for p in range(4):
            lo_acc, hi_acc = [zero_i] * n_t, [zero_i] * n_t
            for c in range(8):
                qs = _load(builder, _vec(I8, 32), blk, _QS + 256 * p + 32 * c)
                lo, hi = builder.and_(qs, low4), builder.lshr(qs, _splat(I8, 32, 4))
                for t in range(n_t):
                    y_lo = builder.bitcast(_splat_i32(builder, _load(builder, I32, ys[t], 64 * p + 4 * c)), _vec(I8, 32))
                    y_hi = builder.bitcast(_splat_i32(builder, _load(builder, I32, ys[t], 64 * p + 32 + 4 * c)), _vec(I8, 32))
                    lo_acc[t] = _dot4_lanes(builder, lo_acc[t], lo, y_lo)
                    hi_acc[t] = _dot4_lanes(builder, hi_acc[t], hi, y_hi)
            sc_lo, sc_hi = _zext8(builder, blk, _SC + 16 * p), _zext8(builder, blk, _SC + 16 * p + 8)
            mn_lo, mn_hi = _zext8(builder, blk, _MN + 16 * p), _zext8(builder, blk, _MN + 16 * p + 8)
            for t in range(n_t):
                isum = builder.add(builder.mul(lo_acc[t], sc_lo), builder.mul(hi_acc[t], sc_hi))
                s_lo = builder.shuffle_vector(sub_sums[t], sub_sums[t], ir.Constant(v8i, [2 * p] * 8))
                s_hi = builder.shuffle_vector(sub_sums[t], sub_sums[t], ir.Constant(v8i, [2 * p + 1] * 8))
                imin = builder.add(builder.mul(mn_lo, s_lo), builder.mul(mn_hi, s_hi))
                if gemv:
                    isum_all[t], imin_all[t] = builder.add(isum_all[t], isum), builder.add(imin_all[t], imin)
                else:
                    builder.store(builder.call(fma8, [builder.sitofp(isum, v8f), dd[t], builder.load(accs[t])]), accs[t])
                    builder.store(builder.call(fma8, [builder.sitofp(imin, v8f), ddm[t], builder.load(accms[t])]), accms[t])
        if gemv:
            for t in range(n_t):
                builder.store(builder.call(fma8, [builder.sitofp(isum_all[t], v8f), dd[t], builder.load(accs[t])]), accs[t])
                builder.store(builder.call(fma8, [builder.sitofp(imin_all[t], v8f), ddm[t], builder.load(accms[t])]), accms[t])
    for t in range(n_t):
        res = builder.fsub(builder.load(accs[t]), builder.load(accms[t]))
        builder.store(res, builder.inttoptr(at(out, out_stride, t), v8f.as_pointer()), align=4)


@intrinsic
def dot_q4_K_x8(typingctx, n_tok, gemv, w_addr, nb, x_addr, x_stride, xd_addr, xd_stride, xs_addr, xs_stride,
                out_addr, out_stride):
    """One repacked group (8 rows, ``nb`` super-blocks at ``w_addr``) times ``n_tok`` tokens' Q8_K
    activations (int8 quants at ``x_addr + t * x_stride``, float32 ``d`` at ``xd_addr + t * xd_stride``,
    int16 bsums at ``xs_addr + t * xs_stride``); token ``t``'s 8 results (float32) to
    ``out_addr + t * out_stride``. ``n_tok`` and ``gemv`` (0/1) are integer literals."""
    from numba.core.errors import TypingError

    for name, arg in (("n_tok", n_tok), ("gemv", gemv)):
        if not isinstance(arg, types.IntegerLiteral):
            raise TypingError(f"dot_q4_K_x8: {name} must be an integer literal")
    n_t, one_fma = n_tok.literal_value, bool(gemv.literal_value)
    sig = types.none(n_tok, gemv, *([types.int64] * 10))

    def codegen(context, builder, signature, args):
        _emit_q4_K_x8(builder, n_t, one_fma, args)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def _group_pass(w, nb, step, xq, xd, xs, t, out, r0):
    """Group at ``w`` (rows ``r0 .. r0+7``) times tokens ``t .. t+step-1``: four at a time in the gemm
    order (8 or 4), one at a time in the gemv order."""
    xa, xda, xsa = (xq.ctypes.data + t * xq.strides[0], xd.ctypes.data + t * xd.strides[0],
                    xs.ctypes.data + t * xs.strides[0])  # addresses: a view per call costs more than a pass
    oa = out.ctypes.data + t * out.strides[0] + r0 * 4
    if step == 8:
        dot_q4_K_x8(8, 0, w, nb, xa, xq.strides[0], xda, xd.strides[0], xsa, xs.strides[0], oa, out.strides[0])
    elif step == 4:
        dot_q4_K_x8(4, 0, w, nb, xa, xq.strides[0], xda, xd.strides[0], xsa, xs.strides[0], oa, out.strides[0])
    else:
        dot_q4_K_x8(1, 1, w, nb, xa, xq.strides[0], xda, xd.strides[0], xsa, xs.strides[0], oa, out.strides[0])


@njit(cache=True, parallel=True, nogil=True)
def _mm_q4_K_x8_parallel(packed, xq, xd, xs, out):
    """``out (n_tok, n_out)`` for ``packed (n_out/8, nb, 1184)``: tiles of :data:`GROUPS_PER_TILE` groups
    to threads; within a tile, token groups outer (their activations stay in L1 while the tile's
    groups go by). Tokens ``0 .. 4*floor(n_tok/4) - 1`` in the gemm order, the rest in the gemv order
    (as llama.cpp's repacked kernels split a batch)."""
    n_groups, nb, n_tok = packed.shape[0], packed.shape[1], xq.shape[0]
    w0, g_stride = packed.ctypes.data, packed.strides[0]
    n_tiles = -(-n_groups // GROUPS_PER_TILE)
    for tile in prange(n_tiles):
        g0 = tile * GROUPS_PER_TILE
        g1 = min(n_groups, g0 + GROUPS_PER_TILE)
        t = 0
        while t < n_tok:
            step = _pass_width(KIND_Q4_K, t, n_tok)  # 8, 4 or 1, as the row kernel's passes
            for g in range(g0, g1):
                _group_pass(w0 + g * g_stride, nb, step, xq, xd, xs, t, out, g * X8_ROWS)
            t += step


def matmul_q4_K_x8(packed: np.ndarray, xq: np.ndarray, xd: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``y (n_tok, n_out)`` from :func:`repack_q4_K_x8`'s ``packed`` and Q8_K activation planes
    (``xq (n_tok, n_in) int8``, ``xd (n_tok, n_in/256) float32``, ``xs (n_tok, n_in/16) int16``)."""
    if xs.dtype != np.int16 or xq.shape[1] != packed.shape[1] * QK_K:
        raise ConfigError(f"matmul_q4_K_x8: activations {xq.shape} / bsums {xs.dtype} do not fit {packed.shape}")
    out = np.empty((xq.shape[0], packed.shape[0] * X8_ROWS), np.float32)
    _mm_q4_K_x8_parallel(packed, xq, xd, xs, out)
    return out
