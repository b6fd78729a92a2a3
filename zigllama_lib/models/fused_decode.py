"""A decode step in one compiled call: the fast path of the ``"llama.cpp"`` numerics.

:meth:`Decoder.forward` runs a layer as ~15 separate kernels called from
Python: each call costs microseconds of interpreter time, argument checks and
temporary arrays, and each parallel kernel wakes the thread pool. For one
token of SmolLM2 (30 layers) that overhead is larger than the arithmetic.
Here every layer of a decode step runs inside one Numba function::

    for each layer:                                     # h: (d_model,) float32
        x = rms_norm(h) * attn_norm;  xq = Q8_1(x)      # quantised once for q, k and v
        q, k, v = Wq xq, Wk xq, Wv xq                   # 1 parallel region
        (q, k = rms_norm per head)                      # Gemma 3's q/k norms
        q, k = rope(q), rope(k);  (q *= scale);  cache[pos] = f16(k), f16(v)
        a = attention(q, cache[first:pos+1])            # parallel over heads; first > 0: sliding window
                                                        # cell c read at block table[c // B], row c % B
        h += (post_norm) Wo Q8(a)                       # 1 parallel region; Q8_K if Wo is a K-quant
        x = rms_norm(h) * ffn_norm;  xq = Q8_1(x)
        h += (post_norm) Wdown Q8(act(Wgate xq) * Wup xq)   # 2 parallel regions; act: silu or GELU

with the same operations, in the same order, as the generic path with
``numerics="llama.cpp"`` (ggml's roundings, from :mod:`..linear_algebra.ggml_simd`,
:mod:`..neural_primitives.ggml_math` and the decode branch of
:mod:`..transformer.attention_ggml`): the logits are bit-identical to it, hence
to llama.cpp's (tested, for SmolLM2 and Gemma 3). Supported: llama-family and Gemma 3
blocks (no attention biases) with Q4_1 / Q5_0 / Q8_0 matrices, and Q4_K / Q6_K where a
matrix's input is quantised for it alone (Wo, Wdown); anything else runs the generic path.

The cache is read through a block table: a :class:`~..transformer.paged_kv_cache.PagedKVCache`
sequence (its full-attention and sliding-window pools, each with its table) or the contiguous
:class:`~..transformer.kv_cache.KVCache` seen as one block of ``n_ctx`` cells. The step needs a
plain sequence (cell ``c`` holds position ``c``); after ``seq_add`` / a hole the decoder runs the
generic path, whose paged attention masks by each cell's position (the same bits as llama.cpp).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..linear_algebra.ggml_exact import fma_f32, hsum8
from ..foundation.ggml_types import GGMLType
from ..foundation.libm import rope_theta_scale
from ..linear_algebra.ggml_simd import KIND, KIND_Q4_K, KIND_Q6_K, PREFETCH_ROWS, prefetch_row
from ..linear_algebra.ggml_simd import dot_any, dot_f32_ggml_f16, matmul_simd
from ..linear_algebra.half import f16_bits_to_f32, f32_to_f16_bits
from ..linear_algebra.half import to_f16
from ..linear_algebra.q8 import _q8_32_token, _q8_K_token
from ..neural_primitives.ggml_math import (GELU_F16, _rms_norm_kernel, _rope_cache, _silu_scalar, _v_expf, _v_silu,
                                           geglu_scalar, rms_norm_ggml)
from ..transformer.attention_ggml import KV_PAD

# weight matrices of a block, in the order of the address table
MATRICES = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
WQ, WK, WV, WO, WGATE, WUP, WDOWN = range(7)
NORMS = ("attn_norm", "ffn_norm", "q_norm", "k_norm", "post_attn_norm", "post_ffn_norm")  # per-layer vectors
FUSED_TYPES = (GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.Q5_0)  # blocks of 32: one Q8_1 quantisation serves all
K_TYPES = (GGMLType.Q4_K, GGMLType.Q6_K)  # x Q8_K: allowed where the input is quantised for that matrix alone
OWN_INPUT = ("wo", "w_down")


def unsupported_reason(decoder) -> str | None:
    """Why ``decoder`` cannot take the fused path, or None if it can."""
    s = decoder.spec
    t = s.traits
    if t.attn_bias:
        return f"{s.arch}: attention biases are not fused"
    if t.activation not in ("silu", "gelu"):
        return f"{s.arch}: activation {t.activation!r} (fused: silu, gelu)"
    if t.rope_mode not in ("norm", "neox"):
        return f"{s.arch}: RoPE mode {t.rope_mode!r}"
    if s.head_dim_v != s.head_dim_k or s.n_head % s.n_kv_head:
        return f"{s.arch}: head sizes {s.head_dim_k}/{s.head_dim_v}, {s.n_head}/{s.n_kv_head} heads"
    if decoder.output.qtype not in FUSED_TYPES + K_TYPES:
        return f"output: {decoder.output.qtype.name}"
    for i, lw in enumerate(decoder.layers):
        for name in MATRICES:
            w = getattr(lw, name)
            allowed = FUSED_TYPES + K_TYPES if name in OWN_INPUT else FUSED_TYPES
            if w.qtype not in allowed or w.raw.strides[1] != 1:
                return f"blk.{i}.{name}: {w.qtype.name} (fused: {[q.name for q in allowed]})"
    return None


# -- pieces -----------------------------------------------------------------------------
JOB_ROWS = 32  # rows per parallel job


@njit(cache=True, inline="always")
def _rows(addr, stride, kind, r0, r1, xa, xda, xsa, nb, out):
    """``out[r] = W[r] . x`` for rows ``r0 .. r1-1`` of the GGUF rows at ``addr`` (``out`` contiguous).
    (One row per pass: pairing rows measured no faster -- each row's single FMA chain, which
    bit-exactness fixes, is already overlapped with the next row's by the out-of-order core.)"""
    oa = out.ctypes.data
    for r in range(r0, r1):
        prefetch_row(addr + (r + PREFETCH_ROWS) * stride, stride)  # past the matrix's end: a harmless hint
        dot_any(kind, 1, addr + r * stride, xa, 0, xda, 0, xsa, 0, nb, oa + 4 * r, 0)


@njit(cache=True, parallel=True, nogil=True)
def _matvec(addr, stride, kind, n_out, xq, xd, xs, out):
    """``out[r] = W[r] . x`` for the ``n_out`` GGUF rows at ``addr`` (llama.cpp's vec_dot, in SIMD)."""
    nb = xd.shape[0]
    xa, xda, xsa = xq.ctypes.data, xd.ctypes.data, xs.ctypes.data
    for job in prange(-(-n_out // JOB_ROWS)):
        _rows(addr, stride, kind, job * JOB_ROWS, min(n_out, (job + 1) * JOB_ROWS), xa, xda, xsa, nb, out)


@njit(cache=True, parallel=True, nogil=True)
def _qkv(a, st, kinds, dq, dkv, xq, xd, xs, q, k, v):
    """q, k and v from one quantised x in one parallel region (jobs of rows of the three matrices)."""
    nb = xd.shape[0]
    xa, xda, xsa = xq.ctypes.data, xd.ctypes.data, xs.ctypes.data
    jq, jkv = -(-dq // JOB_ROWS), -(-dkv // JOB_ROWS)
    for job in prange(jq + 2 * jkv):
        if job < jq:
            r0 = job * JOB_ROWS
            _rows(a[WQ], st[WQ], kinds[WQ], r0, min(dq, r0 + JOB_ROWS), xa, xda, xsa, nb, q)
        elif job < jq + jkv:
            r0 = (job - jq) * JOB_ROWS
            _rows(a[WK], st[WK], kinds[WK], r0, min(dkv, r0 + JOB_ROWS), xa, xda, xsa, nb, k)
        else:
            r0 = (job - jq - jkv) * JOB_ROWS
            _rows(a[WV], st[WV], kinds[WV], r0, min(dkv, r0 + JOB_ROWS), xa, xda, xsa, nb, v)


@njit(cache=True, parallel=True, nogil=True)
def _gate_up_act(a, st, kinds, d_ff, xq, xd, xs, gelu, gelu_table, hidden):
    """``hidden[r] = act(gate_r . x) * (up_r . x)`` in one parallel region, element ``r`` right after
    its two dots: ggml_vec_swiglu_f32's (v_silu in the chunks of 8, the libm silu in the tail) or,
    if ``gelu``, ggml_vec_geglu_f32's (the float16 GELU table)."""
    nb = xd.shape[0]
    xa, xda, xsa = xq.ctypes.data, xd.ctypes.data, xs.ctypes.data
    n8 = d_ff - d_ff % 8
    for job in prange(-(-d_ff // JOB_ROWS)):
        tmp_f = np.empty(1, np.float32)
        tmp_u = tmp_f.view(np.uint32)
        gu = np.empty(2, np.float32)  # gate_r . x, up_r . x
        for r in range(job * JOB_ROWS, min(d_ff, (job + 1) * JOB_ROWS)):
            prefetch_row(a[WGATE] + (r + PREFETCH_ROWS) * st[WGATE], st[WGATE])
            prefetch_row(a[WUP] + (r + PREFETCH_ROWS) * st[WUP], st[WUP])
            dot_any(kinds[WGATE], 1, a[WGATE] + r * st[WGATE], xa, 0, xda, 0, xsa, 0, nb, gu.ctypes.data, 0)
            dot_any(kinds[WUP], 1, a[WUP] + r * st[WUP], xa, 0, xda, 0, xsa, 0, nb, gu.ctypes.data + 4, 0)
            if gelu:
                hidden[r] = geglu_scalar(gu[0], gu[1], gelu_table)
            else:
                hidden[r] = (_v_silu(gu[0], tmp_f, tmp_u) if r < n8 else _silu_scalar(gu[0])) * gu[1]


@njit(cache=True, inline="always")
def _quantize(x, xq, xd, xs):
    """Q8_1 of ``x (n,)`` with the x86 rounding (Q8_0 is the same ``q`` and ``d``, without ``s``)."""
    x2 = x.reshape((1, x.shape[0]))
    _q8_32_token(x2, x2.view(np.int32), 0, True, True, 5,  # kshift 5: K = 32, the plain layout
                 xq.reshape((1, 1, xq.shape[0])),
                 xd.reshape((1, xd.shape[0])), xs.reshape((1, xs.shape[0])))


@njit(cache=True, inline="always")
def _quantize_for(kind, x, xq, xd, xs, bsums32, bsums):
    """The activations ``kind``'s dot product reads: Q8_K (``xd`` per 256, int16 ``bsums``) for the
    K-quants, else Q8_1 (which serves Q8_0 too). Returns the planes to pass to :func:`_matvec`."""
    n = x.shape[0]
    if kind == KIND_Q4_K or kind == KIND_Q6_K:
        nk = n // 256
        xd[:nk] = 0
        xq[:n] = 0
        bsums32[:n // 16] = 0
        x2 = x.reshape((1, n))
        _q8_K_token(x2, x2.view(np.int32), 0, 4,  # kshift 4: K = 16, the plain layout
                    xq[:n].reshape((1, 1, n)), xd[:nk].reshape((1, nk)),
                    bsums32[:n // 16].reshape((1, n // 16)))
        for g in range(n // 16):
            bsums[g] = bsums32[g]
        return xq[:n], xd[:nk], bsums.view(np.float32)[:n // 32]
    _quantize(x, xq[:n], xd[:n // 32], xs[:n // 32])
    return xq[:n], xd[:n // 32], xs[:n // 32]


@njit(cache=True, inline="always")
def _rms_norm(h, weight, eps, out):
    """``(h * 1/sqrt(mean(h^2) + eps)) * weight``, ggml's roundings."""
    _rms_norm_kernel(h.reshape((1, h.shape[0])), eps, out.reshape((1, out.shape[0])))
    for i in range(out.shape[0]):
        out[i] = out[i] * weight[i]


@njit(cache=True, inline="always")
def _rope(x, n_head, d, n_rot, neox, cos_c, sin_c):
    """ggml's rotate_pairs on each head of ``x (n_head*d,)``, in place."""
    half = n_rot // 2
    for h in range(n_head):
        o = h * d
        for i in range(half):
            c = cos_c[0, i]
            s = sin_c[0, i]
            a0, a1 = (o + i, o + i + half) if neox else (o + 2 * i, o + 2 * i + 1)
            x0 = x[a0]
            x1 = x[a1]
            x[a0] = fma_f32(x0, c, -(x1 * s))
            x[a1] = fma_f32(x0, s, x1 * c)


@njit(cache=True, inline="always")
def _f16_dot_reduce(acc):
    """``ggml_vec_dot_f16``'s reduction of its 4 x 8 accumulators ``acc (32,)`` (slot 8j + l)."""
    x = np.empty(8, np.float32)
    for lane in range(8):
        x[lane] = (acc[lane] + acc[16 + lane]) + (acc[8 + lane] + acc[24 + lane])
    return ((x[0] + x[4]) + (x[1] + x[5])) + ((x[2] + x[6]) + (x[3] + x[7]))


@njit(cache=True, nogil=True)
def _attend_head(q, h, kc, vc, li, table, block, kvh, n_kv, first, scale, out):
    """Decode attention of head ``h`` (llama.cpp's non-flash path, see attention_ggml) over cells
    ``first .. n_kv - 1`` (``first > 0``: a sliding window; the cells before it are masked, which
    gives them probability 0 and leaves every sum as it is, so they are skipped).

    ``kc, vc: (n_blocks, n_layer_g, B, n_kv_head, d) uint16``: float16 bits of a block pool; cell ``c``
    of layer ``li`` is row ``c % B`` of block ``table[c // B]`` (a contiguous cache is one block of
    ``B = n_ctx`` cells, ``table = [0]``).
    """
    d = kc.shape[4]
    d_v = vc.shape[4]
    n_cols = -(-n_kv // KV_PAD) * KV_PAD
    q16 = np.empty(d, np.float32)
    for j in range(d):
        q16[j] = to_f16(q[h * d + j])
    d32 = d - d % 32
    w = np.empty(n_kv, np.float32)
    krow = np.empty(d, np.float32)
    mx = np.float32(-np.inf)
    for c in range(first, n_kv):  # KQ: ggml_vec_dot_f16(k[c], q16)
        kbits = kc[table[c // block], li, c % block, kvh]
        for j in range(d):
            krow[j] = f16_bits_to_f32(kbits[j])
        s = np.float64(dot_f32_ggml_f16(krow.ctypes.data, q16.ctypes.data, d32))
        for i in range(d32, d):
            s += np.float64(krow[i] * q16[i])
        w[c] = np.float32(s) * scale
        if w[c] > mx:
            mx = w[c]
    tmp_f = np.empty(1, np.float32)
    tmp_u = tmp_f.view(np.uint32)
    p = np.zeros(n_kv, np.float32)
    total = 0.0
    e = np.zeros(8, np.float32)
    for c0 in range(0, n_cols, 8):  # ggml_vec_soft_max_f32: chunks of 8, float hsum, double total
        if c0 >= n_kv:
            break  # later chunks are all masked: exp(-inf) = 0 adds nothing
        for lane in range(8):
            c = c0 + lane
            e[lane] = _v_expf(w[c] - mx, tmp_f, tmp_u) if first <= c < n_kv else np.float32(0)
            if c < n_kv:
                p[c] = e[lane]
        total += np.float64(hsum8(e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]))
    inv = np.float32(1.0 / total)
    for c in range(first, n_kv):
        p[c] = to_f16(p[c] * inv)
    # KQV: out[j] = ggml_vec_dot_f16(n_cols, v^T[j], p), cell c in slot c % 32; slot-major accumulators
    acc2 = np.zeros((32, d_v), np.float32)
    for c in range(first, n_kv):
        a = acc2[c % 32]
        vbits = vc[table[c // block], li, c % block, kvh]
        pc = p[c]
        for j in range(d_v):
            a[j] = fma_f32(f16_bits_to_f32(vbits[j]), pc, a[j])
    for c in range(n_kv, min(n_cols, n_kv + 32)):  # masked cells: fma(0, 0, acc) = acc + 0 (turns -0 into +0)
        a = acc2[c % 32]
        for j in range(d_v):
            a[j] = a[j] + np.float32(0)
    col = np.empty(32, np.float32)
    for j in range(d_v):
        for slot in range(32):
            col[slot] = acc2[slot, j]
        out[h * d_v + j] = np.float32(np.float64(_f16_dot_reduce(col)))


@njit(cache=True, parallel=True, nogil=True)
def _attention(q, kc, vc, li, table, block, n_head, n_kv_head, n_kv, first, scale, out):
    group = n_head // n_kv_head
    for h in prange(n_head):
        _attend_head(q, h, kc, vc, li, table, block, h // group, n_kv, first, scale, out)


@njit(cache=True, parallel=True, nogil=True)
def _attention_rows(q, kc, vc, li, tables, block, n_head, n_kv_head, positions, window, scale, out):
    """Decode attention of several sequences at once (a continuous batch): row ``r`` is one query of
    sequence ``r`` at ``positions[r]``, over that sequence's cells ``first .. pos`` read through its
    block table ``tables[r]`` -- each head exactly as :func:`_attention` computes it for that sequence
    alone, the ``n_seq * n_head`` heads spread over the threads in one parallel region.

    ``q, out: (n_seq, n_head * d)`` float32; ``tables: (n_seq, n_table)`` int64 (-1: released)."""
    group = n_head // n_kv_head
    for job in prange(q.shape[0] * n_head):
        r, h = job // n_head, job % n_head
        pos = positions[r]
        first = max(0, pos + 1 - window) if window > 0 else 0
        _attend_head(q[r], h, kc, vc, li, tables[r], block, h // group, pos + 1, first, scale, out[r])


@njit(cache=True, nogil=True)
def _store_rows(kc, vc, li, blocks, offsets, k, v):
    """``k, v: (n_seq, n_kv_head, d)`` float32 into row ``offsets[r]`` of block ``blocks[r]`` of layer
    ``li`` of the pools ``kc, vc`` (float16 bits), rounded as the one-token step stores them."""
    for r in range(k.shape[0]):
        for hh in range(k.shape[1]):
            for j in range(k.shape[2]):
                kc[blocks[r], li, offsets[r], hh, j] = f32_to_f16_bits(k[r, hh, j])
            for j in range(v.shape[2]):
                vc[blocks[r], li, offsets[r], hh, j] = f32_to_f16_bits(v[r, hh, j])


def store_rows_paged(cache, layer: int, cells, tables, k: np.ndarray, v: np.ndarray) -> None:
    """Write one new token per sequence: ``k, v (n_seq, n_kv_head, d)`` into cell ``cells[r]`` of row ``r``'s
    block table (``tables`` as in :func:`attention_rows_paged`)."""
    g, li = int(cache.layer_group[layer]), int(cache.layer_index[layer])
    pool, B = cache.groups[g].pool, cache.block_size
    rows = np.arange(len(cells))
    blocks = tables[g][rows, cells // B]
    _store_rows(pool.k.view(np.uint16), pool.v.view(np.uint16), li, blocks, cells % B,
                np.ascontiguousarray(k, np.float32), np.ascontiguousarray(v, np.float32))


def attention_rows_paged(q: np.ndarray, cache, seq_ids, layer: int, positions: np.ndarray, tables,
                         scale: float, window: int | None) -> np.ndarray:
    """:func:`_attention_rows` for layer ``layer`` of a :class:`PagedKVCache`: ``q (n_seq, n_head, d)``
    float32, ``tables``: per layer group, ``(n_seq, n_table)`` int64. Needs plain sequences (cell ``c``
    holds position ``c``). Returns ``(n_seq, n_head * d_v)``; row ``r`` equals the fused one-token step's
    attention of sequence ``seq_ids[r]`` alone, bit for bit."""
    g, li = int(cache.layer_group[layer]), int(cache.layer_index[layer])
    pool = cache.groups[g].pool
    n_seq, n_head, d = q.shape
    out = np.empty((n_seq, n_head * pool.v.shape[-1]), np.float32)
    _attention_rows(np.ascontiguousarray(q.reshape(n_seq, n_head * d), np.float32), pool.k.view(np.uint16),
                    pool.v.view(np.uint16), li, tables[g], cache.block_size, n_head, cache.n_kv_head,
                    np.ascontiguousarray(positions, np.int64), window or 0, np.float32(scale), out)
    return out


@njit(cache=True, nogil=True)
def _decode_layers(h, pos, addr, stride, kind, n_rows, attn_norm, ffn_norm, q_norm, k_norm, post_attn_norm,
                   post_ffn_norm, eps, k_pool_a, v_pool_a, table_a, k_pool_b, v_pool_b, table_b, layer_group,
                   layer_index, block, n_head, n_kv_head, head_dim, n_rot, neox, theta_scale,
                   freq_scale, q_scale, scale, window, gelu, gelu_table):
    """All layers of one decode step; ``h (d_model,)`` float32 updated in place.

    ``addr, stride, kind, n_rows: (n_layer, 7)``: each matrix's GGUF rows (address, row bytes,
    ``ggml_simd.KIND`` of its type, rows) in :data:`MATRICES` order. The norm weights ``(n_layer, n)``
    (:data:`NORMS`; absent ones None: Numba compiles their branches away). The cache: two block pools
    ``k_pool_*, v_pool_*: (n_blocks, n_layer_g, B, n_kv_head, d)`` float16 bits with their block tables
    ``table_*`` (a paged cache's full-attention and sliding-window groups; the contiguous cache passes its
    arrays as one block, twice); layer ``i`` lives in pool ``layer_group[i]`` (0: a, 1: b) at index
    ``layer_index[i]``; cell ``pos`` (cell = position: a plain sequence) is written. ``q_scale``: Q's factor after RoPE (1 unless the graph scales
    Q; then ``scale``, the softmax's, is 1). ``window (n_layer,)``: sliding-window length, 0 for none.
    """
    n_layer, d_model = attn_norm.shape
    d_ff = n_rows[0, WGATE]
    dq, dkv = n_head * head_dim, n_kv_head * head_dim
    n_max = max(d_model, d_ff, dq)
    x = np.empty(n_max, np.float32)
    xq = np.empty(n_max, np.int8)
    xd = np.empty(n_max // 32, np.float32)
    xs = np.empty(n_max // 32, np.float32)
    bsums32 = np.empty(n_max // 16, np.int32)
    bsums = np.empty(n_max // 16, np.int16)
    q = np.empty(dq, np.float32)
    k = np.empty(dkv, np.float32)
    v = np.empty(dkv, np.float32)
    att = np.empty(dq, np.float32)
    hidden = np.empty(d_ff, np.float32)
    y = np.empty(d_model, np.float32)
    cos_c = np.empty((1, n_rot // 2), np.float32)
    sin_c = np.empty((1, n_rot // 2), np.float32)
    positions = np.full(1, pos, np.int64)
    nbm = d_model // 32
    for layer in range(n_layer):
        a, st, kinds = addr[layer], stride[layer], kind[layer]
        # -- attention
        _rms_norm(h, attn_norm[layer], eps, x[:d_model])
        _quantize(x[:d_model], xq[:d_model], xd[:nbm], xs[:nbm])
        _qkv(a, st, kinds, dq, dkv, xq[:d_model], xd[:nbm], xs[:nbm], q, k, v)
        if q_norm is not None:
            for hh in range(n_head):
                _rms_norm(q[hh * head_dim:(hh + 1) * head_dim], q_norm[layer], eps, q[hh * head_dim:(hh + 1) * head_dim])
            for hh in range(n_kv_head):
                _rms_norm(k[hh * head_dim:(hh + 1) * head_dim], k_norm[layer], eps, k[hh * head_dim:(hh + 1) * head_dim])
        _rope_cache(positions, n_rot // 2, theta_scale[layer], freq_scale, cos_c, sin_c)
        _rope(q, n_head, head_dim, n_rot, neox, cos_c, sin_c)
        _rope(k, n_kv_head, head_dim, n_rot, neox, cos_c, sin_c)
        if q_scale != 1:
            for i in range(dq):
                q[i] = q[i] * q_scale
        kp, vp, table = (k_pool_a, v_pool_a, table_a) if layer_group[layer] == 0 else (k_pool_b, v_pool_b, table_b)
        li = layer_index[layer]
        b, r = table[pos // block], pos % block
        for hh in range(n_kv_head):
            for j in range(head_dim):
                kp[b, li, r, hh, j] = f32_to_f16_bits(k[hh * head_dim + j])
                vp[b, li, r, hh, j] = f32_to_f16_bits(v[hh * head_dim + j])
        first = max(0, pos + 1 - window[layer]) if window[layer] > 0 else 0
        _attention(q, kp, vp, li, table, block, n_head, n_kv_head, pos + 1, first, scale, att)
        aq, ad, as_ = _quantize_for(kinds[WO], att, xq, xd, xs, bsums32, bsums)
        _matvec(a[WO], st[WO], kinds[WO], d_model, aq, ad, as_, y)
        if post_attn_norm is not None:
            _rms_norm(y, post_attn_norm[layer], eps, y)
        for i in range(d_model):
            h[i] = h[i] + y[i]
        # -- feed-forward
        _rms_norm(h, ffn_norm[layer], eps, x[:d_model])
        _quantize(x[:d_model], xq[:d_model], xd[:nbm], xs[:nbm])
        _gate_up_act(a, st, kinds, d_ff, xq[:d_model], xd[:nbm], xs[:nbm], gelu, gelu_table, hidden)
        fq, fd, fs = _quantize_for(kinds[WDOWN], hidden, xq, xd, xs, bsums32, bsums)
        _matvec(a[WDOWN], st[WDOWN], kinds[WDOWN], d_model, fq, fd, fs, y)
        if post_ffn_norm is not None:
            _rms_norm(y, post_ffn_norm[layer], eps, y)
        for i in range(d_model):
            h[i] = h[i] + y[i]


class FusedDecodeStep:
    """The tables :func:`_decode_layers` reads, built once from a :class:`Decoder`."""

    def __init__(self, decoder):
        reason = unsupported_reason(decoder)
        if reason is not None:
            raise ValueError(f"fused decode unsupported: {reason}")
        self.decoder = decoder
        s = decoder.spec
        n = s.n_layer
        self.addr = np.empty((n, 7), np.int64)
        self.stride = np.empty((n, 7), np.int64)
        self.kind = np.empty((n, 7), np.int64)
        self.n_rows = np.empty((n, 7), np.int64)
        for i, lw in enumerate(decoder.layers):
            for j, name in enumerate(MATRICES):
                w = getattr(lw, name)
                self.addr[i, j] = w.raw.ctypes.data  # the memory map stays open with decoder.gguf
                self.stride[i, j] = w.raw.strides[0]
                self.kind[i, j] = KIND[w.qtype]
                self.n_rows[i, j] = w.n_out
        stack = lambda name: (None if getattr(decoder.layers[0], name) is None else  # noqa: E731
                               np.ascontiguousarray(np.stack([getattr(lw, name) for lw in decoder.layers]), np.float32))
        self.norms = tuple(stack(name) for name in NORMS)
        self.window = np.array([s.sliding_window if s.is_sliding(i) else 0 for i in range(n)], np.int64)
        self.theta_scale = np.array([rope_theta_scale(s.rope_base_for(i), s.rope_dims)
                                     for i in range(n)], np.float32)  # glibc's powf, as rope_ggml
        self._keep = [decoder.gguf]
        self._contiguous_maps = None

    def __call__(self, token: int, cache) -> np.ndarray:
        """Logits ``(1, n_vocab)`` of ``token`` at position ``cache.n_past``; stores its K, V and advances."""
        dec, s = self.decoder, self.decoder.spec
        cache.check_room(1)
        if not cache.is_linear():
            raise ValueError("the fused decode step needs a plain sequence (cell c holds position c)")
        pos = cache.n_past
        cache.begin(1)  # a paged cache allocates / un-shares the block of cell pos
        pools = self._pools(cache)
        h = np.ascontiguousarray(dec.embed(np.array([token]))[0], np.float32)
        q_scale, scale = (s.attn_scale, 1.0) if s.traits.scale_q else (1.0, s.attn_scale)
        _decode_layers(h, pos, self.addr, self.stride, self.kind, self.n_rows, *self.norms,
                       np.float32(s.norm_eps), *pools,
                       s.n_head, s.n_kv_head, s.head_dim_k, s.rope_dims, s.traits.rope_mode == "neox",
                       self.theta_scale, np.float32(s.rope_freq_scale), np.float32(q_scale), np.float32(scale),
                       self.window, s.traits.activation == "gelu", GELU_F16)
        cache.advance(1)
        return matmul_simd(dec.output, rms_norm_ggml(h[None], dec.output_norm, s.norm_eps))

    def _pools(self, cache):
        """``(k_pool_a, v_pool_a, table_a, k_pool_b, v_pool_b, table_b, layer_group, layer_index, B)``."""
        if getattr(cache, "paged", False):
            pc = cache.cache
            tables = pc.tables(cache.seq_id)
            g = [(grp.pool.k.view(np.uint16), grp.pool.v.view(np.uint16), t) for grp, t in zip(pc.groups, tables)]
            a, b = g[0], g[-1]
            return (*a, *b, pc.layer_group, pc.layer_index, pc.block_size)
        n = self.decoder.spec.n_layer
        if self._contiguous_maps is None:
            self._contiguous_maps = (np.zeros(n, np.int64), np.arange(n, dtype=np.int64), np.zeros(1, np.int64))
        group, index, table = self._contiguous_maps
        k, v = cache.k.view(np.uint16)[None], cache.v.view(np.uint16)[None]  # (1, n_layer, n_ctx, n_kv_head, d)
        return (k, v, table, k, v, table, group, index, cache.n_ctx)


__all__ = ["FusedDecodeStep", "unsupported_reason", "MATRICES"]
