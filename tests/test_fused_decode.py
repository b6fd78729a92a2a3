"""The fused decode step (models.fused_decode) is the generic llama.cpp-numerics step, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from zigllama_lib.models.decoder import numerics_named
from zigllama_lib.models.fused_decode import unsupported_reason


@pytest.fixture(scope="module")
def smollm_decoder(smollm_path):
    from zigllama_lib.models.loader import load_gguf

    return load_gguf(smollm_path, progress=False).decoder


def _steps(decoder, prompt, tokens, fused: bool):
    nm = numerics_named("llama.cpp")
    decoder.fused_decode = fused
    try:
        cache = decoder.new_cache(len(prompt) + len(tokens) + 1, nm)
        decoder.forward(prompt, cache, nm)
        logits = [decoder.forward([t], cache, nm)[0] for t in tokens]
        return np.stack(logits), cache
    finally:
        decoder.fused_decode = True


def _assert_fused_is_generic(decoder, n_prompt):
    """Random prompt, then 9 decode steps both ways: identical logits and float16 cache."""
    assert unsupported_reason(decoder) is None
    rng = np.random.default_rng(n_prompt)
    prompt = rng.integers(0, decoder.spec.n_vocab, n_prompt).tolist()
    tokens = rng.integers(0, decoder.spec.n_vocab, 9).tolist()
    fused, cache_f = _steps(decoder, prompt, tokens, True)
    generic, cache_g = _steps(decoder, prompt, tokens, False)
    assert np.array_equal(fused.view(np.int32), generic.view(np.int32))
    n = n_prompt + len(tokens)  # the float16 cache the fused step wrote is the generic path's
    assert np.array_equal(cache_f.k[:, :n].view(np.uint16), cache_g.k[:, :n].view(np.uint16))
    assert np.array_equal(cache_f.v[:, :n].view(np.uint16), cache_g.v[:, :n].view(np.uint16))
    assert cache_f.n_past == cache_g.n_past == n


@pytest.mark.parametrize("n_prompt", [5, 250])  # 250: the decode steps cross llama.cpp's 256-cell KV padding
def test_fused_step_is_the_generic_step_bit_for_bit(smollm_decoder, n_prompt):
    _assert_fused_is_generic(smollm_decoder, n_prompt)


@pytest.fixture(scope="module")
def gemma_decoder(gemma_path):
    from zigllama_lib.models.loader import load_gguf

    return load_gguf(gemma_path, progress=False).decoder


@pytest.mark.parametrize("n_prompt", [5, 508])  # 508: the steps cross the 512-position sliding window
def test_fused_gemma_step_is_the_generic_step_bit_for_bit(gemma_decoder, n_prompt):
    """Gemma 3: q/k norms, post-norms, GELU, Q scaled after RoPE, sliding-window layers, Q4_K / Q6_K
    matrices fed with Q8_K activations (the generic step is llama.cpp's, test_model_parity_gemma)."""
    _assert_fused_is_generic(gemma_decoder, n_prompt)


def test_unsupported_models_say_why(smollm_decoder):
    from dataclasses import replace

    class Fake:
        spec = replace(smollm_decoder.spec, traits=replace(smollm_decoder.spec.traits, attn_bias=True))
        layers = smollm_decoder.layers
        output = smollm_decoder.output

    assert "biases" in unsupported_reason(Fake())


@pytest.mark.parametrize("up_type", ["Q4_1", "Q8_0"])
@pytest.mark.parametrize("d_ff", [64, 37])  # 37: an odd row left over, and a ggml tail of 5 after the chunks of 8
def test_gate_up_swiglu_and_matvec_pieces_are_the_reference(up_type, d_ff):
    from test_ggml_exact import _random_qmatrix

    from zigllama_lib.foundation.ggml_types import GGMLType
    from zigllama_lib.linear_algebra.ggml_exact import matmul_ggml
    from zigllama_lib.linear_algebra.ggml_simd import KIND, quantize_activations
    from zigllama_lib.models import fused_decode as fd
    from zigllama_lib.neural_primitives.ggml_math import swiglu_ggml

    rng = np.random.default_rng(d_ff)
    gate = _random_qmatrix(GGMLType.Q4_1, d_ff, 128, rng)
    up = _random_qmatrix(GGMLType[up_type], d_ff, 128, rng)
    x = rng.standard_normal((1, 128)).astype(np.float32)
    xq, xd, xs = quantize_activations(GGMLType.Q4_1, x)  # Q8_1: its q and d are Q8_0's too
    addr = np.zeros(7, np.int64)
    stride = np.zeros(7, np.int64)
    kind = np.zeros(7, np.int64)
    for slot, w in ((fd.WGATE, gate), (fd.WUP, up)):
        addr[slot], stride[slot], kind[slot] = w.raw.ctypes.data, w.raw.strides[0], KIND[w.qtype]
    hidden = np.empty(d_ff, np.float32)
    fd._gate_up_act(addr, stride, kind, d_ff, xq[0], xd[0], xs[0], False, fd.GELU_F16, hidden)
    want = swiglu_ggml(matmul_ggml(gate, x), matmul_ggml(up, x))[0]
    assert np.array_equal(hidden.view(np.int32), want.view(np.int32))
    out = np.empty(d_ff, np.float32)
    fd._matvec(addr[fd.WUP], stride[fd.WUP], kind[fd.WUP], d_ff, xq[0], xd[0], xs[0], out)
    assert np.array_equal(out.view(np.int32), matmul_ggml(up, x)[0].view(np.int32))
