"""Normalisation layers.

RMSNorm (Zhang & Sennrich, 2019) rescales a vector to unit root-mean-square:

    RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g

LayerNorm (Ba et al., 2016) also subtracts the mean and adds a bias:

    LayerNorm(x) = (x - mean(x)) / sqrt(var(x) + eps) * g + b

Both normalise over the last axis. As in ggml, the sum of squares is
accumulated in float64 and the scale is applied in float32.
"""

from __future__ import annotations

import numpy as np


def rms_norm(x: np.ndarray, weight: np.ndarray | None, eps: float) -> np.ndarray:
    """RMSNorm over the last axis. ``x``: (..., d) float32; ``weight``: (d,) or None."""
    x = np.asarray(x, dtype=np.float32)
    mean_sq = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
    scale = (1.0 / np.sqrt((mean_sq + eps).astype(np.float32))).astype(np.float32)
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
