"""Continuous batching (inference/batching.py): each sequence as if alone, and the scheduler's rules.

The oracle for "as if alone" is :func:`generate_steps` on a contiguous cache (itself bit for bit
llama.cpp's single-sequence decode, tests/test_model_parity*.py): every token and every step's
logits must be equal (``np.array_equal``) while 8 sequences of different lengths share the steps,
join late and leave early. The scheduler rules (admission by worst-case blocks, FIFO order,
cancellation, errors) are checked by counting, on small pools.
"""

from __future__ import annotations

import numpy as np
import pytest

import zigllama_lib as zl
from zigllama_lib.foundation.errors import ConfigError, ContextLengthError
from zigllama_lib.inference.batching import BatchRequest, ContinuousBatcher
from zigllama_lib.inference.generation import GenerationConfig, generate_steps, make_sampler
from zigllama_lib.linear_algebra.ggml_simd import batch_invariant_kernels, matmul_simd
from zigllama_lib.models.decoder import numerics_named

NM = numerics_named("llama.cpp")
PROMPTS = ["The capital of France is", "Once upon a time", "def fib(n):", "1, 2, 3, 4,", "Water boils at",
           "The quick brown fox", "In 1492, Columbus", "Photosynthesis is the process by which green plants"]


@pytest.fixture(scope="module")
def gemma(gemma_path):
    return zl.load(gemma_path, n_ctx=512, progress=False)


def _sampler(k: int):
    # greedy for even k, seeded sampling (temperature, top-k/p, a repeat penalty) for odd k
    if k % 2 == 0:
        return make_sampler(0.0, 40, 0.95, 0.05, None)
    return make_sampler(0.9, 40, 0.95, 0.05, 1000 + k, repeat_penalty=1.1)


def _alone(model, ids, k, max_tokens):
    return list(generate_steps(model.decoder, ids, _sampler(k), NM, model.n_ctx, model.tokenizer.is_eog,
                               GenerationConfig(max_tokens=max_tokens)))


def _batched(model, prompts, max_tokens, late=(), **kw):
    """Run every prompt through one batcher; prompts whose index is in ``late`` join after 3 steps."""
    b = ContinuousBatcher(model.decoder, NM, model.n_ctx, **kw)
    seqs, got = {}, {}
    submit = lambda k: seqs.setdefault(k, b.submit(BatchRequest(prompts[k], _sampler(k), max_tokens[k],  # noqa: E731
                                                                model.tokenizer.is_eog)))
    for k in range(len(prompts)):
        if k not in late:
            submit(k)
    n_steps, widths = 0, []
    while not b.idle or len(seqs) < len(prompts):
        if n_steps == 3:
            for k in late:
                submit(k)
        for e in b.step():
            if e.step is not None:
                got.setdefault(e.seq, []).append(e.step)
        widths.append(b.stats.n_decode)
        n_steps += 1
    return [got.get(seqs[k], []) for k in range(len(prompts))], widths, b


def _equal_steps(a, b):
    return [s.token for s in a] == [s.token for s in b] and all(np.array_equal(x.logits, y.logits) for x, y in zip(a, b))


@pytest.mark.parametrize("name", ["smollm", "gemma"])
def test_eight_sequences_equal_each_alone(name, smollm, gemma):
    model = {"smollm": smollm, "gemma": gemma}[name]
    prompts = [model.tokenizer.encode(p) for p in PROMPTS]
    max_tokens = [12 + 5 * k for k in range(8)]  # different lengths: sequences leave at different steps
    batched, widths, b = _batched(model, prompts, max_tokens, late=(5, 7))
    for k, ids in enumerate(prompts):
        alone = _alone(model, ids, k, max_tokens[k])
        assert _equal_steps(batched[k], alone), f"sequence {k} differs from the same request alone"
    assert max(widths) == 8  # all eight really decoded in one pass at some step
    assert b.cache.n_allocated_blocks == 0  # every block returned


def test_chunked_prefill_equals_one_pass(smollm):
    """A prompt read 16 tokens per step (between other sequences' decode steps) gives the same tokens
    and logits as one prefill pass."""
    rng = np.random.default_rng(3)
    long_prompt = [1] + rng.integers(2, smollm.n_vocab, 70).tolist()
    prompts = [smollm.tokenizer.encode(PROMPTS[0]), long_prompt]
    batched, widths, _ = _batched(smollm, prompts, [20, 10], prefill_chunk=16)
    assert _equal_steps(batched[1], _alone(smollm, long_prompt, 1, 10))
    assert _equal_steps(batched[0], _alone(smollm, prompts[0], 0, 20))
    # the short sequence kept decoding while the long prompt was read (71 tokens: 5 chunks of at most
    # 16, steps 1-5), then both decoded together
    assert widths[1:7] == [1, 1, 1, 1, 1, 2]


def test_batch_invariant_kernels_per_row(gemma):
    """Q4_K's 4-token gemm and Q6_K's tiled kernel take another float order than one token alone;
    inside batch_invariant_kernels every row of a batch equals that row alone, bit for bit."""
    rng = np.random.default_rng(0)
    for w in (gemma.decoder.layers[0].wo, gemma.decoder.layers[0].w_down, gemma.decoder.layers[1].w_down):
        x = rng.standard_normal((9, w.n_in)).astype(np.float32)
        alone = np.array([matmul_simd(w, x[i:i + 1])[0] for i in range(len(x))])
        with batch_invariant_kernels():
            assert np.array_equal(matmul_simd(w, x), alone), w.qtype.name
    q4k = gemma.decoder.layers[0].wo
    x = rng.standard_normal((8, q4k.n_in)).astype(np.float32)
    alone = np.array([matmul_simd(q4k, x[i:i + 1])[0] for i in range(8)])
    assert not np.array_equal(matmul_simd(q4k, x), alone)  # without it: llama.cpp's batch kernels


def test_admission_waits_for_blocks_fifo(smollm):
    """A pool of 8 blocks of 16: each request reserves ceil((prompt + max_tokens) / 16) + 1 blocks, so
    only what fits runs; the rest wait in arrival order and start when blocks come back."""
    ids = smollm.tokenizer.encode(PROMPTS[0])  # 6 tokens
    b = ContinuousBatcher(smollm.decoder, NM, 512, max_batch=8, n_blocks=8)
    reqs = [BatchRequest(ids, _sampler(0), 20, smollm.tokenizer.is_eog) for _ in range(3)]  # 26 tokens: 2+1 blocks
    seqs = [b.submit(r) for r in reqs]
    b.step()
    assert [s in b.running for s in seqs] == [True, True, False]  # 3 + 3 reserved, 3 more do not fit in 8
    started_at = None
    for n in range(1, 60):
        b.step()
        if started_at is None and seqs[2] in b.running:
            started_at = n
            assert seqs[0].done and seqs[1].done
    assert started_at is not None and b.idle
    assert [s.n_generated for s in seqs] == [20, 20, 20]
    with pytest.raises(ContextLengthError, match="pool has 8"):
        b.submit(BatchRequest(ids, _sampler(0), 200, smollm.tokenizer.is_eog))


def test_max_batch_limits_running(smollm):
    ids = smollm.tokenizer.encode(PROMPTS[1])
    b = ContinuousBatcher(smollm.decoder, NM, 512, max_batch=3)
    seqs = [b.submit(BatchRequest(ids, _sampler(0), 4, smollm.tokenizer.is_eog)) for _ in range(5)]
    widths = []
    while not b.idle:
        b.step()
        widths.append(b.stats.n_running)
    assert max(widths) == 3 and all(s.n_generated == 4 for s in seqs)


def test_cancel_frees_and_others_continue(smollm):
    ids = smollm.tokenizer.encode(PROMPTS[2])
    b = ContinuousBatcher(smollm.decoder, NM, 512)
    a, c = (b.submit(BatchRequest(ids, _sampler(0), 30, smollm.tokenizer.is_eog)) for _ in range(2))
    waiting = b.submit(BatchRequest(ids, _sampler(0), 30, smollm.tokenizer.is_eog))
    for _ in range(3):
        b.step()
    n_before = a.n_generated
    b.cancel(a)
    events = b.step()
    assert any(e.seq is a and e.stop_reason == "cancelled" for e in events)
    assert a not in b.running and a.n_generated == n_before  # nothing ran for it after the cancel
    while not b.idle:
        b.step()
    assert c.n_generated == 30 and waiting.n_generated == 30 and b.cache.n_allocated_blocks == 0


def test_a_failing_sequence_ends_alone(smollm):
    """A processor that raises (a grammar with no way on) ends that sequence with its error; the others
    go on unchanged."""
    ids = smollm.tokenizer.encode(PROMPTS[3])

    def dead_end(logits):
        raise ValueError("no token allowed")

    b = ContinuousBatcher(smollm.decoder, NM, 512)
    bad = b.submit(BatchRequest(ids, _sampler(0), 10, smollm.tokenizer.is_eog, logits_processor=dead_end))
    good = b.submit(BatchRequest(ids, _sampler(0), 10, smollm.tokenizer.is_eog))
    out = b.run()
    assert bad.stop_reason == "error" and "no token allowed" in str(bad.error)
    assert [s.token for s in _alone(smollm, ids, 0, 10)] == out[good]


def test_stops_like_generate_steps(smollm):
    """max_tokens 0, the end-of-generation token and a full context end sequences as generate_steps does."""
    ids = smollm.tokenizer.encode(PROMPTS[4])
    b = ContinuousBatcher(smollm.decoder, NM, n_ctx=len(ids) + 5)
    zero = b.submit(BatchRequest(ids, _sampler(0), 0, smollm.tokenizer.is_eog))
    full = b.submit(BatchRequest(ids, _sampler(0), 50, smollm.tokenizer.is_eog))
    eog_first = b.submit(BatchRequest(ids, _sampler(0), 50, lambda t: True))
    out = b.run()
    stats: dict = {}
    ref = list(generate_steps(smollm.decoder, ids, _sampler(0), NM, len(ids) + 5, smollm.tokenizer.is_eog,
                              GenerationConfig(max_tokens=50), stats))
    assert out[full] == [s.token for s in ref] and full.stop_reason == stats["stop_reason"] == "context_full"
    assert zero.stop_reason == "max_tokens" and out[zero] == []
    assert eog_first.stop_reason == "eog" and out[eog_first] == []


def test_bad_requests_are_clear_errors(smollm):
    b = ContinuousBatcher(smollm.decoder, NM, 16)
    with pytest.raises(ConfigError, match="empty"):
        b.submit(BatchRequest([], _sampler(0), 4, smollm.tokenizer.is_eog))
    with pytest.raises(ContextLengthError, match="does not fit"):
        b.submit(BatchRequest(list(range(1, 30)), _sampler(0), 4, smollm.tokenizer.is_eog))
    with pytest.raises(ConfigError, match="out of range"):
        b.submit(BatchRequest([1, smollm.n_vocab], _sampler(0), 4, smollm.tokenizer.is_eog))
    with pytest.raises(ConfigError, match="max_batch"):
        ContinuousBatcher(smollm.decoder, NM, 16, max_batch=0)
