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
# # Layer 5 - Models: architecture from metadata, the tokenizer, the decoder
#
# Layers 1 to 4 gave us a GGUF reader, quantised matrix products, the neural
# primitives and attention. Layer 5, `zigllama_lib.models`, puts them together
# into a model: it reads *what* network a file holds from its metadata, turns
# text into token ids, and runs the decoder that maps ids to logits. This
# notebook opens each of those three pieces on the real SmolLM2-135M-Instruct.
#
# **Objectives.** After this notebook you can
#
# 1. read a model's architecture (layers, widths, heads) from its GGUF metadata
#    and check it against `model.spec`;
# 2. count the parameters and bytes of each part of the model from its tensor
#    table, and say what *tied embeddings* save;
# 3. explain byte-level BPE (byte map, pre-tokenizer, merges by rank) and
#    write a BPE loop that gives the library's tokens exactly;
# 4. run the decoder one layer at a time, watch the hidden state grow, and
#    reproduce `model.logits`;
# 5. render a conversation through the model's chat template and see its
#    special tokens.
#
# It runs in well under a minute on a laptop CPU once the model is in the
# cache and Numba has compiled its kernels.

# %%
# Versions: numbers in this notebook were produced with these.
import platform

import matplotlib
import matplotlib.pyplot as plt
import numba
import numpy as np

import zigllama_lib as zl

print(f"python {platform.python_version()}, numpy {np.__version__}, "
      f"numba {numba.__version__}, matplotlib {matplotlib.__version__}, "
      f"zigllama_lib {zl.__version__}")

# %%
model = zl.load("smollm2-135m-instruct")
md = model.gguf.metadata  # the GGUF key/value metadata, a dict
print(model)

# %% [markdown]
# ## 1. The architecture is data
#
# A GGUF file says which network it holds: `general.architecture` names the
# family (`llama` here), and keys prefixed with that name give the sizes. No
# size is written in the library's code; the same decoder runs any model of a
# supported family. Families differ in data too: with a sliding window
# (`{arch}.attention.sliding_window`), Mistral windows every layer, Gemma 3
# five layers of six (every sixth is global). The keys llama.cpp defines for a
# llama-family model:

# %%
arch = md["general.architecture"]
for key, value in md.items():
    if key.startswith(arch + "."):
        print(f"{key:42s} {value}")

# %% [markdown]
# From these we derive the rest. With model width $d$ and $n_h$ query heads,
# each head has $d_h = d / n_h$ dimensions. Grouped-query attention (GQA) lets
# $g = n_h / n_{kv}$ query heads share one key/value head, so the key and value
# projections have only $n_{kv} d_h$ outputs:
#
# $$
# d_h = \frac{d}{n_h}, \qquad g = \frac{n_h}{n_{kv}}, \qquad
# W_Q \in \mathbb{R}^{(n_h d_h) \times d}, \quad W_K, W_V \in \mathbb{R}^{(n_{kv} d_h) \times d}.
# $$
#
# Our own reading of the metadata, done by hand:

# %%
naive_spec = {
    "arch": arch,
    "n_layer": md[f"{arch}.block_count"],
    "d_model": md[f"{arch}.embedding_length"],
    "n_head": md[f"{arch}.attention.head_count"],
    "n_kv_head": md[f"{arch}.attention.head_count_kv"],
    "d_ff": md[f"{arch}.feed_forward_length"],
    "n_vocab": len(md["tokenizer.ggml.tokens"]),
    "n_ctx_train": md[f"{arch}.context_length"],
    "rope_base": md[f"{arch}.rope.freq_base"],
    "norm_eps": md[f"{arch}.attention.layer_norm_rms_epsilon"],
}
naive_spec["head_dim_k"] = naive_spec["d_model"] // naive_spec["n_head"]
for key, value in naive_spec.items():
    print(f"{key:12s} {value!s:>10}   model.spec: {getattr(model.spec, key)}")
    assert value == getattr(model.spec, key), key
print("GQA group size g =", model.spec.n_group)

# %% [markdown]
# The tensor shapes agree. GGUF writes shapes in ggml order, fastest-varying
# dimension first, so a matrix $W \in \mathbb{R}^{n_\text{out} \times n_\text{in}}$
# is listed as `(n_in, n_out)`:

# %%
d, d_h = model.spec.d_model, model.spec.head_dim_k
for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight",
             "blk.0.attn_output.weight", "blk.0.ffn_gate.weight", "blk.0.ffn_down.weight"):
    print(f"{name:26s} {model.gguf.tensors[name].shape}")
assert model.gguf.tensors["blk.0.attn_q.weight"].shape == (d, model.spec.n_head * d_h)
assert model.gguf.tensors["blk.0.attn_k.weight"].shape == (d, model.spec.n_kv_head * d_h)
assert model.gguf.tensors["blk.0.ffn_down.weight"].shape == (model.spec.d_ff, d)

# %% [markdown]
# ## 2. Anatomy: where the parameters are
#
# Every weight belongs to one of five parts. With vocabulary size $V$,
# feed-forward width $d_{ff}$ and $L$ blocks:
#
# $$
# \begin{aligned}
# P_\text{embedding} &= V d, \\
# P_\text{attention} &= L \left( d \cdot n_h d_h + 2\, d \cdot n_{kv} d_h + n_h d_h \cdot d \right)
#   && W_Q, W_K, W_V, W_O, \\
# P_\text{feed-forward} &= L \cdot 3\, d\, d_{ff} && W_\text{gate}, W_\text{up}, W_\text{down}, \\
# P_\text{norms} &= (2L + 1)\, d && \text{two RMSNorm weights per block, one final}, \\
# P_\text{output} &= V d \text{, or } 0 \text{ when tied.}
# \end{aligned}
# $$
#
# The output head maps the final hidden state back to $V$ logits. Small models
# often *tie* it to the embedding, reusing the same $V \times d$ matrix for
# both jobs, which saves $V d$ parameters. A tied GGUF file has no
# `output.weight` tensor.
#
# The naive count: walk the tensor table, put each tensor in a part by its name,
# add up its number of elements and its bytes in the file.

# %%
def part_of_tensor(name):
    if name.startswith("token_embd"):
        return "embedding"
    if name.startswith("output."):
        return "output"
    if "norm" in name:
        return "norms"
    if ".attn_" in name:
        return "attention"
    if ".ffn_" in name:
        return "feed_forward"
    return "other"


parts = ("embedding", "attention", "feed_forward", "norms", "output")
n_params = dict.fromkeys(parts, 0)
n_bytes = dict.fromkeys(parts, 0)
for name, info in model.gguf.tensors.items():
    n_params[part_of_tensor(name)] += int(np.prod(info.shape))
    n_bytes[part_of_tensor(name)] += info.n_bytes

total_params, total_bytes = sum(n_params.values()), sum(n_bytes.values())
print(f"{'part':13s} {'parameters':>12s} {'share':>6s} {'MB':>7s} {'share':>6s} {'bits/weight':>12s}")
for p in parts:
    bits = f"{8 * n_bytes[p] / n_params[p]:12.2f}" if n_params[p] else f"{'-':>12s}"
    print(f"{p:13s} {n_params[p]:12,d} {n_params[p] / total_params:6.1%} "
          f"{n_bytes[p] / 1e6:7.2f} {n_bytes[p] / total_bytes:6.1%} {bits}")
print(f"{'total':13s} {total_params:12,d} {'':6s} {total_bytes / 1e6:7.2f}")
print("has output.weight:", "output.weight" in model.gguf.tensors,
      "-> tied embeddings:", model.decoder.tied_embeddings)

# %% [markdown]
# The library counts the same way (`Decoder.parameter_counts`), and the
# formulas above give the same numbers from the spec alone:

# %%
s = model.spec
assert n_params == model.decoder.parameter_counts()
assert n_params["embedding"] == s.n_vocab * s.d_model
assert n_params["attention"] == s.n_layer * (2 * d * s.n_head * d_h + 2 * d * s.n_kv_head * d_h)
assert n_params["feed_forward"] == s.n_layer * 3 * d * s.d_ff
assert n_params["norms"] == (2 * s.n_layer + 1) * d
assert n_params["output"] == 0
print(f"{total_params / 1e6:.1f} M parameters; untied, the output head would add "
      f"{s.n_vocab * d / 1e6:.1f} M more")

# %% [markdown]
# The feed-forward layers hold most of the parameters, about three fifths.
# The bytes tell another story: the file stores the blocks' matrices in Q4_1
# (5 bits a weight: 4-bit codes plus a scale and a minimum per block of 32)
# but the embedding in Q8_0 (8.5 bits), and the norms in F32, so the
# embedding's share of the file is larger than its share of the parameters.

# %%
fig, axes = plt.subplots(1, 2, figsize=(7, 3), sharey=True)
colours = ["tab:purple", "tab:blue", "tab:orange", "tab:green", "tab:red"]
for ax, counts, unit in ((axes[0], n_params, "parameters (M)"), (axes[1], n_bytes, "bytes in the file (MB)")):
    values = [counts[p] / 1e6 for p in parts]
    ax.barh(parts[::-1], values[::-1], color=colours[::-1])
    total = sum(counts.values())
    for y, p in enumerate(parts[::-1]):
        ax.text(counts[p] / 1e6, y, f" {counts[p] / total:.0%}", va="center", fontsize=8)
    ax.set_xlabel(unit)
    ax.set_xlim(0, 1.25 * max(values))
axes[0].set_title("parameters per part", fontsize=10)
axes[1].set_title("bytes per part", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# In JupyterLab, the view below switches between parameters and bytes, per
# part or per block (`zigllama_lib.viz.anatomy`). In SmolLM2 every block is
# the same; try `zl.load("gemma3-270m")`, whose blocks mix quantisation types.

# %%
from zigllama_lib.viz.anatomy import anatomy_view

anatomy_view(model, measure="bytes", by="layer")

# %% [markdown]
# ## 3. The tokenizer: byte-level BPE
#
# `tokenizer.ggml.model` is `gpt2`: byte-level byte-pair encoding, the scheme
# of GPT-2, Llama 3 and SmolLM2. A text becomes token ids in three steps:
#
# 1. **Pre-tokenize**: a regular expression cuts the text into words; merges
#    never cross a word boundary.
# 2. **Byte map**: each word's UTF-8 bytes are written as characters of a
#    256-symbol alphabet, so every byte has a printable stand-in (a space is `Ġ`).
# 3. **Merge**: repeatedly join the adjacent pair of symbols that appears
#    earliest in the merge list `tokenizer.ggml.merges` (its *rank*), until no
#    adjacent pair is in the list. Each final piece is a vocabulary entry.
#
# Because it starts from bytes, no text is ever out of vocabulary: an emoji the
# merges never saw still becomes tokens, one per byte at worst.
#
# ### 3.1 The byte map
#
# GPT-2's map keeps the 188 printable Latin-1 bytes as themselves and moves the
# other 68 (control bytes, the space, 0x7F to 0xA0 and the soft hyphen 0xAD) to
# the characters from U+0100 onwards, in byte order. Built naively:

# %%
from zigllama_lib.models.tokenizer import byte_symbols

printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
naive_map = {}
moved = 0
for b in range(256):
    if b in printable:
        naive_map[b] = chr(b)
    else:
        naive_map[b] = chr(0x100 + moved)
        moved += 1

print(len(printable), "bytes kept,", moved, "moved;",
      "space ->", naive_map[0x20], " newline ->", naive_map[0x0A], " 'A' ->", naive_map[0x41])
assert tuple(naive_map[b] for b in range(256)) == byte_symbols()

# %% [markdown]
# ### 3.2 The pre-tokenizer
#
# `tokenizer.ggml.pre` names the split, and llama.cpp maps that name to a list
# of regular expressions applied one after the other, each cutting the pieces
# the previous one left. SmolLM2's first isolates every digit (`\p{N}`), then
# GPT-2's expression separates contractions, letter runs with their leading
# space, punctuation runs and whitespace:

# %%
from zigllama_lib.models.pretokenizers import PRE_TOKENIZERS

tok = model.tokenizer
pre_name = md["tokenizer.ggml.pre"]
print("tokenizer.ggml.pre =", repr(pre_name))
for expr in PRE_TOKENIZERS[pre_name].exprs:
    print("   ", expr)
print(tok.pre_tokenize("I'm sure they'll pay 1234567 naïve 🦙s!"))

# %% [markdown]
# ### 3.3 The merges, and a naive BPE
#
# Each line of `tokenizer.ggml.merges` is a pair `"left right"`; its line
# number is its rank. A lower rank means the pair was merged earlier in
# training, because it was more frequent.

# %%
merges = md["tokenizer.ggml.merges"]
print(len(merges), "merges; the first ten:", merges[:10])

naive_ranks = {}
for rank, line in enumerate(merges):
    left, right = line.split(" ")
    naive_ranks.setdefault((left, right), rank)  # a repeated pair keeps its first rank
assert naive_ranks == tok.ranks

token_id = {text: i for i, text in enumerate(md["tokenizer.ggml.tokens"])}

# %% [markdown]
# The BPE loop, as plainly as it can be written: look at every adjacent pair,
# take the one with the lowest rank (the leftmost if the same pair occurs
# twice), join it, and start again. It costs $O(n^2)$ for a word of $n$
# bytes; the library's `bpe_merge` keeps the candidate pairs in a heap
# instead, which gives the same result.

# %%
def naive_bpe(symbols, ranks, trace=None):
    """Merge a word's symbols, lowest-rank pair first, until no pair has a rank."""
    parts = list(symbols)
    while True:
        best = None  # (rank, index) of the pair to merge
        for i in range(len(parts) - 1):
            rank = ranks.get((parts[i], parts[i + 1]))
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, i)
        if best is None:
            return parts
        rank, i = best
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if trace is not None:
            trace.append((rank, list(parts)))


def naive_encode(text):
    """Token ids of ``text``: pre-tokenize, byte-map each word, merge, look up."""
    ids = []
    for word in tok.pre_tokenize(text):
        symbols = "".join(naive_map[b] for b in word.encode("utf-8"))
        ids += [token_id[part] for part in naive_bpe(symbols, naive_ranks)]
    return ids


trace = []
word = "".join(naive_map[b] for b in " tokenization".encode("utf-8"))
naive_bpe(word, naive_ranks, trace)
print(f"{'':>11s} {list(word)}")
for rank, parts_now in trace:
    print(f"rank {rank:6d} {parts_now}")

# %% [markdown]
# The naive loop and the library agree, on English, digits, accents, other
# scripts, emoji and whitespace:

# %%
texts = [
    "Hello world",
    "The capital of France is Paris.",
    "I'm sure they'll pay 1234567 dollars!",
    "naïve café, Ελληνικά, русский, 東京",
    "emoji: 🦙🙂👍🏽 and ✨",
    "def f(x):\n\treturn x  # spaces   ",
]
for text in texts:
    ours, library = naive_encode(text), tok.encode(text, add_special=False)
    assert ours == library, text
    assert tok.decode(library) == text
    print(f"{len(library):3d} tokens  {text!r}")

# %% [markdown]
# The library's trace of the same word (`tok.merge_steps`) is the naive one,
# step for step. `zigllama_lib.viz.tokenizer` draws it: one row per merge, the
# new piece coloured by its rank. The early merges (light) join common pairs
# such as `Ġ`+`t`; the late ones (dark) join long, rarer pieces.

# %%
from zigllama_lib.viz.tokenizer import plot_merge_steps, tokenizer_view

(library_trace,) = tok.merge_steps(" tokenization")  # per step: the parts, as bytes
library_steps = [["".join(naive_map[b] for b in part) for part in step] for step in library_trace]
assert library_steps == [list(word)] + [parts_now for _, parts_now in trace]
plot_merge_steps(tok, " tokenization")
plt.show()

# %% [markdown]
# Type your own text in the box (press Enter): the merges of each word side by
# side, then the final tokens with their ids. A `<F0 9F>` label is a token
# holding bytes that are only part of a character, as happens with emoji.

# %%
tokenizer_view(tok, "Tokenization of 1234567 naïve 🦙s")

# %% [markdown]
# ## 4. The decoder, one layer at a time
#
# The decoder maps token ids to logits. With $E$ the embedding matrix, a
# pre-norm block adds attention and then a feed-forward network to the
# *residual stream* $h$:
#
# $$
# \begin{aligned}
# h^{(0)} &= E[\text{ids}], \\
# u &= h^{(\ell-1)} + \operatorname{Attn}_\ell\!\left(\operatorname{RMSNorm}(h^{(\ell-1)})\right), \\
# h^{(\ell)} &= u + \operatorname{FFN}_\ell\!\left(\operatorname{RMSNorm}(u)\right), \qquad \ell = 1, \dots, L, \\
# \text{logits} &= \operatorname{RMSNorm}(h^{(L)})\, W_\text{out}^\top,
# \end{aligned}
# $$
#
# where, for a row $x \in \mathbb{R}^d$ with learnt weight $w$,
#
# $$
# \operatorname{RMSNorm}(x) = \frac{x}{\sqrt{\frac{1}{d} \sum_{i=1}^{d} x_i^2 + \varepsilon}} \odot w .
# $$
#
# Tied embeddings make $W_\text{out} = E$. The library's `Decoder.forward` is
# this loop; here we write it out, calling the decoder's own attention and
# feed-forward blocks (layer 4 built those) with a naive RMSNorm, and record
# the size $\lVert h^{(\ell)} \rVert$ of each position's hidden state after
# every layer.

# %%
from zigllama_lib.linear_algebra import matmul
from zigllama_lib.models.decoder import numerics_named


def rms_norm_naive(x, weight, eps):
    """RMSNorm of each row of ``x`` (n_tok, d), in float64, returned as float32."""
    x64 = x.astype(np.float64)
    return (x64 / np.sqrt(np.mean(x64**2, axis=-1, keepdims=True) + eps) * weight).astype(np.float32)


prompt = "The capital of France is"
ids = tok.encode(prompt, add_special=True)
decoder = model.decoder
float_maths = numerics_named("float")       # exact float32 products: what model.logits uses
cache = decoder.new_cache(len(ids), float_maths)

h = decoder.embed(np.asarray(ids))          # (n_tok, d_model)
norms = [np.linalg.norm(h, axis=1)]         # per layer: (n_tok,)
for i, layer in enumerate(decoder.layers):
    h = h + decoder.attention_block(i, rms_norm_naive(h, layer.attn_norm, s.norm_eps), cache, float_maths)
    h = h + decoder.feed_forward(i, rms_norm_naive(h, layer.ffn_norm, s.norm_eps), float_maths)
    norms.append(np.linalg.norm(h, axis=1))
norms = np.array(norms)                     # (n_layer + 1, n_tok)
logits = matmul(decoder.output, rms_norm_naive(h, decoder.output_norm, s.norm_eps), "float")  # (n_tok, n_vocab)

reference = model.logits(ids)
print("max |ours - model.logits| =", np.abs(logits - reference).max())
np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-4)
next_id = int(np.argmax(logits[-1]))
print(f"after {prompt!r} the most likely token is {tok.decode([next_id])!r}")

# %% [markdown]
# The only difference from `model.logits` is the naive RMSNorm (float64
# instead of the library's float32), which moves the logits by far less than
# $10^{-4}$.
#
# How large does the residual stream get? Each block adds to it, so the norms
# grow with depth. One position stands out: about halfway through the
# network the first token's hidden state jumps to over a hundred times the
# size of the others, and stays there until the last layers. Many language
# models grow such a *massive activation* on their first token (Sun et al.,
# 2024, "Massive Activations in Large Language Models"); because the final
# RMSNorm divides by the size, it does not swamp that token's logits.

# %%
pieces = [repr(tok.decode([i])) for i in ids]
fig, ax = plt.subplots(figsize=(7, 3))
for t, piece in enumerate(pieces):
    ax.plot(np.arange(len(norms)), norms[:, t], marker=".", label=piece)
ax.set_yscale("log")
ax.set_xlabel("layer (0 = embeddings)")
ax.set_ylabel(r"$\|h\|$")
ax.set_title(f"Hidden-state norm per layer for {prompt!r}", fontsize=10)
ax.legend(fontsize=7, ncol=2, loc="lower right")
fig.tight_layout()
plt.show()
peak = int(np.argmax(norms[:, 0]))
print(f"the first token's norm peaks after layer {peak} at {norms[peak, 0]:.0f}, "
      f"{norms[peak, 0] / norms[peak, 1:].max():.0f} times the largest of the others there")

# %% [markdown]
# ## 5. Chat templates: a conversation is a text too
#
# An instruction-tuned model was trained on conversations written out in one
# exact format, with special tokens marking whose turn it is. The GGUF file
# carries that format as a small [Jinja](https://jinja.palletsprojects.com)
# program in `tokenizer.chat_template` (copied from the Hugging Face model).
# SmolLM2's loops over the messages, writes each between `<|im_start|>role`
# and `<|im_end|>` (the "ChatML" format), and adds a default system message
# when there is none:

# %%
print(md["tokenizer.chat_template"])

# %% [markdown]
# Written out by hand for a system message and one question, with
# `add_generation_prompt` opening the assistant's turn (the model's next tokens
# are then its reply, which it ends with `<|im_end|>`):

# %%
messages = [{"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "What is the capital of France?"}]
by_hand = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
by_hand += "<|im_start|>assistant\n"

chat_text = zl.render_chat_template(md["tokenizer.chat_template"], messages, add_generation_prompt=True)
assert chat_text == by_hand
assert chat_text == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
print(chat_text)

# %% [markdown]
# The rendered text is then tokenized with `parse_special=True`, so that the
# text `<|im_start|>` becomes the single control token it stands for (without
# it, the same text is seven ordinary tokens a user could type). The template
# itself decides where a BOS token goes, so no BOS is added
# (`add_special=False`). The special tokens are the turn markers:

# %%
from zigllama_lib.models.tokenizer_vocab import ATTR_CONTROL

chat_ids = tok.apply_chat_template(messages, add_generation_prompt=True)
assert chat_ids == tok.encode(chat_text, add_special=False, parse_special=True)
print(f"{len(chat_ids)} tokens; '<|im_start|>' as plain text would be "
      f"{len(tok.encode('<|im_start|>', add_special=False))} tokens")
for i in chat_ids[:12]:
    kind = "special (control)" if tok.token_attr(i) & ATTR_CONTROL else ""
    print(f"{i:6d}  {tok.id_to_piece(i)!r:22s} {kind}")
print("...")
print("the reply stops at", sorted(tok.id_to_piece(i) for i in tok.end_of_turn_ids))

# %% [markdown]
# Gemma 3 270M's file has no template, so the library chooses a built-in one by
# architecture (`tokenizer.chat_template_name`). Gemma has no system role: as
# Gemma 3's own template does, the system message is prepended to the first
# user turn, and the assistant's turns are called `model`:

# %%
gemma_tok = zl.load("gemma3-270m").tokenizer
print("built-in template:", gemma_tok.chat_template_name)
gemma_text = gemma_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
print(gemma_text)
gemma_ids = gemma_tok.apply_chat_template(messages, add_generation_prompt=True)
print([gemma_tok.id_to_piece(i) for i in gemma_ids[:6]], "...")
assert gemma_text == zl.render_chat_template("gemma", messages, add_generation_prompt=True, bos_token="<bos>")
assert gemma_ids[0] == gemma_tok.bos_id and gemma_ids.count(gemma_tok.bos_id) == 1

# %% [markdown]
# `model.chat(messages)` (layer 6) renders the conversation like this, then
# streams the reply exactly as `model.generate` would continue the rendered
# text; `zigllama chat` is the same in a terminal loop.

# %% [markdown]
# ## Summary
#
# - The GGUF metadata is the architecture: `llama.block_count`,
#   `llama.embedding_length`, the head counts and `llama.feed_forward_length`
#   fill `model.spec`, and the tensor shapes follow from them.
# - SmolLM2's 134.5 M parameters are about three fifths feed-forward; its output
#   head is tied to the embedding. In bytes the Q8_0 embedding weighs more than
#   its share, because the blocks are stored in 5-bit Q4_1.
# - Byte-level BPE: the pre-tokenizer's regex cuts words, each word's bytes are
#   mapped to 256 printable symbols, and merges join the lowest-rank adjacent
#   pair until none is left. A dozen lines of Python give the library's tokens.
# - The decoder embeds the ids, adds attention and feed-forward outputs to the
#   residual stream block by block, normalises, and projects onto the
#   vocabulary; doing it by hand reproduces `model.logits`.
# - A chat model's conversations are text in its own format: the GGUF's Jinja
#   `tokenizer.chat_template` writes the messages between special turn tokens,
#   and the rendered text is tokenized with `parse_special=True`.
#
# ## Exercises
#
# Each exercise has a code cell for your answer (a reference answer is filled
# in so the notebook runs top to bottom: replace it with your own) and a check
# cell that must run without an `AssertionError`.
#
# **Exercise 1.** How many tokens does the number `"1234567"` take, and why?
# What about `" 1234567"` with a leading space, and the word `" million"`?

# %%
number_ids = tok.encode("1234567", add_special=False)
spaced_ids = tok.encode(" 1234567", add_special=False)
million_ids = tok.encode(" million", add_special=False)
print(len(number_ids), [tok.decode([i]) for i in number_ids])
print(len(spaced_ids), [tok.decode([i]) for i in spaced_ids])
print(len(million_ids), [tok.decode([i]) for i in million_ids])
# Why: SmolLM2's pre-tokenizer first cuts every digit into its own word (\p{N}),
# and BPE never merges across words, so a number costs one token per digit.
# The leading space cannot join the digit that follows, so it is a word too.

# %%
# Check for exercise 1: seven digits, counted by hand.
assert len(number_ids) == 7
assert [tok.decode([i]) for i in number_ids] == ["1", "2", "3", "4", "5", "6", "7"]
assert len(spaced_ids) == 8 and tok.decode(spaced_ids[:1]) == " "
assert len(million_ids) == 1, "a common word with its leading space is one token"

# %% [markdown]
# **Exercise 2.** Count the parameters of one attention block by hand from
# $d$, $n_h$, $n_{kv}$ and $d_h$ (SmolLM2: no biases), and the bytes they take
# in Q4_1, where each block of 32 weights is stored in 20 bytes.

# %%
d_model, n_head, n_kv_head, head_dim = s.d_model, s.n_head, s.n_kv_head, s.head_dim_k
attention_params = (d_model * n_head * head_dim         # W_Q
                    + 2 * d_model * n_kv_head * head_dim  # W_K, W_V
                    + n_head * head_dim * d_model)        # W_O
attention_bytes = attention_params // 32 * 20
print(f"{attention_params:,d} parameters, {attention_bytes:,d} bytes")

# %%
# Check for exercise 2: against the tensor table of block 0, and by hand.
block0 = [model.gguf.tensors[f"blk.0.attn_{x}.weight"] for x in ("q", "k", "v", "output")]
assert attention_params == sum(int(np.prod(t.shape)) for t in block0)
assert attention_bytes == sum(t.n_bytes for t in block0)
assert attention_params == 576 * 576 + 2 * 576 * 192 + 576 * 576  # SmolLM2's numbers
print("all checks passed")

# %% [markdown]
# **Exercise 3.** Decode without the library: write `token_text(token_id)`,
# which turns a vocabulary entry such as `"Ġworld"` back into text by undoing
# the byte map of section 3.1. Use it to decode a sentence of your own.

# %%
byte_of = {symbol: b for b, symbol in naive_map.items()}


def token_text(token_id):
    entry = md["tokenizer.ggml.tokens"][token_id]
    return bytes(byte_of[c] for c in entry)


my_sentence = "Byte-level BPE never fails: ünïcödé, 東京, 🦙!"
my_ids = tok.encode(my_sentence, add_special=False)
print([md["tokenizer.ggml.tokens"][i] for i in my_ids])
my_text = b"".join(token_text(i) for i in my_ids).decode("utf-8")
print(my_text)

# %%
# Check for exercise 3: every token's bytes, and the whole sentence.
assert my_text == my_sentence
for i in my_ids:
    assert token_text(i) == tok.token_bytes(i), i
assert token_text(token_id["Ġworld"]) == b" world"
print("all checks passed")
