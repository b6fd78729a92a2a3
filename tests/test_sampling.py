"""Samplers: each filter against hand-done maths, the chain, seeded draws, edge cases, llama.cpp."""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest

from zigllama_lib.foundation.errors import ConfigError, ZigLlamaError
from zigllama_lib.inference import sampler_chain, sampling
from zigllama_lib.inference.sampler_chain import Sampler
from zigllama_lib.inference.sampling import (
    Candidates,
    SamplerConfig,
    apply_temperature,
    draw,
    greedy,
    min_p_filter,
    softmax,
    top_k_filter,
    top_p_filter,
)

# p = [0.5, 0.3, 0.15, 0.05] as logits (float64, so the hand maths is exact to ~1e-16)
P4 = np.array([0.5, 0.3, 0.15, 0.05])
Z4 = np.log(P4)

# Upper 0.1% points of the chi-square distribution, chi2.ppf(0.999, df), from tables.
CHI2_999 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515}


def kept(c: Candidates) -> list[int]:
    return c.ids.tolist()


def probs_by_id(c: Candidates) -> dict[int, float]:
    return dict(zip(c.ids.tolist(), c.probs.tolist()))


def all_off(**kw) -> SamplerConfig:
    """Every filter disabled, temperature 1, unless overridden."""
    return SamplerConfig(**{"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 0, **kw})


# ----------------------------------------------------------------- config validation


@pytest.mark.parametrize("field, value", [
    ("temperature", -0.1), ("temperature", math.inf), ("temperature", math.nan), ("temperature", "hot"),
    ("temperature", True),
    ("top_k", 1.5), ("top_k", None), ("top_k", True), ("top_k", "40"),
    ("top_p", 0.0), ("top_p", -0.5), ("top_p", 1.01), ("top_p", math.nan), ("top_p", None),
    ("min_p", -0.01), ("min_p", 1.5), ("min_p", math.nan),
    ("seed", -1), ("seed", 1.5), ("seed", "42"),
])
def test_bad_settings_raise_config_error_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        SamplerConfig(**{field: value})


def test_good_settings_are_accepted():
    SamplerConfig()
    SamplerConfig(temperature=0, top_k=-1, top_p=1.0, min_p=0.0, seed=None)
    SamplerConfig(temperature=2, top_k=np.int64(5), top_p=1e-6, min_p=1.0, seed=np.uint32(7))
    assert issubclass(ConfigError, ZigLlamaError)
    with pytest.raises(ConfigError, match="config"):
        Sampler({"temperature": 0.5})


# ----------------------------------------------------------------- greedy


def test_greedy_is_argmax_and_ties_go_to_the_lowest_id():
    assert greedy([1.0, 3.0, 3.0, 0.0]) == 1
    assert greedy(np.array([-np.inf, 2.0, -np.inf], np.float32)) == 1
    assert greedy([5]) == 0
    assert greedy([0.0, np.inf, np.inf]) == 1


def test_temperature_zero_is_greedy_whatever_the_other_settings():
    z = np.array([0.1, 2.0, 2.0, 1.9], np.float32)
    for cfg in (SamplerConfig(temperature=0), SamplerConfig(temperature=0.0, top_k=1, top_p=0.01, min_p=1.0, seed=3),
                SamplerConfig(temperature=0, top_k=0, top_p=1.0, min_p=0.0)):
        sampler = Sampler(cfg)
        assert [sampler(z) for _ in range(20)] == [1] * 20
        c = sampler.candidates(z)
        assert kept(c) == [1] and c.probs.tolist() == [1.0]


# ----------------------------------------------------------------- top-k


def test_top_k_keeps_the_k_largest_sorted():
    c = Candidates.from_logits([1.0, 5.0, 3.0, 4.0, 2.0])
    assert kept(top_k_filter(c, 1)) == [1]
    assert kept(top_k_filter(c, 3)) == [1, 3, 2]
    assert kept(top_k_filter(c, 5)) == [1, 3, 2, 4, 0]
    assert kept(top_k_filter(c, 100)) == [1, 3, 2, 4, 0]  # k > n_vocab: everything
    assert top_k_filter(c, 0) is c and top_k_filter(c, -3) is c


def test_top_k_ties_at_the_boundary_keep_the_lowest_ids():
    c = Candidates.from_logits([2.0, 1.0, 7.0, 1.0, 1.0, 0.0])
    assert kept(top_k_filter(c, 3)) == [2, 0, 1]
    assert kept(top_k_filter(c, 4)) == [2, 0, 1, 3]


def test_top_k_matches_a_full_sort_on_random_vectors_with_many_ties():
    rng = np.random.default_rng(1)
    for _ in range(300):
        n = int(rng.integers(1, 60))
        z = rng.integers(-3, 4, n).astype(np.float32)  # few distinct values: lots of ties
        k = int(rng.integers(1, n + 3))
        reference = np.lexsort((np.arange(n), -z))[:k]  # descending logit, then ascending id
        got = top_k_filter(Candidates.from_logits(z), k)
        assert kept(got) == reference.tolist() and got.is_sorted
        assert np.array_equal(got.logits, z[reference])


# ----------------------------------------------------------------- top-p


@pytest.mark.parametrize("p, expected", [
    (0.1, [0]),           # 0.5 >= 0.1 already
    (0.5, [0]),           # 0.5 >= 0.5: the boundary is inclusive
    (0.5001, [0, 1]),
    (0.8, [0, 1]),        # 0.5 + 0.3 = 0.8 >= 0.8
    (0.81, [0, 1, 2]),    # needs 0.95
    (0.95, [0, 1, 2]),
    (0.951, [0, 1, 2, 3]),
    (1.0, [0, 1, 2, 3]),  # off
])
def test_top_p_keeps_the_smallest_prefix_reaching_p(p, expected):
    assert kept(top_p_filter(Candidates.from_logits(Z4), p)) == expected


def test_top_p_with_exactly_representable_probabilities():
    c = Candidates.from_logits([0.0, 0.0, 0.0, 0.0])  # p = 1/4 each, exactly
    assert kept(top_p_filter(c, 0.25)) == [0]
    assert kept(top_p_filter(c, 0.5)) == [0, 1]
    assert kept(top_p_filter(c, 0.75)) == [0, 1, 2]
    assert kept(top_p_filter(c, 0.76)) == [0, 1, 2, 3]


def test_top_p_sorts_by_probability_not_by_id():
    perm = [2, 0, 3, 1]  # token 2 has p = 0.5, token 0 has 0.3, token 3 0.15, token 1 0.05
    c = Candidates.from_logits(Z4[np.argsort(perm)])
    assert kept(top_p_filter(c, 0.8)) == [2, 0]


def test_top_p_uses_the_distribution_left_by_top_k():
    """After top-k = 2 the renormalised probabilities are 0.625 / 0.375, so top-p = 0.6 keeps one token."""
    c = Candidates.from_logits(Z4)
    assert kept(top_p_filter(top_k_filter(c, 2), 0.6)) == [0]
    assert kept(top_p_filter(c, 0.6)) == [0, 1]  # on the full distribution 0.5 < 0.6


def test_top_p_on_a_large_unsorted_set_matches_the_sorted_definition():
    rng = np.random.default_rng(2)
    for scale in (0.5, 2.0, 8.0):  # flat to peaked: the sorted prefix grows 256 -> 4096 -> all
        z = (rng.standard_normal(20000) * scale).astype(np.float32)
        full = sampling.sort_candidates(Candidates.from_logits(z))
        for p in (0.3, 0.9, 0.99):
            cum = np.cumsum(softmax(full).probs)
            n_keep = int(np.argmax(cum >= p)) + 1
            assert kept(top_p_filter(Candidates.from_logits(z), p)) == full.ids[:n_keep].tolist()


# ----------------------------------------------------------------- min-p


@pytest.mark.parametrize("min_p, expected", [
    (0.25, [0, 1, 2]),    # keep p >= 0.25 * 0.5 = 0.125
    (0.1, [0, 1, 2, 3]),  # keep p >= 0.05: 0.05 itself stays (inclusive)
    (0.31, [0, 1]),       # keep p >= 0.155
    (0.6, [0, 1]),        # keep p >= 0.3
    (0.61, [0]),
    (1.0, [0]),           # only the maximum
    (0.0, [0, 1, 2, 3]),  # off
])
def test_min_p_keeps_tokens_within_a_factor_of_the_best(min_p, expected):
    assert kept(min_p_filter(Candidates.from_logits(Z4), min_p)) == expected


def test_min_p_keeps_order_and_ties_of_the_maximum():
    c = Candidates.from_logits([0.0, 3.0, 3.0, 2.9])
    assert kept(min_p_filter(c, 1.0)) == [1, 2]
    assert kept(min_p_filter(c, 0.9)) == [1, 2, 3]  # exp(-0.1) = 0.905 >= 0.9


# ----------------------------------------------------------------- temperature, softmax


def test_temperature_divides_the_logits():
    c = Candidates.from_logits([2.0, 1.0, 0.0])
    assert apply_temperature(c, 0.5).logits.tolist() == [4.0, 2.0, 0.0]
    assert apply_temperature(c, 2.0).logits.tolist() == [1.0, 0.5, 0.0]
    assert apply_temperature(c, 1.0) is c
    e = np.exp([4.0, 2.0, 0.0])
    np.testing.assert_allclose(softmax(apply_temperature(c, 0.5)).probs, e / e.sum(), rtol=1e-14)
    assert kept(apply_temperature(Candidates.from_logits([0.0, 3.0, 3.0]), 0.0)) == [1]


def test_softmax_is_normalised_and_overflow_safe():
    c = softmax(Candidates.from_logits(Z4))
    np.testing.assert_allclose(c.probs, P4, rtol=1e-14)
    big = softmax(Candidates.from_logits(np.array([1000.0, 999.0], np.float32)))
    np.testing.assert_allclose(big.probs, [1 / (1 + math.exp(-1)), 1 / (1 + math.e)], rtol=1e-6)
    masked = softmax(Candidates.from_logits([0.0, -np.inf, 0.0]))
    assert masked.probs.tolist() == [0.5, 0.0, 0.5] and masked.probs.dtype == np.float64


# ----------------------------------------------------------------- the chain


@pytest.mark.parametrize("cfg, expected", [
    # top-k 3 -> {0,1,2}, renormalised 0.526, 0.316, 0.158; top-p 0.8: 0.526 < 0.8 <= 0.842 -> {0,1}
    (dict(top_k=3, top_p=0.8), {0: 0.5 / 0.8, 1: 0.3 / 0.8}),
    # min-p 0.25 keeps p >= 0.125: {0,1,2}, renormalised by 0.95
    (dict(min_p=0.25), {0: 0.5 / 0.95, 1: 0.3 / 0.95, 2: 0.15 / 0.95}),
    # ... then T = 0.5 squares the probabilities: 0.25, 0.09, 0.0225 over 0.3625
    (dict(min_p=0.25, temperature=0.5), {0: 0.25 / 0.3625, 1: 0.09 / 0.3625, 2: 0.0225 / 0.3625}),
    # top-k 2 -> 0.625 / 0.375; min-p 0.7 wants p >= 0.4375: only token 0
    (dict(top_k=2, top_p=0.95, min_p=0.7), {0: 1.0}),
    # temperature comes after top-p: T = 10 flattens the kept pair but keeps the same pair
    (dict(top_p=0.8, temperature=10.0), {0: 0.5 ** 0.1 / (0.5 ** 0.1 + 0.3 ** 0.1),
                                         1: 0.3 ** 0.1 / (0.5 ** 0.1 + 0.3 ** 0.1)}),
    (dict(), {i: float(P4[i]) for i in range(4)}),
])
def test_candidates_after_the_whole_chain(cfg, expected):
    c = Sampler(all_off(**cfg)).candidates(Z4)
    assert kept(c) == sorted(expected, key=lambda i: -P4[i])
    got = probs_by_id(c)
    for i, p in expected.items():
        assert got[i] == pytest.approx(p, rel=1e-12)


def test_default_chain_on_float32_logits():
    """top-k 40 -> top-p 0.95 -> min-p 0.05 -> T 0.8, checked by recomputing each step with numpy."""
    rng = np.random.default_rng(5)
    z = (rng.standard_normal(49152) * 2.5).astype(np.float32)
    c = Sampler(SamplerConfig(seed=0)).candidates(z)
    top = np.argsort(-z, kind="stable")[:40]
    q = np.exp(z[top].astype(np.float64) - z[top[0]])
    q /= q.sum()
    n_p = int(np.argmax(np.cumsum(q) >= 0.95)) + 1
    keep = top[:n_p][q[:n_p] >= 0.05 * q[0]]
    w = np.exp((z[keep].astype(np.float64) - z[keep[0]]) / 0.8)
    assert kept(c) == keep.tolist()
    np.testing.assert_allclose(c.probs, w / w.sum(), rtol=1e-5)
    assert c.probs.sum() == pytest.approx(1.0, abs=1e-12)


# ----------------------------------------------------------------- drawing


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


def draw_counts(sampler: Sampler, logits, n_vocab: int, n: int) -> np.ndarray:
    return np.bincount([sampler(logits) for _ in range(n)], minlength=n_vocab)


@pytest.mark.parametrize("cfg", [
    dict(),                            # plain softmax of [0.5, 0.3, 0.15, 0.05]
    dict(temperature=0.5),             # sharpened
    dict(min_p=0.25, temperature=2.0),  # filtered, then flattened
    dict(top_k=3, top_p=0.8),
])
def test_seeded_draw_frequencies_match_the_probabilities(cfg):
    """Pearson's chi-square over N = 20000 draws, tested at the 0.1% level.

    If the sampler draws from ``candidates().probs``, the statistic follows a
    chi-square law with (kept - 1) degrees of freedom, so a correct sampler
    exceeds the 99.9% point for only 1 seed in 1000; the seed is fixed, so the
    test is deterministic. The same counts are also tested against the
    *unfiltered, T = 1* distribution to show the test has the power to see a
    wrong distribution.
    """
    sampler = Sampler(all_off(seed=1234, **cfg))
    c = sampler.candidates(Z4)
    counts = draw_counts(sampler, Z4, 4, 20000)
    assert counts[np.setdiff1d(np.arange(4), c.ids)].sum() == 0  # filtered tokens never drawn
    if len(c) > 1:
        df = len(c) - 1
        assert chi_square(counts[c.ids], c.probs) < CHI2_999[df]
    if cfg:
        assert chi_square(counts + 0.5, P4) > CHI2_999[3] * 10  # +0.5: no empty cell


def test_draw_never_picks_a_zero_probability_token():
    c = softmax(Candidates.from_logits([0.0, -np.inf, 0.0, -np.inf]))
    rng = np.random.default_rng(0)
    assert set(draw(c, rng) for _ in range(2000)) == {0, 2}


class FixedRandom:
    """A stand-in generator returning chosen uniforms, to probe the inverse CDF."""

    def __init__(self, *values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0)


def test_draw_inverts_the_cumulative_distribution():
    c = softmax(Candidates.from_logits(Z4))  # cumulative 0.5, 0.8, 0.95, 1.0
    us = [0.0, 0.49, 0.51, 0.79, 0.81, 0.949, 0.951, 1 - 2 ** -53]
    assert [draw(c, FixedRandom(u)) for u in us] == [0, 0, 1, 1, 2, 2, 3, 3]


# ----------------------------------------------------------------- determinism


def test_same_seed_same_tokens_different_seeds_differ():
    rng = np.random.default_rng(9)
    steps = [(rng.standard_normal(1000) * 2).astype(np.float32) for _ in range(50)]

    def run(seed):
        sampler = Sampler(SamplerConfig(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=seed))
        return [sampler(z) for z in steps]

    assert run(42) == run(42)
    assert len({tuple(run(s)) for s in range(5)}) == 5
    sampler = Sampler(SamplerConfig(seed=None))
    assert all(0 <= sampler(z) < 1000 for z in steps)


def test_candidates_do_not_consume_randomness():
    z = np.log(P4)
    a, b = Sampler(all_off(seed=3)), Sampler(all_off(seed=3))
    for _ in range(5):
        a.candidates(z)
    assert [a(z) for _ in range(50)] == [b(z) for _ in range(50)]


# ----------------------------------------------------------------- edge cases


@pytest.mark.parametrize("cfg", [SamplerConfig(seed=0), all_off(), all_off(temperature=3.0), SamplerConfig(temperature=0)])
def test_all_minus_infinity_but_one(cfg):
    z = np.full(1000, -np.inf, np.float32)
    z[617] = -50.0
    sampler = Sampler(cfg)
    assert {sampler(z) for _ in range(50)} == {617}
    c = sampler.candidates(z)
    assert kept(c) == [617] and c.probs.tolist() == [1.0]


@pytest.mark.parametrize("cfg", [SamplerConfig(seed=0), all_off(), SamplerConfig(temperature=0),
                                 all_off(top_k=1), all_off(top_p=0.01), all_off(min_p=1.0)])
def test_a_vocabulary_of_one(cfg):
    sampler = Sampler(cfg)
    assert sampler(np.array([0.3], np.float32)) == 0
    assert kept(sampler.candidates([0.3])) == [0]


def test_top_k_larger_than_the_vocabulary_is_all_of_it():
    a = Sampler(all_off(top_k=1000, seed=5)).candidates(Z4)
    b = Sampler(all_off(top_k=0, seed=5)).candidates(Z4)
    assert kept(a) == kept(b) == [0, 1, 2, 3]
    np.testing.assert_array_equal(a.probs, b.probs)


@pytest.mark.parametrize("cfg", [SamplerConfig(seed=0), SamplerConfig(temperature=0), all_off()])
def test_nan_logits_are_refused(cfg):
    z = np.array([0.1, np.nan, 0.3], np.float32)
    with pytest.raises(ConfigError, match="logits contain NaN"):
        Sampler(cfg)(z)
    with pytest.raises(ZigLlamaError, match="NaN"):
        Sampler(cfg).candidates(z)


def test_malformed_logits_are_refused():
    sampler = Sampler(SamplerConfig(seed=0))
    with pytest.raises(ConfigError, match="all -inf"):
        sampler(np.full(5, -np.inf))
    with pytest.raises(ConfigError, match="all -inf"):
        greedy(np.full(5, -np.inf))
    with pytest.raises(ConfigError, match=r"\+inf"):
        sampler(np.array([0.0, np.inf]))
    with pytest.raises(ConfigError, match="1-D"):
        sampler(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match="empty"):
        sampler(np.zeros(0))
    with pytest.raises(ConfigError, match="real numbers"):
        sampler(np.array(["a", "b"]))
    assert sampler(np.array([0, 5, 1])) in (0, 1, 2)  # integers are fine


# ----------------------------------------------------------------- cost


def test_no_step_sorts_the_whole_vocabulary(monkeypatch):
    """With top-k set only k logits are ever sorted; top-p alone sorts a prefix of 256."""
    sizes = []
    real_sort = sampling.sort_candidates

    def spy(c):
        sizes.append(len(c))
        return real_sort(c)

    monkeypatch.setattr(sampling, "sort_candidates", spy)
    real_lexsort = np.lexsort

    def lexsort_spy(keys):  # the chain's llama.cpp-exact top-p and min-p sort with lexsort
        sizes.append(len(keys[0]))
        return real_lexsort(keys)

    monkeypatch.setattr(sampler_chain.np, "lexsort", lexsort_spy)
    rng = np.random.default_rng(4)
    z = (rng.standard_normal(262144) * 3).astype(np.float32)
    z[:10] += 40  # a peaked distribution, as a trained model gives
    Sampler(SamplerConfig(seed=0))(z)
    assert max(sizes) == 40
    sizes.clear()
    Sampler(SamplerConfig(top_k=0, top_p=0.95, seed=0))(z)
    assert max(sizes) <= 256
    sizes.clear()
    Sampler(SamplerConfig(top_k=0, top_p=1.0, min_p=0.05, seed=0))(z)
    assert sizes == []


# ----------------------------------------------------------------- llama.cpp as oracle


def llama_cpp_chain(llama_cpp, logits: np.ndarray, cfg: SamplerConfig):
    """Kept ids and probabilities after llama.cpp's top-k, top-p, min-p, temp and dist samplers."""
    lc = llama_cpp
    n = len(logits)
    buf = (lc.llama_token_data * n)()
    view = np.ctypeslib.as_array(buf)
    view["id"], view["logit"], view["p"] = np.arange(n), logits, 0.0
    cur = lc.llama_token_data_array(data=ctypes.cast(buf, lc.llama_token_data_p), size=n, selected=-1,
                                    sorted=False)
    chain = [lc.llama_sampler_init_top_k(cfg.top_k), lc.llama_sampler_init_top_p(cfg.top_p, 1),
             lc.llama_sampler_init_min_p(cfg.min_p, 1), lc.llama_sampler_init_temp(cfg.temperature),
             lc.llama_sampler_init_dist(0)]
    try:
        for smpl in chain:
            lc.llama_sampler_apply(smpl, ctypes.byref(cur))
    finally:
        for smpl in chain:
            lc.llama_sampler_free(smpl)
    ids = np.array([cur.data[i].id for i in range(cur.size)])
    probs = np.array([cur.data[i].p for i in range(cur.size)])
    return ids, probs


@pytest.mark.oracle
@pytest.mark.parametrize("cfg", [
    SamplerConfig(),
    SamplerConfig(temperature=0.7, top_k=100, top_p=0.9, min_p=0.02),
    SamplerConfig(temperature=1.3, top_k=0, top_p=0.8, min_p=0.0),
    SamplerConfig(temperature=1.0, top_k=0, top_p=1.0, min_p=0.1),
    SamplerConfig(temperature=0.5, top_k=5, top_p=1.0, min_p=0.0),
    SamplerConfig(temperature=2.0, top_k=0, top_p=1.0, min_p=0.0),
])
def test_candidates_match_llama_cpp(llama_cpp, cfg):
    rng = np.random.default_rng(11)
    for scale in (1.0, 3.0):
        z = (rng.standard_normal(8000) * scale).astype(np.float32)
        ref_ids, ref_probs = llama_cpp_chain(llama_cpp, z, cfg)
        c = Sampler(cfg).candidates(z)
        assert sorted(c.ids.tolist()) == sorted(ref_ids.tolist())
        ours, theirs = probs_by_id(c), dict(zip(ref_ids.tolist(), ref_probs.tolist()))
        np.testing.assert_allclose([ours[i] for i in theirs], list(theirs.values()), rtol=1e-4, atol=1e-9)
