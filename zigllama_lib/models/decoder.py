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
* ``"llama.cpp"``: mirrors llama.cpp's CPU path on quantised files:
  activations quantised to 8 bits per block of 32 before integer dot
  products (with the rounding of llama.cpp's x86 AVX2 quantiser), a float16
  KV cache, float16 attention products. The 8-bit rounding is chaotic: a
  1e-6 relative change of the embeddings moves the final logits by up to
  ~0.5, so neither this path nor llama.cpp is "the" answer to better than
  that; greedy tokens agree with llama.cpp's on the same file except where
  the top two logits are that close (the float path differs from llama.cpp
  on the quantised file by up to ~1.4 in a logit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..foundation.errors import ModelError
from ..foundation.ggml_types import GGMLType
from ..foundation.gguf import GGUFFile
from ..linear_algebra import QMatrix, get_rows, matmul
from ..neural_primitives import ACTIVATIONS, apply_rope, rms_norm
from ..transformer.attention import attention
from ..transformer.kv_cache import KVCache
from .arch import ArchSpec


@dataclass(frozen=True)
class Numerics:
    """How the decoder rounds: see the module docstring."""

    name: str
    matmul_mode: str  # "float" or "q8" (layer 2's matmul modes)
    kv_dtype: type
    f16_attention: bool


NUMERICS = {
    "float": Numerics("float", "float", np.float32, False),
    "llama.cpp": Numerics("llama.cpp", "q8_x86", np.float16, True),
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

    # -- memory -------------------------------------------------------------
    def new_cache(self, n_ctx: int, numerics: Numerics) -> KVCache:
        s = self.spec
        return KVCache(s.n_layer, n_ctx, s.n_kv_head, s.head_dim_k, s.head_dim_v, dtype=numerics.kv_dtype)

    # -- forward ------------------------------------------------------------
    def embed(self, ids: np.ndarray) -> np.ndarray:
        """Token embeddings (n_tok, d_model) float32."""
        h = get_rows(self.gguf.tensor_bytes("token_embd.weight"), self.token_embd.qtype, ids)
        if self.spec.traits.embed_scale:
            h = h * np.float32(np.sqrt(self.spec.d_model))
        return h

    def attention_block(self, i: int, x: np.ndarray, cache: KVCache, nm: Numerics,
                        return_weights: bool = False):
        """Self-attention of layer ``i`` on normalised input ``x: (n_tok, d_model)``; stores K, V in ``cache``."""
        s, lw = self.spec, self.layers[i]
        n_tok = len(x)
        mode = nm.matmul_mode
        q = matmul(lw.wq, x, mode)
        k = matmul(lw.wk, x, mode)
        v = matmul(lw.wv, x, mode)
        if lw.bq is not None:
            q, k, v = q + lw.bq, k + lw.bk, v + lw.bv
        q = q.reshape(n_tok, s.n_head, s.head_dim_k)
        k = k.reshape(n_tok, s.n_kv_head, s.head_dim_k)
        v = v.reshape(n_tok, s.n_kv_head, s.head_dim_v)
        if lw.q_norm is not None:
            q = rms_norm(q, lw.q_norm, s.norm_eps)
            k = rms_norm(k, lw.k_norm, s.norm_eps)
        pos = np.arange(cache.n_past, cache.n_past + n_tok)
        base = s.rope_base_for(i)
        q = apply_rope(q, pos, s.rope_dims, base, s.traits.rope_mode, s.rope_freq_scale)
        k = apply_rope(k, pos, s.rope_dims, base, s.traits.rope_mode, s.rope_freq_scale)
        keys, values = cache.store(i, k, v)
        window = s.sliding_window if s.is_sliding(i) else None
        out = attention(q, keys, values, cache.n_past, s.attn_scale, window=window,
                        f16_products=nm.f16_attention, return_weights=return_weights)
        if return_weights:
            out, weights = out
            return matmul(lw.wo, out, mode), weights
        return matmul(lw.wo, out, mode)

    def feed_forward(self, i: int, x: np.ndarray, nm: Numerics) -> np.ndarray:
        """Gated FFN of layer ``i``: ``W_down (act(W_gate x) * W_up x)``."""
        lw = self.layers[i]
        gate = matmul(lw.w_gate, x, nm.matmul_mode)
        up = matmul(lw.w_up, x, nm.matmul_mode)
        return matmul(lw.w_down, self.activation(gate) * up, nm.matmul_mode)

    def forward(self, ids, cache: KVCache, numerics: Numerics, all_logits: bool = False,
                attention_sink: list | None = None) -> np.ndarray:
        """Run ``ids`` (n_tok,) at positions ``cache.n_past ..``; return logits.

        Returns (n_tok, n_vocab) float32 if ``all_logits`` else (1, n_vocab) for
        the last position only (all a sampler needs). If ``attention_sink`` is a
        list, each layer's attention weights (n_head, n_tok, n_kv) are appended.
        """
        s = self.spec
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or len(ids) == 0:
            raise ModelError("forward needs a non-empty 1-D sequence of token ids")
        if ids.min() < 0 or ids.max() >= s.n_vocab:
            raise ModelError(f"token id out of range [0, {s.n_vocab}): {int(ids.max() if ids.max() >= s.n_vocab else ids.min())}")
        cache.check_room(len(ids))
        h = self.embed(ids)
        for i, lw in enumerate(self.layers):
            x = rms_norm(h, lw.attn_norm, s.norm_eps)
            if attention_sink is not None:
                a, w = self.attention_block(i, x, cache, numerics, return_weights=True)
                attention_sink.append(w)
            else:
                a = self.attention_block(i, x, cache, numerics)
            if lw.post_attn_norm is not None:
                a = rms_norm(a, lw.post_attn_norm, s.norm_eps)
            h = h + a
            x = rms_norm(h, lw.ffn_norm, s.norm_eps)
            f = self.feed_forward(i, x, numerics)
            if lw.post_ffn_norm is not None:
                f = rms_norm(f, lw.post_ffn_norm, s.norm_eps)
            h = h + f
        cache.advance(len(ids))
        if not all_logits:
            h = h[-1:]
        return matmul(self.output, rms_norm(h, self.output_norm, s.norm_eps), numerics.matmul_mode)

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
