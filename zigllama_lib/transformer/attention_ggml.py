"""llama.cpp's non-flash attention on the CPU (AVX2 + F16C + FMA), bit for bit.

For one layer llama.cpp builds ``kq = mul_mat(K, Q)``, ``soft_max_ext(kq, mask,
scale)``, ``kqv = mul_mat(V^T, kq)`` over a float16 KV cache. On an x86 AVX2
build:

* ``Q`` (float32) and the softmax probabilities are converted to float16 first
  (``from_float`` of the F16 ``vec_dot_type``, round to nearest even);
* the KV cache is seen through ``n_kv`` cells, the cells used so far padded up
  to a multiple of 256 (``kv_pad``): the padding cells are masked (probability
  0, V rows zero), so they change no value, but they fix which SIMD lane each
  position lands in and keep every softmax chunk a full vector of 8;
* prefill (``n_tok >= 2``) runs llamafile's ``tinyBLAS<8, __m256, __m256,
  ggml_fp16_t, ggml_fp16_t, float>``: per output an 8-lane accumulator,
  ``acc[l] = fma(a[8i+l], b[8i+l], acc[l])`` over the dot length, then
  ``hsum = ((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7))``;
* decode (``n_tok == 1``: ``llamafile_sgemm`` declines ``n < 2``) runs
  ``ggml_vec_dot_f16``: four 8-lane FMA accumulators over steps of 32
  (element ``i`` in accumulator ``(i % 32) // 8``, lane ``i % 8``), reduced as
  ``acc0 += acc2; acc1 += acc3; acc0 += acc1`` then ``t_l = x_l + x_{l+4}``,
  ``(t0+t1) + (t2+t3)``; leftovers (``n % 32``) in double;
* ``soft_max``: ``w = kq * scale + mask`` (mask 0 / -inf), ``max``, then
  ``ggml_vec_soft_max_f32``: per chunk of 8 ``e = ggml_v_expf(w - max)``, the
  chunk's ``hsum`` (float) added to a double sum, then every ``e`` times
  ``(float)(1.0 / sum)``.

``V`` is stored transposed in llama.cpp's cache (one row of ``n_kv`` values per
head dimension), so KQV's lanes run over KV positions.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..linear_algebra.ggml_exact import fma_f32, hsum8
from ..linear_algebra.ggml_simd import dot_f32_ggml_f16, dot_f32_lanes8, dot_f32_lanes8_rows
from ..linear_algebra.half import f16_bits_to_f32, to_f16
from ..neural_primitives.ggml_math import _v_expf

KV_PAD = 256


@njit(cache=True, inline="always")
def _dot_tinyblas(a, b, n):
    """tinyBLAS F16 (AVX2): 8 FMA lanes over ``n`` (a multiple of 8), then hsum. The readable
    reference of ``dot_f32_lanes8`` (the SIMD version the kernel runs; equal, tested)."""
    acc = np.zeros(8, np.float32)
    for i in range(0, n, 8):
        for l in range(8):
            acc[l] = fma_f32(a[i + l], b[i + l], acc[l])
    return hsum8(acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7])


@njit(cache=True, inline="always")
def _dot_vec_f16(a, b, n):
    """ggml_vec_dot_f16 (AVX2): 4 x 8 FMA accumulators over steps of 32, GGML_F32x8_REDUCE, double tail.
    The readable reference of ``_dot_vec_f16_simd``."""
    acc = np.zeros((4, 8), np.float32)
    np32 = n - n % 32
    for i in range(0, np32, 32):
        for j in range(4):
            for l in range(8):
                acc[j, l] = fma_f32(a[i + 8 * j + l], b[i + 8 * j + l], acc[j, l])
    x = np.empty(8, np.float32)
    for l in range(8):
        x0 = acc[0, l] + acc[2, l]
        x1 = acc[1, l] + acc[3, l]
        x[l] = x0 + x1
    t0 = x[0] + x[4]
    t1 = x[1] + x[5]
    t2 = x[2] + x[6]
    t3 = x[3] + x[7]
    s = np.float64((t0 + t1) + (t2 + t3))
    for i in range(np32, n):
        s += np.float64(a[i] * b[i])
    return np.float32(s)


@njit(cache=True, inline="always")
def _dot_vec_f16_simd(a, b, n):
    """:func:`_dot_vec_f16` with its 32-wide main loop in SIMD code (contiguous float32 rows)."""
    np32 = n - n % 32
    s = np.float64(dot_f32_ggml_f16(a.ctypes.data, b.ctypes.data, np32))
    for i in range(np32, n):
        s += np.float64(a[i] * b[i])
    return np.float32(s)


@njit(cache=True, inline="always")
def _dot_tinyblas_simd(a, b, n):
    return dot_f32_lanes8(a.ctypes.data, b.ctypes.data, n)


ROWS_PER_PASS = 8  # prefill: dots computed side by side (dot_f32_lanes8_rows)


@njit(cache=True, inline="always")
def _dots_tinyblas(a, first, last, b, n, out):
    """``out[r] = _dot_tinyblas(a[r], b, n)`` for rows ``first .. last-1`` of ``a`` (rows contiguous in
    their last axis), :data:`ROWS_PER_PASS` at a time."""
    r = first
    a0, b0, o0 = a.ctypes.data, b.ctypes.data, out.ctypes.data  # addresses, not a view per pass
    while r + ROWS_PER_PASS <= last:
        dot_f32_lanes8_rows(8, a0 + r * a.strides[0], a.strides[0], b0, n, o0 + r * out.strides[0])
        r += ROWS_PER_PASS
    while r < last:
        out[r] = dot_f32_lanes8(a0 + r * a.strides[0], b0, n)
        r += 1


@njit(cache=True, inline="always")
def _balanced_token(i, n_tok):
    """The ``i``-th token to process, pairing cheap and costly ones: 0, n-1, 1, n-2, ... (a causal
    query's work grows with its position, and ``prange`` hands each thread a contiguous range)."""
    return i // 2 if i % 2 == 0 else n_tok - 1 - i // 2


@njit(cache=True, parallel=True, nogil=True)
def _attention_kernel(q, k, vt, n_past, scale, n_cols, decode, window, out):
    """q (n_tok, n_head, d) f32, rounded here to f16 as KQ's src1 is; k (n_cols, n_kv_head, d) f32 (f16 values, zero padded);
    vt (n_kv_head, d_v, n_cols) f32; out (n_tok, n_head, d_v). ``window > 0``: cells more than
    ``window - 1`` positions back are masked too."""
    n_tok, n_head, d = q.shape
    n_kv_head = k.shape[1]
    d_v = vt.shape[1]
    group = n_head // n_kv_head
    for job in prange(n_tok * n_head):
        t = _balanced_token(job // n_head, n_tok)
        h = job % n_head
        kvh = h // group
        n_vis = n_past + t + 1  # causal: cells 0 .. n_past + t
        first = max(0, n_vis - window) if window > 0 else 0  # sliding window: cells first .. n_past + t
        w = np.empty(n_cols, np.float32)
        qrow = np.empty(d, np.float32)
        for j in range(d):
            qrow[j] = to_f16(q[t, h, j])  # KQ's src1 converted to float16 (F16C, nearest even)
        mx = np.float32(-np.inf)
        if not decode:
            _dots_tinyblas(k[:, kvh], first, n_vis, qrow, d, w)
        for c in range(first, n_vis):
            s = _dot_vec_f16_simd(k[c, kvh], qrow, d) if decode else w[c]
            w[c] = s * scale  # + mask 0 (an FMA with 0 rounds the same)
            if w[c] > mx:
                mx = w[c]
        tmp_f = np.empty(1, np.float32)
        tmp_u = tmp_f.view(np.uint32)
        total = 0.0
        p = np.zeros(n_cols, np.float32)
        e = np.empty(8, np.float32)
        # chunks of 8 wholly masked (before ``first`` or past the last visible cell) hold e = 0 and
        # add exactly 0.0 to the double sum: only the chunks that overlap the visible cells run
        for c0 in range(first - first % 8, n_vis, 8):
            for l in range(8):
                c = c0 + l
                e[l] = _v_expf(w[c] - mx, tmp_f, tmp_u) if first <= c < n_vis else np.float32(0.0)
                p[c] = e[l]  # masked cells: v_expf(-inf) = 0
            total += np.float64(hsum8(e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]))
        inv = np.float32(1.0 / total)
        # cells past the last visible one have p = +0: fma(v, +0, acc) = acc for the accumulators
        # (which start at +0 and so are never -0), so whole 32-cell chunks of them are skipped
        n_dot = min(n_cols, -(-n_vis // 32) * 32)
        for c in range(first, n_vis):
            p[c] = to_f16(p[c] * inv)  # KQV's src1 converted to float16 (F16C, nearest even); 0 stays 0
        if decode:
            for j in range(d_v):
                out[t, h, j] = _dot_vec_f16_simd(vt[kvh, j], p, n_dot)
        else:
            _dots_tinyblas(vt[kvh], 0, d_v, p, n_dot, out[t, h])


def attention_ggml(q: np.ndarray, k_f16: np.ndarray, v_f16: np.ndarray, n_past: int, scale: float,
                   kv_pad: int = KV_PAD, window: int | None = None) -> np.ndarray:
    """Causal GQA attention as llama.cpp's CPU backend computes it (no flash attention).

    Args:
        q: (n_tok, n_head, d) float32 queries (after RoPE) at positions ``n_past ..``.
        k_f16, v_f16: (n_kv, n_kv_head, d) float16 cache of positions ``0 .. n_kv-1``
            (at least ``n_past + n_tok`` rows; later rows are ignored).
        scale: the KQ scale (``1/sqrt(d)``).
        kv_pad: llama.cpp's KV-cell padding (256).
        window: sliding-window length (llama.cpp's standard SWA: query position ``p`` sees key
            positions ``p - window + 1 .. p``; masked cells get probability 0 like the padding), or None.
    Returns:
        (n_tok, n_head * d_v) float32.
    """
    if window is not None and (not isinstance(window, (int, np.integer)) or window < 1):
        raise ValueError(f"attention_ggml: window must be a positive number of positions or None, got {window!r}")
    q = np.ascontiguousarray(q, dtype=np.float32)
    n_tok, n_head, d = q.shape
    n_kv = n_past + n_tok
    if k_f16.shape[0] < n_kv or v_f16.shape[0] < n_kv:
        raise ValueError(f"attention_ggml: the cache holds {k_f16.shape[0]} positions, need {n_kv}")
    n_kv_head, d_v = v_f16.shape[1], v_f16.shape[2]
    n_cols = -(-n_kv // kv_pad) * kv_pad
    k = np.zeros((n_cols, n_kv_head, d), np.float32)
    k[:n_kv] = np.asarray(k_f16[:n_kv], dtype=np.float16)
    vt = np.zeros((n_kv_head, d_v, n_cols), np.float32)
    vt[:, :, :n_kv] = np.asarray(v_f16[:n_kv], dtype=np.float16).transpose(1, 2, 0)
    out = np.empty((n_tok, n_head, d_v), np.float32)
    _attention_kernel(q, k, vt, n_past, np.float32(scale), n_cols, n_tok == 1, window or 0, out)
    return out.reshape(n_tok, n_head * d_v)


# -- attention over a paged cache ---------------------------------------------------------------
@njit(cache=True, parallel=True, nogil=True)
def _gather_cells(k_pool, v_pool, table, n_cells, block_size, k, vt):
    """Cells ``0 .. n_cells-1`` of one layer read through the block table: cell ``c`` is row
    ``c % B`` of block ``table[c // B]`` of ``k_pool, v_pool: (n_blocks, B, n_kv_head, d)`` float16.
    (Passed as their uint16 bits.) Writes ``k (n_cols, n_kv_head, d)`` and ``vt (n_kv_head, d_v, n_cols)`` float32 (as
    :func:`attention_ggml` lays out a contiguous cache); released blocks (-1) stay 0."""
    n_kv_head, d = k.shape[1], k.shape[2]
    d_v = vt.shape[1]
    for bi in prange(-(-n_cells // block_size)):
        b = table[bi]
        if b < 0:
            continue
        for r in range(min(block_size, n_cells - bi * block_size)):
            c = bi * block_size + r
            for h in range(n_kv_head):
                for j in range(d):
                    k[c, h, j] = f16_bits_to_f32(k_pool[b, r, h, j])
                for j in range(d_v):
                    vt[h, j, c] = f16_bits_to_f32(v_pool[b, r, h, j])


@njit(cache=True, parallel=True, nogil=True)
def _attention_cells_kernel(q, q_pos, k, vt, cell_pos, scale, n_cols, decode, window, out):
    """:func:`_attention_kernel` with llama.cpp's mask computed from each cell's position:
    query ``t`` (position ``q_pos[t]``) sees cell ``c`` iff ``0 <= cell_pos[c] <= q_pos[t]`` (and
    ``q_pos[t] - cell_pos[c] < window`` if ``window > 0``). Where cell ``c`` holds position ``c`` the
    visible cells are ``first .. n_vis-1`` and every float operation is the same as there."""
    n_tok, n_head, d = q.shape
    n_kv_head = k.shape[1]
    d_v = vt.shape[1]
    n_cells = cell_pos.shape[0]
    group = n_head // n_kv_head
    for job in prange(n_tok * n_head):
        t = _balanced_token(job // n_head, n_tok)
        h = job % n_head
        kvh = h // group
        qp = q_pos[t]
        lo, hi = n_cells, 0  # visible cells lie in lo .. hi-1
        for c in range(n_cells):
            pc = cell_pos[c]
            if pc >= 0 and pc <= qp and (window <= 0 or qp - pc < window):
                if c < lo:
                    lo = c
                hi = c + 1
        w = np.full(n_cols, -np.inf, np.float32)
        qrow = np.empty(d, np.float32)
        for j in range(d):
            qrow[j] = to_f16(q[t, h, j])
        mx = np.float32(-np.inf)
        if not decode and hi > lo:
            _dots_tinyblas(k[:, kvh], lo, hi, qrow, d, w)
        for c in range(lo, hi):
            pc = cell_pos[c]
            if pc >= 0 and pc <= qp and (window <= 0 or qp - pc < window):
                s = _dot_vec_f16_simd(k[c, kvh], qrow, d) if decode else w[c]
                w[c] = s * scale
                if w[c] > mx:
                    mx = w[c]
            else:
                w[c] = -np.inf
        tmp_f = np.empty(1, np.float32)
        tmp_u = tmp_f.view(np.uint32)
        total = 0.0
        p = np.zeros(n_cols, np.float32)
        e = np.empty(8, np.float32)
        for c0 in range(lo - lo % 8, hi, 8):
            for l in range(8):
                c = c0 + l
                e[l] = _v_expf(w[c] - mx, tmp_f, tmp_u) if lo <= c < hi and w[c] != -np.inf else np.float32(0.0)
                p[c] = e[l]
            total += np.float64(hsum8(e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]))
        inv = np.float32(1.0 / total)
        n_dot = min(n_cols, -(-hi // 32) * 32)
        for c in range(lo, hi):
            p[c] = to_f16(p[c] * inv)
        if decode:
            for j in range(d_v):
                out[t, h, j] = _dot_vec_f16_simd(vt[kvh, j], p, n_dot)
        else:
            _dots_tinyblas(vt[kvh], 0, d_v, p, n_dot, out[t, h])


def attention_ggml_paged(q: np.ndarray, q_pos: np.ndarray, k_pool: np.ndarray, v_pool: np.ndarray,
                         table: np.ndarray, cell_pos: np.ndarray, block_size: int, scale: float,
                         kv_pad: int = KV_PAD, window: int | None = None) -> np.ndarray:
    """:func:`attention_ggml` over a paged cache, read through its block table.

    Args:
        q: (n_tok, n_head, d) float32 queries at positions ``q_pos (n_tok,)``.
        k_pool, v_pool: (n_blocks, B, n_kv_head, d) float16, one layer of the pool.
        table: (>= ceil(n_cells / B),) int64 block ids of the sequence (-1: released).
        cell_pos: (n_cells,) int32 position held by each cell (-1: empty).
    Returns:
        (n_tok, n_head * d_v) float32. Where cell ``c`` holds position ``c`` (a plain sequence) the
        result is bit-identical to :func:`attention_ggml` on the same keys in a contiguous cache: the
        cells keep their lanes and chunks, the mask is the same (tested).
    """
    if window is not None and (not isinstance(window, (int, np.integer)) or window < 1):
        raise ValueError(f"attention_ggml_paged: window must be a positive number of positions or None, got {window!r}")
    q = np.ascontiguousarray(q, dtype=np.float32)
    n_tok, n_head, d = q.shape
    n_cells = len(cell_pos)
    n_kv_head, d_v = v_pool.shape[2], v_pool.shape[3]
    n_cols = max(kv_pad, -(-n_cells // kv_pad) * kv_pad)
    k = np.zeros((n_cols, n_kv_head, d), np.float32)
    vt = np.zeros((n_kv_head, d_v, n_cols), np.float32)
    if k_pool.dtype != np.float16 or v_pool.dtype != np.float16:
        raise ValueError("attention_ggml_paged reads a float16 cache (llama.cpp's default cache type)")
    _gather_cells(k_pool.view(np.uint16), v_pool.view(np.uint16), np.ascontiguousarray(table, np.int64),
                  n_cells, block_size, k, vt)
    out = np.empty((n_tok, n_head, d_v), np.float32)
    _attention_cells_kernel(q, np.ascontiguousarray(q_pos, np.int64), k, vt, np.ascontiguousarray(cell_pos, np.int32),
                            np.float32(scale), n_cols, n_tok == 1, window or 0, out)
    return out.reshape(n_tok, n_head * d_v)
