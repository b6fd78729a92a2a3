# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Layer 4 - The transformer block: attention and the KV cache
#
# Layers 1 to 3 gave us the weights, the matrix products and the small
# functions (RMSNorm, RoPE, SiLU). Layer 4, `zigllama_lib.transformer`, puts
# them together into the one operation that lets a token look at the tokens
# before it: **attention**. Stack attention with a feed-forward network and two
# residual connections and you have a **transformer block**; SmolLM2-135M is
# thirty of them in a row.
#
# **Objectives.** After this notebook you can
#
# 1. write scaled dot-product attention with a causal mask, and say why it is
#    scaled by $1/\sqrt{d}$;
# 2. explain multi-head and grouped-query attention (GQA), and which query
#    heads of SmolLM2 share which key/value head;
# 3. record and read the attention weights of the real model, and find heads
#    with a recognisable job;
# 4. recompute one layer's attention of SmolLM2 by hand from its weights;
# 5. write a whole transformer block (pre-norm, residual) and check that
#    thirty of them give the model's logits;
# 6. say what the KV cache stores, check that it changes no number, and
#    measure what it saves.
#
# The notebook runs in about half a minute on a laptop CPU once the model is
# in the cache and Numba has compiled its kernels.

# %%
# Versions: numbers in this notebook were produced with these.
import math
import platform
import time

import matplotlib
import matplotlib.pyplot as plt
import numba
import numpy as np

import zigllama_lib as zl
from zigllama_lib.foundation.threads import get_threads, set_threads
from zigllama_lib.linear_algebra import dequantize
from zigllama_lib.models.decoder import numerics_named
from zigllama_lib.neural_primitives import rms_norm
from zigllama_lib.transformer.attention import attention, causal_mask, softmax
from zigllama_lib.viz.attention import (attention_view, head_statistics, plot_attention,
                                        plot_attention_heads, plot_head_summary)
from zigllama_lib.viz.tokenizer import piece_label

print(f"python {platform.python_version()}, numpy {np.__version__}, "
      f"numba {numba.__version__}, matplotlib {matplotlib.__version__}, "
      f"zigllama_lib {zl.__version__}")

# %% [markdown]
# ## 1. Scaled dot-product attention
#
# Each token $t$ of a sequence arrives at an attention layer as three vectors
# of length $d$: a **query** $q_t$ (what it is looking for), a **key** $k_t$
# (what it offers to be found by) and a **value** $v_t$ (what it hands over
# when found). Stack them as rows of $Q$, $K$, $V$. Attention scores every
# query against every key, turns each row of scores into probabilities, and
# returns the matching average of the values:
#
# $$
# \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\left(\frac{Q K^\top}{\sqrt{d}} + M\right) V,
# \qquad
# M_{ts} = \begin{cases} 0 & \text{if } s \le t, \\ -\infty & \text{if } s > t. \end{cases}
# $$
#
# The softmax acts on each row: $A_{ts} = e^{x_{ts}} / \sum_{s'} e^{x_{ts'}}$.
# The **causal mask** $M$ hides the future: $e^{-\infty} = 0$, so token $t$
# gives weight $0$ to every later token, and row $t$ of $A$ is a probability
# distribution over the tokens $0, \dots, t$. Output $t$ is
# $\sum_{s \le t} A_{ts} v_s$.
#
# Why divide by $\sqrt{d}$? If the entries of $q$ and $k$ are independent
# with mean 0 and variance 1, then $q \cdot k$ is a sum of $d$ such products
# and has variance $d$. Without the scale, large $d$ would give scores of
# several units, a softmax close to one-hot, and vanishing gradients in
# training. A quick check with $d = 64$, the head size of SmolLM2:

# %%
rng = np.random.default_rng(0)
d = 64
q_rand = rng.standard_normal((10_000, d))
k_rand = rng.standard_normal((10_000, d))
dots = (q_rand * k_rand).sum(axis=1)
print(f"std of q.k: {dots.std():.2f} (sqrt(d) = {math.sqrt(d):.0f}); "
      f"std of q.k / sqrt(d): {(dots / math.sqrt(d)).std():.2f}")

# %% [markdown]
# ### A naive attention, one head, with loops
#
# Written the way the formula reads, one query at a time. It also handles
# queries that come *after* some earlier tokens ($n_\text{kv} > n_\text{tok}$:
# the last $n_\text{tok}$ of $n_\text{kv}$ positions), which is what decoding
# with a cache needs in section 6.

# %%
def naive_attention_head(q, k, v):
    """One head. q: (n_tok, d); k, v: (n_kv, d). Query t sits at position n_kv - n_tok + t.

    Returns the outputs (n_tok, d_v) and the weights (n_tok, n_kv).
    """
    n_tok, d = q.shape
    n_kv = k.shape[0]
    out = np.zeros((n_tok, v.shape[1]))
    weights = np.zeros((n_tok, n_kv))
    for t in range(n_tok):
        pos = n_kv - n_tok + t                                   # this query's position
        scores = [float(q[t] @ k[s]) / math.sqrt(d) for s in range(pos + 1)]  # keys 0..pos only
        top = max(scores)
        e = [math.exp(x - top) for x in scores]                  # subtract the max: no overflow
        total = sum(e)
        for s in range(pos + 1):
            weights[t, s] = e[s] / total
            out[t] += weights[t, s] * v[s]
    return out, weights


q_toy, k_toy, v_toy = (rng.standard_normal((5, 4)) for _ in range(3))
out_toy, w_toy = naive_attention_head(q_toy, k_toy, v_toy)
print("weights (rows: queries, columns: keys):")
print(np.round(w_toy, 3))
print("row sums:", w_toy.sum(axis=1))

# %% [markdown]
# Every row sums to 1, and everything above the diagonal is 0. The same thing
# without loops: one matrix product for all the scores, the additive mask of
# the library (`causal_mask(n_tok, n_kv, n_past)`: 0 where a key is visible,
# $-\infty$ where it is not), a row-wise softmax and a second product.

# %%
mask = causal_mask(5, 5, n_past=0)
print(mask)
scores_toy = q_toy @ k_toy.T / math.sqrt(4) + mask
w_mat = np.exp(scores_toy - scores_toy.max(axis=1, keepdims=True))
w_mat /= w_mat.sum(axis=1, keepdims=True)
np.testing.assert_allclose(w_mat, w_toy, rtol=1e-12)
np.testing.assert_allclose(w_mat @ v_toy, out_toy, rtol=1e-12)
print("loops and matrices agree")

# %% [markdown]
# ## 2. Many heads, fewer keys: multi-head and grouped-query attention
#
# One head can only do one kind of looking. **Multi-head attention** runs
# $H$ heads side by side: the query projection gives $H$ queries of length
# $d$ per token, each head attends on its own, and the $H$ outputs are
# concatenated and mixed back by an output matrix $W_o$.
#
# Keys and values are what a model must keep for every past token (section
# 6), so recent models compute fewer of them: in **grouped-query attention**
# (GQA) there are $H_\text{kv} < H$ key/value heads, and each is shared by a
# group of $g = H / H_\text{kv}$ query heads. Query head $h$ reads key/value
# head
#
# $$
# \mathrm{kv}(h) = \lfloor h / g \rfloor .
# $$
#
# $H_\text{kv} = H$ is ordinary multi-head attention, $H_\text{kv} = 1$ is
# multi-query attention. Let us load SmolLM2 and read its numbers from
# `model.spec` (which reads them from the GGUF metadata).

# %%
model = zl.load("smollm2-135m-instruct")
spec = model.spec
group = spec.n_head // spec.n_kv_head
print(f"n_head = {spec.n_head}, n_kv_head = {spec.n_kv_head}, head_dim = {spec.head_dim_k}, "
      f"group g = {group}, d_model = {spec.d_model}, n_layer = {spec.n_layer}")
for kv in range(spec.n_kv_head):
    print(f"  KV head {kv} is shared by query heads {[h for h in range(spec.n_head) if h // group == kv]}")
print(f"W_q: {spec.n_head * spec.head_dim_k} x {spec.d_model}, "
      f"W_k and W_v: {spec.n_kv_head * spec.head_dim_k} x {spec.d_model} each "
      f"({spec.n_head // spec.n_kv_head} times smaller than without GQA)")

# %% [markdown]
# A naive GQA is a loop over the query heads around the one-head function.
# The library's `attention(q, k, v, n_past, scale)` (in
# `zigllama_lib/transformer/attention.py`) takes all heads at once: `q` of
# shape `(n_tok, n_head, d)`, `k` and `v` of shape `(n_kv, n_kv_head, d)`,
# and returns `(n_tok, n_head * d)`, the heads concatenated. We try it on
# SmolLM2's shapes with random numbers, 5 new tokens after 3 earlier ones.

# %%
def naive_gqa(q, k, v):
    """q: (n_tok, n_head, d); k, v: (n_kv, n_kv_head, d) -> outputs (n_tok, n_head*d), weights (n_head, n_tok, n_kv)."""
    n_head, n_kv_head = q.shape[1], k.shape[1]
    g = n_head // n_kv_head
    outs, weights = [], []
    for h in range(n_head):
        o, w = naive_attention_head(q[:, h], k[:, h // g], v[:, h // g])
        outs.append(o)
        weights.append(w)
    return np.concatenate(outs, axis=1), np.stack(weights)


n_past, n_new, hd = 3, 5, spec.head_dim_k
q_r = rng.standard_normal((n_new, spec.n_head, hd)).astype(np.float32)
k_r = rng.standard_normal((n_past + n_new, spec.n_kv_head, hd)).astype(np.float32)
v_r = rng.standard_normal((n_past + n_new, spec.n_kv_head, hd)).astype(np.float32)

out_naive, w_naive = naive_gqa(q_r, k_r, v_r)
out_lib, w_lib = attention(q_r, k_r, v_r, n_past=n_past, scale=1 / math.sqrt(hd), return_weights=True)
print("library:", out_lib.shape, w_lib.shape, " naive:", out_naive.shape, w_naive.shape)
np.testing.assert_allclose(w_lib, w_naive, rtol=1e-5, atol=1e-6)
np.testing.assert_allclose(out_lib, out_naive, rtol=1e-4, atol=1e-5)
print("naive GQA == library attention")

# %% [markdown]
# The library does the same with two batched matrix products: it reshapes the
# queries to `(n_kv_head, g * n_tok, d)` so that each key/value head is
# multiplied once by all the queries of its group.
#
# ## 3. Attention in the real model
#
# `model.decoder.forward(ids, cache, numerics, attention_sink=sink)` runs the
# thirty blocks and, when `sink` is a list, appends each layer's attention
# weights, an array `(n_head, n_tok, n_kv)`. We use the exact `"float"`
# numerics and a fresh cache (section 6) sized for the prompt. The prompt asks
# a question the model can answer by analogy with what came before.

# %%
prompt = "The capital of France is Paris. The capital of Italy is"
ids = model.tokenizer.encode(prompt, add_special=True)
tokens = [piece_label(model.tokenizer.token_bytes(i)) for i in ids]   # ␣ marks a leading space
print(len(ids), "tokens:", tokens)

float_nm = numerics_named("float")
sink = []
cache = model.decoder.new_cache(len(ids), float_nm)
logits = model.decoder.forward(ids, cache, float_nm, attention_sink=sink)
weights = np.stack(sink)                                  # (n_layer, n_head, n_tok, n_tok)
print("weights:", weights.shape)
print("next token:", repr(model.tokenizer.decode([int(logits[-1].argmax())])))

# %% [markdown]
# Every one of the $30 \times 9$ maps must be causal: rows summing to 1,
# nothing above the diagonal.

# %%
n = len(ids)
row_sums = weights.sum(axis=-1, dtype=np.float64)
above = np.triu(np.ones((n, n), dtype=bool), k=1)
print(f"row sums in [{row_sums.min():.6f}, {row_sums.max():.6f}], "
      f"largest weight above the diagonal: {weights[..., above].max()}")
np.testing.assert_allclose(row_sums, 1.0, atol=1e-5)
assert np.all(weights[..., above] == 0.0)

# %% [markdown]
# To answer " Rome", the last token " is" needs the pattern of the first
# sentence: after "capital of X is" came the capital. Which head, at the
# last position, looks hardest at " Paris"?

# %%
paris = tokens.index("␣Paris")
on_paris = weights[:, :, -1, paris]                     # (n_layer, n_head): last query -> " Paris"
layer_p, head_p = np.unravel_index(int(on_paris.argmax()), on_paris.shape)
print(f"layer {layer_p}, head {head_p}: the last token puts {on_paris[layer_p, head_p]:.2f} "
      f"of its attention on ' Paris' (mean over all heads: {on_paris.mean():.2f})")

fig = plot_attention(weights, tokens, layer=int(layer_p), head=int(head_p))
plt.show()

# %% [markdown]
# Rows are the queries (the token being computed), columns the keys; the
# colour scale is the square root of the weight, so that small weights stay
# visible. The bottom row is the one we asked about. The same layer, all
# heads at once: heads of one layer do different jobs.

# %%
fig = plot_attention_heads(weights, tokens, layer=int(layer_p))
plt.show()

# %% [markdown]
# Across most maps, the first column is bright. Many heads park most of
# their weight on the first token whenever they have nothing better to do:
# the softmax must put its mass somewhere, and the first token, visible to
# every query, serves as an **attention sink** (Xiao et al., 2023). The
# statistic below is, for every layer and head, the mean weight a query at
# position $\ge 1$ gives to token 0 (`head_statistics` in
# `zigllama_lib.viz.attention` also measures the weight on the previous
# token and the entropy of the rows).

# %%
first = head_statistics(weights)["first"]               # (n_layer, n_head)
print(f"mean weight on the first token, over all heads: {first.mean():.2f}; "
      f"heads above 0.9: {(first > 0.9).sum()} of {first.size}")
fig = plot_head_summary(weights, "first")
plt.show()

# %% [markdown]
# The widget: pick a layer and a head, the mean over heads, or all heads. In
# the book it shows its first picture; in JupyterLab the controls redraw it.
# Try your own prompt with `attention_view(model, "...")`.

# %%
attention_view(model, prompt, layer=int(layer_p), head="mean")

# %% [markdown]
# ## 4. One real layer, by hand
#
# The attention of block $\ell$ (SmolLM2 has no biases and no norms on $q$
# and $k$) takes the residual stream $h$, one row of $d_\text{model}$ per
# token, and computes
#
# $$
# x = \mathrm{RMSNorm}(h) \odot \gamma, \qquad
# Q = x W_q^\top,\quad K = x W_k^\top,\quad V = x W_v^\top,
# $$
#
# splits $Q$ into 9 heads and $K$, $V$ into 3 heads of 64, rotates every
# query and key by its position with RoPE (layer 3), runs grouped-query
# attention and multiplies the concatenated heads by $W_o^\top$. RoPE turns
# coordinate pair $(x_{2i}, x_{2i+1})$ of the vector at position $m$ by the
# angle $m\,\theta_i$ with $\theta_i = b^{-2i/d}$ (interleaved pairs, as
# llama.cpp stores Llama weights in GGUF):
#
# $$
# \begin{pmatrix} x'_{2i} \\ x'_{2i+1} \end{pmatrix} =
# \begin{pmatrix} \cos m\theta_i & -\sin m\theta_i \\ \sin m\theta_i & \cos m\theta_i \end{pmatrix}
# \begin{pmatrix} x_{2i} \\ x_{2i+1} \end{pmatrix}.
# $$
#
# We do all of it for layer 0 in float64 numpy, from the dequantised
# weights (layer 2's `dequantize` of the raw GGUF rows), and compare with the
# weights recorded above.

# %%
gguf, lw0 = model.gguf, model.decoder.layers[0]
emb_type = gguf.tensors["token_embd.weight"].ggml_type
h0 = dequantize(gguf.tensor_bytes("token_embd.weight")[ids], emb_type).astype(np.float64)  # (n_tok, 576)
W = {name: dequantize(getattr(lw0, name).raw, getattr(lw0, name).qtype).astype(np.float64)
     for name in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")}
print({name: w.shape for name, w in W.items()})
print(f"RoPE: base b = {spec.rope_base:g}, mode {spec.traits.rope_mode!r}, rotating {spec.rope_dims} of "
      f"{spec.head_dim_k} dims; norm eps = {spec.norm_eps:.0e}; "
      f"biases: {spec.traits.attn_bias}, q/k norms: {spec.traits.qk_norm}")


def rms_norm_by_hand(h, gamma, eps=spec.norm_eps):
    return h / np.sqrt((h * h).mean(axis=-1, keepdims=True) + eps) * gamma


def rope_by_hand(x, base=spec.rope_base):
    """x: (n_tok, n_heads, d) at positions 0..n_tok-1; interleaved pairs."""
    n_tok, _, dim = x.shape
    angle = np.arange(n_tok)[:, None] * base ** (-2.0 * np.arange(dim // 2) / dim)   # (n_tok, d/2)
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


x0 = rms_norm_by_hand(h0, lw0.attn_norm)
q0 = rope_by_hand((x0 @ W["wq"].T).reshape(n, spec.n_head, hd))       # (n_tok, 9, 64)
k0 = rope_by_hand((x0 @ W["wk"].T).reshape(n, spec.n_kv_head, hd))    # (n_tok, 3, 64)
v0 = (x0 @ W["wv"].T).reshape(n, spec.n_kv_head, hd)                  # (n_tok, 3, 64)

heads, w0 = [], []
for h in range(spec.n_head):
    scores = q0[:, h] @ k0[:, h // group].T / math.sqrt(hd)           # (n_tok, n_tok)
    scores[above] = -np.inf
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    a = e / e.sum(axis=1, keepdims=True)
    w0.append(a)
    heads.append(a @ v0[:, h // group])
w0 = np.stack(w0)                                                     # (9, n_tok, n_tok)
attn0 = np.concatenate(heads, axis=1) @ W["wo"].T                     # (n_tok, 576)

print(f"largest difference from the recorded layer-0 weights: {np.abs(w0 - weights[0]).max():.1e}")
np.testing.assert_allclose(w0, weights[0], atol=1e-5)

# %% [markdown]
# The library's attention block, `decoder.attention_block(layer, x, cache,
# numerics)`, takes the normalised input and returns the block's output after
# $W_o$; it also writes this layer's keys and values into the cache. Same
# numbers, float32 against our float64:

# %%
h0_lib = model.decoder.embed(np.array(ids))                           # (n_tok, 576) float32
x0_lib = rms_norm(h0_lib, lw0.attn_norm, spec.norm_eps)
attn0_lib = model.decoder.attention_block(0, x0_lib, model.decoder.new_cache(n, float_nm), float_nm)
print(f"largest |output| {np.abs(attn0).max():.2f}, largest difference {np.abs(attn0_lib - attn0).max():.1e}")
np.testing.assert_allclose(attn0_lib, attn0, rtol=1e-4, atol=1e-5)

# %% [markdown]
# ## 5. The transformer block
#
# Attention is half a block. The other half is a gated feed-forward network
# applied to each token on its own,
# $\mathrm{FFN}(x) = W_\text{down}\left(\mathrm{SiLU}(W_\text{gate} x) \odot W_\text{up} x\right)$.
# Both halves read a normalised copy of the **residual stream** $h$ and add
# their result back to it (the *pre-norm* arrangement of Llama and most
# current models):
#
# $$
# h \leftarrow h + \mathrm{Attn}\left(\mathrm{RMSNorm}(h)\right), \qquad
# h \leftarrow h + \mathrm{FFN}\left(\mathrm{RMSNorm}(h)\right).
# $$
#
# Because each block only *adds* to $h$, the stream carries the token's
# embedding through all the layers, and every block reads and writes a shared
# working memory. Block 0, finished by hand:

# %%
h1 = h0 + attn0
x1 = rms_norm_by_hand(h1, lw0.ffn_norm)
gate = x1 @ W["w_gate"].T                                             # (n_tok, 1536)
ffn0 = (gate / (1 + np.exp(-gate)) * (x1 @ W["w_up"].T)) @ W["w_down"].T
block0 = h1 + ffn0                                                    # (n_tok, 576)

h_lib = h0_lib + attn0_lib
h_lib = h_lib + model.decoder.feed_forward(0, rms_norm(h_lib, lw0.ffn_norm, spec.norm_eps), float_nm)
print(f"block 0: largest |h| {np.abs(block0).max():.1f}, largest difference {np.abs(h_lib - block0).max():.1e}")
np.testing.assert_allclose(h_lib, block0, rtol=1e-4, atol=1e-4)

# %% [markdown]
# The whole model is that block thirty times, then a final RMSNorm and the
# output matrix (here the embedding matrix again: SmolLM2 ties them). Written
# out with the library's two halves, it gives exactly `model.logits`. On the
# way we keep the length (L2 norm) of every token's stream and of what each
# half adds to it.

# %%
dec = model.decoder
cache = dec.new_cache(n, float_nm)
h = dec.embed(np.array(ids))
norms = {"stream": [], "attention": [], "ffn": []}          # per block: (n_tok,) L2 norms
for i, lw in enumerate(dec.layers):
    a = dec.attention_block(i, rms_norm(h, lw.attn_norm, spec.norm_eps), cache, float_nm)
    h = h + a
    f = dec.feed_forward(i, rms_norm(h, lw.ffn_norm, spec.norm_eps), float_nm)
    h = h + f
    for key, value in zip(norms, (h, a, f)):
        norms[key].append(np.linalg.norm(value, axis=1))
    if i == 15:
        h_mid = h.copy()                                     # kept for the text below
cache.advance(n)
norms = {key: np.array(value) for key, value in norms.items()}  # (n_layer, n_tok) each
logits_by_blocks = float_nm.matmul(dec.output, rms_norm(h, dec.output_norm, spec.norm_eps))

reference = model.logits(ids)                                         # (n_tok, n_vocab)
print(f"largest difference from model.logits: {np.abs(logits_by_blocks - reference).max():.1e}")
np.testing.assert_allclose(logits_by_blocks, reference, rtol=1e-5, atol=1e-5)

fig, ax = plt.subplots(figsize=(7, 3))
blocks = np.arange(spec.n_layer)
ax.plot(blocks, norms["stream"][:, 0], marker=".", label=f"stream, first token {tokens[0]!r}")
ax.plot(blocks, np.median(norms["stream"][:, 1:], axis=1), marker=".", label="stream, other tokens (median)")
ax.plot(blocks, np.median(norms["attention"][:, 1:], axis=1), label="attention adds (median)")
ax.plot(blocks, np.median(norms["ffn"][:, 1:], axis=1), label="FFN adds (median)")
ax.set_yscale("log")
ax.set_xlabel("block")
ax.set_ylabel("L2 norm")
ax.set_title("The residual stream after each block")
ax.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# The other tokens' streams grow steadily as the blocks add to them. The
# first token is different: a few blocks write one enormous coordinate into
# it, a "massive activation" (Sun et al., 2024) that the literature links to
# the attention sink of section 3.

# %%
big = int(np.abs(h_mid[0]).argmax())
print(f"after block 15: first token's coordinate {big} is {h_mid[0, big]:.0f}; "
      f"its other coordinates are at most {np.abs(np.delete(h_mid[0], big)).max():.0f}, "
      f"the other tokens' largest coordinate is {np.abs(h_mid[1:]).max():.0f}")

# %% [markdown]
# ## 6. The KV cache
#
# To generate, a model computes the logits of the last position, picks a
# token, appends it and goes again. Done naively, step $t$ runs the whole
# sequence of $t$ tokens through all the blocks. But a token's key and value
# in a layer depend only on that token and the ones before it (the mask), so
# they never change once computed. The **KV cache** keeps them: each step
# computes $q$, $k$, $v$ for the new token only, appends $k$ and $v$ to the
# cache, and attends over all cached keys. That is why `attention` takes
# `n_past`: one query at position `n_past`, `n_past + 1` keys.
#
# `decoder.new_cache(n_ctx, numerics)` preallocates a `KVCache` with arrays
# `k` and `v` of shape `(n_layer, n_ctx, n_kv_head, head_dim)`;
# `cache.n_past` counts the filled positions, and every `forward` appends to
# it. First, correctness: feeding the prompt one token at a time must give the
# logits of the whole prompt at once.

# %%
cache = dec.new_cache(n, float_nm)
one_at_a_time = np.concatenate([dec.forward([i], cache, float_nm) for i in ids])   # (n_tok, n_vocab)
print("n_past after the loop:", cache.n_past)
print(f"largest difference from the full pass: {np.abs(one_at_a_time - reference).max():.1e} "
      f"(logits up to {np.abs(reference).max():.0f})")
np.testing.assert_allclose(one_at_a_time, reference, rtol=1e-4, atol=1e-3)

# %% [markdown]
# The differences are float32 rounding: the one-token products sum in a
# different order. Now generation: prefill the prompt once, then greedy steps
# of one token each with the cache, checked against recomputing every logit
# of the grown sequence from scratch (no cache).

# %%
cache = dec.new_cache(n + 4, float_nm)
step_logits = dec.forward(ids, cache, float_nm)[-1]     # prefill: the whole prompt, one pass
generated = list(ids)
for _ in range(4):
    generated.append(int(step_logits.argmax()))
    recomputed = model.logits(generated)[-1]            # no cache: the whole sequence again
    step_logits = dec.forward(generated[-1:], cache, float_nm)[-1]   # cache: one token
    np.testing.assert_allclose(step_logits, recomputed, rtol=1e-4, atol=1e-3)
print(repr(model.tokenizer.decode(generated[n:])), "- cached and recomputed logits agree at every step")

# %% [markdown]
# ### What the cache saves
#
# Count the floating-point operations (a multiply and an add are 2) for one
# new token when $L$ tokens came before. The weight products cost
# $2 \times$ (number of weights) per token; attention costs
# $2 \cdot 2 \cdot H \cdot d$ per visible key (scores and weighted sum). With
# the cache, one token goes through the weights and attends to $L + 1$ keys.
# Without it, all $L + 1$ tokens go through the weights and attend to
# $1, 2, \dots, L + 1$ keys. So a cached step grows slowly with $L$ (only the
# attention term), and an uncached one grows like $L$, its attention like
# $L^2$. Over a whole generation of $T$ tokens: $O(T)$ against $O(T^2)$.

# %%
s = spec
weights_per_layer = (s.d_model * s.n_head * s.head_dim_k + 2 * s.d_model * s.n_kv_head * s.head_dim_k
                     + s.n_head * s.head_dim_v * s.d_model + 3 * s.d_model * s.d_ff)
head_flops = 2 * s.d_model * s.n_vocab                  # the output matrix, last position only


def attention_flops(n_keys):
    return 2 * 2 * s.n_head * s.head_dim_k * n_keys


def flops_with_cache(L):
    return s.n_layer * (2 * weights_per_layer + attention_flops(L + 1)) + head_flops


def flops_without_cache(L):
    attn = sum(attention_flops(j) for j in range(1, L + 2))
    return s.n_layer * (2 * weights_per_layer * (L + 1) + attn) + head_flops


for L in (12, 512, 2047):
    print(f"L = {L:4d}: with cache {flops_with_cache(L) / 1e9:6.2f} GFLOP, "
          f"without {flops_without_cache(L) / 1e9:8.1f} GFLOP per new token")

# %% [markdown]
# And measured on this machine. We prefill 48 tokens once; to time a cached
# step after $L$ tokens we set `cache.n_past = L` (the next `forward`
# overwrites position $L$ with the same key and value), and time a full pass
# over $L + 1$ tokens for the uncached step. Each time is the best of a few
# runs, on one thread: other programs on the machine disturb one thread less
# than threads that wait for each other.

# %%
capitals = {"France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo", "Peru": "Lima",
            "Egypt": "Cairo", "Kenya": "Nairobi", "Canada": "Ottawa", "Norway": "Oslo", "Chile": "Santiago"}
text = " ".join(f"The capital of {country} is {city}." for country, city in capitals.items())
lengths = [8, 16, 32, 48]
long_ids = model.tokenizer.encode(text, add_special=True)[: max(lengths) + 1]
assert len(long_ids) == max(lengths) + 1
cache = dec.new_cache(len(long_ids), float_nm)
dec.forward(long_ids[:-1], cache, float_nm)             # prefill 48 tokens


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def cached_step(L):
    cache.n_past = L                                    # rewind: positions 0..L-1 are cached
    dec.forward(long_ids[L:L + 1], cache, float_nm)


def uncached_step(L):
    dec.forward(long_ids[:L + 1], dec.new_cache(L + 1, float_nm), float_nm)


threads = get_threads()
set_threads(1)
try:
    t_cached = [best_time(lambda: cached_step(L), 3) for L in lengths]
    t_uncached = [best_time(lambda: uncached_step(L), 2) for L in lengths]
finally:
    set_threads(threads)
for L, tc, tu in zip(lengths, t_cached, t_uncached):
    print(f"L = {L:3d}: with cache {1e3 * tc:6.1f} ms, without {1e3 * tu:6.1f} ms")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7, 3))
Ls = np.arange(1, 2048, 16)
ax1.plot(Ls, [flops_with_cache(L) / 1e9 for L in Ls], label="with cache")
ax1.plot(Ls, [flops_without_cache(L) / 1e9 for L in Ls], label="without")
ax1.set_yscale("log")
ax1.set_xlabel("tokens before, L")
ax1.set_ylabel("GFLOP for one token")
ax1.set_title("Counted", fontsize=10)
ax1.legend(fontsize=8)
ax2.plot(lengths, 1e3 * np.array(t_cached), marker="o", label="with cache")
ax2.plot(lengths, 1e3 * np.array(t_uncached), marker="o", label="without")
ax2.set_xlabel("tokens before, L")
ax2.set_ylabel("ms for one token")
ax2.set_title("Measured (one thread, best of a few)", fontsize=10)
ax2.set_ylim(bottom=0)
ax2.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The cache costs memory instead: two arrays (keys and values) per layer,
# one row per position,
#
# $$
# \text{bytes} = 2 \cdot n_\text{layer} \cdot n_\text{ctx} \cdot H_\text{kv} \cdot d \cdot \text{bytes per number}.
# $$
#
# GQA shrinks it by the group size $g$. `zigllama_lib` keeps float32 keys and
# values in the `"float"` numerics; llama.cpp's default, reproduced by the
# `"llama.cpp"` numerics, stores float16.

# %%
for name in ("float", "llama.cpp"):
    kv = dec.new_cache(2048, numerics_named(name))
    print(f"{name:9s}: k {kv.k.shape} {kv.dtype}, {kv.nbytes / 1e6:.1f} MB for 2048 positions")

# %% [markdown]
# ## 7. A paged KV cache: blocks, block tables, shared prefixes
#
# A server holds many sequences at once. Contiguous caches reserve `n_ctx`
# rows per sequence up front, most of them never used, and a system prompt
# common to all of them is stored once per sequence. A **paged** cache
# (vLLM's PagedAttention; `zigllama_lib.transformer.paged_kv_cache`) cuts the
# memory into **blocks** of $B$ token cells (every layer's keys and values of
# those cells), kept in one pool:
#
# $$
# \text{bytes per block} = B \cdot 2 \cdot n_\text{layer} \cdot H_\text{kv} \cdot d \cdot \text{bytes per number},
# \qquad \text{blocks of a sequence of } n \text{ tokens} = \lceil n / B \rceil .
# $$
#
# Each sequence has a **block table**: its cell $c$ lives in block
# `table[c // B]`, row `c % B`. Attention reads the keys through the table,
# in the cells' order, so the floats are the contiguous cache's: under the
# `"llama.cpp"` numerics the logits are identical, bit for bit.
#
# `cache.fork(src, dst)` gives `dst` a copy of the table and adds one to each
# block's **reference count**: the prompt is stored once. A shared block is
# never written in place: the first sequence that appends to the shared,
# partially filled last block gets its own copy first (**copy-on-write**).
# Below, a prompt of SmolLM2 in blocks of $B = 8$, forked into four sequences
# that each continue with their own tokens.

# %%
exact = numerics_named("llama.cpp")
B = 8
paged = dec.new_paged_cache(n_blocks=24, numerics=exact, block_size=B)
prompt_logits = dec.forward(ids, paged.sequence(0), exact)          # the prompt, in ceil(n / B) blocks
for seq in (1, 2, 3):
    paged.fork(0, seq)                                              # share every block: no K/V copied
print(f"prompt of {n} tokens: {paged.n_allocated_blocks} blocks, reference counts {paged.block_refs()}")
own_tokens = {0: [11, 12, 13], 1: [21, 22], 2: [31, 32, 33, 34, 35, 36, 37, 38, 39, 40], 3: []}
for seq, toks in own_tokens.items():
    for t in toks:
        dec.forward([t], paged.sequence(seq), exact)
for seq in own_tokens:
    print(f"sequence {seq}: {paged.seq_pos_max(seq) + 1:2d} tokens, block table {paged.tables(seq)[0].tolist()}")

# the same tokens in a contiguous cache give the same logits, bit for bit
contiguous = dec.new_cache(n + 11, exact)
dec.forward(ids, contiguous, exact)
for t in own_tokens[2]:
    dec.forward([t], contiguous, exact)
paged_last = dec.forward([41], paged.sequence(2), exact)
assert np.array_equal(dec.forward([41], contiguous, exact), paged_last)
print("sequence 2, paged vs contiguous: identical logits")

# %% [markdown]
# The picture: on the left the block tables, one row per sequence (a box is
# a table entry, its number the physical block, its fill the cells used); on
# the right the pool, each block coloured by how many sequences hold it.

# %%
def draw_paged(cache, seqs, ax_tables, ax_pool):
    refs = cache.groups[0].pool.refcount
    colours = {1: "#9ecae1", 2: "#fdae6b", 3: "#fd8d3c", 4: "#e6550d"}
    for row, seq in enumerate(seqs):
        table, n_cells = cache.tables(seq)[0], cache.sequence(seq).n_cells
        for j, b in enumerate(table):
            used = min(B, n_cells - j * B)
            ax_tables.add_patch(plt.Rectangle((j, -row - 0.9), 1, 0.8, fill=False, lw=1))
            ax_tables.add_patch(plt.Rectangle((j, -row - 0.9), used / B, 0.8, color=colours.get(refs[b], "#e6550d")))
            ax_tables.text(j + 0.5, -row - 0.5, str(b), ha="center", va="center", fontsize=8)
        ax_tables.text(-0.2, -row - 0.5, f"seq {seq}", ha="right", va="center", fontsize=8)
    width = max(len(cache.tables(s)[0]) for s in seqs)
    ax_tables.set_xlim(-1.2, width + 0.2)
    ax_tables.set_ylim(-len(seqs) - 0.2, 0.2)
    ax_tables.set_title("block tables (logical block -> physical block)", fontsize=9)
    ax_tables.axis("off")
    n_blocks, per_row = cache.groups[0].pool.n_blocks, 8
    for b in range(n_blocks):
        x, y = b % per_row, -(b // per_row)
        rc = int(refs[b])
        ax_pool.add_patch(plt.Rectangle((x, y - 0.9), 0.9, 0.8, color=colours.get(rc, "#eeeeee") if rc else "#eeeeee"))
        ax_pool.text(x + 0.45, y - 0.5, f"{b}\n×{rc}" if rc else str(b), ha="center", va="center", fontsize=7)
    ax_pool.set_xlim(-0.1, per_row)
    ax_pool.set_ylim(-(n_blocks // per_row) - 0.1, 0.1)
    ax_pool.set_title("pool (block id, ×reference count; grey: free)", fontsize=9)
    ax_pool.axis("off")
    held = sorted({int(r) for r in refs if r})
    ax_tables.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colours.get(r, "#e6550d")) for r in held],
                     labels=[f"held by {r} sequence{'s' if r > 1 else ''}" for r in held],
                     loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=len(held), fontsize=7, frameon=False)


fig, (ax_t, ax_p) = plt.subplots(1, 2, figsize=(9, 2.8), gridspec_kw={"width_ratios": [1.3, 1]})
draw_paged(paged, list(own_tokens), ax_t, ax_p)
fig.tight_layout()
plt.show()

# %% [markdown]
# The full blocks of the prompt are held by all four sequences (×4). The
# prompt's last block was partly filled when the forks were made: sequences
# 0, 1 and 2 each appended to it, so each copied it first; sequence 3, which
# appended nothing, is left alone with the original. The same bookkeeping on
# a realistic load: 8 sequences that share a 256-token system prompt and
# generate $m$ tokens each, with $B = 16$, hold
# $256/16 + 8\lceil m/16 \rceil$ blocks; 8 contiguous caches hold
# $8 (256 + m)$ rows. The paged count is checked by running the 8 sequences
# (here $m = 8$, the prompt as random token ids) and counting blocks and the
# pool's pages that are really resident in memory (`/proc/self/pagemap`: a
# block costs memory only once written).

# %%
per_token = 2 * spec.n_layer * spec.n_kv_head * spec.head_dim_k * 2          # float16 K and V: bytes per token
rng = np.random.default_rng(0)
system_prompt = [1] + rng.integers(2, spec.n_vocab, 255).tolist()
shared = dec.new_paged_cache(n_blocks=64, numerics=exact, block_size=16)
dec.forward(system_prompt, shared.sequence(0), exact)
for seq in range(1, 8):
    shared.fork(0, seq)
for seq in range(8):
    for t in rng.integers(2, spec.n_vocab, 8):
        dec.forward([int(t)], shared.sequence(seq), exact)
assert shared.n_allocated_blocks == 256 // 16 + 8 * 1
print(f"paged: {shared.n_allocated_blocks} blocks = {shared.allocated_bytes / 1e6:.1f} MB allocated, "
      f"{shared.resident_bytes / 1e6:.1f} MB resident; contiguous: {8 * 264 * per_token / 1e6:.1f} MB")

m = np.arange(0, 513, 16)
paged_mb = (256 // 16 + 8 * np.ceil(m / 16)) * 16 * per_token / 1e6
contiguous_mb = 8 * (256 + m) * per_token / 1e6
fig, ax = plt.subplots(figsize=(5, 2.8))
ax.plot(m, contiguous_mb, label="8 contiguous caches")
ax.plot(m, paged_mb, label="paged, prompt shared (B = 16)")
ax.plot([8], [shared.resident_bytes / 1e6], "o", color="C1", label="measured (resident)")
ax.set_xlabel("tokens generated per sequence, m")
ax.set_ylabel("KV memory (MB)")
ax.set_ylim(bottom=0)
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The cache also does llama.cpp's sequence operations as block-table edits:
# `seq_cp` (a fork), `seq_rm` (positions removed, blocks released), `seq_keep`,
# and `seq_add` (positions shifted; the cached keys, rotated by RoPE at their
# old positions, are rotated again by the shift). Gemma 3's sliding-window
# layers get their own pool whose blocks are released once the window has
# passed them, so those layers hold at most $\lceil 512/B \rceil + 1$ blocks
# per sequence however long it grows. And `dec.forward_batch(tokens, views,
# numerics)` runs the next token of several sequences in one pass (the weight
# products on all rows at once, attention per sequence through its table): the
# step that continuous batching repeats. The tests compare all of it with
# llama.cpp's own cache and batches, bit for bit.

# %% [markdown]
# ## Summary
#
# - Attention: $\mathrm{softmax}(QK^\top/\sqrt{d} + M)V$; the scale keeps the
#   scores near unit size, the causal mask $M$ hides later tokens, and each
#   row of weights is a probability distribution over the visible tokens.
# - Multi-head attention runs heads side by side; grouped-query attention
#   shares each key/value head among $g$ query heads (SmolLM2: 9 query heads,
#   3 KV heads, $g = 3$), the library's `attention` does it with batched
#   products and agrees with a loop.
# - The real model's attention maps have structure: heads that look at the
#   previous token, heads that copy from an earlier analogous position (the
#   " Paris" head), and many heads that rest on the first token.
# - Layer 0 of SmolLM2, recomputed from its GGUF weights (RMSNorm, $W_q$,
#   $W_k$, $W_v$, RoPE, softmax, $W_o$), matches the library.
# - A block is $h + \mathrm{Attn}(\mathrm{RMSNorm}(h))$ then
#   $h + \mathrm{FFN}(\mathrm{RMSNorm}(h))$; thirty of them and the output
#   head are `model.logits`.
# - The KV cache keeps every layer's keys and values: identical logits up to
#   float32 rounding, a per-token cost that no longer grows with the whole
#   sequence, paid for in memory.
# - A paged cache stores the keys and values in blocks of $B$ cells found
#   through per-sequence block tables; forks share blocks (reference counts,
#   copy-on-write), so 8 sequences of a common 256-token prompt need 16 prompt
#   blocks, not 128, with logits identical to the contiguous cache's.
#
# ## Exercises
#
# Each exercise has a code cell for your answer (a reference answer is filled
# in so the notebook runs top to bottom: replace it with your own) and a check
# cell that must run without an `AssertionError`.
#
# **Exercise 1.** Show that the softmax of a row does not change when you add
# the same constant $c$ to every score: $e^{x_s + c} = e^c e^{x_s}$, and $e^c$
# cancels between numerator and denominator. Take the scores of the last row
# of layer 0, head 0 (from section 4), and compare their softmax with the
# softmax of the scores plus $c$ for a few values of $c$. Then see why the
# library subtracts the row maximum first: write `softmax_unshifted(x)` that
# does not, and find what it returns for $c = 1000$.

# %%
row = q0[-1, 0] @ k0[:, 0].T / math.sqrt(hd)             # (n_tok,) scores of the last query, head 0


def softmax_shifted(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def softmax_unshifted(x):
    e = np.exp(x)
    return e / e.sum()


with np.errstate(over="ignore", invalid="ignore"):      # exp(1000) overflows: silence numpy's warning
    for c in (-50.0, 0.0, 3.0, 1000.0):
        print(f"c = {c:7.1f}: shifted {np.round(softmax_shifted(row + c)[:4], 4)}..., "
              f"unshifted {softmax_unshifted(row + c)[:2]}...")

# %%
# Check for exercise 1.
with np.errstate(over="ignore", invalid="ignore"):
    for c in (-50.0, 3.0, 1000.0):
        np.testing.assert_allclose(softmax_shifted(row + c), softmax_shifted(row), rtol=1e-12)
    assert np.all(np.isnan(softmax_unshifted(row + 1000.0))), "exp(1000) overflows to inf, inf/inf is nan"
np.testing.assert_allclose(softmax_shifted(row), w0[0, -1], rtol=1e-12)   # the row of section 4
# the library's softmax (float32) is shift invariant too
r32 = row.astype(np.float32)
np.testing.assert_allclose(softmax(r32 + np.float32(1000)), softmax(r32), rtol=1e-3, atol=1e-6)
print("all checks passed")

# %% [markdown]
# **Exercise 2.** How many bytes of KV cache does one token cost in SmolLM2,
# in float32 and in float16? Use the formula of section 6 with
# $n_\text{ctx} = 1$ and the numbers of `model.spec`. How many tokens of
# float16 cache fit in 1 GB ($10^9$ bytes)? How many bytes per token would the
# model need without GQA (one KV head per query head)?

# %%
def kv_bytes_per_token(spec, bytes_per_number):
    return 2 * spec.n_layer * spec.n_kv_head * spec.head_dim_k * bytes_per_number


per_token_f32 = kv_bytes_per_token(spec, 4)
per_token_f16 = kv_bytes_per_token(spec, 2)
per_token_mha = 2 * spec.n_layer * spec.n_head * spec.head_dim_k * 2
print(f"float32: {per_token_f32} bytes/token, float16: {per_token_f16} bytes/token, "
      f"{10**9 // per_token_f16} float16 tokens in 1 GB, without GQA {per_token_mha} bytes/token")

# %%
# Check for exercise 2: by hand, 2 (K and V) * 30 layers * 3 heads * 64 numbers * 4 bytes.
assert per_token_f32 == 2 * 30 * 3 * 64 * 4 == 46_080
assert per_token_f16 == per_token_f32 // 2
assert per_token_mha == 3 * per_token_f16                # GQA's group of 3
for name, per_token in (("float", per_token_f32), ("llama.cpp", per_token_f16)):
    n_ctx = 100
    assert dec.new_cache(n_ctx, numerics_named(name)).nbytes == n_ctx * per_token, name
assert 10**9 // per_token_f16 == 43_402
print("all checks passed")

# %% [markdown]
# **Exercise 3.** Find the head that most reliably looks at the **previous
# token**: for every layer and head of the recorded `weights` (section 3),
# count the queries $t \ge 1$ whose largest weight (`argmax`) is on key
# $t - 1$, and take the head with the highest fraction.

# %%
best_argmax = weights.argmax(axis=-1)                     # (n_layer, n_head, n_tok): the key each query likes most
previous_fraction = (best_argmax[:, :, 1:] == np.arange(n - 1)).mean(axis=-1)   # (n_layer, n_head)
layer_prev, head_prev = np.unravel_index(int(previous_fraction.argmax()), previous_fraction.shape)
print(f"layer {layer_prev}, head {head_prev}: the previous token wins in "
      f"{previous_fraction[layer_prev, head_prev]:.0%} of the queries")
fig = plot_attention(weights, tokens, layer=int(layer_prev), head=int(head_prev))
plt.show()

# %%
# Check for exercise 3: query by query, the previous token outweighs every other key.
a = weights[layer_prev, head_prev]                        # (n_tok, n_tok)
wins = 0
for t in range(1, n):
    others = [a[t, s] for s in range(t + 1) if s != t - 1]
    wins += a[t, t - 1] > max(others)
assert wins / (n - 1) == previous_fraction.max() >= 0.8
assert head_statistics(weights)["previous"][layer_prev, head_prev] > 0.5   # and on average most weight
print("all checks passed")
