"""The C library's float32 maths (``powf``, ``expf``, ``cosf``, ...), called through ctypes.

ggml computes its transcendentals with the C library it links (glibc on Linux):
RoPE's ``theta_scale = powf(base, -2.0f/n_dims)``, ``cosf``/``sinf`` of the
angles, ``expf`` in the scalar tail of SiLU, ``tanhf`` in the GELU table. A
mirror that is to agree with ggml bit for bit must call the same functions.

numpy's float32 ufuncs do not: numpy dispatches ``power``, ``exp``, ``sin``,
``cos``, ``log`` ... to a different SIMD kernel on each CPU (AVX2, AVX-512),
and on an AVX-512 machine ``np.power(np.float32(1e5), np.float32(-2/64))`` is
one ulp away from glibc's ``powf`` -- enough to change SmolLM2's greedy text.
glibc's functions give the same bits on every x86-64 CPU with FMA (its
``ifunc`` picks the FMA variant on both AVX2 and AVX-512 machines), and they are
what llama.cpp's own process calls, so they are the reference here.

The scalar functions (``powf`` ...) serve the handful of constants per model.
For arrays, :data:`exp_f32`, :data:`tanh_f32`, :data:`cos_f32`, :data:`sin_f32`
are Numba ufuncs whose loops call the same ``expf``/``tanhf``/``cosf``/``sinf``
symbols (``math.exp`` on a float32 inside Numba compiles to a call of ``expf``);
tests/test_libm.py checks each against the ctypes call, bit for bit.

>>> rope_theta_scale(100000.0, 64)   # SmolLM2's RoPE: bits 1060283654 (numpy on AVX-512: ...655)
np.float32(0.69783056)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import math

import numpy as np
from numba import vectorize


def _load_libm() -> ctypes.CDLL:
    name = ctypes.util.find_library("m") or ("libm.so.6" if sys.platform.startswith("linux") else None)
    return ctypes.CDLL(name)


LIBM = _load_libm()


def _bind(name: str, n_args: int):
    fn = getattr(LIBM, name)
    fn.restype = ctypes.c_float
    fn.argtypes = [ctypes.c_float] * n_args
    return fn


_powf, _expf, _logf = _bind("powf", 2), _bind("expf", 1), _bind("logf", 1)
_cosf, _sinf, _tanhf = _bind("cosf", 1), _bind("sinf", 1), _bind("tanhf", 1)


def powf(x, y) -> np.float32:
    """``powf(x, y)``: both arguments rounded to float32 first, as C would pass them."""
    return np.float32(_powf(np.float32(x), np.float32(y)))


def expf(x) -> np.float32:
    """``expf(x)`` of the C library."""
    return np.float32(_expf(np.float32(x)))


def logf(x) -> np.float32:
    """``logf(x)`` of the C library."""
    return np.float32(_logf(np.float32(x)))


def cosf(x) -> np.float32:
    """``cosf(x)`` of the C library."""
    return np.float32(_cosf(np.float32(x)))


def sinf(x) -> np.float32:
    """``sinf(x)`` of the C library."""
    return np.float32(_sinf(np.float32(x)))


def tanhf(x) -> np.float32:
    """``tanhf(x)`` of the C library."""
    return np.float32(_tanhf(np.float32(x)))


def rope_theta_scale(base: float, n_dims: int) -> np.float32:
    """RoPE's per-pair angle ratio as ggml computes it: ``powf(base, -2.0f / n_dims)``.

    ``-2.0f / n_dims`` is a float32 division (correctly rounded, the same on
    every CPU); the power is glibc's, never numpy's per-CPU float32 ``power``.
    """
    return powf(base, np.float32(-2.0) / np.float32(n_dims))


# --- array versions: Numba ufuncs over float32, each element one libm call ---------------------

@vectorize(["float32(float32)"], cache=True)
def exp_f32(x):
    """``expf`` element-wise (float32 in, float32 out)."""
    return math.exp(x)


@vectorize(["float32(float32)"], cache=True)
def log_f32(x):
    """``logf`` element-wise."""
    return math.log(x)


@vectorize(["float32(float32)"], cache=True)
def log2_f32(x):
    """``log2f`` element-wise."""
    return math.log2(x)


@vectorize(["float32(float32)"], cache=True)
def tanh_f32(x):
    """``tanhf`` element-wise."""
    return math.tanh(x)


@vectorize(["float32(float32)"], cache=True)
def cos_f32(x):
    """``cosf`` element-wise."""
    return math.cos(x)


@vectorize(["float32(float32)"], cache=True)
def sin_f32(x):
    """``sinf`` element-wise."""
    return math.sin(x)
