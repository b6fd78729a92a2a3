"""Layer 2: weight quantisers, bit for bit against gguf-py and against ggml's own compiled C.

Oracles:
* gguf-py 0.19 (``gguf.quants.quantize``): F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0;
* ggml's ``quantize_row_*_ref`` in llama-cpp-python's ``libggml-base.so`` (called through
  ctypes): every quantised type, the K-quants included;
* maths by hand: block examples, bits per weight, the error bound of rounding.
Inputs: random rows with block scales spread over many decades (plus zero blocks,
ties and one-signed blocks) and real SmolLM2-135M tensors.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from oracles import ggml_library, require_module

from zigllama_lib.foundation.errors import ConfigError, UnsupportedTypeError, ZigLlamaError
from zigllama_lib.foundation.gguf import GGUFFile
from zigllama_lib.foundation.ggml_types import BLOCK_GEOMETRY, GGMLType
from zigllama_lib.linear_algebra import dequantize, quantize_q8_0
from zigllama_lib.linear_algebra.quantize import (
    KQUANT_TYPES,
    QUANTIZE_TYPES,
    bits_per_weight,
    f16_bits,
    quantize,
    quantize_reference,
    round_trip,
)

gguf = require_module("gguf")

LEGACY = (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0)
GGUF_PY_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16) + LEGACY
REAL_TENSORS = ("token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.29.attn_v.weight")


def weights(n_rows: int, n_cols: int, seed: int) -> np.ndarray:
    """Normal rows whose 32-blocks have scales spread over 1e-4..1e4, plus awkward blocks."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    x *= (10.0 ** rng.uniform(-4, 4, (n_rows, n_cols // 32, 1))).repeat(32, axis=2).reshape(n_rows, n_cols)
    x[0, :32] = 0.0  # all-zero block: d = 0
    x[0, 32:64] = 0.25  # constant block: Q4_1 / Q5_1 have hi == lo
    x[1, :32] = np.abs(x[1, :32])  # one-signed blocks: Q4_1's min is positive
    x[1, 32:64] = -np.abs(x[1, 32:64])
    x[2, :32] = np.arange(32, dtype=np.float32) - 16  # exact .5 ties after scaling
    x[2, 40], x[2, 41] = 3.0, -3.0  # two extremes of equal magnitude, opposite signs
    x[2, 42:64] = 0.0
    if n_cols >= 512:  # K-quants: a zero super-block and one with zero sub-blocks
        x[3, :256] = 0.0
        x[4, 16:48] = 0.0
    return x


@pytest.fixture(scope="module")
def ggml_base(llama_cpp):
    """ggml's compiled reference quantisers (``libggml-base.so`` of llama-cpp-python)."""
    return ggml_library(llama_cpp, "libggml-base.so")


def ggml_quantize(lib, x: np.ndarray, t: GGMLType) -> np.ndarray:
    """``quantize_row_<type>_ref(x, y, k)`` of ggml over all rows of ``x`` at once (rows are whole blocks)."""
    fn = getattr(lib, "quantize_row_" + t.name.lower().replace("_k", "_K") + "_ref")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    x = np.ascontiguousarray(x, dtype=np.float32)
    block, size = BLOCK_GEOMETRY[t]
    out = np.zeros((x.shape[0], x.shape[1] // block * size), np.uint8)
    fn(x.ctypes.data, out.ctypes.data, x.size)
    return out


def gguf_py_quantize(x: np.ndarray, t: GGMLType) -> np.ndarray:
    want = gguf.quants.quantize(x, gguf.GGMLQuantizationType(int(t)))
    return np.ascontiguousarray(want).view(np.uint8).reshape(x.shape[0], -1)


@pytest.fixture(scope="module")
def smollm_tensors(smollm_path):
    """Real weights: a few SmolLM2 tensors, dequantised (token_embd: every 16th row)."""
    f = GGUFFile(smollm_path)
    out = {}
    for name in REAL_TENSORS:
        raw = f.tensor_bytes(name)
        if name == "token_embd.weight":
            raw = raw[::16]
        out[name] = (dequantize(raw, f.info(name).ggml_type), np.asarray(raw), f.info(name).ggml_type)
    return out


# -- against gguf-py ---------------------------------------------------------------------------------
@pytest.mark.parametrize("t", GGUF_PY_TYPES, ids=lambda t: t.name)
def test_random_rows_match_gguf_py(t):
    x = weights(9, 256, seed=int(t))
    want = gguf_py_quantize(x, t)
    got = quantize(x, t)
    assert got.dtype == np.uint8 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(quantize_reference(x, t), want)


@pytest.mark.parametrize("t", GGUF_PY_TYPES, ids=lambda t: t.name)
def test_real_smollm_tensors_match_gguf_py(t, smollm_tensors):
    for name, (x, _, _) in smollm_tensors.items():
        want = gguf_py_quantize(x, t)
        np.testing.assert_array_equal(quantize(x, t), want, err_msg=name)
        np.testing.assert_array_equal(quantize_reference(x, t), want, err_msg=name)


# -- against ggml's C --------------------------------------------------------------------------------
@pytest.mark.parametrize("t", LEGACY + KQUANT_TYPES, ids=lambda t: t.name)
def test_random_rows_match_ggml_reference(t, ggml_base):
    x = weights(12, 1024, seed=100 + int(t))
    np.testing.assert_array_equal(quantize(x, t), ggml_quantize(ggml_base, x, t))


@pytest.mark.parametrize("t", LEGACY + KQUANT_TYPES, ids=lambda t: t.name)
def test_real_smollm_tensors_match_ggml_reference(t, ggml_base, smollm_tensors):
    for name, (x, _, _) in smollm_tensors.items():
        # K-quants: super-blocks of 256 (SmolLM2's 576-wide rows are not whole super-blocks, so the
        # tensor's values are re-cut into rows of 256), and fewer of them (their search is slower)
        rows = x.reshape(-1, 256)[:192] if t in KQUANT_TYPES else x
        np.testing.assert_array_equal(quantize(rows, t), ggml_quantize(ggml_base, rows, t), err_msg=name)


# -- round trips -------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", QUANTIZE_TYPES, ids=lambda t: t.name)
def test_round_trip_through_our_dequantiser_matches_gguf_py(t, smollm_tensors):
    x = smollm_tensors["blk.0.ffn_down.weight"][0]
    raw = quantize(x, t)
    y = round_trip(x, t)
    assert y.shape == x.shape and y.dtype == np.float32
    want = np.asarray(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(int(t))), np.float32).reshape(x.shape)
    np.testing.assert_array_equal(y, want)


def test_requantising_a_files_tensors_gives_back_its_bytes(smollm_tensors):
    # A dequantised Q4_1 / Q8_0 tensor lies on its format's grid: the same blocks come out.
    for name, (x, raw, t) in smollm_tensors.items():
        np.testing.assert_array_equal(quantize(x, t), raw, err_msg=name)


@pytest.mark.parametrize("t", LEGACY, ids=lambda t: t.name)
def test_error_is_at_most_half_a_step(t):
    # With the step d of each block computed here from its definition, rounding to the grid errs by at
    # most |d|/2; storing d (and m) as f16 adds at most |q| 2^-11 |d| (+ 2^-11 |lo|). Q4_0 / Q5_0 clamp
    # values beyond 7.5 d (15.5 d) on the side opposite the extreme M to the top level 7 d (15 d).
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((64, 256)) * 10.0 ** rng.uniform(-3, 3, (64, 1))).astype(np.float32)
    xb = x.reshape(-1, 32).astype(np.float64)
    err = np.abs(round_trip(x, t).reshape(-1, 32) - xb)
    lo = xb.min(axis=1, keepdims=True)
    if t in (GGMLType.Q4_1, GGMLType.Q5_1):
        q_max = 15 if t == GGMLType.Q4_1 else 31
        d = (xb.max(axis=1, keepdims=True) - lo) / q_max
        slack = q_max * 2.0 ** -11 * d + 2.0 ** -11 * np.abs(lo)
        clamped = np.zeros_like(xb, bool)
    else:
        levels = {GGMLType.Q4_0: 8, GGMLType.Q5_0: 16, GGMLType.Q8_0: 127}[t]
        m = xb[np.arange(xb.shape[0]), np.abs(xb).argmax(axis=1)][:, None]  # the signed extreme
        d = np.abs(m) / levels
        slack = levels * 2.0 ** -11 * d
        clamped = (-xb * np.sign(m) / d > levels - 0.5) if t != GGMLType.Q8_0 else np.zeros_like(xb, bool)
    bound = np.where(clamped, d, d / 2) + slack + 4e-6 * d
    assert np.all(err <= bound)
    assert clamped.any() == (t in (GGMLType.Q4_0, GGMLType.Q5_0))
    assert np.all(err[clamped] >= (d / 2 - slack - 4e-6 * d)[np.nonzero(clamped)[0], 0])  # they do exceed d/2
    assert np.mean(err > 0.4 * d) > 0.05  # the bound is nearly reached: it is the right one


# -- by hand -----------------------------------------------------------------------------------------
def test_q8_0_block_by_hand():
    x = np.zeros(32, np.float32)
    x[:4] = [254.0, 5.0, -3.0, 0.9]  # amax 254 -> d = 2, id = 0.5: q = 127, roundf(2.5) = 3, roundf(-1.5) = -2, 0
    raw = quantize(x, GGMLType.Q8_0)
    assert raw.shape == (34,) and raw[:2].view("<f2")[0] == 2.0
    np.testing.assert_array_equal(raw[2:6].view(np.int8), [127, 3, -2, 0])
    np.testing.assert_array_equal(raw, quantize_q8_0(x))  # the activation quantiser is the same code


def test_q4_0_block_by_hand():
    # M = -16 (largest |x|) -> d = M / -8 = 2, id = 0.5; q = min(15, trunc(x/2 + 8.5))
    x = np.zeros(32, np.float32)
    x[0], x[1], x[2], x[16], x[17] = -16.0, 14.0, 3.0, 1.0, 20.0 / 3
    raw = quantize(x, GGMLType.Q4_0)
    assert raw.shape == (18,) and raw[:2].view("<f2")[0] == 2.0
    q = np.concatenate([raw[2:] & 0x0F, raw[2:] >> 4])
    # -16 -> 0 (stored exactly: 2 * (0 - 8)), 14 -> trunc(15.5) = 15, 3 -> trunc(10) = 10, 0 -> 8,
    # 1 -> trunc(9) = 9, 20/3 -> trunc(11.83) = 11
    assert list(q[[0, 1, 2, 3, 16, 17]]) == [0, 15, 10, 8, 9, 11]
    np.testing.assert_array_equal(round_trip(x, GGMLType.Q4_0)[[0, 1, 2, 3]], [-16.0, 14.0, 4.0, 0.0])


def test_q4_1_block_by_hand():
    # lo = -1, hi = 14 -> d = 1, m = -1: q = trunc(x + 1 + 0.5)
    x = np.linspace(-1.0, 14.0, 32).astype(np.float32)
    x[5] = 2.4
    raw = quantize(x, GGMLType.Q4_1)
    assert raw.shape == (20,)
    assert raw[0:2].view("<f2")[0] == 1.0 and raw[2:4].view("<f2")[0] == -1.0
    q = np.concatenate([raw[4:] & 0x0F, raw[4:] >> 4])
    assert q[0] == 0 and q[31] == 15 and q[5] == 3  # 2.4 + 1 + 0.5 = 3.9 -> 3, back to 2.0
    assert round_trip(x, GGMLType.Q4_1)[5] == 2.0


def test_q5_high_bits_by_hand():
    # Q5_0 with M = -16: d = 1, q = trunc(x + 16.5); x = 15 -> 31 = 0b11111 (fifth bit set), x = -1 -> 15
    x = np.zeros(32, np.float32)
    x[0], x[1], x[20] = -16.0, 15.0, -1.0
    raw = quantize(x, GGMLType.Q5_0)
    qh = int(raw[2:6].view("<u4")[0])
    assert qh >> 1 & 1 and not qh >> 20 & 1 and not qh & 1  # weight 1: bit set; 20 (q=15), 0 (q=0): clear
    assert qh >> 2 & 1  # x = 0 -> q = 16: fifth bit set
    assert raw[6 + 1] & 0x0F == 31 & 0x0F and raw[6 + 4] >> 4 == 15


def test_bits_per_weight_by_hand():
    # (scale bytes + quant bits / 8) * 8 / 32 per 32-block; super-blocks of 256 for the K-quants
    assert bits_per_weight(GGMLType.Q4_0) == (2 + 16) * 8 / 32 == 4.5
    assert bits_per_weight(GGMLType.Q4_1) == (2 + 2 + 16) * 8 / 32 == 5.0
    assert bits_per_weight(GGMLType.Q5_0) == (2 + 4 + 16) * 8 / 32 == 5.5
    assert bits_per_weight(GGMLType.Q5_1) == (2 + 2 + 4 + 16) * 8 / 32 == 6.0
    assert bits_per_weight(GGMLType.Q8_0) == (2 + 32) * 8 / 32 == 8.5
    assert bits_per_weight(GGMLType.Q4_K) == (2 + 2 + 12 + 128) * 8 / 256 == 4.5
    assert bits_per_weight(GGMLType.Q6_K) == (128 + 64 + 16 + 2) * 8 / 256 == 6.5625
    assert bits_per_weight(GGMLType.F16) == 16 and bits_per_weight(GGMLType.F32) == 32


def test_f16_bits_matches_numpy():
    rng = np.random.default_rng(3)
    v = np.concatenate([
        rng.standard_normal(20000).astype(np.float32) * np.float32(10.0) ** rng.integers(-9, 6, 20000),
        np.array([0.0, -0.0, 65504.0, 65519.99, 65520.0, 1e6, -1e6, np.inf, -np.inf, 2.0 ** -24, 2.0 ** -25,
                  1.5 * 2.0 ** -25, 2.0 ** -14, 2.0 ** -14 - 2.0 ** -25, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11],
                 np.float32),
    ]).astype(np.float32)
    with np.errstate(over="ignore"):
        want = v.astype("<f2").view(np.uint16)
    got = np.array([f16_bits(np.float32(a)) for a in v], np.uint16)
    np.testing.assert_array_equal(got, want)


def test_shapes_keep_leading_dimensions():
    x = weights(6, 256, seed=1).reshape(2, 3, 256)
    for t in (GGMLType.Q4_0, GGMLType.Q6_K, GGMLType.F16):
        block, size = BLOCK_GEOMETRY[t]
        raw = quantize(x, t)
        assert raw.shape == (2, 3, 256 // block * size)
        np.testing.assert_array_equal(raw.reshape(6, -1), quantize(x.reshape(6, 256), t))
        assert round_trip(x, t).shape == x.shape
    assert quantize(np.zeros((0, 64), np.float32), GGMLType.Q4_0).shape == (0, 36)


# -- errors ------------------------------------------------------------------------------------------
def test_errors_name_what_is_wrong():
    x = np.zeros((2, 64), np.float32)
    with pytest.raises(UnsupportedTypeError, match="Q2_K"):
        quantize(x, GGMLType.Q2_K)
    with pytest.raises(UnsupportedTypeError, match="unknown ggml type"):
        quantize(x, 999)
    with pytest.raises(UnsupportedTypeError, match="Q4_K"):
        quantize_reference(np.zeros((1, 256), np.float32), GGMLType.Q4_K)
    with pytest.raises(ConfigError, match="multiple of 32"):
        quantize(np.zeros((2, 48), np.float32), GGMLType.Q4_0)
    with pytest.raises(ConfigError, match="multiple of 256"):
        quantize(x, GGMLType.Q6_K)
    with pytest.raises(ConfigError, match="float"):
        quantize(np.zeros((2, 64), np.int32), GGMLType.Q8_0)
    with pytest.raises(UnsupportedTypeError, match="999"):
        bits_per_weight(999)
    with pytest.raises(ZigLlamaError, match="scalar"):
        quantize(np.float32(1.0), GGMLType.Q8_0)
