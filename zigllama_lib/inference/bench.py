"""Benchmarks: prefill and decode tokens/s, ours and (optionally) llama.cpp's, in one run.

Prefill: a prompt of ``n_prompt`` tokens in one forward pass (fresh cache).
Decode: ``n_decode`` greedy tokens, one forward pass each, after a short prompt.
Each is repeated ``reps`` times; we report the median and the min-max range.
When llama-cpp-python is installed, the same measurements are made on the
same file with the same thread count, and the ratio ours / llama.cpp printed.
Absolute figures drift on shared machines; the ratio in one run is what counts.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..models.decoder import numerics_named


@dataclass
class Measurement:
    engine: str
    phase: str  # "prefill" or "decode"
    n_tokens: int
    seconds: list[float] = field(default_factory=list)

    @property
    def tok_per_s(self) -> list[float]:
        return [self.n_tokens / s for s in self.seconds]

    @property
    def median(self) -> float:
        return statistics.median(self.tok_per_s)

    def summary(self) -> dict:
        t = self.tok_per_s
        return {"engine": self.engine, "phase": self.phase, "n_tokens": self.n_tokens,
                "median_tok_s": self.median, "min_tok_s": min(t), "max_tok_s": max(t), "reps": len(t)}


def _bench_prompt(tokenizer, n_tokens: int) -> list[int]:
    """A deterministic prompt of exactly ``n_tokens`` ids (English text, repeated as needed)."""
    text = ("The history of computing is a story of people finding ways to make machines do arithmetic "
            "faster, and then finding new problems that need even more arithmetic. ")
    ids: list[int] = []
    while len(ids) < n_tokens:
        ids += tokenizer.encode(text, add_special=False)
    return ids[:n_tokens]


def bench_ours(model, n_prompt: int, n_decode: int, reps: int, numerics: str = "llama.cpp") -> list[Measurement]:
    nm = numerics_named(numerics)
    dec = model.decoder
    prompt = _bench_prompt(model.tokenizer, n_prompt)
    short = prompt[:8]
    # warm-up: compile / page in weights
    cache = dec.new_cache(n_prompt + n_decode + 8, nm)
    dec.forward(short, cache, nm)
    dec.forward(short[:1], cache, nm)
    pre = Measurement("zigllama", "prefill", n_prompt)
    dcd = Measurement("zigllama", "decode", n_decode)
    for _ in range(reps):
        cache = dec.new_cache(n_prompt + 1, nm)
        t0 = time.perf_counter()
        dec.forward(prompt, cache, nm)
        pre.seconds.append(time.perf_counter() - t0)
    for _ in range(reps):
        cache = dec.new_cache(len(short) + n_decode + 1, nm)
        token = int(np.argmax(dec.forward(short, cache, nm)[-1]))
        t0 = time.perf_counter()
        for _ in range(n_decode):
            token = int(np.argmax(dec.forward([token], cache, nm)[-1]))
        dcd.seconds.append(time.perf_counter() - t0)
    return [pre, dcd]


def _last_logits(llama_cpp, llm) -> np.ndarray:
    """llama.cpp's logits of the last evaluated token, (n_vocab,) (a view into its buffer)."""
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))


def bench_llama_cpp(path: str, tokenizer, n_prompt: int, n_decode: int, reps: int, n_threads: int) -> list[Measurement]:
    import llama_cpp

    n_ctx = max(n_prompt, 8 + n_decode) + 16
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=max(512, n_prompt), n_threads=n_threads,
                          n_threads_batch=n_threads, verbose=False)
    prompt = _bench_prompt(tokenizer, n_prompt)
    short = prompt[:8]
    llm.reset()
    llm.eval(short)
    pre = Measurement("llama.cpp", "prefill", n_prompt)
    dcd = Measurement("llama.cpp", "decode", n_decode)
    for _ in range(reps):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        pre.seconds.append(time.perf_counter() - t0)
    for _ in range(reps):
        llm.reset()
        llm.eval(short)
        token = int(np.argmax(_last_logits(llama_cpp, llm)))
        t0 = time.perf_counter()
        for _ in range(n_decode):
            llm.eval([token])
            token = int(np.argmax(_last_logits(llama_cpp, llm)))
        dcd.seconds.append(time.perf_counter() - t0)
    llm.close() if hasattr(llm, "close") else None
    return [pre, dcd]


def run(model, n_prompt: int = 128, n_decode: int = 128, reps: int = 5, vs_llama_cpp: bool = False,
        n_threads: int = 2, numerics: str = "llama.cpp") -> dict:
    """Run the benchmark; returns a JSON-able dict with every measurement and the ratios."""
    results = bench_ours(model, n_prompt, n_decode, reps, numerics)
    if vs_llama_cpp:
        results += bench_llama_cpp(model.path, model.tokenizer, n_prompt, n_decode, reps, n_threads)
    out = {"model": str(model.path), "n_threads": n_threads, "numerics": numerics,
           "measurements": [m.summary() for m in results], "ratios": {}}
    by = {(m.engine, m.phase): m for m in results}
    for phase in ("prefill", "decode"):
        if ("llama.cpp", phase) in by:
            out["ratios"][phase] = by[("zigllama", phase)].median / by[("llama.cpp", phase)].median
    return out


def format_table(result: dict) -> str:
    """A markdown table of a :func:`run` result."""
    lines = ["| engine | phase | tokens | median tok/s | min-max tok/s |", "|---|---|---|---|---|"]
    for m in result["measurements"]:
        lines.append(f"| {m['engine']} | {m['phase']} | {m['n_tokens']} | {m['median_tok_s']:.1f} | "
                     f"{m['min_tok_s']:.1f}-{m['max_tok_s']:.1f} |")
    for phase, r in result["ratios"].items():
        lines.append(f"\nratio ours / llama.cpp, {phase}: {r:.2f}")
    return "\n".join(lines)


__all__ = ["Measurement", "run", "format_table", "asdict"]
