"""Gemma 3's float path (``model.logits``' default) against llama.cpp on an F32 copy.

Both sides run float32 maths on the same weights: our ``numerics="float"``
dequantises the Q4_K_M file and keeps a float32 KV cache; llama.cpp runs an F32
copy made by its own ``llama_model_quantize``, with an F32 KV cache
(``type_k = type_v = 0``). One step is not the same maths: llama.cpp computes
GELU through its float16 table even on F32 weights (``GGML_GELU_FP16``: the
gate is rounded to float16, 11 bits, then looked up), ours is the exact tanh
GELU. That table makes llama.cpp's Gemma ill-conditioned: measured here, a 1e-7
relative nudge of the embeddings moves the logits by ~1e-2 with the table and
by ~5e-5 without it. So the comparison is in two parts:

* our exact float path vs llama.cpp(F32): every argmax the same, max logit
  difference within 0.05 on prompts (measured 0.011-0.035) and 0.15 over 300
  random tokens (measured 0.10) -- the table's effect;
* our float path with ggml's GELU table put in (``geglu_ggml``) vs llama.cpp(F32):
  within three times what one ulp of noise on the embeddings does to that same
  path on the same tokens, i.e. what is left is float32 rounding.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import f32_copy, llama_logits

PROMPTS = {"prompt": "The capital of France is Paris. The capital of Germany is",
           "chat": "<start_of_turn>user\nWrite a haiku about rain.<end_of_turn>\n<start_of_turn>model\n"}


@pytest.fixture(scope="module")
def gemma_f32_path(llama_cpp, gemma_path, tmp_path_factory):
    return f32_copy(llama_cpp, gemma_path, tmp_path_factory.mktemp("gemma-f32") / "gemma-3-270m-f32.gguf")


@pytest.fixture(scope="module")
def gemma(gemma_path):
    import zigllama_lib as zl

    return zl.load(gemma_path, n_ctx=640, progress=False)


def _ids(gemma, which: str) -> list[int]:
    if which == "random-300":
        return [2] + np.random.default_rng(3).integers(100, 200000, 299).tolist()
    return gemma.tokenizer.encode(PROMPTS[which], add_special=True, parse_special=True)


def _float_with_gelu_table():
    from zigllama_lib.models.decoder import numerics_named
    from zigllama_lib.neural_primitives.ggml_math import geglu_ggml

    return dataclasses.replace(numerics_named("float"), name="float+ggml-gelu-table", geglu=geglu_ggml)


def _forward(dec, ids, nm, nudge: float = 0.0):
    if not nudge:
        return dec.forward(ids, dec.new_cache(len(ids), nm), nm, all_logits=True)
    embed, rng = dec.embed, np.random.default_rng(0)
    dec.embed = lambda t: (lambda h: h * (1 + nudge * rng.standard_normal(h.shape)).astype(np.float32))(embed(t))
    try:
        return dec.forward(ids, dec.new_cache(len(ids), nm), nm, all_logits=True)
    finally:
        del dec.embed


@pytest.mark.parametrize("which, bound", [("prompt", 0.05), ("chat", 0.05), ("random-300", 0.15)])
def test_float_logits_match_llama_cpp_on_f32_copy(which, bound, gemma, llama_cpp, gemma_f32_path):
    ids = _ids(gemma, which)
    ours = gemma.logits(ids, numerics="float")
    ref = llama_logits(llama_cpp, gemma_f32_path, ids, f32_kv=True)
    assert ours.shape == ref.shape
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
    diff = np.abs(ours - ref).max()
    assert diff <= bound, f"max |ours - llama.cpp(F32)| = {diff:.2e} over {len(ids)} positions"


@pytest.mark.parametrize("which", ["prompt", "chat", "random-300"])
def test_with_ggml_gelu_table_the_rest_is_float_rounding(which, gemma, llama_cpp, gemma_f32_path):
    ids = _ids(gemma, which)
    nm = _float_with_gelu_table()
    ours = _forward(gemma.decoder, ids, nm)
    noise = float(np.abs(_forward(gemma.decoder, ids, nm, nudge=1e-7) - ours).max())
    ref = llama_logits(llama_cpp, gemma_f32_path, ids, f32_kv=True)
    diff = float(np.abs(ours - ref).max())
    print(f"{which}: |ours(table) - llama.cpp(F32)| = {diff:.2e}; one-ulp noise moves ours by {noise:.2e}")
    assert diff <= 3 * noise


def test_exact_gelu_path_is_well_conditioned(gemma):
    """Why the first comparison's gap is llama.cpp's table, not our rounding: without the table a
    1e-7 nudge barely moves our logits; with it, the same nudge moves them by over 1e-3."""
    from zigllama_lib.models.decoder import numerics_named

    ids = _ids(gemma, "chat")
    exact = numerics_named("float")
    table = _float_with_gelu_table()
    move = {nm.name: float(np.abs(_forward(gemma.decoder, ids, nm, 1e-7) - _forward(gemma.decoder, ids, nm)).max())
            for nm in (exact, table)}
    print("logit change from a 1e-7 relative nudge of the embeddings:", move)
    assert move["float"] < 1e-3 < move[table.name]
