"""Bit-exact mirrors of llama.cpp's x86 AVX2 CPU numerics (``*_ggml`` functions).

Two kinds of evidence:

* kernel level: each function against ggml's own compiled code where the
  shared library exports it (``libggml-cpu.so`` of llama-cpp-python, called
  through ctypes), else against a float64 numpy reference to within rounding;
* model level: SmolLM2 (Q4_1) with the decoder's pieces replaced by these
  functions, against llama.cpp's logits on the same file.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from oracles import ggml_library

from zigllama_lib.foundation.ggml_types import GGMLType
from zigllama_lib.linear_algebra.ggml_exact import fma32, matmul_ggml
from zigllama_lib.linear_algebra.matmul import QMatrix
from zigllama_lib.linear_algebra.q8 import quantize_q8_0, quantize_q8_1


def _ggml_cpu_lib(llama_cpp):
    lib = ggml_library(llama_cpp, "libggml-cpu.so")
    lib.ggml_cpu_init()  # fills the fp16 -> fp32 table the kernels read
    return lib


@pytest.fixture(scope="module")
def ggml_cpu(llama_cpp):
    return _ggml_cpu_lib(llama_cpp)


def _random_qmatrix(qtype: GGMLType, n_out: int, n_in: int, rng) -> QMatrix:
    nb = n_in // 32
    if qtype == GGMLType.Q4_1:
        blk = np.empty((n_out * nb, 20), np.uint8)
        blk[:, 0:2] = (rng.uniform(0.001, 0.05, n_out * nb).astype(np.float16)).view(np.uint8).reshape(-1, 2)
        blk[:, 2:4] = (rng.uniform(-0.4, 0.0, n_out * nb).astype(np.float16)).view(np.uint8).reshape(-1, 2)
        blk[:, 4:] = rng.integers(0, 256, (n_out * nb, 16), dtype=np.uint8)
    else:
        blk = np.empty((n_out * nb, 34), np.uint8)
        blk[:, 0:2] = (rng.uniform(0.0005, 0.01, n_out * nb).astype(np.float16)).view(np.uint8).reshape(-1, 2)
        blk[:, 2:] = rng.integers(-127, 128, (n_out * nb, 32), dtype=np.int8).view(np.uint8)
    return QMatrix(blk.reshape(n_out, -1), qtype, n_in)


def ggml_vec_dot_rows(ggml_cpu, w: QMatrix, x: np.ndarray) -> np.ndarray:
    """llama.cpp's own ``ggml_vec_dot_{q4_1_q8_1,q8_0_q8_0,q5_0_q8_0}`` of every row and token, through ctypes:
    ``(n_tok, n_out)`` float32."""
    if w.qtype == GGMLType.Q4_1:
        f, xb = ggml_cpu.ggml_vec_dot_q4_1_q8_1, quantize_q8_1(x, variant="x86")
    elif w.qtype == GGMLType.Q5_0:
        f, xb = ggml_cpu.ggml_vec_dot_q5_0_q8_0, quantize_q8_0(x, variant="x86")
    else:
        f, xb = ggml_cpu.ggml_vec_dot_q8_0_q8_0, quantize_q8_0(x, variant="x86")
    P = ctypes.c_void_p
    f.restype = None
    f.argtypes = [ctypes.c_int, P, ctypes.c_size_t, P, ctypes.c_size_t, P, ctypes.c_size_t, ctypes.c_int]
    raw = np.ascontiguousarray(w.raw)
    s = np.zeros(1, np.float32)
    out = np.empty((len(x), w.n_out), np.float32)
    for t in range(len(x)):
        xrow = np.ascontiguousarray(xb[t])
        for r in range(w.n_out):
            f(w.n_in, s.ctypes.data, 0, raw[r].ctypes.data, 0, xrow.ctypes.data, 0, 1)
            out[t, r] = s[0]
    return out


@pytest.mark.parametrize("qtype", [GGMLType.Q4_1, GGMLType.Q8_0])
def test_matmul_ggml_is_ggml_vec_dot_bit_for_bit(qtype, ggml_cpu):
    rng = np.random.default_rng(1)
    n_out, n_in, n_tok = 256, 1536, 3
    w = _random_qmatrix(qtype, n_out, n_in, rng)
    x = (rng.standard_normal((n_tok, n_in)) * rng.uniform(0.01, 30, (n_tok, 1))).astype(np.float32)
    ours = matmul_ggml(w, x)
    ref = ggml_vec_dot_rows(ggml_cpu, w, x)
    assert np.array_equal(ours, ref), f"{np.sum(ours != ref)} of {ours.size} outputs differ"
    # and it is a matrix product: close to the float64 one
    exact = x.astype(np.float64) @ w.dequantize().astype(np.float64).T
    assert np.abs(ours - exact).max() <= 2e-2 * np.abs(exact).max()
    # vector input
    assert np.array_equal(matmul_ggml(w, x[1]), ours[1])


def test_fma32_is_correctly_rounded():
    from fractions import Fraction

    rng = np.random.default_rng(2)
    a = rng.standard_normal(4000).astype(np.float32)
    b = rng.standard_normal(4000).astype(np.float32)
    c = (rng.standard_normal(4000) * 10.0 ** rng.integers(-12, 12, 4000)).astype(np.float32)
    # double-rounding traps: c = -a*b rounded, plus tiny offsets
    c[:1000] = (-(a[:1000].astype(np.float64) * b[:1000])).astype(np.float32)
    for i in range(4000):
        exact = Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(float(c[i]))
        want = np.float32(float(exact))  # Fraction -> float64 is correctly rounded ...
        # ... but float64 -> float32 may double-round: pick the float32 nearest to exact, ties to even
        lo, hi = np.nextafter(want, np.float32(-np.inf)), np.nextafter(want, np.float32(np.inf))
        cands = [lo, want, hi]
        dist = [abs(Fraction(float(v)) - exact) for v in cands]
        best = min(dist)
        ok = [v for v, d in zip(cands, dist) if d == best]
        want = ok[0] if len(ok) == 1 else [v for v in ok if (np.float32(v).view(np.int32) & 1) == 0][0]
        assert fma32(a[i], b[i], c[i]) == want, i


# -- element-wise maths (neural_primitives.ggml_math) --------------------------------------
from zigllama_lib.neural_primitives.ggml_math import (expf_ggml, rms_norm_ggml, rope_ggml, silu_ggml,  # noqa: E402
                                                      swiglu_ggml)


def _f32_ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def _edge_inputs(rng, n):
    x = np.concatenate([
        rng.standard_normal(n) * 4,
        rng.uniform(-110, 95, n),                       # over/underflow branches of v_expf
        np.array([0.0, -0.0, 88.3, 88.4, 89.0, -87.0, -87.5, -103.9, -104.0, -150.0, 1e-30, -1e-30]),
    ]).astype(np.float32)
    return x[: len(x) - len(x) % 8 + 3]  # a tail that is not a multiple of 8


def test_expf_ggml_is_ggml_v_expf(ggml_cpu):
    rng = np.random.default_rng(3)
    x = _edge_inputs(rng, 4000)
    ours = expf_ggml(x)
    # ggml_vec_soft_max_f32(n, y, x, max=0) stores v_expf(x - 0) for chunks of 8, libm expf for the tail
    f = ggml_cpu.ggml_vec_soft_max_f32
    f.restype = ctypes.c_double
    f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float]
    y = np.empty_like(x)
    f(len(x), _f32_ptr(y), _f32_ptr(x), 0.0)
    n8 = len(x) - len(x) % 8
    assert np.array_equal(ours[:n8], y[:n8], equal_nan=True), f"{np.sum(ours[:n8] != y[:n8])} differ"
    ref = np.exp(x.astype(np.float64))
    finite = np.isfinite(ref) & (ref > 1e-37) & (ref < 3e38)
    assert np.all(np.abs(ours[finite] - ref[finite]) <= 3e-7 * ref[finite])  # ~2 ulp
    assert np.isinf(expf_ggml(np.float32([89.0, 200.0]))).all() and (expf_ggml(np.float32([-104.5, -300.0])) == 0).all()


@pytest.mark.parametrize("n", [1536, 576 + 5])
def test_swiglu_and_silu_ggml_are_ggml_vec_swiglu(n, ggml_cpu):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3, n)) * 3).astype(np.float32)
    x[0, :12] = [0, -0.0, 20, -20, 88.5, -88.5, 100, -100, 1e-8, -1e-8, 5, -5]
    g = rng.standard_normal((3, n)).astype(np.float32)
    sw = ggml_cpu.ggml_vec_swiglu_f32
    si = ggml_cpu.ggml_vec_silu_f32
    sw.restype = si.restype = None
    sw.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    si.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    ours_sw, ours_si = swiglu_ggml(x, g), silu_ggml(x)
    for r in range(3):
        xr, gr = np.ascontiguousarray(x[r]), np.ascontiguousarray(g[r])
        y = np.empty_like(xr)
        sw(n, _f32_ptr(y), _f32_ptr(xr), _f32_ptr(gr))
        assert np.array_equal(ours_sw[r], y)
        si(n, _f32_ptr(y), _f32_ptr(xr))
        assert np.array_equal(ours_si[r], y)
    x64 = x.astype(np.float64)
    ref = x64 / (1 + np.exp(-x64)) * g
    assert np.abs(ours_sw - ref).max() <= 1e-6 * max(1.0, np.abs(ref).max())


def test_rms_norm_ggml_matches_float64():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((4, 576)) * 3).astype(np.float32)
    w = rng.standard_normal(576).astype(np.float32)
    ours = rms_norm_ggml(x, w, 1e-5)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-5) * w
    assert np.abs(ours - ref).max() <= 1e-6 * np.abs(ref).max()


@pytest.mark.parametrize("mode", ["norm", "neox"])
def test_rope_ggml_matches_float64(mode):
    """rope_ggml against RoPE in float64 written here (angle ``p * base^(-2i/n)``, exact cos/sin),
    to within float32 rounding of ggml's angle cache; bit equality with ggml's own op is
    tests/test_ggml_ops.py.

    ggml builds angle ``i`` as ``p * ts^i`` by ``i`` float32 multiplications with ``ts =
    powf(base, -2/n)`` (itself rounded): a relative error up to ``(2i + 1) 2^-24`` (``i`` from
    ``ts``'s rounding compounded, ``i`` products, one ``float(p)``), i.e. an absolute angle error
    ``theta_i (2i + 1) 2^-24`` -- up to ~1e-4 rad at p = 4095, far above the ~1e-7 of cos/sin and the
    rotation's own roundings (``4 * 2^-24`` relative, two products and an FMA). The bound is that,
    per rotated pair, scaled by the pair's magnitude."""
    rng = np.random.default_rng(6)
    n, base = 64, 100000.0
    x = rng.standard_normal((9, 3, n)).astype(np.float32)
    pos = np.array([0, 1, 2, 5, 17, 100, 511, 1000, 4095])
    ours = rope_ggml(x, pos, n, base, mode).astype(np.float64)
    half = n // 2
    i = np.arange(half)
    theta = pos[:, None].astype(np.float64) * base ** (-2.0 * i / n)  # (n_tok, half)
    a0, a1 = (i, i + half) if mode == "neox" else (2 * i, 2 * i + 1)
    x0, x1 = x[..., a0].astype(np.float64), x[..., a1].astype(np.float64)  # (n_tok, n_head, half)
    c, s = np.cos(theta)[:, None], np.sin(theta)[:, None]
    bound = (theta * (2 * i + 1) * 2.0 ** -24 + 4 * 2.0 ** -24)[:, None] * (np.abs(x0) + np.abs(x1))
    assert np.all(np.abs(ours[..., a0] - (x0 * c - x1 * s)) <= bound)
    assert np.all(np.abs(ours[..., a1] - (x0 * s + x1 * c)) <= bound)
    assert np.array_equal(ours[0], x[0])  # position 0 rotates by nothing


# -- attention (transformer.attention_ggml) ------------------------------------------------
from zigllama_lib.transformer.attention_ggml import _dot_vec_f16, attention_ggml  # noqa: E402


def test_decode_dot_is_ggml_vec_dot_f16(ggml_cpu):
    rng = np.random.default_rng(7)
    f = ggml_cpu.ggml_vec_dot_f16
    f.restype = None
    P = ctypes.c_void_p
    f.argtypes = [ctypes.c_int, P, ctypes.c_size_t, P, ctypes.c_size_t, P, ctypes.c_size_t, ctypes.c_int]
    s = np.zeros(1, np.float32)
    for n in (64, 256, 512, 64 + 7):
        for _ in range(50):
            a = (rng.standard_normal(n) * 3).astype(np.float16)
            b = rng.uniform(0, 1, n).astype(np.float16)
            f(n, s.ctypes.data, 0, a.ctypes.data, 0, b.ctypes.data, 0, 1)
            assert _dot_vec_f16(a.astype(np.float32), b.astype(np.float32), n) == s[0], n


@pytest.mark.parametrize("n_past,n_tok", [(0, 5), (0, 1), (7, 1), (250, 9)])
def test_attention_ggml_matches_float64(n_past, n_tok):
    rng = np.random.default_rng(8)
    n_head, n_kv_head, d = 9, 3, 64
    n_kv = n_past + n_tok
    q = rng.standard_normal((n_tok, n_head, d)).astype(np.float32) * 2
    k = rng.standard_normal((n_kv + 3, n_kv_head, d)).astype(np.float16)
    v = rng.standard_normal((n_kv + 3, n_kv_head, d)).astype(np.float16)
    ours = attention_ggml(q, k, v, n_past, 0.125).reshape(n_tok, n_head, d)
    q64 = q.astype(np.float16).astype(np.float64)
    k64, v64 = k[:n_kv].astype(np.float64), v[:n_kv].astype(np.float64)
    for h in range(n_head):
        kv = h // 3
        s = q64[:, h] @ k64[:, kv].T * 0.125
        s[np.arange(n_kv)[None, :] > n_past + np.arange(n_tok)[:, None]] = -np.inf
        p = np.exp(s - s.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        ref = p @ v64[:, kv]
        assert np.abs(ours[:, h] - ref).max() <= 2e-3 * max(1.0, np.abs(ref).max())


# -- end to end: SmolLM2 Q4_1 against llama.cpp ------------------------------------------------
class GgmlForward:
    """A llama-architecture forward pass built only from the ``*_ggml`` functions, on a Decoder's
    weights (kept here so the test does not depend on how the decoder wires its numerics)."""

    def __init__(self, dec, n_ctx=256):
        self.dec, self.s = dec, dec.spec
        s = self.s
        self.k = np.zeros((s.n_layer, n_ctx, s.n_kv_head, s.head_dim_k), np.float16)
        self.v = np.zeros((s.n_layer, n_ctx, s.n_kv_head, s.head_dim_v), np.float16)
        self.n_past = 0

    def __call__(self, ids):
        dec, s = self.dec, self.s
        n = len(ids)
        h = dec.embed(np.asarray(ids))
        pos = np.arange(self.n_past, self.n_past + n)
        for i, lw in enumerate(dec.layers):
            x = rms_norm_ggml(h, lw.attn_norm, s.norm_eps)
            q = matmul_ggml(lw.wq, x).reshape(n, s.n_head, -1)
            k = matmul_ggml(lw.wk, x).reshape(n, s.n_kv_head, -1)
            v = matmul_ggml(lw.wv, x).reshape(n, s.n_kv_head, -1)
            base = s.rope_base_for(i)
            q = rope_ggml(q, pos, s.rope_dims, base, s.traits.rope_mode, s.rope_freq_scale)
            k = rope_ggml(k, pos, s.rope_dims, base, s.traits.rope_mode, s.rope_freq_scale)
            self.k[i, pos], self.v[i, pos] = k, v  # float32 -> float16, nearest even (ggml's SET_ROWS)
            a = attention_ggml(q, self.k[i], self.v[i], self.n_past, s.attn_scale)
            h = h + matmul_ggml(lw.wo, a)
            x = rms_norm_ggml(h, lw.ffn_norm, s.norm_eps)
            h = h + matmul_ggml(lw.w_down, swiglu_ggml(matmul_ggml(lw.w_gate, x), matmul_ggml(lw.w_up, x)))
        self.n_past += n
        return matmul_ggml(dec.output, rms_norm_ggml(h, dec.output_norm, s.norm_eps))


E2E_PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "Q: What is 12 times 12?\nA:",
]


@pytest.fixture(scope="module")
def smollm_q41(smollm_path):
    import zigllama_lib as zl

    model = zl.load(smollm_path, n_ctx=256, progress=False)
    dec = getattr(model, "decoder", None) or model._decoder
    if dec.spec.arch != "llama":
        pytest.skip("the end-to-end check is written for the llama architecture")
    return dec


@pytest.mark.parametrize("prompt", E2E_PROMPTS)
def test_logits_are_llama_cpp_bit_for_bit(prompt, smollm_q41, llama_cpp, smollm_path):
    llm = llama_cpp.Llama(model_path=str(smollm_path), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    try:
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
        llm.eval(ids)
        ref = np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()
    ours = GgmlForward(smollm_q41)(ids)
    per_pos = np.abs(ours - ref).max(axis=1)
    print(f"\n{prompt!r}: max |ours - llama.cpp| per position:", " ".join(f"{d:.3g}" for d in per_pos))
    assert per_pos.max() == 0.0, per_pos


def test_greedy_32_tokens_are_llama_cpp_s(smollm_q41, llama_cpp, smollm_path):
    prompt = E2E_PROMPTS[0]
    llm = llama_cpp.Llama(model_path=str(smollm_path), n_ctx=256, verbose=False, n_threads=2)
    try:
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
        llm.eval(ids)
        ref, ref_logits = [], []
        for _ in range(32):
            lg = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()
            tok = int(lg.argmax())
            ref.append(tok)
            ref_logits.append(lg)
            llm.eval([tok])
    finally:
        llm.close()
    fwd = GgmlForward(smollm_q41)
    lg = fwd(ids)[-1]
    ours = []
    for step in range(32):
        assert np.array_equal(lg, ref_logits[step]), f"decode step {step}: max diff {np.abs(lg - ref_logits[step]).max()}"
        tok = int(lg.argmax())
        ours.append(tok)
        lg = fwd([tok])[-1]
    assert ours == ref


def test_fma32_double_rounding_trap():
    # a*b = 1 + 2^-11 + 2^-24 is a float32 midpoint; c = 2^-60 is below its float64 ulp, so
    # float64(a*b + c) rounds back onto the midpoint and float32() would round to even (down)
    a = b = np.float32(1 + 2.0 ** -12)
    assert fma32(a, b, np.float32(2.0 ** -60)) == np.float32(1 + 2.0 ** -11 + 2.0 ** -23)
    assert fma32(a, b, np.float32(-(2.0 ** -60))) == np.float32(1 + 2.0 ** -11)
    assert fma32(-a, b, np.float32(-(2.0 ** -60))) == np.float32(-(1 + 2.0 ** -11 + 2.0 ** -23))
    # a*b = 1 + 2^-11 + 3*2^-24 is the midpoint above an odd float32: ties-to-even rounds up
    c = np.float32(1 + 2.0 ** -11 + 2.0 ** -23)
    assert fma32(np.float32(1.0), c, np.float32(2.0 ** -24)) == np.float32(1 + 2.0 ** -11 + 2.0 ** -22)


def test_gelu_table_is_ggml_table_gelu_f16(ggml_cpu):
    """Our float16 GELU table against the one ggml fills at ggml_cpu_init (an exported symbol)."""
    from zigllama_lib.neural_primitives.ggml_math import GELU_F16

    theirs = np.frombuffer((ctypes.c_uint16 * 65536).in_dll(ggml_cpu, "ggml_table_gelu_f16"), np.uint16)
    finite = np.isfinite(np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16))
    assert np.array_equal(GELU_F16[finite], theirs[finite])


def test_geglu_ggml_by_hand():
    """The three branches of ggml_vec_geglu_f32, and the tanh GELU to float16 accuracy."""
    from zigllama_lib.neural_primitives.activations import gelu_tanh
    from zigllama_lib.neural_primitives.ggml_math import geglu_ggml

    x = np.array([-12.0, -10.0, 10.0, 11.5, 0.0, 1.0, -2.5], np.float32)
    g = np.array([3.0, 3.0, 2.0, -1.0, 5.0, 2.0, 1.0], np.float32)
    y = geglu_ggml(x, g)
    assert y[0] == 0 and y[1] == 0 and y[2] == 20.0 and y[3] == -11.5 and y[4] == 0
    ref = gelu_tanh(x[5:].astype(np.float64)) * g[5:]
    assert np.allclose(y[5:], ref, rtol=1e-3)
    x = np.random.default_rng(0).standard_normal(5000).astype(np.float32) * 4
    assert np.allclose(geglu_ggml(x, np.ones_like(x)), gelu_tanh(x.astype(np.float64)), rtol=2e-3, atol=1e-4)
