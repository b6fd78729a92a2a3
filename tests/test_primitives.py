"""Layers 3-4 against maths done by hand: activations, norms, RoPE, attention."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zigllama_lib.neural_primitives import apply_rope, gelu_tanh, layer_norm, rms_norm, silu, swiglu
from zigllama_lib.transformer.attention import attention, causal_mask
from zigllama_lib.transformer.kv_cache import KVCache
from zigllama_lib.foundation.errors import ContextLengthError

rng = np.random.default_rng(0)


def test_silu_and_gelu_values():
    x = np.array([-20.0, -1.0, 0.0, 1.0, 3.0], dtype=np.float32)
    expected_silu = [v / (1 + math.exp(-v)) for v in x.astype(float)]
    np.testing.assert_allclose(silu(x), expected_silu, rtol=1e-6, atol=1e-12)
    g = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))) for v in x.astype(float)]
    np.testing.assert_allclose(gelu_tanh(x), g, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(swiglu(x, 2 * x), silu(x) * 2 * x)


def test_rms_norm_makes_unit_rms():
    x = rng.standard_normal((3, 64)).astype(np.float32) * 5
    y = rms_norm(x, None, 1e-6)
    np.testing.assert_allclose(np.sqrt((y.astype(np.float64) ** 2).mean(-1)), 1.0, rtol=1e-5)
    w = rng.standard_normal(64).astype(np.float32)
    expected = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(rms_norm(x, w, 1e-6), expected, rtol=1e-5)


def test_layer_norm_zero_mean_unit_variance():
    x = rng.standard_normal((4, 32)).astype(np.float32) * 3 + 7
    y = layer_norm(x, None, None, 1e-5)
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(-1), 1, rtol=1e-3)


@pytest.mark.parametrize("mode", ["norm", "neox"])
def test_rope_rotates_pairs_by_position_angles(mode):
    n_rot, base, d = 8, 10000.0, 10
    x = rng.standard_normal((3, 2, d)).astype(np.float32)
    pos = np.array([0, 1, 5])
    y = apply_rope(x, pos, n_rot, base, mode)
    for t, p in enumerate(pos):
        for i in range(n_rot // 2):
            theta = p * base ** (-2 * i / n_rot)
            a, b = (2 * i, 2 * i + 1) if mode == "norm" else (i, i + n_rot // 2)
            c, s = math.cos(theta), math.sin(theta)
            np.testing.assert_allclose(y[t, :, a], x[t, :, a] * c - x[t, :, b] * s, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(y[t, :, b], x[t, :, a] * s + x[t, :, b] * c, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y[..., n_rot:], x[..., n_rot:])  # unrotated tail
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


def test_rope_dot_products_depend_only_on_distance():
    q = rng.standard_normal((1, 1, 16)).astype(np.float32)
    k = rng.standard_normal((1, 1, 16)).astype(np.float32)
    dots = [float((apply_rope(q, [m + 3], 16, 10000.0) * apply_rope(k, [m], 16, 10000.0)).sum()) for m in (0, 7, 40)]
    np.testing.assert_allclose(dots, dots[0], rtol=1e-4)


def naive_attention(q, k, v, n_past, scale, window=None):
    """One head at a time, one query at a time: the definition."""
    n_tok, n_head, _ = q.shape
    n_kv, n_kv_head, d_v = v.shape
    out = np.zeros((n_tok, n_head, d_v))
    for h in range(n_head):
        kv = h // (n_head // n_kv_head)
        for t in range(n_tok):
            pos = n_past + t
            lo = 0 if window is None else max(0, pos - window + 1)
            s = np.array([q[t, h] @ k[j, kv] * scale for j in range(lo, pos + 1)], dtype=np.float64)
            w = np.exp(s - s.max())
            w /= w.sum()
            out[t, h] = w @ v[lo : pos + 1, kv]
    return out.reshape(n_tok, n_head * d_v)


@pytest.mark.parametrize("n_head,n_kv_head,window", [(4, 4, None), (6, 2, None), (4, 1, None), (4, 2, 3)])
def test_attention_matches_the_definition(n_head, n_kv_head, window):
    n_past, n_tok, d = 5, 4, 8
    q = rng.standard_normal((n_tok, n_head, d)).astype(np.float32)
    k = rng.standard_normal((n_past + n_tok, n_kv_head, d)).astype(np.float32)
    v = rng.standard_normal((n_past + n_tok, n_kv_head, d)).astype(np.float32)
    ours = attention(q, k, v, n_past, 1 / math.sqrt(d), window=window)
    np.testing.assert_allclose(ours, naive_attention(q, k, v, n_past, 1 / math.sqrt(d), window), rtol=1e-5, atol=1e-6)


def test_causal_mask_shape_and_values():
    m = causal_mask(2, 4, 2)
    assert m.shape == (2, 4)
    assert (m[0, :3] == 0).all() and m[0, 3] == -np.inf and (m[1] == 0).all()


def test_kv_cache_refuses_overflow():
    c = KVCache(n_layer=1, n_ctx=4, n_kv_head=1, head_dim_k=2)
    c.store(0, np.ones((3, 1, 2)), np.ones((3, 1, 2)))
    c.advance(3)
    with pytest.raises(ContextLengthError, match="exceed the context of 4"):
        c.check_room(2)


def test_unknown_rope_mode_is_a_config_error():
    from zigllama_lib.foundation.errors import ConfigError
    from zigllama_lib.neural_primitives import apply_rope

    x = np.zeros((2, 1, 4), np.float32)
    with pytest.raises(ConfigError, match="unknown RoPE mode 'spiral'"):
        apply_rope(x, np.arange(2), 4, 10000.0, "spiral")
