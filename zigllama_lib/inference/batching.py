"""Continuous batching: many sequences advanced together, admitted and retired at every step.

One request at a time leaves most of the machine idle during decode: a one-token step reads every
weight once to do ``2 * n_params`` flops, so it is bound by memory bandwidth, not arithmetic. With
``n`` sequences decoding at once, one forward pass multiplies the weights by an ``(n, d_model)``
batch (a small GEMM): the weights are read once per step for all ``n`` tokens. Orca (Yu et al.,
OSDI 2022) made the batch *continuous*: sequences join and leave between steps, so a short
request does not wait for the longest one in its batch. vLLM (Kwon et al., SOSP 2023) stores
their KV caches in fixed-size blocks (:mod:`..transformer.paged_kv_cache`) so memory follows the
tokens actually held.

A step of :class:`ContinuousBatcher`::

    retire   the finished and the cancelled: their blocks return to the pool
    admit    waiting requests, oldest first, while a slot is free and the pool can hold their
             worst case (prompt + max_tokens, at most n_ctx): no sequence ever runs out of blocks
             mid-generation, so nothing is preempted
    decode   one token of every running sequence that has one pending, in ONE forward pass
             (Decoder.forward_batch: products on all rows, attention per sequence via its block table)
    prefill  at most ``prefill_chunk`` prompt tokens of the oldest sequence still reading its
             prompt (a long prompt is spread over several steps, so the decoding sequences keep
             getting a token every step instead of waiting for the whole prefill)

Each row of the batch is computed as it would be alone: RMSNorm, RoPE and attention are per row
or per sequence, and the quantised products of every supported type compute each row's dot
products in the same order for any batch size -- except Q6_K, whose batches of 8 or more rows
take ggml's tiled kernel (another float order, in llama.cpp too). ``batch_invariant=True`` (the
default) keeps the one-token kernel for those, so **every sequence's tokens equal those of the same
request run alone** (``generate_steps``), bit for bit under ``numerics="llama.cpp"`` (tested). A
prompt no longer than ``prefill_chunk`` is prefilled in one pass, as alone.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..foundation.errors import ConfigError, ContextLengthError
from ..linear_algebra.ggml_simd import batch_invariant_kernels
from ..models.decoder import Decoder, Numerics
from .generation import Step
from .sampler_chain import Sampler


# Fewer decode rows than this run as one fused one-token step each (the same bits, by the batch
# invariance above): the batched pass pays the generic path's per-layer Python work, and Q4_1's
# products share a weight block among 4 tokens at a time, so 2-3 rows gain nothing. Measured on
# an AMD Zen 4 (2 threads, best of 8): SmolLM2 batched 17.9 / 24.8 / 19.0 / 30.1 ms for 2 / 3 / 4 / 8
# rows vs 14.4 / 21.0 / 27.0 / 43.1 ms for that many fused steps; Gemma 3 18.6 / 25.8 / 21.9 / 35.6
# vs 19.5 / 31.6 / 43.7 / 87.6 ms.
BATCH_MIN_ROWS = 4


@dataclass(eq=False)
class BatchRequest:
    """One sequence to generate: what :func:`.generation.generate_steps` takes, per request."""

    prompt_ids: Sequence[int]
    sampler: Sampler
    max_tokens: int
    is_eog: Callable[[int], bool]
    stop_at_eog: bool = True
    logits_processor: Callable[[np.ndarray], np.ndarray] | None = None  # (n_vocab,) -> (n_vocab,)
    on_token: Callable[[int], None] | None = None                       # hears every sampled token
    tag: object = None                                                   # the caller's handle


@dataclass(eq=False)
class BatchSequence:
    """A request's state inside the batcher."""

    request: BatchRequest
    seq_id: int
    n_prompt: int
    n_prefilled: int = 0
    n_generated: int = 0
    pending: int | None = None           # sampled, not yet fed back
    stop_reason: str | None = None       # "eog" | "max_tokens" | "context_full" | "cancelled" | "error"
    error: Exception | None = None
    cancelled: bool = False
    reserved_blocks: int = 0

    @property
    def done(self) -> bool:
        return self.stop_reason is not None


@dataclass(frozen=True, eq=False)
class BatchEvent:
    """What one step did to one sequence: a new token (``step``), and/or the end (``stop_reason``)."""

    seq: BatchSequence
    step: Step | None = None
    stop_reason: str | None = None


@dataclass
class StepStats:
    """Counts of the last :meth:`ContinuousBatcher.step`."""

    n_decode: int = 0    # sequences that got a token from the batched decode
    n_prefill: int = 0   # prompt tokens run
    n_running: int = 0
    n_waiting: int = 0


class ContinuousBatcher:
    """Run many :class:`BatchRequest` s over one paged KV cache, a step at a time.

    Args:
        decoder, numerics: the model and its numerics.
        n_ctx: each sequence's context window (prompt + generated tokens).
        max_batch: at most this many sequences run at once (the rest wait, in order).
        block_size: cells per KV block.
        n_blocks: blocks in the pool (default: enough for ``max_batch`` full contexts; the pool's
            pages become resident only when written).
        prefill_chunk: prompt tokens per step.
        batch_invariant: keep each row's kernel what it is for one token (see the module docstring).

        batcher = ContinuousBatcher(model.decoder, numerics_named("llama.cpp"), n_ctx=2048)
        seq = batcher.submit(BatchRequest(ids, make_sampler(0, 40, 0.95, 0.05, None), 64, tok.is_eog))
        while not batcher.idle:
            for event in batcher.step(): ...
    """

    def __init__(self, decoder: Decoder, numerics: Numerics, n_ctx: int, max_batch: int = 8,
                 block_size: int = 16, n_blocks: int | None = None, prefill_chunk: int = 512,
                 batch_invariant: bool = True):
        for name, v in (("n_ctx", n_ctx), ("max_batch", max_batch), ("block_size", block_size),
                        ("prefill_chunk", prefill_chunk)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        self.decoder, self.numerics, self.n_ctx = decoder, numerics, int(n_ctx)
        self.max_batch, self.prefill_chunk = int(max_batch), int(prefill_chunk)
        self.batch_invariant = batch_invariant
        self.blocks_per_context = math.ceil(self.n_ctx / block_size) + 1  # +1: a context may start mid-block
        n_blocks = n_blocks if n_blocks is not None else self.max_batch * self.blocks_per_context
        self.cache = decoder.new_paged_cache(int(n_blocks), numerics, block_size=block_size)
        self.n_blocks = int(n_blocks)
        self.waiting: deque[BatchSequence] = deque()
        self.running: list[BatchSequence] = []
        self._next_id = 0
        self.stats = StepStats()

    # -- requests ------------------------------------------------------------------------
    def submit(self, request: BatchRequest) -> BatchSequence:
        """Queue ``request``; errors in it (empty prompt, too long, bad id) are raised here."""
        ids = [int(t) for t in request.prompt_ids]
        if not ids:
            raise ConfigError("the prompt is empty (and the model adds no BOS token): nothing to condition on")
        if len(ids) > self.n_ctx:
            raise ContextLengthError(f"prompt of {len(ids)} tokens does not fit the context of {self.n_ctx} tokens")
        n_vocab = self.decoder.spec.n_vocab
        if min(ids) < 0 or max(ids) >= n_vocab:
            raise ConfigError(f"token id out of range [0, {n_vocab})")
        if not isinstance(request.max_tokens, (int, np.integer)) or request.max_tokens < 0:
            raise ConfigError(f"max_tokens must be a non-negative integer, got {request.max_tokens!r}")
        request.prompt_ids = ids
        seq = BatchSequence(request, self._next_id, len(ids))
        seq.reserved_blocks = self._worst_case_blocks(seq)
        if seq.reserved_blocks > self.n_blocks:
            raise ContextLengthError(f"the request may need {seq.reserved_blocks} KV blocks; the pool has {self.n_blocks}")
        self._next_id += 1
        self.waiting.append(seq)
        return seq

    def cancel(self, seq: BatchSequence) -> None:
        """Stop ``seq`` before its next forward pass (its blocks are freed at the next step)."""
        seq.cancelled = True

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def _worst_case_blocks(self, seq: BatchSequence) -> int:
        n_tokens = min(seq.n_prompt + seq.request.max_tokens, self.n_ctx)
        return math.ceil(n_tokens / self.cache.block_size) + 1

    # -- one step ------------------------------------------------------------------------
    def step(self) -> list[BatchEvent]:
        """Retire, admit, one batched decode, one prefill chunk; the events of this step."""
        events: list[BatchEvent] = []
        self._retire(events)
        self._admit(events)
        stats = StepStats()
        decoding = [s for s in self.running if s.pending is not None and not s.done]
        if decoding:
            self._decode(decoding, events)
            stats.n_decode = len(decoding)
        reading = next((s for s in self.running if s.n_prefilled < s.n_prompt and not s.done), None)
        if reading is not None:
            stats.n_prefill = self._prefill(reading, events)
        self._retire(events)
        stats.n_running, stats.n_waiting = len(self.running), len(self.waiting)
        self.stats = stats
        return events

    def run(self) -> dict[BatchSequence, list[int]]:
        """Step until every submitted request is done; each sequence's tokens."""
        out: dict[BatchSequence, list[int]] = {s: [] for s in [*self.running, *self.waiting]}
        while not self.idle:
            for e in self.step():
                if e.step is not None:
                    out.setdefault(e.seq, []).append(e.step.token)
        return out

    def _retire(self, events: list[BatchEvent]) -> None:
        keep = []
        for s in self.running:
            if s.cancelled and not s.done:
                s.stop_reason = "cancelled"
                events.append(BatchEvent(s, stop_reason="cancelled"))
            if s.done:
                self.cache.seq_rm(s.seq_id)
            else:
                keep.append(s)
        self.running = keep
        for s in [s for s in self.waiting if s.cancelled]:
            self.waiting.remove(s)
            s.stop_reason = "cancelled"
            events.append(BatchEvent(s, stop_reason="cancelled"))

    def _admit(self, events: list[BatchEvent]) -> None:
        reserved = sum(s.reserved_blocks for s in self.running)
        while self.waiting and len(self.running) < self.max_batch:
            s = self.waiting[0]
            if reserved + s.reserved_blocks > self.n_blocks:
                break  # first come, first served: later (smaller) requests do not overtake
            self.waiting.popleft()
            reserved += s.reserved_blocks
            if s.request.max_tokens == 0:
                s.stop_reason = "max_tokens"
                events.append(BatchEvent(s, stop_reason="max_tokens"))
                continue
            s.request.sampler.accept_prompt(list(s.request.prompt_ids))  # penalties count the prompt
            self.running.append(s)

    def _prefill(self, s: BatchSequence, events: list[BatchEvent]) -> int:
        chunk = s.request.prompt_ids[s.n_prefilled:s.n_prefilled + self.prefill_chunk]
        try:
            logits = self.decoder.forward(np.asarray(chunk, np.int64), self.cache.sequence(s.seq_id),
                                          self.numerics)[-1]
        except Exception as e:  # noqa: BLE001 -- the sequence fails, the batch goes on
            self._fail(s, e, events)
            return 0
        s.n_prefilled += len(chunk)
        if s.n_prefilled == s.n_prompt:
            self._sample(s, logits, events)
        return len(chunk)

    def _decode(self, seqs: list[BatchSequence], events: list[BatchEvent]) -> None:
        tokens = [s.pending for s in seqs]
        views = [self.cache.sequence(s.seq_id) for s in seqs]
        if len(seqs) < BATCH_MIN_ROWS and self.decoder.fused_decode:  # one fused step each: the same bits
            logits = [self.decoder.forward(np.asarray([t], np.int64), v, self.numerics)[0]
                      for t, v in zip(tokens, views)]
        else:
            with batch_invariant_kernels(self.batch_invariant):
                logits = self.decoder.forward_batch(tokens, views, self.numerics)
        for s, row in zip(seqs, logits):
            s.pending = None
            self._sample(s, row, events)

    def _sample(self, s: BatchSequence, logits: np.ndarray, events: list[BatchEvent]) -> None:
        """Draw ``s``'s next token from ``logits (n_vocab,)``, as one iteration of generate_steps."""
        r = s.request
        try:
            if r.logits_processor is not None:
                logits = r.logits_processor(logits)
            token = r.sampler(logits)
            if r.on_token is not None:
                r.on_token(token)
        except Exception as e:  # noqa: BLE001 -- a grammar with no way on, a bad processor
            self._fail(s, e, events)
            return
        if r.stop_at_eog and r.is_eog(token):
            s.stop_reason = "eog"
            events.append(BatchEvent(s, stop_reason="eog"))
            return
        s.n_generated += 1
        step = Step(token, logits)
        if s.n_generated == r.max_tokens:
            s.stop_reason = "max_tokens"
        elif s.n_prompt + s.n_generated - 1 >= self.n_ctx:  # the cache holds every token but this one
            s.stop_reason = "context_full"
        else:
            s.pending = token
        events.append(BatchEvent(s, step=step, stop_reason=s.stop_reason))

    def _fail(self, s: BatchSequence, e: Exception, events: list[BatchEvent]) -> None:
        s.stop_reason, s.error = "error", e
        events.append(BatchEvent(s, stop_reason="error"))


__all__ = ["BatchRequest", "BatchSequence", "BatchEvent", "ContinuousBatcher", "StepStats"]
