"""Thread pools: numpy's BLAS is kept to one thread while the float numerics run (foundation.threads)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from zigllama_lib.foundation import threads


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_blas_single_threaded_limits_and_restores():
    before = _blas_threads()
    if not before:
        pytest.skip("numpy is linked to no BLAS threadpoolctl can see")
    with threads.blas_single_threaded():
        assert _blas_threads() == [1] * len(before)
        a = np.ones((64, 64), np.float32)
        assert (a @ a)[0, 0] == 64  # BLAS still works on one thread
    assert _blas_threads() == before


@pytest.mark.parametrize("numerics, n_tok, limited", [("float", 3, True), ("float", 1, False), ("llama.cpp", 3, False)])
def test_float_prefill_runs_with_blas_single_threaded(smollm, monkeypatch, numerics, n_tok, limited):
    """Only a float prefill (numpy matmuls between Numba kernels) takes the limit."""
    from zigllama_lib.models import decoder as decoder_module
    from zigllama_lib.models.decoder import numerics_named

    entered = []

    @contextlib.contextmanager
    def recording():
        entered.append(True)
        yield

    monkeypatch.setattr(decoder_module, "blas_single_threaded", recording)
    dec, nm = smollm.decoder, numerics_named(numerics)
    dec.forward([1, 2, 3][:n_tok], dec.new_cache(8, nm), nm)
    assert bool(entered) == limited
