"""A paged KV cache: fixed-size blocks, per-sequence block tables, shared prefixes.

The contiguous :class:`~.kv_cache.KVCache` reserves ``n_ctx`` positions per
sequence up front. Serving many sequences that way wastes the unused tail of
every reservation and stores a common prompt once per sequence. A paged cache
(vLLM's PagedAttention) cuts the memory into blocks of ``B`` token cells::

    pool.k: (n_blocks, n_layer_g, B, n_kv_head, head_dim_k)   # one block = B cells of every layer
    pool.v: (n_blocks, n_layer_g, B, n_kv_head, head_dim_v)
    bytes per block = n_layer_g * B * n_kv_head * (head_dim_k + head_dim_v) * sizeof(dtype)

and gives each sequence a **block table**: cell ``c`` of the sequence lives in
block ``table[c // B]`` at offset ``c % B``. A sequence of ``n`` cells holds
``ceil(n / B)`` blocks, so at most ``B - 1`` cells are wasted per sequence.

Blocks are **reference counted**. :meth:`PagedKVCache.fork` (``seq_cp`` of a
whole sequence) copies the source's block table and adds one to each block's
count: the prefix is stored once. A block is written only while its count is 1;
appending to a shared block (the fork's partially filled last block) first
copies it (**copy-on-write**). Removing a sequence drops its references; a
block whose count reaches 0 returns to the free list. Eight sequences that
share a 256-token prompt with ``B = 16`` hold ``256 / 16 = 16`` prompt blocks
in all instead of ``8 * 16 = 128``.

Cells and positions (llama.cpp's model, :mod:`llama-kv-cells.h`)
--------------------------------------------------------------
Each sequence has its own cell space (as llama.cpp's cache with
``kv_unified = false``: one stream per sequence): cell ``c`` holds the K/V of
one token and that token's position ``cell_pos[c]`` (-1: empty). Attention
masks by position, not by cell: query position ``p`` sees every non-empty
cell with ``cell_pos <= p`` (and ``p - cell_pos < window`` on sliding-window
layers). New tokens are appended after the last non-empty cell, at positions
``seq_pos_max + 1 ..`` (llama_batch_get_one's positions). While a sequence is
only appended to, cell ``c`` holds position ``c`` (:meth:`is_linear`), exactly
as a contiguous cache's row ``c`` -- and attention reads the cells in the same
order, so the floats, and the logits, are bit-identical to the contiguous
cache's (tested, SmolLM2 and Gemma 3 under ``numerics="llama.cpp"``).

Sequence operations (llama.cpp's ``llama_memory_seq_*``, positions ``[p0, p1)``,
a negative bound meaning "from the start" / "to the end"):

* :meth:`seq_rm` empties the sequence's cells at positions in ``[p0, p1)``
  (``seq = -1``: every sequence); trailing empty cells are dropped and their
  blocks released, so a rewind (``seq_rm(s, n, -1)``) refills the same cells as
  llama.cpp does.
* :meth:`seq_cp` with the whole range makes ``dst`` a copy of ``src``
  (llama.cpp across streams: ``dst`` is reset first); here the copy is a block
  table that shares ``src``'s blocks. A partial range is accepted only into an
  empty ``dst`` (llama.cpp asserts on partial cross-stream copies).
* :meth:`seq_keep` drops every other sequence (as llama-memory.h documents and llama.cpp's unified
  cache does; with one stream per sequence llama.cpp's loop only visits ``seq``'s own stream and
  leaves the others in place).
* :meth:`seq_add` adds ``shift`` to the positions in ``[p0, p1)``; a position
  that becomes negative empties its cell. As in llama.cpp the keys, already
  RoPE-rotated at their old positions, are re-rotated by the accumulated delta
  before the next forward pass (its "K-shift": ``rope(k, delta)`` in float32,
  rounded back to the cache type; RoPE by ``a`` then by ``b`` is rotation by
  ``a + b`` up to rounding). The rotation is the model's, so the cache takes it
  as a callable (``k_shift``). Shared blocks are copied before they are rotated.
* :meth:`seq_pos_min` / :meth:`seq_pos_max`.

New tokens go where llama.cpp's slot search (``find_slot``, non-contiguous) puts
them: the first empty cells from the stream's ``head`` (which ``seq_rm`` /
``seq_add`` move back to the first freed cell), so a context shift's hole is
refilled as in llama.cpp and the lanes of every cell, hence the bits, agree
(tested after seq_cp, seq_rm, a context shift with its K-shift, seq_keep).
Where this differs: our streams have no end, so the search never wraps around
to cells before the head (llama.cpp's does once its stream of ``n_ctx /
n_seq_max`` cells is full).

Memory, measured: SmolLM2-135M stores ``2 * 30 * 3 * 64 * 2 = 23,040`` bytes
per token in float16; 8 sequences of a shared 256-token prompt plus 8 tokens
each hold ``16 + 8 = 24`` blocks of 16 (8.8 MB, also the pool's resident pages)
against ``8 * 264`` tokens (48.7 MB) in contiguous caches.

Sliding-window layers
---------------------
Layers that attend only to the last ``window`` positions (Gemma 3's local
layers, Mistral) get their own block pool (``sliding_layers``). After each
forward pass, a full block of such a group whose every cell is masked for the
next token (``pos <= seq_pos_max + 1 - window``, llama.cpp's ``is_masked_swa``)
is released and its table entry set to -1: those layers hold at most
``ceil(window / B) + 1`` blocks per sequence (plus one batch's worth during a
prefill), whatever the sequence length. The cells they lost are exactly the
ones the mask hides from every later query, so the logits equal those of a
full-size cache with the mask (llama.cpp's ``swa_full = true``, the default of
``llama_context_default_params``) at any length (tested against the contiguous
cache past the window, and against llama.cpp at 552 tokens). Positions only grow
in that argument: a ``seq_add`` with a negative shift cannot bring evicted cells
back (neither can llama.cpp's non-full SWA cache, which reuses those cells).

llama.cpp's *non-full* SWA cache (``swa_full = false``) is a ring of
``pad(window + n_ubatch, 256)`` cells whose masked cells are overwritten: once it
wraps, a token lands in a cell whose lane differs from its position's, and the
sums change order. Measured on Gemma 3 270M, 900 tokens one at a time
(``n_ubatch = 32``: a ring of 768 cells): our logits equal that llama.cpp's for
the first 770 steps and differ from there on (by up to 6.6); they equal
``swa_full = true`` at every step. Reproducing the ring's placement would need
the sliding-window group to have its own cell numbering (left for later).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..foundation.errors import ContextLengthError
from ..linear_algebra.half import store_as_f16

EMPTY = -1  # cell_pos of an empty cell; table entry of a released (evicted) block
POS_MAX = np.iinfo(np.int32).max


def _anonymous_zeros(shape, dtype) -> np.ndarray:
    """A zero array in its own anonymous ``mmap`` (pages resident only once written)."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, max(n, 1)), dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def resident_bytes(a: np.ndarray) -> int:
    """Measured resident bytes (RSS) of the pages under ``a``'s buffer: the present / swapped bits of
    ``/proc/self/pagemap`` for each page (Linux), whole pages counted."""
    page = mmap.PAGESIZE
    lo = a.__array_interface__["data"][0]
    first, last = lo // page, (lo + max(a.nbytes, 1) - 1) // page
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(first * 8)
        entries = np.frombuffer(f.read((last - first + 1) * 8), np.uint64)
    present = (entries >> np.uint64(63)) | ((entries >> np.uint64(62)) & np.uint64(1))
    return int(np.count_nonzero(present)) * page


class BlockPool:
    """``n_blocks`` blocks of ``block_size`` cells for ``n_layers`` layers, with reference counts.

    The pool lives in an anonymous memory map: the kernel hands out zero pages on first write, so a
    block costs resident memory (RSS) only once used (``resident_bytes`` measures it).
    """

    def __init__(self, n_blocks: int, n_layers: int, block_size: int, n_kv_head: int,
                 head_dim_k: int, head_dim_v: int, dtype):
        self.n_blocks, self.block_size = n_blocks, block_size
        self.k = _anonymous_zeros((n_blocks, n_layers, block_size, n_kv_head, head_dim_k), dtype)
        self.v = _anonymous_zeros((n_blocks, n_layers, block_size, n_kv_head, head_dim_v), dtype)
        self.refcount = np.zeros(n_blocks, np.int32)  # (n_blocks,): sequences whose table holds the block
        self._free = list(range(n_blocks - 1, -1, -1))  # pop() hands out the lowest free id

    @property
    def bytes_per_block(self) -> int:
        """``n_layers * B * n_kv_head * (head_dim_k + head_dim_v) * sizeof(dtype)``."""
        return (self.k.nbytes + self.v.nbytes) // self.n_blocks

    @property
    def n_free(self) -> int:
        return len(self._free)

    @property
    def n_used(self) -> int:
        return self.n_blocks - len(self._free)

    def alloc(self) -> int:
        if not self._free:
            raise ContextLengthError(f"the paged KV cache is out of blocks ({self.n_blocks} of {self.block_size} cells)")
        b = self._free.pop()
        self.refcount[b] = 1
        return b

    def incref(self, b: int) -> None:
        self.refcount[b] += 1

    def decref(self, b: int) -> None:
        self.refcount[b] -= 1
        if self.refcount[b] == 0:
            self._free.append(b)

    def copy_block(self, b: int) -> int:
        """A private copy of block ``b`` (copy-on-write); drops one reference to ``b``."""
        nb = self.alloc()
        self.k[nb] = self.k[b]
        self.v[nb] = self.v[b]
        self.decref(b)
        return nb


@dataclass
class LayerGroup:
    """Layers that share one pool and one block table per sequence (``window``: their sliding window)."""

    layers: tuple[int, ...]
    window: int | None
    pool: BlockPool


@dataclass
class _Sequence:
    cell_pos: np.ndarray  # (capacity,) int32: position held by each cell, EMPTY if none
    n_cells: int = 0  # cells 0 .. n_cells-1 are in use (some may be empty)
    tables: list = field(default_factory=list)  # per group: block ids, EMPTY where released
    shift: np.ndarray | None = None  # (capacity,) int32: pending K-shift per cell (seq_add), or None
    head: int = 0  # llama.cpp's v_heads[stream]: where the search for free cells starts

    def positions(self) -> np.ndarray:
        return self.cell_pos[:self.n_cells]


@dataclass(frozen=True)
class PagedCells:
    """What attention needs to read one layer of one sequence through its block table.

    ``k, v: (n_blocks, B, n_kv_head, d)`` the layer's slice of the pool; ``table (n_table,)`` int64
    block ids (EMPTY: released); ``cell_pos (n_cells,)`` int32, EMPTY for empty cells.
    """

    k: np.ndarray
    v: np.ndarray
    table: np.ndarray
    cell_pos: np.ndarray
    block_size: int

    @property
    def n_cells(self) -> int:
        return len(self.cell_pos)

    def gather(self) -> tuple[np.ndarray, np.ndarray]:
        """Cells in order as contiguous ``(n_cells, n_kv_head, d)`` keys and values (released blocks read as 0)."""
        n, B = self.n_cells, self.block_size
        nb = -(-n // B)
        ids = self.table[:nb]
        k = np.zeros((nb, B) + self.k.shape[2:], self.k.dtype)
        v = np.zeros((nb, B) + self.v.shape[2:], self.v.dtype)
        live = ids >= 0
        k[live], v[live] = self.k[ids[live]], self.v[ids[live]]
        return k.reshape((nb * B,) + self.k.shape[2:])[:n], v.reshape((nb * B,) + self.v.shape[2:])[:n]


class PagedKVCache:
    """Blocks shared by many sequences (see the module docstring).

    Args:
        n_layer, n_kv_head, head_dim_k, head_dim_v: the model's cache geometry.
        n_blocks: blocks in the pool of the full-attention layers.
        block_size: cells per block ``B``.
        dtype: float16 (llama.cpp's default cache type) or float32.
        sliding_layers, window: layers with a sliding window of ``window`` positions; they get their
            own pool of ``n_blocks_window`` blocks (default ``n_blocks``) and evict old blocks.
        k_shift: ``(layer, k (n, n_kv_head, d) float32, delta (n,) int) -> k rotated by delta``, the
            model's RoPE, needed by :meth:`seq_add`.
    """

    def __init__(self, n_layer: int, n_kv_head: int, head_dim_k: int, head_dim_v: int | None = None,
                 n_blocks: int = 256, block_size: int = 16, dtype=np.float16,
                 sliding_layers=(), window: int | None = None, n_blocks_window: int | None = None,
                 k_shift: Callable | None = None):
        head_dim_v = head_dim_v or head_dim_k
        self.n_layer, self.n_kv_head, self.block_size = n_layer, n_kv_head, block_size
        self.dtype = np.dtype(dtype)
        self.k_shift = k_shift
        sliding = tuple(sorted(set(sliding_layers))) if window else ()
        full = tuple(i for i in range(n_layer) if i not in sliding)
        self.groups: list[LayerGroup] = []
        for layers, win, nb in ((full, None, n_blocks), (sliding, window, n_blocks_window or n_blocks)):
            if layers:
                pool = BlockPool(nb, len(layers), block_size, n_kv_head, head_dim_k, head_dim_v, self.dtype)
                self.groups.append(LayerGroup(layers, win, pool))
        self.layer_group = np.zeros(n_layer, np.int64)  # (n_layer,): group of each layer
        self.layer_index = np.zeros(n_layer, np.int64)  # (n_layer,): its index inside the group's pool
        for g, grp in enumerate(self.groups):
            for j, i in enumerate(grp.layers):
                self.layer_group[i], self.layer_index[i] = g, j
        self._seqs: dict[int, _Sequence] = {}

    # -- sequences -------------------------------------------------------------------------
    def sequence(self, seq_id: int = 0) -> "PagedSequence":
        """The view of sequence ``seq_id`` that :meth:`Decoder.forward` runs on (created empty if new)."""
        self._get(seq_id)
        return PagedSequence(self, seq_id)

    def seq_ids(self) -> list[int]:
        return sorted(self._seqs)

    def _get(self, seq_id: int) -> _Sequence:
        if seq_id not in self._seqs:
            self._seqs[seq_id] = _Sequence(np.full(64, EMPTY, np.int32), 0, [[] for _ in self.groups])
        return self._seqs[seq_id]

    def _drop(self, seq_id: int) -> None:
        s = self._seqs.pop(seq_id, None)
        if s is not None:
            for grp, table in zip(self.groups, s.tables):
                for b in table:
                    if b != EMPTY:
                        grp.pool.decref(b)

    def seq_pos_min(self, seq_id: int) -> int:
        """Smallest position held by ``seq_id``, -1 if none (llama_memory_seq_pos_min)."""
        s = self._seqs.get(seq_id)
        pos = s.positions() if s else np.empty(0, np.int32)
        pos = pos[pos >= 0]
        return int(pos.min()) if len(pos) else -1

    def seq_pos_max(self, seq_id: int) -> int:
        """Largest position held by ``seq_id``, -1 if none (llama_memory_seq_pos_max)."""
        s = self._seqs.get(seq_id)
        return int(s.positions().max(initial=-1)) if s else -1

    def is_linear(self, seq_id: int) -> bool:
        """True if cell ``c`` holds position ``c`` for every cell (a sequence only appended to)."""
        s = self._seqs.get(seq_id)
        if s is None or s.n_cells == 0:
            return True
        return (s.shift is None and bool(np.array_equal(s.positions(), np.arange(s.n_cells)))
                and self._find_cells(s, 1)[0] == s.n_cells)

    # -- llama_memory_seq_* ----------------------------------------------------------------
    @staticmethod
    def _range(p0: int, p1: int) -> tuple[int, int]:
        return (0 if p0 < 0 else p0), (POS_MAX if p1 < 0 else p1)

    def seq_rm(self, seq_id: int, p0: int = -1, p1: int = -1) -> bool:
        """Remove positions ``[p0, p1)`` of ``seq_id`` (-1: of every sequence). Always succeeds (True)."""
        p0, p1 = self._range(p0, p1)
        for sid in (list(self._seqs) if seq_id < 0 else [seq_id] if seq_id in self._seqs else []):
            s = self._seqs[sid]
            pos = s.positions()
            hit = np.flatnonzero((pos >= p0) & (pos < p1))
            pos[hit] = EMPTY
            if len(hit):
                s.head = min(s.head, int(hit[0]))  # llama.cpp: search from the first freed cell
            self._trim(sid)
        return True

    def _trim(self, seq_id: int) -> None:
        """Drop trailing empty cells; release the blocks no cell uses any more; an empty sequence goes."""
        s = self._seqs[seq_id]
        live = np.flatnonzero(s.positions() >= 0)
        s.n_cells = int(live[-1]) + 1 if len(live) else 0
        s.cell_pos[s.n_cells:] = EMPTY
        if s.shift is not None:
            s.shift[s.n_cells:] = 0
        n_keep = -(-s.n_cells // self.block_size)
        for grp, table in zip(self.groups, s.tables):
            for b in table[n_keep:]:
                if b != EMPTY:
                    grp.pool.decref(b)
            del table[n_keep:]
        if s.n_cells == 0:
            del self._seqs[seq_id]

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        """Copy positions ``[p0, p1)`` of ``src`` to ``dst`` by sharing blocks (no K/V is copied).

        The whole range replaces ``dst`` (llama.cpp's cross-stream copy resets ``dst``); a partial
        range needs an empty ``dst``.
        """
        if src == dst or src not in self._seqs:
            return
        whole = p0 <= 0 and p1 < 0
        if not whole and dst in self._seqs:
            raise ValueError("seq_cp of a partial range needs an empty destination sequence "
                             "(llama.cpp supports only whole copies between streams)")
        self._drop(dst)
        s = self._seqs[src]
        copy = _Sequence(s.cell_pos.copy(), s.n_cells, [list(t) for t in s.tables],
                         None if s.shift is None else s.shift.copy(), s.head)
        for grp, table in zip(self.groups, copy.tables):
            for b in table:
                if b != EMPTY:
                    grp.pool.incref(b)
        self._seqs[dst] = copy
        if not whole:
            lo, hi = self._range(p0, p1)
            pos = copy.positions()
            pos[(pos < lo) | (pos >= hi)] = EMPTY
            self._trim(dst)

    def fork(self, src: int, dst: int) -> "PagedSequence":
        """``dst`` becomes a copy of ``src`` sharing all its blocks; returns ``dst``'s view."""
        self.seq_cp(src, dst)
        return self.sequence(dst)

    def seq_keep(self, seq_id: int) -> None:
        """Remove every sequence but ``seq_id``."""
        for sid in [s for s in self._seqs if s != seq_id]:
            self._drop(sid)

    def seq_add(self, seq_id: int, p0: int, p1: int, shift: int) -> None:
        """Add ``shift`` to the positions ``[p0, p1)`` of ``seq_id``; cells pushed below 0 are emptied.

        The keys are re-rotated by the accumulated shift before the next forward pass (:meth:`apply_shifts`).
        """
        if shift == 0 or seq_id not in self._seqs:
            return
        p0, p1 = self._range(p0, p1)
        if p0 == p1:
            return
        s = self._seqs[seq_id]
        pos = s.positions()
        hit = (pos >= p0) & (pos < p1)
        if not hit.any():
            return
        if s.shift is None:
            s.shift = np.zeros(len(s.cell_pos), np.int32)
        pos[hit] += shift
        s.shift[:s.n_cells][hit] += shift
        gone = hit & (pos < 0)
        pos[gone] = EMPTY
        s.shift[:s.n_cells][gone] = 0
        s.head = int(np.argmax(gone)) if gone.any() else 0  # llama.cpp: first freed cell, else 0
        self._trim(seq_id)

    def apply_shifts(self, seq_id: int) -> None:
        """llama.cpp's K-shift: rotate every shifted cell's keys by its pending delta (then clear it)."""
        s = self._seqs.get(seq_id)
        if s is None or s.shift is None:
            return
        delta = s.shift[:s.n_cells]
        cells = np.flatnonzero(delta)
        if len(cells):
            if self.k_shift is None:
                raise ValueError("seq_add moved positions but this cache has no k_shift (the model's RoPE)")
            B = self.block_size
            for g, grp in enumerate(self.groups):
                table = s.tables[g]
                self._own_blocks(s, g, sorted({int(c) // B for c in cells if table[c // B] != EMPTY}))
                live = np.array([c for c in cells if table[c // B] != EMPTY], np.int64)
                if not len(live):
                    continue
                blocks = np.array([table[c // B] for c in live], np.int64)
                for j, layer in enumerate(grp.layers):
                    k = grp.pool.k[blocks, j, live % B].astype(np.float32)  # (n, n_kv_head, d)
                    grp.pool.k[blocks, j, live % B] = np.asarray(
                        self.k_shift(layer, k, delta[live].astype(np.int64)), np.float32).astype(self.dtype)
        s.shift = None

    # -- writing ---------------------------------------------------------------------------
    def _own_blocks(self, s: _Sequence, g: int, block_indices) -> None:
        """Make table entries ``block_indices`` of group ``g`` private to ``s`` (copy-on-write)."""
        pool, table = self.groups[g].pool, s.tables[g]
        for bi in block_indices:
            b = table[bi]
            if b != EMPTY and pool.refcount[b] > 1:
                table[bi] = pool.copy_block(b)

    @staticmethod
    def _find_cells(s: _Sequence | None, n_new: int) -> list[int]:
        """llama.cpp's ``find_slot(ubatch, cont=false)`` in the sequence's stream: from ``head`` (or
        from 0 if ``head > used + 2 n``), the first ``n_new`` empty cells (cells past the last are
        empty; the stream has no end here, so the search never wraps around)."""
        if s is None:
            return list(range(n_new))
        pos = s.positions()
        used = int(np.count_nonzero(pos >= 0))
        c = 0 if s.head > used + 2 * n_new else s.head
        cells = []
        while len(cells) < n_new:
            if c >= s.n_cells:
                cells.extend(range(c, c + n_new - len(cells)))
                break
            if pos[c] < 0:
                cells.append(c)
            c += 1
        return cells

    def blocks_needed(self, seq_id: int, n_new: int) -> list[int]:
        """Per group: new blocks (fresh or copy-on-write) that storing ``n_new`` tokens would take."""
        s = self._seqs.get(seq_id)
        tables = s.tables if s else [[] for _ in self.groups]
        touched = sorted({c // self.block_size for c in self._find_cells(s, n_new)})
        need = []
        for grp, table in zip(self.groups, tables):
            fresh = sum(1 for bi in touched if bi >= len(table) or table[bi] == EMPTY)
            shared = sum(1 for bi in touched if bi < len(table) and table[bi] != EMPTY and grp.pool.refcount[table[bi]] > 1)
            need.append(fresh + shared)
        return need

    def check_room(self, seq_id: int, n_new: int) -> None:
        for grp, n in zip(self.groups, self.blocks_needed(seq_id, n_new)):
            if n > grp.pool.n_free:
                raise ContextLengthError(
                    f"{n_new} new tokens need {n} more blocks of {self.block_size} cells; "
                    f"{grp.pool.n_free} of {grp.pool.n_blocks} are free")

    def append_cells(self, seq_id: int, n_new: int) -> tuple[np.ndarray, np.ndarray]:
        """Reserve cells for ``n_new`` tokens of ``seq_id`` (allocating and un-sharing their blocks).

        Returns ``(cells (n_new,), positions (n_new,))``: the cells llama.cpp's slot search picks
        (:meth:`_find_cells`; the cells after the last one for a plain sequence), the positions
        ``seq_pos_max + 1 ..``.
        """
        self.check_room(seq_id, n_new)
        self.apply_shifts(seq_id)
        s = self._get(seq_id)
        start_pos = int(s.positions().max(initial=-1)) + 1
        cells = np.array(self._find_cells(s, n_new), np.int64)
        end = int(cells[-1]) + 1
        if end > len(s.cell_pos):
            cap = max(end, 2 * len(s.cell_pos))
            s.cell_pos = np.concatenate([s.cell_pos, np.full(cap - len(s.cell_pos), EMPTY, np.int32)])
        B = self.block_size
        touched = sorted({int(c) // B for c in cells})
        for g, grp in enumerate(self.groups):
            table = s.tables[g]
            while len(table) <= touched[-1]:
                table.append(EMPTY)
            for bi in touched:
                if table[bi] == EMPTY:
                    table[bi] = grp.pool.alloc()
            self._own_blocks(s, g, touched)
        positions = np.arange(start_pos, start_pos + n_new, dtype=np.int32)
        s.cell_pos[cells] = positions
        s.n_cells = max(s.n_cells, end)
        s.head = end  # llama.cpp's apply_ubatch: the head moves past the slot
        return cells, positions

    def write(self, seq_id: int, layer: int, cells: np.ndarray, k_new: np.ndarray, v_new: np.ndarray) -> None:
        """Store ``k_new, v_new: (n, n_kv_head, d)`` in ``cells (n,)`` of ``layer``, a run of cells of one block at a time."""
        s = self._seqs[seq_id]
        g, j = self.layer_group[layer], self.layer_index[layer]
        pool, table, B = self.groups[g].pool, s.tables[g], self.block_size
        i, n = 0, len(cells)
        while i < n:
            c = int(cells[i])
            m = 1
            while i + m < n and cells[i + m] == c + m and (c + m) % B:
                m += 1
            b, off = table[c // B], c % B
            store_as_f16(pool.k[b, j, off:off + m], k_new[i:i + m])
            store_as_f16(pool.v[b, j, off:off + m], v_new[i:i + m])
            i += m

    def evict(self, seq_id: int) -> None:
        """Release the sliding-window groups' full blocks that no later query can see."""
        s = self._seqs.get(seq_id)
        if s is None:
            return
        B = self.block_size
        p_next = int(s.positions().max(initial=-1)) + 1
        for g, grp in enumerate(self.groups):
            if not grp.window:
                continue
            table = s.tables[g]
            for bi in range(min(len(table), s.n_cells // B)):  # oldest first; stop at the first kept block
                if table[bi] == EMPTY:
                    continue
                block_pos = s.cell_pos[bi * B:(bi + 1) * B]
                # every cell taken (no later token lands in the block) and masked for every later query
                if not (np.all(block_pos >= 0) and np.all(p_next - block_pos >= grp.window)):
                    break  # (releasing is an optimisation: stopping early only delays it)
                grp.pool.decref(table[bi])
                table[bi] = EMPTY

    def cells(self, seq_id: int, layer: int) -> PagedCells:
        s = self._seqs[seq_id]
        g, j = self.layer_group[layer], self.layer_index[layer]
        pool = self.groups[g].pool
        return PagedCells(pool.k[:, j], pool.v[:, j], np.array(s.tables[g], np.int64),
                          s.cell_pos[:s.n_cells], self.block_size)

    def tables(self, seq_id: int) -> list[np.ndarray]:
        """Each group's block table of ``seq_id`` as int64 arrays (EMPTY: released)."""
        s = self._seqs.get(seq_id)
        return [np.array(t if s else [], np.int64) for t in (s.tables if s else [[] for _ in self.groups])]

    # -- memory ----------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes of the pools (reserved address space; pages become resident when written)."""
        return sum(grp.pool.k.nbytes + grp.pool.v.nbytes for grp in self.groups)

    @property
    def resident_bytes(self) -> int:
        """Measured resident memory of the pools (Linux ``/proc/self/pagemap``)."""
        return sum(resident_bytes(grp.pool.k) + resident_bytes(grp.pool.v) for grp in self.groups)

    @property
    def n_allocated_blocks(self) -> int:
        return sum(grp.pool.n_used for grp in self.groups)

    @property
    def allocated_bytes(self) -> int:
        """Bytes of the blocks in use: ``sum over groups of n_used * bytes_per_block``."""
        return sum(grp.pool.n_used * grp.pool.bytes_per_block for grp in self.groups)

    def block_refs(self) -> dict[int, int]:
        """(First group) block id -> reference count, for the blocks in use."""
        rc = self.groups[0].pool.refcount
        return {int(b): int(rc[b]) for b in np.flatnonzero(rc)}


class PagedSequence:
    """One sequence of a :class:`PagedKVCache`, with the interface :meth:`Decoder.forward` uses.

    ``n_past`` (the next token's position), ``check_room(n)``, ``begin(n)`` (reserve cells),
    ``store(layer, k, v) -> PagedCells``, ``advance(n)``, ``dtype``, ``is_linear()``.
    """

    paged = True

    def __init__(self, cache: PagedKVCache, seq_id: int):
        self.cache, self.seq_id = cache, seq_id
        self._cells: np.ndarray | None = None  # during a forward pass: the cells being written (n_new,)
        self._start_pos = 0

    @property
    def dtype(self):
        return self.cache.dtype

    @property
    def n_past(self) -> int:
        """Position of the next token: ``seq_pos_max + 1`` (frozen during a forward pass)."""
        if self._cells is not None:
            return self._start_pos
        return self.cache.seq_pos_max(self.seq_id) + 1

    @property
    def n_cells(self) -> int:
        s = self.cache._seqs.get(self.seq_id)
        return s.n_cells if s else 0

    def check_room(self, n_new: int) -> None:
        self.cache.check_room(self.seq_id, n_new)

    def is_linear(self) -> bool:
        return self.cache.is_linear(self.seq_id)

    def begin(self, n_new: int) -> np.ndarray:
        """Reserve cells for ``n_new`` tokens; returns their positions ``(n_new,)``."""
        self._cells, pos = self.cache.append_cells(self.seq_id, n_new)
        self._start_pos = int(pos[0])
        return pos

    def store(self, layer: int, k_new: np.ndarray, v_new: np.ndarray) -> PagedCells:
        """Write the batch's ``k_new, v_new: (n_new, n_kv_head, d)`` of ``layer``; return the layer's cells."""
        self.cache.write(self.seq_id, layer, self._cells, k_new, v_new)
        return self.cache.cells(self.seq_id, layer)

    def advance(self, n_new: int) -> None:
        self._cells = None
        self.cache.evict(self.seq_id)


__all__ = ["PagedKVCache", "PagedSequence", "PagedCells", "BlockPool", "LayerGroup", "EMPTY", "resident_bytes"]
