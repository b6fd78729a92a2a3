"""Normalisation layers.

RMSNorm (Zhang & Sennrich, 2019) rescales a vector to unit root-mean-square:

    RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g

LayerNorm (Ba et al., 2016) also subtracts the mean and adds a bias:

    LayerNorm(x) = (x - mean(x)) / sqrt(var(x) + eps) * g + b

Both normalise over the last axis. As in ggml, each square is a float32
product, the squares are summed in float64, and the mean, ``mean + eps``, the
square root and its reciprocal are float32 operations.
"""

from __future__ import annotations

import numpy as np


def rms_norm(x: np.ndarray, weight: np.ndarray | None, eps: float) -> np.ndarray:
    """RMSNorm over the last axis. ``x``: (..., d) float32; ``weight``: (d,) or None."""
    x = np.asarray(x, dtype=np.float32)
    sum_sq = np.sum(np.square(x).astype(np.float64), axis=-1, keepdims=True)  # float32 squares, float64 sum
    mean = (sum_sq / x.shape[-1]).astype(np.float32)
    scale = np.float32(1.0) / np.sqrt(mean + np.float32(eps))
    y = x * scale
    return y * weight if weight is not None else y


def layer_norm(x: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None, eps: float) -> np.ndarray:
    """LayerNorm over the last axis. ``x``: (..., d) float32."""
    x = np.asarray(x, dtype=np.float32)
    mean = np.mean(x, axis=-1, keepdims=True, dtype=np.float64)
    centred = (x - mean).astype(np.float32)
    var = np.mean(np.square(centred, dtype=np.float64), axis=-1, keepdims=True)
    y = centred * (1.0 / np.sqrt(var + eps)).astype(np.float32)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y
