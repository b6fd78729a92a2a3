"""Paged KV cache on real models: the same logits as the contiguous cache and as llama.cpp.

Under ``numerics="llama.cpp"`` the paged cache's attention reads the cells through the block table in
the contiguous cache's order, so the logits are compared with ``np.array_equal``: against the
contiguous cache (prefills of lengths around the block size, then token-by-token decode through the
fused step, which reads the block table too, and through the generic path), against llama.cpp's own
multi-sequence cache after ``llama_memory_seq_cp / seq_rm / seq_add / seq_keep`` (its low-level API,
:mod:`llama_seq_oracle`), and for Gemma 3 past its 512-position sliding window (where the windowed
layers' blocks are released) against the contiguous cache and llama.cpp.

The memory claim: 8 sequences sharing a 256-token prompt hold 16 prompt blocks (B = 16) plus one
block each for their own tokens, measured as allocated blocks and as the pool's resident pages.
"""

from __future__ import annotations

import numpy as np
import pytest

from llama_seq_oracle import LlamaSeqOracle
from zigllama_lib.models.decoder import numerics_named
from zigllama_lib.transformer.paged_kv_cache import resident_bytes

NM = numerics_named("llama.cpp")


def _contiguous(dec, ids, n_prefill, n_ctx=None):
    """Logits of a prefill of ``ids[:n_prefill]`` then one token at a time, on a contiguous cache."""
    cache = dec.new_cache(n_ctx or len(ids), NM)
    return [dec.forward(ids[:n_prefill], cache, NM)] + [dec.forward([t], cache, NM) for t in ids[n_prefill:]]


def _paged(dec, view, ids, n_prefill):
    return [dec.forward(ids[:n_prefill], view, NM)] + [dec.forward([t], view, NM) for t in ids[n_prefill:]]


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture
def generic_path(smollm):
    """SmolLM2's decoder with the fused decode step switched off (restored afterwards)."""
    dec = smollm.decoder
    dec.fused_decode = False
    yield dec
    dec.fused_decode = True


@pytest.mark.parametrize("block_size,n_prefill", [(16, 15), (16, 16), (16, 17), (16, 33), (32, 31), (32, 64), (1, 5)])
def test_smollm_paged_equals_contiguous_bit_for_bit(smollm, block_size, n_prefill):
    dec = smollm.decoder
    rng = np.random.default_rng(n_prefill)
    ids = [1] + rng.integers(2, smollm.n_vocab, n_prefill + 3).tolist()  # decode crosses a block boundary
    ref = _contiguous(dec, ids, n_prefill)
    cache = dec.new_paged_cache(-(-len(ids) // block_size), NM, block_size=block_size)  # exactly enough blocks
    assert _same(_paged(dec, cache.sequence(0), ids, n_prefill), ref)  # fused decode on the block table
    assert cache.n_allocated_blocks == -(-len(ids) // block_size)


def test_prefill_into_a_fork_copies_the_shared_block_and_matches_contiguous(smollm):
    """A multi-token batch appended to a fork whose last block is shared (copy-on-write inside a prefill)."""
    dec = smollm.decoder
    rng = np.random.default_rng(11)
    prompt = [1] + rng.integers(2, smollm.n_vocab, 20).tolist()  # 21 tokens: block 1 holds 5 of 16 cells
    tails = {0: rng.integers(2, smollm.n_vocab, 14).tolist(), 1: rng.integers(2, smollm.n_vocab, 30).tolist()}
    cache = dec.new_paged_cache(12, NM, block_size=16)
    dec.forward(prompt, cache.sequence(0), NM)
    cache.fork(0, 1)
    for seq in (1, 0):
        ours = dec.forward(tails[seq], cache.sequence(seq), NM, all_logits=True)
        contiguous = dec.new_cache(len(prompt) + len(tails[seq]), NM)
        dec.forward(prompt, contiguous, NM)
        assert np.array_equal(ours, dec.forward(tails[seq], contiguous, NM, all_logits=True)), f"sequence {seq}"
    assert cache.tables(0)[0][0] == cache.tables(1)[0][0]  # the full first block is still shared
    assert cache.block_refs()[int(cache.tables(0)[0][0])] == 2
    assert cache.tables(0)[0][1] != cache.tables(1)[0][1]  # the partial one was copied


def test_smollm_paged_generic_decode_equals_contiguous(smollm, generic_path):
    ids = smollm.tokenizer.encode("Paged attention keeps the keys in blocks of sixteen tokens.")
    ref = _contiguous(generic_path, ids, 12)
    cache = generic_path.new_paged_cache(8, NM, block_size=16)
    assert _same(_paged(generic_path, cache.sequence(0), ids, 12), ref)


def test_float_numerics_on_a_paged_cache_equal_the_contiguous_cache(smollm):
    """The reference numerics (float32 cache) gather the cells in order: the same arrays, the same logits."""
    dec, nm = smollm.decoder, numerics_named("float")
    ids = smollm.tokenizer.encode("Blocks of four cells hold this sentence.")
    contiguous = dec.new_cache(len(ids), nm)
    ref = [dec.forward(ids[:5], contiguous, nm)] + [dec.forward([t], contiguous, nm) for t in ids[5:]]
    cache = dec.new_paged_cache(8, nm, block_size=4)
    assert cache.dtype == np.float32
    view = cache.sequence(0)
    ours = [dec.forward(ids[:5], view, nm)] + [dec.forward([t], view, nm) for t in ids[5:]]
    assert _same(ours, ref)


def test_forks_copy_on_write_give_each_sequence_its_own_logits(smollm):
    dec = smollm.decoder
    prompt = smollm.tokenizer.encode("Three friends walked into the forest and")  # not a multiple of 16
    cache = dec.new_paged_cache(16, NM, block_size=4)
    dec.forward(prompt, cache.sequence(0), NM)
    n_prompt_blocks = -(-len(prompt) // 4)
    for s in (1, 2, 3):
        cache.fork(0, s)
    assert cache.n_allocated_blocks == n_prompt_blocks  # the forks share every block
    assert all(rc == 4 for rc in cache.block_refs().values())
    continuations = {s: [100 + 7 * s, 200 + s, 300 + s] for s in range(4)}
    ours = {s: [dec.forward([t], cache.sequence(s), NM) for t in continuations[s]] for s in range(4)}
    for s in range(4):  # each sequence as if alone in a contiguous cache
        ref = _contiguous(dec, prompt + continuations[s], len(prompt))[1:]
        assert _same(ours[s], ref), f"sequence {s}"
    partial = len(prompt) % 4 != 0
    # every sequence appended 3 tokens: the shared partial block was copied by 3 of them (one keeps it)
    expected = n_prompt_blocks + 3 * partial + sum(-(-(len(prompt) + 3) // 4) - n_prompt_blocks for _ in range(4))
    assert cache.n_allocated_blocks == expected


def test_eight_sequences_sharing_a_256_token_prompt_allocate_what_they_claim(smollm):
    """8 x (256-token prompt + 8 own tokens), B = 16: 16 shared + 8 own blocks instead of 8 x 17.

    Measured (the pages present in /proc/self/pagemap): 24 blocks x 368,640 B = 8.8 MB of pool, against
    48.7 MB for 8 contiguous caches of 264 tokens (SmolLM2: 23,040 B per token in float16). Every
    sequence's logits equal its contiguous twin's.
    """
    dec, s = smollm.decoder, smollm.spec
    rng = np.random.default_rng(8)
    prompt = [1] + rng.integers(2, smollm.n_vocab, 255).tolist()
    own = rng.integers(2, smollm.n_vocab, (8, 8)).tolist()
    B = 16
    cache = dec.new_paged_cache(256, NM, block_size=B)
    assert cache.resident_bytes == 0  # the pool is reserved address space until written
    first = dec.forward(prompt, cache.sequence(0), NM)
    for seq in range(1, 8):
        cache.fork(0, seq)
    paged = [[first] + [dec.forward([t], cache.sequence(seq), NM) for t in own[seq]] for seq in range(8)]
    bytes_per_token = 2 * s.n_layer * s.n_kv_head * s.head_dim_k * 2  # K and V, float16: 23,040
    assert cache.groups[0].pool.bytes_per_block == B * bytes_per_token
    assert cache.n_allocated_blocks == 256 // B + 8 * -(-8 // B)  # 16 + 8 = 24
    assert cache.allocated_bytes == 24 * B * bytes_per_token
    # measured: the pool's resident pages are exactly the allocated blocks (a block is 90 pages)
    assert cache.resident_bytes == cache.allocated_bytes
    contiguous = [dec.new_cache(256 + 8, NM) for _ in range(8)]
    for seq, c in enumerate(contiguous):
        ref = [dec.forward(prompt, c, NM)] + [dec.forward([t], c, NM) for t in own[seq]]
        assert _same(paged[seq], ref), f"sequence {seq}"
    assert sum(c.nbytes for c in contiguous) == 8 * 264 * bytes_per_token
    contiguous_resident = sum(resident_bytes(c.k) + resident_bytes(c.v) for c in contiguous)
    assert contiguous_resident >= 8 * 264 * bytes_per_token  # every row written
    assert cache.resident_bytes * 5 < contiguous_resident  # 8.8 MB vs 48.7 MB


def test_seq_ops_match_llama_cpp_bit_for_bit(smollm, smollm_path, llama_cpp):
    """seq_cp, decode on both sequences, seq_rm (tail), a context shift (seq_rm + seq_add, K-shift),
    seq_keep: after each, the next logits equal llama.cpp's (4 streams, float16 cache)."""
    dec = smollm.decoder
    prompt = smollm.tokenizer.encode("Once upon a time, in a land far away, there lived a dragon who loved to")
    oracle = LlamaSeqOracle(llama_cpp, smollm_path, n_ctx=1024, n_seq_max=4)
    cache = dec.new_paged_cache(64, NM, block_size=16)

    def both(seq, toks):
        ref = oracle.decode(seq, toks)
        ours = dec.forward(toks, cache.sequence(seq), NM)
        assert oracle.seq_pos_max(seq) == cache.seq_pos_max(seq)
        assert np.array_equal(ours, ref), f"seq {seq}: max |diff| {np.abs(ours - ref).max()}"

    def op(name, *args):
        getattr(oracle, name)(*args)
        getattr(cache, name)(*args)

    try:
        both(0, prompt)
        op("seq_cp", 0, 1)
        both(1, [42])
        both(0, [43])
        both(1, [44, 45])
        op("seq_rm", 1, 9, -1)  # rewind seq 1 to 9 tokens
        both(1, [46])
        n_keep, n_discard = 4, 6  # llama.cpp's context shift on seq 0
        op("seq_rm", 0, n_keep, n_keep + n_discard)
        op("seq_add", 0, n_keep + n_discard, -1, -n_discard)
        assert oracle.seq_pos_max(0) == cache.seq_pos_max(0)
        both(0, [47])  # keys re-rotated by -6; the new token fills the hole (find_slot from the head)
        both(0, [48, 49])
        op("seq_keep", 1)
        # llama.cpp with one stream per sequence keeps the other streams (its seq_keep only scans the
        # stream of seq 1); ours drops them, as llama-memory.h documents and the unified cache does
        assert cache.seq_pos_max(0) == -1 and cache.seq_ids() == [1]
        both(1, [50])
    finally:
        oracle.close()


def test_gemma_paged_equals_contiguous_around_block_boundaries(gemma_model):
    dec = gemma_model.decoder
    rng = np.random.default_rng(3)
    ids = [2] + rng.integers(100, 200000, 34).tolist()
    for n_prefill in (31, 32):
        ref = _contiguous(dec, ids, n_prefill)
        cache = dec.new_paged_cache(4, NM, block_size=32)
        assert _same(_paged(dec, cache.sequence(0), ids, n_prefill), ref)


def test_gemma_sliding_window_cache_stays_bounded_and_exact_past_the_window(gemma_model, gemma_path, llama_cpp):
    """512 + 40 tokens: the windowed layers (15 of 18) keep at most ceil(512/32) + 2 = 18 blocks; the
    logits equal the contiguous cache's and llama.cpp's (whose SWA cache is full size, swa_full)."""
    dec = gemma_model.decoder
    rng = np.random.default_rng(5)
    ids = [2] + rng.integers(100, 200000, 551).tolist()
    n_prefill = 512
    ref = _contiguous(dec, ids, n_prefill)
    cache = dec.new_paged_cache(20, NM, block_size=32, n_blocks_window=18)  # two pools of different sizes
    view = cache.sequence(0)
    ours = [dec.forward(ids[:n_prefill], view, NM)]
    peak = 0
    for t in ids[n_prefill:]:
        ours.append(dec.forward([t], view, NM))
        peak = max(peak, cache.groups[1].pool.n_used)
    assert _same(ours, ref)
    full, swa = cache.tables(0)
    assert (full >= 0).all() and len(full) == 18  # global layers: every block (552 cells)
    assert (swa[:1] == -1).all() and peak <= 18  # windowed layers: the oldest block released
    oracle = LlamaSeqOracle(llama_cpp, gemma_path, n_ctx=1024, n_seq_max=1)
    try:
        steps = [oracle.decode(0, ids[:n_prefill])] + [oracle.decode(0, [t]) for t in ids[n_prefill:]]
    finally:
        oracle.close()
    for i, (a, b) in enumerate(zip(ours, steps)):
        assert np.array_equal(a, b), f"step {i}: max |diff| {np.abs(a - b).max()}"


@pytest.fixture(scope="module")
def gemma_model(gemma_path):
    import zigllama_lib as zl

    return zl.load(gemma_path, n_ctx=1024, progress=False)


@pytest.mark.parametrize("model_name", ["smollm", "gemma"])
def test_forward_batch_of_several_sequences_matches_llama_cpp_batch(model_name, smollm, smollm_path, gemma_model,
                                                                    gemma_path, llama_cpp):
    """Continuous batching's step: 4 sequences (a shared prompt forked, then different lengths) decode
    one token each in one pass; the logits equal llama.cpp's one llama_decode of the same 4-token batch
    (whose products run llama.cpp's kernels for 4 tokens: not the one-token step's bits)."""
    model, path = (smollm, smollm_path) if model_name == "smollm" else (gemma_model, gemma_path)
    dec = model.decoder
    prompt = model.tokenizer.encode("In the beginning the library had only one shelf, and")
    oracle = LlamaSeqOracle(llama_cpp, path, n_ctx=1024, n_seq_max=4)
    cache = dec.new_paged_cache(32, NM, block_size=16)
    try:
        oracle.decode(0, prompt)
        dec.forward(prompt, cache.sequence(0), NM)
        for seq in (1, 2, 3):
            oracle.seq_cp(0, seq)
            cache.fork(0, seq)
        for seq in (1, 2, 3):  # sequence s gets s extra tokens first: different lengths
            for j in range(seq):
                oracle.decode(seq, [1000 + 10 * seq + j])
                dec.forward([1000 + 10 * seq + j], cache.sequence(seq), NM)
        seqs = [0, 1, 2, 3]
        for step in range(3):
            tokens = [2000 + 10 * step + s for s in seqs]
            ref = oracle.decode_batch(seqs, tokens)
            ours = dec.forward_batch(tokens, [cache.sequence(s) for s in seqs], NM)
            assert np.array_equal(ours, ref), f"step {step}: max |diff| {np.abs(ours - ref).max()}"
    finally:
        oracle.close()
