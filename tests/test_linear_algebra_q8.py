"""Layer 2: ggml's 8-bit activation quantisers (Q8_0, Q8_1, Q8_K), against gguf-py and hand maths."""

from __future__ import annotations

import numpy as np
import pytest

from oracles import require_module

gguf = require_module("gguf")

from zigllama_lib.foundation.errors import ConfigError  # noqa: E402
from zigllama_lib.linear_algebra import quantize_q8_0, quantize_q8_1, quantize_q8_K  # noqa: E402
from zigllama_lib.linear_algebra.q8 import (  # noqa: E402
    q8_0_planes,
    q8_1_planes,
    q8_K_planes,
    quantize_q8_32_planes,
    quantize_q8_K_planes,
)


def activations(n_tok: int, n: int, seed: int) -> np.ndarray:
    """Normal activations, block scales spread over 1e-4..1e4, plus an all-zero block and exact ties."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_tok, n)).astype(np.float32)
    x *= (10.0 ** rng.uniform(-4, 4, (n_tok, n // 32, 1))).repeat(32, axis=2).reshape(n_tok, n).astype(np.float32)
    x[0, :32] = 0.0
    if n >= 64:
        # amax 127 -> d = 1, id = 1: these land exactly on .5 after scaling
        x[0, 32:64] = np.arange(32, dtype=np.float32) - np.float32(15.5)
        x[0, 63] = 127.0
    return x


def test_q8_0_matches_gguf_py_bit_for_bit():
    x = activations(7, 256, seed=0)
    want = np.asarray(gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)).view(np.uint8)
    got = quantize_q8_0(x)
    assert got.dtype == np.uint8 and got.shape == (7, 256 // 32 * 34)
    np.testing.assert_array_equal(got, want.reshape(got.shape))


def test_q8_0_hand_example():
    # amax = 254 -> d = 2, id = 0.5; 5 * 0.5 = 2.5 -> roundf -> 3 (half away from zero); -3 * 0.5 -> -2
    x = np.zeros(32, np.float32)
    x[:4] = [254.0, 5.0, -3.0, 0.9]
    got = quantize_q8_0(x)
    assert got.shape == (34,)
    assert got[:2].view("<f2")[0] == 2.0
    np.testing.assert_array_equal(got[2:6].view(np.int8), [127, 3, -2, 0])


def test_q8_1_hand_example():
    x = np.zeros(64, np.float32)
    # block 0: amax 127 -> d = 1; q = roundf(x): 2.5 -> 3, -63.5 -> -64, 0.49999997 -> 0
    x[:4] = [127.0, -63.5, 2.5, np.float32(0.49999997)]
    # block 1: amax 0.3 -> d = 0.3/127, id = 1/d; q = [127, -42, 0, ...]
    x[32:35] = [0.3, -0.1, 0.001]
    got = quantize_q8_1(x)
    assert got.shape == (2 * 36,)
    b0, b1 = got[:36], got[36:]
    assert b0[0:2].view("<f2")[0] == 1.0
    q0 = b0[4:].view(np.int8)
    np.testing.assert_array_equal(q0[:4], [127, -64, 3, 0])
    assert b0[2:4].view("<f2")[0] == np.float16(127 - 64 + 3)  # s = d * sum(q)
    d1 = np.float32(0.3) / np.float32(127)
    inv = np.float32(1) / d1
    assert b1[0:2].view("<f2")[0] == np.float16(d1)
    q1 = b1[4:].view(np.int8)
    want_q1 = [int(np.copysign(np.floor(abs(float(v * inv)) + 0.5), v)) for v in x[32:35]]
    assert want_q1 == [127, -42, 0]
    np.testing.assert_array_equal(q1[:3], want_q1)
    assert not q1[3:].any()
    # s uses the unrounded float32 d, rounded to f16 once
    assert b1[2:4].view("<f2")[0] == np.float16(np.float32(127 - 42) * d1)


def test_x86_variant_rounds_halves_to_even():
    x = np.zeros(32, np.float32)
    x[:4] = [127.0, 2.5, -3.5, 0.5]  # d = 1, id = 127 / 127 = 1
    q = quantize_q8_0(x, variant="x86")[2:6].view(np.int8)
    np.testing.assert_array_equal(q, [127, 2, -4, 0])
    q = quantize_q8_1(x, variant="x86")[4:8].view(np.int8)
    np.testing.assert_array_equal(q, [127, 2, -4, 0])
    q_ref = quantize_q8_0(x)[2:6].view(np.int8)
    np.testing.assert_array_equal(q_ref, [127, 3, -4, 1])


def test_x86_variant_formula():
    """x86: id = 127 / amax (one rounding) and rint; compare with that formula written out."""
    x = activations(5, 128, seed=3)
    got_q, got_d = q8_0_planes(quantize_q8_0(x, variant="x86"), 128)
    b = x.reshape(-1, 32)
    amax = np.abs(b).max(axis=1)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, 0).astype(np.float32)
    np.testing.assert_array_equal(got_q.reshape(-1, 32), np.rint(b * inv[:, None]).astype(np.int8))
    np.testing.assert_array_equal(got_d.reshape(-1), (amax / np.float32(127)).astype(np.float16).astype(np.float32))


def test_q8_K_hand_example():
    x = np.zeros(512, np.float32)
    # block 0: the largest |x| is negative: max = -2 -> iscale = 63.5, d = 1/63.5
    x[0:5] = [1.0, -2.0, 0.5, np.float32(1 / 127), 2.0]  # a later +2.0 does not replace the first max
    # block 1 is all zero -> d = 0, q = 0, bsums = 0
    got = quantize_q8_K(x)
    assert got.shape == (2 * 292,)
    b0, b1 = got[:292], got[292:]
    iscale = np.float32(-127) / np.float32(-2.0)
    assert b0[0:4].view("<f4")[0] == np.float32(1) / iscale
    q = b0[4:260].view(np.int8)
    # nearest_int rounds halves to even: 63.5 * 0.5 = 31.75 -> 32; 63.5/127 = 0.5 -> 0
    np.testing.assert_array_equal(q[:5], [64, -127, 32, 0, 127])
    bsums = b0[260:].view("<i2")
    assert bsums[0] == 64 - 127 + 32 + 0 + 127 and not bsums[1:].any()
    assert b1[0:4].view("<f4")[0] == 0 and not b1[4:].any()


def test_numba_planes_match_reference_bytes():
    for n_tok, n in ((1, 64), (9, 512)):
        x = activations(n_tok, n, seed=n_tok)
        for variant in ("ref", "x86"):
            q, d = quantize_q8_32_planes(x, False, variant)
            wq, wd = q8_0_planes(quantize_q8_0(x, variant), n)
            np.testing.assert_array_equal(q, wq)
            np.testing.assert_array_equal(d, wd.reshape(d.shape))
            q, d, s = quantize_q8_32_planes(x, True, variant)
            wq, wd, ws = q8_1_planes(quantize_q8_1(x, variant), n)
            np.testing.assert_array_equal(q, wq)
            np.testing.assert_array_equal(d, wd.reshape(d.shape))
            np.testing.assert_array_equal(s, ws.reshape(s.shape))
        if n % 256 == 0:
            q, d, bs = quantize_q8_K_planes(x)
            wq, wd, wbs = q8_K_planes(quantize_q8_K(x), n)
            np.testing.assert_array_equal(q, wq)
            np.testing.assert_array_equal(d, wd.reshape(d.shape))
            np.testing.assert_array_equal(bs, wbs.reshape(bs.shape))


def test_errors():
    with pytest.raises(ConfigError, match="32"):
        quantize_q8_0(np.zeros(31, np.float32))
    with pytest.raises(ConfigError, match="256"):
        quantize_q8_K(np.zeros(32, np.float32))
    with pytest.raises(ConfigError, match="variant"):
        quantize_q8_1(np.zeros(32, np.float32), variant="arm")


def test_round_f16_matches_numpy():
    """The Numba f32 -> f16 rounding (used for d and s) against numpy's conversion."""
    from numba import njit

    from zigllama_lib.linear_algebra.q8 import round_f16

    @njit
    def apply(v, out):
        for i in range(v.shape[0]):
            out[i] = round_f16(v[i])

    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 32, size=2_000_000, dtype=np.uint64).astype(np.uint32)
    # every float16 value and its float32 neighbours and midpoints (the rounding boundaries)
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    h = h[np.isfinite(h)]
    hb = h.view(np.uint32)
    h = np.sort(h[h >= 0])
    mids = ((h[:-1].astype(np.float64) + h[1:]) / 2).astype(np.float32).view(np.uint32)
    mids = np.concatenate([mids, (mids.view(np.float32) * -1).view(np.uint32)])
    edges = np.concatenate([hb, hb + 1, hb - 1, mids, mids + 1, mids - 1]).astype(np.uint32)
    special = np.array([0.0, -0.0, 65504.0, 65519.996, 65520.0, -65520.0, 1e30, np.inf, -np.inf, np.nan,
                        6.1035156e-05, 5.9604645e-08, 2.9802322e-08, 2.9802326e-08], np.float32).view(np.uint32)
    v = np.concatenate([bits, edges, special]).view(np.float32)
    got = np.empty_like(v)
    apply(v, got)
    with np.errstate(over="ignore"):
        want = v.astype(np.float16).astype(np.float32)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("n_tok", [1, 9])
def test_vector_quantisers_and_the_portable_fallback_agree(n_tok):
    """q8_simd (the AVX2 vector code, held against ggml in test_ggml_ops.py) and the Numba kernels it
    replaces there (kept for CPUs without AVX2) give the same planes on finite inputs, zero blocks too."""
    from zigllama_lib.linear_algebra import q8, q8_simd

    if not q8_simd.AVAILABLE:
        pytest.skip("this CPU has no AVX2 + F16C: only the fallback runs")
    x = activations(n_tok, 768, seed=40 + n_tok)
    x[0, :256] = 0.0  # a zero Q8_K super-block and eight zero 32-blocks
    for with_sum in (False, True):
        xT, xd, xs = q8.q8_32_T(x, True, with_sum, 32)
        fast = q8_simd.q8_32_planes(x, with_sum)
        np.testing.assert_array_equal(fast[0], xT.reshape(x.shape))
        np.testing.assert_array_equal(fast[1].view(np.uint32), xd.view(np.uint32))
        if with_sum:
            np.testing.assert_array_equal(fast[2].view(np.uint32), xs.view(np.uint32))
    xT, xd, bsums = q8.q8_K_T(x, 16)
    fast = q8_simd.q8_K_planes(x)
    np.testing.assert_array_equal(fast[0], xT.reshape(x.shape))
    np.testing.assert_array_equal(fast[1].view(np.uint32), xd.view(np.uint32))
    np.testing.assert_array_equal(fast[2], bsums)
