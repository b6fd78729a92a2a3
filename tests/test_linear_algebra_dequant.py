"""Layer 2 dequantisation: bit-exact against gguf-py (llama.cpp's own Python package)."""

from __future__ import annotations

import numpy as np
import pytest

from oracles import require_module

gguf = require_module("gguf")

from zigllama_lib.foundation.errors import ConfigError, UnsupportedTypeError  # noqa: E402
from zigllama_lib.foundation.ggml_types import BLOCK_GEOMETRY, GGMLType  # noqa: E402
from zigllama_lib.foundation.gguf import GGUFFile  # noqa: E402
from zigllama_lib.linear_algebra import (  # noqa: E402
    SUPPORTED_TYPES,
    dequantize,
    dequantize_reference,
    get_rows,
)

# byte offsets of the f16 scale fields (d, m, dmin) inside one block of each type
F16_FIELDS = {
    GGMLType.F16: (0,),
    GGMLType.Q4_0: (0,),
    GGMLType.Q4_1: (0, 2),
    GGMLType.Q5_0: (0,),
    GGMLType.Q5_1: (0, 2),
    GGMLType.Q8_0: (0,),
    GGMLType.Q2_K: (80, 82),
    GGMLType.Q3_K: (108,),
    GGMLType.Q4_K: (0, 2),
    GGMLType.Q5_K: (0, 2),
    GGMLType.Q6_K: (208,),
}
# f16 bit patterns: +inf, -inf, qNaN, sNaN, -qNaN, smallest subnormal, largest subnormal,
# -0, max finite, 1.0, min normal
SPECIAL_F16 = np.array([0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFE00, 0x0001, 0x03FF, 0x8000, 0x7BFF, 0x3C00, 0x0400],
                       dtype=np.uint16)


def gguf_dequant(raw: np.ndarray, t: GGMLType) -> np.ndarray:
    with np.errstate(all="ignore"):
        out = gguf.quants.dequantize(np.ascontiguousarray(raw), gguf.GGMLQuantizationType(int(t)))
    return np.asarray(out, dtype=np.float32)


def assert_bits_equal(got: np.ndarray, want: np.ndarray) -> None:
    """Same shape, NaN where ``want`` has NaN, identical float32 bits everywhere else (so -0.0 != 0.0)."""
    assert got.dtype == np.float32 and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    g, w = got[~nan].view(np.uint32), want[~nan].astype(np.float32).view(np.uint32)
    if not np.array_equal(g, w):
        i = int(np.flatnonzero(g != w)[0])
        raise AssertionError(f"{np.count_nonzero(g != w)} values differ; first at {i}: "
                             f"{got[~nan][i]!r} vs {want[~nan][i]!r}")


def random_rows(t: GGMLType, n_rows: int, n_blocks: int, seed: int) -> np.ndarray:
    """Random bytes, with every f16 scale field drawn half from ordinary values and half from SPECIAL_F16."""
    rng = np.random.default_rng(seed)
    _, size = BLOCK_GEOMETRY[t]
    raw = rng.integers(0, 256, size=(n_rows * n_blocks, size), dtype=np.uint8)
    for off in F16_FIELDS.get(t, ()):
        ordinary = rng.uniform(-2.0, 2.0, raw.shape[0]).astype(np.float16).view(np.uint16)
        special = SPECIAL_F16[rng.integers(0, len(SPECIAL_F16), raw.shape[0])]
        bits = np.where(rng.random(raw.shape[0]) < 0.5, special, ordinary).astype("<u2")
        raw[:, off:off + 2] = bits.view(np.uint8).reshape(-1, 2)
    return raw.reshape(n_rows, n_blocks * size)


@pytest.mark.parametrize("t", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_random_blocks_bit_exact(t):
    raw = random_rows(t, n_rows=13, n_blocks=6, seed=int(t))
    want = gguf_dequant(raw, t)
    assert_bits_equal(dequantize(raw, t), want)
    assert_bits_equal(dequantize_reference(raw, t), want)


@pytest.mark.parametrize("t", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_every_special_scale(t):
    """One block per special f16 value in every scale field (the other bytes random)."""
    offs = F16_FIELDS.get(t, ())
    if not offs:
        pytest.skip(f"{t.name} has no f16 fields")
    block, size = BLOCK_GEOMETRY[t]
    rng = np.random.default_rng(7)
    rows = []
    for off in offs:
        for v in SPECIAL_F16:
            b = rng.integers(0, 256, size=size, dtype=np.uint8)
            b[off:off + 2] = np.array([v], "<u2").view(np.uint8)
            rows.append(b)
    raw = np.stack(rows)  # one block per row
    want = gguf_dequant(raw, t)
    assert_bits_equal(dequantize(raw, t), want)
    assert_bits_equal(dequantize_reference(raw, t), want)


def test_float_types_every_f16_and_bf16_pattern():
    bits = np.arange(1 << 16, dtype=np.uint32).astype("<u2").view(np.uint8).reshape(256, 512)
    for t in (GGMLType.F16, GGMLType.BF16):
        want = gguf_dequant(bits, t)
        assert_bits_equal(dequantize(bits, t), want)
        assert_bits_equal(dequantize_reference(bits, t), want)


def test_f32_is_a_reinterpretation():
    x = np.array([[1.5, -0.0, np.inf, np.nan, 1e-45, -3.25e38]], dtype=np.float32)
    raw = x.view(np.uint8)
    assert_bits_equal(dequantize(raw, GGMLType.F32), x)
    assert_bits_equal(dequantize_reference(raw, GGMLType.F32), x)


@pytest.mark.parametrize("t", [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0,
                               GGMLType.BF16, GGMLType.F16], ids=lambda t: t.name)
def test_gguf_quantized_data(t):
    """Data quantised by gguf-py (realistic scales), including an all-zero block and a constant block."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 256)).astype(np.float32) * np.float32(0.05)
    x[0, :32] = 0.0
    x[1, :32] = 0.25
    raw = np.asarray(gguf.quants.quantize(x, gguf.GGMLQuantizationType(int(t)))).view(np.uint8)
    raw = raw.reshape(9, -1)
    want = gguf_dequant(raw, t)
    assert_bits_equal(dequantize(raw, t), want)
    assert_bits_equal(dequantize_reference(raw, t), want)


def test_shapes():
    t = GGMLType.Q4_1
    raw = random_rows(t, n_rows=6, n_blocks=3, seed=3)
    flat = dequantize(raw, t)
    assert flat.shape == (6, 96)
    assert dequantize(raw[0], t).shape == (96,)
    np.testing.assert_array_equal(dequantize(raw[0], t), flat[0])
    three = dequantize(raw.reshape(2, 3, -1), t)
    assert three.shape == (2, 3, 96)
    np.testing.assert_array_equal(three.reshape(6, 96), flat)
    assert dequantize(raw[:0], t).shape == (0, 96)
    assert dequantize_reference(raw[:0], t).shape == (0, 96)
    # a non-contiguous view of rows
    np.testing.assert_array_equal(dequantize(raw[::2], t), flat[::2])


def test_errors():
    raw = np.zeros((2, 20), np.uint8)
    with pytest.raises(UnsupportedTypeError, match="IQ2_XXS"):
        dequantize(raw, GGMLType.IQ2_XXS)
    with pytest.raises(UnsupportedTypeError, match="IQ2_XXS"):
        dequantize_reference(raw, GGMLType.IQ2_XXS)
    with pytest.raises(UnsupportedTypeError, match="123"):
        dequantize(raw, 123)
    with pytest.raises(ConfigError, match="blocks"):
        dequantize(np.zeros((2, 21), np.uint8), GGMLType.Q4_1)
    with pytest.raises(ConfigError, match="uint8"):
        dequantize(np.zeros((2, 5), np.float32), GGMLType.F32)


def test_get_rows():
    t = GGMLType.Q8_0
    raw = random_rows(t, n_rows=10, n_blocks=2, seed=5)
    ids = np.array([3, 0, 9, 3])
    assert_bits_equal(get_rows(raw, t, ids), gguf_dequant(raw[ids], t))
    assert get_rows(raw, t, []).shape == (0, 64)
    assert get_rows(raw, t, [7]).shape == (1, 64)
    with pytest.raises(ConfigError, match="10"):
        get_rows(raw, t, [10])
    with pytest.raises(ConfigError, match="-1"):
        get_rows(raw, t, [-1])
    with pytest.raises(UnsupportedTypeError):
        get_rows(raw, GGMLType.IQ4_XS, [0])


# -- real tensors -------------------------------------------------------------------------
def _real_tensor_cases(path, max_rows: int = 1024):
    """(name, type, raw rows) for the first tensor of each type in the file (at most max_rows rows)."""
    g = GGUFFile(path)
    seen = {}
    for name, info in g.tensors.items():
        if info.ggml_type not in seen:
            raw = g.tensor_bytes(name)
            seen[info.ggml_type] = (name, info.ggml_type, raw.reshape(-1, raw.shape[-1])[:max_rows])
    return list(seen.values())


def test_real_tensors_smollm(smollm_path):
    cases = _real_tensor_cases(smollm_path)
    assert {t for _, t, _ in cases} >= {GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.F32}
    for name, t, raw in cases:
        want = gguf_dequant(raw, t)
        assert_bits_equal(dequantize(raw, t), want)
        assert_bits_equal(dequantize_reference(raw, t), want)
        ids = np.array([0, len(raw) - 1, len(raw) // 2])
        assert_bits_equal(get_rows(raw, t, ids), want[ids])


def test_real_tensors_gemma(gemma_path):
    cases = _real_tensor_cases(gemma_path, max_rows=512)
    assert {t for _, t, _ in cases} >= {GGMLType.Q4_K, GGMLType.Q5_0, GGMLType.Q6_K, GGMLType.Q8_0}
    for name, t, raw in cases:
        want = gguf_dequant(raw, t)
        assert_bits_equal(dequantize(raw, t), want)
        assert_bits_equal(dequantize_reference(raw, t), want)


def test_real_tensor_via_gguf_reader(smollm_path):
    """The bytes gguf-py's own reader yields for a whole Q4_1 matrix dequantise identically."""
    reader = gguf.GGUFReader(str(smollm_path))
    tensor = next(x for x in reader.tensors if x.name == "blk.0.ffn_down.weight")
    raw = np.asarray(tensor.data)
    assert raw.dtype == np.uint8
    assert_bits_equal(dequantize(raw, GGMLType.Q4_1), gguf_dequant(raw, GGMLType.Q4_1))


def test_activation_rounding_to_bf16_and_f16():
    """x -> bf16 as ggml (gguf-py's BF16 quantiser is ggml_compute_fp32_to_bf16), x -> f16 as numpy."""
    from zigllama_lib.linear_algebra.float_formats import fp32_to_bf16_bits, round_to_bf16, round_to_f16

    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 32, size=200_000, dtype=np.uint64).astype(np.uint32)
    special = np.array([0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFFFFFFF, 0x00000001, 0x80000000,
                        0x3F808000, 0x3F818000, 0x7F7FFFFF], np.uint32)  # incl. ties to even
    x = np.concatenate([bits, special]).view(np.float32)
    want = np.asarray(gguf.quants.quantize(x, gguf.GGMLQuantizationType.BF16)).view(np.uint16)
    np.testing.assert_array_equal(fp32_to_bf16_bits(x), want)
    assert_bits_equal(round_to_bf16(x), (want.astype(np.uint32) << 16).view(np.float32))
    with np.errstate(over="ignore"):
        assert_bits_equal(round_to_f16(x), x.astype(np.float16).astype(np.float32))
