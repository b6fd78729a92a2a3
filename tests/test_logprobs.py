"""Logit bias, log-probabilities and the generation loop's per-step logits (what the server's
``logit_bias``, ``logprobs`` and ``top_logprobs`` are built on), against maths done by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zigllama_lib.foundation.errors import ConfigError
from zigllama_lib.inference.generation import GenerationConfig, generate_ids, generate_steps, make_sampler
from zigllama_lib.inference.sampling import LogitBias, log_softmax, top_logprobs
from zigllama_lib.models.decoder import NUMERICS


def _hand_log_softmax(z):
    """log p_i = z_i - log sum_j exp z_j, summed exactly (math.fsum) in Python floats."""
    m = max(z)
    log_sum = math.log(math.fsum(math.exp(v - m) for v in z))
    return [v - m - log_sum for v in z]


def test_log_softmax_is_the_hand_computed_one():
    rng = np.random.default_rng(7)
    z = (rng.standard_normal(1000) * 6).astype(np.float32)
    np.testing.assert_allclose(log_softmax(z), _hand_log_softmax([float(v) for v in z]), rtol=0, atol=1e-12)
    assert math.isclose(math.fsum(np.exp(log_softmax(z))), 1.0, rel_tol=1e-12)


def test_log_softmax_keeps_banned_tokens_at_minus_infinity():
    lp = log_softmax(np.array([0.0, -np.inf, 0.0], np.float32))
    assert lp[1] == -np.inf and lp[0] == lp[2] == pytest.approx(math.log(0.5))


def test_top_logprobs_are_the_largest_ties_by_lower_id():
    z = np.array([1.0, 3.0, 2.0, 3.0, -1.0], np.float32)
    ids, lps = top_logprobs(z, 3)
    assert ids.tolist() == [1, 3, 2]  # the two 3.0s tie: lower id first
    hand = _hand_log_softmax([float(v) for v in z])
    np.testing.assert_allclose(lps, [hand[1], hand[3], hand[2]], rtol=0, atol=1e-12)
    assert top_logprobs(z, 0)[0].size == 0
    assert top_logprobs(z, 99)[0].tolist() == [1, 3, 2, 0, 4]  # n beyond the vocabulary: all of it


def test_logit_bias_adds_per_token_and_copies():
    z = np.arange(6, dtype=np.float32)
    bias = LogitBias({4: -100.0, 1: 2.5, 5: -math.inf}, 6)
    out = bias(z)
    assert out.tolist() == [0.0, 3.5, 2.0, 3.0, -96.0, -math.inf]
    assert z.tolist() == [0, 1, 2, 3, 4, 5]  # the input is untouched


@pytest.mark.parametrize("bias, match", [({6: 1.0}, "token id 6"), ({-1: 1.0}, "token id -1"),
                                         ({"3": 1.0}, "token id '3'"), ({2: math.nan}, "token 2"),
                                         ({2: math.inf}, "token 2"), ({2: "high"}, "token 2")])
def test_logit_bias_rejects_what_is_not_a_token_and_a_number(bias, match):
    with pytest.raises(ConfigError, match=match):
        LogitBias(bias, 6)


def test_steps_carry_the_logits_each_token_was_drawn_from(smollm):
    """Greedy: every yielded token is the argmax of the logits yielded with it; ``generate_ids``
    yields the same tokens."""
    nm = NUMERICS["llama.cpp"]
    ids = smollm.tokenizer.encode("The capital of France is")
    config = GenerationConfig(max_tokens=6, stop_at_eog=False)
    steps = list(generate_steps(smollm.decoder, ids, make_sampler(0.0, 40, 0.95, 0.05, None), nm, smollm.n_ctx,
                                smollm.tokenizer.is_eog, config))
    assert len(steps) == 6
    for s in steps:
        assert s.logits.shape == (smollm.n_vocab,) and s.token == int(np.argmax(s.logits))
    tokens = list(generate_ids(smollm.decoder, ids, make_sampler(0.0, 40, 0.95, 0.05, None), nm, smollm.n_ctx,
                               smollm.tokenizer.is_eog, config))
    assert tokens == [s.token for s in steps]


def test_a_logits_processor_changes_what_is_sampled(smollm):
    """Banning the greedy first token makes the runner-up of the same logits come first."""
    nm = NUMERICS["llama.cpp"]
    ids = smollm.tokenizer.encode("The capital of France is")
    config = GenerationConfig(max_tokens=1, stop_at_eog=False)

    def run(processor):
        return list(generate_steps(smollm.decoder, ids, make_sampler(0.0, 40, 0.95, 0.05, None), nm, smollm.n_ctx,
                                   smollm.tokenizer.is_eog, config, logits_processor=processor))[0]

    plain = run(None)
    banned = run(LogitBias({plain.token: -math.inf}, smollm.n_vocab))
    runner_up = int(np.argsort(-plain.logits, kind="stable")[1])
    assert banned.token == runner_up != plain.token
    assert banned.logits[plain.token] == -math.inf
