"""SmolLM2 end to end against llama.cpp (the oracle).

* logits: our ``numerics="float"`` path on the Q4_1 file vs llama.cpp on an
  F32 copy of the same weights with an F32 KV cache (the same maths): tight.
* llama.cpp numerics: our ``numerics="llama.cpp"`` path vs llama.cpp on the
  Q4_1 file itself -- the pinned build, llama.cpp 0.3.36 for x86-64 AVX2
  (``zigllama_lib.inference.llama_cpp_builds.PINNED_NAME``; tests/test_oracle_build.py
  checks it is the one installed). That path reproduces its arithmetic (8-bit
  activations, FMA lane order, float16 KV cache, ggml's expf, glibc's powf /
  cosf / sinf) bit for bit, so logits are the same floats -- for prefills of
  prompts and of random ids, and token by token -- and greedy tokens are
  identical. All of it is asserted exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import llama_logits

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Water boils at a temperature of",
    "The three primary colours are red,",
    "Q: What is 12 times 12?\nA:",
]
N_GREEDY = 48
# The 8-bit activation path is chaotic (test_q8_path_is_chaotic: a 1e-6 relative
# nudge of the embeddings moves the logits by up to ~0.5), which is why the path
# must match llama.cpp's arithmetic bit for bit to agree at all.


@pytest.fixture(scope="module")
def llama_tokenize(llama_cpp, smollm_path):
    llm = llama_cpp.Llama(model_path=str(smollm_path), vocab_only=True, verbose=False)
    yield lambda text: llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    llm.close()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_float_logits_match_llama_cpp_on_f32_copy(prompt, smollm, llama_cpp, smollm_f32_path, llama_tokenize):
    ids = llama_tokenize(prompt)
    ours = smollm.logits(ids, numerics="float")
    ref = llama_logits(llama_cpp, smollm_f32_path, ids, f32_kv=True)
    assert ours.shape == ref.shape == (len(ids), smollm.n_vocab)
    diff = np.abs(ours - ref).max()
    assert diff <= 1e-3, f"max |ours - llama.cpp(F32)| = {diff:.2e} over {len(ids)} positions"
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


def test_our_loader_runs_the_f32_copy_too(smollm_f32_path, llama_cpp, llama_tokenize):
    import zigllama_lib as zl

    model = zl.load(smollm_f32_path, n_ctx=64, progress=False)
    ids = llama_tokenize(PROMPTS[0])
    diff = np.abs(model.logits(ids) - llama_logits(llama_cpp, smollm_f32_path, ids, f32_kv=True)).max()
    assert diff <= 1e-3


@pytest.mark.parametrize("prompt", PROMPTS)
def test_llama_cpp_numerics_track_llama_cpp_on_q4_1(prompt, smollm, llama_cpp, smollm_path, llama_tokenize):
    ids = llama_tokenize(prompt)
    ours = smollm.logits(ids, numerics="llama.cpp")
    ref = llama_logits(llama_cpp, smollm_path, ids)
    assert np.array_equal(ours, ref), f"max |ours - llama.cpp| = {np.abs(ours - ref).max()}"


def _random_ids(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, 49152, n).tolist()


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 16, 31, 64, 129, 300])
def test_prefill_of_random_ids_is_llama_cpp_bit_for_bit(n, smollm, llama_cpp, smollm_path):
    ids = _random_ids(n, seed=n)
    ours = smollm.logits(ids, numerics="llama.cpp")
    ref = llama_logits(llama_cpp, smollm_path, ids)
    assert np.array_equal(ours, ref), f"{n} random ids: max |ours - llama.cpp| = {np.abs(ours - ref).max()}"


def test_token_by_token_logits_are_llama_cpp_bit_for_bit(smollm, llama_cpp, smollm_path, llama_tokenize):
    """One token per forward call on both sides (llama.cpp with n_batch = 1): every step's logits,
    the fused decode step included, through llama.cpp's 256-cell KV padding."""
    from zigllama_lib.models.decoder import numerics_named

    ids = llama_tokenize(PROMPTS[1]) + _random_ids(270, seed=99)
    dec, nm = smollm.decoder, numerics_named("llama.cpp")
    cache = dec.new_cache(len(ids), nm)
    ours = np.concatenate([dec.forward([t], cache, nm) for t in ids])
    llm = llama_cpp.Llama(model_path=str(smollm_path), n_ctx=len(ids) + 16, n_batch=1, logits_all=True,
                          n_threads=2, verbose=False)
    try:
        llm.eval(ids)
        ref = np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()
    bad = np.flatnonzero((ours != ref).any(axis=1))
    assert bad.size == 0, f"steps {bad[:8].tolist()}... differ; max |diff| {np.abs(ours - ref).max()}"


def llama_greedy(llama_cpp, path, ids, n):
    """llama.cpp's greedy continuation (not stopping at end-of-generation) and its top-1 margins."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False)
    try:
        llm.eval(list(ids))
        tokens, margins = [], []
        for _ in range(n):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()
            top = np.argsort(logits)[-2:]
            tokens.append(int(top[1]))
            margins.append(float(logits[top[1]] - logits[top[0]]))
            llm.eval([tokens[-1]])
        return tokens, margins
    finally:
        llm.close()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_continuation_matches_llama_cpp(prompt, smollm, llama_cpp, smollm_path, llama_tokenize):
    ids = llama_tokenize(prompt)
    ref, margins = llama_greedy(llama_cpp, smollm_path, ids, N_GREEDY)
    ours = list(smollm.generate_ids(ids, max_tokens=N_GREEDY, temperature=0.0, stop_at_eog=False))
    assert len(ours) == len(ref) == N_GREEDY
    first_diff = next((i for i in range(N_GREEDY) if ours[i] != ref[i]), None)
    assert first_diff is None, (f"diverged from llama.cpp at generated token {first_diff}: ours {ours[first_diff]}, "
                                f"llama.cpp {ref[first_diff]}, llama.cpp's top-1 margin {margins[first_diff]:.4f}")


def test_cli_generate_prints_the_greedy_continuation(smollm_path, smollm):
    """The README's run command prints the library's greedy continuation (whose
    agreement with llama.cpp test_greedy_continuation_matches_llama_cpp checks)."""
    import subprocess
    import sys

    prompt = "The capital of France is"
    out = subprocess.run([sys.executable, "-m", "zigllama_lib.cli", "generate", prompt,
                          "--model", str(smollm_path), "--max-tokens", "32"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout == smollm.complete(prompt, max_tokens=32, temperature=0.0) + "\n"


def test_q8_path_is_chaotic(smollm, smollm_path, llama_tokenize):
    """Why parity must be bit for bit: a 1e-6 nudge moves 8-bit-path logits by far more."""
    from zigllama_lib.models.decoder import NUMERICS

    ids = llama_tokenize(PROMPTS[0])
    dec = smollm.decoder
    results = {}
    for name in ("float", "llama.cpp"):
        nm = NUMERICS[name]
        base = dec.forward(ids, dec.new_cache(len(ids), nm), nm, all_logits=True)
        embed = dec.embed
        rng = np.random.default_rng(0)
        dec.embed = lambda t: (lambda h: h * (1 + 1e-6 * rng.standard_normal(h.shape)).astype(np.float32))(embed(t))
        try:
            nudged = dec.forward(ids, dec.new_cache(len(ids), nm), nm, all_logits=True)
        finally:
            del dec.embed
        results[name] = float(np.abs(base - nudged).max())
    print("logit change from a 1e-6 relative nudge of the embeddings:", results)
    assert results["float"] < 1e-3  # the float path is well conditioned
    assert results["llama.cpp"] > 1e-2  # the 8-bit path is not: bit-level differences become logit-level ones
