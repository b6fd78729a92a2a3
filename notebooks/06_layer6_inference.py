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
# # Layer 6 - Inference: the generation loop, sampling, streaming
#
# Layers 1 to 5 built a function: token ids in, one row of logits per
# position out. Layer 6, `zigllama_lib.inference`, turns that function into a
# text generator. Three ideas do the work: a **loop** that feeds each new
# token back in while a **KV cache** keeps the work of earlier tokens; a
# **sampler** that turns logits into one token; and a **stream** that turns
# token bytes into printable text.
#
# **Objectives.** After this notebook you can
#
# 1. write the generation loop (prefill, then one token per step, stop rules)
#    with `Decoder.forward` and check it against `model.generate_ids`;
# 2. say why the KV cache turns quadratic work into linear work, count the
#    FLOPs, and measure it;
# 3. write temperature, top-k, top-p (nucleus) and min-p by hand and check them
#    against the library's filters, and read what the rest of llama.cpp's chain
#    (penalties, DRY, typical, top-n-sigma, XTC, dynamic temperature, Mirostat)
#    does to a real next-token choice;
# 4. check that a seeded sampler is reproducible and draws from the
#    distribution it claims;
# 5. stream UTF-8 text from tokens without ever splitting a character;
# 6. read a profile of a decode step and a prefill against this machine's
#    roofline, and check a fast kernel against its reference;
# 7. constrain generation with a grammar, and batch many requests into one
#    forward pass per step (continuous batching) without changing any of them.

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
from zigllama_lib.inference.sampler_chain import Sampler
from zigllama_lib.inference.sampling import (
    Candidates,
    SamplerConfig,
    min_p_filter,
    softmax,
    top_k_filter,
    top_p_filter,
)
from zigllama_lib.inference.streaming import Utf8Stream
from zigllama_lib.models.decoder import numerics_named
from zigllama_lib.viz.sampling import sampling_view
from zigllama_lib.viz.tokenizer import piece_label

print(f"python {platform.python_version()}, numpy {np.__version__}, "
      f"numba {numba.__version__}, matplotlib {matplotlib.__version__}, "
      f"zigllama_lib {zl.__version__}")

# %%
model = zl.load("smollm2-135m-instruct")
tok = model.tokenizer
print(model)

# %% [markdown]
# ## 1. The generation loop
#
# A decoder-only model scores the next token given all the tokens so far. To
# generate, score, pick a token, append it, and score again:
#
# ```text
# ids = tokenize(prompt)
# logits = forward(ids)              # prefill: the whole prompt in one pass, filling the KV cache
# repeat up to max_tokens:
#     t = pick(logits)               # greedy: argmax; or sample (section 3)
#     if t is end-of-generation: stop
#     emit t
#     logits = forward([t])          # decode: ONE new token, attending to the cache
# ```
#
# The KV cache (layer 4's `KVCache`) holds every layer's keys and values of
# the tokens already seen, so `forward([t])` only computes the new position:
# it reads `cache.n_past` to know where it is and appends its own keys and
# values. Here is the loop, written with nothing but `Decoder.forward`,
# greedy `np.argmax` and the tokenizer's end-of-generation test:

# %%
def generate_greedy(decoder, prompt_ids, max_tokens, numerics, is_eog, n_ctx=256):
    """Greedy decoding with a KV cache: prefill once, then one token per step."""
    cache = decoder.new_cache(n_ctx, numerics)
    logits = decoder.forward(prompt_ids, cache, numerics)[-1]  # (n_vocab,) for the last prompt position
    out = []
    for _ in range(max_tokens):
        token = int(np.argmax(logits))                         # greedy pick
        if is_eog(token):                                      # end of generation: stop, do not emit
            break
        out.append(token)
        if len(out) == max_tokens:
            break
        logits = decoder.forward([token], cache, numerics)[-1]  # one new position
    return out


prompt = "The capital of France is"
prompt_ids = tok.encode(prompt, add_special=True)
numerics = numerics_named(model.numerics)   # "llama.cpp": what model.generate uses by default

t0 = time.perf_counter()
mine = generate_greedy(model.decoder, prompt_ids, 20, numerics, tok.is_eog)
t_mine = time.perf_counter() - t0
print(f"{len(prompt_ids)} prompt tokens -> {len(mine)} new tokens in {t_mine:.1f} s")
print(repr(prompt + tok.decode(mine)))

# %% [markdown]
# The library's loop (`inference/generation.py`) does the same, plus the
# sampler and bookkeeping. With `temperature=0` its sampler is `argmax`, and
# both run the same numerics, so the tokens must be *identical*, not just
# close:

# %%
library = list(model.generate_ids(prompt_ids, max_tokens=20, temperature=0.0))
assert library == mine, (library, mine)
print("identical:", library == mine, "  library stats:",
      {k: model.last_stats[k] for k in ("n_prompt", "n_generated", "stop_reason")})

# %% [markdown]
# ## 2. What the KV cache saves
#
# **Counting FLOPs.** A matrix-vector product with an
# $n_\text{out} \times n_\text{in}$ matrix costs $2\, n_\text{out} n_\text{in}$ floating-point
# operations (one multiply and one add per weight). Every token goes through
# every weight matrix once, so with $P$ the number of weights in matrices
# (attention and feed-forward of every block, plus the output head; the
# embedding is a lookup, not a product) one token costs about
#
# $$
# F_\text{token} \approx 2P .
# $$
#
# Attention adds, for a token at position $t$, the scores $q \cdot k$ and the
# weighted sum of values over $t$ positions:
# $2 \cdot 2\, t\, n_\text{head} d_\text{head}$ per layer, small next to $2P$
# while $t$ is short.
#
# Generating $T$ tokens after a prompt of $n_0$ tokens:
#
# * **without a cache**, step $s$ recomputes all $n_0 + s$ tokens:
#   $\sum_{s=0}^{T-1} 2P\,(n_0+s) = 2P\left(T n_0 + \tfrac{T(T-1)}{2}\right)$,
#   quadratic in $T$;
# * **with a cache**, the prompt once, then each new token but the last once
#   (the first new token comes from the prompt's logits): $2P\,(n_0 + T - 1)$,
#   linear in $T$.
#
# For SmolLM2 the numbers are:

# %%
spec = model.spec
counts = model.decoder.parameter_counts()
head = spec.n_vocab * spec.d_model          # the output head (here tied: the embedding matrix reused)
P = counts["attention"] + counts["feed_forward"] + head
flops_token = 2 * P
print(f"P = {counts['attention']:,} (attention) + {counts['feed_forward']:,} (feed-forward) "
      f"+ {head:,} (head) = {P:,} weights")
print(f"F_token = 2P = {flops_token / 1e6:.0f} MFLOP per token")


def attention_flops(t):
    """Scores q.k and the weighted sum of values over t positions, all layers."""
    return spec.n_layer * 2 * 2 * t * spec.n_head * spec.head_dim_k


for t in (48, 2048):
    print(f"attention at position {t:5d}: {attention_flops(t) / 1e6:6.1f} MFLOP "
          f"({attention_flops(t) / flops_token:.1%} of 2P)")

n0, T = 8, 40
no_cache = 2 * P * (T * n0 + T * (T - 1) // 2)
with_cache = 2 * P * (n0 + T - 1)
print(f"n0 = {n0}, T = {T}: without cache {no_cache / 1e9:.0f} GFLOP, "
      f"with cache {with_cache / 1e9:.1f} GFLOP, ratio {no_cache / with_cache:.1f}")

# %% [markdown]
# **Measuring it.** We time one new token both ways as the sequence grows to
# 48 tokens: *with the cache*, one `forward([t])` after the first `n` tokens
# are cached; *without*, a fresh `forward` over all `n + 1` tokens (the last
# row is the same next-token prediction). We time the `"float"` numerics,
# the faster path for a many-token pass here. The clock is the CPU time this
# process uses (`time.process_time`, summed over its threads), not the wall
# clock, and we keep the best of a few repeats: other programs on a busy
# machine then disturb the measurement much less. First a check that the
# cache changes the cost, not the answer:

# %%
text = ("The history of computing is a story of people finding ways to make machines do "
        "arithmetic faster, and then finding new problems that need even more arithmetic. "
        "Every new machine made the next one possible, and every new problem made the "
        "machines that solved it look slow a few years later.")
seq = tok.encode(text, add_special=True)[:49]     # (49,) token ids
assert len(seq) == 49
fnum = numerics_named("float")
dec = model.decoder

cache = dec.new_cache(len(seq), fnum)
dec.forward(seq[:20], cache, fnum)
cached_row = dec.forward(seq[20:21], cache, fnum)[-1]                    # with the cache
fresh_row = dec.forward(seq[:21], dec.new_cache(21, fnum), fnum)[-1]     # recomputed
np.testing.assert_allclose(cached_row, fresh_row, atol=1e-3)
print("max |difference| of the logits:", float(np.abs(cached_row - fresh_row).max()))

# %%
def best_cpu_time(fn, repeats):
    """The least CPU time (seconds, all threads of this process) of ``repeats`` calls of fn."""
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


lengths = np.array([1, 8, 16, 24, 32, 40, 47])   # tokens already in the sequence

# with the cache: keys and values at position i depend only on tokens 0..i, so a
# cache filled with the first 48 tokens holds the cache of every shorter prefix;
# setting n_past = n rewinds it to n tokens, and forward appends token n.
cache = dec.new_cache(len(seq), fnum)
dec.forward(seq[:48], cache, fnum)
t_cached = []
for n in lengths.tolist():
    def step():
        cache.n_past = n
        dec.forward(seq[n:n + 1], cache, fnum)
    t_cached.append(best_cpu_time(step, 5))
t_cached = np.array(t_cached)

# without: a fresh forward over tokens 0..n
t_full = np.array([best_cpu_time(lambda: dec.forward(seq[:n + 1], dec.new_cache(n + 1, fnum), fnum), 3)
                   for n in lengths.tolist()])
for n, tc, tf in zip(lengths, t_cached, t_full):
    print(f"{n:3d} tokens cached: with cache {1e3 * tc:6.1f} ms, "
          f"recomputing {n + 1:2d} tokens {1e3 * tf:6.1f} ms")

# %%
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(lengths, 1e3 * t_cached, "o-", label="with the KV cache: one position")
ax.plot(lengths, 1e3 * t_full, "o-", label="without: recompute all n + 1 positions")
ax.set_xlabel("tokens already in the sequence, n")
ax.set_ylabel("CPU ms for the next token")
ax.set_ylim(0, None)
ax.set_title("CPU time for one new token (float numerics, best of a few runs)")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# With the cache the cost per token is about flat; recomputing grows with
# the length. It grows *less* than the FLOP count says (printed below): one
# decode step does little arithmetic per weight it reads, so a single token is
# limited by reading the weights from memory, while a many-token pass reuses
# each weight it reads for every token. The FLOP ratio is what matters for
# long sequences, where recomputing would also pay the attention over all
# pairs of positions.

# %%
n_last = lengths[-1]
recompute_flops = (n_last + 1) * flops_token + sum(attention_flops(t) for t in range(1, n_last + 2))
cached_flops = flops_token + attention_flops(n_last + 1)
print(f"at n = {n_last}: measured CPU time ratio {t_full[-1] / t_cached[-1]:.1f}, "
      f"FLOP ratio {recompute_flops / cached_flops:.1f}")

# %% [markdown]
# ## 3. Sampling
#
# Greedy decoding always takes the most likely token; it is repeatable but
# tends to loop and to sound flat. *Sampling* draws the next token at random
# from the model's distribution, after reshaping it. Here is that
# distribution after an open-ended prompt (the `"float"` logits of
# `model.logits`, the reference maths):

# %%
story = "Once upon a time, there was a"
z = model.logits(tok.encode(story, add_special=True))[-1]   # (n_vocab,) float32
p = np.exp(z.astype(np.float64) - z.max())
p /= p.sum()                                                # (n_vocab,) the model's p
order = np.lexsort((np.arange(len(z)), -p))                 # most likely first, lower id on ties
for i in order[:8]:
    print(f"{p[i]:6.2%}  {tok.decode([int(i)])!r}")
print(f"top 8 hold {p[order[:8]].sum():.1%}; tokens above 0.1%: {(p > 1e-3).sum()}")

# %% [markdown]
# No token is a clear winner and the tail is long: the many thousands of
# tokens that are each very unlikely still add up to a sizeable chance of
# picking one of them. The filters cut that tail. With logits $z_i$, probabilities
# $p_i = e^{z_i} / \sum_j e^{z_j}$ and $p_{(1)} \ge p_{(2)} \ge \dots$ the
# sorted probabilities:
#
# * **temperature** $T$: $q_i \propto e^{z_i / T}$. $T < 1$ sharpens,
#   $T > 1$ flattens, $T \to 0$ is greedy.
# * **top-k**: keep the $k$ most likely tokens.
# * **top-p** (nucleus): keep the smallest prefix of the sorted tokens whose
#   mass reaches $p_\text{top}$,
#
# $$
# n_\text{keep} = \min \Big\{ n : \sum_{i=1}^{n} p_{(i)} \ge p_\text{top} \Big\}.
# $$
#
# * **min-p**: keep the tokens at least $m$ times as likely as the best one,
#   $p_i \ge m \, p_{(1)}$. Since $p_i / p_{(1)} = e^{z_i - z_{\max}}$ this
#   is the logit test $z_i \ge z_{\max} + \ln m$.
#
# The library chains them as llama.cpp does: top-k, then top-p, then min-p
# (each on the renormalised distribution of the tokens still in play), then
# temperature on the survivors, then softmax and draw. So the temperature
# reshapes the kept tokens but never changes *which* are kept.
#
# Each filter by hand, on a probability vector where a removed token has
# probability 0 (each renormalises what is left first):

# %%
def by_rank(p):
    """Token ids, most likely first (lower id first on ties)."""
    return np.lexsort((np.arange(len(p)), -p))


def naive_top_k(p, k):
    keep = np.zeros(len(p), dtype=bool)
    keep[by_rank(p)[:k]] = True
    return np.where(keep & (p > 0), p, 0.0)


def naive_top_p(p, top_p):
    p = p / p.sum()
    ranked = by_rank(p)
    cum = np.cumsum(p[ranked])
    n_keep = int(np.argmax(cum >= top_p)) + 1   # the first prefix that reaches top_p
    keep = np.zeros(len(p), dtype=bool)
    keep[ranked[:n_keep]] = True
    return np.where(keep, p, 0.0)


def naive_min_p(p, m):
    p = p / p.sum()
    return np.where(p >= m * p.max(), p, 0.0)


def naive_temperature(z, kept, T):
    """q_i proportional to exp(z_i / T) over the kept tokens, 0 elsewhere."""
    s = np.where(kept, z.astype(np.float64) / T, -np.inf)
    q = np.exp(s - s.max())
    return q / q.sum()

# %% [markdown]
# The library's filters work on `Candidates` (token ids and their logits) and
# `softmax` fills in the probabilities of whatever is left. The kept sets
# must be the same, and the probabilities equal up to the library taking the
# exponentials in float32:

# %%
def library_kept(filtered):
    """(sorted kept ids, their probabilities renormalised)."""
    c = softmax(filtered)
    by_id = np.argsort(c.ids)
    return c.ids[by_id], c.probs[by_id]


def check(name, naive_p, filtered):
    ids, probs = library_kept(filtered)
    mine = np.flatnonzero(naive_p)
    assert np.array_equal(mine, ids), name
    np.testing.assert_allclose(naive_p[mine] / naive_p[mine].sum(), probs, rtol=1e-5)
    print(f"{name:12s} keeps {len(ids):5d} tokens, {p[ids].sum():6.1%} of p")


everything = Candidates.from_logits(z)
check("top-k 10", naive_top_k(p, 10), top_k_filter(everything, 10))
check("top-p 0.5", naive_top_p(p, 0.5), top_p_filter(everything, 0.5))
check("top-p 0.9", naive_top_p(p, 0.9), top_p_filter(everything, 0.9))
check("min-p 0.2", naive_min_p(p, 0.2), min_p_filter(everything, 0.2))
check("min-p 0.05", naive_min_p(p, 0.05), min_p_filter(everything, 0.05))

# the whole chain, llama.cpp's defaults: top-k 40, top-p 0.95, min-p 0.05, T = 0.8
chain = naive_min_p(naive_top_p(naive_top_k(p, 40), 0.95), 0.05)
q_mine = naive_temperature(z, chain > 0, 0.8)
c = Sampler(SamplerConfig(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)).candidates(z)
assert np.array_equal(np.flatnonzero(q_mine), np.sort(c.ids))
np.testing.assert_allclose(q_mine[c.ids], c.probs, rtol=1e-5)
print(f"default chain keeps {len(c)} tokens; the top one is drawn with q = {c.probs.max():.1%} "
      f"(p = {p[c.ids[np.argmax(c.probs)]]:.1%})")

# %% [markdown]
# **Which tokens each filter keeps.** One row per filter, one column per
# token (the 36 most likely), a dark cell where the token survives; the
# number of tokens each keeps is in brackets:

# %%
settings = {"top-k 10": naive_top_k(p, 10), "top-p 0.5": naive_top_p(p, 0.5),
            "min-p 0.2": naive_min_p(p, 0.2), "min-p 0.1": naive_min_p(p, 0.1),
            "default chain": chain}
shown = order[:36]
fig, (top, grid) = plt.subplots(2, 1, figsize=(7, 3.6), sharex=True, height_ratios=[1, 1.3])
top.bar(np.arange(len(shown)), p[shown], color="tab:blue")
top.set_ylabel("p")
top.set_title(f"Next token after {story!r}: which tokens each filter keeps", fontsize=9)
kept_grid = np.array([row[shown] > 0 for row in settings.values()])   # (n_filters, 36)
grid.imshow(kept_grid, aspect="auto", cmap="Blues", vmin=-0.3, vmax=1.2)
grid.set_yticks(np.arange(len(settings)), [f"{k} ({(v > 0).sum()})" for k, v in settings.items()], fontsize=7)
grid.set_xticks(np.arange(len(shown)), [piece_label(tok.token_bytes(int(i))) for i in shown],
                rotation=70, ha="right", fontsize=6, family="DejaVu Sans Mono")
fig.tight_layout()
plt.show()

# %% [markdown]
# top-k keeps a fixed *count* whatever the shape of the distribution; top-p
# keeps a fixed *mass*, so it keeps few tokens when the model is sure and
# many when it is not; min-p keeps tokens *relative to the best*, also
# adapting to the model's confidence. In the widget below, the bars are the
# model's $p$, blue if kept and grey if removed; the black ticks are the final
# probabilities $q$ the sampler draws with (after the temperature,
# renormalised over the kept tokens). Move the temperature and watch the
# ticks move while the colours stay.

# %%
sampling_view(z, tok, temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)

# %% [markdown]
# ## 3b. The rest of llama.cpp's chain
#
# llama.cpp runs more stages than those four. In its default order, each
# skipped when set to its "off" value (in brackets):
#
# ```text
# penalties -> DRY -> top-n-sigma -> top-k -> typical -> top-p -> min-p -> XTC -> temperature (dynamic) -> draw
# ```
#
# and with Mirostat on, only `temperature -> Mirostat`. With $c_i$ the count
# of token $i$ in the last $n$ tokens of the context and
# $p_i = \mathrm{softmax}(z)_i$ over the tokens still in play:
#
# * **repetition / frequency / presence penalties** (repeat $r = 1$, $\alpha_f = \alpha_p = 0$):
#   for every $i$ with $c_i > 0$, $z_i \leftarrow z_i / r$ if $z_i > 0$ else
#   $z_i \, r$, then $z_i \leftarrow z_i - c_i \alpha_f - \alpha_p$
#   (Keskar et al. 2019; OpenAI's API).
# * **DRY**, "don't repeat yourself" (multiplier $m = 0$): if the context
#   ends with a sequence of $L \ge L_\text{allowed}$ tokens that earlier
#   was followed by token $i$, then $z_i \leftarrow z_i - m \, b^{\,L - L_\text{allowed}}$;
#   sequence breakers (newline, `:`, `"`, `*`) cut the matches short.
# * **top-n-sigma** ($n \le 0$): keep $z_i \ge z_{\max} - n\,\sigma(z)$, with
#   $\sigma$ the standard deviation of the logits (Tang et al. 2024).
# * **locally typical** ($\tau = 1$): with the entropy
#   $H = -\sum_j p_j \ln p_j$, keep the tokens whose surprise $-\ln p_i$ is
#   closest to $H$, fewest first, until their mass exceeds $\tau$
#   (Meister et al. 2022).
# * **XTC**, exclude top choices (probability $0$): with probability $P$, if
#   at least two tokens have $p_i \ge$ threshold, remove all of them but the
#   least likely one: the obvious continuations go, one good one stays.
# * **dynamic temperature** (range $\delta = 0$): $T' = T_{\min} + (T_{\max} - T_{\min})\,(H / \ln N)^{\kappa}$
#   with $[T_{\min}, T_{\max}] = [T - \delta, T + \delta]$: a flat distribution
#   gets the hot end, a sure one the cold end.
# * **Mirostat 2.0** (off): keep the tokens of surprise $-\log_2 p_i \le \mu$,
#   draw, then steer $\mu \leftarrow \mu - \eta\,(s - \tau)$ with $s$ the drawn
#   token's surprise, so the text's average surprise settles at $\tau$ bits
#   (Basu et al. 2021; Mirostat 1.0 instead estimates the Zipf exponent and
#   picks a top-k). The tests check every stage against llama.cpp's own
#   sampler on the same logits, to the draw.
#
# Two of them by hand, on the story's logits, against the library's stages.
# Penalties need a context; take a prompt that repeats itself:

# %%
from zigllama_lib.inference.sampler_chain import Penalties, top_n_sigma_filter

echo = "The cat sat on the mat. The dog sat on the log. The cat sat on the"
echo_ids = tok.encode(echo, add_special=True)
z_echo = model.logits(echo_ids)[-1]                          # (n_vocab,) float32


def naive_penalties(z, context, r, freq, pres):
    z = z.astype(np.float64).copy()
    for i, c_i in zip(*np.unique(context, return_counts=True)):
        z[i] = z[i] / r if z[i] > 0 else z[i] * r
        z[i] -= c_i * freq + pres
    return z


def naive_top_n_sigma(z, n):
    return z >= z.max() - n * z.astype(np.float64).std()


penalties = Penalties(last_n=64, repeat=1.3, frequency=0.2, presence=0.4)
for t in echo_ids:
    penalties.accept(t)
z_pen = penalties(Candidates.from_logits(z_echo)).logits
np.testing.assert_allclose(z_pen, naive_penalties(z_echo, echo_ids, 1.3, 0.2, 0.4), rtol=1e-6, atol=1e-5)
kept_sigma = np.sort(top_n_sigma_filter(Candidates.from_logits(z), 2.0).ids)
assert np.array_equal(kept_sigma, np.flatnonzero(naive_top_n_sigma(z, 2.0)))
print(f"penalties agree on all {len(z_echo)} logits; top-n-sigma 2 keeps {len(kept_sigma)} tokens, as by hand")

# %% [markdown]
# What each stage does to the same next-token choice: after the echo prompt
# the model wants " cat" or " mat" again. One row per setting, the three
# tokens it is most likely to draw, with their final probabilities $q$:

# %%
from zigllama_lib.viz.sampling import sampling_table

stage_settings = {
    "default (top-k 40, top-p 0.95, min-p 0.05, T 0.8)": {},
    "repeat penalty 1.5": {"repeat_penalty": 1.5},
    "presence penalty 1.5": {"presence_penalty": 1.5},
    "DRY multiplier 0.8": {"dry_multiplier": 0.8},
    "typical-p 0.5": {"typical_p": 0.5},
    "top-n-sigma 1 (alone)": {"top_n_sigma": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0},
    "XTC p=1, threshold 0.05": {"xtc_probability": 1.0, "xtc_threshold": 0.05},
    "dynamic T, range 0.5": {"dynatemp_range": 0.5},
    "Mirostat 2 (tau 5)": {"mirostat": 2},
}
for label, extra in stage_settings.items():
    t = sampling_table(z_echo, history=echo_ids, tokenizer=tok, **extra)
    best = np.argsort(-t.q, kind="stable")[:3]
    shown = ", ".join(f"{tok.decode([int(i)])!r} {t.q[i]:.0%}" for i in best)
    print(f"{label:50s} keeps {t.n_kept:3d}: {shown}")

# %% [markdown]
# The penalties push every token of the context down, so " cat" and " mat"
# give way to " bed"; DRY removes only " mat", the one token that would
# continue a repeat of "The cat sat on the", and leaves " cat" alone; XTC
# throws out every likely choice but one; Mirostat at its starting
# $\mu = 2\tau$ keeps every token of surprise under 10 bits.
#
# **Mirostat's feedback loop.** Generating 100 tokens with Mirostat 2.0 at
# $\tau = 3$ bits (temperature 1.5 before it, so the model alone would be more
# surprising than that): the surprise of each drawn token jumps about, and its
# running mean settles near $\tau$ as $\mu$ adapts:

# %%
miro = Sampler(SamplerConfig(mirostat=2, mirostat_tau=3.0, mirostat_eta=0.1, temperature=1.5, seed=11))
miro_cache = model.decoder.new_cache(256, numerics)
logits = model.decoder.forward(tok.encode("Once upon a time, in a small village,", add_special=True),
                               miro_cache, numerics)[-1]
mus = []
for _ in range(100):
    token = miro(logits)
    mus.append(miro.mirostat.mu)
    logits = model.decoder.forward([token], miro_cache, numerics)[-1]
surprise = np.array(miro.mirostat.surprises)                     # (100,) bits of each drawn token
running = np.cumsum(surprise) / np.arange(1, len(surprise) + 1)
late_mean = float(surprise[40:].mean())
print(f"mean surprise of tokens 40-100: {late_mean:.2f} bits (tau = 3)")
assert abs(late_mean - 3.0) < 0.5

fig, ax = plt.subplots(figsize=(7, 2.8))
ax.plot(surprise, ".", color="#999999", label="surprise of each drawn token")
ax.plot(running, color="tab:blue", label="running mean")
ax.plot(mus, color="tab:orange", label="mu (the cut-off)")
ax.axhline(3.0, color="black", linestyle="--", linewidth=1, label="tau = 3")
ax.set_xlabel("generated token")
ax.set_ylabel("bits")
ax.set_ylim(0, 12)
ax.legend(fontsize=7, ncol=2)
ax.set_title("Mirostat 2.0 steers the average surprise to tau", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# **The playground.** Every stage under its own control, on the echo
# prompt's real logits (the penalties and DRY look back over its tokens).
# The tabs group the stages; every control starts at llama.cpp's default,
# which for all but the first four is "off". Turn on DRY and watch " mat"
# go grey; raise the repeat penalty and watch the whole context sink:

# %%
from zigllama_lib.viz.sampling import sampler_playground

sampler_playground(z_echo, tok, history=echo_ids)

# %% [markdown]
# ## 3c. Strategies that look further than one distribution
#
# Two strategies choose a token from more than the model's next-token
# distribution (`zigllama_lib.inference.strategies`; on the command line
# `zigllama generate --penalty-alpha A` and `--cfg-negative-prompt TEXT`):
#
# * **contrastive search** (Su et al. 2022) runs each of the $k$ most likely
#   tokens $v$ one step further and scores
#   $(1 - \alpha)\, p(v) - \alpha \max_{j} \cos(h_v, h_j)$, the model's
#   confidence minus how much the new hidden state $h_v$ resembles one already
#   in the text. The $k$ candidates are $k$ forks of the sequence in a paged
#   cache, run as one batch.
# * **classifier-free guidance** (Sanchez et al. 2023) runs the prompt and a
#   negative prompt side by side and samples from
#   $\log p(x \mid \text{neg}) + \gamma\,(\log p(x \mid \text{prompt}) - \log p(x \mid \text{neg}))$.
#
# Greedy search on a list-like prompt soon repeats itself; the share of
# distinct 3-token windows in the output measures it:

# %%
from zigllama_lib.inference.strategies import cfg_steps, contrastive_search


def distinct_trigrams(ids):
    grams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
    return len(set(grams)) / max(1, len(grams))


list_prompt = tok.encode("My favourite fruits are apples, bananas,", add_special=True)
greedy_ids = list(model.generate_ids(list_prompt, max_tokens=40, temperature=0))
contrastive_ids = [s.token for s in contrastive_search(model.decoder, list_prompt, numerics, 256, tok.is_eog,
                                                       max_tokens=40, k=4, alpha=0.6)]
zero_alpha_ids = [s.token for s in contrastive_search(model.decoder, list_prompt, numerics, 256, tok.is_eog,
                                                      max_tokens=40, k=4, alpha=0.0)]
assert zero_alpha_ids == greedy_ids, "alpha = 0 is greedy search"
for name, ids in (("greedy", greedy_ids), ("contrastive k=4 alpha=0.6", contrastive_ids)):
    print(f"{name:26s} distinct 3-grams {distinct_trigrams(ids):4.0%}: {tok.decode(ids)!r}")

guided = [s.token for s in cfg_steps(model.decoder, tok.encode("Write about the sea:", add_special=True),
                                     tok.encode("Write about a city:", add_special=True),
                                     Sampler(SamplerConfig(temperature=0)), numerics, 256, tok.is_eog,
                                     gamma=3.0, max_tokens=24)]
print(f"guided (gamma 3, away from 'a city'): {tok.decode(guided)!r}")

# %% [markdown]
# ## 4. Seeded sampling, and does it draw what it claims?
#
# A sampler owns a random generator: C++'s `std::mt19937` seeded with the
# seed, as llama.cpp's is, so a seeded draw here picks the token llama.cpp
# picks on the same logits. The same seed, the same prompt and the same
# numerics give the same text; another seed gives another text.

# %%
def sampled(seed):
    return model.complete(story, max_tokens=16, temperature=0.8, seed=seed)


first, again, other = sampled(42), sampled(42), sampled(7)
print("seed 42:", repr(first))
print("seed 42:", repr(again))
print("seed  7:", repr(other))
assert first == again

# %% [markdown]
# Reproducible is not the same as *right*. To check the sampler draws from the
# distribution it claims, draw many times from one logits vector and compare
# the counts $O_j$ with the expected counts $E_j = N q_j$ using Pearson's
# chi-square statistic
#
# $$
# X^2 = \sum_{j=1}^{K} \frac{(O_j - E_j)^2}{E_j} .
# $$
#
# If the draws follow $q$, $X^2$ follows (approximately, with every $E_j$ at
# least about 5) a chi-square distribution with $K - 1$ degrees of freedom:
# mean $K-1$, and above the 0.1% critical value only once in a thousand runs.
# We use $N = 1000$ draws with top-k 10 and $T = 0.5$, and predict $q$
# independently with `naive_temperature`.

# %%
N, K, T_draw = 1000, 10, 0.5
sampler = Sampler(SamplerConfig(temperature=T_draw, top_k=K, top_p=1.0, min_p=0.0, seed=0))
ids_k = order[:K]                                               # the 10 most likely tokens
q_pred = naive_temperature(z, np.isin(np.arange(len(z)), ids_k), T_draw)[ids_k]
draws = np.array([sampler(z) for _ in range(N)])
observed = np.array([(draws == i).sum() for i in ids_k])
assert observed.sum() == N, "every draw is one of the 10 kept tokens"


def chi_square(observed, q):
    expected = len(draws) * q
    return float(((observed - expected) ** 2 / expected).sum())


CHI2_999_DF9 = 27.877   # chi-square 0.999 quantile for 9 degrees of freedom, from tables
x2 = chi_square(observed, q_pred)
print(f"X^2 = {x2:.1f} with {K - 1} degrees of freedom (mean {K - 1}, 0.1% critical value {CHI2_999_DF9})")
assert x2 < CHI2_999_DF9

# the same counts against wrong claims: other temperatures than 0.5
for T_claim in (0.45, 0.55, 0.7, 1.0):
    q_claim = naive_temperature(z, np.isin(np.arange(len(z)), ids_k), T_claim)[ids_k]
    print(f"against T = {T_claim}: X^2 = {chi_square(observed, q_claim):5.1f}")
q_wrong = naive_temperature(z, np.isin(np.arange(len(z)), ids_k), 1.0)[ids_k]
x2_wrong = chi_square(observed, q_wrong)
assert x2_wrong > CHI2_999_DF9, "T = 1 is far enough from 0.5 for 1000 draws to tell"

# %%
fig, ax = plt.subplots(figsize=(7, 3))
x = np.arange(K)
ax.bar(x, observed / N, color="tab:blue", label=f"observed share of {N} seeded draws")
ax.plot(x, q_pred, "k_", markersize=18, markeredgewidth=2, label=f"predicted q (T = {T_draw}, top-k {K})")
ax.plot(x, q_wrong, "_", color="tab:red", markersize=18, markeredgewidth=2, label="a wrong claim: T = 1")
ax.set_xticks(x, [piece_label(tok.token_bytes(int(i))) for i in ids_k], rotation=30, ha="right",
              fontsize=8, family="DejaVu Sans Mono")
ax.set_ylabel("share")
ax.set_title(f"X^2 = {x2:.1f} against the prediction, {x2_wrong:.1f} against T = 1", fontsize=9)
ax.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# The test has limits: with 1000 draws each count wobbles by about
# $\sqrt{E_j}$, so a sampler that was off by a little (a temperature of 0.45
# or 0.55 instead of 0.5, printed above) can pass, while $T = 1$ fails by far.
# More draws make the test sharper: the wobble grows like $\sqrt{N}$, a real
# difference like $N$.
#
# ## 5. Streaming text without splitting characters
#
# A token is a string of *bytes*, and byte-level BPE happily cuts a
# multi-byte UTF-8 character across tokens: an emoji is 4 bytes and often 2
# or 3 tokens. Decoding each token on its own prints replacement characters
# `�`. `Utf8Stream` holds back the bytes of an unfinished character until the
# rest arrives (the lead byte of a UTF-8 character says how many bytes it
# has), so every piece it returns is whole text.

# %%
phrase = "Ça coûte 3 € au café 🦙🙂"
phrase_ids = tok.encode(phrase, add_special=False)
stream = Utf8Stream()
pieces, one_by_one = [], []
print(f"{'id':>6}  {'token bytes':24} {'decoded alone':14} {'streamed':10} held back")
for i in phrase_ids:
    raw = tok.token_bytes(i)
    alone = raw.decode("utf-8", errors="replace")
    piece = stream.push(raw)
    one_by_one.append(alone)
    pieces.append(piece)
    print(f"{i:6d}  {raw.hex(' '):24} {alone!r:14} {piece!r:10} {stream.pending.hex(' ')}")
pieces.append(stream.flush())

assert "".join(pieces) == phrase
assert all("\ufffd" not in s for s in pieces), "a streamed piece split a character"
print("decoded one by one:", repr("".join(one_by_one)))
print("streamed:          ", repr("".join(pieces)))

# %% [markdown]
# `model.generate` streams its tokens through the same `Utf8Stream`, which is
# why the quick start could print pieces as they came.

# %% [markdown]
# ## 6. Where the time goes
#
# A decode step multiplies one token's activations by *every* weight of the
# model: for SmolLM2 that is 96 MB of GGUF bytes read from memory per token,
# for about $2P \approx 270$ MFLOP of arithmetic, some 3 FLOPs per byte. A CPU
# core does tens of GFLOP/s but memory delivers tens of GB/s, so the ceiling
# of decode speed is set by bandwidth:
#
# $$\text{tok/s} \le \frac{\text{read bandwidth (B/s)}}{\text{weight bytes per token}}.$$
#
# `zigllama_lib.inference.profile` measures this machine (read bandwidth, a
# dot-product peak, the cost of a parallel launch), times every operation of
# a decode step and of a prefill, and reports each matrix product's GB/s and
# GFLOP/s -- the points of a *roofline* plot. (The same run from a shell:
# `zigllama profile`.) The per-operation times come from the layer-by-layer
# path; the production decode step runs the same operations fused into one
# compiled call, shown as "unprofiled".

# %%
from zigllama_lib.inference import profile as prof
from zigllama_lib.viz.profile import plot_roofline, plot_step_breakdown, profile_view

run = prof.run(model, n_prompt=32, n_decode=8, reps=1)
step = run["decode"]
print(f"decode step: {step['unprofiled_s'] * 1e3:.1f} ms fused, {step['total_s'] * 1e3:.1f} ms layer by layer")
print(prof.ceiling_statement(run["ceiling"]))
# the ceiling by hand: bandwidth over the bytes of every matrix a decode step reads
bw = run["machine"]["bandwidth_b_s"][str(run["n_threads"])]
weight_bytes = sum(r["gguf_bytes"] for r in run["decode_matmuls"])
assert weight_bytes == sum(prof.weight_bytes(w) for lw in model.decoder.layers
                           for w in (lw.wq, lw.wk, lw.wv, lw.wo, lw.w_gate, lw.w_up, lw.w_down)) \
    + prof.weight_bytes(model.decoder.output)
np.testing.assert_allclose(run["ceiling"]["ceiling_tok_s"], bw / weight_bytes)
# the operations (and "other") add up to the step
np.testing.assert_allclose(sum(r["seconds"] for r in step["ops"]), step["total_s"], rtol=1e-9)

# %%
fig = plot_step_breakdown(run, "decode")
plt.show()
fig = plot_roofline(run)
plt.show()

# %%
profile_view(run)

# %% [markdown]
# ### The fast path and its reference
#
# Every fast kernel has a readable reference beside it, and the tests hold one
# to the other. The decode step above runs `ggml_simd`'s dot products (llama.cpp's
# AVX2 instructions written as LLVM vector code, reading the GGUF rows in
# place) inside one compiled call per token (`models.fused_decode`). The
# reference is `ggml_exact.matmul_ggml` (one scalar at a time, in llama.cpp's
# order) driven layer by layer from Python. Same bits, very different speed:

# %%
from zigllama_lib.linear_algebra.ggml_exact import matmul_ggml
from zigllama_lib.linear_algebra.ggml_simd import matmul_simd

w = model.decoder.layers[0].w_gate
x = np.random.default_rng(0).standard_normal(w.n_in).astype(np.float32)
assert np.array_equal(matmul_simd(w, x), matmul_ggml(w, x))  # bit for bit


def best_time(fn, n=20):
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


t_ref, t_simd = best_time(lambda: matmul_ggml(w, x)), best_time(lambda: matmul_simd(w, x))
print(f"ffn_gate {w.n_out}x{w.n_in}: scalar reference {t_ref * 1e6:.0f} us, SIMD {t_simd * 1e6:.0f} us "
      f"({t_ref / t_simd:.1f}x)")

nm = numerics_named("llama.cpp")
dec = model.decoder
story_ids = tok.encode("Once upon a time", add_special=True)


def decode_steps(fused, n=8):
    dec.fused_decode = fused
    cache = dec.new_cache(len(story_ids) + n, nm)
    dec.forward(story_ids, cache, nm)
    out, t0 = [], time.perf_counter()
    for i in range(n):
        out.append(dec.forward([story_ids[-1] + i], cache, nm)[0])
    dec.fused_decode = True
    return np.stack(out), (time.perf_counter() - t0) / n


fused_logits, t_fused = decode_steps(True)
plain_logits, t_plain = decode_steps(False)
assert np.array_equal(fused_logits, plain_logits)  # the fused step is the layer-by-layer step, bit for bit
print(f"decode step: layer by layer {t_plain * 1e3:.1f} ms, fused {t_fused * 1e3:.1f} ms")

# %% [markdown]
# ## 6b. Constrained decoding: a grammar as a token mask
#
# A GBNF grammar (llama.cpp's format) says which texts are allowed. Before each
# draw, the matcher sets the logit of every token whose characters the grammar
# cannot accept next to $-\infty$; after the draw it advances past the token.
# End-of-generation is allowed only where the grammar may end. A JSON Schema
# becomes such a grammar (`json_schema_to_gbnf`), so the output always parses:

# %%
import json

from zigllama_lib.inference.json_schema import json_schema_to_gbnf

schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                           "population": {"type": "integer", "minimum": 0}},
          "required": ["city", "population"]}
gbnf = json_schema_to_gbnf(schema)
print(gbnf)
text = "".join(model.generate("The largest city of France as JSON:", max_tokens=48, temperature=0.0, grammar=gbnf))
print(text)
print(json.loads(text))

# %% [markdown]
# How much of the vocabulary the mask leaves at each step of that answer: inside a
# string almost every token is allowed; at a key or a digit, very few are.

# %%
matcher = model.grammar_matcher(gbnf)
ids = model.tokenizer.encode(text, add_special=False)
allowed = []
for t in ids:
    allowed.append(int(matcher.allowed_mask().sum()))
    matcher.accept(t)
fig, ax = plt.subplots(figsize=(8, 2.5))
ax.bar(range(len(allowed)), allowed)
ax.set_yscale("log")
ax.set_xticks(range(len(ids)), [repr(model.tokenizer.token_bytes(t).decode("utf-8", "replace"))[1:-1] for t in ids],
              rotation=90, fontsize=7)
ax.set_ylabel("tokens allowed")
ax.set_title("grammar mask per step")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 6c. Continuous batching: many requests, one forward pass per step
#
# A decode step reads every weight to produce one token, so it is bound by
# memory bandwidth (section 6). With $n$ requests decoding at once, one forward
# pass multiplies the weights by an $(n, d_{model})$ batch: the weights are read
# once for $n$ tokens. `ContinuousBatcher` (Orca's continuous batching over
# vLLM-style paged KV blocks, layer 4's `PagedKVCache`) admits waiting requests
# and retires finished ones at every step, so a short request never waits for a
# long one. Six requests of different lengths, at most four at a time:

# %%
from zigllama_lib.inference.batching import BatchRequest, ContinuousBatcher
from zigllama_lib.inference.generation import GenerationConfig, generate_steps, make_sampler

NM = numerics_named("llama.cpp")
texts = ["The capital of France is", "Once upon a time", "def fib(n):", "Water boils at",
         "The quick brown fox", "In 1492, Columbus"]
lengths = [6, 14, 10, 4, 12, 8]
batcher = ContinuousBatcher(model.decoder, NM, n_ctx=256, max_batch=4)
seqs = [batcher.submit(BatchRequest(tok.encode(t), make_sampler(0.0, 40, 0.95, 0.05, None), n, tok.is_eog,
                                    stop_at_eog=False)) for t, n in zip(texts, lengths)]
timeline = []  # per step: each sequence's state: 0 waiting, 1 prefill, 2 decode, 3 done
tokens = {s: [] for s in seqs}
while not batcher.idle:
    before = {s: (s.n_prefilled, s.n_generated) for s in seqs}
    for e in batcher.step():
        if e.step is not None:
            tokens[e.seq].append(e.step.token)
    row = []
    for s in seqs:
        if s.n_prefilled > before[s][0]:
            row.append(1)  # read (part of) its prompt this step
        elif s.n_generated > before[s][1]:
            row.append(2)  # got a token from the batched decode
        else:
            row.append(3 if s.done else 0)
    timeline.append(row)

# each request's tokens are those it gets alone, bit for bit
for s, t, n in zip(seqs, texts, lengths):
    alone = [st.token for st in generate_steps(model.decoder, tok.encode(t), make_sampler(0.0, 40, 0.95, 0.05, None),
                                               NM, 256, tok.is_eog, GenerationConfig(max_tokens=n, stop_at_eog=False))]
    assert tokens[s] == alone

fig, ax = plt.subplots(figsize=(8, 2.6))
cmap = matplotlib.colors.ListedColormap(["#dddddd", "#f4a259", "#5b8e7d", "white"])
ax.imshow(np.array(timeline).T, aspect="auto", cmap=cmap, vmin=0, vmax=3, interpolation="nearest")
ax.set_yticks(range(len(texts)), [f"{t[:18]}... ({n})" for t, n in zip(texts, lengths)], fontsize=8)
ax.set_xlabel("scheduler step")
ax.set_title("grey: waiting, orange: prefill, green: decode (at most 4 at once)")
plt.tight_layout()
plt.show()

# %% [markdown]
# What a batched step costs, against one stream. The count is exact: the
# weights are read once per step, so bytes of weights read per generated token
# fall as $1/n$. The timing is the best of three runs (a busy machine only
# makes runs slower), so the curve is robust; `zigllama bench-batch --vs
# llama.cpp` measures the same against llama.cpp's own batched decoding (its
# figures are in the README).

# %%
from pathlib import Path

from zigllama_lib.inference.bench_batch import batch_prompts, decode_seconds_ours

weight_bytes = Path(model.path).stat().st_size  # the GGUF file: the weights, almost all of it
ns, tok_s = [1, 2, 4, 8], []
for n in ns:
    prompts = batch_prompts(tok, n)
    decode_seconds_ours(model, prompts, 2, "llama.cpp")  # compile the n-row kernels once
    best = min(decode_seconds_ours(model, prompts, 16, "llama.cpp") for _ in range(3))
    tok_s.append(n * 16 / best)
fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3))
a1.plot(ns, tok_s, "o-")
a1.set_xlabel("sequences decoding together")
a1.set_ylabel("aggregate tokens/s (best of 3)")
a2.plot(ns, [weight_bytes / n / 1e6 for n in ns], "o-", color="C1")
a2.set_xlabel("sequences decoding together")
a2.set_ylabel("MB of weights read per token")
plt.tight_layout()
plt.show()
print("tokens/s:", {n: round(t) for n, t in zip(ns, tok_s)}, f"-> {tok_s[-1] / tok_s[0]:.2f}x at 8")

# %% [markdown]
# ## 7. Which llama.cpp we agree with
#
# The `"llama.cpp"` numerics mirror one build, **llama.cpp 0.3.36, x86-64 AVX2
# build** (`scripts/install_oracle.sh` builds and installs it). What pip builds
# on your own machine is a *native* build: on an AVX-512 CPU its float code takes
# other paths and rounds differently, and the 8-bit path turns those last-bit
# differences into other tokens after a while. `parity_report` runs a llama.cpp
# build in a child process and compares logits and greedy tokens with ours
# (`zigllama parity --llama-cpp native` does the same for a native build):

# %%
import importlib.util

from zigllama_lib.inference.llama_cpp_builds import format_parity, parity_report

if importlib.util.find_spec("llama_cpp") is not None:
    report = parity_report(model, "installed", prompts=["The capital of France is", "Water boils at"], n_greedy=16)
    print(format_parity(report))
else:
    print("llama-cpp-python is not installed here: scripts/install_oracle.sh installs the pinned build")

# %% [markdown]
# How it compares with llama.cpp on this machine, and the seed's "Performance
# Highlights" measured here, come from two commands (their output is in the
# README):
#
#     zigllama bench --vs llama.cpp --threads 2 --reps 5
#     zigllama bench --highlights

# %% [markdown]
# ## Summary
#
# - Generation is a loop: prefill the prompt once, then one `forward` per new
#   token, stopping at an end-of-generation token or `max_tokens`. Written by
#   hand with `Decoder.forward` and `argmax`, it gives exactly the tokens of
#   `model.generate_ids(..., temperature=0)`.
# - The KV cache makes each step cost one position: about $2P$ FLOPs per
#   token instead of $2P$ times the sequence length, so generation is linear,
#   not quadratic, in its length.
# - Sampling reshapes the distribution and draws from it: top-k keeps a count,
#   top-p a mass, min-p a ratio to the best token; the temperature then
#   reshapes the survivors. Penalties and DRY look back at the context, XTC
#   removes the obvious choices, Mirostat steers the average surprise.
#   `Sampler.candidates` shows exactly what a draw will choose from.
# - A seed makes sampling reproducible, and a chi-square test checks that the
#   draws follow the claimed probabilities.
# - `Utf8Stream` cuts a byte stream only between characters.
# - Decode reads every weight once per token, so memory bandwidth sets its
#   ceiling; the profile shows where a step's time goes and how close each
#   product gets to the roofline. Fast kernels stay bit-identical to their
#   readable references.
#
# ## Exercises
#
# Each exercise has an answer cell (a reference answer is filled in, replace
# it with your own) and a check cell.
#
# **Exercise 1.** Argue that with `top_k=1` the sampler is greedy at *any*
# temperature, then write `sample_top1(z, T, seed)` that samples one token
# with `top_k=1` (other filters off) and confirm it on the story's logits
# for several temperatures and seeds.

# %%
def sample_top1(z, T, seed):
    # top-k 1 leaves one candidate; the temperature only rescales its logit,
    # and a softmax over one token gives it probability 1.
    return Sampler(SamplerConfig(temperature=T, top_k=1, top_p=1.0, min_p=0.0, seed=seed))(z)


# %%
# Check for exercise 1.
for T in (0.1, 0.8, 1.0, 3.0, 100.0):
    for seed in range(5):
        assert sample_top1(z, T, seed) == int(np.argmax(z)), (T, seed)
print("top-k 1 is greedy at every temperature tried")

# %% [markdown]
# **Exercise 2.** The most likely token has probability $p_{(1)} = 0.4$ and
# `min_p = 0.1`. What is the probability threshold, and how many tokens of
# `p_hand` below does min-p keep? Work it out by hand, then write the numbers.

# %%
p_hand = np.array([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02])
threshold = 0.4 * 0.1     # p_i >= min_p * p_max
n_kept_min_p = 5          # 0.4, 0.25, 0.15, 0.1, 0.05 are >= 0.04; 0.03 and 0.02 are not

# %%
# Check for exercise 2.
assert math.isclose(threshold, 0.04)
assert n_kept_min_p == int((p_hand >= 0.04).sum())
assert n_kept_min_p == len(min_p_filter(Candidates.from_logits(np.log(p_hand)), 0.1))
print(f"threshold {threshold:g} keeps {n_kept_min_p} tokens")

# %% [markdown]
# **Exercise 3.** For the same `p_hand`, how many tokens does top-p keep with
# `top_p` = 0.5, 0.75 and 0.85? Add the sorted probabilities until the sum
# reaches `top_p`; the token that crosses it is kept.

# %%
n_kept_top_p = {0.5: 2, 0.75: 3, 0.85: 4}   # cumulative sums 0.4, 0.65, 0.8, 0.9, ...

# %%
# Check for exercise 3.
cumulative = np.cumsum(np.sort(p_hand)[::-1])
for top_p, n in n_kept_top_p.items():
    assert cumulative[n - 1] >= top_p and (n == 1 or cumulative[n - 2] < top_p), top_p
    assert len(top_p_filter(Candidates.from_logits(np.log(p_hand)), top_p)) == n, top_p
print("top-p counts:", n_kept_top_p)
