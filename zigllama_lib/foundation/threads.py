"""Thread configuration for the Numba kernels.

Numba runs ``prange`` loops on a thread pool created once per process (the
"threading layer": workqueue, omp or tbb). ``set_threads`` caps how many of
its threads a parallel region uses; it can be changed between calls.

numpy's BLAS (OpenBLAS) keeps a thread pool of its own. When a computation
alternates BLAS calls with Numba's parallel kernels, the two pools spin-wait
against each other for the same cores; :func:`blas_single_threaded` lets BLAS
run on the calling thread for the duration (through ``threadpoolctl``).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager

from .errors import ConfigError

_BLAS_CONTROLLER = None


def available_cores() -> int:
    """Cores this process may run on (respects CPU affinity / cgroup sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def set_threads(n: int | None) -> int:
    """Use ``n`` threads in parallel kernels (None: every available core); returns the count set."""
    import numba

    limit = numba.config.NUMBA_NUM_THREADS
    if n is None:
        n = min(available_cores(), limit)
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"thread count must be a positive integer, got {n!r}")
    if n > limit:
        raise ConfigError(f"thread count {n} exceeds Numba's pool of {limit} threads (NUMBA_NUM_THREADS)")
    numba.set_num_threads(n)
    return n


def get_threads() -> int:
    import numba

    return numba.get_num_threads()


def threading_layer() -> str:
    """The Numba threading layer in use (after the first parallel call), or 'not started'."""
    import numba

    try:
        return numba.threading_layer()
    except ValueError:
        return "not started"


def blas_single_threaded() -> AbstractContextManager:
    """A context in which numpy's BLAS uses one thread (restored on exit).

    ``zigllama profile --numerics float --threads 2 --n-prompt 128`` (SmolLM2): the prefill took
    1.39 s with OpenBLAS's own threads spinning against Numba's, 0.68 s inside this context.
    """
    global _BLAS_CONTROLLER
    from threadpoolctl import ThreadpoolController

    if _BLAS_CONTROLLER is None:  # scanning the loaded libraries takes milliseconds: once
        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")
