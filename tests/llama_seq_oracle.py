"""llama.cpp's multi-sequence KV cache through llama-cpp-python's low-level bindings (an oracle).

One context with ``n_seq_max`` sequences (``kv_unified = false``: a stream of cells per sequence,
llama.cpp's default), a float16 cache; :meth:`decode` runs tokens of one sequence at given positions
and returns the last token's logits; :meth:`seq_rm` / ``seq_cp`` / ``seq_keep`` / ``seq_add`` /
``seq_pos_max`` call ``llama_memory_seq_*`` as they are.
"""

from __future__ import annotations

import ctypes

import numpy as np


class LlamaSeqOracle:
    def __init__(self, llama_cpp, path, n_ctx: int = 1024, n_seq_max: int = 4, n_batch: int = 512):
        self.lc = lc = llama_cpp
        mp = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(str(path).encode(), mp)
        cp = lc.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, n_batch, n_batch, n_seq_max
        cp.n_threads = cp.n_threads_batch = 2
        cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # the non-flash path we reproduce
        self.ctx = lc.llama_init_from_model(self.model, cp)
        self.mem = lc.llama_get_memory(self.ctx)
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.n_batch = n_batch
        self.batch = lc.llama_batch_init(n_batch, 0, 1)

    def close(self):
        lc = self.lc
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)

    def decode(self, seq: int, ids, pos0: int | None = None) -> np.ndarray:
        """Run ``ids`` of sequence ``seq`` at positions ``pos0 ..`` (default: after its last); the last logits."""
        if pos0 is None:
            pos0 = self.seq_pos_max(seq) + 1
        b = self.batch
        b.n_tokens = len(ids)
        for i, t in enumerate(ids):
            b.token[i], b.pos[i], b.n_seq_id[i] = int(t), pos0 + i, 1
            b.seq_id[i][0] = seq
            b.logits[i] = 1 if i == len(ids) - 1 else 0
        rc = self.lc.llama_decode(self.ctx, b)
        assert rc == 0, f"llama_decode returned {rc}"
        ptr = self.lc.llama_get_logits_ith(self.ctx, len(ids) - 1)
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (self.n_vocab,)).copy()[None]

    def decode_batch(self, seqs, tokens) -> np.ndarray:
        """One ``llama_decode`` of token ``tokens[r]`` for sequence ``seqs[r]`` (each after its last
        position), every row's logits requested: ``(n, n_vocab)``."""
        b = self.batch
        b.n_tokens = len(tokens)
        for i, (seq, t) in enumerate(zip(seqs, tokens)):
            b.token[i], b.pos[i], b.n_seq_id[i] = int(t), self.seq_pos_max(seq) + 1, 1
            b.seq_id[i][0] = seq
            b.logits[i] = 1
        rc = self.lc.llama_decode(self.ctx, b)
        assert rc == 0, f"llama_decode returned {rc}"
        rows = []
        for i in range(len(tokens)):
            ptr = self.lc.llama_get_logits_ith(self.ctx, i)
            rows.append(np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (self.n_vocab,)).copy())
        return np.array(rows)

    def seq_rm(self, seq, p0=-1, p1=-1):
        return self.lc.llama_memory_seq_rm(self.mem, seq, p0, p1)

    def seq_cp(self, src, dst, p0=-1, p1=-1):
        self.lc.llama_memory_seq_cp(self.mem, src, dst, p0, p1)

    def seq_keep(self, seq):
        self.lc.llama_memory_seq_keep(self.mem, seq)

    def seq_add(self, seq, p0, p1, shift):
        self.lc.llama_memory_seq_add(self.mem, seq, p0, p1, shift)

    def seq_pos_max(self, seq) -> int:
        return self.lc.llama_memory_seq_pos_max(self.mem, seq)

    def seq_pos_min(self, seq) -> int:
        return self.lc.llama_memory_seq_pos_min(self.mem, seq)
