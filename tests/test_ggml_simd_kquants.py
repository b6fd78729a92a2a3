"""The K-quant SIMD products (Q4_K, Q6_K x Q8_K in linear_algebra.ggml_simd) against ggml's own
compiled kernels, called through ctypes with activations quantised by ggml itself:

* Q6_K: ``ggml_vec_dot_q6_K_q8_K`` (what llama.cpp's x86 build runs for Q6_K times 1-7 tokens), and
  from 8 tokens on ggml-cpu's tiled K-quant matmul (``ggml_compute_forward_mul_mat_tiled``, not an
  exported kernel: reached through a one-node ggml graph, :func:`ggml_graph_mul_mat`);
* Q4_K: ``ggml_gemv_q4_K_8x8_q8_K`` / ``ggml_gemm_q4_K_8x8_q8_K`` on rows interleaved eight at a time
  (llama.cpp's CPU_REPACK buffer does this to every Q4_K matrix with a multiple of 8 rows on AVX2;
  :func:`_repack_q4_K_x8` is our own statement of that layout, checked by the products being right).
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from zigllama_lib.foundation.errors import ConfigError
from zigllama_lib.foundation.ggml_types import GGMLType
from zigllama_lib.linear_algebra import ggml_simd
from zigllama_lib.linear_algebra.kquants import SIZEOF_BLOCK_Q4_K, SIZEOF_BLOCK_Q6_K
from zigllama_lib.linear_algebra.matmul import QMatrix
from zigllama_lib.linear_algebra.q8 import SIZEOF_BLOCK_Q8_K

from test_ggml_exact import ggml_cpu  # noqa: F401  (a fixture)

P = ctypes.c_void_p


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).view(np.uint8).reshape(-1, 2)


def random_kquant(qtype: GGMLType, n_out: int, n_in: int, rng) -> QMatrix:
    """Random but valid blocks: positive float16 scales, every quant and packed scale byte random."""
    n = n_out * (n_in // 256)
    if qtype == GGMLType.Q4_K:  # d, dmin, scales[12], qs[128]
        blk = rng.integers(0, 256, (n, SIZEOF_BLOCK_Q4_K), dtype=np.uint8)
        blk[:, 0:2] = _f16_bytes(rng.uniform(1e-4, 2e-3, n))
        blk[:, 2:4] = _f16_bytes(rng.uniform(1e-4, 2e-3, n))
    else:  # ql[128], qh[64], scales[16] int8, d
        blk = rng.integers(0, 256, (n, SIZEOF_BLOCK_Q6_K), dtype=np.uint8)
        blk[:, 208:210] = _f16_bytes(rng.uniform(1e-4, 2e-3, n))
    return QMatrix(blk.reshape(n_out, -1), qtype, n_in)


def ggml_q8_K(ggml_cpu, x: np.ndarray) -> np.ndarray:
    """ggml's ``quantize_row_q8_K`` of each row of ``x``: ``(n_tok, n/256 * 292)`` bytes."""
    f = ggml_cpu.quantize_row_q8_K
    f.restype, f.argtypes = None, [P, P, ctypes.c_int64]
    out = np.zeros((len(x), x.shape[1] // 256 * SIZEOF_BLOCK_Q8_K), np.uint8)
    for t in range(len(x)):
        row = np.ascontiguousarray(x[t], dtype=np.float32)
        f(row.ctypes.data, out[t].ctypes.data, x.shape[1])
    return out


def ggml_vec_dot_q6_K(ggml_cpu, w: QMatrix, x: np.ndarray) -> np.ndarray:
    f = ggml_cpu.ggml_vec_dot_q6_K_q8_K
    f.restype = None
    f.argtypes = [ctypes.c_int, P, ctypes.c_size_t, P, ctypes.c_size_t, P, ctypes.c_size_t, ctypes.c_int]
    xb, raw = ggml_q8_K(ggml_cpu, x), np.ascontiguousarray(w.raw)
    s = np.zeros(1, np.float32)
    out = np.empty((len(x), w.n_out), np.float32)
    for t in range(len(x)):
        for r in range(w.n_out):
            f(w.n_in, s.ctypes.data, 0, raw[r].ctypes.data, 0, xb[t].ctypes.data, 0, 1)
            out[t, r] = s[0]
    return out


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", P), ("no_alloc", ctypes.c_bool)]


def ggml_graph_mul_mat(llama_cpp, ggml_cpu, w: QMatrix, x: np.ndarray, n_threads: int = 2) -> np.ndarray:
    """``ggml_mul_mat(W, x)`` computed by ggml-cpu as a one-node graph (``ggml_graph_compute_with_ctx``):
    whatever path ``ggml_compute_forward_mul_mat`` picks for the batch -- for Q6_K, ``vec_dot`` below
    8 tokens and the tiled matmul from 8 on. ``(n_tok, n_out)`` float32."""
    from oracles import ggml_library

    base = ggml_library(llama_cpp, "libggml-base.so")
    base.ggml_init.restype, base.ggml_init.argtypes = P, [_InitParams]
    base.ggml_new_tensor_2d.restype = P
    base.ggml_new_tensor_2d.argtypes = [P, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    base.ggml_mul_mat.restype, base.ggml_mul_mat.argtypes = P, [P, P, P]
    base.ggml_new_graph.restype, base.ggml_new_graph.argtypes = P, [P]
    base.ggml_build_forward_expand.restype, base.ggml_build_forward_expand.argtypes = None, [P, P]
    base.ggml_get_data.restype, base.ggml_get_data.argtypes = P, [P]
    base.ggml_free.restype, base.ggml_free.argtypes = None, [P]
    ggml_cpu.ggml_graph_compute_with_ctx.restype = ctypes.c_int
    ggml_cpu.ggml_graph_compute_with_ctx.argtypes = [P, P, ctypes.c_int]
    raw = np.ascontiguousarray(w.raw)
    x = np.ascontiguousarray(x, dtype=np.float32)
    mem = raw.nbytes + 2 * x.nbytes + 4 * w.n_out * len(x) + (4 + 2 * n_threads) * 2**20
    ctx = base.ggml_init(_InitParams(mem, None, False))
    try:
        a = base.ggml_new_tensor_2d(ctx, int(w.qtype), w.n_in, w.n_out)
        b = base.ggml_new_tensor_2d(ctx, int(GGMLType.F32), w.n_in, len(x))
        ctypes.memmove(base.ggml_get_data(a), raw.ctypes.data, raw.nbytes)
        ctypes.memmove(base.ggml_get_data(b), x.ctypes.data, x.nbytes)
        y = base.ggml_mul_mat(ctx, a, b)
        gf = base.ggml_new_graph(ctx)
        base.ggml_build_forward_expand(gf, y)
        assert ggml_cpu.ggml_graph_compute_with_ctx(ctx, gf, n_threads) == 0
        out = np.empty((len(x), w.n_out), np.float32)
        ctypes.memmove(out.ctypes.data, base.ggml_get_data(y), out.nbytes)
        return out
    finally:
        base.ggml_free(ctx)


def _repack_q4_K_x8(w: QMatrix) -> np.ndarray:
    """block_q4_Kx8 of every 8 rows (``n_out % 8 == 0``): per super-block, the eight rows' d, then
    dmin (float16 each), 96 bytes of scales and mins regrouped per sub-block (12 bytes per sub-block
    holding the eight rows' scales and mins in Q4_K's own 6-bit packing), and the quants interleaved
    8 bytes at a time, row after row."""
    nb = w.n_in // 256
    blk = np.ascontiguousarray(w.raw).reshape(w.n_out // 8, 8, nb, SIZEOF_BLOCK_Q4_K).transpose(0, 2, 1, 3)
    out = np.zeros((w.n_out // 8, nb, 1152), np.uint8)
    out[..., 0:16] = blk[..., 0:2].reshape(*blk.shape[:2], 16)
    out[..., 16:32] = blk[..., 2:4].reshape(*blk.shape[:2], 16)
    sc = blk[..., 4:16].astype(np.int32)  # (groups, nb, 8 rows, 12)
    scale = np.empty(sc.shape[:3] + (8,), np.int32)
    mins = np.empty_like(scale)
    scale[..., :4], mins[..., :4] = sc[..., 0:4] & 63, sc[..., 4:8] & 63
    scale[..., 4:] = ((sc[..., 0:4] & 192) >> 2) | (sc[..., 8:12] & 15)
    mins[..., 4:] = ((sc[..., 4:8] & 192) >> 2) | ((sc[..., 8:12] & 240) >> 4)
    packed = np.empty(sc.shape[:2] + (8, 12), np.int32)  # 8 sub-blocks, each: 8 rows' scale and min
    for j in range(8):
        s, m = scale[..., j], mins[..., j]  # (groups, nb, 8 rows)
        packed[..., j, 0:4] = (s[..., 0:4] & 63) + ((s[..., 4:8] & 48) << 2)
        packed[..., j, 4:8] = (m[..., 0:4] & 63) + ((m[..., 4:8] & 48) << 2)
        packed[..., j, 8:12] = (s[..., 4:8] & 15) + ((m[..., 4:8] & 15) << 4)
    out[..., 32:128] = packed.reshape(*sc.shape[:2], 96).astype(np.uint8)
    qs = blk[..., 16:].reshape(*blk.shape[:3], 16, 8)  # (groups, nb, row, chunk, 8 bytes)
    out[..., 128:] = qs.transpose(0, 1, 3, 2, 4).reshape(*blk.shape[:2], 1024)
    return out.reshape(w.n_out // 8, -1)


def ggml_repacked_q4_K(ggml_cpu, w: QMatrix, x: np.ndarray) -> np.ndarray:
    """llama.cpp's repacked Q4_K product of ``x (n_tok, n_in)``, split as its ``forward_mul_mat``
    splits it: the first ``n_tok - n_tok % 4`` tokens through the gemm (activations quantised four
    rows at a time by ``ggml_quantize_mat_q8_K_4x8``), the rest token by token through the gemv."""
    packed = _repack_q4_K_x8(w)
    args = [ctypes.c_int, P, ctypes.c_size_t, P, P, ctypes.c_int, ctypes.c_int]
    gemv, gemm, quantize4 = (ggml_cpu.ggml_gemv_q4_K_8x8_q8_K, ggml_cpu.ggml_gemm_q4_K_8x8_q8_K,
                             ggml_cpu.ggml_quantize_mat_q8_K_4x8)
    for f in (gemv, gemm):
        f.restype, f.argtypes = None, args
    quantize4.restype, quantize4.argtypes = None, [P, P, ctypes.c_int64]
    out = np.empty((len(x), w.n_out), np.float32)
    n4 = len(x) - len(x) % 4
    for t in range(0, n4, 4):
        x4 = np.ascontiguousarray(x[t:t + 4], dtype=np.float32)
        xb = np.zeros(4 * w.n_in // 256 * SIZEOF_BLOCK_Q8_K, np.uint8)
        quantize4(x4.ctypes.data, xb.ctypes.data, w.n_in)
        gemm(w.n_in, out[t].ctypes.data, w.n_out, packed.ctypes.data, xb.ctypes.data, 4, w.n_out)
    xb = ggml_q8_K(ggml_cpu, x[n4:])
    for t in range(n4, len(x)):
        gemv(w.n_in, out[t].ctypes.data, w.n_out, packed.ctypes.data, xb[t - n4].ctypes.data, 1, w.n_out)
    return out


def _activations(rng, n_tok: int, n_in: int) -> np.ndarray:
    return (rng.standard_normal((n_tok, n_in)) * rng.uniform(0.01, 30, (n_tok, 1))).astype(np.float32)


def _same_bits(ours, ref):
    assert np.array_equal(ours.view(np.int32), ref.view(np.int32)), f"{np.sum(ours != ref)} of {ours.size} differ"


@pytest.mark.parametrize("n_tok", [1, 3, 6])
def test_q6_K_is_ggml_vec_dot_bit_for_bit(n_tok, ggml_cpu):
    rng = np.random.default_rng(20 + n_tok)
    w = random_kquant(GGMLType.Q6_K, 67, 1024, rng)  # odd row count; 4 super-blocks
    x = _activations(rng, n_tok, w.n_in)
    _same_bits(ggml_simd.matmul_simd(w, x), ggml_vec_dot_q6_K(ggml_cpu, w, x))


@pytest.mark.parametrize("n_tok", [1, 7, 8, 9, 16, 21, 40])
def test_q6_K_is_ggml_mul_mat_bit_for_bit(n_tok, llama_cpp, ggml_cpu):
    """The whole ``ggml_mul_mat`` as ggml-cpu runs it: from 8 tokens on (``ggml_tiled_min_batch``) Q6_K
    goes to the tiled matmul, which sums a super-block's integers first and then chains
    ``acc = fma(d_w * float(isum), d_y, acc)`` -- other last bits than ``vec_dot``'s 8-lane FMAs. The
    missing piece behind the Gemma 3 prefill divergence (random ids, 8+ tokens); 21 and 40 tokens:
    a ragged 16-token band, and a batch past the narrow path (more than 16 tokens)."""
    rng = np.random.default_rng(40 + n_tok)
    w = random_kquant(GGMLType.Q6_K, 67, 1024, rng)
    x = _activations(rng, n_tok, w.n_in)
    ref = ggml_graph_mul_mat(llama_cpp, ggml_cpu, w, x)
    _same_bits(ggml_simd.matmul_simd(w, x), ref)
    if n_tok >= ggml_simd.TILED_MIN_TOKENS:  # and the test can tell the two orders apart
        assert not np.array_equal(ref, ggml_vec_dot_q6_K(ggml_cpu, w, x))
    else:
        _same_bits(ref, ggml_vec_dot_q6_K(ggml_cpu, w, x))


@pytest.mark.parametrize("n_tok", [1, 3, 6, 8, 13])  # passes of 8, 4 and 1 tokens
def test_q4_K_is_ggml_repacked_gemv_and_gemm_bit_for_bit(n_tok, ggml_cpu):
    """One token: the gemv's order; groups of four (prefill): the gemm's, which folds the integers
    into the FMA chain per pair of sub-blocks instead of per super-block (different last bits)."""
    rng = np.random.default_rng(30 + n_tok)
    w = random_kquant(GGMLType.Q4_K, 64, 1536, rng)
    x = _activations(rng, n_tok, w.n_in)
    _same_bits(ggml_simd.matmul_simd(w, x), ggml_repacked_q4_K(ggml_cpu, w, x))


@pytest.mark.parametrize("qtype", [GGMLType.Q4_K, GGMLType.Q6_K])
def test_kquant_products_are_matrix_products(qtype):
    """Against float64 arithmetic on the dequantised weights (independent of ggml), incl. extreme
    activations (+-127 after quantisation, -128 never occurs in Q8_K) and a zero token."""
    rng = np.random.default_rng(50)
    w = random_kquant(qtype, 40, 512, rng)
    x = rng.standard_normal((5, 512)).astype(np.float32)
    x[0, :256] = np.where(np.arange(256) % 2 == 0, 1.0, -1.0)
    x[1] = 0.0
    ours = ggml_simd.matmul_simd(w, x)
    exact = x.astype(np.float64) @ w.dequantize().astype(np.float64).T
    assert np.array_equal(ours[1], np.zeros(w.n_out, np.float32))
    assert np.abs(ours - exact).max() <= 2e-2 * np.abs(exact).max()
    assert np.array_equal(ggml_simd.matmul_simd(w, x[4]), ours[4])  # vector input = the one-token remainder


def test_real_gemma_kquant_matrices(gemma_path, ggml_cpu):
    from zigllama_lib.models.loader import load_gguf

    dec = load_gguf(gemma_path, progress=False).decoder
    rng = np.random.default_rng(60)
    q4k = next(lw.wo for lw in dec.layers if lw.wo.qtype == GGMLType.Q4_K)
    q6k = next(lw.w_down for lw in dec.layers if lw.w_down.qtype == GGMLType.Q6_K)
    x = rng.standard_normal((5, q4k.n_in)).astype(np.float32)
    _same_bits(ggml_simd.matmul_simd(q4k, x), ggml_repacked_q4_K(ggml_cpu, q4k, x))
    x = rng.standard_normal((2, q6k.n_in)).astype(np.float32)
    _same_bits(ggml_simd.matmul_simd(q6k, x), ggml_vec_dot_q6_K(ggml_cpu, q6k, x))


@pytest.mark.parametrize("n_tok", [4, 5, 8, 12, 17, 33])
def test_q4_K_repacked_copy_gives_the_row_kernels_bits(n_tok):
    """Prefill runs Q4_K on a copy with eight rows per vector (ggml_repack): other integer sums, the
    same float operations per lane, so the row kernel's bits (the ggml tests above cover both)."""
    rng = np.random.default_rng(70 + n_tok)
    w = random_kquant(GGMLType.Q4_K, 48, 768, rng)
    x = _activations(rng, n_tok, w.n_in)
    planes = ggml_simd.quantize_activations(w.qtype, x)
    rows = ggml_simd.matmul_q8_planes(w, *planes, repacked=False)
    assert w.q4_K_x8 is None
    _same_bits(ggml_simd.matmul_simd(w, x), rows)
    assert w.q4_K_x8 is not None and w.q4_K_x8.shape == (48 // 8, 768 // 256, 1184)


def test_q4_K_repack_refuses_partial_groups():
    from zigllama_lib.linear_algebra.ggml_repack import repack_q4_K_x8

    w = random_kquant(GGMLType.Q4_K, 12, 256, np.random.default_rng(80))
    with pytest.raises(ConfigError, match="multiple of 8 rows"):
        repack_q4_K_x8(w.raw)
    ggml_simd.matmul_simd(w, np.ones((8, 256), np.float32))  # 12 rows: the row kernel, no copy
    assert w.q4_K_x8 is None
