"""Architecture specs: everything the generic decoder needs, read from GGUF metadata.

One decoder runs every supported family; what differs between families is
data, collected here in :class:`ArchSpec`. Keys follow llama.cpp's naming,
``{arch}.block_count``, ``{arch}.attention.head_count`` and so on; no size is
hard-coded, so any model of a supported family loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..foundation.errors import ModelError


@dataclass(frozen=True)
class FamilyTraits:
    """What a family does differently from llama."""

    rope_mode: str = "norm"  # "norm" (interleaved pairs) or "neox" (split halves)
    activation: str = "silu"  # gate activation of the gated FFN
    embed_scale: bool = False  # multiply embeddings by sqrt(d_model) (Gemma)
    qk_norm: bool = False  # RMSNorm on each query/key head (Gemma 3, Qwen 3)
    post_norms: bool = False  # RMSNorm after attention and after the FFN, before the residual add (Gemma 2/3)
    sliding_window_pattern: int = 0  # every N-th layer is global, the rest use the sliding window (Gemma 3: 6);
    # 0 with a window (Mistral): every layer uses it
    swa_rope_base: float | None = None  # RoPE base of sliding-window layers (Gemma 3: 10000)
    scale_q: bool = False  # llama.cpp scales Q by the attention scale after RoPE, softmax scale 1 (Gemma 3)
    attn_bias: bool = False  # Q/K/V projections carry biases (Qwen 2)


FAMILIES: dict[str, FamilyTraits] = {
    "llama": FamilyTraits(),
    "mistral": FamilyTraits(),
    "qwen2": FamilyTraits(rope_mode="neox", attn_bias=True),
    "qwen3": FamilyTraits(rope_mode="neox", qk_norm=True),
    "gemma3": FamilyTraits(rope_mode="neox", activation="gelu", embed_scale=True, qk_norm=True,
                           post_norms=True, sliding_window_pattern=6, swa_rope_base=10000.0, scale_q=True),
}


@dataclass(frozen=True)
class ArchSpec:
    """Shapes and hyper-parameters of a decoder-only transformer."""

    arch: str
    n_vocab: int
    n_ctx_train: int
    d_model: int
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim_k: int
    head_dim_v: int
    d_ff: int
    norm_eps: float
    rope_base: float
    rope_dims: int
    rope_freq_scale: float
    sliding_window: int | None
    attn_scale: float
    traits: FamilyTraits

    @property
    def n_group(self) -> int:
        """Query heads per key/value head (GQA group size)."""
        return self.n_head // self.n_kv_head

    def is_sliding(self, layer: int) -> bool:
        """Whether ``layer`` attends through the sliding window: none without a window; with one,
        every layer but each ``sliding_window_pattern``-th (Gemma 3: five of six), or every layer
        when the family has no pattern (Mistral v0.1, as transformers' ``MistralForCausalLM``).
        The window of ``W`` positions: the query at ``i`` sees keys ``i - W < j <= i``."""
        if not self.sliding_window:
            return False
        p = self.traits.sliding_window_pattern
        return not p or (layer + 1) % p != 0

    def rope_base_for(self, layer: int) -> float:
        if self.is_sliding(layer) and self.traits.swa_rope_base:
            return self.traits.swa_rope_base
        return self.rope_base


def _get(md: Mapping[str, Any], key: str, default: Any = ..., kind=int) -> Any:
    if key not in md:
        if default is ...:
            raise ModelError(f"missing metadata key {key!r}")
        return default
    value = md[key]
    if hasattr(value, "__len__") and not isinstance(value, str):  # per-layer arrays: all equal or refuse
        values = {kind(v) for v in value}
        if len(values) != 1:
            raise ModelError(f"metadata {key!r} varies per layer ({sorted(values)[:4]}...), not supported")
        value = values.pop()
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ModelError(f"metadata {key!r} = {value!r} is not a {kind.__name__}") from None


def spec_from_metadata(md: Mapping[str, Any], n_vocab_tensor: int | None = None) -> ArchSpec:
    """Build the :class:`ArchSpec` of a GGUF file's metadata, or raise :class:`ModelError`."""
    arch = md.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelError("missing metadata key 'general.architecture'")
    if arch not in FAMILIES:
        raise ModelError(f"unsupported architecture {arch!r}; supported: {', '.join(sorted(FAMILIES))}")
    traits = FAMILIES[arch]
    a = arch + "."
    d_model = _get(md, a + "embedding_length")
    n_head = _get(md, a + "attention.head_count")
    n_kv_head = _get(md, a + "attention.head_count_kv", n_head)
    n_layer = _get(md, a + "block_count")
    for name, v in (("embedding_length", d_model), ("attention.head_count", n_head),
                    ("attention.head_count_kv", n_kv_head), ("block_count", n_layer)):
        if not 0 < v <= 1 << 20:
            raise ModelError(f"metadata {a + name!r} = {v} is out of range")
    if n_head % n_kv_head:
        raise ModelError(f"head_count {n_head} is not a multiple of head_count_kv {n_kv_head}")
    head_dim_k = _get(md, a + "attention.key_length", d_model // n_head)
    head_dim_v = _get(md, a + "attention.value_length", head_dim_k)
    n_vocab = _get(md, a + "vocab_size", 0) or n_vocab_tensor or len(md.get("tokenizer.ggml.tokens", ()))
    if not n_vocab:
        raise ModelError("cannot tell the vocabulary size (no vocab_size, token list or embedding tensor)")
    rope_dims = _get(md, a + "rope.dimension_count", head_dim_k)
    scaling = md.get(a + "rope.scaling.type", "none")
    freq_scale = 1.0
    if scaling == "linear":
        freq_scale = 1.0 / _get(md, a + "rope.scaling.factor", 1.0, float)
    elif scaling not in ("none", None):
        raise ModelError(f"RoPE scaling {scaling!r} is not supported")
    if arch == "gemma3":
        attn_scale = 1.0 / math.sqrt(head_dim_k)
    else:
        attn_scale = 1.0 / math.sqrt(head_dim_k)
    window = _get(md, a + "attention.sliding_window", 0) or None
    return ArchSpec(
        arch=arch,
        n_vocab=n_vocab,
        n_ctx_train=_get(md, a + "context_length", 2048),
        d_model=d_model,
        n_layer=n_layer,
        n_head=n_head,
        n_kv_head=n_kv_head,
        head_dim_k=head_dim_k,
        head_dim_v=head_dim_v,
        d_ff=_get(md, a + "feed_forward_length"),
        norm_eps=_get(md, a + "attention.layer_norm_rms_epsilon", 1e-5, float),
        rope_base=_get(md, a + "rope.freq_base", 10000.0, float),
        rope_dims=rope_dims,
        rope_freq_scale=freq_scale,
        sliding_window=window if (traits.sliding_window_pattern or arch == "mistral") else None,
        attn_scale=attn_scale,
        traits=traits,
    )
