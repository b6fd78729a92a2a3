"""Layer 2 matmul: Numba kernels vs the numpy reference, and both vs independent oracles.

Oracles: gguf-py dequantises the weights (and, for Q8_0, quantises the
activations); products are then taken in float64. For mode "q8" the oracle
dequantises both operands -- with ggml's one twist for Q4_1 / Q5_1: the min
term uses the activations' stored block sum ``s`` (an f16), not ``sum(d * q)``.
"""

from __future__ import annotations

import numpy as np
import pytest

from oracles import require_module

gguf = require_module("gguf")

from zigllama_lib.foundation.errors import ConfigError, UnsupportedTypeError  # noqa: E402
from zigllama_lib.foundation.ggml_types import BLOCK_GEOMETRY, GGMLType  # noqa: E402
from zigllama_lib.foundation.gguf import GGUFFile  # noqa: E402
from zigllama_lib.linear_algebra import (  # noqa: E402
    VEC_DOT_TYPE,
    QMatrix,
    matmul,
    matmul_reference,
    quantize_q8_1,
    quantize_q8_K,
)
from zigllama_lib.linear_algebra.matmul import PREFILL_TOKENS  # noqa: E402
from zigllama_lib.linear_algebra.q8 import q8_1_planes, q8_K_planes  # noqa: E402

GQ = gguf.GGMLQuantizationType
LEGACY = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0]
KQUANTS = [GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K]
FLOATS = [GGMLType.F32, GGMLType.F16, GGMLType.BF16]
# byte offsets of the f16 fields (d, then m or dmin) of each quantised block
F16_FIELDS = {
    GGMLType.Q4_0: (0,), GGMLType.Q4_1: (0, 2), GGMLType.Q5_0: (0,), GGMLType.Q5_1: (0, 2), GGMLType.Q8_0: (0,),
    GGMLType.Q2_K: (80, 82), GGMLType.Q3_K: (108,), GGMLType.Q4_K: (0, 2), GGMLType.Q5_K: (0, 2),
    GGMLType.Q6_K: (208,),
}
MIN_FIELD = {GGMLType.Q4_1: 2, GGMLType.Q5_1: 2}


def gguf_dequant(raw: np.ndarray, t: GGMLType) -> np.ndarray:
    return np.asarray(gguf.quants.dequantize(np.ascontiguousarray(raw), GQ(int(t))), dtype=np.float64)


def weights(t: GGMLType, n_out: int, n_in: int, seed: int) -> np.ndarray:
    """Raw rows ``(n_out, row_bytes)``: quantised by gguf-py where it can, else random blocks with tame scales."""
    rng = np.random.default_rng(seed)
    if t in FLOATS or t in LEGACY:
        w = (rng.standard_normal((n_out, n_in)) * 0.05).astype(np.float32)
        return np.asarray(gguf.quants.quantize(w, GQ(int(t)))).view(np.uint8).reshape(n_out, -1)
    block, size = BLOCK_GEOMETRY[t]
    raw = rng.integers(0, 256, size=(n_out * n_in // block, size), dtype=np.uint8)
    for off in F16_FIELDS[t]:
        halves = (rng.uniform(0.0005, 0.002, raw.shape[0])).astype("<f2")
        raw[:, off:off + 2] = halves.view(np.uint8).reshape(-1, 2)
    return raw.reshape(n_out, -1)


def activations(n_tok: int, n_in: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n_tok, n_in)).astype(np.float32)
    return x * np.float32(2.0)


def assert_close(got: np.ndarray, want: np.ndarray, scale: np.ndarray, rtol: float) -> None:
    """|got - want| <= rtol * scale elementwise (scale = the sum of |products|, the size of the rounding)."""
    assert got.dtype == np.float32 and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    err = np.abs(got.astype(np.float64) - want) / scale
    assert err.max() <= rtol, f"max relative error {err.max():.3g} > {rtol}"


def q8_oracle(t: GGMLType, raw: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent float64 value (and error scale) of llama.cpp's q8 product: both operands dequantised."""
    n_in = x.shape[1]
    if t in FLOATS:
        if t == GGMLType.F16:
            xr = x.astype(np.float16).astype(np.float64)
        elif t == GGMLType.BF16:
            bits = np.asarray(gguf.quants.quantize(x, GQ.BF16)).view(np.uint16)
            xr = (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        else:
            xr = x.astype(np.float64)
        wd = gguf_dequant(raw, t)
        return xr @ wd.T, np.abs(xr) @ np.abs(wd).T
    vdt = VEC_DOT_TYPE[t]
    if vdt == GGMLType.Q8_0:
        xq = np.asarray(gguf.quants.quantize(x, GQ.Q8_0)).view(np.uint8)
        xd = gguf_dequant(xq, GGMLType.Q8_0)
        wd = gguf_dequant(raw, t)
        return xd @ wd.T, np.abs(xd) @ np.abs(wd).T
    if vdt == GGMLType.Q8_1:
        q, d, s = q8_1_planes(quantize_q8_1(x), n_in)
        xd = (q.reshape(len(x), -1, 32) * d[..., None].astype(np.float64)).reshape(len(x), n_in)
        # weights without their min (m field zeroed: d * q exactly), and the mins themselves
        blocks = raw.reshape(-1, BLOCK_GEOMETRY[t][1]).copy()
        off = MIN_FIELD[t]
        m = np.ascontiguousarray(blocks[:, off:off + 2]).view("<f2").astype(np.float64).reshape(len(raw), -1)
        blocks[:, off:off + 2] = 0
        wd0 = gguf_dequant(blocks.reshape(raw.shape), t)
        s = s.reshape(len(x), -1).astype(np.float64)
        return xd @ wd0.T + s @ m.T, np.abs(xd) @ np.abs(wd0).T + np.abs(s) @ np.abs(m).T
    q, d, _ = q8_K_planes(quantize_q8_K(x), n_in)
    xd = (q.reshape(len(x), -1, 256) * d[..., None].astype(np.float64)).reshape(len(x), n_in)
    wd = gguf_dequant(raw, t)
    return xd @ wd.T, np.abs(xd) @ np.abs(wd).T


ALL = FLOATS + LEGACY + KQUANTS


@pytest.mark.parametrize("t", ALL, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tok", [1, 3, 4, 37])
def test_modes_against_oracles_and_reference(t, n_tok):
    n_out, n_in = 45, 512  # n_out: not a multiple of the 16-row chunks nor of 4
    raw = weights(t, n_out, n_in, seed=int(t))
    w = QMatrix(raw, t, n_in)
    x = activations(n_tok, n_in, seed=n_tok)
    # float: vs x @ dequant(W).T in float64
    wd = gguf_dequant(raw, t)
    want, scale = x.astype(np.float64) @ wd.T, np.abs(x.astype(np.float64)) @ np.abs(wd).T
    assert_close(matmul(w, x, "float"), want, scale, 1e-5)
    assert_close(matmul_reference(w, x, "float"), want, scale, 1e-6)
    # q8: the decode kernels are bit-identical to the numpy reference (ggml's generic
    # arithmetic), the prefill kernels equal to float32 rounding ...
    y = matmul(w, x, "q8")
    ref = matmul_reference(w, x, "q8")
    if t in FLOATS or n_tok >= PREFILL_TOKENS:
        assert_close(y, ref.astype(np.float64), q8_oracle(t, raw, x)[1], 1e-6)
    else:
        np.testing.assert_array_equal(y, ref)
    # ... and both agree with the dequantise-both-operands oracle to float rounding
    want, scale = q8_oracle(t, raw, x)
    assert_close(y, want, scale, 1e-5)
    assert_close(ref, want, scale, 1e-5)


@pytest.mark.parametrize("t", [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q4_K], ids=lambda t: t.name)
def test_q8_x86_mode(t):
    raw = weights(t, 20, 256, seed=5)
    w = QMatrix(raw, t, 256)
    x = activations(3, 256, seed=9)
    np.testing.assert_array_equal(matmul(w, x, "q8_x86"), matmul_reference(w, x, "q8_x86"))
    x37 = activations(37, 256, seed=9)
    scale = q8_oracle(t, raw, x37)[1]  # the size of the products (the rounding's scale)
    assert_close(matmul(w, x37, "q8_x86"), matmul_reference(w, x37, "q8_x86").astype(np.float64), scale, 1e-6)
    # quantisation differs only in rare roundings: the results are close to mode q8
    y, y8 = matmul(w, x, "q8_x86"), matmul(w, x, "q8")
    assert np.abs(y - y8).max() <= 1e-3 * np.abs(y8).max()


def test_q8_is_not_float():
    """q8 really quantises the activations: it differs from the float path by ~1e-3 relative, not 1e-7."""
    t = GGMLType.Q4_1
    w = QMatrix(weights(t, 32, 256, seed=1), t, 256)
    x = activations(2, 256, seed=2)
    rel = np.abs(matmul(w, x, "q8") - matmul(w, x, "float")).max() / np.abs(matmul(w, x, "float")).max()
    assert 1e-5 < rel < 5e-2


def test_vector_input_and_shapes():
    t = GGMLType.Q8_0
    w = QMatrix(weights(t, 10, 64, seed=3), t, 64)
    assert w.shape == (10, 64) and w.n_out == 10 and w.n_in == 64 and w.qtype == t
    x = activations(1, 64, seed=4)
    for mode in ("float", "q8"):
        y1 = matmul(w, x[0], mode)
        assert y1.shape == (10,) and y1.dtype == np.float32
        np.testing.assert_array_equal(y1, matmul(w, x, mode)[0])
        assert matmul(w, np.zeros((0, 64), np.float32), mode).shape == (0, 10)
    # float64 input is accepted (converted to float32)
    np.testing.assert_array_equal(matmul(w, x.astype(np.float64)), matmul(w, x))
    np.testing.assert_array_equal(w.dequantize(), gguf_dequant(w.raw, t).astype(np.float32))


def test_errors():
    t = GGMLType.Q4_1
    raw = weights(t, 4, 64, seed=0)
    with pytest.raises(ConfigError, match="n_in"):
        QMatrix(raw, t, 96)
    with pytest.raises(ConfigError):
        QMatrix(raw[0], t, 64)
    with pytest.raises(UnsupportedTypeError, match="IQ4_XS"):
        QMatrix(np.zeros((4, 136), np.uint8), GGMLType.IQ4_XS, 256)
    w = QMatrix(raw, t, 64)
    with pytest.raises(ConfigError, match="mode"):
        matmul(w, np.zeros(64, np.float32), "int4")
    with pytest.raises(ConfigError, match="shape"):
        matmul(w, np.zeros((2, 32), np.float32))
    with pytest.raises(ConfigError, match="QMatrix"):
        matmul(raw, np.zeros(64, np.float32))


def test_vec_dot_types_are_ggmls():
    assert VEC_DOT_TYPE[GGMLType.Q4_0] == VEC_DOT_TYPE[GGMLType.Q5_0] == VEC_DOT_TYPE[GGMLType.Q8_0] == GGMLType.Q8_0
    assert VEC_DOT_TYPE[GGMLType.Q4_1] == VEC_DOT_TYPE[GGMLType.Q5_1] == GGMLType.Q8_1
    assert all(VEC_DOT_TYPE[t] == GGMLType.Q8_K for t in KQUANTS)
    assert VEC_DOT_TYPE[GGMLType.F16] == GGMLType.F16 and VEC_DOT_TYPE[GGMLType.BF16] == GGMLType.BF16


# -- real tensors -------------------------------------------------------------------------------
def _check_real(g: GGUFFile, name: str, max_rows: int, n_tok: int = 3) -> GGMLType:
    info = g.tensors[name]
    raw = g.tensor_bytes(name)[:max_rows]
    t, n_in = info.ggml_type, info.shape[0]
    w = QMatrix(raw, t, n_in)
    x = activations(n_tok, n_in, seed=1)
    wd = gguf_dequant(raw, t)
    want, scale = x.astype(np.float64) @ wd.T, np.abs(x.astype(np.float64)) @ np.abs(wd).T
    assert_close(matmul(w, x, "float"), want, scale, 1e-5)
    y = matmul(w, x, "q8")
    np.testing.assert_array_equal(y, matmul_reference(w, x, "q8"))
    want, scale = q8_oracle(t, raw, x)
    assert_close(y, want, scale, 1e-5)
    x = activations(20, n_in, seed=2)  # prefill kernels
    want, scale = q8_oracle(t, raw, x)
    assert_close(matmul(w, x, "q8"), want, scale, 1e-5)
    return t


def test_real_smollm_matrices(smollm_path):
    g = GGUFFile(smollm_path)
    seen = {_check_real(g, n, 4096) for n in ("blk.0.ffn_down.weight", "blk.0.attn_k.weight")}
    seen.add(_check_real(g, "token_embd.weight", 300))  # Q8_0 (the tied LM head): a slice of rows
    assert seen == {GGMLType.Q4_1, GGMLType.Q8_0}


def test_real_gemma_matrices(gemma_path):
    g = GGUFFile(gemma_path)
    names = ("blk.0.attn_output.weight", "blk.0.ffn_down.weight", "blk.0.attn_q.weight", "blk.0.attn_v.weight")
    seen = {_check_real(g, n, 256) for n in names}
    assert seen == {GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q5_0, GGMLType.Q8_0}


@pytest.mark.parametrize("t", [GGMLType.Q4_1, GGMLType.Q4_K], ids=lambda t: t.name)
@pytest.mark.parametrize("n_in", [256, 1024, 2048, 4096])
def test_every_lane_layout(t, n_in):
    """n_in picks how many lanes per block the q8 packing uses (K = 8, 4, 2, 1): all exact."""
    from zigllama_lib.linear_algebra.matmul import lanes_for

    raw = weights(t, 7, n_in, seed=n_in)
    w = QMatrix(raw, t, n_in)
    x = activations(2, n_in, seed=3)
    group = 32 if t == GGMLType.Q4_1 else 16
    assert w.packed()[0].shape[1] == group // lanes_for(n_in // group, group)
    np.testing.assert_array_equal(matmul(w, x, "q8"), matmul_reference(w, x, "q8"))
    want, scale = q8_oracle(t, raw, x)
    assert_close(matmul(w, x, "q8"), want, scale, 1e-5)
    x = activations(9, n_in, seed=4)  # prefill kernels
    want, scale = q8_oracle(t, raw, x)
    assert_close(matmul(w, x, "q8"), want, scale, 1e-5)
