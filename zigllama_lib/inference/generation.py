"""The autoregressive generation loop.

    ids = tokenize(prompt)
    logits = forward(ids)                 # prefill: the whole prompt in one pass, filling the KV cache
    repeat up to max_tokens:
        t = sample(logits)                # greedy / temperature / top-k / top-p / min-p
        if t is end-of-generation: stop
        emit t
        logits = forward([t])             # decode: one token, attending to the cache

With the cache, step ``n`` costs one token's worth of matrix products plus
attention over ``n`` cached positions, instead of a forward pass over all
``n`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from ..foundation.errors import ConfigError, ContextLengthError
from ..models.decoder import Decoder, Numerics
from .sampler_chain import Sampler
from .sampling import SamplerConfig


@dataclass(frozen=True)
class GenerationConfig:
    """Stopping rules for :func:`generate_ids`."""

    max_tokens: int = 128
    stop_at_eog: bool = True  # stop at end-of-generation tokens (EOS, EOT...)

    def __post_init__(self):
        if not isinstance(self.max_tokens, (int, np.integer)) or self.max_tokens < 0:
            raise ConfigError(f"max_tokens must be a non-negative integer, got {self.max_tokens!r}")


@dataclass(frozen=True, eq=False)
class Step:
    """One generated token and the logits it was sampled from (after any ``logits_processor``)."""

    token: int
    logits: np.ndarray  # (n_vocab,) float32


def generate_steps(decoder: Decoder, prompt_ids: Sequence[int], sampler: Sampler, numerics: Numerics,
                   n_ctx: int, is_eog, config: GenerationConfig = GenerationConfig(),
                   stats: dict | None = None,
                   logits_processor: Callable[[np.ndarray], np.ndarray] | None = None,
                   on_token: Callable[[int], None] | None = None) -> Iterator[Step]:
    """The generation loop, yielding each token with the logits it was drawn from.

    ``logits_processor(logits) -> logits``, if given, rewrites each step's
    ``(n_vocab,)`` logits before the sampler sees them (a logit bias, a
    grammar mask...); it must not modify its argument in place. ``on_token(t)``,
    if given, hears every sampled token, end-of-generation included, before it is
    yielded (a grammar matcher's ``accept``). A consumer
    that stops iterating (a stop string, a client gone) stops the loop before
    the next forward pass. See :func:`generate_ids` for the stopping rules.
    """
    import time

    ids = np.asarray(prompt_ids, dtype=np.int64)
    if len(ids) == 0:
        raise ConfigError("the prompt is empty (and the model adds no BOS token): nothing to condition on")
    if len(ids) > n_ctx:
        raise ContextLengthError(f"prompt of {len(ids)} tokens does not fit the context of {n_ctx} tokens")
    stats = stats if stats is not None else {}
    stats.update(n_prompt=len(ids), n_generated=0, stop_reason="max_tokens")
    if config.max_tokens == 0:
        return
    cache = decoder.new_cache(n_ctx, numerics)
    sampler.accept_prompt(ids.tolist())  # penalties and DRY count the prompt, as llama-server's do
    t0 = time.perf_counter()
    logits = decoder.forward(ids, cache, numerics)[-1]  # prefill
    stats["prefill_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for step in range(config.max_tokens):
        if logits_processor is not None:
            logits = logits_processor(logits)
        token = sampler(logits)
        if on_token is not None:
            on_token(token)
        if config.stop_at_eog and is_eog(token):
            stats["stop_reason"] = "eog"
            break
        stats["n_generated"] = step + 1
        yield Step(token, logits)
        if step + 1 == config.max_tokens:
            break
        if cache.n_past >= n_ctx:
            stats["stop_reason"] = "context_full"
            break
        logits = decoder.forward([token], cache, numerics)[-1]  # decode one token
    stats["decode_s"] = time.perf_counter() - t0


def generate_ids(decoder: Decoder, prompt_ids: Sequence[int], sampler: Sampler, numerics: Numerics,
                 n_ctx: int, is_eog, config: GenerationConfig = GenerationConfig(),
                 stats: dict | None = None,
                 logits_processor: Callable[[np.ndarray], np.ndarray] | None = None,
                 on_token: Callable[[int], None] | None = None) -> Iterator[int]:
    """Yield sampled token ids after ``prompt_ids``; prefill once, then one token per step.

    Stops after ``config.max_tokens`` tokens, at an end-of-generation token
    (not yielded), or when the context window is full. ``stats``, if given,
    receives ``n_prompt``, ``n_generated`` and ``stop_reason``.
    """
    for step in generate_steps(decoder, prompt_ids, sampler, numerics, n_ctx, is_eog, config, stats,
                               logits_processor, on_token):
        yield step.token


def make_sampler(temperature: float, top_k: int, top_p: float, min_p: float, seed: int | None,
                 tokenizer=None, n_ctx: int | None = None, **more) -> Sampler:
    """A :class:`.sampler_chain.Sampler` for these settings; ``more``: any other
    :class:`.sampling.SamplerConfig` field (penalties, DRY, typical_p, XTC, mirostat...)."""
    config = SamplerConfig(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed, **more)
    return Sampler(config, tokenizer, n_ctx)
