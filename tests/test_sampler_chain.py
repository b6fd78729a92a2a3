"""Layer 6: llama.cpp's stateful samplers and seeded draws, against its own sampler C API and by hand."""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest

from zigllama_lib.foundation.errors import ConfigError
from zigllama_lib.inference.sampler_chain import (
    MirostatV2,
    Mt19937,
    Penalties,
    canonical_double,
    dist_draw,
    dynamic_temperature,
    llama_softmax,
    top_n_sigma_filter,
    typical_filter,
)
from zigllama_lib.inference.sampling import Candidates, top_k_filter


# -- llama.cpp's samplers through ctypes ------------------------------------------------------
class LlamaArray:
    """A ``llama_token_data_array`` over ``logits`` (ids 0..n-1), kept alive with its buffer."""

    def __init__(self, lc, logits: np.ndarray):
        n = len(logits)
        self.buf = (lc.llama_token_data * n)()
        view = np.ctypeslib.as_array(self.buf)
        view["id"], view["logit"], view["p"] = np.arange(n), logits, 0.0
        self.cur = lc.llama_token_data_array(data=ctypes.cast(self.buf, lc.llama_token_data_p), size=n,
                                             selected=-1, sorted=False)

    def apply(self, lc, *samplers):
        for s in samplers:
            lc.llama_sampler_apply(s, ctypes.byref(self.cur))
        return self

    def kept(self) -> dict[int, tuple[float, float]]:
        """id -> (logit, p) of the finite candidates."""
        d = self.cur.data
        return {d[i].id: (d[i].logit, d[i].p) for i in range(self.cur.size) if d[i].logit != -math.inf}

    @property
    def selected_id(self) -> int:
        return self.cur.data[self.cur.selected].id


def logits_of(seed: int, n: int = 4000, scale: float = 2.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


# -- the random generator -----------------------------------------------------------------------
def test_mt19937_is_numpys_legacy_generator():
    """std::mt19937(seed) == numpy's RandomState(seed) raw outputs (both init_genrand)."""
    for seed in (0, 1, 42, 2**32 - 1):
        ours = Mt19937(seed)
        ref = np.random.RandomState(seed).randint(0, 2**32, size=1300, dtype=np.uint64)
        assert [ours.next_u32() for _ in range(1300)] == ref.tolist()
    # the C++ standard's check value: the 10000th output of a default-seeded (5489) mt19937
    rng = Mt19937(5489)
    for _ in range(9999):
        rng.next_u32()
    assert rng.next_u32() == 4123659995
    with pytest.raises(ConfigError, match="seed"):
        Mt19937(-1)


def test_canonical_double_by_hand():
    raw = Mt19937(1)
    a, b = raw.next_u32(), raw.next_u32()
    assert canonical_double(Mt19937(1)) == (a + b * 2.0**32) / 2.0**64


@pytest.mark.oracle
def test_seeded_draws_are_llama_cpps(llama_cpp):
    """top-k 40 -> dist(seed): the same token as llama.cpp at each of 60 steps of one stream."""
    lc = llama_cpp
    for seed in (3, 1234):
        dist, top_k = lc.llama_sampler_init_dist(seed), lc.llama_sampler_init_top_k(40)
        rng = Mt19937(seed)
        try:
            for step in range(60):
                z = logits_of(step, scale=1.5)
                ref = LlamaArray(lc, z).apply(lc, top_k, dist).selected_id
                assert dist_draw(top_k_filter(Candidates.from_logits(z), 40), rng) == ref, (seed, step)
        finally:
            lc.llama_sampler_free(dist), lc.llama_sampler_free(top_k)


# -- penalties ------------------------------------------------------------------------------------
def test_penalties_by_hand():
    pen = Penalties(last_n=3, repeat=2.0, frequency=0.5, presence=0.25)
    for t in (1, 2, 1, 0):  # window of 3: (2, 1, 0) -> counts {2: 1, 1: 1, 0: 1}; the first 1 left
        pen.accept(t)
    c = pen(Candidates(np.arange(4), np.array([-1.0, 4.0, 2.0, 3.0], np.float32)))
    # id 0: -1*2 - (0.5+0.25) = -2.75; id 1: 4/2 - 0.75 = 1.25; id 2: 2/2 - 0.75 = 0.25; id 3 unseen
    assert c.logits.tolist() == [-2.75, 1.25, 0.25, 3.0]
    assert Penalties(last_n=0, repeat=2.0).disabled
    with pytest.raises(ConfigError, match="penalty_last_n"):
        Penalties(last_n=-1)


@pytest.mark.oracle
@pytest.mark.parametrize("last_n, repeat, freq, present", [(64, 1.3, 0.0, 0.0), (8, 1.1, 0.4, 0.6), (5, 1.0, 0.2, 0.0)])
def test_penalties_match_llama_cpp(llama_cpp, last_n, repeat, freq, present):
    lc = llama_cpp
    n = 4000
    history = np.random.default_rng(9).integers(0, 60, 100).tolist()
    smpl = lc.llama_sampler_init_penalties(n, last_n, repeat, freq, present)
    ours = Penalties(last_n, repeat, freq, present)
    try:
        for t in history:
            lc.llama_sampler_accept(smpl, t)
            ours.accept(t)
        z = logits_of(1, n)
        z[:60] = np.abs(z[:60]) * np.where(np.arange(60) % 2, 1, -1)  # seen tokens with both signs
        ref = LlamaArray(lc, z).apply(lc, smpl).kept()
        got = ours(Candidates.from_logits(z))
        assert np.array_equal(got.logits, np.array([ref[i][0] for i in range(n)], np.float32))
    finally:
        lc.llama_sampler_free(smpl)


# -- typical, top-n-sigma, dynamic temperature ---------------------------------------------------
def test_typical_by_hand():
    """p = (0.5, 0.3, 0.2): H = 1.0297; |-log p - H| = 0.337, 0.174, 0.580: order 1, 0, 2;
    mass 0.3 then 0.8 > 0.7 keeps ids {1, 0}."""
    z = np.log(np.array([0.5, 0.3, 0.2], np.float32))
    assert sorted(typical_filter(Candidates.from_logits(z), 0.7).ids.tolist()) == [0, 1]
    assert typical_filter(Candidates.from_logits(z), 0.2).ids.tolist() == [1]
    assert len(typical_filter(Candidates.from_logits(z), 1.0)) == 3


def test_top_n_sigma_by_hand():
    z = np.array([0.0, 1.0, 2.0, 3.0], np.float32)  # mean 1.5, std sqrt(1.25) = 1.118
    assert top_n_sigma_filter(Candidates.from_logits(z), 1.0).ids.tolist() == [2, 3]  # >= 3 - 1.118
    assert top_n_sigma_filter(Candidates.from_logits(z), 2.0).ids.tolist() == [1, 2, 3]  # >= 0.764


def test_dynamic_temperature_by_hand():
    """Uniform logits: normalised entropy 1 -> T = temp + delta; one dominant token: close to temp - delta."""
    flat = dynamic_temperature(Candidates.from_logits(np.zeros(4, np.float32) + 2), 1.0, 0.5, 1.0)
    assert np.allclose(flat.logits, 2 / 1.5)
    peaked = dynamic_temperature(Candidates.from_logits(np.array([30, 0, 0, 0], np.float32)), 1.0, 0.5, 1.0)
    assert np.isclose(peaked.logits[0], 30 / 0.5, rtol=1e-3)


@pytest.mark.oracle
@pytest.mark.parametrize("p", [0.3, 0.9, 0.99])
def test_typical_matches_llama_cpp(llama_cpp, p):
    lc = llama_cpp
    smpl = lc.llama_sampler_init_typical(p, 1)
    try:
        for seed in range(3):
            z = logits_of(seed)
            ref = LlamaArray(lc, z).apply(lc, smpl).kept()
            got = typical_filter(Candidates.from_logits(z), p)
            assert set(got.ids.tolist()) == set(ref)
    finally:
        lc.llama_sampler_free(smpl)


@pytest.mark.oracle
@pytest.mark.parametrize("n", [0.5, 1.0, 2.5])
def test_top_n_sigma_matches_llama_cpp(llama_cpp, n):
    lc = llama_cpp
    smpl = lc.llama_sampler_init_top_n_sigma(n)
    try:
        z = logits_of(4)
        ref = LlamaArray(lc, z).apply(lc, smpl).kept()
        assert set(top_n_sigma_filter(Candidates.from_logits(z), n).ids.tolist()) == set(ref)
    finally:
        lc.llama_sampler_free(smpl)


@pytest.mark.oracle
@pytest.mark.parametrize("temp, delta, exponent", [(0.8, 0.5, 1.0), (1.0, 0.9, 2.0), (0.7, 0.0, 1.0)])
def test_dynamic_temperature_matches_llama_cpp(llama_cpp, temp, delta, exponent):
    lc = llama_cpp
    top_k, smpl = lc.llama_sampler_init_top_k(200), lc.llama_sampler_init_temp_ext(temp, delta, exponent)
    try:
        z = logits_of(5)
        ref = LlamaArray(lc, z).apply(lc, top_k, smpl).kept()
        got = dynamic_temperature(top_k_filter(Candidates.from_logits(z), 200), temp, delta, exponent)
        ours = dict(zip(got.ids.tolist(), got.logits.tolist()))
        assert set(ours) == set(ref)
        np.testing.assert_allclose([ours[i] for i in ref], [ref[i][0] for i in ref], rtol=1e-5)
    finally:
        lc.llama_sampler_free(top_k), lc.llama_sampler_free(smpl)


# -- Mirostat v2 ----------------------------------------------------------------------------------
@pytest.mark.oracle
def test_mirostat_v2_draws_match_llama_cpp(llama_cpp):
    """temp 1 -> mirostat_v2(seed, tau, eta): same tokens as llama.cpp over 40 steps."""
    lc = llama_cpp
    seed, tau, eta = 7, 3.0, 0.2
    smpl = lc.llama_sampler_init_mirostat_v2(seed, tau, eta)
    ours = MirostatV2(tau, eta, seed)
    try:
        for step in range(40):
            z = logits_of(100 + step, scale=3.0)
            ref = LlamaArray(lc, z).apply(lc, smpl).selected_id
            assert ours(Candidates.from_logits(z)) == ref, step
    finally:
        lc.llama_sampler_free(smpl)


def test_llama_softmax_sums_to_one_and_sorts():
    s = llama_softmax(Candidates.from_logits(np.array([1.0, 3.0, 2.0, 3.0], np.float32)))
    assert s.ids.tolist() == [1, 3, 2, 0] and abs(float(s.probs.sum()) - 1) < 1e-6


def test_mirostat_v2_surprise_converges_to_tau(smollm):
    """On SmolLM2's real logits, the running surprise of Mirostat v2's draws settles near tau.

    Mirostat can only cut surprising tokens, never add surprise: at temperature 1.5 (applied
    before it, as llama.cpp's chain does) the model's own surprise is well above tau = 3, so the
    truncation at ``mu`` is what holds the average there."""
    from zigllama_lib.models.decoder import numerics_named

    tau, temperature = 3.0, np.float32(1.5)
    miro = MirostatV2(tau=tau, eta=0.1, seed=11)
    ids = smollm.tokenizer.encode("Once upon a time, in a small village,", add_special=True)
    numerics = numerics_named("llama.cpp")
    cache = smollm.decoder.new_cache(256, numerics)
    logits = smollm.decoder.forward(ids, cache, numerics)[-1]
    for _ in range(120):
        t = miro(Candidates.from_logits(logits / temperature))
        logits = smollm.decoder.forward([t], cache, numerics)[-1]
    late = float(np.mean(miro.surprises[40:]))
    assert abs(late - tau) < 0.5, late


def test_libstdcpp_sort_of_nan_keys_is_the_compiled_one(tmp_path):
    """The permutation std::sort makes with an always-false comparator (llama.cpp's typical sampling
    when its entropy is NaN), against the same std::sort compiled here."""
    import shutil
    import subprocess

    from zigllama_lib.inference.sampler_chain import libstdcpp_sort_all_equivalent

    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("needs g++ (libstdc++) for the reference std::sort")
    src = tmp_path / "s.cpp"
    src.write_text("""#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <vector>
int main() {
    for (int n : {0, 1, 2, 16, 17, 18, 33, 40, 100, 1000, 1023, 4097, 49152}) {
        std::vector<float> key(n, NAN);
        std::vector<size_t> idx(n);
        std::iota(idx.begin(), idx.end(), 0);
        std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return key[a] < key[b]; });
        printf("%d", n);
        for (size_t v : idx) printf(" %zu", v);
        printf("\\n");
    }
}
""", encoding="utf-8")
    subprocess.run([gxx, "-O2", "-std=c++17", str(src), "-o", str(tmp_path / "s")], check=True, timeout=120)
    out = subprocess.run([str(tmp_path / "s")], check=True, capture_output=True, text=True, timeout=60).stdout
    for line in out.splitlines():
        n, *perm = map(int, line.split())
        assert libstdcpp_sort_all_equivalent(n).tolist() == perm, n
