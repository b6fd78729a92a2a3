"""Contrastive search and classifier-free guidance (inference/strategies.py).

Oracles: greedy search (contrastive search with alpha = 0; guidance with gamma = 1), and the two
algorithms written out again here the plain way -- a deep copy of a contiguous KV cache per candidate,
one forward pass each, the formulas in numpy -- which must choose the same tokens as the library's
forked, batched implementation.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from zigllama_lib.foundation.errors import ConfigError
from zigllama_lib.inference.generation import GenerationConfig, generate_steps, make_sampler
from zigllama_lib.inference.strategies import cfg_steps, contrastive_search, degeneration_penalty, guided_logits
from zigllama_lib.models.decoder import numerics_named

NM = numerics_named("llama.cpp")


def _greedy(model, ids, n):
    return [s.token for s in generate_steps(model.decoder, ids, make_sampler(0, 40, 0.95, 0.05, None), NM,
                                            model.n_ctx, model.tokenizer.is_eog, GenerationConfig(max_tokens=n))]


def test_degeneration_penalty_by_hand():
    cand = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    ctx = np.array([[0.0, 2.0], [3.0, 0.0]])
    # cos: row 0 -> (0, 1); row 1 -> (1/sqrt2, 1/sqrt2); zero vector -> 0
    assert np.allclose(degeneration_penalty(cand, ctx), [1.0, 2 ** -0.5, 0.0])


def test_contrastive_alpha_zero_is_greedy(smollm):
    ids = smollm.tokenizer.encode("The capital of France is")
    got = [s.token for s in contrastive_search(smollm.decoder, ids, NM, smollm.n_ctx, smollm.tokenizer.is_eog,
                                               max_tokens=16, k=4, alpha=0.0)]
    assert got == _greedy(smollm, ids, 16)


def _contrastive_by_hand(model, ids, n, k, alpha):
    dec = model.decoder
    cache = dec.new_cache(model.n_ctx, NM)
    sink = []
    logits = dec.forward(np.asarray(ids), cache, NM, all_logits=True, hidden_sink=sink)[-1]
    context = list(sink[0].astype(np.float64))
    out = []
    for _ in range(n):
        z = logits.astype(np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        cand = np.argsort(-p, kind="stable")[:k]
        best = None
        for v in cand:
            c = copy.deepcopy(cache)
            s = []
            lv = dec.forward([int(v)], c, NM, hidden_sink=s)[-1]
            h = s[0][0].astype(np.float64)
            cos = max(float(h @ hj / (np.linalg.norm(h) * np.linalg.norm(hj))) for hj in context)
            score = (1 - alpha) * p[v] - alpha * cos
            if best is None or score > best[0]:
                best = (score, int(v), c, lv, h)
        _, token, cache, logits, h = best
        if model.tokenizer.is_eog(token):
            break
        out.append(token)
        context.append(h)
    return out


@pytest.mark.parametrize("name", ["smollm", "gemma"])
def test_contrastive_search_equals_the_plain_algorithm(name, smollm, gemma_path):
    import zigllama_lib as zl

    model = smollm if name == "smollm" else zl.load(gemma_path, n_ctx=256, progress=False)
    ids = model.tokenizer.encode("Once upon a time there was a")
    got = [s.token for s in contrastive_search(model.decoder, ids, NM, model.n_ctx, model.tokenizer.is_eog,
                                               max_tokens=12, k=4, alpha=0.6)]
    assert got == _contrastive_by_hand(model, ids, 12, 4, 0.6)


def test_cfg_gamma_one_is_the_prompt_alone(smollm):
    ids = smollm.tokenizer.encode("Water boils at")
    neg = smollm.tokenizer.encode("The")
    got = [s.token for s in cfg_steps(smollm.decoder, ids, neg, make_sampler(0, 40, 0.95, 0.05, None), NM,
                                      smollm.n_ctx, smollm.tokenizer.is_eog, gamma=1.0, max_tokens=16)]
    assert got == _greedy(smollm, ids, 16)


def test_cfg_equals_the_formula_on_two_separate_runs(smollm):
    """gamma = 3: two contiguous caches run separately, log-softmaxes combined by hand, argmax."""
    dec = smollm.decoder
    ids = smollm.tokenizer.encode("Write about the ocean:")
    neg = smollm.tokenizer.encode("Write about the desert:")
    gamma = 3.0
    got = list(cfg_steps(dec, ids, neg, make_sampler(0, 40, 0.95, 0.05, None), NM, smollm.n_ctx,
                         smollm.tokenizer.is_eog, gamma=gamma, max_tokens=12))
    ca, cb = dec.new_cache(smollm.n_ctx, NM), dec.new_cache(smollm.n_ctx, NM)
    la, lb = dec.forward(ids, ca, NM)[-1], dec.forward(neg, cb, NM)[-1]
    want = []
    for _ in range(12):
        za, zb = la.astype(np.float64), lb.astype(np.float64)
        lpa = za - za.max() - np.log(np.exp(za - za.max()).sum())
        lpb = zb - zb.max() - np.log(np.exp(zb - zb.max()).sum())
        t = int(np.argmax(lpb + gamma * (lpa - lpb)))
        if smollm.tokenizer.is_eog(t):
            break
        want.append(t)
        la, lb = dec.forward([t], ca, NM)[-1], dec.forward([t], cb, NM)[-1]
    assert [s.token for s in got] == want
    assert want != _greedy(smollm, ids, 12)  # the guidance changed the text


def test_guided_logits_and_bad_settings():
    cond, uncond = np.array([2.0, 0.0, -1.0], np.float32), np.array([0.0, 1.0, 0.0], np.float32)
    lc = cond - np.log(np.exp(cond).sum())
    lu = uncond - np.log(np.exp(uncond).sum())
    assert np.allclose(guided_logits(cond, uncond, 2.0), lu + 2.0 * (lc - lu), atol=1e-6)
    with pytest.raises(ConfigError, match="alpha"):
        next(contrastive_search(None, [1], NM, 16, lambda t: False, alpha=1.5))
    with pytest.raises(ConfigError, match="k must"):
        next(contrastive_search(None, [1], NM, 16, lambda t: False, k=0))
    with pytest.raises(ConfigError, match="negative prompt"):
        next(cfg_steps(None, [1], [], None, NM, 16, lambda t: False))
