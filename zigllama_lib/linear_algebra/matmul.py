"""Matrix products with quantised weights: ``y = x @ W.T``.

``W`` is ``(n_out, n_in)``: one GGUF row per output feature, kept in its GGUF
type (a :class:`QMatrix` wraps the raw rows, e.g. a zero-copy memmap view).
``x`` is ``(n_tok, n_in)`` float32; ``y`` is ``(n_tok, n_out)`` float32.

Modes
-----
``"float"``
    ``y[t, r] = sum_i x[t, i] * dequant(W)[r, i]``, accumulated in float32,
    the activations untouched. Agrees with ``x @ dequantize(W).T`` computed in
    float64 to ~1e-6 relative.

``"q8"`` (and ``"q8_x86"``)
    llama.cpp's CPU path. ``x`` is first converted to the weights'
    ``vec_dot_type`` (:data:`VEC_DOT_TYPE`): Q8_0 for Q4_0 / Q5_0 / Q8_0, Q8_1
    for Q4_1 / Q5_1, Q8_K for Q2_K..Q6_K (see :mod:`.q8`), float16 for F16,
    bfloat16 for BF16, float32 (unchanged) for F32. Then, per block of 32
    (legacy types), the integer ``sumi = sum_j qw_j * qx_j`` and the float
    formula of ``ggml_vec_dot_*_generic``, accumulated block by block::

        q4_0 x q8_0:  sumf += (sumi * d_w) * d_x
        q5_0 x q8_0:  sumf += (d_w * d_x) * sumi
        q8_0 x q8_0:  sumf += sumi * (d_w * d_x)
        q4_1 x q8_1,
        q5_1 x q8_1:  sumf += (d_w * d_x) * sumi + m_w * s_x     # s_x = f16(d_x * sum q_x)

    and per super-block of 256 (K-quants: 16 groups g of 16 weights with
    integer scale ``sc_g`` and min ``mn_g``; ``bsums_g`` = sum of the group's ``q_x``)::

        isum  = sum_g sc_g * sum_{j in g} qw_j * qx_j
        summs = sum_g mn_g * bsums_g                  # q2_K, q4_K, q5_K (else 0)
        sumf += (d_w * d_x) * isum - (dmin_w * d_x) * summs

    The integers are exactly ggml's. Its generic K-quant code splits ``isum``
    into 8 interleaved lanes, and its AVX2 code sums everything in other
    orders (with FMAs), so llama.cpp's own float results differ from this by
    a few ulps per row. ``"q8"`` quantises ``x`` with ggml's reference
    rounding; ``"q8_x86"`` with the AVX/AVX2 quantiser that an x86 build of
    llama.cpp runs (``variant="x86"`` in :mod:`.q8`).

Kernels
-------
Numba, parallel (``prange``) over chunks of 16 output rows. Decode (fewer
than :data:`PREFILL_TOKENS` tokens) and prefill use different kernels:

* ``"float"``, prefill (:data:`PREFILL_TOKENS` tokens or more) and float
  weight types: each row is dequantised once into a small float32 buffer,
  then dotted with every token, 4 rows per pass so each activation load feeds
  4 accumulators (fastmath: the compiler vectorises the reductions).
* ``"float"``, decode: the dot with ``dequant(W) = coef_g * q + mcoef_g`` is
  factorised per block / group g, ``sum_g coef_g * sum_j q_j x_j + mcoef_g *
  sum_j x_j``, on the packed int8 planes described next (no dequantisation
  pass; same value up to float32 rounding).
* ``"q8"``, decode (fewer than :data:`PREFILL_TOKENS` tokens): the weights
  are repacked once per :class:`QMatrix` (:meth:`QMatrix.packed`, ~1 byte per
  weight) into int8 planes in a "lane" layout (quant ``j = K*jj + k`` of block
  b at ``wT[r, jj, b*K + k]``), and the activations likewise, so the integer
  block sums of a row come from an inner loop over all ``n_blocks * K`` lanes
  that the compiler vectorises, without a horizontal reduction per block. No
  fastmath: the float formula keeps ggml's order and the result is
  bit-identical to :func:`matmul_reference`.
* ``"q8"``, prefill: per-block sums would cost as much per token as decode, so
  these kernels reuse the float path's long reductions on exactly
  representable operands ``d_w * q_w`` and ``d_x * q_x`` (K-quants: per
  super-block, with ``d_x`` applied after). Same quantised operands, same
  mathematical value; float32 rounding order differs (~1e-7 relative), as it
  does between ggml's own generic, AVX2 and sgemm code.

:func:`matmul_reference` is the readable numpy version of both modes; the
tests hold the kernels to it.

Speed
-----
576 x 1536 Q4_1 matrix (SmolLM2's ffn_down shape), random blocks, median of
50 calls, 2 Numba threads on the 2-core AMD EPYC dev machine, Numba cache warm::

    python -m zigllama_lib.linear_algebra.bench

    n_tok   mode     time / call        weight-MACs/s
        1   float    0.13 - 0.16 ms     5.6 - 6.7 G
        1   q8       0.08 - 0.14 ms     6.2 - 10.5 G   (+ one-off repack: ~0.25 ms)
       64   float    1.6 - 2.1 ms       27 - 34 G
       64   q8       2.3 - 3.1 ms       18 - 24 G

(ranges over several runs: the machine was shared with other jobs). In a
whole model (SmolLM2-135M Q4_1, 211 products per token) decode takes ~30 ms
per token in mode q8 and ~50 ms in mode float, products and the rest together.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..foundation.errors import ConfigError, UnsupportedTypeError
from ..foundation.ggml_types import BLOCK_GEOMETRY, QK_K, GGMLType
from . import float_formats as ff
from . import kquants as kq
from . import legacy as lg
from . import q8
from .dequant import Q4_0, Q5_0, Q8_0, as_rows, check_type, dequant_row, dequantize, dequantize_reference, n_cols_of

MODES = ("float", "q8", "q8_x86")
LEGACY = (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0)
KQUANTS = (GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K)
FLOATS = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
WITH_MIN = (GGMLType.Q4_1, GGMLType.Q5_1)  # their vec_dot_type is Q8_1

# weight type -> ggml vec_dot_type (what x is converted to in mode "q8")
VEC_DOT_TYPE = {
    GGMLType.F32: GGMLType.F32, GGMLType.F16: GGMLType.F16, GGMLType.BF16: GGMLType.BF16,
    GGMLType.Q4_0: GGMLType.Q8_0, GGMLType.Q5_0: GGMLType.Q8_0, GGMLType.Q8_0: GGMLType.Q8_0,
    GGMLType.Q4_1: GGMLType.Q8_1, GGMLType.Q5_1: GGMLType.Q8_1,
    **{t: GGMLType.Q8_K for t in KQUANTS},
}

ROWS_PER_CHUNK = 16  # output rows per parallel work item
PREFILL_TOKENS = 4  # from this many tokens on, matmul uses the prefill kernels (both modes)


class QMatrix:
    """A weight matrix ``W: (n_out, n_in)`` in its GGUF type.

    ``raw`` is ``(n_out, row_bytes) uint8`` (e.g. ``GGUFFile.tensor_bytes(name)``,
    a zero-copy memmap view, kept as is). The first decode-sized product with
    quantised weights builds :meth:`packed` (about one byte per weight), kept
    for later calls.
    """

    def __init__(self, raw: np.ndarray, qtype: GGMLType, n_in: int):
        t = check_type(qtype)
        raw = np.asarray(raw)
        if raw.ndim != 2:
            raise ConfigError(f"QMatrix expects raw rows of shape (n_out, row_bytes), got {raw.shape}")
        rows = as_rows(raw)
        n = n_cols_of(t, rows.shape[1])
        if n != n_in:
            raise ConfigError(f"{t.name} rows of {rows.shape[1]} bytes hold {n} values, not n_in={n_in}")
        self.raw = rows  # (n_out, row_bytes) uint8
        self.qtype = t
        self.n_in = int(n_in)
        self.n_out = int(rows.shape[0])
        self._packed: tuple[np.ndarray, ...] | None = None
        # Q4_K: eight rows interleaved for prefill, built by ggml_simd on first use (see ggml_repack)
        self.q4_K_x8: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_out, self.n_in)

    def packed(self) -> tuple[np.ndarray, ...]:
        """The decode kernels' planes (both modes), built on first use and kept (about 1 byte per weight).

        Legacy types: ``wT (n_out, 32/K, nb*K) int8`` (quant ``j = K*jj + k`` of block b at
        ``wT[r, jj, b*K + k]``, see :func:`lanes_for`), ``d, m (n_out, nb) float32``.
        K-quants: ``wT (n_out, 16/K, n_in/16*K) int8`` (groups of 16),
        ``sc, mn (n_out, n_in/16) int32`` (per group of 16), ``d, dmin (n_out, n_in/256) float32``.
        """
        if self._packed is None:
            lut, code = ff.FP16_TO_FP32, int(self.qtype)
            if self.qtype in LEGACY:
                nb = self.n_in // 32
                k = lanes_for(nb, 32)
                planes = (np.empty((self.n_out, 32 // k, nb * k), np.int8), np.empty((self.n_out, nb), np.float32),
                          np.empty((self.n_out, nb), np.float32))
                repack_legacy_kernel(code, self.raw, lut, *planes)
            elif self.qtype in KQUANTS:
                ng, nbk = self.n_in // 16, self.n_in // QK_K
                k = lanes_for(ng, 16)
                planes = (np.empty((self.n_out, 16 // k, ng * k), np.int8), np.empty((self.n_out, ng), np.int32),
                          np.empty((self.n_out, ng), np.int32), np.empty((self.n_out, nbk), np.float32),
                          np.empty((self.n_out, nbk), np.float32))
                repack_K_kernel(code, self.raw, lut, *planes)
            else:
                raise UnsupportedTypeError(f"{self.qtype.name} weights have no q8 packing (they stay float)")
            self._packed = planes
        return self._packed

    def dequantize(self) -> np.ndarray:
        """The whole matrix as float32 ``(n_out, n_in)``."""
        return dequantize(self.raw, self.qtype)

    def __repr__(self) -> str:
        return f"QMatrix({self.qtype.name}, n_out={self.n_out}, n_in={self.n_in})"


def _prepare(w: QMatrix, x: np.ndarray, mode: str) -> tuple[np.ndarray, bool]:
    if not isinstance(w, QMatrix):
        raise ConfigError(f"matmul expects a QMatrix, got {type(w).__name__}")
    if mode not in MODES:
        raise ConfigError(f"unknown matmul mode {mode!r}; expected one of {MODES}")
    x = np.asarray(x)
    vector = x.ndim == 1
    if x.ndim not in (1, 2) or x.shape[-1] != w.n_in:
        raise ConfigError(f"matmul: x has shape {x.shape}, expected (n_tok, {w.n_in}) or ({w.n_in},)")
    return np.ascontiguousarray(x.reshape(-1, w.n_in), dtype=np.float32), vector


def matmul(w: QMatrix, x: np.ndarray, mode: str = "q8") -> np.ndarray:
    """``y = x @ dequant(W).T``: ``x (n_tok, n_in)`` or ``(n_in,)`` float32 -> ``(n_tok, n_out)`` / ``(n_out,)``.

    ``mode``: ``"float"`` (exact float path), ``"q8"`` (llama.cpp's 8-bit activations,
    reference rounding) or ``"q8_x86"`` (same, with the x86 SIMD quantiser's rounding).
    """
    x2, vector = _prepare(w, x, mode)
    n_tok = x2.shape[0]
    out = np.empty((n_tok, w.n_out), dtype=np.float32)
    if n_tok and w.n_out:
        code, lut = int(w.qtype), ff.FP16_TO_FP32
        variant = "x86" if mode == "q8_x86" else "ref"
        if mode == "float" and n_tok < PREFILL_TOKENS and (w.qtype in LEGACY or w.qtype in KQUANTS):
            planes = w.packed()
            group = 32 if w.qtype in LEGACY else 16
            k = group // planes[0].shape[1]
            ng = w.n_in // group
            xT = np.ascontiguousarray(x2.reshape(n_tok, ng, group // k, k).transpose(0, 2, 1, 3)).reshape(
                n_tok, group // k, ng * k)
            xsum = x2.reshape(n_tok, ng, group).sum(axis=2, dtype=np.float32)
            if w.qtype in LEGACY:
                mm_float_packed_legacy_kernel(*planes, xT, xsum, out)
            else:
                mm_float_packed_K_kernel(*planes, xT, xsum, out)
        elif mode == "float" or w.qtype == GGMLType.F32:
            mm_float_kernel(code, w.raw, lut, x2, out)
        elif w.qtype == GGMLType.F16:
            mm_float_kernel(code, w.raw, lut, ff.round_to_f16(x2), out)
        elif w.qtype == GGMLType.BF16:
            mm_float_kernel(code, w.raw, lut, ff.round_to_bf16(x2), out)
        elif n_tok >= PREFILL_TOKENS and w.qtype in LEGACY:
            xT, xd, xs = q8.q8_32_T(x2, variant == "x86", w.qtype in WITH_MIN, 1)
            xdeq = q8_dequant_T(xT, xd)  # (n_tok, n_in) float32, exactly d_x * q_x
            mm_q8_prefill_legacy_kernel(code, w.raw, lut, xdeq, xs, out)
        elif n_tok >= PREFILL_TOKENS and w.qtype in KQUANTS:
            xT, xd, bsums = q8.q8_K_T(x2, 1)
            xqf = q8_dequant_T(xT, np.ones((n_tok, w.n_in // 16), np.float32))  # q_x as float32
            mm_q8_prefill_K_kernel(code, w.raw, lut, xqf, xd, bsums, out)
        elif w.qtype in LEGACY:
            planes = w.packed()
            k = 32 // planes[0].shape[1]
            xT, xd, xs = q8.q8_32_T(x2, variant == "x86", w.qtype in WITH_MIN, k)
            mm_q8_legacy_kernel(code, *planes, xT, xd, xs, out)
        elif w.qtype in KQUANTS:
            planes = w.packed()
            xT, xd, bsums = q8.q8_K_T(x2, 16 // planes[0].shape[1])
            mm_q8_K_kernel(*planes, xT, xd, bsums, out)
        else:  # pragma: no cover - check_type admits only the types above
            raise UnsupportedTypeError(f"matmul: no kernel for {w.qtype.name}")
    return out[0] if vector else out


# -- Numba kernels --------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _dot4(w, r0, r1, r2, r3, xt, n):
    """Dots of rows r0..r3 of ``w (ROWS, n) float32`` with ``xt (n,) float32``."""
    a0 = np.float32(0)
    a1 = np.float32(0)
    a2 = np.float32(0)
    a3 = np.float32(0)
    for i in range(n):
        v = xt[i]
        a0 += w[r0, i] * v
        a1 += w[r1, i] * v
        a2 += w[r2, i] * v
        a3 += w[r3, i] * v
    return a0, a1, a2, a3


@njit(cache=True, parallel=True, fastmath=True, nogil=True)
def mm_float_kernel(code, raw, lut, x, out):
    """``out (n_tok, n_out) = x (n_tok, n_in) @ dequant(raw (n_out, row_bytes)).T``, float32."""
    n_out = raw.shape[0]
    n_tok, n_in = x.shape
    n_chunks = (n_out + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    for c in prange(n_chunks):
        r_lo = c * ROWS_PER_CHUNK
        nr = min(ROWS_PER_CHUNK, n_out - r_lo)
        w = np.empty((ROWS_PER_CHUNK, n_in), np.float32)
        for k in range(nr):
            dequant_row(code, raw[r_lo + k], lut, w[k])
        for t in range(n_tok):
            xt = x[t]
            k = 0
            while k + 4 <= nr:
                a0, a1, a2, a3 = _dot4(w, k, k + 1, k + 2, k + 3, xt, n_in)
                out[t, r_lo + k] = a0
                out[t, r_lo + k + 1] = a1
                out[t, r_lo + k + 2] = a2
                out[t, r_lo + k + 3] = a3
                k += 4
            while k < nr:
                acc = np.float32(0)
                for i in range(n_in):
                    acc += w[k, i] * xt[i]
                out[t, r_lo + k] = acc
                k += 1


# q8 mode. The weights are repacked once (QMatrix.packed) into int8 planes in a
# "lane" layout: quant j = K*jj + k of group b (a block of 32, or a K-quant group
# of 16) of row r sits at wT[r, jj, b*K + k], and the activations likewise, so
#     S4[b*K + k] = sum_jj wT[jj, b*K + k] * xT[jj, b*K + k],   S[b] = sum_k S4[b*K + k]
# are the integer block sums of a row, computed by an inner loop over all
# n_groups*K lanes that the compiler vectorises, with no horizontal reduction per
# block. K (1..8) makes that loop at least 128 long (for n_in = 576, 18 blocks:
# K = 8). The float formula then runs block by block in ggml's order. No fastmath:
# the kernels give the same bits as matmul_reference.
def lanes_for(n_groups: int, group: int) -> int:
    """K: the smallest power of two with ``n_groups * K >= 128`` (at most ``min(8, group)``)."""
    k = 1
    while n_groups * k < 128 and k < min(8, group):
        k *= 2
    return k


@njit(cache=True, parallel=True, nogil=True)
def repack_legacy_kernel(code, raw, lut, wT, wd, wm):
    """raw (n_out, row_bytes) -> wT (n_out, 32/K, nb*K) int8, wd / wm (n_out, nb) float32."""
    n_out, J, L = wT.shape
    K = 32 // J
    nb = L // K
    for r in prange(n_out):
        wq = np.empty(nb * 32, np.int8)
        lg.unpack_row(code, raw[r], lut, wq, wd[r], wm[r])
        for b in range(nb):
            for j in range(32):
                wT[r, j // K, b * K + j % K] = wq[b * 32 + j]


@njit(cache=True, parallel=True, nogil=True)
def repack_K_kernel(code, raw, lut, wT, wsc, wmn, wd, wdm):
    """raw -> wT (n_out, 16/K, ng*K) int8, wsc / wmn (n_out, ng) int32, wd / wdm (n_out, nbk) float32."""
    n_out, J, L = wT.shape
    K = 16 // J
    ng = L // K
    for r in prange(n_out):
        wq = np.empty(ng * 16, np.int8)
        kq.unpack_row(code, raw[r], lut, wq, wsc[r], wmn[r], wd[r], wdm[r])
        for g in range(ng):
            for j in range(16):
                wT[r, j // K, g * K + j % K] = wq[g * 16 + j]


@njit(cache=True, inline="always")
def _group_sums(wT, xT, S4, S):
    """S[b] = sum of the products of group b's quants (int32); wT, xT (J, n_groups*K) int8 lanes."""
    K = S4.shape[0] // S.shape[0]
    S4[:] = 0
    for jj in range(wT.shape[0]):
        wj, xj = wT[jj], xT[jj]
        for i in range(S4.shape[0]):
            S4[i] += np.int32(wj[i]) * np.int32(xj[i])
    for b in range(S.shape[0]):
        s = np.int32(0)
        for k in range(K):
            s += S4[b * K + k]
        S[b] = s


@njit(cache=True, parallel=True, nogil=True)
def mm_q8_legacy_kernel(code, wT, wd, wm, xT, xd, xs, out):
    """Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weights (packed) x Q8_0/Q8_1 activations.

    wT (n_out, 32/K, nb*K) int8, wd / wm (n_out, nb); xT (n_tok, 32/K, nb*K) int8, xd / xs (n_tok, nb) float32.
    """
    n_out, _, L = wT.shape
    nb = wd.shape[1]
    n_tok = xT.shape[0]
    n_chunks = (n_out + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    for c in prange(n_chunks):
        S4 = np.empty(L, np.int32)
        S = np.empty(nb, np.int32)
        for r in range(c * ROWS_PER_CHUNK, min(n_out, (c + 1) * ROWS_PER_CHUNK)):
            wdr, wmr = wd[r], wm[r]
            for t in range(n_tok):
                _group_sums(wT[r], xT[t], S4, S)
                xdt, xst = xd[t], xs[t]
                sumf = np.float32(0)
                for b in range(nb):
                    sumi = np.float32(S[b])
                    if code == Q4_0:
                        sumf += (sumi * wdr[b]) * xdt[b]
                    elif code == Q8_0:
                        sumf += sumi * (wdr[b] * xdt[b])
                    elif code == Q5_0:
                        sumf += (wdr[b] * xdt[b]) * sumi
                    else:  # Q4_1, Q5_1
                        sumf += (wdr[b] * xdt[b]) * sumi + wmr[b] * xst[b]
                out[t, r] = sumf


@njit(cache=True, parallel=True, nogil=True)
def mm_q8_K_kernel(wT, wsc, wmn, wd, wdm, xT, xd, bsums, out):
    """Q2_K..Q6_K weights (packed) x Q8_K activations.

    wT (n_out, 16/K, ng*K) int8, wsc / wmn (n_out, ng) int32, wd / wdm (n_out, nbk) float32;
    xT (n_tok, 16/K, ng*K) int8, xd (n_tok, nbk) float32, bsums (n_tok, ng) int32.
    """
    n_out, _, L = wT.shape
    ng = wsc.shape[1]
    n_tok = xT.shape[0]
    nbk = ng // 16
    n_chunks = (n_out + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    for c in prange(n_chunks):
        S4 = np.empty(L, np.int32)
        S = np.empty(ng, np.int32)
        for r in range(c * ROWS_PER_CHUNK, min(n_out, (c + 1) * ROWS_PER_CHUNK)):
            scr, mnr = wsc[r], wmn[r]
            for t in range(n_tok):
                _group_sums(wT[r], xT[t], S4, S)
                bst = bsums[t]
                sumf = np.float32(0)
                for ib in range(nbk):
                    isum = np.int32(0)
                    summs = np.int32(0)
                    for g in range(16 * ib, 16 * ib + 16):
                        isum += scr[g] * S[g]
                        summs += mnr[g] * bst[g]
                    d = wd[r, ib] * xd[t, ib]
                    dmin = wdm[r, ib] * xd[t, ib]
                    sumf += d * np.float32(isum) - dmin * np.float32(summs)
                out[t, r] = sumf


# float mode, decode: the q8 planes with float activations. Per group g (a block of
# 32, or 16 for K-quants) S_g = sum_j q_j x_j and X_g = sum_j x_j, then
#     y = sum_g coef_g S_g + mcoef_g X_g
# with coef = d (legacy) or d * sc_g (K), mcoef = m (legacy) or -dmin * mn_g (K):
# the dot with dequant(W) = coef q + mcoef, factorised per group.
@njit(cache=True, inline="always")
def _group_sums_f(wT, xT, S4, S):
    """Float version of _group_sums: xT (J, n_groups*K) float32."""
    K = S4.shape[0] // S.shape[0]
    S4[:] = 0
    for jj in range(wT.shape[0]):
        wj, xj = wT[jj], xT[jj]
        for i in range(S4.shape[0]):
            S4[i] += np.float32(wj[i]) * xj[i]
    for b in range(S.shape[0]):
        s = np.float32(0)
        for k in range(K):
            s += S4[b * K + k]
        S[b] = s


@njit(cache=True, parallel=True, nogil=True)
def mm_float_packed_legacy_kernel(wT, wd, wm, xT, xsum, out):
    """Legacy weights (q8 planes) x float activations in lane layout; xsum (n_tok, nb) block sums of x."""
    n_out, _, L = wT.shape
    nb = wd.shape[1]
    n_tok = xT.shape[0]
    n_chunks = (n_out + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    for c in prange(n_chunks):
        S4 = np.empty(L, np.float32)
        S = np.empty(nb, np.float32)
        for r in range(c * ROWS_PER_CHUNK, min(n_out, (c + 1) * ROWS_PER_CHUNK)):
            for t in range(n_tok):
                _group_sums_f(wT[r], xT[t], S4, S)
                acc = np.float32(0)
                for b in range(nb):
                    acc += wd[r, b] * S[b] + wm[r, b] * xsum[t, b]
                out[t, r] = acc


@njit(cache=True, parallel=True, nogil=True)
def mm_float_packed_K_kernel(wT, wsc, wmn, wd, wdm, xT, xsum, out):
    """K-quant weights (q8 planes) x float activations in lane layout; xsum (n_tok, ng) group sums of x."""
    n_out, _, L = wT.shape
    ng = wsc.shape[1]
    n_tok = xT.shape[0]
    n_chunks = (n_out + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    for c in prange(n_chunks):
        S4 = np.empty(L, np.float32)
        S = np.empty(ng, np.float32)
        for r in range(c * ROWS_PER_CHUNK, min(n_out, (c + 1) * ROWS_PER_CHUNK)):
            for t in range(n_tok):
                _group_sums_f(wT[r], xT[t], S4, S)
                acc = np.float32(0)
                for g in range(ng):
                    ib = g // 16
                    acc += (wd[r, ib] * np.float32(wsc[r, g])) * S[g] \
                        - (wdm[r, ib] * np.float32(wmn[r, g])) * xsum[t, g]
                out[t, r] = acc


# q8 prefill. With many tokens the integer block sums above cost as much per token
# as decode; these kernels instead reuse the float path's long reductions. Exactly
# representable float32 operands -- d_w * q_w (f16 x <= 8-bit int, or for K-quants
# d_w * (sc_g * q_w), f16 x 12-bit int) and d_x * q_x (f16 x int8) -- are dotted
# over the whole row (legacy) or super-block (K-quants, whose float32 d_x is applied
# per super-block). The mathematical value is ggml's formula's; only the float32
# rounding order differs (as it does between ggml's own generic, AVX2 and sgemm code).
@njit(cache=True, parallel=True, nogil=True)
def q8_dequant_T(xT, xd):
    """``xT (n_tok, G, n_groups) int8`` (K = 1 lane layout), ``xd (n_tok, n_groups)`` ->
    ``(n_tok, n_groups * G) float32`` with value j of group b = ``xd[b] * xT[j, b]``."""
    n_tok, G, ng = xT.shape
    out = np.empty((n_tok, ng * G), np.float32)
    for t in prange(n_tok):
        for b in range(ng):
            for j in range(G):
                out[t, b * G + j] = xd[t, b] * np.float32(xT[t, j, b])
    return out


@njit(cache=True, inline="always")
def _dot4_range(w, r0, r1, r2, r3, xt, lo, hi):
    """Dots of ``w[r, lo:hi]`` (r = r0..r3) with ``xt[lo:hi]``."""
    a0 = np.float32(0)
    a1 = np.float32(0)
    a2 = np.float32(0)
    a3 = np.float32(0)
    for i in range(lo, hi):
        v = xt[i]
        a0 += w[r0, i] * v
        a1 += w[r1, i] * v
        a2 += w[r2, i] * v
        a3 += w[r3, i] * v
    return a0, a1, a2, a3


@njit(cache=True, parallel=True, fastmath=True, nogil=True)
def mm_q8_prefill_legacy_kernel(code, raw, lut, xdeq, xs, out):
    """Legacy weights x Q8_0/Q8_1 activations, many tokens: ``sum_i (d_w q_w)_i (d_x q_x)_i + sum_b m_b s_b``.

    xdeq (n_tok, n_in) float32 = d_x * q_x; xs (n_tok, nb) float32 (zeros for Q8_0).
    """
    n_out = raw.shape[0]
    n_tok, n_in = xdeq.shape
    nb = n_in // 32
    n_chunks = (n_out + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    for c in prange(n_chunks):
        r_lo = c * ROWS_PER_CHUNK
        nr = min(ROWS_PER_CHUNK, n_out - r_lo)
        wq = np.empty(n_in, np.int8)
        w0 = np.zeros((ROWS_PER_CHUNK, n_in), np.float32)  # d_w * q_w, exact
        wm = np.zeros((ROWS_PER_CHUNK, nb), np.float32)
        wd = np.empty(nb, np.float32)
        for k in range(nr):
            lg.unpack_row(code, raw[r_lo + k], lut, wq, wd, wm[k])
            for b in range(nb):
                for j in range(32):
                    w0[k, b * 32 + j] = wd[b] * np.float32(wq[b * 32 + j])
        for t in range(n_tok):
            xt, st = xdeq[t], xs[t]
            for k in range(0, nr, 4):
                a = _dot4_range(w0, k, k + 1, k + 2, k + 3, xt, 0, n_in)
                for i in range(4):
                    if k + i < nr:
                        m = np.float32(0)
                        for b in range(nb):
                            m += wm[k + i, b] * st[b]
                        out[t, r_lo + k + i] = a[i] + m


@njit(cache=True, parallel=True, fastmath=True, nogil=True)
def mm_q8_prefill_K_kernel(code, raw, lut, xqf, xd, bsums, out):
    """K-quant weights x Q8_K activations, many tokens: per super-block
    ``d_x * sum_i (d_w sc_g q_w)_i q_x,i - (dmin_w d_x) * sum_g mn_g bsums_g``.

    xqf (n_tok, n_in) float32 = q_x; xd (n_tok, n_in/256); bsums (n_tok, n_in/16) int32.
    """
    n_out = raw.shape[0]
    n_tok, n_in = xqf.shape
    ng, nbk = n_in // 16, n_in // QK_K
    n_chunks = (n_out + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    for c in prange(n_chunks):
        r_lo = c * ROWS_PER_CHUNK
        nr = min(ROWS_PER_CHUNK, n_out - r_lo)
        wq = np.empty(n_in, np.int8)
        wsc = np.empty(ng, np.int32)
        w0 = np.zeros((ROWS_PER_CHUNK, n_in), np.float32)  # d_w * (sc_g * q_w), exact
        wmn = np.zeros((ROWS_PER_CHUNK, ng), np.int32)
        wd = np.empty(nbk, np.float32)
        wdm = np.zeros((ROWS_PER_CHUNK, nbk), np.float32)
        for k in range(nr):
            kq.unpack_row(code, raw[r_lo + k], lut, wq, wsc, wmn[k], wd, wdm[k])
            for g in range(ng):
                for j in range(16):
                    w0[k, g * 16 + j] = wd[g // 16] * np.float32(wsc[g] * np.int32(wq[g * 16 + j]))
        acc = np.empty(4, np.float32)
        for t in range(n_tok):
            xt, bst = xqf[t], bsums[t]
            for k in range(0, nr, 4):
                acc[:] = 0
                for ib in range(nbk):
                    a = _dot4_range(w0, k, k + 1, k + 2, k + 3, xt, ib * QK_K, (ib + 1) * QK_K)
                    for i in range(4):
                        summs = np.int32(0)
                        for g in range(16 * ib, 16 * ib + 16):
                            summs += wmn[k + i, g] * bst[g]
                        acc[i] += xd[t, ib] * a[i] - (wdm[k + i, ib] * xd[t, ib]) * np.float32(summs)
                for i in range(4):
                    if k + i < nr:
                        out[t, r_lo + k + i] = acc[i]


# -- numpy references ---------------------------------------------------------------------
def _unpack_legacy(t: GGMLType, blocks: np.ndarray):
    """(d, m or None, q) of legacy blocks (see :mod:`.legacy`)."""
    if t == GGMLType.Q4_1:
        return lg.unpack_q4_1(blocks)
    if t == GGMLType.Q5_1:
        return lg.unpack_q5_1(blocks)
    unpack = {GGMLType.Q4_0: lg.unpack_q4_0, GGMLType.Q5_0: lg.unpack_q5_0, GGMLType.Q8_0: lg.unpack_q8_0}[t]
    d, q = unpack(blocks)
    return d, None, q


_UNPACK_K = {GGMLType[name]: f for name, f in kq.UNPACK.items()}


def matmul_reference(w: QMatrix, x: np.ndarray, mode: str = "q8") -> np.ndarray:
    """Readable numpy version of :func:`matmul` (same modes, same result up to float rounding).

    ``"float"``: ``x @ dequantize_reference(W).T`` in float64. ``"q8"``: ggml's
    generic vec_dot arithmetic -- integer block sums, then the float formula of the
    weight type, accumulated block by block in float32.
    """
    x2, vector = _prepare(w, x, mode)
    variant = "x86" if mode == "q8_x86" else "ref"
    t = w.qtype
    if mode == "float" or t == GGMLType.F32 or t in FLOATS:
        if mode != "float" and t == GGMLType.F16:
            x2 = ff.round_to_f16(x2)
        elif mode != "float" and t == GGMLType.BF16:
            x2 = ff.round_to_bf16(x2)
        y = (x2.astype(np.float64) @ dequantize_reference(w.raw, t).astype(np.float64).T).astype(np.float32)
        return y[0] if vector else y
    n_tok, n_out = x2.shape[0], w.n_out
    _, size = BLOCK_GEOMETRY[t]
    blocks = w.raw.reshape(-1, size)  # (n_out * n_blocks, type_size) uint8
    if t in LEGACY:
        nb = w.n_in // 32
        d_w, m_w, q_w = _unpack_legacy(t, blocks)
        d_w = d_w.reshape(n_out, nb)
        q_w = q_w.reshape(n_out, nb, 32).astype(np.int32)
        if t in WITH_MIN:
            q_x, d_x, s_x = q8.q8_1_planes(q8.quantize_q8_1(x2, variant), w.n_in)
            m_w = m_w.reshape(n_out, nb)
        else:
            q_x, d_x = q8.q8_0_planes(q8.quantize_q8_0(x2, variant), w.n_in)
        q_x = q_x.reshape(n_tok, nb, 32).astype(np.int32)
        sumi = np.einsum("onj,tnj->ton", q_w, q_x)  # (n_tok, n_out, nb) int
        sumf = np.zeros((n_tok, n_out), np.float32)
        for ib in range(nb):  # block by block, in float32, as ggml
            si = sumi[:, :, ib].astype(np.float32)
            dw, dx = d_w[None, :, ib], d_x[:, ib, None]
            if t == GGMLType.Q4_0:
                sumf = sumf + (si * dw) * dx
            elif t == GGMLType.Q8_0:
                sumf = sumf + si * (dw * dx)
            elif t == GGMLType.Q5_0:
                sumf = sumf + (dw * dx) * si
            else:
                sumf = sumf + ((dw * dx) * si + m_w[None, :, ib] * s_x[:, ib, None])
        return sumf[0] if vector else sumf
    # K-quants x Q8_K
    nbk = w.n_in // QK_K
    d_w, dmin_w, sc_w, mn_w, q_w = _UNPACK_K[t](blocks)
    d_w, dmin_w = d_w.reshape(n_out, nbk), dmin_w.reshape(n_out, nbk)
    sc_w = sc_w.reshape(n_out, nbk, 16).astype(np.int64)
    mn_w = mn_w.reshape(n_out, nbk, 16).astype(np.int64)
    q_w = q_w.reshape(n_out, nbk, 16, 16).astype(np.int64)
    q_x, d_x, bsums = q8.q8_K_planes(q8.quantize_q8_K(x2), w.n_in)
    q_x = q_x.reshape(n_tok, nbk, 16, 16).astype(np.int64)
    bsums = bsums.reshape(n_tok, nbk, 16).astype(np.int64)
    group = np.einsum("ongj,tngj->tong", q_w, q_x)  # (n_tok, n_out, nbk, 16)
    isum = (group * sc_w[None]).sum(axis=3)  # (n_tok, n_out, nbk)
    summs = np.einsum("ong,tng->ton", mn_w, bsums)
    sumf = np.zeros((n_tok, n_out), np.float32)
    with np.errstate(invalid="ignore"):
        for ib in range(nbk):
            d = d_w[None, :, ib] * d_x[:, ib, None]
            dmin = dmin_w[None, :, ib] * d_x[:, ib, None]
            sumf = sumf + (d * isum[:, :, ib].astype(np.float32) - dmin * summs[:, :, ib].astype(np.float32))
    return sumf[0] if vector else sumf
