"""The generation loop, streaming and the public API on the real default model."""

from __future__ import annotations

import numpy as np
import pytest

import zigllama_lib as zl
from zigllama_lib.foundation.errors import ConfigError, ContextLengthError, RegistryError, ZigLlamaError


def test_public_api_shapes(smollm):
    ids = smollm.tokenizer.encode("Hello", add_special=True)
    assert smollm.tokenizer.decode(ids) == "Hello"
    logits = smollm.logits(ids)
    assert logits.shape == (len(ids), smollm.n_vocab) and logits.dtype == np.float32
    assert np.isfinite(logits).all()


def test_logits_use_a_fresh_context(smollm):
    ids = smollm.tokenizer.encode("One two three")
    assert np.array_equal(smollm.logits(ids), smollm.logits(ids))


def test_kv_cache_decode_equals_full_recompute(smollm):
    """Prefill + one-token steps give the logits of a full pass over the same tokens."""
    ids = smollm.tokenizer.encode("The quick brown fox jumps over")
    full = smollm.logits(ids, numerics="float")
    dec = smollm.decoder
    from zigllama_lib.models.decoder import NUMERICS

    nm = NUMERICS["float"]
    cache = dec.new_cache(len(ids), nm)
    steps = [dec.forward(ids[:3], cache, nm, all_logits=True)]
    for t in ids[3:]:
        steps.append(dec.forward([t], cache, nm))
    np.testing.assert_allclose(np.concatenate(steps), full, atol=2e-4)


def test_streaming_pieces_join_to_the_decoded_ids(smollm):
    prompt = "List three fruits:"
    ids = smollm.tokenizer.encode(prompt)
    gen = list(smollm.generate_ids(ids, max_tokens=16, temperature=0.0))
    pieces = list(smollm.generate(prompt, max_tokens=16, temperature=0.0))
    assert "".join(pieces) == smollm.tokenizer.decode(gen, skip_special=True)
    assert all(pieces)


def test_max_tokens_is_respected(smollm):
    ids = smollm.tokenizer.encode("Count: 1, 2, 3,")
    assert len(list(smollm.generate_ids(ids, max_tokens=5, temperature=0.0, stop_at_eog=False))) == 5
    assert list(smollm.generate_ids(ids, max_tokens=0)) == []


def test_stops_at_end_of_generation(smollm):
    """The instruct model closes its chat turn with <|im_end|> (its EOS); generation stops there."""
    prompt = "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"
    ids = smollm.tokenizer.encode(prompt, parse_special=True)
    out = list(smollm.generate_ids(ids, max_tokens=100, temperature=0.0))
    assert smollm.last_stats["stop_reason"] == "eog"
    assert len(out) < 100 and not any(smollm.tokenizer.is_eog(t) for t in out)


def test_seeded_sampling_is_reproducible(smollm):
    kw = dict(max_tokens=12, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = smollm.complete("My favourite animal is", seed=7, **kw)
    b = smollm.complete("My favourite animal is", seed=7, **kw)
    outs = {smollm.complete("My favourite animal is", seed=s, **kw) for s in range(4)}
    assert a == b and len(outs) > 1


def test_prompt_longer_than_context_is_refused(smollm_path):
    model = zl.load(smollm_path, n_ctx=16, progress=False)
    with pytest.raises(ContextLengthError, match="16"):
        list(model.generate("word " * 40, max_tokens=4))
    with pytest.raises(ContextLengthError):
        model.logits(list(range(17)))


def test_generation_stops_when_context_fills(smollm_path):
    model = zl.load(smollm_path, n_ctx=12, progress=False)
    ids = model.tokenizer.encode("One two three four five")
    out = list(model.generate_ids(ids, max_tokens=50, temperature=0.0, stop_at_eog=False))
    assert len(ids) + len(out) == 12 + 1 and model.last_stats["stop_reason"] == "context_full"


def test_bad_arguments_raise_clear_errors(smollm):
    with pytest.raises(ConfigError, match="empty"):
        list(smollm.generate("", max_tokens=3))
    with pytest.raises(ConfigError, match="max_tokens"):
        list(smollm.generate("x", max_tokens=-1))
    with pytest.raises(ZigLlamaError, match="numerics"):
        smollm.logits([1, 2], numerics="fp8")
    with pytest.raises(ZigLlamaError, match="out of range"):
        smollm.logits([smollm.n_vocab])
    with pytest.raises(RegistryError, match="neither"):
        zl.load("no-such-model")
