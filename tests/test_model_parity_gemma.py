"""Gemma 3 270M (Q4_K_M: Q5_0, Q8_0, Q4_K and Q6_K matrices) end to end against llama.cpp.

With ``numerics="llama.cpp"`` every step reproduces llama.cpp's x86 AVX2 arithmetic: the Q4_K
products in the order of its repacked gemv / gemm, Q6_K's vec_dot, GELU through ggml's float16
table, q/k norms and post-norms, Q scaled after RoPE (softmax scale 1), the sliding window as a
mask. So the logits are not close to llama.cpp's: they are the same floats, token by token (gemv
order; any tokens, through the sliding window) and for a prefill of the natural-language prompt
below (gemm order). Known gap, not tested here: a prefill of random token ids differs from the
4th position on (the token-by-token path agrees); the README's Numerics section records it.
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


def test_sliding_window_decode_is_llama_cpp_bit_for_bit(gemma_path, llama_cpp):
    """520 random tokens fed one by one: past position 512 the sliding-window layers mask the
    oldest keys; every step's logits are llama.cpp's."""
    import zigllama_lib as zl
    from zigllama_lib.models.decoder import numerics_named

    model = zl.load(gemma_path, n_ctx=640, progress=False)
    assert model.decoder.spec.sliding_window == 512
    ids = [2] + np.random.default_rng(7).integers(100, 200000, 519).tolist()
    dec, nm = model.decoder, numerics_named("llama.cpp")
    cache = dec.new_cache(len(ids), nm)
    ours = np.concatenate([dec.forward([t], cache, nm) for t in ids])
    llm = llama_cpp.Llama(model_path=str(gemma_path), n_ctx=640, n_batch=1, logits_all=True, n_threads=2, verbose=False)
    try:
        llm.eval(ids)
        ref = np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()
    assert np.array_equal(ours, ref), f"max |diff| {np.abs(ours - ref).max()}"


def test_attention_ggml_rejects_a_bad_window():
    from zigllama_lib.transformer.attention_ggml import attention_ggml

    q = np.zeros((1, 1, 32), np.float32)
    kv = np.zeros((1, 1, 32), np.float16)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="window"):
            attention_ggml(q, kv, kv, 0, 1.0, window=bad)
