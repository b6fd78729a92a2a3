"""Layer 6: DRY, XTC, Mirostat v1 and the whole sampler chain, token for token against llama.cpp.

The oracle is llama.cpp's own sampler C API (``llama_sampler_init_*`` through llama-cpp-python's
low-level bindings): the same samplers in ``common_sampler``'s order, fed the same logits and
the same accepted tokens, must select the same token at every step.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from zigllama_lib.foundation.errors import ConfigError
from zigllama_lib.inference.sampler_chain import (Dry, MirostatV1, Mt19937, Sampler, Xtc, _z_array, dry_breakers,
                                                  uniform_float)
from zigllama_lib.inference.sampling import Candidates, SamplerConfig

from test_sampler_chain import LlamaArray, logits_of

pytestmark = pytest.mark.oracle


@pytest.fixture(scope="module")
def llama_vocab(llama_cpp, smollm_path):
    """SmolLM2's vocabulary inside llama.cpp (vocab_only: no weights)."""
    lc = llama_cpp
    params = lc.llama_model_default_params()
    params.vocab_only = True
    model = lc.llama_model_load_from_file(str(smollm_path).encode(), params)
    assert model, "llama.cpp could not load SmolLM2's vocabulary"
    yield lc.llama_model_get_vocab(model)
    lc.llama_model_free(model)


def c_strings(strings):
    arr = (ctypes.c_char_p * len(strings))(*[s.encode() for s in strings])
    return ctypes.cast(arr, ctypes.POINTER(ctypes.c_char_p)), arr


# -- pieces by hand -------------------------------------------------------------------------------
def test_z_array_by_hand():
    assert _z_array(list("aabxaab")) == [0, 1, 0, 0, 3, 1, 0]
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = rng.integers(0, 3, int(rng.integers(1, 30))).tolist()
        naive = [0] + [next((n for n in range(len(s) - k) if s[n] != s[n + k]), len(s) - k) for k in range(1, len(s))]
        assert _z_array(s) == naive


def test_dry_by_hand():
    """History a b c d a b c: emitting d would extend the repeat "a b c" (length 3): penalty
    multiplier * base^(3 - allowed)."""
    dry = Dry(multiplier=0.8, base=2.0, allowed_length=2, last_n=64, breakers={})
    for t in (1, 2, 3, 4, 1, 2, 3):
        dry.accept(t)
    assert dry.penalties() == {4: 3}
    c = dry(Candidates(np.arange(6), np.zeros(6, np.float32)))
    assert c.logits.tolist() == [0, 0, 0, 0, np.float32(-np.float32(0.8) * 2.0), 0]
    # 9 1 2 3 4 9 1 2 3: the repeat "9 1 2 3" has length 4, but a breaker 9 cuts it to the 3 tokens after it
    history = (9, 1, 2, 3, 4, 9, 1, 2, 3)
    plain, broken = Dry(0.8, 2.0, 2, 64, breakers={}), Dry(0.8, 2.0, 2, 64, breakers={9: [()]})
    for t in history:
        plain.accept(t), broken.accept(t)
    assert plain.penalties() == {4: 4} and broken.penalties() == {4: 3}


def test_uniform_float_is_libstdcpp():
    a = Mt19937(5).next_u32()
    assert uniform_float(Mt19937(5)) == np.float32(np.float32(a) / np.float32(2.0**32))


# -- against llama.cpp, one sampler at a time -----------------------------------------------------
@pytest.mark.parametrize("multiplier, base, allowed, last_n", [(0.8, 1.75, 2, 64), (1.5, 1.1, 1, 16), (0.5, 3.0, 3, 200)])
def test_dry_matches_llama_cpp(llama_cpp, llama_vocab, smollm, multiplier, base, allowed, last_n):
    lc = llama_cpp
    breakers = ["\n", ":", "\"", "*", "ing the"]
    ptr, keep = c_strings(breakers)
    smpl = lc.llama_sampler_init_dry(llama_vocab, multiplier, base, allowed, last_n, ptr, len(breakers))
    ours = Dry(multiplier, base, allowed, last_n, dry_breakers(smollm.tokenizer, breakers))
    tok = smollm.tokenizer
    text = ("the cat sat on the mat. the cat sat on the hat: the cat sat on the mat and then "
            "the cat sat on the\n the cat sat on the mat. Going the way of the cat sat on the")
    try:
        for t in tok.encode(text, add_special=False):
            lc.llama_sampler_accept(smpl, t)
            ours.accept(t)
            z = logits_of(t, n=tok.n_vocab)
            ref = LlamaArray(lc, z).apply(lc, smpl).kept()
            got = ours(Candidates.from_logits(z))
            assert np.array_equal(got.logits, np.array([ref[i][0] for i in range(tok.n_vocab)], np.float32))
        assert ours.penalties(), "the history should leave something to penalise"
    finally:
        lc.llama_sampler_free(smpl)


def test_dry_breakers_match_what_llama_cpp_penalises(smollm):
    """The processed breakers: ':' is a one-token breaker for every token containing it."""
    tok = smollm.tokenizer
    b = dry_breakers(tok, [":"])
    colon = tok.encode(":", add_special=False)
    assert len(colon) == 1 and b[colon[0]] == [()]
    assert all(() in tails for t, tails in b.items() if b":" in tok.token_bytes(t))


@pytest.mark.parametrize("probability, threshold", [(0.5, 0.1), (1.0, 0.05), (0.3, 0.2)])
def test_xtc_matches_llama_cpp(llama_cpp, probability, threshold):
    lc = llama_cpp
    smpl = lc.llama_sampler_init_xtc(probability, threshold, 1, 17)
    ours = Xtc(probability, threshold, 1, 17)
    removed = 0
    try:
        for step in range(60):
            z = logits_of(300 + step, n=500, scale=3.0)
            ref = LlamaArray(lc, z).apply(lc, smpl).kept()
            got = ours(Candidates.from_logits(z))
            assert sorted(got.ids.tolist()) == sorted(ref), step
            removed += len(got) < len(z)
        assert removed > 0, "XTC never fired: the test shows nothing"
    finally:
        lc.llama_sampler_free(smpl)


def test_mirostat_v1_draws_match_llama_cpp(llama_cpp):
    lc = llama_cpp
    n_vocab, seed, tau, eta = 4000, 9, 4.0, 0.15
    smpl = lc.llama_sampler_init_mirostat(n_vocab, seed, tau, eta, 100)
    ours = MirostatV1(n_vocab, tau, eta, 100, seed)
    try:
        for step in range(50):
            z = logits_of(500 + step, n=n_vocab, scale=3.0)
            ref = LlamaArray(lc, z).apply(lc, smpl).selected_id
            assert ours(Candidates.from_logits(z)) == ref, step
    finally:
        lc.llama_sampler_free(smpl)


# -- the whole chain ------------------------------------------------------------------------------
def llama_chain(lc, vocab, cfg: SamplerConfig, n_vocab: int):
    """common_sampler's chain for ``cfg``: penalties, dry, top_n_sigma, top_k, typical, top_p,
    min_p, xtc, temp_ext, dist (or temp, mirostat)."""
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    seed = cfg.seed % 2**32
    if cfg.mirostat:
        parts = [lc.llama_sampler_init_temp(cfg.temperature),
                 lc.llama_sampler_init_mirostat(n_vocab, seed, cfg.mirostat_tau, cfg.mirostat_eta, 100)
                 if cfg.mirostat == 1 else lc.llama_sampler_init_mirostat_v2(seed, cfg.mirostat_tau, cfg.mirostat_eta)]
    else:
        ptr, _keep = c_strings(list(cfg.dry_sequence_breakers))
        parts = [lc.llama_sampler_init_penalties(n_vocab, cfg.penalty_last_n, cfg.repeat_penalty,
                                                 cfg.frequency_penalty, cfg.presence_penalty),
                 lc.llama_sampler_init_dry(vocab, cfg.dry_multiplier, cfg.dry_base, cfg.dry_allowed_length,
                                           cfg.dry_penalty_last_n, ptr, len(cfg.dry_sequence_breakers)),
                 lc.llama_sampler_init_top_n_sigma(cfg.top_n_sigma),
                 lc.llama_sampler_init_top_k(cfg.top_k),
                 lc.llama_sampler_init_typical(cfg.typical_p, 0),
                 lc.llama_sampler_init_top_p(cfg.top_p, 0),
                 lc.llama_sampler_init_min_p(cfg.min_p, 0),
                 lc.llama_sampler_init_xtc(cfg.xtc_probability, cfg.xtc_threshold, 0, seed),
                 lc.llama_sampler_init_temp_ext(cfg.temperature, cfg.dynatemp_range, cfg.dynatemp_exponent),
                 lc.llama_sampler_init_dist(seed)]
    for p in parts:
        lc.llama_sampler_chain_add(chain, p)
    return chain


CHAIN_CONFIGS = [
    SamplerConfig(seed=1),
    SamplerConfig(seed=2, repeat_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.3, penalty_last_n=32),
    SamplerConfig(seed=3, dry_multiplier=0.8, temperature=1.0, top_k=0, top_p=0.9, min_p=0.0),
    SamplerConfig(seed=4, typical_p=0.7, top_k=0, xtc_probability=0.5, xtc_threshold=0.05),
    SamplerConfig(seed=5, top_n_sigma=1.5, dynatemp_range=0.5, dynatemp_exponent=1.3),
    SamplerConfig(seed=6, mirostat=1, mirostat_tau=4.0, temperature=1.1),
    SamplerConfig(seed=7, mirostat=2, mirostat_tau=3.0, mirostat_eta=0.2),
    SamplerConfig(seed=2**40 + 8, temperature=0.0, repeat_penalty=1.5),  # greedy after penalties
    # top-n-sigma leaves its masked tokens in llama.cpp's array at -inf: top-k 40 then keeps some of
    # them, typical's entropy turns NaN (std::sort of NaN keys), XTC counts them
    SamplerConfig(seed=9, top_n_sigma=1.0, typical_p=0.9, xtc_probability=0.5, xtc_threshold=0.05),
    SamplerConfig(seed=10, top_n_sigma=1.0, typical_p=0.8, top_k=0),
    SamplerConfig(seed=11, top_n_sigma=1.0, xtc_probability=0.9, xtc_threshold=0.05, top_p=1.0, min_p=0.0),
]


@pytest.mark.parametrize("cfg", CHAIN_CONFIGS, ids=lambda c: f"seed{c.seed}")
def test_whole_chain_selects_llama_cpps_tokens(llama_cpp, llama_vocab, smollm, cfg):
    """60 steps with the tokens accepted into both chains; logits favour a few tokens so that
    penalties and DRY have repetitions to act on."""
    lc = llama_cpp
    n_vocab = smollm.tokenizer.n_vocab
    prompt = smollm.tokenizer.encode("a b a b a b: the end", add_special=False)
    chain = llama_chain(lc, llama_vocab, cfg, n_vocab)
    ours = Sampler(cfg, smollm.tokenizer)
    ours.accept_prompt(prompt)
    rng = np.random.default_rng(cfg.seed % 1000)
    try:
        for t in prompt:
            lc.llama_sampler_accept(chain, t)
        for step in range(60):
            z = (rng.standard_normal(n_vocab) * 2).astype(np.float32)
            z[prompt] += 4.0  # the prompt's tokens stay likely: repetitions happen
            arr = LlamaArray(lc, z).apply(lc, chain)
            ref = arr.selected_id
            lc.llama_sampler_accept(chain, ref)
            assert ours(z) == ref, step
    finally:
        lc.llama_sampler_free(chain)


def test_sampler_needs_the_tokenizer_for_dry_breakers_and_n_ctx_for_minus_one():
    with pytest.raises(ConfigError, match="tokenizer"):
        Sampler(SamplerConfig(dry_multiplier=0.8))
    with pytest.raises(ConfigError, match="n_ctx"):
        Sampler(SamplerConfig(penalty_last_n=-1, repeat_penalty=1.1))
    assert Sampler(SamplerConfig(penalty_last_n=-1, repeat_penalty=1.1), n_ctx=128).penalties.last_n == 128


def test_reset_replays_the_same_tokens():
    z = [logits_of(700 + i, n=300) for i in range(20)]
    s = Sampler(SamplerConfig(seed=3, repeat_penalty=1.2, xtc_probability=0.5))
    first = [s(x) for x in z]
    s.reset()
    assert [s(x) for x in z] == first
