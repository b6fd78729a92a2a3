"""Activation functions: the non-linearities between linear layers.

All take and return float32 arrays of any shape, element-wise. ``exp`` and
``tanh`` are the C library's (:mod:`~zigllama_lib.foundation.libm`), so the
results do not depend on which SIMD kernel numpy picks on this CPU.
"""

from __future__ import annotations

import numpy as np

from ..foundation.libm import exp_f32, tanh_f32

_SQRT_2_OVER_PI = np.float32(np.sqrt(2.0 / np.pi))


def relu(x: np.ndarray) -> np.ndarray:
    """``max(x, 0)``."""
    return np.maximum(x, np.float32(0))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + e^-x)``, computed without overflow for large ``|x|``."""
    x = np.asarray(x, dtype=np.float32)
    e = exp_f32(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(np.float32)


def silu(x: np.ndarray) -> np.ndarray:
    """SiLU / swish (Elfwing et al., 2017): ``x * sigmoid(x)``.

    Example: ``silu(0) = 0``, ``silu(1) = 0.7311``, ``silu(-20) ~ -4e-8``.
    """
    x = np.asarray(x, dtype=np.float32)
    return x * sigmoid(x)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (Hendrycks & Gimpel, 2016), as ggml and Gemma use:

    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``
    """
    x = np.asarray(x, dtype=np.float32)
    return (0.5 * x * (1 + tanh_f32(_SQRT_2_OVER_PI * (x + np.float32(0.044715) * x * x * x)))).astype(np.float32)


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """Exact GELU: ``x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))``."""
    from math import erf

    x = np.asarray(x, dtype=np.float32)
    return (0.5 * x * (1 + np.vectorize(erf, otypes=[np.float64])(x / np.sqrt(2.0)))).astype(np.float32)


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """SwiGLU (Shazeer, 2020) gating: ``silu(gate) * up``; the FFN is ``W_down (silu(W_gate x) * W_up x)``."""
    return silu(gate) * up


def geglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """GeGLU: ``gelu(gate) * up`` (Gemma's feed-forward)."""
    return gelu_tanh(gate) * up


ACTIVATIONS = {"relu": relu, "silu": silu, "gelu": gelu_tanh, "gelu_erf": gelu_erf, "sigmoid": sigmoid}
