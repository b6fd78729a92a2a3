"""Time :func:`matmul` on a 576 x 1536 Q4_1 matrix (SmolLM2's ffn_down shape).

Usage::

    python -m zigllama_lib.linear_algebra.bench [--type Q4_1] [--n-out 576] [--n-in 1536] [--reps 50]

The weights are random blocks (random nibbles, realistic f16 scales), so no
model file is needed. Prints the median time per call for each mode and token
count, and the throughput in weights x tokens per second.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ..foundation.ggml_types import BLOCK_GEOMETRY, GGMLType
from ..foundation.threads import get_threads
from .matmul import QMatrix, matmul


def random_matrix(qtype: GGMLType, n_out: int, n_in: int, seed: int = 0) -> QMatrix:
    """Random blocks whose f16 fields (every even byte pair at the block start) hold small normal values."""
    block, size = BLOCK_GEOMETRY[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n_out * (n_in // block), size), dtype=np.uint8)
    if block > 1:
        # overwrite every aligned 2-byte field with a tame half: keeps all scales finite
        halves = (rng.standard_normal(raw.shape[0] * (size // 2)) * 0.01).astype("<f2")
        if qtype in (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0):
            n_f16 = 2 if qtype in (GGMLType.Q4_1, GGMLType.Q5_1) else 1
            raw[:, : 2 * n_f16] = halves[: raw.shape[0] * n_f16].view(np.uint8).reshape(raw.shape[0], -1)
    return QMatrix(raw.reshape(n_out, -1), qtype, n_in)


def time_call(fn, reps: int) -> float:
    fn()  # warm up (compiles on first use if the cache is cold)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--type", default="Q4_1")
    p.add_argument("--n-out", type=int, default=576)
    p.add_argument("--n-in", type=int, default=1536)
    p.add_argument("--reps", type=int, default=50)
    a = p.parse_args(argv)
    w = random_matrix(GGMLType[a.type], a.n_out, a.n_in)
    rng = np.random.default_rng(1)
    print(f"{w}, {get_threads()} Numba threads")
    for n_tok in (1, 64):
        x = rng.standard_normal((n_tok, a.n_in)).astype(np.float32)
        for mode in ("float", "q8"):
            t = time_call(lambda: matmul(w, x, mode), a.reps)
            rate = a.n_out * a.n_in * n_tok / t / 1e9
            print(f"  n_tok={n_tok:3d} mode={mode:5s}  {t * 1e3:8.3f} ms  ({rate:6.2f} G weight-MACs/s)")


if __name__ == "__main__":
    main()
