"""One matrix product at a time: our SIMD kernels against ggml's ``mul_mat`` on the same bytes.

``zigllama bench`` times whole forward passes; when a ratio there moves, this says which weight
type moved it. For each distinct ``(type, shape)`` among one layer's matrices (``blk.0.*``) it
times ``y = x W^T`` for ``n_tok`` tokens of float32 activations (standard normal, seeded):

* ours: :func:`..linear_algebra.ggml_simd.matmul_simd` (8-bit activation quantisation included);
* ggml: a graph of ``ggml_mul_mat`` nodes on the same weight bytes, run by
  ``ggml_graph_compute_with_ctx`` from a llama.cpp build's own ``libggml-cpu`` (in a child
  process, so a native build and the pinned one never share a process). Its ``mul_mat`` converts
  the activations to 8 bits inside the op, so both sides do the same work.

Each timing is the best of ``reps`` runs of ``copies`` products (ggml: ``copies`` nodes in one
graph, so its thread start-up is shared as in a model's graph), per product; rounds alternate
ours / ggml and the ratio reported is the median of the per-round ratios (``ggml ms / ours ms``:
above 1 we are faster). ``max |diff|`` compares the two outputs: 0.0 where our kernel mirrors the
kernel ggml runs here.

One caveat, by construction: ggml's plain CPU buffer is not llama.cpp's ``CPU_REPACK`` buffer, so
here Q4_K (and Q4_0, IQ4_NL) runs ggml's ``vec_dot`` path, not the repacked ``gemm_q4_K_8x8_q8_K``
the model loader picks; our prefill mirrors the repacked kernel's float order, so for Q4_K the
difference is a few ulps, not 0.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from ..foundation.errors import ConfigError
from ..foundation.ggml_types import GGMLType
from ..foundation.gguf import GGUFFile
from ..foundation.threads import get_threads, set_threads
from ..linear_algebra import QMatrix
from ..linear_algebra.ggml_simd import SUPPORTED, matmul_simd
from ..models.registry import resolve as resolve_model
from . import llama_cpp_builds

# The child: ggml's mul_mat through ctypes on the weight bytes named in the payload.
_GGML_CHILD = r"""
import ctypes, json, pathlib, sys, time
import numpy as np
import llama_cpp
p = json.load(sys.stdin)
lib = pathlib.Path(llama_cpp.__file__).parent / "lib"
base = ctypes.CDLL(str(lib / "libggml-base.so"))  # first: libggml-cpu links it by soname
cpu = ctypes.CDLL(str(lib / "libggml-cpu.so"))
P, I64 = ctypes.c_void_p, ctypes.c_int64
class InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", P), ("no_alloc", ctypes.c_bool)]
for name, res, args in (("ggml_init", P, [InitParams]), ("ggml_free", None, [P]),
                        ("ggml_new_tensor_2d", P, [P, ctypes.c_int, I64, I64]), ("ggml_get_data", P, [P]),
                        ("ggml_nbytes", ctypes.c_size_t, [P]), ("ggml_new_graph", P, [P]),
                        ("ggml_build_forward_expand", None, [P, P]), ("ggml_mul_mat", P, [P, P, P])):
    f = getattr(base, name); f.restype, f.argtypes = res, args
cpu.ggml_graph_compute_with_ctx.restype, cpu.ggml_graph_compute_with_ctx.argtypes = ctypes.c_int, [P, P, ctypes.c_int]
cpu.ggml_cpu_init()
data = np.memmap(p["gguf"], dtype=np.uint8, mode="r")
results = []
for case in p["cases"]:
    raw = np.ascontiguousarray(data[case["offset"]:case["offset"] + case["n_bytes"]])
    x = np.random.default_rng(p["seed"]).standard_normal((p["n_tok"], case["n_in"])).astype(np.float32)
    ctx = base.ggml_init(InitParams(p["copies"] * (raw.nbytes + x.nbytes * 2 + 4 * p["n_tok"] * case["n_out"]) + (16 << 20), None, False))
    outs = []
    for _ in range(p["copies"]):
        w = base.ggml_new_tensor_2d(ctx, case["ggml_type"], case["n_in"], case["n_out"])
        assert base.ggml_nbytes(w) == raw.nbytes
        ctypes.memmove(base.ggml_get_data(w), raw.ctypes.data, raw.nbytes)
        xt = base.ggml_new_tensor_2d(ctx, 0, case["n_in"], p["n_tok"])
        ctypes.memmove(base.ggml_get_data(xt), x.ctypes.data, x.nbytes)
        outs.append(base.ggml_mul_mat(ctx, w, xt))
    graph = base.ggml_new_graph(ctx)
    for o in outs:
        base.ggml_build_forward_expand(graph, o)
    best = float("inf")
    for _ in range(p["reps"] + 1):  # the first run warms caches and pages
        t0 = time.perf_counter()
        assert cpu.ggml_graph_compute_with_ctx(ctx, graph, p["threads"]) == 0
        best = min(best, (time.perf_counter() - t0) / p["copies"])
    y = np.ctypeslib.as_array(ctypes.cast(base.ggml_get_data(outs[0]), ctypes.POINTER(ctypes.c_float)),
                              shape=(p["n_tok"] * case["n_out"],)).copy()
    np.save(case["out"], y.reshape(p["n_tok"], case["n_out"]))
    results.append(best)
    base.ggml_free(ctx)
print(json.dumps({"seconds": results}))
"""


def layer_cases(gguf: GGUFFile, layer: int = 0) -> list[dict]:
    """One case per distinct ``(type, n_out, n_in)`` among layer ``layer``'s matrices our kernels take."""
    seen, cases = set(), []
    for name in sorted(gguf.tensors):
        info = gguf.info(name)
        if not name.startswith(f"blk.{layer}.") or len(info.shape) != 2 or info.ggml_type not in SUPPORTED:
            continue
        n_in, n_out = int(info.shape[0]), int(info.shape[1])
        key = (info.ggml_type, n_out, n_in)
        if key not in seen:
            seen.add(key)
            cases.append({"name": name, "ggml_type": int(info.ggml_type), "n_in": n_in, "n_out": n_out,
                          "offset": int(info.offset), "n_bytes": int(info.n_bytes)})
    if not cases:
        raise ConfigError(f"layer {layer} has no matrix of a type our SIMD kernels take ({[t.name for t in SUPPORTED]})")
    return cases


def _time_ours(w: QMatrix, x: np.ndarray, copies: int, reps: int) -> tuple[float, np.ndarray]:
    """Best over ``reps`` (after one warm-up) of ``copies`` products, per product; and the product."""
    y = matmul_simd(w, x)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(copies):
            y = matmul_simd(w, x)
        best = min(best, (time.perf_counter() - t0) / copies)
    return best, y


def run(model: str, n_tok: int = 128, rounds: int = 3, reps: int = 5, copies: int = 8, n_threads: int | None = None,
        llama_cpp: str = "auto", layer: int = 0, seed: int = 0, types: set[str] | None = None) -> dict:
    """Time every case of :func:`layer_cases` (optionally only ``types``, e.g. ``{"Q5_0"}``), ours then ggml,
    ``rounds`` times; returns the cases with per-round seconds, medians, ratios and ``max_abs_diff``."""
    import tempfile

    for label, v in (("n_tok", n_tok), ("rounds", rounds), ("reps", reps), ("copies", copies)):
        if int(v) < 1:
            raise ConfigError(f"bench-kernels: {label} must be at least 1, got {v}")
    path = resolve_model(model)
    gguf = GGUFFile(str(path))
    types = None if types is None else {t.upper() for t in types}
    cases = [c for c in layer_cases(gguf, layer) if types is None or GGMLType(c["ggml_type"]).name in types]
    if not cases:
        raise ConfigError(f"no matrix of types {sorted(types or [])} in layer {layer}")
    build = llama_cpp_builds.resolve(llama_cpp)
    before = get_threads()
    threads = set_threads(n_threads)
    rng_x = {c["name"]: np.random.default_rng(seed).standard_normal((n_tok, c["n_in"])).astype(np.float32) for c in cases}
    with tempfile.TemporaryDirectory() as tmp:
        for i, c in enumerate(cases):
            c["out"] = f"{tmp}/ggml_{i}.npy"
            c["ours_s"], c["ggml_s"] = [], []
        child_keys = ("ggml_type", "n_in", "n_out", "offset", "n_bytes", "out")
        payload = {"gguf": str(path), "cases": [{k: c[k] for k in child_keys} for c in cases], "n_tok": n_tok,
                   "seed": seed, "copies": copies, "reps": reps, "threads": threads}
        try:
            for _ in range(rounds):
                for c in cases:
                    w = QMatrix(gguf.tensor_bytes(c["name"]).reshape(c["n_out"], -1), GGMLType(c["ggml_type"]), c["n_in"])
                    seconds, c["_ours_y"] = _time_ours(w, rng_x[c["name"]], copies, reps)
                    c["ours_s"].append(seconds)
                for c, seconds in zip(cases, llama_cpp_builds.run_child(build, _GGML_CHILD, payload)["seconds"]):
                    c["ggml_s"].append(seconds)
            for c in cases:
                ref = np.load(c.pop("out"))
                c["max_abs_diff"] = float(np.max(np.abs(c.pop("_ours_y") - ref)))
        finally:
            set_threads(before)
    for c in cases:
        c["type"] = GGMLType(c["ggml_type"]).name
        c["ours_ms"] = 1e3 * statistics.median(c["ours_s"])
        c["ggml_ms"] = 1e3 * statistics.median(c["ggml_s"])
        c["ratios"] = [g / o for g, o in zip(c["ggml_s"], c["ours_s"])]  # per round: ggml ms / ours ms
        c["ratio"] = statistics.median(c["ratios"])
        flops = 2.0 * n_tok * c["n_in"] * c["n_out"]
        c["ours_gflops"], c["ggml_gflops"] = flops / c["ours_ms"] / 1e6, flops / c["ggml_ms"] / 1e6
    return {"model": str(path), "n_tok": n_tok, "threads": threads, "rounds": rounds, "reps": reps, "copies": copies,
            "llama_cpp": build.name, "cases": cases}


def format_table(result: dict) -> str:
    """Markdown: one row per case, ratio = ggml ms / ours ms (above 1: ours faster)."""
    lines = [f"{result['n_tok']} tokens, {result['threads']} threads, llama.cpp build: {result['llama_cpp']}; "
             f"medians of {result['rounds']} interleaved rounds (each the best of {result['reps']} x {result['copies']} products)",
             "",
             "| matrix | type | n_out x n_in | ours ms | ggml ms | ours GFLOP/s | ggml GFLOP/s | ggml / ours (rounds) | max abs diff |",
             "|---|---|---|---:|---:|---:|---:|---|---:|"]
    for c in result["cases"]:
        span = f"{min(c['ratios']):.2f}-{max(c['ratios']):.2f}"
        lines.append(f"| {c['name']} | {c['type']} | {c['n_out']} x {c['n_in']} | {c['ours_ms']:.3f} | {c['ggml_ms']:.3f} | "
                     f"{c['ours_gflops']:.1f} | {c['ggml_gflops']:.1f} | **{c['ratio']:.2f}** ({span}) | {c['max_abs_diff']:.3g} |")
    lines.append("")
    lines.append("ggml runs its plain CPU buffer (no CPU_REPACK): Q4_K takes its vec_dot path there, while our prefill "
                 "follows the repacked gemm's float order, hence Q4_K's few-ulp difference.")
    return "\n".join(lines)
