"""Transcendentals that give the same bits on every CPU.

ggml calls glibc's ``powf``/``cosf``/``sinf``/``expf``/``tanhf``; numpy's float32
ufuncs take a different SIMD kernel per CPU (baseline, AVX2, AVX-512) and round
differently. The oracle here is glibc itself, called through ctypes; and a child
process with numpy's dispatch switched off (``NPY_DISABLE_CPU_FEATURES``) and
Numba compiling for another target (``NUMBA_CPU_NAME=haswell``, fresh cache)
must compute the very same bits as this process.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numba import njit

from zigllama_lib.foundation import libm

GLIBC = ctypes.CDLL("libm.so.6")


def _glibc(name: str, n_args: int = 1):
    fn = getattr(GLIBC, name)
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float] * n_args
    return lambda *a: np.float32(fn(*(float(np.float32(v)) for v in a)))


def _sample(n: int = 4000) -> np.ndarray:
    rng = np.random.default_rng(7)
    return np.concatenate([rng.uniform(-10, 10, n), rng.uniform(-1e4, 1e4, n),  # large RoPE angles
                           rng.standard_normal(n) * 1e-3, [0.0, -0.0, 1e-30, 88.7, -103.0, 89.0]]).astype(np.float32)


@pytest.mark.parametrize("name, ufunc", [("expf", libm.exp_f32), ("tanhf", libm.tanh_f32),
                                         ("cosf", libm.cos_f32), ("sinf", libm.sin_f32)])
def test_array_functions_are_glibc_bit_for_bit(name, ufunc):
    x = _sample()
    ref = np.array([_glibc(name)(v) for v in x], np.float32)
    got = ufunc(x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


@njit(cache=True)
def _numba_math_f32(x, out):
    for i in range(x.shape[0]):
        out[0, i] = math.cos(x[i])
        out[1, i] = math.sin(x[i])
        out[2, i] = math.exp(x[i])
        out[3, i] = math.tanh(x[i])


def test_numba_math_on_float32_calls_glibc():
    """What the bit-exact kernels (ggml_math, fused_decode) rely on: ``math.cos`` of a float32 is ``cosf``."""
    x = _sample(1000)
    out = np.empty((4, len(x)), np.float32)
    _numba_math_f32(x, out)
    for row, name in enumerate(["cosf", "sinf", "expf", "tanhf"]):
        ref = np.array([_glibc(name)(v) for v in x], np.float32)
        np.testing.assert_array_equal(out[row].view(np.uint32), ref.view(np.uint32), err_msg=name)


def test_scalar_functions_are_glibc():
    x = _sample(300)
    for name in ["expf", "logf", "cosf", "sinf", "tanhf"]:
        ours = getattr(libm, name)
        for v in x[np.isfinite(x) & ((x > 0) | (name != "logf"))]:
            assert ours(v).view(np.uint32) == _glibc(name)(v).view(np.uint32), (name, v)


def test_rope_theta_scale_is_glibc_powf_and_correctly_rounded():
    powf = _glibc("powf", 2)
    # SmolLM2 (1e5, 64): glibc gives bits 1060283654; numpy's AVX-512 power gave ...655 (issue 12)
    assert libm.rope_theta_scale(100000.0, 64).view(np.uint32) == 1060283654
    for base in [10000.0, 100000.0, 500000.0, 1000000.0, 1e4 * 8, 150000.0]:
        for n_dims in [16, 32, 48, 64, 80, 96, 128, 256]:
            got = libm.rope_theta_scale(base, n_dims)
            assert got == powf(base, np.float32(-2.0) / np.float32(n_dims))
            exact = np.float32(base ** (float(np.float32(-2.0) / np.float32(n_dims))))  # double, rounded once
            assert got == exact, (base, n_dims)


CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from zigllama_lib.neural_primitives import apply_rope, rms_norm
    from zigllama_lib.neural_primitives.activations import gelu_tanh, silu
    from zigllama_lib.neural_primitives.ggml_math import geglu_ggml, rms_norm_ggml, rope_ggml, swiglu_ggml
    from zigllama_lib.transformer.attention import softmax
    rng = np.random.default_rng(11)
    x = rng.standard_normal((40, 3, 64)).astype(np.float32)
    pos = np.arange(1000, 1040)
    g = rng.standard_normal((40, 192)).astype(np.float32) * 3
    outs = {
        "rope_ggml": rope_ggml(x, pos, 64, 100000.0),
        "apply_rope": apply_rope(x, pos, 64, 100000.0, "neox"),
        "rms_norm_ggml": rms_norm_ggml(g, None, 1e-5),
        "swiglu_ggml": swiglu_ggml(g, g[::-1].copy()),
        "geglu_ggml": geglu_ggml(g, g[::-1].copy()),
        "silu": silu(g), "gelu_tanh": gelu_tanh(g), "softmax": softmax(g * 4),
    }
    if len(sys.argv) > 1:  # the whole model on the llama.cpp numerics: prefill and two decode steps
        import zigllama_lib as zl
        model = zl.load(sys.argv[1], n_ctx=64, progress=False)
        ids = model.tokenizer.encode("The capital of France is", add_special=True)
        outs["model_prefill"] = model.logits(ids, numerics="llama.cpp")
        outs["model_greedy"] = np.array(list(model.generate_ids(ids, max_tokens=6, temperature=0.0)), np.float32)
    print(json.dumps({k: np.ascontiguousarray(v, np.float32).view(np.uint32).ravel().tolist() for k, v in outs.items()}))
""")


def _run_child(env_extra: dict, args=()) -> dict:
    env = {**os.environ, **env_extra}
    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_results_do_not_depend_on_numpy_dispatch_or_numba_target(tmp_path, smollm_path):
    """numpy's SIMD kernels off and Numba compiling for Haswell (fresh cache): every bit the same.

    The control shows the hazard is real on this machine: numpy's own float32
    ``np.cos`` changes when its dispatch is switched off.
    """
    from numpy._core._multiarray_umath import __cpu_dispatch__

    native = _run_child({}, [smollm_path])
    baseline = _run_child({"NPY_DISABLE_CPU_FEATURES": " ".join(__cpu_dispatch__), "NUMBA_CPU_NAME": "haswell",
                           "NUMBA_CACHE_DIR": str(tmp_path / "numba")}, [smollm_path])
    assert native.keys() == baseline.keys()
    for key in native:
        assert native[key] == baseline[key], f"{key} depends on numpy's CPU dispatch or Numba's target"

    probe = "import numpy as np; x = np.arange(1, 20001, dtype=np.float32) * np.float32(0.37); print(np.cos(x).view(np.uint32).sum())"
    a = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    b = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                       env={**os.environ, "NPY_DISABLE_CPU_FEATURES": " ".join(__cpu_dispatch__)}).stdout
    from numpy._core._multiarray_umath import __cpu_features__
    if __cpu_features__.get("AVX2"):  # numpy has an AVX2 float32 cos; baseline SSE rounds differently
        assert a != b, "control: numpy's float32 cos no longer depends on dispatch (the hazard this test guards)"
