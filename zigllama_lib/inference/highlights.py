"""The seed's "Performance Highlights" table, measured on a real model.

    zigllama bench --highlights [--model M] [--threads T] [--only kv,kernels,memory,mmap,batch,combined]
                                [--json F] [--markdown F]

One row per optimisation the seed (ZigLlama's documentation) claims a figure for,
each measured here on the GGUF file, next to the claim:

* ``kv``: KV cache vs recomputation -- ``n_tokens`` greedy tokens after an
  8-token prompt, with the cache (prefill once, then one token per step) vs a
  fresh cache and the whole prefix recomputed at every step; both must give
  the same tokens;
* ``kernels``: ``y = W x`` for a real layer matrix in its GGUF type: pure
  Python loops over the block bytes (a few rows timed, scaled to all rows),
  numpy (``dequantize_reference`` then ``W @ x``, every call), and the
  library's Numba kernels (``matmul(w, x, "float")`` and each decoder
  numerics' product, e.g. ``matmul_ggml``); all must agree numerically;
* ``memory``: bytes of the tensors in the file vs the same parameters in F32;
* ``mmap``: opening the file memory-mapped (``GGUFFile``: header parsed, data
  left on disk until touched) vs reading the whole file into RAM
  (``np.fromfile``) plus the same header parse. The file is in the page cache
  (it was just read), so both times are warm-cache times; from a cold disk
  the read costs the disk's transfer time, the mapping does not;
* ``batch``: prefill tokens/s (a batch of ``n_prompt`` tokens in one forward)
  vs decode tokens/s (one token per forward): the seed batches requests, we
  batch a prompt's tokens, and the reason it pays is the same -- each weight
  read from memory serves many tokens;
* ``combined``: our decode tokens/s vs a naive engine: the same decoder driven
  by numpy only (weights dequantised with ``dequantize_reference`` at every
  product, float32 maths) with no KV cache (the prefix recomputed per token),
  timed over a few tokens.

Times are medians of ``reps`` unless a row says otherwise; the machine is shared,
so ratios in one run are what count.
"""

from __future__ import annotations

import dataclasses
import statistics
import struct
import time
from pathlib import Path

import numpy as np

from ..foundation.errors import ConfigError
from ..foundation.ggml_types import GGMLType
from ..foundation.gguf import GGUFFile
from ..foundation.threads import available_cores
from ..linear_algebra import QMatrix, dequantize_reference, matmul
from ..models.decoder import NUMERICS, Numerics, numerics_named
from .bench import (_bench_prompt, _check_positive, _load_note, bench_ours, default_numerics, load_average,
                    machine_info, rss_now)

ROWS = ("kv", "kernels", "memory", "mmap", "batch", "combined")

# The seed's figures (ZigLlama docs, "Performance Highlights" / "Performance Summary" / "Key Statistics").
SEED_CLAIMS = {
    "kv": "KV caching: 20x speedup, 50% memory reduction; ~100x per-token speedup for long sequences",
    "kernels": "SIMD vectorisation: 3-5x (scalar vs SIMD Zig)",
    "memory": "K-quantisation (Q4_K): 87% memory reduction; IQ1_S: 95%",
    "mmap": "Memory mapping: 10x load time, 90% memory reduction",
    "batch": "Batch processing: 5-10x throughput",
    "combined": "Combined: ~400x over naive implementation, ~95% memory reduction",
}


def _median_time(fn, reps: int) -> tuple[float, object]:
    """Median wall time of ``reps`` calls of ``fn`` and the last result."""
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


# -- (a) KV cache vs recomputation ------------------------------------------------------------
def kv_cache_vs_recompute(model, numerics: str, n_tokens: int = 32, n_prompt: int = 8) -> dict:
    """Greedy ``n_tokens`` after ``n_prompt`` prompt tokens, with the KV cache and recomputing the prefix.

    ``*_step_s[i]``: the time to token ``i`` (cached: step 0 is the prefill, then one token per
    forward; recompute: a forward over the prompt and the ``i`` tokens before). ``last_step_speedup``
    compares the last step, where recomputation is costliest.
    """
    _check_positive(n_tokens=n_tokens, n_prompt=n_prompt)
    nm, dec = numerics_named(numerics), model.decoder
    prompt = _bench_prompt(model.tokenizer, n_prompt)
    warm = dec.new_cache(n_prompt + 1, nm)
    dec.forward(prompt, warm, nm)
    dec.forward(prompt[:1], warm, nm)

    cached_tokens, cached_steps = [], []  # step i: the forward that yields token i (step 0: the prefill)
    cache = dec.new_cache(n_prompt + n_tokens, nm)
    for i in range(n_tokens):
        t0 = time.perf_counter()
        logits = dec.forward(prompt if i == 0 else [cached_tokens[-1]], cache, nm)
        cached_tokens.append(int(np.argmax(logits[-1])))
        cached_steps.append(time.perf_counter() - t0)

    seq, recompute_tokens, recompute_steps = list(prompt), [], []
    for _ in range(n_tokens):
        t0 = time.perf_counter()
        fresh = dec.new_cache(len(seq), nm)  # no cache carried over: every step starts from nothing
        token = int(np.argmax(dec.forward(seq, fresh, nm)[-1]))
        recompute_steps.append(time.perf_counter() - t0)
        recompute_tokens.append(token)
        seq.append(token)

    cached_s, recompute_s = sum(cached_steps), sum(recompute_steps)
    return {"numerics": numerics, "n_prompt": n_prompt, "n_tokens": n_tokens,
            "cached_s": cached_s, "recompute_s": recompute_s, "speedup": recompute_s / cached_s,
            "last_step_speedup": recompute_steps[-1] / cached_steps[-1],
            "cached_step_s": cached_steps, "recompute_step_s": recompute_steps,
            "tokens_cached": cached_tokens, "tokens_recompute": recompute_tokens,
            "same_tokens": cached_tokens == recompute_tokens}


# -- (b) naive kernels vs Numba -----------------------------------------------------------------
def _f16(b: bytes, o: int) -> float:
    return struct.unpack_from("<e", b, o)[0]


def _block_q4_0(b, o):  # d f16, qs[16]: low nibbles -> 0..15, high -> 16..31; (q - 8) d
    d, qs = _f16(b, o), b[o + 2:o + 18]
    return [((q & 15) - 8) * d for q in qs] + [((q >> 4) - 8) * d for q in qs]


def _block_q4_1(b, o):  # d, m f16, qs[16]: q d + m
    d, m, qs = _f16(b, o), _f16(b, o + 2), b[o + 4:o + 20]
    return [(q & 15) * d + m for q in qs] + [(q >> 4) * d + m for q in qs]


def _q5(qs, qh, j, hi):  # the 5-bit quant j (+16 if hi) of a Q5 block: 4 bits from qs, the 5th from qh
    low = (qs[j] >> 4) if hi else (qs[j] & 15)
    return low | (((qh >> (j + 16 * hi)) & 1) << 4)


def _block_q5_0(b, o):  # d f16, qh u32 (5th bits), qs[16]: (q - 16) d
    d, qh, qs = _f16(b, o), int.from_bytes(b[o + 2:o + 6], "little"), b[o + 6:o + 22]
    return [(_q5(qs, qh, j, hi) - 16) * d for hi in (0, 1) for j in range(16)]


def _block_q5_1(b, o):  # d, m f16, qh u32, qs[16]: q d + m
    d, m, qh, qs = _f16(b, o), _f16(b, o + 2), int.from_bytes(b[o + 4:o + 8], "little"), b[o + 8:o + 24]
    return [_q5(qs, qh, j, hi) * d + m for hi in (0, 1) for j in range(16)]


def _block_q8_0(b, o):  # d f16, qs int8[32]: q d
    d = _f16(b, o)
    return [(q - 256 if q > 127 else q) * d for q in b[o + 2:o + 34]]


# type -> (bytes per block of 32 weights, block decoder)
_PURE_PYTHON = {GGMLType.Q4_0: (18, _block_q4_0), GGMLType.Q4_1: (20, _block_q4_1), GGMLType.Q5_0: (22, _block_q5_0),
                GGMLType.Q5_1: (24, _block_q5_1), GGMLType.Q8_0: (34, _block_q8_0)}


def naive_matvec(raw: np.ndarray, qtype: GGMLType, x: np.ndarray) -> np.ndarray:
    """``y = W x`` in pure Python: each row's blocks decoded from their bytes, summed in Python floats.

    ``raw``: (n_rows, row_bytes) uint8 of a legacy type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0); ``x``: (n_in,).
    """
    if qtype not in _PURE_PYTHON:
        raise ConfigError(f"no pure-Python kernel for {GGMLType(qtype).name}; have {[t.name for t in _PURE_PYTHON]}")
    size, block = _PURE_PYTHON[qtype]
    xs = [float(v) for v in np.asarray(x, dtype=np.float32)]
    out = []
    for row in np.asarray(raw):
        b = row.tobytes()
        total = 0.0
        for k in range(len(b) // size):
            w = block(b, k * size)
            xb = xs[32 * k:32 * k + 32]
            for j in range(32):
                total += w[j] * xb[j]
        out.append(total)
    return np.array(out, dtype=np.float32)


def _layer_matrix(model) -> tuple[str, QMatrix]:
    """A block-0 weight matrix in a type the pure-Python kernel reads (ffn_up first)."""
    lw = model.decoder.layers[0]
    candidates = [("ffn_up", lw.w_up), ("ffn_gate", lw.w_gate), ("attn_q", lw.wq), ("ffn_down", lw.w_down),
                  ("attn_output", lw.wo), ("attn_k", lw.wk), ("attn_v", lw.wv)]
    for name, w in candidates:
        if w.qtype in _PURE_PYTHON:
            return f"blk.0.{name}.weight", w
    raise ConfigError(f"{model.path}: no block-0 matrix in {[t.name for t in _PURE_PYTHON]}; "
                      f"types are {sorted({w.qtype.name for _, w in candidates})}")


def kernels(model, reps: int = 5, n_rows_python: int = 16) -> dict:
    """Time ``y = W x`` on a real block-0 matrix: pure Python (``n_rows_python`` rows, scaled), numpy, Numba."""
    _check_positive(reps=reps, n_rows_python=n_rows_python)
    name, w = _layer_matrix(model)
    tok = model.tokenizer.encode(" Paris", add_special=False)[0]
    x = model.decoder.embed(np.array([tok]))[0]  # (n_in,) a real activation: an embedding row
    if x.shape[0] != w.n_in:  # e.g. ffn_down takes d_ff inputs: use a deterministic vector instead
        x = np.random.default_rng(0).standard_normal(w.n_in).astype(np.float32)
    n_rows_python = min(n_rows_python, w.n_out)

    y_float = matmul(w, x, "float")  # warm-up (compile / load kernels, pack planes)
    t_float, y_float = _median_time(lambda: matmul(w, x, "float"), max(reps, 20))
    t_py, y_py = _median_time(lambda: naive_matvec(w.raw[:n_rows_python], w.qtype, x), min(reps, 3))
    t_np, y_np = _median_time(lambda: dequantize_reference(w.raw, w.qtype) @ x, reps)
    scale = float(np.abs(y_float).max())
    timings = {f"pure Python ({n_rows_python} of {w.n_out} rows, scaled)": t_py * w.n_out / n_rows_python,
               "numpy (dequantize_reference, then W @ x)": t_np,
               "Numba matmul(w, x, 'float')": t_float}
    max_diff = {"pure Python": float(np.abs(y_py - y_float[:n_rows_python]).max()),
                "numpy": float(np.abs(y_np - y_float).max())}
    for nname, nm in NUMERICS.items():
        nm.matmul(w, x[None])  # warm-up
        t, y = _median_time(lambda nm=nm: nm.matmul(w, x[None])[0], max(reps, 20))
        timings[f"Numba, decoder numerics {nname!r}"] = t
        max_diff[f"numerics {nname!r}"] = float(np.abs(y - y_float).max())
    fastest = min(v for k, v in timings.items() if k.startswith("Numba"))
    return {"matrix": name, "qtype": w.qtype.name, "shape": list(w.shape), "n_rows_python": n_rows_python,
            "seconds": timings, "max_abs_diff_vs_float_kernel": max_diff, "max_abs_y": scale,
            "speedup_vs_python": timings[next(iter(timings))] / fastest,
            "speedup_vs_numpy": t_np / fastest}


# -- (c) quantised vs F32 bytes -----------------------------------------------------------------
def memory(gguf: GGUFFile) -> dict:
    """Bytes of every tensor as stored vs as F32 (4 bytes per parameter)."""
    stored = sum(i.n_bytes for i in gguf.tensors.values())
    n_params = sum(i.n_elements for i in gguf.tensors.values())
    types: dict[str, int] = {}
    for i in gguf.tensors.values():
        types[i.ggml_type.name] = types.get(i.ggml_type.name, 0) + i.n_elements
    return {"n_params": n_params, "stored_bytes": stored, "f32_bytes": 4 * n_params,
            "reduction": 1 - stored / (4 * n_params), "bits_per_weight": 8 * stored / n_params,
            "params_by_type": types}


# -- (d) mmap vs read -------------------------------------------------------------------------
def mmap_vs_read(path, reps: int = 3) -> dict:
    """``GGUFFile(path)`` (memory-mapped) vs ``np.fromfile`` of the whole file + the same header parse.

    ``rss_growth_bytes``: growth of this process's resident set while the opened file is held;
    ``data_only``: ``np.memmap`` vs ``np.fromfile`` of the file, without the header parse (the
    GGUF metadata, e.g. a 49k-entry vocabulary, costs the same either way).
    """
    _check_positive(reps=reps)
    path = str(path)

    def opened_mmap():
        before = rss_now().get("VmRSS", 0)
        t0 = time.perf_counter()
        f = GGUFFile(path)
        t = time.perf_counter() - t0
        return t, rss_now().get("VmRSS", 0) - before, f

    def opened_read():
        before = rss_now().get("VmRSS", 0)
        t0 = time.perf_counter()
        data = np.fromfile(path, dtype=np.uint8)  # the whole file, copied into RAM
        f = GGUFFile(path)  # the same header parse
        t = time.perf_counter() - t0
        return t, rss_now().get("VmRSS", 0) - before, (f, data)

    mm = [opened_mmap()[:2] for _ in range(reps)]
    rd = [opened_read()[:2] for _ in range(reps)]
    t_mm, t_rd = statistics.median(t for t, _ in mm), statistics.median(t for t, _ in rd)
    # the data alone, without the header parse both share
    t_map_data, _ = _median_time(lambda: np.memmap(path, dtype=np.uint8, mode="r"), reps)
    t_read_data, _ = _median_time(lambda: np.fromfile(path, dtype=np.uint8), reps)
    return {"file_bytes": Path(path).stat().st_size, "mmap_s": t_mm, "read_s": t_rd, "speedup": t_rd / t_mm,
            "data_only": {"memmap_s": t_map_data, "fromfile_s": t_read_data, "speedup": t_read_data / t_map_data},
            "mmap_rss_growth_bytes": int(statistics.median(g for _, g in mm)),
            "read_rss_growth_bytes": int(statistics.median(g for _, g in rd)),
            "page_cache": "warm (the file was read before); a cold disk adds its transfer time to read, not mmap"}


# -- (e) prefill vs decode throughput -------------------------------------------------------------
def batch_throughput(model, numerics: str, n_prompt: int = 64, n_decode: int = 32, reps: int = 3) -> dict:
    """Prefill (``n_prompt`` tokens per forward) vs decode (one token per forward) tokens/s."""
    pre, dcd = bench_ours(model, n_prompt, n_decode, reps, numerics)
    return {"numerics": numerics, "n_prompt": n_prompt, "n_decode": n_decode, "reps": reps,
            "prefill_tok_s": pre.median, "decode_tok_s": dcd.median, "speedup": pre.median / dcd.median,
            "prefill": pre.summary(), "decode": dcd.summary()}


# -- (f) our engine vs a naive one ----------------------------------------------------------------
def _naive_matmul(w: QMatrix, x: np.ndarray) -> np.ndarray:
    """Dequantise the whole matrix with numpy (every call), then ``x @ W.T``."""
    return np.asarray(x, dtype=np.float32) @ dequantize_reference(w.raw, w.qtype).T


NAIVE = dataclasses.replace(NUMERICS["float"], name="naive", matmul=_naive_matmul)
"""The float numerics (numpy RMSNorm, RoPE, attention) with a numpy dequantise-per-product matmul."""


def naive_generate(model, prompt: list[int], n_tokens: int,
                   numerics: Numerics = NAIVE) -> tuple[list[int], list[float]]:
    """Greedy tokens with no KV cache (the whole prefix recomputed each step); returns tokens and step times."""
    dec, seq, tokens, steps = model.decoder, list(prompt), [], []
    for _ in range(n_tokens):
        t0 = time.perf_counter()
        token = int(np.argmax(dec.forward(seq, dec.new_cache(len(seq), numerics), numerics)[-1]))
        steps.append(time.perf_counter() - t0)
        tokens.append(token)
        seq.append(token)
    return tokens, steps


def combined(model, decode_tok_s: float, numerics: str, n_tokens: int = 3, n_prompt: int = 8) -> dict:
    """Our decode tokens/s (measured elsewhere, ``decode_tok_s``) vs the naive engine over ``n_tokens``."""
    _check_positive(n_tokens=n_tokens, n_prompt=n_prompt)
    prompt = _bench_prompt(model.tokenizer, n_prompt)
    tokens, steps = naive_generate(model, prompt, n_tokens)
    naive_tok_s = n_tokens / sum(steps)
    return {"numerics": numerics, "n_prompt": n_prompt, "n_tokens": n_tokens, "naive_step_s": steps,
            "naive_tokens": tokens, "naive_tok_s": naive_tok_s, "ours_decode_tok_s": decode_tok_s,
            "speedup": decode_tok_s / naive_tok_s}


# -- the table ----------------------------------------------------------------------------------
def run(model, n_threads: int | None = None, numerics: str | None = None, only=ROWS, n_kv: int = 32,
        n_naive: int = 3, n_prompt: int = 64, n_decode: int = 32, reps: int = 3, command: str | None = None,
        row_command=None) -> dict:
    """Measure the rows in ``only`` (see :data:`ROWS`); returns a JSON-able dict.

    ``model``: registry name, ``.gguf`` path or a loaded :class:`LanguageModel`.
    ``row_command(row)``, if given, returns the command that reproduces one row.
    """
    from .engine import LanguageModel, load

    only = tuple(only)
    unknown = [r for r in only if r not in ROWS]
    if unknown or not only:
        raise ConfigError(f"unknown highlight rows {unknown}; expected some of {list(ROWS)}")
    numerics = numerics or default_numerics()
    numerics_named(numerics)
    _check_positive(n_kv=n_kv, n_naive=n_naive, n_prompt=n_prompt, n_decode=n_decode, reps=reps)
    n_threads = n_threads or available_cores()
    machine = machine_info(n_threads)
    if not isinstance(model, LanguageModel):
        model = load(model, n_threads=n_threads, numerics=numerics, progress=False)
    rows = {}
    if "kv" in only:
        rows["kv"] = kv_cache_vs_recompute(model, numerics, n_kv)
    if "kernels" in only:
        rows["kernels"] = kernels(model, reps)
    if "memory" in only:
        rows["memory"] = memory(model.gguf)
    if "mmap" in only:
        rows["mmap"] = mmap_vs_read(model.path, reps)
    if "batch" in only or "combined" in only:
        batch = batch_throughput(model, numerics, n_prompt, n_decode, reps)
        if "batch" in only:
            rows["batch"] = batch
        if "combined" in only:
            rows["combined"] = combined(model, batch["decode_tok_s"], numerics, n_naive)
    for key, r in rows.items():
        r["seed_claim"] = SEED_CLAIMS[key]
        r["command"] = row_command(key) if row_command else None
    machine["load_average_end"] = load_average()
    return {"command": command, "machine": machine, "model": str(model.path), "numerics": numerics,
            "n_threads": n_threads, "reps": reps, "rows": rows}


def _ours(key: str, r: dict) -> tuple[str, str]:
    """(what was measured, the measured figure) for one row."""
    if key == "kv":
        same = "same tokens" if r["same_tokens"] else "**tokens differ**"
        return (f"{r['n_tokens']} greedy tokens after {r['n_prompt']}: cache vs prefix recomputed each step "
                f"({same})",
                f"{r['speedup']:.1f}x ({r['recompute_s']:.2f} s vs {r['cached_s']:.2f} s); last step "
                f"{r['last_step_speedup']:.1f}x")
    if key == "kernels":
        s = r["seconds"]
        first = next(iter(s))
        times = "; ".join(f"{k} {v * 1e3:.3g} ms" for k, v in s.items())
        return (f"y = W x, {r['matrix']} {r['qtype']} {r['shape'][0]}x{r['shape'][1]}: {times}",
                f"fastest Numba {r['speedup_vs_python']:.0f}x vs {first.split(' (')[0]}, "
                f"{r['speedup_vs_numpy']:.1f}x vs numpy")
    if key == "memory":
        return (f"{r['n_params'] / 1e6:.0f} M parameters: file tensors vs F32",
                f"{r['stored_bytes'] / 1e6:.0f} MB vs {r['f32_bytes'] / 1e6:.0f} MB: {100 * r['reduction']:.0f}% "
                f"smaller ({r['bits_per_weight']:.2f} bits/weight)")
    if key == "mmap":
        d = r["data_only"]
        return (f"open {r['file_bytes'] / 1e6:.0f} MB: GGUFFile (mmap + header parse) vs np.fromfile + the same "
                f"parse; data alone: np.memmap vs np.fromfile; page cache warm",
                f"{r['speedup']:.1f}x ({r['mmap_s'] * 1e3:.1f} ms vs {r['read_s'] * 1e3:.1f} ms), RSS growth "
                f"{r['mmap_rss_growth_bytes'] / 1e6:.1f} MB vs {r['read_rss_growth_bytes'] / 1e6:.0f} MB; data alone "
                f"{d['speedup']:.0f}x ({d['memmap_s'] * 1e3:.2f} ms vs {d['fromfile_s'] * 1e3:.1f} ms)")
    if key == "batch":
        return (f"prefill of {r['n_prompt']} tokens per forward vs decode, 1 per forward",
                f"{r['speedup']:.1f}x ({r['prefill_tok_s']:.0f} vs {r['decode_tok_s']:.0f} tok/s)")
    if key == "combined":
        return (f"our decode vs naive (numpy, dequantise per product, no KV cache), {r['n_tokens']} tokens "
                f"after {r['n_prompt']}",
                f"{r['speedup']:.0f}x ({r['ours_decode_tok_s']:.0f} vs {r['naive_tok_s']:.2f} tok/s)")
    raise KeyError(key)


def format_markdown(result: dict) -> str:
    """The highlights table: optimisation, what was measured, our figure, the seed's claim, the command."""
    mc = result["machine"]
    parts = []
    if result.get("command"):
        parts.append(f"```\n{result['command']}\n```\n")
    parts.append(f"{Path(result['model']).name}, numerics `{result['numerics']}`, {result['n_threads']} threads, "
                 f"median of {result['reps']} reps. Machine: {mc['cpu']}, {mc['n_cores_available']} cores; "
                 f"numba {mc['numba']}; {mc['date']}. {_load_note(mc)}\n")
    names = {"kv": "KV cache", "kernels": "Numba kernels", "memory": "Quantised weights", "mmap": "Memory mapping",
             "batch": "Batched tokens", "combined": "Combined"}
    lines = ["| optimisation | what we measured | ours | seed's claim | command |", "|---|---|---|---|---|"]
    for key, r in result["rows"].items():
        what, ours = _ours(key, r)
        cmd = f"`{r['command']}`" if r.get("command") else "-"
        lines.append(f"| {names[key]} | {what} | {ours} | {r['seed_claim']} | {cmd} |")
    parts.append("\n".join(lines))
    return "\n".join(parts) + "\n"


__all__ = ["ROWS", "SEED_CLAIMS", "NAIVE", "run", "format_markdown", "kv_cache_vs_recompute", "kernels",
           "naive_matvec", "memory", "mmap_vs_read", "batch_throughput", "naive_generate", "combined"]
