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
# # Quick start: from a prompt to streamed text
#
# A real language model, SmolLM2-135M-Instruct (135 million parameters, weights
# stored in 4 and 8 bits), runs on your CPU through `zigllama_lib`. This
# notebook drives it from the outside with four calls; the numbered notebooks
# after it open each step up, one layer at a time.
#
# **Objectives.** After this notebook you can
#
# 1. load a model by name and say what loading does;
# 2. turn text into token ids and back;
# 3. read the model's logits for the next token and turn them into probabilities;
# 4. see how temperature reshapes those probabilities;
# 5. generate text greedily and stream it piece by piece.
#
# It runs in about ten seconds on a laptop CPU once the model is in the cache
# and Numba has compiled its kernels; the very first run compiles them and
# takes a minute longer.

# %%
# Versions: numbers in this notebook were produced with these.
import platform
import time

import matplotlib
import matplotlib.pyplot as plt
import numba
import numpy as np

import zigllama_lib as zl

print(f"python {platform.python_version()}, numpy {np.__version__}, "
      f"numba {numba.__version__}, matplotlib {matplotlib.__version__}, "
      f"zigllama_lib {zl.__version__}")

# %% [markdown]
# ## 1. Load the model
#
# `zl.load` takes a registry name or the path of a `.gguf` file. On first use
# a registry model is fetched into the cache (`$ZIGLLAMA_CACHE`, by default
# `~/.cache/zigllama`) and checked against its SHA-256 digest. After that,
# loading *memory-maps* the file: the operating system pages weights in as
# they are read, so nothing is copied and loading takes about a second.

# %%
t0 = time.perf_counter()
model = zl.load("smollm2-135m-instruct")
print(f"loaded in {time.perf_counter() - t0:.1f} s")

# %% [markdown]
# ## 2. Tokens
#
# The model never sees characters. A tokenizer (here byte-level BPE, the
# scheme of GPT-2 and Llama 3) cuts text into pieces from a fixed vocabulary
# and the model works on their integer ids. `add_special=True` adds the
# special tokens the model's GGUF metadata asks for, such as a
# beginning-of-sequence token.

# %%
prompt = "The capital of France is"
ids = model.tokenizer.encode(prompt, add_special=True)
for i in ids:
    print(f"{i:6d}  {model.tokenizer.decode([i])!r}")
print(f"{len(prompt)} characters -> {len(ids)} tokens")

# %% [markdown]
# Common words are single tokens, and a leading space belongs to the word that
# follows it (`' capital'`). Decoding the ids without special tokens gives the
# text back exactly:

# %%
plain = model.tokenizer.encode(prompt, add_special=False)
assert model.tokenizer.decode(plain) == prompt
print(model.tokenizer.decode(plain))

# %% [markdown]
# ## 3. Logits: the model's guess for the next token
#
# For every position the model returns one score, a *logit* $z_i$, per token in
# its vocabulary. `model.logits(ids)` has shape `(len(ids), n_vocab)`; row
# $t$ scores the token that follows the first $t+1$ tokens, so the last row is
# the guess for what comes after the prompt. The softmax turns scores into
# probabilities:
#
# $$
# p_i = \frac{e^{z_i}}{\sum_{j=1}^{V} e^{z_j}},
# $$
#
# where $V$ is the vocabulary size. Subtracting $\max_j z_j$ from every logit
# first changes nothing mathematically and keeps $e^{z}$ from overflowing.

# %%
logits = model.logits(ids)          # (len(ids), n_vocab)
print("logits shape:", logits.shape)

z = logits[-1].astype(np.float64)   # (n_vocab,) scores for the next token
probs = np.exp(z - z.max())         # (n_vocab,)
probs /= probs.sum()                # (n_vocab,) sums to 1

top5 = np.argsort(probs)[::-1][:5]
for k in top5:
    print(f"{probs[k]:7.2%}  {model.tokenizer.decode([int(k)])!r}")

# %%
labels = [repr(model.tokenizer.decode([int(k)])) for k in top5]
fig, ax = plt.subplots(figsize=(5.5, 2.6))
ax.barh(labels[::-1], probs[top5][::-1], color="tab:blue")
ax.set_xlabel("probability")
ax.set_title(f"Next token after {prompt!r}")
ax.set_xlim(0, 1)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Temperature
#
# Samplers divide the logits by a temperature $T$ before the softmax,
#
# $$
# p_i(T) = \frac{e^{z_i / T}}{\sum_{j} e^{z_j / T}}.
# $$
#
# $T < 1$ sharpens the distribution towards the most likely token, $T > 1$
# flattens it, and $T \to 0$ leaves all the mass on the top token: that limit
# is *greedy* decoding, which `temperature=0.0` selects.

# %%
def softmax_temperature(z, T):
    """Softmax of logits ``z`` (along the last axis) at temperature T > 0."""
    s = np.asarray(z, dtype=np.float64) / T
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


top10 = np.argsort(z)[::-1][:10]
labels10 = [repr(model.tokenizer.decode([int(k)])) for k in top10]
temperatures = (0.5, 1.0, 2.0)

fig, ax = plt.subplots(figsize=(7, 2.8))
width = 0.8 / len(temperatures)
for n, T in enumerate(temperatures):
    p = softmax_temperature(z, T)[top10]
    ax.bar(np.arange(10) + (n - 1) * width, p, width, label=f"T = {T}")
ax.set_xticks(np.arange(10), labels10, rotation=45, ha="right")
ax.set_ylabel("probability")
ax.set_title("The ten most likely next tokens at three temperatures")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The figure above is the static version (it is what the book shows). In
# JupyterLab, drag the slider to watch the distribution change:

# %%
import ipywidgets as widgets


def show_temperature(T=1.0):
    p = softmax_temperature(z, T)[top10]
    fig, ax = plt.subplots(figsize=(7, 2.6))
    ax.bar(labels10, p, color="tab:orange")
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability")
    ax.set_title(f"T = {T:.2f}: top token {p[0]:.1%}, these ten {p.sum():.1%}")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    plt.show()


slider = widgets.FloatSlider(value=1.0, min=0.1, max=3.0, step=0.1,
                             description="temperature T",
                             style={"description_width": "initial"})
widgets.interact(show_temperature, T=slider);

# %% [markdown]
# ## 5. Generate, one token at a time
#
# Generation repeats step 3: score the next token, pick one (greedy: the most
# likely), append it, repeat. `model.generate` yields text pieces as soon as
# they are complete, so you can print them while the model is still working.
# It keeps a cache of the attention keys and values, so each new token costs
# one position, not the whole sequence (layer 6 builds this).
#
# `model.logits` computes in plain floating point, while `generate` follows
# llama.cpp's 8-bit rounding of activations by default (the README's
# "Numerics" section), so on a close call the two can pick different tokens.

# %%
t0 = time.perf_counter()
pieces = []
for piece in model.generate(prompt, max_tokens=24, temperature=0.0):
    print(piece, end="", flush=True)
    pieces.append(piece)
elapsed = time.perf_counter() - t0
print(f"\n\n{len(pieces)} pieces in {elapsed:.1f} s")

# %% [markdown]
# ## Summary
#
# - `zl.load(name)` finds or fetches a GGUF file and memory-maps its weights.
# - `model.tokenizer.encode` / `decode` map text to token ids and back.
# - `model.logits(ids)` gives one row of scores per position; the softmax of
#   the last row is the model's distribution over the next token.
# - Temperature divides the logits before the softmax; `temperature=0.0` is
#   greedy decoding.
# - `model.generate` repeats the next-token step and streams text pieces.
#
# ## Exercises
#
# Each exercise has a code cell for your answer (a reference answer is filled
# in so the notebook runs top to bottom: replace it with your own) and a check
# cell that must run without an `AssertionError`.
#
# **Exercise 1.** Pick a sentence of your own, with a number, punctuation and a
# word in another language. How many tokens does it take? Check that decoding
# its ids gives the sentence back.

# %%
my_text = "In 1889, Gustave Eiffel finished his tower: « la dame de fer »."
my_ids = model.tokenizer.encode(my_text, add_special=False)
print(len(my_ids), "tokens:", [model.tokenizer.decode([i]) for i in my_ids])

# %%
# Check for exercise 1.
assert all(isinstance(i, (int, np.integer)) for i in my_ids)
assert model.tokenizer.decode(my_ids) == my_text, "round trip failed"

# %% [markdown]
# **Exercise 2.** Write `entropy(p)`, the entropy $H(p) = -\sum_i p_i \ln p_i$
# of a probability vector in nats (treat $0 \ln 0$ as $0$). Then find how the
# entropy of the next-token distribution changes with temperature: it should
# be $0$ for a one-hot vector, $\ln V$ for the uniform distribution, and grow
# with $T$.

# %%
def entropy(p):
    p = np.asarray(p, dtype=np.float64)
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


for T in (0.25, 0.5, 1.0, 2.0, 4.0):
    print(f"T = {T:4}: H = {entropy(softmax_temperature(z, T)):.3f} nats")

# %%
# Check for exercise 2.
V = z.shape[0]
one_hot = np.zeros(V)
one_hot[0] = 1.0
assert abs(entropy(one_hot)) < 1e-12
assert np.isclose(entropy(np.full(V, 1.0 / V)), np.log(V))
hs = [entropy(softmax_temperature(z, T)) for T in (0.25, 0.5, 1.0, 2.0, 4.0)]
assert all(a < b for a, b in zip(hs, hs[1:])), "entropy must grow with T"
assert np.isclose(hs[2], entropy(probs)), "at T = 1: the softmax of section 3"
print("all checks passed")
