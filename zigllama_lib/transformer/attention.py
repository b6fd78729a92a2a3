"""Scaled dot-product attention with grouped-query heads and a causal mask.

For one head, with queries ``Q`` (n_tok x d), keys ``K`` and values ``V``
(n_kv x d) of all cached positions::

    Attention(Q, K, V) = softmax(Q K^T * scale + M) V,   scale = 1/sqrt(d)

``M[t, s] = -inf`` where key position ``s`` lies in the future of query ``t``
(causal), or further back than a sliding window. Grouped-query attention
(GQA; Ainslie et al., 2023) lets ``n_head / n_kv_head`` query heads share one
key/value head: query head ``h`` reads KV head ``h // group``. MHA is
``group = 1``, MQA is ``n_kv_head = 1``.
"""

from __future__ import annotations

import numpy as np

from ..foundation.libm import exp_f32, tanh_f32


def causal_mask(n_tok: int, n_kv: int, n_past: int, window: int | None = None) -> np.ndarray:
    """Additive mask (n_tok, n_kv): 0 where query ``n_past + t`` may see key ``s``, -inf elsewhere."""
    q_pos = n_past + np.arange(n_tok)[:, None]
    k_pos = np.arange(n_kv)[None, :]
    visible = k_pos <= q_pos
    if window is not None:
        visible &= k_pos > q_pos - window
    return np.where(visible, np.float32(0), np.float32(-np.inf)).astype(np.float32)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``exp(x - max) / sum(exp(x - max))``, the sum accumulated in float64 as ggml does."""
    m = np.max(x, axis=axis, keepdims=True)
    e = exp_f32(np.asarray(x - m, dtype=np.float32))  # libm's expf: the same on every CPU
    return (e * (1.0 / np.sum(e, axis=axis, keepdims=True, dtype=np.float64)).astype(np.float32)).astype(np.float32)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_past: int, scale: float,
              window: int | None = None, softcap: float | None = None,
              f16_products: bool = False, return_weights: bool = False):
    """Causal GQA attention.

    Args:
        q: (n_tok, n_head, d_k) float32 queries at positions ``n_past .. n_past+n_tok-1``.
        k: (n_kv, n_kv_head, d_k) keys of positions ``0 .. n_kv-1`` (n_kv = n_past + n_tok).
        v: (n_kv, n_kv_head, d_v) values.
        scale: multiplies ``Q K^T`` (usually ``1/sqrt(d_k)``).
        window: sliding-window length, or None for full causal attention.
        softcap: if set, scores become ``softcap * tanh(scores / softcap)``.
        f16_products: round Q and the attention weights to float16 before their
            products, as llama.cpp does with its float16 KV cache.
    Returns:
        (n_tok, n_head * d_v) float32, and the weights (n_head, n_tok, n_kv) if asked.
    """
    n_tok, n_head, d_k = q.shape
    n_kv, n_kv_head, d_v = v.shape
    group = n_head // n_kv_head
    if f16_products:
        q = q.astype(np.float16)
    # (n_kv_head, group * n_tok, d_k): head h = kv * group + g reads KV head kv
    qg = q.reshape(n_tok, n_kv_head, group, d_k).transpose(1, 2, 0, 3).reshape(n_kv_head, group * n_tok, d_k)
    kt = k.transpose(1, 2, 0).astype(np.float32)  # (n_kv_head, d_k, n_kv)
    scores = np.matmul(qg.astype(np.float32), kt) * np.float32(scale)  # (n_kv_head, group*n_tok, n_kv)
    scores = scores.reshape(n_kv_head, group, n_tok, n_kv)
    if softcap:
        scores = np.float32(softcap) * tanh_f32(scores / np.float32(softcap))
    scores = scores + causal_mask(n_tok, n_kv, n_past, window)
    weights = softmax(scores)  # (n_kv_head, group, n_tok, n_kv)
    w = weights.astype(np.float16).astype(np.float32) if f16_products else weights
    out = np.matmul(w.reshape(n_kv_head, group * n_tok, n_kv), v.transpose(1, 0, 2).astype(np.float32))
    out = out.reshape(n_kv_head, group, n_tok, d_v).transpose(2, 0, 1, 3).reshape(n_tok, n_head * d_v)
    if return_weights:
        return out, weights.reshape(n_head, n_tok, n_kv)
    return out
