"""The key/value cache: attention's memory of earlier tokens.

Generating token ``t`` needs the keys and values of tokens ``0..t-1`` in every
layer. Recomputing them costs a full forward pass over the prefix per step,
O(T^2) work for T tokens; keeping them costs memory instead::

    bytes = 2 (K and V) * n_layer * n_ctx * n_kv_head * head_dim * sizeof(dtype)

SmolLM2-135M (30 layers, 3 KV heads of 64) at n_ctx = 2048 in float32: 94 MB.

This is the simple contiguous cache: one preallocated block per layer, filled
left to right. :mod:`.paged_kv_cache` cuts the same memory into fixed-size
blocks shared between sequences (prefix sharing, copy-on-write, llama.cpp's
``seq_*`` operations, sliding-window eviction).

The interface :meth:`Decoder.forward` drives, which both caches offer::

    cache.dtype              # float32 or float16
    cache.n_past             # position of the next token
    cache.check_room(n)      # raise ContextLengthError if n more tokens do not fit
    cache.begin(n)           # reserve cells for n tokens -> their positions (n,)
    cache.store(layer, k, v) # write the batch's k, v: (n, n_kv_head, d) -> what attention reads
    cache.advance(n)         # the pass is over: the n tokens are cached
    cache.is_linear()        # cell c holds position c (the compiled decode step's assumption)

Here ``store`` returns the filled prefix ``k[layer, :n_past + n]`` (a view);
the paged cache returns a :class:`~.paged_kv_cache.PagedCells` (block table
and cell positions) that its attention kernel reads.
"""

from __future__ import annotations

import numpy as np

from ..foundation.errors import ContextLengthError
from ..linear_algebra.half import store_as_f16


class KVCache:
    """Contiguous cache ``k, v: (n_layer, n_ctx, n_kv_head, head_dim)``.

    ``dtype`` float32 keeps keys/values exactly; float16 halves the memory and
    mirrors llama.cpp's default cache type.
    """

    def __init__(self, n_layer: int, n_ctx: int, n_kv_head: int, head_dim_k: int,
                 head_dim_v: int | None = None, dtype=np.float32):
        self.n_layer, self.n_ctx, self.n_kv_head = n_layer, n_ctx, n_kv_head
        self.dtype = np.dtype(dtype)
        self.k = np.zeros((n_layer, n_ctx, n_kv_head, head_dim_k), dtype=self.dtype)
        self.v = np.zeros((n_layer, n_ctx, n_kv_head, head_dim_v or head_dim_k), dtype=self.dtype)
        self.n_past = 0  # positions 0..n_past-1 hold valid entries in every layer

    def check_room(self, n_new: int) -> None:
        if self.n_past + n_new > self.n_ctx:
            raise ContextLengthError(
                f"{self.n_past} cached + {n_new} new tokens exceed the context of {self.n_ctx} tokens"
            )

    def begin(self, n_new: int) -> np.ndarray:
        """Positions ``n_past .. n_past + n_new - 1`` of the next tokens (their rows; nothing to reserve)."""
        return np.arange(self.n_past, self.n_past + n_new)

    def is_linear(self) -> bool:
        return True

    def store(self, layer: int, k_new: np.ndarray, v_new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Write ``k_new, v_new: (n_new, n_kv_head, head_dim)`` at ``n_past``; return the filled prefix views."""
        start, end = self.n_past, self.n_past + len(k_new)
        store_as_f16(self.k[layer, start:end], k_new)  # a plain copy unless the cache is float16
        store_as_f16(self.v[layer, start:end], v_new)
        return self.k[layer, :end], self.v[layer, :end]

    def advance(self, n_new: int) -> None:
        """Mark ``n_new`` more positions as filled (after every layer stored them)."""
        self.n_past += n_new

    def reset(self) -> None:
        self.n_past = 0

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes
