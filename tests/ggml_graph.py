"""ggml's own ops on numpy inputs, through ctypes: one small graph per call, on the CPU backend.

The oracle for the ``*_ggml`` mirrors at op level: build the op (or the few ops llama.cpp chains,
e.g. non-flash attention) in a fresh ``ggml_context``, copy the inputs into its tensors, run
``ggml_graph_compute_with_ctx`` (libggml-cpu, the same compiled kernels llama.cpp runs) and copy
the result out. Signatures follow llama-cpp-python 0.3.36's ``ggml.h`` / ``ggml-cpu.h``.

Layout: a ggml tensor ``[ne0, ne1, ne2]`` (``ne0`` fastest) is the C-contiguous numpy array of
shape ``(ne2, ne1, ne0)``; :meth:`Graph.tensor` reverses the shape for you.
"""

from __future__ import annotations

import ctypes

import numpy as np

from oracles import ggml_library, require_module

# enum ggml_type (ggml.h)
GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_I32 = 0, 1, 26
GGML_ROPE_TYPE_NORM, GGML_ROPE_TYPE_NEOX = 0, 2
_NP_TYPE = {np.dtype(np.float32): GGML_TYPE_F32, np.dtype(np.float16): GGML_TYPE_F16,
            np.dtype(np.int32): GGML_TYPE_I32}

P = ctypes.c_void_p
_F, _I, _I64 = ctypes.c_float, ctypes.c_int, ctypes.c_int64


class ggml_init_params(ctypes.Structure):  # passed BY VALUE to ggml_init
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", P), ("no_alloc", ctypes.c_bool)]


_SIGS = {  # name: (restype, argtypes), libggml-base
    "ggml_init": (P, [ggml_init_params]),
    "ggml_free": (None, [P]),
    "ggml_new_tensor_1d": (P, [P, _I, _I64]),
    "ggml_new_tensor_2d": (P, [P, _I, _I64, _I64]),
    "ggml_new_tensor_3d": (P, [P, _I, _I64, _I64, _I64]),
    "ggml_new_tensor_4d": (P, [P, _I, _I64, _I64, _I64, _I64]),
    "ggml_get_data": (P, [P]),
    "ggml_nbytes": (ctypes.c_size_t, [P]),
    "ggml_new_graph": (P, [P]),
    "ggml_build_forward_expand": (None, [P, P]),
    "ggml_rope_ext": (P, [P, P, P, P, _I, _I, _I, _F, _F, _F, _F, _F, _F]),
    "ggml_soft_max_ext": (P, [P, P, P, _F, _F]),
    "ggml_rms_norm": (P, [P, P, _F]),
    "ggml_mul": (P, [P, P, P]),
    "ggml_mul_mat": (P, [P, P, P]),
    "ggml_permute": (P, [P, P, _I, _I, _I, _I]),
    "ggml_cont": (P, [P, P]),
    "ggml_cont_2d": (P, [P, P, _I64, _I64]),
}
_CPU_SIGS = {  # libggml-cpu
    "ggml_cpu_init": (None, []),
    "ggml_graph_compute_with_ctx": (_I, [P, P, _I]),  # enum ggml_status: 0 = GGML_STATUS_SUCCESS
    "quantize_row_q8_0": (None, [P, P, _I64]),  # the AVX2 versions (arch/x86/quants.c)
    "quantize_row_q8_1": (None, [P, P, _I64]),
    "quantize_row_q8_K": (None, [P, P, _I64]),
    "ggml_quantize_mat_q8_K_4x8": (None, [P, P, _I64]),  # arch/x86/repack.cpp: 4 rows at a time
}


class _Libs:
    def __init__(self):
        llama_cpp = require_module("llama_cpp")
        # libggml-cpu links libggml-base by soname: loading base first (same path) makes both the
        # same instance, so contexts made by one are understood by the other
        self.base = ggml_library(llama_cpp, "libggml-base.so")
        self.cpu = ggml_library(llama_cpp, "libggml-cpu.so")
        for lib, sigs in ((self.base, _SIGS), (self.cpu, _CPU_SIGS)):
            for name, (res, args) in sigs.items():
                f = getattr(lib, name)
                f.restype, f.argtypes = res, args
                setattr(self, name.removeprefix("ggml_"), f)
        self.cpu_init()  # the fp16 -> fp32 tables the kernels read


_LIBS: _Libs | None = None


def libs() -> _Libs:
    """The bound ggml libraries (loaded once; a missing oracle fails under CI, skips elsewhere)."""
    global _LIBS
    if _LIBS is None:
        _LIBS = _Libs()
    return _LIBS


class Graph:
    """One ggml context (freed on exit) holding input tensors, one op chain and its work buffer."""

    def __init__(self, mem_size: int = 32 << 20):
        self.g = libs()
        self.ctx = self.g.init(ggml_init_params(mem_size, None, False))
        assert self.ctx, "ggml_init failed"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.g.free(self.ctx)
        self.ctx = None

    def tensor(self, a: np.ndarray) -> int:
        """A new tensor holding a copy of ``a`` (numpy shape reversed: ``(n2, n1, n0) -> [n0, n1, n2]``)."""
        a = np.ascontiguousarray(a)
        ne = a.shape[::-1]
        t = getattr(self.g, f"new_tensor_{len(ne)}d")(self.ctx, _NP_TYPE[a.dtype], *ne)
        assert self.g.nbytes(t) == a.nbytes
        ctypes.memmove(self.g.get_data(t), a.ctypes.data, a.nbytes)
        return t

    def compute(self, out: int, shape: tuple, dtype=np.float32, n_threads: int = 1) -> np.ndarray:
        """Run the graph ending in ``out`` (contiguous, numpy ``shape``) and return a copy of it."""
        gf = self.g.new_graph(self.ctx)
        self.g.build_forward_expand(gf, out)
        assert self.g.graph_compute_with_ctx(self.ctx, gf, n_threads) == 0
        res = np.empty(shape, dtype)
        assert self.g.nbytes(out) == res.nbytes
        ctypes.memmove(res.ctypes.data, self.g.get_data(out), res.nbytes)
        return res


def rope_ext(x: np.ndarray, positions: np.ndarray, n_dims: int, mode: int, freq_base: float,
             freq_scale: float = 1.0, ext_factor: float = 0.0, attn_factor: float = 1.0,
             n_ctx_orig: int = 0, beta_fast: float = 32.0, beta_slow: float = 1.0) -> np.ndarray:
    """``ggml_rope_ext`` (no freq factors) of ``x (n_tok, n_head, head_dim)`` float32 = ggml
    ``[head_dim, n_head, n_tok]``, ``positions (n_tok,)`` int32."""
    x = np.ascontiguousarray(x, np.float32)
    with Graph() as g:
        a, b = g.tensor(x), g.tensor(np.asarray(positions, np.int32))
        out = g.g.rope_ext(g.ctx, a, b, None, n_dims, mode, n_ctx_orig, freq_base, freq_scale,
                           ext_factor, attn_factor, beta_fast, beta_slow)
        return g.compute(out, x.shape)


def rms_norm(x: np.ndarray, eps: float, weight: np.ndarray | None = None) -> np.ndarray:
    """``ggml_rms_norm`` over the last axis of ``x (rows, n)`` float32, then ``ggml_mul`` by ``weight (n,)``."""
    x = np.ascontiguousarray(x, np.float32)
    with Graph() as g:
        out = g.g.rms_norm(g.ctx, g.tensor(x), eps)
        if weight is not None:
            out = g.g.mul(g.ctx, out, g.tensor(np.asarray(weight, np.float32)))
        return g.compute(out, x.shape)


def soft_max_ext(a: np.ndarray, mask: np.ndarray | None, scale: float, max_bias: float = 0.0) -> np.ndarray:
    """``ggml_soft_max_ext`` over the last axis of ``a (n_head, n_rows, n)`` float32; ``mask
    (n_rows, n)`` float32 or float16 (broadcast over heads) or None."""
    a = np.ascontiguousarray(a, np.float32)
    with Graph() as g:
        m = g.tensor(mask) if mask is not None else None
        out = g.g.soft_max_ext(g.ctx, g.tensor(a), m, scale, max_bias)
        return g.compute(out, a.shape)


def attention_no_flash(q: np.ndarray, k: np.ndarray, vt: np.ndarray, mask: np.ndarray, scale: float,
                       n_threads: int = 1) -> np.ndarray:
    """The graph ``llm_graph_context::build_attn_mha`` builds without flash attention (0.3.36)::

        q  (n_tok, n_head, d)       float32  = ggml [d, n_head, n_tok]  -> permute(0,2,1,3)
        k  (n_kv, n_kv_head, d)     float16  = the K cache view         -> permute(0,2,1,3)
        vt (n_kv_head, d_v, n_kv)   float16  = the transposed V cache, already [n_kv, d_v, n_kv_head]
        mask (n_tok, n_kv)          float32  (0 / -inf; F32 when flash attention is off)
        kq  = mul_mat(k, q)                         [n_kv, n_tok, n_head]
        kq  = soft_max_ext(kq, mask, scale, 0)
        kqv = mul_mat(vt, kq)                       [d_v, n_tok, n_head]
        out = cont_2d(permute(kqv, 0,2,1,3))        [n_head*d_v, n_tok]

    Returns ``(n_tok, n_head * d_v)`` float32."""
    n_tok, n_head, _ = q.shape
    d_v = vt.shape[1]
    with Graph() as g:
        gg = g.g
        tq = gg.permute(g.ctx, g.tensor(np.asarray(q, np.float32)), 0, 2, 1, 3)
        tk = gg.permute(g.ctx, g.tensor(np.asarray(k, np.float16)), 0, 2, 1, 3)
        kq = gg.mul_mat(g.ctx, tk, tq)
        kq = gg.soft_max_ext(g.ctx, kq, g.tensor(np.asarray(mask, np.float32)), scale, 0.0)
        kqv = gg.mul_mat(g.ctx, g.tensor(np.asarray(vt, np.float16)), kq)
        out = gg.cont_2d(g.ctx, gg.permute(g.ctx, kqv, 0, 2, 1, 3), n_head * d_v, n_tok)
        return g.compute(out, (n_tok, n_head * d_v), n_threads=n_threads)


SIZEOF_Q8 = {"q8_0": (32, 34), "q8_1": (32, 36), "q8_K": (256, 292)}


def quantize_row(kind: str, x: np.ndarray) -> np.ndarray:
    """ggml-cpu's ``quantize_row_{q8_0,q8_1,q8_K}`` of each row of ``x (rows, n)``: block bytes
    ``(rows, n/qk * block size)`` uint8."""
    qk, size = SIZEOF_Q8[kind]
    x = np.ascontiguousarray(np.atleast_2d(x), np.float32)
    out = np.zeros((x.shape[0], x.shape[1] // qk * size), np.uint8)
    f = getattr(libs(), f"quantize_row_{kind}")
    for r in range(x.shape[0]):
        f(x[r].ctypes.data, out[r].ctypes.data, x.shape[1])
    return out


def quantize_mat_q8_K_4x8(x: np.ndarray) -> np.ndarray:
    """``ggml_quantize_mat_q8_K_4x8`` of ``x (4, n)``: ``n/256`` block_q8_Kx4 of 4*292 bytes
    (``d[4]`` float32, ``qs[1024]`` int8, ``bsums[64]`` int16)."""
    x = np.ascontiguousarray(x, np.float32)
    assert x.shape[0] == 4
    out = np.zeros(x.shape[1] // 256 * 4 * 292, np.uint8)
    libs().quantize_mat_q8_K_4x8(x.ctypes.data, out.ctypes.data, x.shape[1])
    return out
