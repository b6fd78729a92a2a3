"""The generic decoder-only transformer, driven by an :class:`ArchSpec`.

One forward pass, top to bottom (llama; other families switch parts on)::

    h = embed[ids] (* sqrt(d_model))                      # (n_tok, d_model)
    for each layer:
        x = rms_norm(h) * attn_norm
        q, k, v = x Wq^T, x Wk^T, x Wv^T                  # (n_tok, n_head|n_kv_head, head_dim)
        (q, k = rms_norm per head)                        # qk-norm
        q, k = rope(q, pos), rope(k, pos)
        cache K, V; a = attention(q, K[:n], V[:n]) Wo^T   # causal, GQA
        h = h + (rms_norm(a) * post_attn_norm | a)
        x = rms_norm(h) * ffn_norm
        f = (act(x Wgate^T) * x Wup^T) Wdown^T            # gated FFN
        h = h + (rms_norm(f) * post_ffn_norm | f)
    logits = rms_norm(h) * output_norm  Wout^T            # (n_tok, n_vocab)

Weights stay in their GGUF types (memory-mapped, never copied): every matrix
product goes through layer 2's quantised kernels.

``numerics`` picks how products are rounded:

* ``"float"``: the dequantised weights times float32 activations, exactly,
  with a float32 KV cache: the reference path. It agrees with llama.cpp
  running an F32 copy of the weights with an F32 KV cache to ~1e-4 in the
  logits (measured: 4e-5 over 5 tokens of SmolLM2). llama.cpp's *default*
  float16 KV cache alone moves its own logits by ~0.02 on the same input.
* ``"llama.cpp"``: llama.cpp's x86 AVX2 CPU arithmetic, reproduced bit for
  bit where it matters (layer 2's ``ggml_simd`` for Q4_1/Q5_0/Q8_0/Q4_K/Q6_K weights --
  the SIMD twin of the scalar reference ``ggml_exact.matmul_ggml`` -- layer 3's
  ``ggml_math`` for RMSNorm, RoPE and SwiGLU, layer 4's ``attention_ggml``;
  one-token steps of llama-family models run all of it in one compiled call,
  :mod:`.fused_decode`): activations quantised to 8 bits per block of 32, the
  same FMA lane order and horizontal sums, a float16 KV cache. The 8-bit
  rounding is chaotic (a 1e-6 relative change of the embeddings moves the
  final logits by up to ~0.5), so only bit-exact arithmetic gives llama.cpp's
  tokens; on SmolLM2's Q4_1 file the logits are identical. Other weight types
  use the 8-bit rounding with our own summation order.

Caches: ``new_cache(n_ctx, numerics)`` is one contiguous sequence;
``new_paged_cache(n_blocks, numerics, block_size)`` is a pool of blocks for many
sequences (prefix sharing, llama.cpp's ``seq_*`` operations, the sliding-window
layers in their own evicting pool); run sequence ``s`` with
``forward(ids, cache.sequence(s), numerics)``. Attention reads the paged cells
through the block table in the contiguous cache's order: bit-identical logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..foundation.errors import ContextLengthError, ModelError
from ..foundation.ggml_types import GGMLType
from ..foundation.gguf import GGUFFile
from ..foundation.threads import blas_single_threaded
from ..linear_algebra import QMatrix, get_rows, matmul
from ..linear_algebra.ggml_simd import SUPPORTED as SIMD_TYPES
from ..linear_algebra.ggml_simd import matmul_simd, share_input
from ..neural_primitives import ACTIVATIONS, apply_rope, rms_norm
from ..neural_primitives.ggml_math import geglu_ggml, rms_norm_ggml, rope_ggml, swiglu_ggml
from ..transformer.attention import attention, softmax
from ..transformer.attention_ggml import attention_ggml, attention_ggml_paged
from ..transformer.kv_cache import KVCache
from ..transformer.paged_kv_cache import PagedCells, PagedKVCache, PagedSequence
from .arch import ArchSpec
from .fused_decode import FusedDecodeStep, attention_rows_paged, store_rows_paged, unsupported_reason


def _matmul_float(w: QMatrix, x: np.ndarray) -> np.ndarray:
    return matmul(w, x, "float")


def _matmul_llama_cpp(w: QMatrix, x: np.ndarray) -> np.ndarray:
    """llama.cpp's AVX2 order where we reproduce it bit for bit, its 8-bit rounding elsewhere."""
    if w.qtype in SIMD_TYPES:
        return matmul_simd(w, x)  # llama.cpp's AVX2 kernels, bit for bit
    return matmul(w, np.asarray(x), "q8_x86")


def _attention_llama_cpp(q, k, v, n_past, scale, window=None, return_weights=False):
    if return_weights:  # not reproduced bit for bit: rounding mirrored instead
        return attention(q, k, v, n_past, scale, window=window, f16_products=True, return_weights=return_weights)
    return attention_ggml(q, k, v, n_past, scale, window=window)


def _attention_float(q, k, v, n_past, scale, window=None, return_weights=False):
    return attention(q, k, v, n_past, scale, window=window, return_weights=return_weights)


def _attention_cells_float(q, q_pos, keys, values, cell_pos, scale, window=None, f16_products=False,
                           return_weights=False):
    """:func:`attention` with the mask taken from each cell's position (a paged sequence after seq ops):
    query at ``q_pos[t]`` sees cell ``c`` iff ``0 <= cell_pos[c] <= q_pos[t]`` (and within ``window``)."""
    n_tok, n_head, d_k = q.shape
    n_kv, n_kv_head, d_v = values.shape
    group = n_head // n_kv_head
    if f16_products:
        q = q.astype(np.float16)
    qg = q.reshape(n_tok, n_kv_head, group, d_k).transpose(1, 2, 0, 3).reshape(n_kv_head, group * n_tok, d_k)
    scores = np.matmul(qg.astype(np.float32), keys.transpose(1, 2, 0).astype(np.float32)) * np.float32(scale)
    scores = scores.reshape(n_kv_head, group, n_tok, n_kv)
    cp, qp = np.asarray(cell_pos)[None, :], np.asarray(q_pos)[:, None]
    visible = (cp >= 0) & (cp <= qp)
    if window is not None:
        visible &= qp - cp < window
    scores = scores + np.where(visible, np.float32(0), np.float32(-np.inf))
    weights = softmax(scores)
    w = weights.astype(np.float16).astype(np.float32) if f16_products else weights
    out = np.matmul(w.reshape(n_kv_head, group * n_tok, n_kv), values.transpose(1, 0, 2).astype(np.float32))
    out = out.reshape(n_kv_head, group, n_tok, d_v).transpose(2, 0, 1, 3).reshape(n_tok, n_head * d_v)
    return (out, weights.reshape(n_head, n_tok, n_kv)) if return_weights else out


def _paged_attention_float(q, q_pos, cells: PagedCells, scale, window=None, return_weights=False, f16=False):
    """Float attention over a paged sequence: its cells gathered in order, then :func:`attention` (a
    plain sequence: the same floats as the contiguous cache) or the position-masked variant."""
    keys, values = cells.gather()  # (n_cells, n_kv_head, d)
    n_past = int(q_pos[0])
    if np.array_equal(cells.cell_pos, np.arange(len(keys))) and np.array_equal(q_pos, n_past + np.arange(len(q))):
        return attention(q, keys, values, n_past, scale, window=window, f16_products=f16, return_weights=return_weights)
    return _attention_cells_float(q, q_pos, keys, values, cells.cell_pos, scale, window, f16, return_weights)


def _paged_attention_llama_cpp(q, q_pos, cells: PagedCells, scale, window=None, return_weights=False):
    if return_weights:  # as _attention_llama_cpp: rounding mirrored, not bit for bit
        return _paged_attention_float(q, q_pos, cells, scale, window, return_weights, f16=True)
    return attention_ggml_paged(q, q_pos, cells.k, cells.v, cells.table, cells.cell_pos, cells.block_size, scale,
                                window=window)


class PagedBatch(list):
    """The sequences of one :meth:`Decoder.forward_batch` step (a list of :class:`PagedSequence`, one new
    token each, cells already reserved). ``tables`` (per layer group, ``(n_seq, n_table)`` int64) when
    every sequence is plain (cell ``c`` holds position ``c``) and ``fast`` is asked: then each layer's
    attention of all rows is one kernel reading the block tables (:func:`.fused_decode.attention_rows_paged`),
    else the generic per-sequence attention."""

    def __init__(self, views, fast: bool):
        super().__init__(views)
        self.cache = views[0].cache
        self.seq_ids = [v.seq_id for v in views]
        self.tables = None
        self.cells = np.array([int(v._cells[0]) for v in views], np.int64)  # (n_seq,): each new token's cell
        if fast and all(v.is_linear() for v in views):
            self.tables = []
            for g in range(len(self.cache.groups)):
                rows = [self.cache.tables(s)[g] for s in self.seq_ids]
                t = np.full((len(rows), max(len(r) for r in rows)), -1, np.int64)
                for j, r in enumerate(rows):
                    t[j, :len(r)] = r
                self.tables.append(t)


@dataclass(frozen=True)
class Numerics:
    """How the decoder rounds: which kernel computes each step (see the module docstring)."""

    name: str
    kv_dtype: type
    matmul: Callable  # (QMatrix, x (n_tok, n_in)) -> (n_tok, n_out)
    rms_norm: Callable  # (x, weight, eps) -> x normalised
    rope: Callable  # (x, positions, n_rot, base, mode, freq_scale) -> rotated x
    attention: Callable  # (q, k, v, n_past, scale, window, return_weights) -> out
    swiglu: Callable | None  # (gate, up) -> silu(gate) * up, or None for act(gate) * up
    geglu: Callable | None  # (gate, up) -> gelu(gate) * up, or None for act(gate) * up
    share_input: Callable = lambda x: x  # x -> x whose 8-bit quantisation products may reuse
    # (q, q_pos, PagedCells, scale, window, return_weights) -> out: attention through a block table
    paged_attention: Callable = _paged_attention_float


NUMERICS = {
    "float": Numerics("float", np.float32, _matmul_float, rms_norm, apply_rope, _attention_float, None, None),
    "llama.cpp": Numerics("llama.cpp", np.float16, _matmul_llama_cpp, rms_norm_ggml, rope_ggml,
                          _attention_llama_cpp, swiglu_ggml, geglu_ggml, share_input, _paged_attention_llama_cpp),
}


def numerics_named(name: str) -> Numerics:
    try:
        return NUMERICS[name]
    except KeyError:
        raise ModelError(f"unknown numerics {name!r}; expected one of {sorted(NUMERICS)}") from None


@dataclass
class LayerWeights:
    """One block's parameters; matrices are QMatrix (rows = output features)."""

    attn_norm: np.ndarray
    wq: QMatrix
    wk: QMatrix
    wv: QMatrix
    wo: QMatrix
    ffn_norm: np.ndarray
    w_gate: QMatrix
    w_up: QMatrix
    w_down: QMatrix
    bq: np.ndarray | None = None
    bk: np.ndarray | None = None
    bv: np.ndarray | None = None
    q_norm: np.ndarray | None = None
    k_norm: np.ndarray | None = None
    post_attn_norm: np.ndarray | None = None
    post_ffn_norm: np.ndarray | None = None


class _WeightReader:
    """Fetches tensors by GGUF name, checking their shapes against the spec."""

    def __init__(self, gguf: GGUFFile):
        self.gguf = gguf

    def has(self, name: str) -> bool:
        return name in self.gguf.tensors

    def _info(self, name: str, shape: tuple[int, ...]):
        if name not in self.gguf.tensors:
            raise ModelError(f"{self.gguf.path}: missing tensor {name!r}")
        info = self.gguf.tensors[name]
        if tuple(info.shape) != shape:
            raise ModelError(
                f"{self.gguf.path}: tensor {name!r} has shape {info.shape} (ggml order), expected {shape}"
            )
        return info

    def vector(self, name: str, n: int) -> np.ndarray:
        """A float32 vector (norm weight or bias), shape (n,)."""
        info = self._info(name, (n,))
        if info.ggml_type == GGMLType.F32:
            return np.asarray(self.gguf.tensor_data(name))
        from ..linear_algebra import dequantize

        return dequantize(self.gguf.tensor_bytes(name).reshape(1, -1), info.ggml_type)[0]

    def matrix(self, name: str, n_in: int, n_out: int) -> QMatrix:
        """A weight matrix ``W: (n_out, n_in)`` in its GGUF type (ggml shape ``(n_in, n_out)``)."""
        info = self._info(name, (n_in, n_out))
        return QMatrix(self.gguf.tensor_bytes(name), info.ggml_type, n_in)


class Decoder:
    """A decoder-only transformer: weights + spec, and the forward pass."""

    def __init__(self, gguf: GGUFFile, spec: ArchSpec):
        self.spec = spec
        self.gguf = gguf
        r = _WeightReader(gguf)
        s = spec
        d, dq, dkv = s.d_model, s.n_head * s.head_dim_k, s.n_kv_head * s.head_dim_k
        dv = s.n_kv_head * s.head_dim_v
        self.token_embd = r.matrix("token_embd.weight", d, s.n_vocab)
        self.output_norm = r.vector("output_norm.weight", d)
        # tied embeddings: no output.weight, the embedding matrix doubles as the LM head
        self.output = r.matrix("output.weight", d, s.n_vocab) if r.has("output.weight") else self.token_embd
        self.tied_embeddings = not r.has("output.weight")
        self.layers: list[LayerWeights] = []
        for i in range(s.n_layer):
            p = f"blk.{i}."
            lw = LayerWeights(
                attn_norm=r.vector(p + "attn_norm.weight", d),
                wq=r.matrix(p + "attn_q.weight", d, dq),
                wk=r.matrix(p + "attn_k.weight", d, dkv),
                wv=r.matrix(p + "attn_v.weight", d, dv),
                wo=r.matrix(p + "attn_output.weight", s.n_head * s.head_dim_v, d),
                ffn_norm=r.vector(p + "ffn_norm.weight", d),
                w_gate=r.matrix(p + "ffn_gate.weight", d, s.d_ff),
                w_up=r.matrix(p + "ffn_up.weight", d, s.d_ff),
                w_down=r.matrix(p + "ffn_down.weight", s.d_ff, d),
            )
            if s.traits.attn_bias:
                lw.bq, lw.bk, lw.bv = (r.vector(p + f"attn_{x}.bias", n) for x, n in (("q", dq), ("k", dkv), ("v", dv)))
            if s.traits.qk_norm:
                lw.q_norm = r.vector(p + "attn_q_norm.weight", s.head_dim_k)
                lw.k_norm = r.vector(p + "attn_k_norm.weight", s.head_dim_k)
            if s.traits.post_norms:
                lw.post_attn_norm = r.vector(p + "post_attention_norm.weight", d)
                lw.post_ffn_norm = r.vector(p + "post_ffw_norm.weight", d)
            self.layers.append(lw)
        self.activation = ACTIVATIONS[s.traits.activation]
        # one-token steps with numerics "llama.cpp" run as one compiled call when the model allows
        self.fused_decode = unsupported_reason(self) is None
        self._fused: FusedDecodeStep | None = None

    # -- memory -------------------------------------------------------------
    def new_cache(self, n_ctx: int, numerics: Numerics) -> KVCache:
        s = self.spec
        return KVCache(s.n_layer, n_ctx, s.n_kv_head, s.head_dim_k, s.head_dim_v, dtype=numerics.kv_dtype)

    def new_paged_cache(self, n_blocks: int, numerics: Numerics, block_size: int = 16,
                        n_blocks_window: int | None = None) -> PagedKVCache:
        """A :class:`PagedKVCache` for this model: ``n_blocks`` blocks of ``block_size`` cells (the
        sliding-window layers, if any, get their own pool of ``n_blocks_window``), the numerics' cache
        type, and the model's RoPE for ``seq_add``'s K-shift. Run a sequence with
        ``forward(ids, cache.sequence(seq_id), numerics)``."""
        s = self.spec
        sliding = [i for i in range(s.n_layer) if s.is_sliding(i)]

        def k_shift(layer: int, k: np.ndarray, delta: np.ndarray) -> np.ndarray:
            # llama.cpp's build_rope_shift: rope(k, delta) with the layer's RoPE, on the cached keys
            return numerics.rope(k, delta, s.rope_dims, s.rope_base_for(layer), s.traits.rope_mode,
                                 s.rope_freq_scale)

        return PagedKVCache(s.n_layer, s.n_kv_head, s.head_dim_k, s.head_dim_v, n_blocks=n_blocks,
                            block_size=block_size, dtype=numerics.kv_dtype, sliding_layers=sliding,
                            window=s.sliding_window if sliding else None, n_blocks_window=n_blocks_window,
                            k_shift=k_shift)

    # -- forward ------------------------------------------------------------
    def embed(self, ids: np.ndarray) -> np.ndarray:
        """Token embeddings (n_tok, d_model) float32."""
        h = get_rows(self.gguf.tensor_bytes("token_embd.weight"), self.token_embd.qtype, ids)
        if self.spec.traits.embed_scale:
            h = h * np.float32(np.sqrt(self.spec.d_model))
        return h

    def attention_block(self, i: int, x: np.ndarray, cache: KVCache | PagedSequence | list, nm: Numerics,
                        return_weights: bool = False, positions: np.ndarray | None = None):
        """Self-attention of layer ``i`` on normalised input ``x: (n_tok, d_model)``; stores K, V in ``cache``.

        ``cache`` may be a list of ``n_tok`` :class:`PagedSequence` views, one token each, at ``positions
        (n_tok,)`` (:meth:`forward_batch`): the products run on all rows at once, attention per sequence.
        """
        s, lw = self.spec, self.layers[i]
        n_tok = len(x)
        x = nm.share_input(x)  # q, k and v quantise x once (llama.cpp numerics)
        q, k, v = nm.matmul(lw.wq, x), nm.matmul(lw.wk, x), nm.matmul(lw.wv, x)
        if lw.bq is not None:
            q, k, v = q + lw.bq, k + lw.bk, v + lw.bv
        q = q.reshape(n_tok, s.n_head, s.head_dim_k)
        k = k.reshape(n_tok, s.n_kv_head, s.head_dim_k)
        v = v.reshape(n_tok, s.n_kv_head, s.head_dim_v)
        if lw.q_norm is not None:
            q = nm.rms_norm(q, lw.q_norm, s.norm_eps)
            k = nm.rms_norm(k, lw.k_norm, s.norm_eps)
        pos = np.arange(cache.n_past, cache.n_past + n_tok) if positions is None else positions
        base = s.rope_base_for(i)
        q = nm.rope(q, pos, s.rope_dims, base, s.traits.rope_mode, s.rope_freq_scale)
        k = nm.rope(k, pos, s.rope_dims, base, s.traits.rope_mode, s.rope_freq_scale)
        scale = s.attn_scale
        if s.traits.scale_q:  # llama.cpp's Gemma 3 graph: Q * scale after RoPE, softmax scale 1
            q, scale = q * np.float32(scale), 1.0
        window = s.sliding_window if s.is_sliding(i) else None
        if isinstance(cache, PagedBatch) and cache.tables is not None:  # plain sequences, llama.cpp numerics
            store_rows_paged(cache.cache, i, cache.cells, cache.tables, k, v)
            out = attention_rows_paged(q, cache.cache, cache.seq_ids, i, pos, cache.tables, scale, window)
        elif isinstance(cache, list):  # a batch: row r is the next token of sequence cache[r]
            out = np.concatenate([nm.paged_attention(q[r:r + 1], pos[r:r + 1], view.store(i, k[r:r + 1], v[r:r + 1]),
                                                     scale, window=window) for r, view in enumerate(cache)])
        elif isinstance(cache, PagedSequence):  # attention reads the block table
            cells = cache.store(i, k, v)
            out = nm.paged_attention(q, pos, cells, scale, window=window, return_weights=return_weights)
        else:
            keys, values = cache.store(i, k, v)
            out = nm.attention(q, keys, values, cache.n_past, scale, window=window, return_weights=return_weights)
        if return_weights:
            out, weights = out
            return nm.matmul(lw.wo, out), weights
        return nm.matmul(lw.wo, out)

    def feed_forward(self, i: int, x: np.ndarray, nm: Numerics) -> np.ndarray:
        """Gated FFN of layer ``i``: ``W_down (act(W_gate x) * W_up x)``."""
        lw = self.layers[i]
        x = nm.share_input(x)  # gate and up quantise x once (llama.cpp numerics)
        gate, up = nm.matmul(lw.w_gate, x), nm.matmul(lw.w_up, x)
        if nm.swiglu is not None and self.spec.traits.activation == "silu":
            hidden = nm.swiglu(gate, up)
        elif nm.geglu is not None and self.spec.traits.activation == "gelu":
            hidden = nm.geglu(gate, up)
        else:
            hidden = self.activation(gate) * up
        return nm.matmul(lw.w_down, hidden)

    def forward(self, ids, cache: KVCache | PagedSequence, numerics: Numerics, all_logits: bool = False,
                attention_sink: list | None = None, hidden_sink: list | None = None) -> np.ndarray:
        """Run ``ids`` (n_tok,) at positions ``cache.n_past ..``; return logits (see :meth:`_forward`).

        The float numerics multiply through numpy's BLAS between Numba kernels. In a prefill BLAS
        runs single-threaded meanwhile, so the two thread pools do not spin against each other
        (``zigllama profile --numerics float --threads 2``, SmolLM2: 128-token prefill 1.39 s ->
        0.67 s); a one-token step keeps BLAS's threads, which its matrix-vector products use well
        (decode latency p50 30.1 ms; 42.7 ms with the limit).
        """
        if numerics.name == "float" and np.ndim(ids) == 1 and len(ids) > 1:
            with blas_single_threaded():
                return self._forward(ids, cache, numerics, all_logits, attention_sink, hidden_sink)
        return self._forward(ids, cache, numerics, all_logits, attention_sink, hidden_sink)

    def _forward(self, ids, cache: KVCache | PagedSequence, numerics: Numerics, all_logits: bool = False,
                 attention_sink: list | None = None, hidden_sink: list | None = None) -> np.ndarray:
        """Run ``ids`` (n_tok,) at positions ``cache.n_past ..``; return logits.

        Returns (n_tok, n_vocab) float32 if ``all_logits`` else (1, n_vocab) for
        the last position only (all a sampler needs). If ``attention_sink`` is a
        list, each layer's attention weights (n_head, n_tok, n_kv) are appended; if ``hidden_sink``
        is, the final-norm hidden states the logits are computed from (rows as the logits').
        """
        s = self.spec
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or len(ids) == 0:
            raise ModelError("forward needs a non-empty 1-D sequence of token ids")
        if ids.min() < 0 or ids.max() >= s.n_vocab:
            raise ModelError(f"token id out of range [0, {s.n_vocab}): {int(ids.max() if ids.max() >= s.n_vocab else ids.min())}")
        cache.check_room(len(ids))
        if (len(ids) == 1 and numerics.name == "llama.cpp" and self.fused_decode and not all_logits
                and attention_sink is None and hidden_sink is None and cache.dtype == np.float16
                and cache.is_linear()):
            if self._fused is None:
                self._fused = FusedDecodeStep(self)
            return self._fused(int(ids[0]), cache)  # the same bits as the loop below, ~3x faster
        cache.begin(len(ids))  # a paged cache reserves cells (and un-shares blocks) here
        h = self._layers(self.embed(ids), cache, numerics, all_logits, attention_sink)
        cache.advance(len(ids))
        if not all_logits:
            h = h[-1:]
        h = numerics.rms_norm(h, self.output_norm, s.norm_eps)
        if hidden_sink is not None:
            hidden_sink.append(h)
        return numerics.matmul(self.output, h)

    def _layers(self, h, cache, numerics: Numerics, all_rows: bool, attention_sink: list | None = None,
                positions: np.ndarray | None = None) -> np.ndarray:
        """Every block on ``h: (n_tok, d_model)``; returns the hidden states (all rows, or the last one)."""
        s = self.spec
        for i, lw in enumerate(self.layers):
            x = numerics.rms_norm(h, lw.attn_norm, s.norm_eps)
            if attention_sink is not None:
                a, w = self.attention_block(i, x, cache, numerics, return_weights=True)
                attention_sink.append(w)
            else:
                a = self.attention_block(i, x, cache, numerics, positions=positions)
            if i == s.n_layer - 1 and not all_rows:
                # llama.cpp's graph keeps only the output rows (``inp_out_ids``) from here on: the
                # last FFN runs on one token, so its kernels are the one-token ones (e.g. Q6_K's
                # vec_dot, not the tiled matmul it runs for 8+ tokens) -- the same bits as its decode
                a, h = a[-1:], h[-1:]
            if lw.post_attn_norm is not None:
                a = numerics.rms_norm(a, lw.post_attn_norm, s.norm_eps)
            h = h + a
            x = numerics.rms_norm(h, lw.ffn_norm, s.norm_eps)
            f = self.feed_forward(i, x, numerics)
            if lw.post_ffn_norm is not None:
                f = numerics.rms_norm(f, lw.post_ffn_norm, s.norm_eps)
            h = h + f
        return h

    def forward_batch(self, tokens, seqs: list[PagedSequence], numerics: Numerics,
                      hidden_sink: list | None = None) -> np.ndarray:
        """One decode step of several sequences of one paged cache in one pass (continuous batching).

        Row ``r`` is the next token of ``seqs[r]`` (distinct sequences) at that sequence's next
        position. The weight products run on all ``n`` rows at once, as llama.cpp's one ``llama_decode``
        of a batch of ``n`` sequences does (its kernels for ``n`` tokens), and each row attends over
        its own sequence's cells (llama.cpp, one stream per sequence: KQ of one query per stream, the
        decode kernel). Returns logits ``(n, n_vocab)``; equal, bit for bit, to llama.cpp's for the same
        batch (tested with ``numerics="llama.cpp"``).
        """
        s = self.spec
        ids = np.asarray(tokens, dtype=np.int64)
        if ids.ndim != 1 or len(ids) != len(seqs) or len(ids) == 0:
            raise ModelError("forward_batch needs one token id per sequence")
        if len({(id(v.cache), v.seq_id) for v in seqs}) != len(seqs):
            raise ModelError("forward_batch: each sequence may appear once per step")
        if ids.min() < 0 or ids.max() >= s.n_vocab:
            raise ModelError(f"token id out of range [0, {s.n_vocab})")
        cache = seqs[0].cache
        need = np.sum([cache.blocks_needed(v.seq_id, 1) for v in seqs], axis=0)  # an upper bound
        for grp, n in zip(cache.groups, need):
            if n > grp.pool.n_free:
                raise ContextLengthError(f"the batch may need {n} more blocks; {grp.pool.n_free} are free")
        positions = np.array([int(v.begin(1)[0]) for v in seqs], np.int64)
        h = self._layers(self.embed(ids), PagedBatch(seqs, numerics.name == "llama.cpp"), numerics, True,
                         positions=positions)
        for v in seqs:
            v.advance(1)
        h = numerics.rms_norm(h, self.output_norm, s.norm_eps)
        if hidden_sink is not None:  # the final-norm hidden states (n, d_model)
            hidden_sink.append(h)
        return numerics.matmul(self.output, h)

    # -- anatomy ------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part: embeddings, attention, feed-forward, norms, output head."""
        counts = {"embedding": 0, "attention": 0, "feed_forward": 0, "norms": 0, "output": 0}
        for name, info in self.gguf.tensors.items():
            n = info.n_elements
            if name.startswith("token_embd"):
                counts["embedding"] += n
            elif name.startswith("output."):
                counts["output"] += n
            elif "norm" in name:
                counts["norms"] += n
            elif ".attn_" in name:
                counts["attention"] += n
            elif ".ffn_" in name:
                counts["feed_forward"] += n
        return counts
