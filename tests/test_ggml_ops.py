"""Our ``*_ggml`` mirrors against ggml's own ops, bit for bit (tests/ggml_graph.py runs the op).

tests/test_ggml_exact.py checks single ggml kernels (vec_dot, v_expf, swiglu) through ctypes; here
the op level: ggml's RoPE, RMSNorm and softmax computed by ggml-cpu on a one-op graph, the graph
llama.cpp builds for attention without flash attention, and the CPU activation quantisers that
feed the vec_dot oracles. Any per-machine drift (numpy's float32 SIMD kernels, a libm) shows up
here as a changed bit rather than as a tolerance miss.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import ggml_graph as G

from zigllama_lib.foundation.libm import expf as libm_expf
from zigllama_lib.linear_algebra.ggml_exact import hsum8
from zigllama_lib.linear_algebra import q8_simd
from zigllama_lib.linear_algebra.q8 import (quantize_q8_0, quantize_q8_1, quantize_q8_32_planes, quantize_q8_K,
                                            quantize_q8_K_planes)
from zigllama_lib.neural_primitives.ggml_math import expf_ggml, rms_norm_ggml, rope_ggml
from zigllama_lib.transformer.attention_ggml import KV_PAD, attention_ggml


@pytest.fixture(scope="module", autouse=True)
def _ggml():
    G.libs()  # the oracle: fails under CI, skips elsewhere when llama-cpp-python is missing


def _same_bits(ours: np.ndarray, ref: np.ndarray, what: str = ""):
    assert ours.shape == ref.shape and ours.dtype == ref.dtype, (ours.shape, ref.shape, ours.dtype, ref.dtype)
    o, r = ours.view(np.uint32), ref.view(np.uint32)
    bad = np.flatnonzero(o != r)
    assert bad.size == 0, (f"{what}: {bad.size} of {o.size} differ, first at {bad[:5]}: "
                           f"ours {ours.flat[bad[0]]!r} ggml {ref.flat[bad[0]]!r}")


# -- RoPE: rope_ggml vs ggml_rope_ext -----------------------------------------------------------
POSITIONS = np.array([0, 1, 2, 7, 100, 511, 4095, 30000])  # 30000: large angles (cosf/sinf reduction)


@pytest.mark.parametrize("freq_scale", [1.0, 0.25])
@pytest.mark.parametrize("head_dim,n_rot", [(64, 64), (64, 32), (128, 128), (80, 48)])
@pytest.mark.parametrize("base", [10000.0, 100000.0, 1000000.0])
@pytest.mark.parametrize("mode", ["norm", "neox"])
def test_rope_is_ggml_rope_ext(mode, base, head_dim, n_rot, freq_scale):
    """x (n_tok, n_head, head_dim) = ggml [head_dim, n_head, n_tok]; ext_factor 0, attn_factor 1,
    no freq factors (what llama.cpp passes for llama / qwen / gemma); n_rot < head_dim leaves the
    tail channels as they are."""
    rng = np.random.default_rng(hash((mode, base, head_dim, n_rot, freq_scale)) % 2**32)
    x = (rng.standard_normal((len(POSITIONS), 3, head_dim)) * 4).astype(np.float32)
    x[1, 0, :4] = [0.0, -0.0, 1e30, -1e-30]
    ref = G.rope_ext(x, POSITIONS, n_rot, {"norm": G.GGML_ROPE_TYPE_NORM, "neox": G.GGML_ROPE_TYPE_NEOX}[mode],
                     base, freq_scale)
    _same_bits(rope_ggml(x, POSITIONS, n_rot, base, mode, freq_scale), ref, f"rope {mode}")


# -- RMSNorm: rms_norm_ggml vs ggml_rms_norm (and ggml_mul by the weight) -------------------------
def _norm_rows(rng, n):
    x = (rng.standard_normal((6, n)) * rng.uniform(1e-3, 50, (6, 1))).astype(np.float32)
    x[1] = 0.0                                              # all zero: scale = 1/sqrt(eps)
    x[2, ::7] = 3e4                                         # a few huge activations (massive-activation rows)
    x[3] = (rng.standard_normal(n) * 1e-25).astype(np.float32)  # squares underflow in float32
    x[4] = (rng.standard_normal(n) * 1e18).astype(np.float32)   # sum overflows the float mean: scale 0
    x[5, 0] = 1e-38                                         # a subnormal-adjacent value among normal ones
    return x


@pytest.mark.parametrize("n", [64, 576, 640, 1536, 77])
def test_rms_norm_is_ggml_rms_norm(n):
    rng = np.random.default_rng(n)
    x = _norm_rows(rng, n)
    w = rng.standard_normal(n).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the overflowing row
        _same_bits(rms_norm_ggml(x, None, 1e-5), G.rms_norm(x, 1e-5), "rms_norm")
        _same_bits(rms_norm_ggml(x, w, 1e-6), G.rms_norm(x, 1e-6, w), "rms_norm * w")


# -- softmax: the attention kernel's softmax vs ggml_soft_max_ext ---------------------------------
def soft_max_mirror(a: np.ndarray, mask: np.ndarray | None, scale: float) -> np.ndarray:
    """The softmax of ``attention_ggml._attention_kernel`` (which inlines it) for any row length,
    built from the same library pieces: ``w = a * scale + mask`` (float32), ``max``, then
    ``ggml_vec_soft_max_f32``: chunks of 8 through ``expf_ggml`` (ggml_v_expf) with their float
    ``hsum8`` added to a double sum, the last ``n % 8`` through libm ``expf`` (the kernel never has
    such a tail: its rows are padded to 256), then ``e * (float)(1.0 / sum)``.
    ``a (n_head, n_rows, n)``, ``mask (n_rows, n)``."""
    scale = np.float32(scale)
    out = np.empty_like(a)
    n = a.shape[-1]
    n8 = n - n % 8
    for h in range(a.shape[0]):
        for r in range(a.shape[1]):
            w = a[h, r] * scale
            if mask is not None:
                w = w + mask[r].astype(np.float32)
            mx = np.float32(-np.inf)
            for v in w:
                mx = max(mx, v)
            e = np.empty(n, np.float32)
            e[:n8] = expf_ggml(w[:n8] - mx)
            total = 0.0
            for c in range(0, n8, 8):
                total += float(hsum8(*e[c:c + 8]))
            for i in range(n8, n):
                e[i] = libm_expf(w[i] - mx)
                total += float(e[i])
            out[h, r] = e * np.float32(1.0 / total)
    return out


def _causal_mask(n_rows: int, n: int, n_past: int, dtype) -> np.ndarray:
    m = np.zeros((n_rows, n), dtype)
    m[np.arange(n)[None, :] > n_past + np.arange(n_rows)[:, None]] = -np.inf
    return m


@pytest.mark.parametrize("mask_type", [np.float32, np.float16])
def test_soft_max_is_ggml_soft_max_ext(mask_type):
    """Rows of every length 1..300 (n % 8 tails and full chunks), 2 heads, a causal mask with -inf
    entries. llama.cpp 0.3.36 builds an F32 mask when flash attention is off (llama-graph.cpp,
    ``build_attn_inp_kv``) and F16 with it; ggml's soft_max takes both, so both are checked."""
    rng = np.random.default_rng(11)
    scale = 1 / math.sqrt(64)
    for n in range(1, 301):
        n_rows = min(n, 3)
        a = (rng.standard_normal((2, n_rows, n)) * rng.uniform(0.5, 40)).astype(np.float32)
        mask = _causal_mask(n_rows, n, n - n_rows, mask_type)
        _same_bits(soft_max_mirror(a, mask, scale), G.soft_max_ext(a, mask, scale), f"soft_max n={n}")
    a = (rng.standard_normal((1, 4, 37)) * 200).astype(np.float32)  # no mask, big logits
    _same_bits(soft_max_mirror(a, None, 0.3), G.soft_max_ext(a, None, 0.3), "soft_max, no mask")


# -- the attention glue: attention_ggml vs build_attn_mha's graph ---------------------------------
@pytest.mark.parametrize("n_past,n_tok,window", [(0, 1, None), (0, 5, None), (7, 1, None), (3, 5, None),
                                                 (250, 9, None), (0, 40, 13), (20, 30, 8), (250, 9, 100)])
def test_attention_is_llama_cpp_non_flash_graph(n_past, n_tok, window):
    """llama-cpp-python 0.3.36 runs WITHOUT flash attention: ``Llama(flash_attn=False)`` is the
    default and sets ``LLAMA_FLASH_ATTN_TYPE_DISABLED`` (llama.cpp's own ``AUTO`` default is not
    used). So the graph is build_attn_mha's non-flash branch: ``kq = mul_mat(K, Q)``,
    ``soft_max_ext(kq, mask F32, scale, 0)``, ``kqv = mul_mat(V^T, kq)``, permute, cont -- over
    ``n_kv`` cells padded to 256 (zero K/V, masked), an F16 cache, 2 KV heads, GQA group 3.
    Decode (n_tok 1) takes ggml_vec_dot_f16, prefill tinyBLAS: both are exercised. ``window``:
    llama.cpp's standard sliding-window mask (query at ``p`` sees keys ``p - window + 1 .. p``) as
    Gemma 3's local layers use it, windows not a multiple of the softmax's 8-cell chunks included."""
    rng = np.random.default_rng(100 + n_past + n_tok)
    n_kv_head, group, d = 2, 3, 64
    n_head, n_kv = n_kv_head * group, n_past + n_tok
    n_cols = -(-n_kv // KV_PAD) * KV_PAD
    q = (rng.standard_normal((n_tok, n_head, d)) * 2).astype(np.float32)
    k = np.zeros((n_cols, n_kv_head, d), np.float16)
    v = np.zeros((n_cols, n_kv_head, d), np.float16)
    k[:n_kv] = rng.standard_normal((n_kv, n_kv_head, d)) * 1.5
    v[:n_kv] = rng.standard_normal((n_kv, n_kv_head, d))
    scale = np.float32(1 / math.sqrt(d))
    ours = attention_ggml(q, k, v, n_past, scale, window=window)  # (n_tok, n_head * d)
    vt = np.ascontiguousarray(v.transpose(1, 2, 0))  # (n_kv_head, d, n_cols): llama.cpp's transposed V
    mask = _causal_mask(n_tok, n_cols, n_past, np.float32)
    if window is not None:
        mask[np.arange(n_cols)[None, :] <= n_past + np.arange(n_tok)[:, None] - window] = -np.inf
    ref = G.attention_no_flash(q, k, vt, mask, float(scale))
    _same_bits(ours, ref, f"attention n_past={n_past} n_tok={n_tok} window={window}")


# -- activation quantisers: ours vs ggml-cpu's quantize_row_q8_0 / _q8_1 / _q8_K -------------------
def _quant_inputs(n: int, seed: int) -> dict[str, np.ndarray]:
    """(rows, n) float32 inputs, n a multiple of 256."""
    rng = np.random.default_rng(seed)
    ties = np.tile((np.arange(n) % 254 - 127 + 0.5).astype(np.float32), (3, 1))
    ties[:, ::32] = 127.0          # amax = 127: id = 1, so every x.5 is an exact tie after scaling
    ties[1] *= -1                  # Q8_K: vmax = -127, iscale = +1
    ties[2] *= 2                   # amax = 254: id = 0.5, odd integers tie
    one = np.zeros((2, n), np.float32)
    one[0, 5::32] = 3.0            # one non-zero value per 32-block
    one[1, 17::256] = -0.7         # one per 256-block (the other 32-blocks all zero)
    signs = rng.standard_normal((2, n)).astype(np.float32)
    signs[0, 7::32], signs[0, 20::32] = -5.0, 5.0  # |x| = 5 twice per block, the first negative
    signs[1, 7::32], signs[1, 20::32] = 5.0, -5.0  # the first positive: Q8_K's vmax is the first
    return {
        "random": (rng.standard_normal((4, n)) * rng.uniform(0.01, 30, (4, 1))).astype(np.float32),
        "zeros": np.zeros((2, n), np.float32),
        "ties": ties,
        "huge": (rng.standard_normal((2, n)) * np.float32([[1e7], [1e37]])).astype(np.float32),  # f16(d) = inf
        "tiny": (rng.standard_normal((2, n)) * 1e-30).astype(np.float32),
        "subnormal": (rng.standard_normal((2, n)) * 1e-40).astype(np.float32),  # 127 / amax = inf
        "one_per_block": one,
        "opposite_sign_maxima": signs,
    }


QUANT_CASES = list(_quant_inputs(256, 0))


@pytest.mark.parametrize("case", QUANT_CASES)
def test_q8_quantisers_are_ggml_cpu_bytes(case):
    """Block bytes of ``quantize_q8_0 / _1(variant="x86")`` and ``quantize_q8_K`` against what the
    AVX2 build's ``quantize_row_q8_0 / _1`` and ``quantize_row_q8_K`` (= ``_ref`` on x86) write."""
    x = _quant_inputs(768, 1)[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert np.array_equal(quantize_q8_0(x, variant="x86"), G.quantize_row("q8_0", x)), case
        assert np.array_equal(quantize_q8_1(x, variant="x86"), G.quantize_row("q8_1", x)), case
        assert np.array_equal(quantize_q8_K(x), G.quantize_row("q8_K", x)), case


# 127/amax = inf (amax < 127/FLT_MAX): _mm256_cvtps_epi32 turns inf/nan into INT_MIN, packed to -128, and
# Q8_1's int32 sum wraps to 0. The vector quantiser (q8_simd, on every AVX2 CPU) does the same; only the
# portable Numba fallback gives 0 there (f16(d) = 0 makes every product 0 either way).
INF_SCALE = pytest.mark.xfail(not q8_simd.AVAILABLE, strict=True, raises=AssertionError,
                              reason="the portable fallback quantiser gives 0 where ggml's cvtps2dq gives -128")
Q8_32_CASES = [pytest.param(c, marks=INF_SCALE) if c == "subnormal" else c for c in QUANT_CASES]


@pytest.mark.parametrize("case", Q8_32_CASES)
def test_q8_32_planes_are_ggml_cpu_values(case):
    """The Numba quantiser the Q8_0 / Q8_1 matmul kernels run (``quantize_q8_32_planes``) holds
    the values of ggml's block bytes: quants, f16(d), f16(d * sum q)."""
    x = _quant_inputs(768, 2)[case]
    for kind, with_sum in (("q8_0", False), ("q8_1", True)):
        ref = G.quantize_row(kind, x).reshape(len(x), -1, 34 if kind == "q8_0" else 36)
        planes = quantize_q8_32_planes(x, with_sum, variant="x86")
        assert np.array_equal(planes[0].reshape(len(x), -1, 32), ref[..., -32:].view(np.int8)), kind
        _same_bits(planes[1], ref[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32), kind + " d")
        if with_sum:
            _same_bits(planes[2], ref[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32), "q8_1 s")


@pytest.mark.parametrize("case", QUANT_CASES)
def test_q8_K_planes_are_ggml_cpu_values(case):
    """The Numba Q8_K quantiser of the K-quant kernels (``quantize_q8_K_planes``): quants, d, bsums."""
    x = _quant_inputs(768, 2)[case]
    ref = G.quantize_row("q8_K", x).reshape(len(x), -1, 292)
    xq, xd, bsums = quantize_q8_K_planes(x)
    assert np.array_equal(xq.reshape(len(x), -1, 256), ref[..., 4:260].view(np.int8))
    assert np.array_equal(xd.view(np.uint32), ref[..., 0:4].copy().view(np.uint32)[..., 0])
    assert np.array_equal(bsums.reshape(len(x), -1, 16), ref[..., 260:].copy().view(np.int16).astype(np.int32))


def _q8_Kx4_from_rows(q8k: np.ndarray) -> np.ndarray:
    """Four rows of block_q8_K bytes ``(4, nb*292)`` -> ggml's block_q8_Kx4 bytes ``(nb*1168)``:
    ``d[4]``, ``qs[1024]`` with ``qs[32j + 8r + l] = q_r[8j + l]``, ``bsums[64]`` accumulated at
    ggml_quantize_mat_q8_K_4x8_generic's index ``((j&31)>>3<<2) + ((j>>8)<<4) + ((j>>6)&3)``."""
    nb = q8k.shape[1] // 292
    blk = q8k.reshape(4, nb, 292)
    out = np.zeros((nb, 1168), np.uint8)
    j = np.arange(1024)
    row, src = (j % 32) // 8, (j // 32) * 8 + j % 8
    index = (((j & 31) >> 3) << 2) + ((j >> 8) << 4) + ((j >> 6) & 3)
    for b in range(nb):
        out[b, 0:16] = blk[:, b, 0:4].reshape(-1)
        qs = blk[:, b, 4:260].view(np.int8)[row, src]
        out[b, 16:1040] = qs.view(np.uint8)
        bs = np.zeros(64, np.int64)
        np.add.at(bs, index, qs.astype(np.int64))
        out[b, 1040:] = bs.astype("<i2").view(np.uint8)
    return out.reshape(-1)


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "iscale = inf: the AVX2 4x8 code's cvtps_epi32 gives INT_MIN -> -128 (bsums -2048), the row "
    "quantiser's nearest_int gives 0; d = +-0 makes the gemm's products 0 either way")))
    if c == "subnormal" else c for c in QUANT_CASES
    if c != "opposite_sign_maxima"])  # the AVX2 4x8 code's sign rule there: the +-amax test below
def test_q8_K_4x8_is_ggml_quantize_mat(case):
    """Q4_K prefills quantise four tokens at a time with ``ggml_quantize_mat_q8_K_4x8`` (AVX2); our
    matmul uses the row quantiser's values (``quantize_q8_K``). Same bytes once interleaved --
    except that the AVX2 code picks the sign of the scale from "is +amax present" where the
    reference takes the first value of largest magnitude (see the +-amax test below)."""
    x = _quant_inputs(512, 3)[case]
    x = np.concatenate([x, x[::-1] * np.float32(0.5), x])[:4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert np.array_equal(_q8_Kx4_from_rows(quantize_q8_K(x)), G.quantize_mat_q8_K_4x8(x)), case


def test_q8_K_4x8_sign_when_plus_and_minus_amax_tie():
    """A block holding -amax before +amax: the reference (and ours) scale by -127/(-amax), the AVX2
    4x8 quantiser by -127/(+amax). Every quant, d and bsum flips sign, so the integer dot products
    times d -- and hence the gemm's floats -- are the same (negation is exact); only the bytes differ."""
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (4, 256)).astype(np.float32)
    x[:, 10], x[:, 200] = -2.0, 2.0
    ours, ref = _q8_Kx4_from_rows(quantize_q8_K(x)), G.quantize_mat_q8_K_4x8(x)
    d_ours, d_ref = ours[:16].view(np.float32), ref[:16].view(np.float32)
    assert np.array_equal(d_ours, -d_ref)
    assert np.array_equal(ours[16:1040].view(np.int8), -ref[16:1040].view(np.int8))
    assert np.array_equal(ours[1040:].view(np.int16), -ref[1040:].view(np.int16))
