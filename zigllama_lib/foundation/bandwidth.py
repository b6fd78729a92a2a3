"""What this machine can do: memory read bandwidth, a dot-product FLOP rate, the cost of a parallel launch.

A decode step multiplies every weight matrix by one activation vector: each
weight byte is read once and used for ~2 FLOPs per weight, so the step is
bound by memory bandwidth, not arithmetic. The ceiling it implies::

    decode tok/s <= read bandwidth (B/s) / weight bytes read per token (B)

These three measurements give the roofs of a roofline picture and the price of
a Numba ``prange`` region:

* :func:`read_bandwidth`: a Numba kernel sums a >= 256 MiB float32 array (far
  larger than the L3 cache, so every byte comes from DRAM); bytes / seconds,
  best of ``repeats`` passes;
* :func:`dot_flops`: dot products of two 4 KiB vectors that stay in L1, many
  times over: ``2 n`` FLOPs per dot (one multiply, one add per element), the
  rate a vectorised dot-product kernel can reach when memory is not the limit;
* :func:`parallel_launch_seconds`: a ``prange`` loop over one item per thread
  doing nothing: what one fork/join of Numba's thread pool costs.

Each takes ``n_threads`` (set with :func:`.threads.set_threads` for the
measurement, then restored) and reports the best of several runs: on a shared
machine the best run is the one least disturbed by other processes.
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit, prange

from .errors import ConfigError
from .threads import get_threads, set_threads

MIB = 1 << 20
CHUNK = 1 << 16  # float32 values per work item of the streaming kernel (256 KiB)


@njit(cache=True, parallel=True, fastmath=True, nogil=True)
def _sum_stream(a, partial):
    """``partial[c] = sum(a[c*CHUNK : (c+1)*CHUNK])``: one read of ``a (n,) float32``, chunk by chunk."""
    n_chunks = partial.shape[0]
    n = a.shape[0]
    for c in prange(n_chunks):
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        s = np.float32(0)
        for i in range(lo, hi):
            s += a[i]
        partial[c] = s


@njit(cache=True, parallel=True, fastmath=True, nogil=True)
def _dot_repeat(x, y, n_repeat, n_jobs, out):
    """``out[j] = sum over n_repeat of dot(x, y)`` for ``n_jobs`` independent jobs (one per thread)."""
    n = x.shape[0]
    for j in prange(n_jobs):
        total = np.float32(0)
        for _ in range(n_repeat):
            s = np.float32(0)
            for i in range(n):
                s += x[i] * y[i]
            total += s
        out[j] = total


@njit(cache=True, parallel=True, nogil=True)
def _empty_region(out):
    """One parallel region that does (almost) nothing: ``out[i] = i``."""
    for i in prange(out.shape[0]):
        out[i] = i


class _Threads:
    """Context manager: run with ``n`` Numba threads, then restore the previous count."""

    def __init__(self, n: int | None):
        self.n = n

    def __enter__(self) -> int:
        self.before = get_threads()
        return set_threads(self.n)

    def __exit__(self, *exc) -> None:
        set_threads(self.before)


def _best_seconds(run, repeats: int) -> float:
    if not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats must be a positive integer, got {repeats!r}")
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def read_bandwidth(n_threads: int | None = None, mib: int = 256, repeats: int = 5) -> float:
    """Memory read bandwidth in bytes/s: ``4 n / t`` for one pass summing ``n`` float32 (``4 n = mib`` MiB).

    ``mib`` must be at least 256 (several times any L3 cache here); best of
    ``repeats`` passes after one warm-up pass (which also compiles the kernel).
    """
    if not isinstance(mib, int) or mib < 256:
        raise ConfigError(f"the bandwidth array must be at least 256 MiB (larger than the caches), got {mib!r}")
    a = np.ones(mib * MIB // 4, np.float32)  # (n,) touched once, so every page is mapped
    partial = np.empty((a.shape[0] + CHUNK - 1) // CHUNK, np.float32)
    with _Threads(n_threads):
        _sum_stream(a, partial)  # warm-up
        seconds = _best_seconds(lambda: _sum_stream(a, partial), repeats)
    return a.nbytes / seconds


def dot_flops(n_threads: int | None = None, n: int = 1024, n_repeat: int = 100_000, repeats: int = 5) -> float:
    """FLOP/s of float32 dot products on data held in L1: ``2 n n_repeat n_threads / t``.

    One job per thread, each dotting two ``n``-vectors (``8 n`` bytes, 8 KiB by
    default) ``n_repeat`` times (a few ms per run); best of ``repeats`` runs after a warm-up.
    """
    x = np.linspace(0.0, 1.0, n, dtype=np.float32)
    y = np.linspace(1.0, 0.0, n, dtype=np.float32)
    with _Threads(n_threads) as k:
        out = np.empty(k, np.float32)
        _dot_repeat(x, y, 10, k, out)  # warm-up
        seconds = _best_seconds(lambda: _dot_repeat(x, y, n_repeat, k, out), repeats)
    return 2.0 * n * n_repeat * k / seconds


def parallel_launch_seconds(n_threads: int | None = None, n_launch: int = 200, repeats: int = 5) -> float:
    """Seconds per launch of an (almost) empty ``prange`` region with ``n_threads`` threads.

    Best of ``repeats`` runs of ``n_launch`` back-to-back launches, divided by
    ``n_launch``: the fork/join cost every parallel kernel call pays at least once.
    """
    if not isinstance(n_launch, int) or n_launch < 1:
        raise ConfigError(f"n_launch must be a positive integer, got {n_launch!r}")
    with _Threads(n_threads) as k:
        out = np.empty(k, np.int64)
        _empty_region(out)  # warm-up

        def run():
            for _ in range(n_launch):
                _empty_region(out)

        seconds = _best_seconds(run, repeats)
    return seconds / n_launch


__all__ = ["read_bandwidth", "dot_flops", "parallel_launch_seconds"]
