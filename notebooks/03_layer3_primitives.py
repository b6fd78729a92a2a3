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
# # Layer 3 - Neural primitives: activations, normalisation, rotary positions
#
# Layer 2 multiplied vectors by quantised weight matrices. Between those
# products a transformer block applies three small functions, and they are
# what `zigllama_lib.neural_primitives` holds:
#
# * an **activation function**, the non-linearity inside the feed-forward
#   network (without one, a stack of matrix products is one matrix product);
# * a **normalisation**, which rescales each token's vector before every
#   attention and feed-forward sub-layer;
# * **rotary position embedding** (RoPE), which writes each token's position
#   into its queries and keys by rotating them.
#
# **Objectives.** After this notebook you can
#
# 1. write ReLU, GELU (exact and tanh forms), SiLU and the gated SwiGLU
#    feed-forward of SmolLM2 from their formulas, and check them against the
#    library on the model's real weights;
# 2. say what RMSNorm and LayerNorm compute and how they differ, and measure
#    what RMSNorm does to SmolLM2's hidden states, block by block;
# 3. rotate query/key pairs by position in the two pairings ("norm",
#    interleaved, and "neox", split halves), say which one SmolLM2's GGUF file
#    uses and why;
# 4. show, by algebra and numerically, that after RoPE the dot product of a
#    query and a key depends only on how far apart they are.
#
# It runs in a few seconds once the model is in the cache and Numba has
# compiled the kernels.

# %%
# Versions: numbers in this notebook were produced with these.
import dataclasses
import math
import platform

import matplotlib
import matplotlib.pyplot as plt
import numba
import numpy as np

import zigllama_lib as zl
from zigllama_lib.linear_algebra import dequantize, matmul
from zigllama_lib.models.decoder import Decoder, numerics_named
from zigllama_lib.neural_primitives import ACTIVATIONS, apply_rope, layer_norm, rms_norm, rope_angles, silu, swiglu
from zigllama_lib.neural_primitives.ggml_math import geglu_ggml, rms_norm_ggml, rope_ggml, silu_ggml
from zigllama_lib.viz import primitives as vp

print(f"python {platform.python_version()}, numpy {np.__version__}, "
      f"numba {numba.__version__}, matplotlib {matplotlib.__version__}, "
      f"zigllama_lib {zl.__version__}")

# %% [markdown]
# The real model, a prompt, and the numbers of its architecture this notebook
# needs (`model.spec`, read from the GGUF metadata):

# %%
model = zl.load("smollm2-135m-instruct")
spec = model.spec
prompt = "The capital of France is Paris, and the capital of Italy is"
ids = np.array(model.tokenizer.encode(prompt, add_special=True))
tokens = [model.tokenizer.decode([int(i)]) for i in ids]
print(len(ids), "tokens:", tokens)
print(f"d_model {spec.d_model}, d_ff {spec.d_ff}, n_layer {spec.n_layer}, head_dim {spec.head_dim_k}, "
      f"norm_eps {spec.norm_eps:.0e}")
print(f"activation {spec.traits.activation!r}, rope_mode {spec.traits.rope_mode!r}, "
      f"rope_base {spec.rope_base:g}, rope_dims {spec.rope_dims}")

# %% [markdown]
# ## 1. Activation functions
#
# An activation is applied to each number on its own. The ones in today's
# language models:
#
# $$
# \mathrm{ReLU}(x) = \max(x, 0), \qquad
# \sigma(x) = \frac{1}{1 + e^{-x}}, \qquad
# \mathrm{SiLU}(x) = x\,\sigma(x),
# $$
#
# $$
# \mathrm{GELU}(x) = x\,\Phi(x) = \frac{x}{2}\left(1 + \mathrm{erf}\!\left(\frac{x}{\sqrt{2}}\right)\right)
# \approx \frac{x}{2}\left(1 + \tanh\!\left(\sqrt{2/\pi}\,\left(x + 0.044715\,x^3\right)\right)\right).
# $$
#
# $\Phi$ is the cumulative distribution function of the standard normal
# distribution. ReLU passes positive inputs and cuts negative ones to zero.
# SiLU (also called swish) and GELU are smooth versions of it: both scale $x$
# by a soft "gate" between 0 and 1 ($\sigma(x)$ or $\Phi(x)$), so they are close
# to $0$ far left, close to $x$ far right, and dip slightly below zero in
# between. The tanh form of GELU is an approximation from the days when
# $\mathrm{erf}$ was slow; ggml and Gemma use it. SmolLM2 uses SiLU.
#
# A naive version with Python's `math` module, one number at a time:

# %%
def relu_naive(x):
    return max(x, 0.0)


def sigmoid_naive(x):
    return 1.0 / (1.0 + math.exp(-x))


def silu_naive(x):
    return x * sigmoid_naive(x)


def gelu_erf_naive(x):
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def gelu_tanh_naive(x):
    return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


xs = np.linspace(-8, 8, 1601, dtype=np.float32)   # (1601,) includes 0 exactly
naive = {
    "relu": relu_naive, "sigmoid": sigmoid_naive, "silu": silu_naive,
    "gelu_erf": gelu_erf_naive, "gelu": gelu_tanh_naive,   # the library's "gelu" is the tanh form
}
for name, f in naive.items():
    ours = np.array([f(float(x)) for x in xs])                 # float64, one at a time
    lib = ACTIVATIONS[name](xs)                                 # float32, whole array
    np.testing.assert_allclose(lib, ours, rtol=1e-6, atol=1e-6)
    print(f"{name:9s} library == naive (max |difference| {np.abs(lib - ours).max():.1e})")

# %% [markdown]
# They agree to float32 precision (the library computes in float32, the
# naive version in float64). The largest absolute gap of the tanh form, about
# 1.5e-7, sits far left, where $1 + \tanh(\dots)$ is a difference of two
# nearly equal numbers and float32 keeps few correct digits of it.

# %% [markdown]
# The tanh form is close to the exact GELU, but not equal; and SiLU has its
# minimum where its slope is zero (solve $\mathrm{SiLU}'(x) = 0$; here it is
# read off the grid):

# %%
gap = np.abs(ACTIVATIONS["gelu"](xs).astype(np.float64) - ACTIVATIONS["gelu_erf"](xs))
print(f"max |GELU_tanh - GELU_erf| on [-8, 8]: {gap.max():.1e} at x = {xs[gap.argmax()]:.2f}")
s = silu(xs)
print(f"SiLU minimum on the grid: {s.min():.4f} at x = {xs[s.argmin()]:.2f}")

# %% [markdown]
# The functions (left) and their slopes (right). Pick others in the widget;
# the picture below is what it shows first.

# %%
vp.activations_view(("relu", "gelu", "silu"))

# %% [markdown]
# ## 2. The gated feed-forward network: SwiGLU
#
# SmolLM2's feed-forward sub-layer does not apply SiLU to one projection but
# uses it as a gate on a second one (Shazeer 2020, "GLU variants"):
#
# $$
# \mathrm{FFN}(x) = W_{\text{down}}\left(\mathrm{SiLU}(W_{\text{gate}}\,x) \odot W_{\text{up}}\,x\right),
# $$
#
# with $x \in \mathbb{R}^{d}$ ($d$ = 576), $W_{\text{gate}}, W_{\text{up}} \in
# \mathbb{R}^{d_{ff} \times d}$ ($d_{ff}$ = 1536), $W_{\text{down}} \in
# \mathbb{R}^{d \times d_{ff}}$ and $\odot$ the element-wise product. Each of the
# 1536 hidden units is "how much of $W_{\text{up}}x$ to let through", decided by
# $W_{\text{gate}}x$. The library's `swiglu(gate, up)` is the bracket; the
# decoder's `feed_forward(i, x, numerics)` is the whole formula with layer
# $i$'s weights.
#
# Naive version: dequantise block 0's three matrices to float64 (layer 2) and
# multiply in numpy. The input here is the token embeddings normalised with
# block 0's `ffn_norm` (in the model the feed-forward sees the output of
# attention added in too: layer 4).

# %%
block0 = model.decoder.layers[0]
W_gate = dequantize(block0.w_gate.raw, block0.w_gate.qtype).astype(np.float64)   # (d_ff, d)
W_up = dequantize(block0.w_up.raw, block0.w_up.qtype).astype(np.float64)         # (d_ff, d)
W_down = dequantize(block0.w_down.raw, block0.w_down.qtype).astype(np.float64)   # (d, d_ff)
print("W_gate", W_gate.shape, "W_up", W_up.shape, "W_down", W_down.shape)

embeddings = model.decoder.embed(ids)                             # (n_tok, d) float32
x_ffn = rms_norm(embeddings, block0.ffn_norm, spec.norm_eps)      # (n_tok, d)


def swiglu_ffn_naive(x):
    gate = x @ W_gate.T                                   # (n_tok, d_ff)
    up = x @ W_up.T                                       # (n_tok, d_ff)
    hidden = gate / (1.0 + np.exp(-gate)) * up            # SiLU(gate) * up
    return hidden @ W_down.T                              # (n_tok, d)


float_numerics = numerics_named("float")
ffn_lib = model.decoder.feed_forward(0, x_ffn, float_numerics)    # (n_tok, d) float32
ffn_naive = swiglu_ffn_naive(x_ffn.astype(np.float64))
np.testing.assert_allclose(ffn_lib, ffn_naive, rtol=1e-4, atol=1e-5)
print("feed_forward(0) == naive SwiGLU, max |difference|", f"{np.abs(ffn_lib - ffn_naive).max():.1e}",
      "of values up to", f"{np.abs(ffn_naive).max():.2f}")

# %% [markdown]
# How open are the gates? For each token in block 0: the share of the 1536
# gate values $g$ that are negative, where $\mathrm{SiLU}(g)$ lies between the
# minimum found above (about $-0.28$) and 0, so the unit is nearly shut; and
# the share above 1, where $\mathrm{SiLU}(g) > \mathrm{SiLU}(1)$ (printed) and
# the unit is open:

# %%
gate = matmul(block0.w_gate, x_ffn, "float")                       # (n_tok, d_ff)
np.testing.assert_allclose(swiglu(gate, np.ones_like(gate)), silu(gate))   # swiglu(g, 1) = silu(g)
print(f"SiLU(1) = {silu(np.float32(1.0)):.4f}")
for t, shut, open_ in zip(tokens, (gate < 0).mean(axis=1), (gate > 1).mean(axis=1)):
    print(f"{t!r:10} {shut:6.1%} nearly shut, {open_:5.1%} open")

# %% [markdown]
# The gate depends strongly on the token. Function words (`' of'`, `' is'`,
# `','`, `' the'`) leave about 90 % of the units nearly shut and open fewer
# than 1 %; the words that carry the content (`' France'`, `' Paris'`,
# `' Italy'`) shut only 15 to 20 % and open about 8 to 12 %. Each token picks its
# own few of the 1536 directions of $W_{\text{up}}x$ to pass on. (The input
# here skips attention, so a repeated word gets the same gates.)

# %% [markdown]
# ## 3. Normalisation: RMSNorm and LayerNorm
#
# Before attention and before the feed-forward network, each token's vector
# $x \in \mathbb{R}^d$ is rescaled. **RMSNorm** (Zhang and Sennrich 2019, used by
# Llama, SmolLM2, Gemma, Qwen) divides by the root mean square and multiplies
# by a learned gain $g$:
#
# $$
# \mathrm{RMSNorm}(x)_j = \frac{x_j}{\sqrt{\frac{1}{d}\sum_{l=1}^{d} x_l^2 + \varepsilon}}\; g_j .
# $$
#
# **LayerNorm** (Ba et al. 2016, used by GPT-2 and BERT) first subtracts the
# mean $\mu$, divides by the standard deviation, and also adds a learned bias
# $b$:
#
# $$
# \mu = \frac{1}{d}\sum_{l} x_l, \qquad
# \mathrm{LayerNorm}(x)_j = \frac{x_j - \mu}{\sqrt{\frac{1}{d}\sum_{l}(x_l - \mu)^2 + \varepsilon}}\; g_j + b_j .
# $$
#
# Without the gain, RMSNorm's output has RMS 1 and LayerNorm's has mean 0 and
# variance 1 (up to $\varepsilon$, which only guards against dividing by zero).
# When the mean is small compared with the RMS the two give almost the same
# numbers; RMSNorm is cheaper (one pass over $x$) and works as well.
#
# Naive versions, one vector at a time, in float64:

# %%
def rms_norm_naive(x, g, eps):
    out = np.empty(x.shape)
    for t, row in enumerate(x.astype(np.float64)):
        rms = math.sqrt(sum(v * v for v in row) / len(row) + eps)
        out[t] = row / rms * g
    return out


def layer_norm_naive(x, g, b, eps):
    out = np.empty(x.shape)
    for t, row in enumerate(x.astype(np.float64)):
        mu = sum(row) / len(row)
        var = sum((v - mu) ** 2 for v in row) / len(row)
        out[t] = (row - mu) / math.sqrt(var + eps) * g + b
    return out


eps = spec.norm_eps
g0 = block0.attn_norm                                  # (d,) the real gain of block 0's attention norm
np.testing.assert_allclose(rms_norm(embeddings, g0, eps), rms_norm_naive(embeddings, g0, eps), rtol=1e-5, atol=1e-7)

rng = np.random.default_rng(0)                         # SmolLM2 has no LayerNorm: a random gain and bias
g_ln, b_ln = rng.normal(1, 0.1, spec.d_model), rng.normal(0, 0.1, spec.d_model)
np.testing.assert_allclose(layer_norm(embeddings, g_ln.astype(np.float32), b_ln.astype(np.float32), eps),
                           layer_norm_naive(embeddings, g_ln, b_ln, eps), rtol=1e-4, atol=1e-5)
print("rms_norm == naive, layer_norm == naive")

# %% [markdown]
# ### On the real model: the first norm
#
# The embedding rows of the prompt's tokens are the input of block 0. Their
# RMS, then after RMSNorm without the gain, then with block 0's real gain
# `attn_norm`:

# %%
st = vp.norm_statistics(embeddings, eps, g0)
print(f"{'token':12} {'RMS x':>8} {'mean x':>8} {'RMSNorm':>8} {'* g':>8}")
for t, r, mu, r1, rg in zip(tokens, st["rms"], st["mean"], st["rms_after_rmsnorm"], st["rms_after_gain"]):
    print(f"{t!r:12} {r:8.4f} {mu:8.4f} {r1:8.4f} {rg:8.4f}")
print(f"RMS of the gain g itself: {np.sqrt(np.mean(g0.astype(np.float64) ** 2)):.4f}")

# %% [markdown]
# Every token comes out at RMS 1, whatever RMS it went in with (0.9993 to
# 0.9997: $\varepsilon$ = 1e-5 is not quite negligible next to a mean square
# $\overline{x^2}$ of about 0.01, an RMS of about 0.1). The gain then sets the
# scale the next matrix product expects, here about 0.04, and it weights
# coordinates differently (the RMS after the gain differs slightly per token
# because of that).
#
# ### Along the residual stream
#
# Each block adds its attention and feed-forward outputs to a running vector
# $h$, the *residual stream*, and normalises a copy of $h$ before each
# sub-layer. Layers 4 and 5 build the blocks; here the decoder's own methods
# run them, so we can look at $h$ entering every block. The last logits match
# `model.logits`, which runs the same loop:

# %%
decoder = model.decoder
cache = decoder.new_cache(len(ids), float_numerics)
h = decoder.embed(ids)                                      # (n_tok, d) residual stream
stream = [h]                                                # stream[i]: h entering block i; stream[-1]: after the last
for i, block in enumerate(decoder.layers):
    x = rms_norm(h, block.attn_norm, eps)
    h = h + decoder.attention_block(i, x, cache, float_numerics)
    x = rms_norm(h, block.ffn_norm, eps)
    h = h + decoder.feed_forward(i, x, float_numerics)
    stream.append(h)
logits = matmul(decoder.output, rms_norm(h, decoder.output_norm, eps), "float")   # (n_tok, n_vocab)
reference = model.logits(ids)
np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-4)
print(f"{len(stream)} snapshots of h; max |logits - model.logits| = {np.abs(logits - reference).max():.1e}")
print("next token:", repr(model.tokenizer.decode([int(logits[-1].argmax())])))

# %%
rms_stream = np.array([vp.norm_statistics(s, eps)["rms"] for s in stream])   # (n_layer + 1, n_tok)
fig, ax = plt.subplots(figsize=(7, 3))
ax.semilogy(rms_stream[:, 0], "o-", ms=3, color="tab:red", label=f"token 0 {tokens[0]!r}")
ax.semilogy(rms_stream[:, 1:], color="tab:blue", lw=0.8, alpha=0.6)
ax.semilogy([], [], color="tab:blue", label="the other tokens")
ax.axhline(1.0, color="black", lw=0.8, ls="--", label="after RMSNorm (no gain)")
ax.set_xlabel("block i (h entering it; the last point: after block 29)")
ax.set_ylabel("RMS of h")
ax.set_title("The residual stream grows; RMSNorm brings each copy back to RMS 1", fontsize=10)
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
print("RMS entering block 0 :", rms_stream[0].round(2))
print("RMS after block 29   :", rms_stream[-1].round(1))
peak_block, peak_token = np.unravel_index(rms_stream.argmax(), rms_stream.shape)
print(f"largest RMS: {rms_stream.max():.0f} (token {peak_token}, entering block {peak_block})")
v = stream[peak_block][peak_token].astype(np.float64)        # (d,)
top2 = np.argsort(v**2)[::-1][:2]
print(f"there, coordinates {top2.tolist()} hold {(v[top2]**2).sum() / (v**2).sum():.1%} of the squared length")

# %% [markdown]
# The RMS grows from about 0.1 to tens, and the first token's vector grows to
# hundreds, almost all of it in one or two coordinates: models learn to park
# huge values on the first token (it becomes an "attention sink", a token
# that attention can fall back on). Without the norms each block would see
# inputs of wildly different scales. The widget steps through the stream:
# left, the RMS of each token before and after the norm (with the gain of
# the norm that block applies); right, every coordinate of one token before
# (horizontal) and after (vertical) RMSNorm and LayerNorm. Both are straight
# lines: normalising is one scale factor per vector, and LayerNorm's line is
# shifted by $\mu/\sigma$.

# %%
gains = [block.attn_norm for block in decoder.layers] + [decoder.output_norm]
names = [f"h entering block {i} (its attn_norm gain)" for i in range(spec.n_layer)] + ["h after block 29 (output_norm)"]
vp.norms_view(stream, eps, gains, labels=[repr(t) for t in tokens], names=names, stage=0, token=1)

# %% [markdown]
# ## 4. Rotary position embedding (RoPE)
#
# Attention compares a query $q$ with keys $k$ by dot products, and nothing in
# a dot product says where the tokens are. RoPE (Su et al. 2021) rotates each
# query and key by an angle proportional to its position before the dot
# product. Split a head's $d$ coordinates into $d/2$ pairs; pair $i$ turns by
# $m\theta_i$ at position $m$, with frequencies
#
# $$
# \theta_i = \text{base}^{-2i/d}, \qquad i = 0, 1, \dots, d/2 - 1,
# $$
#
# $$
# \begin{pmatrix} x'_a \\ x'_b \end{pmatrix} =
# \begin{pmatrix} \cos m\theta_i & -\sin m\theta_i \\ \sin m\theta_i & \cos m\theta_i \end{pmatrix}
# \begin{pmatrix} x_a \\ x_b \end{pmatrix} = R(m\theta_i) \begin{pmatrix} x_a \\ x_b \end{pmatrix}.
# $$
#
# Pair 0 turns by one radian per token; the last pair barely moves. Which
# coordinates $(a, b)$ form pair $i$ is a convention:
#
# * **"norm"**, interleaved: $(a, b) = (2i, 2i+1)$;
# * **"neox"** (GPT-NeoX, Gemma, Qwen), split halves: $(a, b) = (i, i + d/2)$.
#
# **The key property.** A rotation is orthogonal, $R(\alpha)^\top = R(-\alpha)$,
# and rotations add, $R(\alpha)R(\beta) = R(\alpha + \beta)$. So for a query at
# position $m$ and a key at position $n$, pair by pair,
#
# $$
# \left(R(m\theta_i)\, q\right)^\top \left(R(n\theta_i)\, k\right)
# = q^\top R(-m\theta_i) R(n\theta_i)\, k = q^\top R\!\left((n - m)\theta_i\right) k ,
# $$
#
# which depends on $m$ and $n$ only through the offset $m - n$. Attention
# scores see relative positions, and the vectors' lengths never change.
#
# A naive version, a loop over positions and pairs with angles in float64:

# %%
def rope_naive(x, positions, base, mode):
    """x: (n_tok, n_head, d) rotated by RoPE over all d coordinates."""
    x = x.astype(np.float64)
    out = x.copy()
    d = x.shape[-1]
    for t, m in enumerate(positions):
        for i in range(d // 2):
            a, b = (2 * i, 2 * i + 1) if mode == "norm" else (i, i + d // 2)
            angle = m * base ** (-2 * i / d)
            c, s = math.cos(angle), math.sin(angle)
            out[t, :, a] = c * x[t, :, a] - s * x[t, :, b]
            out[t, :, b] = s * x[t, :, a] + c * x[t, :, b]
    return out


# real queries and keys of block 0, before RoPE
x0 = rms_norm(embeddings, block0.attn_norm, eps)                                    # (n_tok, d_model)
q = matmul(block0.wq, x0, "float").reshape(len(ids), spec.n_head, spec.head_dim_k)     # (n_tok, 9, 64)
k = matmul(block0.wk, x0, "float").reshape(len(ids), spec.n_kv_head, spec.head_dim_k)  # (n_tok, 3, 64)
positions = np.arange(len(ids))
d, base = spec.rope_dims, spec.rope_base
for mode in ("norm", "neox"):
    lib = apply_rope(q, positions, d, base, mode)
    np.testing.assert_allclose(lib, rope_naive(q, positions, base, mode), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(lib, axis=-1), np.linalg.norm(q, axis=-1), rtol=1e-5)
    print(f"{mode}: apply_rope == naive, lengths unchanged")

# %% [markdown]
# The library builds the angles the way ggml does, multiplying by
# $\text{base}^{-2/d}$ once per pair in float32 (`rope_angles`), so they agree
# with $m\,\text{base}^{-2i/d}$ to float32 precision:

# %%
angles = rope_angles(np.array([1, 100, 8191]), d, base)        # (3, d/2) float32
exact = np.array([1, 100, 8191])[:, None] * vp.rope_frequencies(d, base)
print("max relative angle error:", f"{np.abs(angles / exact - 1).max():.1e}")

# %% [markdown]
# ### Which pairing does SmolLM2 use?
#
# `model.spec` says `"norm"`, the interleaved pairs. Yet SmolLM2 was trained
# with Hugging Face's Llama code, which pairs the halves ("neox"). The
# difference is only the order of the coordinates: the GGUF converter
# permuted the rows of $W_q$ and $W_k$ so that coordinate $j$ of each half
# lands next to its partner, new $2j$ = old $j$ and new $2j+1$ = old $j + d/2$.
# Rotating the permuted vector with interleaved pairs is the same as rotating
# the original with split halves, then permuting:

# %%
print("SmolLM2 GGUF rope mode:", spec.traits.rope_mode)
perm = np.arange(d).reshape(2, d // 2).T.reshape(-1)       # new position 2j <- j, 2j+1 <- j + d/2
print("perm[:8] =", perm[:8])
q_neox_layout = q[..., np.argsort(perm)]                    # undo the converter's permutation
np.testing.assert_allclose(apply_rope(q_neox_layout, positions, d, base, "neox")[..., perm],
                           apply_rope(q, positions, d, base, "norm"), rtol=1e-6, atol=1e-6)
print("neox on the original layout == norm on the GGUF layout")

# %% [markdown]
# What if a decoder used the wrong pairing? Nothing would raise an error. Build
# a second decoder on the same file whose spec says `"neox"` and compare the
# next-token probabilities after the prompt:

# %%
wrong_spec = dataclasses.replace(spec, traits=dataclasses.replace(spec.traits, rope_mode="neox"))
wrong = Decoder(model.gguf, wrong_spec)                           # same weights, other pairing
wrong_logits = wrong.forward(ids, wrong.new_cache(len(ids), float_numerics), float_numerics)   # (1, n_vocab)
for label, z in (("norm (right)", logits[-1]), ("neox (wrong)", wrong_logits[0])):
    z = z.astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    top = np.argsort(p)[::-1][:3]
    print(f"{label}: " + ", ".join(f"{model.tokenizer.decode([int(t)])!r} {p[t]:.3f}" for t in top))

# %% [markdown]
# The model still guesses `' Rome'`, but with much less confidence: every
# query and key is rotated with the angles meant for other coordinates, so the
# positional signal it learned is scrambled. That is why the decoder reads the
# pairing from the architecture (`FamilyTraits.rope_mode`) rather than
# guessing.
#
# ### Only the offset counts
#
# Take a real query (last token, head 0) and key (first token, its key head
# 0) and put them at positions $m$ and $n$ with the same offset $m - n = 4$,
# near the start and far into the context:

# %%
q_vec, k_vec = q[-1, 0], k[0, 0]                                # (64,) each


def rope_dot(qv, kv, m, n, mode="norm"):
    qm = apply_rope(qv[None, None], np.array([m]), d, base, mode)[0, 0].astype(np.float64)
    kn = apply_rope(kv[None, None], np.array([n]), d, base, mode)[0, 0].astype(np.float64)
    return float(qm @ kn)


same_offset = [rope_dot(q_vec, k_vec, n + 4, n) for n in (0, 100, 1000, 5000)]
other_offset = [rope_dot(q_vec, k_vec, n + 9, n) for n in (0, 100, 1000, 5000)]
print("offset 4:", np.round(same_offset, 4))
print("offset 9:", np.round(other_offset, 4))
print("without RoPE q.k =", round(float(q_vec.astype(np.float64) @ k_vec), 4))
np.testing.assert_allclose(same_offset, same_offset[0], rtol=1e-4)
np.testing.assert_allclose(other_offset, other_offset[0], rtol=1e-4)

# %% [markdown]
# The picture: left, pair 0 of that query at positions 0 to 8, turning by one
# radian per token; middle, the 32 frequencies $\theta_i$ on a log scale (for
# SmolLM2, base = 100000); right, $q \cdot k$ against the offset, with the key at
# position 0 (line) and at position 1000 (dots): the same curve. The dashed
# line is pair 0's share of the dot product, a cosine with period $2\pi$.

# %%
fig = vp.plot_rope(q_vec, k_vec, position=8, pair=0, n_rot=d, base=base, mode=spec.traits.rope_mode)
plt.show()

# %% [markdown]
# Move the sliders: the fast pairs (small $i$) wrap around within a few tokens
# and say something about nearby order; the slow pairs (large $i$) hardly turn
# over thousands of tokens, so they carry what the vectors mean rather than
# where they are.

# %%
vp.rope_view(q_vec, k_vec, n_rot=d, base=base, mode=spec.traits.rope_mode, position=100, pair=8)

# %% [markdown]
# ## 5. The llama.cpp versions
#
# `neural_primitives.ggml_math` has a second copy of SiLU, GELU, RMSNorm and
# RoPE that follows ggml's float32 operations step by step (its vectorised
# `expf`, its fused multiply-adds), so that the decoder's `"llama.cpp"`
# numerics give llama.cpp's numbers bit for bit. It computes the same
# functions; only the last bits differ -- except GELU, which ggml looks up in a
# table of all 65536 float16 inputs (rounding both the input and the result to
# float16), so it is only float16-accurate:

# %%
def max_ulps(a, b):
    """Largest difference of two float32 arrays in units in the last place of b."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.max(np.abs(a.astype(np.float64) - b) / np.spacing(np.abs(b))))


print(f"silu     : {max_ulps(silu_ggml(gate), silu(gate)):.0f} ulp at most")
gelu_table_err = np.abs(geglu_ggml(gate, np.ones_like(gate)) - ACTIVATIONS["gelu"](gate)).max()
print(f"gelu     : max |difference| {gelu_table_err:.1e} on values up to {np.abs(gate).max():.1f} (float16 table)")
print(f"rms_norm : {max_ulps(rms_norm_ggml(embeddings, g0, eps), rms_norm(embeddings, g0, eps)):.0f} ulp at most")
rot_ggml, rot = rope_ggml(q, positions, d, base, "norm"), apply_rope(q, positions, d, base, "norm")
print(f"rope     : max |difference| {np.abs(rot_ggml - rot).max():.1e} on values up to {np.abs(rot).max():.1f}")

# %% [markdown]
# ### The same bits on every CPU
#
# The build these mirrors follow is **llama.cpp 0.3.36, x86-64 AVX2 build**
# (`zigllama_lib.inference.llama_cpp_builds.PINNED_NAME`: no `-march=native`,
# the same machine code on every CPU with AVX2). Its transcendentals come from
# the C library: RoPE's ratio $	heta_{i+1}/	heta_i$ is `powf(base, -2.0f/d)`, the
# rotation uses `cosf` and `sinf`. numpy's float32 `np.power`, `np.cos`, `np.exp`
# are *not* the C library's: numpy picks a SIMD kernel per CPU (SSE, AVX2,
# AVX-512), and they round differently. On an AVX-512 machine
# `np.power(np.float32(1e5), np.float32(-2/64))` is one ulp above glibc's
# `powf` -- and that one ulp in $	heta$ changes SmolLM2's greedy text after a few
# tokens, because the 8-bit path amplifies every last-bit difference.
# So the library calls the C library (`foundation.libm`, through ctypes and
# inside compiled loops), never numpy's float32 transcendentals. Here is how
# often numpy's float32 cosine of RoPE's angles disagrees with glibc's on *this*
# CPU:

# %%
from zigllama_lib.foundation import libm
from zigllama_lib.neural_primitives.rope import rope_angles

angles = rope_angles(np.arange(4096), d, base)                      # (4096, d/2) float32, as ggml builds them
numpy_cos = np.cos(angles)                                           # numpy's SIMD kernel for this CPU
glibc_cos = libm.cos_f32(angles)                                     # cosf, as ggml calls it
n_diff = int((numpy_cos != glibc_cos).sum())
print(f"theta ratio: glibc powf {libm.rope_theta_scale(base, d)!r}, numpy power "
      f"{np.power(np.float32(base), np.float32(-2.0) / np.float32(d))!r}")
print(f"cos of {angles.size} RoPE angles: numpy's float32 kernel differs from glibc's cosf in {n_diff} "
      f"({100 * n_diff / angles.size:.1f}%), by up to {np.abs(numpy_cos - glibc_cos).max():.1e}")
assert np.array_equal(libm.rope_theta_scale(base, d), np.float32(base ** float(np.float32(-2.0) / np.float32(d))))

# %% [markdown]
# ## Summary
#
# - Activations act on each number: ReLU cuts negatives; SiLU $= x\sigma(x)$ and
#   GELU $= x\Phi(x)$ are smooth gates. GELU's tanh form is within about
#   $5\cdot 10^{-4}$ of the exact one.
# - SmolLM2's feed-forward is SwiGLU, $W_{\text{down}}(\mathrm{SiLU}(W_{\text{gate}}x)
#   \odot W_{\text{up}}x)$: 576 to 1536 to 576, one projection gating the other.
# - RMSNorm divides a vector by its RMS and multiplies by a learned gain;
#   LayerNorm also removes the mean and adds a bias. On SmolLM2's hidden
#   states, whose mean is small next to their RMS, the two nearly agree.
# - The residual stream grows from RMS about 0.1 to tens (hundreds on the
#   first token); each sub-layer still sees RMS 1 times its gain.
# - RoPE rotates pair $i$ by $m\theta_i$, $\theta_i = \text{base}^{-2i/d}$. After it,
#   $q \cdot k$ depends only on $m - n$. SmolLM2's GGUF uses interleaved pairs
#   ("norm") because the converter permuted $W_q$ and $W_k$ from the
#   split-halves layout it was trained with.
#
# ## Exercises
#
# Each exercise has a code cell for your answer (a reference answer is filled
# in so the notebook runs top to bottom: replace it with your own) and a check
# cell that must run without an `AssertionError`.
#
# **Exercise 1.** Differentiate $\mathrm{SiLU}(x) = x\sigma(x)$ by hand (use
# $\sigma'(x) = \sigma(x)(1 - \sigma(x))$), write the result as `silu_prime(x)`,
# and give $\mathrm{SiLU}'(0)$ as a number. The check compares your formula with
# a central difference $\frac{f(x+h) - f(x-h)}{2h}$ of the library's `silu`.

# %%
def silu_prime(x):
    sg = 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))
    return sg * (1.0 + x * (1.0 - sg))


silu_prime_at_0 = 0.5        # sigma(0) + 0 * sigma'(0) = 1/2
print(silu_prime(np.array([-2.0, 0.0, 2.0])))

# %%
# Check for exercise 1.
h_step = 1e-2
pts = np.linspace(-6, 6, 25)
central = (silu((pts + h_step).astype(np.float32)).astype(np.float64)
           - silu((pts - h_step).astype(np.float32))) / (2 * h_step)
np.testing.assert_allclose(silu_prime(pts), central, atol=1e-4)
assert silu_prime_at_0 == 0.5
assert abs(silu_prime(0.0) - silu_prime_at_0) < 1e-12
print("all checks passed")

# %% [markdown]
# **Exercise 2.** RMSNorm is *scale invariant*: for $c > 0$,
# $\mathrm{RMSNorm}(cx) = \mathrm{RMSNorm}(x)$, up to $\varepsilon$. Show it on the
# prompt's embeddings for $c$ = 0.5, 3 and 100, and explain why the difference
# is largest for $c$ = 0.5 (by hand: $\mathrm{RMSNorm}(cx)_j = x_j g_j /
# \sqrt{\overline{x^2} + \varepsilon / c^2}$, where $\overline{x^2}$ is the mean of
# the squares). Then find how small $c$ can get before $\varepsilon$ takes over:
# write `rms_after(c)`, the RMS of `rms_norm(c * x, None, eps)` for the first
# token (by hand it is $\sqrt{c^2\overline{x^2} / (c^2\overline{x^2} + \varepsilon)}$).
# Finally show that LayerNorm is also *shift* invariant,
# $\mathrm{LayerNorm}(x + s) = \mathrm{LayerNorm}(x)$ for a number $s$, while
# RMSNorm is not.

# %%
x_tok = embeddings[:1]                                        # (1, d)
for c in (0.5, 3.0, 100.0):
    diff = np.abs(rms_norm(np.float32(c) * embeddings, g0, eps) - rms_norm(embeddings, g0, eps)).max()
    print(f"c = {c:6}: max |RMSNorm(cx) - RMSNorm(x)| = {diff:.1e}")


def rms_after(c):
    y = rms_norm(np.float32(c) * x_tok, None, eps)
    return float(np.sqrt(np.mean(y.astype(np.float64) ** 2)))


for c in (1.0, 0.1, 0.01, 0.001):
    print(f"c = {c:6}: RMS of RMSNorm(c x) = {rms_after(c):.4f}")
shift = np.float32(0.5)
print("LayerNorm(x + s) - LayerNorm(x):", np.abs(layer_norm(embeddings + shift, None, None, eps)
                                            - layer_norm(embeddings, None, None, eps)).max())
print("RMSNorm(x + s)   - RMSNorm(x):  ", np.abs(rms_norm(embeddings + shift, None, eps)
                                            - rms_norm(embeddings, None, eps)).max())

# %%
# Check for exercise 2.
ms_all = np.mean(embeddings.astype(np.float64) ** 2, axis=-1, keepdims=True)   # (n_tok, 1) mean of x^2
for c in (0.5, 3.0, 100.0):
    factor = np.sqrt((ms_all + eps) / (ms_all + eps / c**2))   # RMSNorm(cx) / RMSNorm(x), from the formula
    np.testing.assert_allclose(rms_norm(np.float32(c) * embeddings, g0, eps),
                               rms_norm(embeddings, g0, eps) * factor, rtol=1e-5, atol=1e-9)
    assert abs(factor - 1).max() < 0.01                       # within 1 %: equal up to eps
ms = float(ms_all[0, 0])                                      # the first token's mean of x^2
for c in (1.0, 0.1, 0.01, 0.001):
    by_hand = math.sqrt(c * c * ms / (c * c * ms + eps))
    assert abs(rms_after(c) - by_hand) < 1e-4, (c, rms_after(c), by_hand)
assert rms_after(0.001) < 0.1 < 0.99 < rms_after(1.0)        # eps takes over once c^2 mean(x^2) << eps
np.testing.assert_allclose(layer_norm(embeddings + shift, None, None, eps),
                           layer_norm(embeddings, None, None, eps), atol=1e-3)
assert np.abs(rms_norm(embeddings + shift, None, eps) - rms_norm(embeddings, None, eps)).max() > 0.5
print("all checks passed")

# %% [markdown]
# **Exercise 3.** Pair $i$ makes one full turn every $2\pi/\theta_i$ tokens, its
# *wavelength*. SmolLM2 was trained on contexts of `spec.n_ctx_train` = 8192
# tokens. Using the library's `rope_angles` (angles at position 1 are the
# $\theta_i$), count how many of the 32 pairs make at least one full turn
# within 8192 tokens. The check works it out from the formula:
# $2\pi/\theta_i \le N$ exactly when $i \le \frac{d}{2}\,\frac{\ln(N/2\pi)}{\ln \text{base}}$.

# %%
theta = rope_angles(np.array([1]), d, base)[0].astype(np.float64)   # (d/2,)
wavelengths = 2 * np.pi / theta
n_turning = int((wavelengths <= spec.n_ctx_train).sum())
print(f"wavelengths from {wavelengths[0]:.2f} to {wavelengths[-1]:.3g} tokens")
print(f"{n_turning} of {d // 2} pairs turn at least once within {spec.n_ctx_train} tokens")

# %%
# Check for exercise 3.
N = spec.n_ctx_train
i_max = (d / 2) * math.log(N / (2 * math.pi)) / math.log(base)   # pairs 0 .. floor(i_max) turn
assert n_turning == math.floor(i_max) + 1, (n_turning, i_max)
assert 0 < n_turning < d // 2
print("all checks passed")
