"""Where a forward pass spends its time: per operation, per matrix product, per kernel launch.

One decode step (1 token at position ``n_prompt``) and one prefill (``n_prompt``
tokens) are timed operation by operation, without touching the decoder's code:
:func:`profiling` hands ``Decoder.forward`` a :class:`Numerics` whose callables
(``matmul``, ``rms_norm``, ``rope``, ``attention``, ``swiglu``) are timed wrappers
of the real ones, replaces ``decoder.embed`` / ``decoder.activation`` and
``cache.store`` on the instances, and marks the residual stream ``h`` (and the
activated gate) as a :class:`_TimedOperand`, an ndarray whose ``+`` / ``*`` are
timed. Every wrapper calls the original function on the same (plain) arrays,
so the logits are bit for bit those of an unprofiled pass; everything is
restored on exit. The timed intervals never nest, so::

    total = sum_op t_op + t_other          (t_other: the Python glue left over)

A matrix product ``y = x W^T`` with ``W: (n_out, n_in)`` stored in a block
type (``block_size`` values in ``type_size`` bytes) reads and computes::

    bytes = n_out * n_in / block_size * type_size          (the GGUF tensor)
    FLOPs = 2 * n_tok * n_in * n_out                       (a multiply and an add per weight and token)

A decode step (``n_tok = 1``) does 2 FLOPs per weight, 3.2 per byte of Q4_1
(5 bits per weight): far too few to keep the cores busy, so memory bandwidth
B bounds it, and ``tok/s <= B / sum(bytes)`` is its ceiling.

Numba kernel calls are counted by patching the ``zigllama_lib`` modules' jitted
functions (the Python-level calls: each call of a ``parallel=True`` kernel is
at least one fork/join of the thread pool; the number of ``prange`` loops and
array fills in its source estimates how many).

Measured
--------
SmolLM2-135M Q4_1, 2 threads, 2-core AMD EPYC VM (figures drift by ~30% through a day)::

    zigllama profile --threads 2 --n-prompt 128 --n-decode 32 --reps 3 --numerics llama.cpp

    decode step at position 128: 9.5 ms (fused; 21.2 ms timed op by op, unfused)
    prefill 128 tokens: 0.64 s; decode latency p50 9.8 ms at 2 threads (97 tok/s), 14.4 ms at 1
    read bandwidth 11.1 GB/s (1 thread), 21.1 GB/s (2); weights 96.4 MB per token:
    decode ceiling 219 tok/s, we reach 44%

(2026-11-23; earlier that day, in one of the machine's slow hours, the same command
measured 17.7 ms per step and 16.0 GB/s: compare engines only within one
``zigllama bench --vs llama.cpp`` run.)

The "parallel kernel calls" row counts the unfused path (332 regions); the fused
step of :mod:`..models.fused_decode` launches 5 per layer plus the output head
(151 for SmolLM2). (Before the SIMD kernels, stop 6: 80-89 ms per step, 6.5-6.9 s
per prefill on these numerics; the float numerics 36-39 ms and 1.39 s.)

A float prefill runs numpy's BLAS single-threaded (``foundation.threads``):
with OpenBLAS's own threads spinning against Numba's on two cores it took 1.39 s
(stop 6, above); the same command now measures 0.68 s. When another process competes for the cores, every parallel
region can wait a scheduler time slice (~8 ms) for its second thread: a decode
step then takes far longer, and 1 thread can be faster than 2.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import statistics
import sys
import textwrap
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np

from ..foundation.bandwidth import dot_flops, parallel_launch_seconds, read_bandwidth
from ..foundation.errors import ConfigError
from ..foundation.ggml_types import BLOCK_GEOMETRY
from ..foundation.threads import get_threads, set_threads
from ..linear_algebra import QMatrix
from ..linear_algebra.ggml_simd import SUPPORTED as SIMD_TYPES
from ..linear_algebra.matmul import KQUANTS, LEGACY, PREFILL_TOKENS
from ..models.decoder import Decoder, Numerics, numerics_named
from ..transformer.kv_cache import KVCache
from .bench import _bench_prompt

MATMUL_KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "output")
OPS = ("embedding",) + MATMUL_KINDS + ("rms_norm", "rope", "kv_store", "attention", "swiglu", "residual_add")
OTHER = "other"  # total minus the timed operations: Python glue (reshapes, checks, loops, the wrappers)
_LAYER_MATRIX_KIND = {"wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output",
                      "w_gate": "ffn_gate", "w_up": "ffn_up", "w_down": "ffn_down"}


# -- bytes and FLOPs of a product ------------------------------------------------------------
def weight_bytes(w: QMatrix) -> int:
    """Bytes of ``W: (n_out, n_in)`` in its GGUF type: ``n_out * n_in / block_size * type_size``."""
    block_size, type_size = BLOCK_GEOMETRY[w.qtype]
    return w.n_out * (w.n_in // block_size) * type_size


def matmul_flops(w: QMatrix, n_tok: int) -> int:
    """FLOPs of ``x (n_tok, n_in) @ W.T``: ``2 * n_tok * n_in * n_out``."""
    return 2 * n_tok * w.n_in * w.n_out


def kernel_weight_bytes(w: QMatrix, numerics: str, n_tok: int) -> int:
    """Bytes of the weight arrays the kernel actually streams (mirrors the dispatch of the two numerics).

    ``"llama.cpp"`` on Q4_1 / Q5_0 / Q8_0: the GGUF rows themselves (``ggml_simd`` reads
    them in place); other quantised types with fewer than ``PREFILL_TOKENS``
    tokens: :meth:`QMatrix.packed`'s int8 planes; otherwise the GGUF rows. Builds
    the planes if they do not exist yet.
    """
    if numerics == "llama.cpp" and w.qtype in SIMD_TYPES:
        return int(w.raw.nbytes)
    if n_tok < PREFILL_TOKENS and (w.qtype in LEGACY or w.qtype in KQUANTS):
        planes = w.packed()
    else:
        return int(w.raw.nbytes)
    return int(sum(p.nbytes for p in planes))


def matmul_kinds(decoder: Decoder) -> dict[int, str]:
    """``id(QMatrix) -> kind`` for every weight matrix a forward pass multiplies by."""
    kinds = {id(decoder.output): "output"}
    for lw in decoder.layers:
        for attr, kind in _LAYER_MATRIX_KIND.items():
            kinds[id(getattr(lw, attr))] = kind
    return kinds


def matrices_by_kind(decoder: Decoder) -> dict[str, list[QMatrix]]:
    """The matrices of each kind (``n_layer`` per block kind, one output head)."""
    out: dict[str, list[QMatrix]] = {k: [] for k in MATMUL_KINDS}
    for lw in decoder.layers:
        for attr, kind in _LAYER_MATRIX_KIND.items():
            out[kind].append(getattr(lw, attr))
    out["output"].append(decoder.output)
    return out


# -- timing ----------------------------------------------------------------------------------
class OpClock:
    """Seconds and calls per operation, accumulated over one forward pass."""

    def __init__(self):
        self.seconds = dict.fromkeys(OPS, 0.0)
        self.calls = dict.fromkeys(OPS, 0)
        self.tokens = dict.fromkeys(MATMUL_KINDS, 0)  # rows of x in the largest product of each kind
        # rows of x over all products of each kind: a last-token-only pass runs its last layer on one row
        self.rows = dict.fromkeys(MATMUL_KINDS, 0)

    def add(self, op: str, seconds: float) -> None:
        self.seconds[op] += seconds
        self.calls[op] += 1

    def timed(self, op: str, fn: Callable) -> Callable:
        """``fn`` with its wall time added to ``op``; arguments are passed on as plain arrays."""
        def run(*args, **kwargs):
            args = [_plain(a) for a in args]
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.add(op, time.perf_counter() - t0)
            return out
        return run


def _plain(a):
    return a.view(np.ndarray) if isinstance(a, _TimedOperand) else a


class _TimedOperand(np.ndarray):
    """An ndarray whose ``+`` and ``*`` are timed into ``clock[op]``.

    The residual stream ``h`` is one (``keep``: sums stay timed operands, so
    every ``h = h + a`` is timed); so is the activated gate (``act(gate) * up``).
    The arithmetic is numpy's own ``np.add`` / ``np.multiply`` on plain views.
    """

    clock: OpClock | None = None
    op: str = ""
    keep: bool = False

    def __array_finalize__(self, obj):
        self.clock = getattr(obj, "clock", None)
        self.op = getattr(obj, "op", "")
        self.keep = getattr(obj, "keep", False)

    def _timed(self, ufunc, other, reflected: bool):
        a, b = self.view(np.ndarray), _plain(other)
        t0 = time.perf_counter()
        out = ufunc(b, a) if reflected else ufunc(a, b)
        self.clock.add(self.op, time.perf_counter() - t0)
        return _mark(out, self.clock, self.op, self.keep) if self.keep else out

    def __add__(self, other):
        return self._timed(np.add, other, False)

    def __radd__(self, other):
        return self._timed(np.add, other, True)

    def __mul__(self, other):
        return self._timed(np.multiply, other, False)

    def __rmul__(self, other):
        return self._timed(np.multiply, other, True)


_ABSENT = object()


def _mark(a: np.ndarray, clock: OpClock, op: str, keep: bool) -> _TimedOperand:
    t = a.view(_TimedOperand)
    t.clock, t.op, t.keep = clock, op, keep
    return t


@contextmanager
def profiling(decoder: Decoder, numerics: Numerics, cache: KVCache, clock: OpClock) -> Iterator[Numerics]:
    """Yield a timed copy of ``numerics``: ``decoder.forward(ids, cache, timed)`` then fills ``clock``.

    Replaces ``decoder.embed``, ``decoder.activation`` and ``cache.store`` on
    the instances for the duration of the block, and restores them after. The
    fused decode step is switched off meanwhile: its operations run inside one
    compiled call, invisible to these wrappers (its results are the same bits).
    """
    kinds = matmul_kinds(decoder)

    def matmul(w, x):
        x = _plain(x)
        t0 = time.perf_counter()
        y = numerics.matmul(w, x)
        kind = kinds[id(w)]
        clock.add(kind, time.perf_counter() - t0)
        clock.tokens[kind] = max(clock.tokens[kind], len(x))  # x: (n_tok, n_in); the head sees only the last token
        clock.rows[kind] += len(x)
        return y

    timed = dataclasses.replace(
        numerics, matmul=matmul, rms_norm=clock.timed("rms_norm", numerics.rms_norm),
        rope=clock.timed("rope", numerics.rope), attention=clock.timed("attention", numerics.attention),
        swiglu=None if numerics.swiglu is None else clock.timed("swiglu", numerics.swiglu))
    saved = [(obj, attr, vars(obj).get(attr, _ABSENT)) for obj, attr in
             ((decoder, "embed"), (decoder, "activation"), (cache, "store"))]
    embed, activation, store = decoder.embed, decoder.activation, cache.store

    def timed_embed(ids):
        t0 = time.perf_counter()
        h = embed(ids)
        clock.add("embedding", time.perf_counter() - t0)
        return _mark(h, clock, "residual_add", keep=True)  # (n_tok, d_model): every h + a is timed

    def timed_activation(gate):
        t0 = time.perf_counter()
        a = activation(_plain(gate))
        clock.add("swiglu", time.perf_counter() - t0)
        return _mark(a, clock, "swiglu", keep=False)  # act(gate) * up is timed too

    decoder.embed = timed_embed
    decoder.activation = timed_activation
    cache.store = clock.timed("kv_store", store)
    fused, decoder.fused_decode = decoder.fused_decode, False
    try:
        yield timed
    finally:
        decoder.fused_decode = fused
        for obj, attr, value in saved:
            if value is _ABSENT:
                delattr(obj, attr)  # the class's method shows through again
            else:
                setattr(obj, attr, value)


# -- Numba kernel calls ----------------------------------------------------------------------
@dataclasses.dataclass
class KernelStats:
    """Python-level calls of one jitted function during a forward pass."""

    name: str  # module.function
    parallel: bool
    regions_per_call: int  # estimated fork/joins per call (0 for serial kernels)
    calls: int = 0
    seconds: float = 0.0


def parallel_regions(dispatcher) -> int:
    """Estimated parallel regions per call of a Numba kernel, from its source.

    Outermost ``prange`` loops, plus array creations that Numba turns into
    parallel fills (``np.zeros``, ``np.ones``, ``np.full``, ``np.arange``) outside
    them; 0 for a kernel compiled without ``parallel=True``.
    """
    if dispatcher in _REGIONS:
        return _REGIONS[dispatcher]
    if not dispatcher.targetoptions.get("parallel"):
        return _REGIONS.setdefault(dispatcher, 0)
    tree = ast.parse(textwrap.dedent(inspect.getsource(dispatcher.py_func)))
    fills = {"zeros", "ones", "full", "arange"}

    def count(node, inside: bool) -> int:
        n = 0
        for child in ast.iter_child_nodes(node):
            is_prange = (isinstance(child, ast.For) and isinstance(child.iter, ast.Call)
                         and getattr(child.iter.func, "id", getattr(child.iter.func, "attr", "")) == "prange")
            is_fill = (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                       and child.func.attr in fills)
            if not inside and (is_prange or is_fill):
                n += 1
            n += count(child, inside or is_prange)
        return n

    return _REGIONS.setdefault(dispatcher, count(tree, False))


_REGIONS: dict = {}  # dispatcher -> parallel_regions(dispatcher)


def _jitted_functions() -> list[tuple[object, str, object]]:
    """(module, attribute, dispatcher) for every Numba-jitted function bound in a zigllama_lib module."""
    from numba.core.registry import CPUDispatcher

    found = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "zigllama_lib" or name.startswith("zigllama_lib.")):
            continue
        for attr, obj in list(vars(module).items()):
            if isinstance(obj, CPUDispatcher) and obj.targetoptions.get("inline") != "always":
                found.append((module, attr, obj))
    return found


@contextmanager
def counting_kernels() -> Iterator[dict[str, KernelStats]]:
    """Count and time the Python-level calls of every jitted ``zigllama_lib`` function in the block.

    The module globals are swapped for counting wrappers and restored on exit.
    Run it only after a warm-up pass: a kernel compiled inside the block would
    see a wrapper where it expects a jitted callee.
    """
    stats: dict[str, KernelStats] = {}
    patched = []
    for module, attr, d in _jitted_functions():
        key = f"{d.py_func.__module__.rsplit('.', 1)[-1]}.{d.py_func.__name__}"
        if key not in stats:
            stats[key] = KernelStats(key, bool(d.targetoptions.get("parallel")), parallel_regions(d))

        def run(*args, _d=d, _s=stats[key], **kwargs):
            t0 = time.perf_counter()
            out = _d(*args, **kwargs)
            _s.seconds += time.perf_counter() - t0
            _s.calls += 1
            return out

        setattr(module, attr, run)
        patched.append((module, attr, d))
    try:
        yield stats
    finally:
        for module, attr, d in patched:
            setattr(module, attr, d)


# -- one step, many reps ---------------------------------------------------------------------
@dataclasses.dataclass
class StepProfile:
    """Per-operation times of one forward pass shape, over ``reps`` repetitions (seconds)."""

    phase: str  # "decode" or "prefill"
    numerics: str
    n_threads: int
    n_tok: int
    position: int  # cache.n_past before the pass
    seconds: dict[str, list[float]]  # op -> one value per rep
    calls: dict[str, int]  # op -> calls per pass
    matmul_tokens: dict[str, int]  # matmul kind -> rows of x per product (output head: 1 unless all logits)
    totals: list[float]  # profiled pass, per rep
    unprofiled: list[float]  # the same pass without any wrapper, per rep
    kernels: dict[str, KernelStats]  # jitted functions called in the pass (median seconds over the reps)
    matmul_rows: dict[str, int] = dataclasses.field(default_factory=dict)  # kind -> rows of x over the pass

    def median(self, op: str) -> float:
        return statistics.median(self.seconds[op])

    @property
    def total(self) -> float:
        return statistics.median(self.totals)

    @property
    def other(self) -> float:
        """Median total minus the sum of the operations' medians."""
        return self.total - sum(self.median(op) for op in OPS)

    def others(self) -> list[float]:
        """``other`` of each rep (never negative: the timed intervals are disjoint parts of the pass)."""
        return [t - sum(self.seconds[op][i] for op in OPS) for i, t in enumerate(self.totals)]

    def rows(self) -> list[tuple[str, int | None, float, float]]:
        """(operation, calls, seconds, share of the total) for every op, then ``other``; sums to ``total``."""
        out = [(op, self.calls[op], self.median(op), self.median(op) / self.total) for op in OPS]
        return out + [(OTHER, None, self.other, self.other / self.total)]

    def to_dict(self) -> dict:
        return {"phase": self.phase, "numerics": self.numerics, "n_threads": self.n_threads, "n_tok": self.n_tok,
                "position": self.position, "total_s": self.total, "unprofiled_s": statistics.median(self.unprofiled),
                "reps": len(self.totals),
                "matmul_tokens": self.matmul_tokens,
                "ops": [{"op": op, "calls": c, "seconds": s, "share": f} for op, c, s, f in self.rows()],
                "seconds_per_rep": {**self.seconds, "total": self.totals, "unprofiled": self.unprofiled},
                "kernels": [dataclasses.asdict(k) for k in self.kernels.values() if k.calls]}


def profile_step(decoder: Decoder, numerics: str, ids, cache: KVCache, reps: int = 5,
                 phase: str = "decode") -> StepProfile:
    """Time ``decoder.forward(ids, cache)`` ``reps`` times from the cache's current position.

    Each rep runs an unprofiled pass and then a profiled one, both from the same
    ``cache.n_past`` (reset after each pass, so every rep sees the same cache).
    The unprofiled pass is the production path (for one token with the llama.cpp
    numerics: the fused step of :mod:`..models.fused_decode`); the profiled pass
    runs the generic layer-by-layer path, the only one whose operations can be
    timed one by one (same results, bit for bit).
    The first pass at this shape should already have run (compilation, weight packing).
    """
    if not isinstance(reps, int) or reps < 1:
        raise ConfigError(f"reps must be a positive integer, got {reps!r}")
    nm = numerics_named(numerics)
    ids = list(ids)
    start = cache.n_past
    seconds: dict[str, list[float]] = {op: [] for op in OPS}
    totals, unprofiled = [], []
    clock = OpClock()
    kernel_reps: list[dict[str, KernelStats]] = []
    for rep in range(reps):
        t0 = time.perf_counter()
        decoder.forward(ids, cache, nm)
        unprofiled.append(time.perf_counter() - t0)
        cache.n_past = start
        clock = OpClock()
        with profiling(decoder, nm, cache, clock) as timed, counting_kernels() as kernels:
            t0 = time.perf_counter()
            decoder.forward(ids, cache, timed)
            totals.append(time.perf_counter() - t0)
        kernel_reps.append({k: v for k, v in kernels.items() if v.calls})
        cache.n_past = start
        for op in OPS:
            seconds[op].append(clock.seconds[op])
    # calls: the same every rep; seconds: the median over the reps
    kernels = {name: dataclasses.replace(k, seconds=statistics.median(r[name].seconds for r in kernel_reps
                                                                      if name in r))
               for name, k in kernel_reps[-1].items()}
    return StepProfile(phase, nm.name, get_threads(), len(ids), start, seconds, dict(clock.calls),
                       dict(clock.tokens), totals, unprofiled, kernels, matmul_rows=dict(clock.rows))


def profile_decode(decoder: Decoder, numerics: str, prompt, reps: int = 5) -> StepProfile:
    """One decode step: the token after ``prompt`` at position ``len(prompt)``, ``reps`` times."""
    nm = numerics_named(numerics)
    cache = decoder.new_cache(len(prompt) + 2, nm)
    logits = decoder.forward(prompt, cache, nm)
    token = int(np.argmax(logits[-1]))
    decoder.forward([token], cache, nm)  # warm-up at this shape
    cache.n_past = len(prompt)
    return profile_step(decoder, numerics, [token], cache, reps, "decode")


def profile_prefill(decoder: Decoder, numerics: str, prompt, reps: int = 5) -> StepProfile:
    """A prefill of ``prompt`` into an empty cache, ``reps`` times (after one warm-up pass)."""
    nm = numerics_named(numerics)
    cache = decoder.new_cache(len(prompt), nm)
    decoder.forward(prompt, cache, nm)  # warm-up at this shape
    cache.n_past = 0
    return profile_step(decoder, numerics, prompt, cache, reps, "prefill")


def decode_latencies(decoder: Decoder, numerics: str, prompt, n_decode: int) -> np.ndarray:
    """Seconds of each forward pass of a greedy decode of ``n_decode`` tokens after ``prompt``: (n_decode,)."""
    if not isinstance(n_decode, int) or n_decode < 1:
        raise ConfigError(f"n_decode must be a positive integer, got {n_decode!r}")
    nm = numerics_named(numerics)
    cache = decoder.new_cache(len(prompt) + n_decode, nm)
    token = int(np.argmax(decoder.forward(prompt, cache, nm)[-1]))
    out = np.empty(n_decode)
    for i in range(n_decode):
        t0 = time.perf_counter()
        logits = decoder.forward([token], cache, nm)
        out[i] = time.perf_counter() - t0
        token = int(np.argmax(logits[-1]))
    return out


def latency_summary(seconds: np.ndarray) -> dict:
    """tok/s (tokens / total time) and the p50 / p90 / p99 per-token latency in seconds."""
    p50, p90, p99 = np.percentile(seconds, [50, 90, 99])
    return {"n_tokens": len(seconds), "tok_s": len(seconds) / float(np.sum(seconds)),
            "p50_s": float(p50), "p90_s": float(p90), "p99_s": float(p99)}


# -- matrix products against the machine -----------------------------------------------------
def matmul_table(decoder: Decoder, step: StepProfile) -> list[dict]:
    """Per kind: type, shape, matrices per pass, bytes (GGUF and streamed), FLOPs, time, GB/s, GFLOP/s."""
    rows = []
    for kind, mats in matrices_by_kind(decoder).items():
        w, n_tok = mats[0], step.matmul_tokens[kind]
        gguf = sum(weight_bytes(m) for m in mats)
        streamed = sum(kernel_weight_bytes(m, step.numerics, n_tok) for m in mats)
        rows_total = step.matmul_rows.get(kind)
        flops = (2 * rows_total * w.n_in * w.n_out if rows_total is not None  # the rows each product really had
                 else sum(matmul_flops(m, n_tok) for m in mats))
        t = step.median(kind)
        rows.append({"kind": kind, "type": w.qtype.name, "n_out": w.n_out, "n_in": w.n_in, "count": len(mats),
                     "n_tok": n_tok,
                     "gguf_bytes": gguf, "kernel_bytes": streamed, "flops": flops, "seconds": t,
                     "gb_s": gguf / t / 1e9, "gflop_s": flops / t / 1e9, "flop_per_byte": flops / gguf})
    return rows


def decode_ceiling(bandwidth: float, weight_bytes_per_token: int, tok_s: float) -> dict:
    """``ceiling = bandwidth / weight bytes per token`` (tok/s) and the fraction ``tok_s`` reaches of it."""
    ceiling = bandwidth / weight_bytes_per_token
    return {"bandwidth_b_s": bandwidth, "weight_bytes_per_token": weight_bytes_per_token,
            "ceiling_tok_s": ceiling, "tok_s": tok_s, "fraction": tok_s / ceiling}


def machine_figures(n_threads: int) -> dict:
    """Read bandwidth, L1 dot-product FLOP/s and the empty-region launch cost, per thread count 1..n_threads."""
    counts = sorted({1, n_threads})
    return {"bandwidth_b_s": {str(k): read_bandwidth(k) for k in counts},
            "dot_flop_s": {str(k): dot_flops(k) for k in counts},
            "launch_s": {str(k): parallel_launch_seconds(k) for k in counts}}


def run(model, n_prompt: int = 128, n_decode: int = 64, reps: int = 5, numerics: str = "llama.cpp",
        n_threads: int | None = None) -> dict:
    """The whole profile as a JSON-able dict: machine, decode and prefill steps, products, latencies, ceiling."""
    for name, v in (("n_prompt", n_prompt), ("n_decode", n_decode), ("reps", reps)):
        if not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    nm = numerics_named(numerics).name
    before = get_threads()
    n_threads = set_threads(n_threads)
    try:
        dec = model.decoder
        prompt = _bench_prompt(model.tokenizer, n_prompt)
        machine = machine_figures(n_threads)
        decode = profile_decode(dec, nm, prompt, reps)
        prefill = profile_prefill(dec, nm, prompt, reps)
        latency = {}
        for k in sorted({1, n_threads}):
            set_threads(k)
            latency[str(k)] = latency_summary(decode_latencies(dec, nm, prompt, n_decode))
        set_threads(n_threads)
    finally:
        set_threads(before)
    decode_mm, prefill_mm = matmul_table(dec, decode), matmul_table(dec, prefill)
    parallel_calls = sum(k.calls for k in decode.kernels.values() if k.parallel)
    regions = sum(k.calls * k.regions_per_call for k in decode.kernels.values())
    bw = machine["bandwidth_b_s"][str(n_threads)]
    gguf = sum(r["gguf_bytes"] for r in decode_mm)
    streamed = sum(r["kernel_bytes"] for r in decode_mm)
    tok_s = latency[str(n_threads)]["tok_s"]
    return {
        "model": str(model.path), "numerics": nm, "n_threads": n_threads, "n_prompt": n_prompt,
        "n_decode": n_decode, "reps": reps, "machine": machine,
        "decode": decode.to_dict(), "prefill": prefill.to_dict(),
        "decode_matmuls": decode_mm, "prefill_matmuls": prefill_mm,
        "decode_parallel_calls": parallel_calls, "decode_parallel_regions": regions,
        "latency": latency,
        "ceiling": decode_ceiling(bw, gguf, tok_s),
        "ceiling_kernel_bytes": decode_ceiling(bw, streamed, tok_s),
    }


# -- text ------------------------------------------------------------------------------------
def _step_table(step: dict) -> list[str]:
    lines = [f"{step['phase']}: {step['n_tok']} token(s) at position {step['position']}, numerics {step['numerics']}, "
             f"{step['n_threads']} thread(s), median of {step['reps']}: {step['total_s'] * 1e3:.2f} ms profiled, "
             f"{step['unprofiled_s'] * 1e3:.2f} ms unprofiled",
             "", "| operation | calls | ms | % of step |", "|---|---:|---:|---:|"]
    for r in step["ops"]:
        calls = "" if r["calls"] is None else str(r["calls"])
        lines.append(f"| {r['op']} | {calls} | {r['seconds'] * 1e3:.3f} | {100 * r['share']:.1f} |")
    lines.append(f"| total | | {step['total_s'] * 1e3:.3f} | 100.0 |")
    return lines


def _matmul_lines(rows: list[dict]) -> list[str]:
    lines = ["| matmul | type | n_out x n_in | tokens | count | MB (GGUF) | MB (kernel) | MFLOP | ms | GB/s | GFLOP/s "
             "| FLOP/B |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['type']} | {r['n_out']} x {r['n_in']} | {r['n_tok']} | {r['count']} | "
                     f"{r['gguf_bytes'] / 1e6:.2f} | {r['kernel_bytes'] / 1e6:.2f} | {r['flops'] / 1e6:.1f} | "
                     f"{r['seconds'] * 1e3:.3f} | {r['gb_s']:.2f} | {r['gflop_s']:.2f} | {r['flop_per_byte']:.1f} |")
    return lines


def _kernel_lines(kernels: list[dict]) -> list[str]:
    lines = ["| Numba kernel | parallel | regions/call (est.) | calls | ms |", "|---|---|---:|---:|---:|"]
    for k in sorted(kernels, key=lambda k: -k["seconds"]):
        lines.append(f"| {k['name']} | {'yes' if k['parallel'] else 'no'} | {k['regions_per_call']} | "
                     f"{k['calls']} | {k['seconds'] * 1e3:.3f} |")
    return lines


def ceiling_statement(c: dict, what: str = "GGUF weight bytes") -> str:
    return (f"decode ceiling = bandwidth / weight bytes per token = {c['bandwidth_b_s'] / 1e9:.1f} GB/s / "
            f"{c['weight_bytes_per_token'] / 1e6:.1f} MB ({what}) = {c['ceiling_tok_s']:.0f} tok/s; "
            f"we reach {100 * c['fraction']:.0f}% ({c['tok_s']:.1f} tok/s)")


def format_report(result: dict) -> str:
    """The tables and the ceiling statement of a :func:`run` result, as markdown text."""
    m = result["machine"]
    per_k = lambda d, unit, scale: ", ".join(f"{v * scale:.1f} {unit} ({k} thr.)" for k, v in d.items())  # noqa: E731
    lines = [f"model {result['model']}, numerics {result['numerics']}, {result['n_threads']} thread(s)", "",
             f"memory read bandwidth (256 MiB, best of 5): {per_k(m['bandwidth_b_s'], 'GB/s', 1e-9)}",
             f"L1 dot-product peak: {per_k(m['dot_flop_s'], 'GFLOP/s', 1e-9)}",
             f"empty parallel region: {per_k(m['launch_s'], 'us', 1e6)}", ""]
    lines += _step_table(result["decode"]) + [""] + _matmul_lines(result["decode_matmuls"]) + [""]
    lines += _kernel_lines(result["decode"]["kernels"])
    launch = m["launch_s"][str(result["n_threads"])]
    lines += ["", f"parallel kernel calls per decode step: {result['decode_parallel_calls']} "
                  f"(~{result['decode_parallel_regions']} parallel regions; at {launch * 1e6:.1f} us each when idle: "
                  f"{result['decode_parallel_regions'] * launch * 1e3:.2f} ms per step)", ""]
    lines += _step_table(result["prefill"]) + [""] + _matmul_lines(result["prefill_matmuls"]) + [""]
    lines += _kernel_lines(result["prefill"]["kernels"])
    lines += ["", f"decode latency over {result['n_decode']} greedy tokens after {result['n_prompt']} prompt tokens:",
              "", "| threads | tok/s | p50 ms | p90 ms | p99 ms |", "|---:|---:|---:|---:|---:|"]
    for k, s in result["latency"].items():
        lines.append(f"| {k} | {s['tok_s']:.1f} | {s['p50_s'] * 1e3:.2f} | {s['p90_s'] * 1e3:.2f} | "
                     f"{s['p99_s'] * 1e3:.2f} |")
    lines += ["", ceiling_statement(result["ceiling"]),
              ceiling_statement(result["ceiling_kernel_bytes"], "bytes our kernels stream")]
    return "\n".join(lines)


__all__ = ["OPS", "OTHER", "MATMUL_KINDS", "weight_bytes", "matmul_flops", "kernel_weight_bytes", "OpClock",
           "profiling", "counting_kernels", "parallel_regions", "StepProfile", "profile_step", "profile_decode",
           "profile_prefill", "decode_latencies", "latency_summary", "matmul_table", "decode_ceiling",
           "machine_figures", "run", "format_report", "ceiling_statement"]
