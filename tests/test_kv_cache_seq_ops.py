"""The paged cache's bookkeeping by hand: blocks, reference counts, copy-on-write, llama.cpp's seq ops.

A tiny cache (2 layers, 1 KV head of 4, blocks of 4 cells) whose keys are the token's position, so
every cell's content is readable; no model. The model-level checks (logits against the contiguous
cache and against llama.cpp's own ``llama_memory_seq_*``) are in test_kv_cache_paged.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from zigllama_lib.foundation.errors import ContextLengthError
from zigllama_lib.transformer.attention_ggml import attention_ggml, attention_ggml_paged
from zigllama_lib.transformer.kv_cache import KVCache
from zigllama_lib.transformer.paged_kv_cache import EMPTY, PagedKVCache

B = 4


def _cache(n_blocks=16, **kw):
    shifts = []

    def k_shift(layer, k, delta):  # records the K-shift and adds the delta (stands in for RoPE)
        shifts.append((layer, delta.tolist()))
        return k + delta[:, None, None]

    c = PagedKVCache(2, 1, 4, n_blocks=n_blocks, block_size=B, dtype=np.float16, k_shift=k_shift, **kw)
    c.shifts = shifts
    return c


def _feed(cache, seq, n):
    """Append ``n`` tokens to ``seq`` whose keys and values are their positions."""
    view = cache.sequence(seq)
    pos = view.begin(n).astype(np.float32)
    kv = np.repeat(pos[:, None, None], 4, axis=2)  # (n, 1, 4)
    for layer in range(2):
        view.store(layer, kv, kv)
    view.advance(n)
    return pos


def _keys(cache, seq, layer=0):
    """(n_cells,) the first key component of each cell of ``seq`` (= the position it was written at)."""
    k, _ = cache.cells(seq, layer).gather()
    return k[:, 0, 0].astype(np.float32)


def test_blocks_are_ceil_n_over_b_and_positions_follow_the_cells():
    c = _cache()
    _feed(c, 0, 9)  # ceil(9 / 4) = 3 blocks
    assert c.n_allocated_blocks == 3 and c.tables(0)[0].tolist() == [0, 1, 2]
    assert c.seq_pos_min(0) == 0 and c.seq_pos_max(0) == 8 and c.is_linear(0)
    assert _keys(c, 0).tolist() == list(range(9))
    assert c.allocated_bytes == 3 * (2 * 2 * B * 1 * 4 * 2)  # blocks * (K+V) * layers * B * heads * d * 2 bytes


def test_fork_shares_full_blocks_and_copies_the_partial_one_on_write():
    c = _cache()
    _feed(c, 0, 6)  # blocks 0 (cells 0-3, full), 1 (cells 4-5)
    c.fork(0, 1)
    assert c.block_refs() == {0: 2, 1: 2}  # the fork copied nothing
    _feed(c, 1, 1)  # seq 1 writes cell 6, in the shared block 1: copy-on-write
    assert c.tables(0)[0].tolist() == [0, 1] and c.tables(1)[0].tolist() == [0, 2]
    assert c.block_refs() == {0: 2, 1: 1, 2: 1}
    _feed(c, 0, 1)  # seq 0 now owns block 1 alone: written in place
    assert c.tables(0)[0].tolist() == [0, 1] and c.n_allocated_blocks == 3
    assert _keys(c, 0).tolist() == _keys(c, 1).tolist() == list(range(7))
    c.seq_rm(0)  # the whole of seq 0 goes: block 1 is free, block 0 keeps one reference
    assert c.block_refs() == {0: 1, 2: 1} and c.seq_ids() == [1]


def test_seq_rm_of_a_tail_frees_blocks_and_refills_the_same_cells():
    c = _cache()
    _feed(c, 0, 10)
    assert c.seq_rm(0, 5, -1)
    assert c.seq_pos_max(0) == 4 and c.n_allocated_blocks == 2  # cells 0-4: ceil(5/4) = 2 blocks
    _feed(c, 0, 2)  # positions 5, 6 in cells 5, 6 (llama.cpp: the head moved back to cell 5)
    assert c.is_linear(0) and _keys(c, 0).tolist() == list(range(7))


def test_seq_rm_in_the_middle_leaves_a_hole_that_llama_cpp_refills():
    c = _cache()
    _feed(c, 0, 8)
    c.seq_rm(0, 2, 4)
    assert c.cells(0, 0).cell_pos.tolist() == [0, 1, EMPTY, EMPTY, 4, 5, 6, 7]
    _feed(c, 0, 3)  # find_slot from head = 2: cells 2, 3, then 8; positions continue at 8
    assert c.cells(0, 0).cell_pos.tolist() == [0, 1, 8, 9, 4, 5, 6, 7, 10]
    assert not c.is_linear(0)


def test_seq_rm_of_every_sequence_and_seq_keep():
    c = _cache()
    for s in range(3):
        _feed(c, s, 5)
    c.seq_rm(-1, 3, -1)  # seq -1: every sequence
    assert [c.seq_pos_max(s) for s in range(3)] == [2, 2, 2]
    c.seq_keep(1)
    assert c.seq_ids() == [1] and c.n_allocated_blocks == 1
    assert c.seq_pos_max(0) == -1 and c.seq_pos_min(0) == -1


def test_seq_cp_replaces_the_destination_and_partial_copies_need_an_empty_one():
    c = _cache()
    _feed(c, 0, 6)
    _feed(c, 1, 9)
    c.seq_cp(0, 1)  # whole copy: seq 1's own 3 blocks are released, it shares seq 0's 2
    assert c.n_allocated_blocks == 2 and c.seq_pos_max(1) == 5
    c.seq_cp(0, 2, 2, 5)  # positions [2, 5) into an empty sequence
    assert c.cells(2, 0).cell_pos.tolist() == [EMPTY, EMPTY, 2, 3, 4]
    assert c.seq_pos_min(2) == 2 and c.seq_pos_max(2) == 4
    with pytest.raises(ValueError):
        c.seq_cp(0, 1, 0, 3)


def test_seq_add_moves_positions_removes_negative_ones_and_shifts_keys_once():
    c = _cache()
    _feed(c, 0, 8)
    c.seq_rm(0, 2, 5)  # llama.cpp's context shift: drop positions 2-4 ...
    c.seq_add(0, 5, -1, -3)  # ... and move 5-7 down to 2-4
    c.seq_add(0, 3, -1, -1)  # two shifts before the next pass: one rotation by the sum
    assert c.cells(0, 0).cell_pos.tolist() == [0, 1, EMPTY, EMPTY, EMPTY, 2, 2, 3]
    assert c.shifts == []  # the keys are rotated lazily, before the next write (llama.cpp's update)
    _feed(c, 0, 1)  # the new token (position 4) lands in the first hole, cell 2
    assert c.shifts == [(0, [-3, -4, -4]), (1, [-3, -4, -4])]  # cells 5, 6, 7: their accumulated deltas
    # key = old position + delta; the empty cells 3, 4 keep their stale keys (masked, as in llama.cpp)
    assert _keys(c, 0).tolist() == [0, 1, 4, 3, 4, 2, 2, 3]
    c.seq_add(0, 0, 2, -1)  # position 0 -> -1: the cell is emptied
    assert c.cells(0, 0).cell_pos[:2].tolist() == [EMPTY, 0]


def test_shift_of_a_shared_block_copies_it_first():
    c = _cache()
    _feed(c, 0, 4)
    c.fork(0, 1)
    c.seq_add(1, 0, -1, 10)
    _feed(c, 1, 1)
    assert _keys(c, 0).tolist() == [0, 1, 2, 3]  # seq 0's block is untouched
    assert _keys(c, 1).tolist() == [10, 11, 12, 13, 14]


def test_out_of_blocks_raises_before_writing():
    c = _cache(n_blocks=2)
    _feed(c, 0, 8)
    with pytest.raises(ContextLengthError):
        c.sequence(0).check_room(1)
    with pytest.raises(ContextLengthError):
        _feed(c, 0, 1)
    assert c.seq_pos_max(0) == 7


def test_sliding_window_group_releases_blocks_outside_the_window():
    c = PagedKVCache(2, 1, 4, n_blocks=16, block_size=B, sliding_layers=[1], window=6)
    for _ in range(20):
        _feed(c, 0, 1)
    full, swa = c.tables(0)
    assert len(full) == 5 and (full >= 0).all()  # layer 0 keeps everything
    # next position 20 sees 15..19: cells 0-15 are masked for every later token, blocks 0-2 released
    # (block 3 holds 12..15, and 15 is still visible)
    assert swa.tolist()[:3] == [EMPTY] * 3 and (swa[3:] >= 0).all()
    assert c.groups[1].pool.n_used == 2


@pytest.mark.parametrize("n_past,n_tok,window", [(0, 7, None), (13, 1, None), (30, 5, 9), (40, 1, 16)])
def test_paged_attention_equals_the_contiguous_kernel_bit_for_bit(n_past, n_tok, window):
    rng = np.random.default_rng(n_past)
    n_kv, h, d = n_past + n_tok, 2, 64
    k = rng.standard_normal((n_kv, h, d)).astype(np.float16)
    v = rng.standard_normal((n_kv, h, d)).astype(np.float16)
    q = rng.standard_normal((n_tok, 4, d)).astype(np.float32)
    ref = attention_ggml(q, k, v, n_past, 0.125, window=window)
    # the same cells scattered over a pool in a shuffled block order
    nb = -(-n_kv // B)
    table = rng.permutation(nb + 3)[:nb]
    kp = np.zeros((nb + 3, B, h, d), np.float16)
    vp = np.zeros_like(kp)
    for c in range(n_kv):
        kp[table[c // B], c % B], vp[table[c // B], c % B] = k[c], v[c]
    out = attention_ggml_paged(q, n_past + np.arange(n_tok), kp, vp, table, np.arange(n_kv, dtype=np.int32), B,
                               0.125, window=window)
    assert np.array_equal(out, ref)


def test_contiguous_cache_offers_the_same_interface():
    c = KVCache(1, 8, 1, 4)
    assert c.begin(3).tolist() == [0, 1, 2] and c.is_linear()
