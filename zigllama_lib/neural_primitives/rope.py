"""Rotary position embedding (RoPE; Su et al., 2021).

RoPE rotates each pair of coordinates of a query/key vector by an angle that
grows with the token's position ``m``::

    theta_i = m * base^(-2i/n_rot),   i = 0 .. n_rot/2 - 1
    (a, b) -> (a cos theta_i - b sin theta_i,  a sin theta_i + b cos theta_i)

so ``q_m . k_n`` depends only on ``m - n``. Two conventions pair the coordinates
differently:

* ``"norm"`` (interleaved; GGUF llama files, whose Q/K rows the converter
  permuted): pairs ``(x[2i], x[2i+1])``;
* ``"neox"`` (GPT-NeoX, Gemma, Qwen): pairs ``(x[i], x[i + n_rot/2])``.

Only the first ``n_rot`` coordinates rotate; the rest pass through. As in ggml,
the angles are built by repeated float32 multiplication ``theta *= base^(-2/n_rot)``.

No result here depends on the CPU: ``base^(-2/n_rot)`` is glibc's ``powf`` and
the cosines and sines are glibc's double ``cos``/``sin`` of the float32 angles,
rounded once to float32 (a compiled loop, not numpy's float32 ``np.cos``,
whose AVX-512 kernel loses accuracy at large angles: 9e-5 at position 500).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..foundation.errors import ConfigError
from ..foundation.libm import rope_theta_scale

ROPE_MODES = ("norm", "neox")


def rope_angles(positions: np.ndarray, n_rot: int, base: float, freq_scale: float = 1.0) -> np.ndarray:
    """Angles ``theta[m, i]`` for each position and pair: (n_pos, n_rot/2) float32."""
    theta_scale = rope_theta_scale(base, n_rot)
    theta = np.empty((len(positions), n_rot // 2), dtype=np.float32)
    # theta_0 = p; theta_i = theta_{i-1} * theta_scale, rounded to float32 at each step like ggml
    theta[:, 0] = np.asarray(positions, dtype=np.float32) * np.float32(freq_scale)
    for i in range(1, n_rot // 2):
        theta[:, i] = theta[:, i - 1] * theta_scale
    return theta


@njit(cache=True, nogil=True)
def _cos_sin_kernel(theta, cos_out, sin_out):
    for i in range(theta.shape[0]):
        t = np.float64(theta[i])
        cos_out[i] = np.float32(math.cos(t))  # libm's double cos, rounded once
        sin_out[i] = np.float32(math.sin(t))


def cos_sin(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``cos(theta), sin(theta)`` of float32 angles (any shape), exact to float32 rounding on every CPU."""
    theta = np.ascontiguousarray(theta, dtype=np.float32)
    flat = theta.reshape(-1)
    cos, sin = np.empty_like(flat), np.empty_like(flat)
    _cos_sin_kernel(flat, cos, sin)
    return cos.reshape(theta.shape), sin.reshape(theta.shape)


def apply_rope(x: np.ndarray, positions: np.ndarray, n_rot: int, base: float,
               mode: str = "norm", freq_scale: float = 1.0) -> np.ndarray:
    """Rotate ``x``: (n_tok, n_head, head_dim) float32 by ``positions``: (n_tok,). Returns a new array."""
    if mode not in ROPE_MODES:
        raise ConfigError(f"unknown RoPE mode {mode!r}; expected one of {ROPE_MODES}")
    theta = rope_angles(positions, n_rot, base, freq_scale)[:, None, :]  # (n_tok, 1, n_rot/2)
    cos, sin = cos_sin(theta)
    out = np.array(x, dtype=np.float32, copy=True)
    if mode == "norm":
        a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = a * cos - b * sin
        out[..., 1:n_rot:2] = a * sin + b * cos
    else:
        half = n_rot // 2
        a, b = x[..., :half], x[..., half:n_rot]
        out[..., :half] = a * cos - b * sin
        out[..., half:n_rot] = a * sin + b * cos
    return out
