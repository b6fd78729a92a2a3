"""Generation strategies beyond "sample the next token": contrastive search and classifier-free guidance.

Contrastive search (Su et al., "A Contrastive Framework for Neural Text Generation", NeurIPS 2022)
picks, among the ``k`` most likely next tokens ``V``, the one that is likely *and* unlike the text so
far::

    x_t = argmax_{v in V} (1 - alpha) p(v | x_<t) - alpha max_{j < t} cos(h_v, h_j)

``h_v`` is the model's last hidden state (after the final norm) with ``v`` appended, ``h_j`` those of
the tokens before. ``alpha = 0`` is greedy search; larger ``alpha`` punishes the repetition loops
greedy search falls into. Every candidate needs its own forward pass: here the ``k`` candidates are
``k`` forks of the sequence in a paged KV cache (they share the prefix's blocks), run as one batch
(:meth:`Decoder.forward_batch`); the chosen fork continues, the others are dropped.

Classifier-free guidance (Ho & Salimans 2022; for language models Sanchez et al., "Stay on topic
with Classifier-Free Guidance", 2023) runs the prompt and a *negative* prompt (or the bare start of
text) side by side and extrapolates away from the negative one, on log-probabilities::

    log p_cfg = log p(x | neg) + gamma (log p(x | prompt) - log p(x | neg))

``gamma = 1`` is the prompt alone; ``gamma > 1`` follows the prompt more strongly. Each step runs both
sequences as one batch of two; the token drawn (by any sampler) is appended to both.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from ..foundation.errors import ConfigError
from ..linear_algebra.ggml_simd import batch_invariant_kernels
from ..models.decoder import Decoder, Numerics
from .generation import Step
from .sampler_chain import Sampler
from .sampling import log_softmax


def _check_prompt(ids, n_ctx: int, what: str = "prompt") -> list[int]:
    ids = [int(t) for t in ids]
    if not ids:
        raise ConfigError(f"the {what} is empty: nothing to condition on")
    if len(ids) >= n_ctx:
        raise ConfigError(f"the {what} ({len(ids)} tokens) leaves no room in the context of {n_ctx}")
    return ids


def degeneration_penalty(h_candidates: np.ndarray, h_context: np.ndarray) -> np.ndarray:
    """``max_j cos(h_v, h_j)`` for each candidate row of ``h_candidates (k, d)`` over ``h_context (n, d)``
    (float64; a zero vector's cosine is 0)."""
    a = np.asarray(h_candidates, np.float64)
    b = np.asarray(h_context, np.float64)
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    cos = (a / np.where(na == 0, 1, na)) @ (b / np.where(nb == 0, 1, nb)).T  # (k, n)
    return cos.max(axis=1)


def contrastive_search(decoder: Decoder, prompt_ids: Sequence[int], numerics: Numerics, n_ctx: int, is_eog,
                       max_tokens: int = 64, k: int = 4, alpha: float = 0.6,
                       stop_at_eog: bool = True) -> Iterator[Step]:
    """Yield tokens chosen by contrastive search (see the module docstring), each with its logits.

    ``k`` candidates per step (``k = 1`` or ``alpha = 0``: greedy), ``alpha`` in [0, 1]."""
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha!r}")
    ids = _check_prompt(prompt_ids, n_ctx)
    n_blocks = (k + 1) * (-(-n_ctx // 16) + 1)
    cache = decoder.new_paged_cache(n_blocks, numerics, block_size=16)
    hidden: list[np.ndarray] = []
    logits = decoder.forward(np.asarray(ids), cache.sequence(0), numerics, all_logits=True, hidden_sink=hidden)[-1]
    context = [hidden[0]]  # (n, d) final-norm hidden states of the text so far
    live, n_past = 0, len(ids)
    for step in range(max_tokens):
        p = np.exp(log_softmax(logits))
        cand = np.argsort(-p, kind="stable")[:k]  # ties by lower id
        free = [s for s in range(k + 1) if s != live][:len(cand)]  # fork ids: never the live sequence's
        for s in free:
            cache.fork(live, s)
        views = [cache.sequence(s) for s in free]
        sink: list[np.ndarray] = []
        with batch_invariant_kernels():
            if len(views) == 1:
                cand_logits = decoder.forward(cand[:1], views[0], numerics, hidden_sink=sink)
            else:
                cand_logits = decoder.forward_batch(cand, views, numerics, hidden_sink=sink)
        h_cand = sink[0]  # (k, d)
        penalty = degeneration_penalty(h_cand, np.concatenate(context))
        score = (1 - alpha) * p[cand] - alpha * penalty
        best = int(np.argmax(score))
        token = int(cand[best])
        for j, s in enumerate(free):
            if j != best:
                cache.seq_rm(s)
        cache.seq_rm(live)
        if stop_at_eog and is_eog(token):
            return
        yield Step(token, logits)
        live = free[best]
        context.append(h_cand[best:best + 1])
        logits = cand_logits[best]
        n_past += 1
        if n_past >= n_ctx:
            return


def cfg_steps(decoder: Decoder, prompt_ids: Sequence[int], negative_ids: Sequence[int], sampler: Sampler,
              numerics: Numerics, n_ctx: int, is_eog, gamma: float = 1.5, max_tokens: int = 64,
              stop_at_eog: bool = True) -> Iterator[Step]:
    """Yield tokens drawn by ``sampler`` from classifier-free-guided logits (module docstring), each
    with those logits (float32, a log-probability scale)."""
    if not np.isfinite(gamma):
        raise ConfigError(f"gamma must be a finite number, got {gamma!r}")
    pos = _check_prompt(prompt_ids, n_ctx)
    neg = _check_prompt(negative_ids, n_ctx, "negative prompt")
    cache = decoder.new_paged_cache(2 * (-(-n_ctx // 16) + 1), numerics, block_size=16)
    views = [cache.sequence(0), cache.sequence(1)]
    cond = decoder.forward(np.asarray(pos), views[0], numerics)[-1]
    uncond = decoder.forward(np.asarray(neg), views[1], numerics)[-1]
    sampler.accept_prompt(pos)
    n_past = max(len(pos), len(neg))
    for step in range(max_tokens):
        guided = guided_logits(cond, uncond, gamma)
        token = sampler(guided)
        if stop_at_eog and is_eog(token):
            return
        yield Step(token, guided)
        n_past += 1
        if step + 1 == max_tokens or n_past >= n_ctx:
            return
        with batch_invariant_kernels():
            both = decoder.forward_batch([token, token], views, numerics)
        cond, uncond = both[0], both[1]


def guided_logits(cond: np.ndarray, uncond: np.ndarray, gamma: float) -> np.ndarray:
    """``log p(.|neg) + gamma (log p(.|prompt) - log p(.|neg))`` as float32 (n_vocab,)."""
    lc, lu = log_softmax(cond), log_softmax(uncond)
    return (lu + gamma * (lc - lu)).astype(np.float32)


__all__ = ["contrastive_search", "cfg_steps", "guided_logits", "degeneration_penalty"]
