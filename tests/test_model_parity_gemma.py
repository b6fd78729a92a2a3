"""Gemma 3 270M (Q4_K_M: Q5_0, Q8_0, Q4_K and Q6_K matrices) end to end against llama.cpp.

With ``numerics="llama.cpp"`` every step reproduces llama.cpp's x86 AVX2 arithmetic: the Q4_K
products in the order of its repacked gemv / gemm, Q6_K's vec_dot, GELU through ggml's float16
table, q/k norms and post-norms, Q scaled after RoPE (softmax scale 1), the sliding window as a
mask. So the logits are not close to llama.cpp's: they are the same floats, for a prefill (gemm
order) and for token-by-token decoding (gemv order).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import llama_logits

PROMPT = "The capital of France is Paris. The capital of Germany is"


@pytest.fixture(scope="module")
def gemma(gemma_path):
    import zigllama_lib as zl

    return zl.load(gemma_path, n_ctx=256, progress=False)


def _llama_token_by_token(llama_cpp, path, ids):
    """llama.cpp's logits of ``ids`` fed one token per decode call (n_batch = 1)."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_batch=1, logits_all=True, n_threads=2, verbose=False)
    try:
        llm.eval(list(ids))
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def test_prefill_logits_are_llama_cpp_bit_for_bit(gemma, gemma_path, llama_cpp):
    ids = gemma.tokenizer.encode(PROMPT)
    ours = gemma.logits(ids, numerics="llama.cpp")
    ref = llama_logits(llama_cpp, gemma_path, ids)
    assert np.array_equal(ours, ref), f"max |diff| {np.abs(ours - ref).max()}"


def test_decode_steps_are_llama_cpp_bit_for_bit(gemma, gemma_path, llama_cpp):
    """One token per forward call: the decode kernels (gemv order, vec_dot_f16 attention), and
    the fused one-call step when the decoder takes it."""
    from zigllama_lib.models.decoder import numerics_named

    ids = gemma.tokenizer.encode(PROMPT)
    ref = _llama_token_by_token(llama_cpp, gemma_path, ids)
    dec, nm = gemma.decoder, numerics_named("llama.cpp")
    cache = dec.new_cache(64, nm)
    ours = np.concatenate([dec.forward([t], cache, nm) for t in ids])
    assert np.array_equal(ours, ref), f"max |diff| {np.abs(ours - ref).max()}"
    # llama.cpp itself differs between the two batchings (gemm vs gemv order): the test can tell them apart
    assert not np.array_equal(ref, llama_logits(llama_cpp, gemma_path, ids))
