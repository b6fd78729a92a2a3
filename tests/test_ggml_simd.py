"""The SIMD fast path (linear_algebra.ggml_simd, ggml_exact.fma_f32) against ggml's own compiled
kernels and against the scalar reference it replaces."""

from __future__ import annotations


import numpy as np
import pytest

from zigllama_lib.foundation.errors import ConfigError
from zigllama_lib.foundation.ggml_types import GGMLType
from zigllama_lib.linear_algebra import ggml_simd
from zigllama_lib.linear_algebra.ggml_exact import fma32, fma_f32_array, matmul_ggml
from zigllama_lib.linear_algebra.matmul import QMatrix

from test_ggml_exact import _random_qmatrix, ggml_cpu, ggml_vec_dot_rows  # noqa: F401  (ggml_cpu: a fixture)


def _random_q5_0(n_out: int, n_in: int, rng) -> QMatrix:
    nb = n_in // 32
    blk = np.empty((n_out * nb, 22), np.uint8)
    blk[:, 0:2] = (rng.uniform(0.001, 0.05, n_out * nb).astype(np.float16)).view(np.uint8).reshape(-1, 2)
    blk[:, 2:] = rng.integers(0, 256, (n_out * nb, 20), dtype=np.uint8)  # qh (32 high bits), qs
    return QMatrix(blk.reshape(n_out, -1), GGMLType.Q5_0, n_in)


@pytest.mark.parametrize("qtype", [GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.Q5_0])
@pytest.mark.parametrize("n_tok", [1, 3, 6, 13])  # 13: a pass of eight tokens, one of four, one single
def test_matmul_simd_is_ggml_bit_for_bit(qtype, n_tok, ggml_cpu):
    rng = np.random.default_rng(10 + n_tok)
    if qtype == GGMLType.Q5_0:
        w = _random_q5_0(201, 1504, rng)  # 47 blocks: groups of four and a tail of three
    else:
        w = _random_qmatrix(qtype, 201, 1504, rng)  # 201 rows; 47 blocks: groups of four and a tail
    x = (rng.standard_normal((n_tok, w.n_in)) * rng.uniform(0.01, 30, (n_tok, 1))).astype(np.float32)
    ours = ggml_simd.matmul_simd(w, x)
    ref = ggml_vec_dot_rows(ggml_cpu, w, x)
    assert np.array_equal(ours.view(np.int32), ref.view(np.int32)), f"{np.sum(ours != ref)} of {ours.size} differ"


@pytest.mark.parametrize("qtype", [GGMLType.Q4_1, GGMLType.Q8_0])
def test_matmul_simd_equals_the_scalar_reference(qtype):
    """Extreme operands: all-15 nibbles / int8 -127 and 127 weights against +-127 activations
    (the largest int16 pair sums pmaddubsw can meet), zero rows, a prefill-sized batch."""
    rng = np.random.default_rng(3)
    w = _random_qmatrix(qtype, 96, 576, rng)
    raw = np.array(w.raw)
    if qtype == GGMLType.Q4_1:
        raw[0, 4:20] = 0xFF  # first block of row 0: all nibbles 15
    else:
        raw[0, 2:34] = np.array([-127, 127] * 16, np.int8).view(np.uint8)
        raw[1, 2:34] = np.array([-128] * 32, np.int8).view(np.uint8)  # -128 is legal in a file
    raw[2] = 0
    w = QMatrix(raw, qtype, 576)
    x = rng.standard_normal((40, 576)).astype(np.float32)
    x[0, :32] = np.where(np.arange(32) % 2 == 0, 1.0, -1.0)  # quantises to +-127
    x[1] = 0.0
    ours, ref = ggml_simd.matmul_simd(w, x), matmul_ggml(w, x)
    assert np.array_equal(ours.view(np.int32), ref.view(np.int32))
    assert np.array_equal(ggml_simd.matmul_simd(w, x[5]), ours[5])  # vector input, serial kernel
    # and it is a matrix product
    exact = x.astype(np.float64) @ w.dequantize().astype(np.float64).T
    assert np.abs(ours - exact).max() <= 2e-2 * np.abs(exact).max()


def test_matmul_simd_on_the_real_model_is_the_reference(smollm_path):
    from zigllama_lib.foundation.gguf import GGUFFile
    from zigllama_lib.models.loader import load_gguf

    dec = load_gguf(smollm_path, progress=False).decoder
    assert isinstance(dec.gguf, GGUFFile)
    rng = np.random.default_rng(4)
    for w in (dec.layers[5].w_down, dec.layers[5].wk, dec.output):
        x = rng.standard_normal((2, w.n_in)).astype(np.float32)
        assert np.array_equal(ggml_simd.matmul_simd(w, x).view(np.int32), matmul_ggml(w, x).view(np.int32))


def test_matmul_simd_rejects_what_it_cannot_do():
    rng = np.random.default_rng(5)
    w = _random_qmatrix(GGMLType.Q4_1, 8, 64, rng)
    with pytest.raises(ConfigError, match="shape"):
        ggml_simd.matmul_simd(w, np.zeros(63, np.float32))
    with pytest.raises(ConfigError, match="QMatrix"):
        ggml_simd.matmul_simd(np.zeros((8, 64)), np.zeros(64, np.float32))
    q4_0 = QMatrix(np.zeros((8, 2 * 18), np.uint8), GGMLType.Q4_0, 64)
    with pytest.raises(ConfigError, match="Q4_0"):
        ggml_simd.matmul_simd(q4_0, np.zeros(64, np.float32))


def test_q5_0_simd_is_a_matrix_product_of_the_dequantised_weights():
    rng = np.random.default_rng(12)
    w = _random_q5_0(64, 256, rng)
    x = rng.standard_normal((5, 256)).astype(np.float32)
    exact = x.astype(np.float64) @ w.dequantize().astype(np.float64).T
    assert np.abs(ggml_simd.matmul_simd(w, x) - exact).max() <= 2e-2 * np.abs(exact).max()


def test_hardware_fma_is_the_software_fma():
    rng = np.random.default_rng(6)
    n = 200_000
    a = rng.standard_normal(n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    c = (rng.standard_normal(n) * 10.0 ** rng.integers(-12, 12, n)).astype(np.float32)
    c[: n // 2] = (-(a[: n // 2].astype(np.float64) * b[: n // 2])).astype(np.float32)  # cancellation
    hw = np.empty(n, np.float32)
    fma_f32_array(a, b, c, hw)
    sw = np.array([fma32(a[i], b[i], c[i]) for i in range(0, n, 7)], np.float32)
    assert np.array_equal(hw[::7].view(np.int32), sw.view(np.int32))
    # the double-rounding trap of test_ggml_exact: a*b = 1 + 2^-11 + 2^-24 (a float32 midpoint) + 2^-60
    a1 = np.full(1, 1 + 2.0 ** -12, np.float32)
    one = np.empty(1, np.float32)
    fma_f32_array(a1, a1, np.full(1, 2.0 ** -60, np.float32), one)
    assert one[0] == np.float32(1 + 2.0 ** -11 + 2.0 ** -23)


@pytest.mark.parametrize("n", [8, 64, 256, 2048, 64 + 8])
def test_attention_dots_in_simd_are_the_scalar_references(n):
    from numba import njit

    from zigllama_lib.transformer.attention_ggml import (_dot_tinyblas, _dot_tinyblas_simd, _dot_vec_f16,
                                                         _dot_vec_f16_simd)

    @njit
    def both(a, b, n, out):
        out[0] = _dot_tinyblas(a, b, n)
        out[1] = _dot_tinyblas_simd(a, b, n)
        out[2] = _dot_vec_f16(a, b, n)
        out[3] = _dot_vec_f16_simd(a, b, n)

    rng = np.random.default_rng(n)
    for _ in range(50):
        a = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3)).astype(np.float16).astype(np.float32)
        b = rng.uniform(0, 1, n).astype(np.float16).astype(np.float32)
        out = np.empty(4, np.float32)
        both(a, b, n, out)
        assert out[0].view(np.int32) == out[1].view(np.int32)
        assert out[2].view(np.int32) == out[3].view(np.int32)


@pytest.mark.parametrize("n_rows", [1, 7, 8, 17])
def test_side_by_side_dots_are_one_row_dots(n_rows):
    """attention_ggml's prefill runs eight tinyBLAS dots at once (``dot_f32_lanes8_rows``); each must
    be the one-row dot's bits, rows strided as the KV cache's heads are."""
    from numba import njit

    from zigllama_lib.transformer.attention_ggml import _dot_tinyblas, _dots_tinyblas

    @njit
    def both(a, b, n, out):
        for r in range(a.shape[0]):
            out[0, r] = _dot_tinyblas(a[r], b, n)
        _dots_tinyblas(a, 0, a.shape[0], b, n, out[1])

    rng = np.random.default_rng(n_rows)
    for n in (8, 256, 264):
        cache = (rng.standard_normal((n_rows, 3, n)) * 10.0).astype(np.float16).astype(np.float32)
        b = rng.uniform(0, 1, n).astype(np.float16).astype(np.float32)
        out = np.empty((2, n_rows), np.float32)
        both(cache[:, 1], b, n, out)  # head 1 of 3: a row stride of three rows
        assert np.array_equal(out[0].view(np.int32), out[1].view(np.int32))


def test_hardware_f16_rounding_is_numpy_and_round_f16():
    from zigllama_lib.linear_algebra.half import to_f16_array
    from zigllama_lib.linear_algebra.q8 import round_f16

    rng = np.random.default_rng(8)
    x = (rng.standard_normal(300_000) * 10.0 ** rng.integers(-10, 6, 300_000)).astype(np.float32)
    x[:6] = [65504.0, 65519.99, 65520.0, 6.1e-5, 2.0 ** -25, -(2.0 ** -24) * 1.5]  # max, overflow edge, subnormals
    ours = np.empty_like(x)
    with np.errstate(over="ignore"):
        to_f16_array(x, ours)
        want = x.astype(np.float16).astype(np.float32)
    assert np.array_equal(ours.view(np.int32), want.view(np.int32))
    sample = x[::97]
    assert np.array_equal(np.array([round_f16(v) for v in sample], np.float32).view(np.int32),
                          ours[::97].view(np.int32))


def test_store_as_f16_is_numpy_cast():
    """The KV cache's float32 -> float16 store (compiled, F16C) against numpy's cast, bit for bit."""
    from zigllama_lib.linear_algebra.half import store_as_f16

    rng = np.random.default_rng(9)
    x = (rng.standard_normal((64, 3, 40)) * 10.0 ** rng.integers(-9, 6, (64, 3, 40))).astype(np.float32)
    x.reshape(-1)[:7] = [65504.0, 65520.0, -np.inf, 6.1e-5, 2.0 ** -25, -(2.0 ** -24) * 1.5, -0.0]
    ours = np.zeros((2, 64, 3, 40), np.float16)
    with np.errstate(over="ignore"):
        store_as_f16(ours[1], x)
        want = x.astype(np.float16)
    assert np.array_equal(ours[1].view(np.uint16), want.view(np.uint16))
    assert not ours[0].any()  # only the destination slice was written


def test_float16_scale_loads_are_exact_for_every_bit_pattern():
    """The two ways the kernels read float16 block scales (integer bits times 2^112, and F16C on a
    32-bit load) against numpy's float16 -> float32, for all 65536 halves (NaNs: still NaN, same sign)."""
    from numba import njit, types
    from numba.extending import intrinsic

    @intrinsic
    def load_single(typingctx, addr):
        def codegen(context, builder, signature, args):
            return ggml_simd._load_f16(builder, args[0])
        return types.float32(types.int64), codegen

    @intrinsic
    def load_pair_second(typingctx, addr):
        def codegen(context, builder, signature, args):
            return ggml_simd._load_f16_pair(builder, args[0])[1]
        return types.float32(types.int64), codegen

    @njit
    def convert(bits, out1, out2):
        for i in range(bits.shape[0]):
            out1[i] = load_single(bits.ctypes.data + 2 * i)
            out2[i] = load_pair_second(bits.ctypes.data + 2 * i - 2)  # the half after a 2-byte neighbour

    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    padded = np.concatenate([np.zeros(1, np.uint16), bits])
    single, pair = np.empty(65536, np.float32), np.empty(65536, np.float32)
    convert(padded[1:], single, pair)
    want = bits.view(np.float16).astype(np.float32)
    for got in (single, pair):
        nan = np.isnan(want)
        assert np.array_equal(np.isnan(got), nan)
        assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
        assert np.array_equal(np.signbit(got[nan]), np.signbit(want[nan]))
