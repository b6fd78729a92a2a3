"""Batched decoding throughput: ours (ContinuousBatcher) vs llama.cpp's batch API, side by side.

    zigllama bench-batch --model smollm2-135m-instruct --threads 2 --sequences 1,2,4,8 --n-decode 64 --vs llama.cpp

For each number of sequences ``n``: ``n`` different prompts are prefilled, then ``n_decode`` decode
steps are timed in which every sequence gets one greedy token (one forward pass of ``n`` rows per
step); aggregate decode tokens/s = ``n * n_decode / seconds``. llama.cpp runs the same ``n`` prompts in a
child process through llama-cpp-python's low-level bindings: one context with ``n_seq_max = n``
(a KV stream per sequence), and each step one ``llama_decode`` of an ``n``-token batch, one token per
sequence, with every row's logits (llama-server's parallel slots do the same). Rounds alternate
ours / llama.cpp; the figures are medians over rounds. The prefill rate (tokens/s of a
``n_prompt``-token prompt in one pass) is the ceiling batching approaches: ``n`` decode tokens are as
compute-bound as ``n`` prompt tokens, minus the per-sequence attention.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from ..foundation.errors import ConfigError
from ..models.decoder import numerics_named
from .batching import BatchRequest, ContinuousBatcher
from .bench import _bench_prompt, machine_info
from .generation import make_sampler

PROMPTS = ["The capital of France is", "Once upon a time, in a land far away,", "def fibonacci(n):",
           "1, 2, 3, 4, 5,", "Water boils at a temperature of", "The quick brown fox jumps over",
           "In 1492, Christopher Columbus", "Photosynthesis is the process by which", "My favourite recipe for",
           "The three laws of motion are", "import numpy as np\n", "Dear Sir or Madam,",
           "The largest planet in the solar system", "Once there was a robot who", "To be, or not to be:",
           "A haiku about autumn:"]


def batch_prompts(tokenizer, n: int) -> list[list[int]]:
    """``n`` different short prompts (cycled, numbered past 16 so no two are equal)."""
    return [tokenizer.encode(PROMPTS[k % len(PROMPTS)] + (f" ({k})" if k >= len(PROMPTS) else ""))
            for k in range(n)]


def decode_seconds_ours(model, prompts: list[list[int]], n_decode: int, numerics: str) -> float:
    """Seconds of ``n_decode`` batched decode steps of every prompt (after their prefills)."""
    nm = numerics_named(numerics)
    n = len(prompts)
    max_tokens = n_decode + n + 2  # nobody finishes while the timed steps run
    b = ContinuousBatcher(model.decoder, nm, n_ctx=max(map(len, prompts)) + max_tokens, max_batch=n)
    for p in prompts:
        b.submit(BatchRequest(p, make_sampler(0.0, 40, 0.95, 0.05, None), max_tokens, model.tokenizer.is_eog,
                              stop_at_eog=False))
    while b.waiting or any(s.pending is None for s in b.running):  # the prefills, one per step
        b.step()
    t0 = time.perf_counter()
    for _ in range(n_decode):
        b.step()
        if b.stats.n_decode != n or b.stats.n_prefill:
            raise RuntimeError(f"a timed step decoded {b.stats.n_decode} of {n} rows")
    return time.perf_counter() - t0


_LLAMA_CPP_BATCH_CHILD = r"""
import ctypes, json, sys, time
import numpy as np
import llama_cpp as lc
a = json.load(sys.stdin)
prompts, n_decode, n_threads = a["prompts"], a["n_decode"], a["n_threads"]
n = len(prompts)
lc.llama_backend_init()
model = lc.llama_model_load_from_file(a["path"].encode(), lc.llama_model_default_params())
vocab = lc.llama_model_get_vocab(model)
n_vocab = lc.llama_vocab_n_tokens(vocab)
cp = lc.llama_context_default_params()
per_seq = max(map(len, prompts)) + n_decode + 8
cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = per_seq * n, 512, 512, n
cp.n_threads = cp.n_threads_batch = n_threads
ctx = lc.llama_init_from_model(model, cp)
mem = lc.llama_get_memory(ctx)
batch = lc.llama_batch_init(512, 0, 1)

def run(rows, want_all):
    batch.n_tokens = len(rows)
    for i, (seq, tok, pos) in enumerate(rows):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = 1 if want_all or i == len(rows) - 1 else 0
    assert lc.llama_decode(ctx, batch) == 0

def argmax(i):
    ptr = lc.llama_get_logits_ith(ctx, i)
    return int(np.argmax(np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (n_vocab,))))

def one_round():
    lc.llama_memory_clear(mem, True)
    last = []
    for s, p in enumerate(prompts):  # prefill, one sequence per decode call
        run([(s, t, i) for i, t in enumerate(p)], False)
        last.append(argmax(len(p) - 1))
    pos = [len(p) for p in prompts]
    t0 = time.perf_counter()
    for _ in range(n_decode):
        run([(s, last[s], pos[s]) for s in range(n)], True)
        last = [argmax(i) for i in range(n)]
        pos = [q + 1 for q in pos]
    return time.perf_counter() - t0

one_round()  # warm-up
print(json.dumps({"decode_s": [one_round() for _ in range(a["reps"])]}))
"""


def run(model, sequences=(1, 2, 4, 8), n_decode: int = 64, rounds: int = 3, vs_llama_cpp: bool = False,
        n_threads: int | None = None, numerics: str = "llama.cpp", n_prompt_ceiling: int = 128,
        llama_cpp: str = "auto", command: str | None = None) -> dict:
    """Aggregate decode tokens/s per number of sequences, ours and (``vs_llama_cpp``) llama.cpp's."""
    from ..foundation.threads import available_cores
    from .engine import LanguageModel, load

    sequences = sorted({int(n) for n in sequences})
    if not sequences or sequences[0] < 1 or n_decode < 1 or rounds < 1:
        raise ConfigError("sequences, n_decode and rounds must be positive")
    n_threads = n_threads or available_cores()
    if not isinstance(model, LanguageModel):
        model = load(model, n_threads=n_threads, numerics=numerics, progress=False)
    build = None
    if vs_llama_cpp:
        from .llama_cpp_builds import describe, resolve, run_child

        build = resolve(llama_cpp)
    rows = []
    for n in sequences:
        prompts = batch_prompts(model.tokenizer, n)
        ours, theirs = [], []
        decode_seconds_ours(model, prompts, 4, numerics)  # warm-up (compiles the n-row kernels)
        for _ in range(rounds):
            ours.append(decode_seconds_ours(model, prompts, n_decode, numerics))
            if build is not None:
                r = run_child(build, _LLAMA_CPP_BATCH_CHILD, {"path": str(model.path), "prompts": prompts,
                                                              "n_decode": n_decode, "n_threads": n_threads,
                                                              "reps": 1})
                theirs.extend(r["decode_s"])
        row = {"n_seqs": n, "ours_tok_s": n * n_decode / statistics.median(ours), "ours_s": ours}
        if theirs:
            row["llama_cpp_tok_s"] = n * n_decode / statistics.median(theirs)
            row["llama_cpp_s"] = theirs
            row["ratio"] = row["ours_tok_s"] / row["llama_cpp_tok_s"]
        rows.append(row)
    one = rows[0]["ours_tok_s"] if sequences[0] == 1 else None
    for row in rows:
        row["ours_vs_one_stream"] = row["ours_tok_s"] / one if one else None
    # the ceiling: a prefill of n_prompt_ceiling tokens in one pass (best of rounds)
    ids = _bench_prompt(model.tokenizer, n_prompt_ceiling)
    nm = numerics_named(numerics)
    best = float("inf")
    for _ in range(rounds):
        cache = model.decoder.new_cache(len(ids), nm)
        t0 = time.perf_counter()
        model.decoder.forward(np.asarray(ids), cache, nm)
        best = min(best, time.perf_counter() - t0)
    ceiling = len(ids) / best
    for row in rows:
        row["fraction_of_prefill_rate"] = row["ours_tok_s"] / ceiling
    return {"command": command, "machine": machine_info(n_threads), "model": str(model.path), "numerics": numerics,
            "n_decode": n_decode, "rounds": rounds, "prefill_tok_s": ceiling, "rows": rows,
            "llama_cpp_build": describe(build) if build is not None else None}


def format_table(result: dict) -> str:
    head = f"{'seqs':>5} {'ours tok/s':>11} {'x one':>6} {'of prefill':>10}"
    vs = any("llama_cpp_tok_s" in r for r in result["rows"])
    if vs:
        head += f" {'llama.cpp tok/s':>16} {'ratio':>6}"
    lines = [f"batched greedy decode, {result['n_decode']} steps, median of {result['rounds']} rounds; "
             f"prefill ceiling {result['prefill_tok_s']:.0f} tok/s", head]
    for r in result["rows"]:
        x1 = f"{r['ours_vs_one_stream']:.2f}" if r["ours_vs_one_stream"] else "-"
        line = f"{r['n_seqs']:>5} {r['ours_tok_s']:>11.1f} {x1:>6} {r['fraction_of_prefill_rate']:>10.2f}"
        if vs:
            line += f" {r['llama_cpp_tok_s']:>16.1f} {r['ratio']:>6.2f}"
        lines.append(line)
    return "\n".join(lines)
