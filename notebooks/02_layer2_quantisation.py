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
# # Layer 2 - Quantisation and quantised matrix products
#
# SmolLM2-135M-Instruct has about 135 million weights. As 32-bit floats they
# would take about 540 MB; the file we run stores four in five of them in 5
# bits, as *Q4_1 blocks* (32 weights share one scale and one offset, and each
# weight keeps only a 4-bit integer), and the rest, the token embedding, in
# 8.5 bits (Q8_0). `zigllama_lib.linear_algebra` reads those blocks,
# writes them, and multiplies matrices without unpacking them to floats first.
# This notebook builds each of these steps by hand and checks the library
# against it.
#
# **Objectives.** After this notebook you can
#
# 1. quantise a block of 32 weights by hand in Q8_0, Q4_0 and Q4_1, and count
#    its bits per weight, scales included;
# 2. bound the rounding error of a block (half a step of its grid);
# 3. show that a naive quantiser, the library and llama.cpp write the same bytes;
# 4. compare the formats on SmolLM2's real weights: error against bits per weight;
# 5. compute a quantised matrix-vector product the way llama.cpp does (8-bit
#    activations, integer sums per block) in pure Python, numpy and Numba, and
#    measure how much faster the compiled kernel is.
#
# It runs in well under a minute once Numba's cache is warm.

# %%
# Versions: numbers in this notebook were produced with these.
import platform
import time

import matplotlib
import matplotlib.pyplot as plt
import numba
import numpy as np

import zigllama_lib as zl
from zigllama_lib.foundation.ggml_types import BLOCK_GEOMETRY, GGMLType
from zigllama_lib.linear_algebra import QMatrix, dequantize, get_rows, matmul, quantize_q8_1
from zigllama_lib.linear_algebra.ggml_exact import matmul_ggml
from zigllama_lib.linear_algebra.ggml_repack import repack_q4_K_x8
from zigllama_lib.linear_algebra.ggml_simd import matmul_q8_planes, matmul_simd, quantize_activations
from zigllama_lib.linear_algebra.quantize import bits_per_weight, quantize, round_trip
from zigllama_lib.viz import quantisation as vq

print(f"python {platform.python_version()}, numpy {np.__version__}, "
      f"numba {numba.__version__}, matplotlib {matplotlib.__version__}, "
      f"zigllama_lib {zl.__version__}")

# %% [markdown]
# The model, and what its weights take in the file compared with 32-bit floats:

# %%
model = zl.load("smollm2-135m-instruct")
gguf = model.gguf
n_params = sum(info.n_elements for info in gguf.tensors.values())
file_bytes = sum(info.n_bytes for info in gguf.tensors.values())
by_type = {}
for info in gguf.tensors.values():
    by_type[info.ggml_type.name] = by_type.get(info.ggml_type.name, 0) + info.n_elements
print(f"{n_params:,} weights: {4 * n_params / 1e6:.0f} MB as float32, {file_bytes / 1e6:.0f} MB in the file "
      f"({8 * file_bytes / n_params:.2f} bits per weight)")
print("weights per type:", {k: f"{v / n_params:.1%}" for k, v in by_type.items()})

# %% [markdown]
# ## 1. Blocks, scales and bits per weight
#
# Every format of this notebook cuts a row of weights into blocks of 32
# consecutive values $x_0, \dots, x_{31}$. A block stores a scale $d$ (a
# 16-bit float), sometimes an offset $m$, and one small integer $q_j$ per
# weight; the weight is rebuilt as $\hat x_j = d\, q_j$ or $\hat x_j = d\, q_j + m$.
#
# **Q8_0** (symmetric, 8 bits). The scale maps the largest magnitude to 127:
#
# $$
# d = \frac{\max_j |x_j|}{127}, \qquad q_j = \operatorname{round}\!\left(\frac{x_j}{d}\right) \in \{-127, \dots, 127\}, \qquad \hat x_j = d\, q_j .
# $$
#
# Rounding to the nearest multiple of $d$ is off by at most half a step,
# $|x_j - \hat x_j| \le d/2$ (plus a hair: the stored $d$ is rounded to 16 bits,
# exercise 2 makes that precise).
#
# **Q4_0** (symmetric, 4 bits, 16 levels). Let $M$ be the weight of largest
# magnitude, sign kept. llama.cpp divides by $-8$, so that $M$ lands exactly on
# the end of the grid ($q = 0$):
#
# $$
# d = \frac{M}{-8}, \qquad q_j = \min\!\left(15,\ \left\lfloor \frac{x_j}{d} + 8.5 \right\rfloor\right) \in \{0, \dots, 15\}, \qquad \hat x_j = d\,(q_j - 8) .
# $$
#
# **Q4_1** (asymmetric, 4 bits). The grid spans the block's range
# $[\min_j x_j, \max_j x_j]$ instead of being centred on zero, at the price of
# a second 16-bit number, the offset $m$:
#
# $$
# m = \min_j x_j, \qquad d = \frac{\max_j x_j - m}{15}, \qquad q_j = \left\lfloor \frac{x_j - m}{d} + 0.5 \right\rfloor \in \{0, \dots, 15\}, \qquad \hat x_j = d\, q_j + m .
# $$
#
# **Q5_0** and **Q5_1** are the same with 5 bits (32 levels: $d = M/-16$, or
# $(\max - \min)/31$); the fifth bit of the 32 weights is packed into one
# 32-bit word.
#
# **Bits per weight** count everything the block stores. A Q4_0 block holds a
# 2-byte scale and 32 four-bit integers, 16 bytes, so
#
# $$
# \text{bits per weight} = \frac{8 \times \text{bytes per block}}{32} = \frac{8 \times (2 + 16)}{32} = 4.5 .
# $$
#
# The layouts, written out by hand and checked against the library's table:

# %%
layouts = {  # bytes per block of 32 weights: field -> bytes
    "Q4_0": {"d": 2, "qs (32 x 4 bits)": 16},
    "Q4_1": {"d": 2, "m": 2, "qs (32 x 4 bits)": 16},
    "Q5_0": {"d": 2, "qh (32 x 1 bit)": 4, "qs (32 x 4 bits)": 16},
    "Q5_1": {"d": 2, "m": 2, "qh (32 x 1 bit)": 4, "qs (32 x 4 bits)": 16},
    "Q8_0": {"d": 2, "qs (32 x 8 bits)": 32},
}
for name, fields in layouts.items():
    n_bytes = sum(fields.values())
    bpw = 8 * n_bytes / 32
    assert BLOCK_GEOMETRY[GGMLType[name]] == (32, n_bytes)
    assert bits_per_weight(GGMLType[name]) == bpw
    print(f"{name}: {' + '.join(f'{v} {k}' for k, v in fields.items()):56s} = {n_bytes:2d} bytes, {bpw} bits/weight")

# %% [markdown]
# ## 2. A naive quantiser, then the library's
#
# Here are Q8_0 and Q4_0 written block by block in plain Python. Every
# operation is done in 32-bit floats (`np.float32` scalars), as in llama.cpp's
# C code: `x * (1/d)`, not `x / d`, and C's `roundf`, which rounds halves away
# from zero (Python's `round` rounds them to even). The scale is stored as an
# IEEE half (`np.float16`), little-endian.

# %%
f32 = np.float32


def roundf(v):
    """C's roundf: the nearest integer, halves away from zero."""
    return int(np.sign(v) * np.floor(abs(float(v)) + 0.5))


def naive_quantize_q8_0(row):
    """One row (n,) float32 -> bytes of block_q8_0: d (f16) then 32 int8, per block."""
    out = bytearray()
    for b in range(0, len(row), 32):
        block = row[b:b + 32]
        d = f32(max(abs(v) for v in block)) / f32(127)
        inv = f32(1) / d if d != 0 else f32(0)
        q = [roundf(v * inv) for v in block]
        out += np.float16(d).tobytes() + np.array(q, dtype=np.int8).tobytes()
    return bytes(out)


def naive_quantize_q4_0(row):
    """One row (n,) float32 -> bytes of block_q4_0: d (f16), then byte j = q_j | q_(j+16) << 4."""
    out = bytearray()
    for b in range(0, len(row), 32):
        block = row[b:b + 32]
        M = f32(0)
        for v in block:  # the first value of largest magnitude
            if abs(v) > abs(M):
                M = v
        d = M / f32(-8)
        inv = f32(1) / d if d != 0 else f32(0)
        q = [min(15, int(v * inv + f32(8.5))) for v in block]  # int() truncates, like C's cast
        out += np.float16(d).tobytes() + bytes(q[j] | (q[j + 16] << 4) for j in range(16))
    return bytes(out)


# %% [markdown]
# One block up close: eight weights of a small hand-made example, and what
# each format makes of them.

# %%
block = np.array([0.30, -0.12, 0.05, -0.71, 0.00, 0.44, 0.18, -0.26] * 4, dtype=np.float32)
b8, b4 = naive_quantize_q8_0(block), naive_quantize_q4_0(block)
d8, q8 = np.frombuffer(b8[:2], "<f2")[0], np.frombuffer(b8[2:], np.int8)
d4 = np.frombuffer(b4[:2], "<f2")[0]
q4 = [byte & 15 for byte in b4[2:]] + [byte >> 4 for byte in b4[2:]]
print("x        ", block[:8])
print(f"Q8_0: d = {float(d8):.6f}, q =", q8[:8], "-> x^ =", (f32(d8) * q8[:8]).round(4))
print(f"Q4_0: d = {float(d4):.6f}, q =", q4[:8], "-> x^ =", (f32(d4) * (np.array(q4[:8]) - 8)).round(4))
print(f"Q4_0 grid: from {f32(d4) * -8:.4f} to {f32(d4) * 7:.4f} in steps of {float(d4):.4f}; "
      f"Q8_0 steps of {float(d8):.4f}")
print(f"{len(b8)} and {len(b4)} bytes for 32 weights (128 as float32)")

# %% [markdown]
# $M = -0.71$, so Q4_0's scale is $d = -0.71/(-8) \approx 0.089$: the weight
# $-0.71$ becomes $q = 0$, i.e. $d\,(0 - 8) = -0.71$ (up to the 16-bit rounding
# of $d$), and the largest positive value the grid can hold is
# $d\,(15 - 8) \approx 0.62$. Q8_0 spends twice the bytes on a grid 16 times finer.
#
# The library's `quantize(x, qtype)` takes a whole matrix `(n_rows, n_cols)`
# and returns the GGUF bytes `(n_rows, row_bytes)`, in a Numba kernel that runs
# the rows in parallel. Same bytes as the naive version, on random rows and on
# rows of SmolLM2's attention matrix:

# %%
rng = np.random.default_rng(0)
random_rows = (rng.standard_normal((4, 256)) * rng.uniform(1e-3, 10, (4, 1))).astype(np.float32)
real_rows = dequantize(gguf.tensor_bytes("blk.0.attn_q.weight")[:4], GGMLType.Q4_1)  # (4, 576)
for rows in (random_rows, real_rows):
    for naive, t in ((naive_quantize_q8_0, GGMLType.Q8_0), (naive_quantize_q4_0, GGMLType.Q4_0)):
        library = quantize(rows, t)  # (4, row_bytes) uint8
        for r in range(rows.shape[0]):
            assert naive(rows[r]) == library[r].tobytes(), (t.name, r)
print("naive and library bytes identical:", random_rows.shape, "random,", real_rows.shape, "real")

# %% [markdown]
# ## 3. Real weights: llama.cpp's bytes, reproduced
#
# The file stores SmolLM2's matrices in Q4_1 and its token embedding in Q8_0.
# Reading a tensor (`dequantize`) and writing it again in its own format
# (`quantize`) should give back exactly the file's bytes, if the library
# follows the algorithm llama.cpp's `llama-quantize` used to make the file.
# Every quantised tensor of the model, block by block:

# %%
t0 = time.perf_counter()
n_blocks = n_same = 0
for name, info in gguf.tensors.items():
    if info.ggml_type not in (GGMLType.Q4_1, GGMLType.Q8_0):
        continue
    raw = np.asarray(gguf.tensor_bytes(name))  # (n_rows, row_bytes) uint8, memory-mapped
    again = quantize(dequantize(raw, info.ggml_type), info.ggml_type)
    size = BLOCK_GEOMETRY[info.ggml_type][1]
    same = (again.reshape(-1, size) == raw.reshape(-1, size)).all(axis=1)  # one flag per block
    n_blocks, n_same = n_blocks + same.size, n_same + int(same.sum())
print(f"{n_same:,} of {n_blocks:,} blocks identical to the file's ({time.perf_counter() - t0:.1f} s)")
assert n_same == n_blocks

# %% [markdown]
# All of them. Two things follow. The library's quantiser is llama.cpp's (the
# tests also check it against llama.cpp's compiled C functions and against
# gguf-py). And a weight that is already on a format's grid goes back to the
# same grid point: re-quantising a Q4_1 tensor in Q4_1 has **no error at all**.
#
# That is the catch when measuring the formats on this model: the original
# 16-bit weights are gone, and the file's values are our reference. Against
# it, a tensor's own format scores zero, and the Q4_1 matrices carry the
# coarse Q4_1 grid into every other format. The token embedding, stored in
# Q8_0 (a grid 16 times finer than a 4-bit one), is the fairest reference for
# the 4- and 5-bit formats. Re-quantising tensors in each format:

# %%
tensors = ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.29.ffn_down.weight"]
t0 = time.perf_counter()
table = vq.error_table(model, tensors, formats=vq.LEGACY_FORMATS)  # one ErrorStat per (tensor, format)
n_vocab = gguf.info("token_embd.weight").np_shape[0]
print(f"({time.perf_counter() - t0:.1f} s; token_embd: every {-(-n_vocab // vq.MAX_ROWS)}th of its {n_vocab:,} rows)")
print(f"{'tensor':24s} {'stored':6s} {'format':6s} {'bpw':>4s} {'rel. RMS':>9s} {'max |e|':>8s} {'exact':>6s}")
for s in table:
    print(f"{s.tensor:24s} {s.source:6s} {s.format:6s} {s.bits_per_weight:4g} {s.rel_rms:9.2%} "
          f"{s.max_abs:8.4f} {s.exact:6.1%}")

# %% [markdown]
# The relative RMS error is $\sqrt{\overline{e^2}} / \sqrt{\overline{x^2}}$
# with $e = \hat x - x$. On the embedding, one more bit halves the error
# (Q4_0 to Q5_0, Q4_1 to Q5_1), and the offset $m$ of Q4_1 (half a bit per
# weight) buys about a fifth less error than Q4_0. On the Q4_1 matrices Q5_1
# does no better than Q5_0: both mostly measure the distance to the file's
# Q4_1 grid.

# %%
emb = {s.format: s.rel_rms for s in table if s.tensor == "token_embd.weight"}
print(f"token_embd: Q4_0 / Q5_0 = {emb['Q4_0'] / emb['Q5_0']:.2f}, Q4_1 / Q5_1 = {emb['Q4_1'] / emb['Q5_1']:.2f}, "
      f"Q4_1 / Q4_0 = {emb['Q4_1'] / emb['Q4_0']:.2f}")

# %% [markdown]
# ## 4. The picture: error per format
#
# Left, histograms of $|e|$ for the token embedding on a log axis: each extra
# bit moves the hump left by a factor of 2, and Q8_0 (the file's own format
# here) has no error to draw. Right, the same errors measured in steps of the
# weight's grid, $e / d$: inside $[-\tfrac12, \tfrac12]$ (shaded), except for
# the few weights Q4_0 and Q5_0 clamp on the side opposite the block's extreme.

# %%
w_emb = vq.tensor_values(model, "token_embd.weight")  # (2048, 576) float32: every 24th row
fig = vq.plot_error_histograms(w_emb, vq.LEGACY_FORMATS, title="token_embd.weight (stored Q8_0)")
plt.show()

# %% [markdown]
# And the summary over the four tensors: relative RMS error against bits per
# weight. The hollow markers at the bottom are the tensors' own formats
# (error 0); the dashed guide falls by a factor of 2 per bit.

# %%
fig = vq.plot_error_vs_bits(table, title="Error against storage, per tensor")
plt.show()

# %% [markdown]
# ## 5. The widget: pick a tensor and a format
#
# The same histograms for any matrix of the model, here the first
# feed-forward down-projection in Q4_0. The view draws its first figure when
# the cell runs (that is what the book shows); in JupyterLab the pickers
# redraw it for another tensor or format, or all five formats at once.

# %%
vq.quantisation_error_view(model, tensor="blk.0.ffn_down.weight", fmt="Q4_0")

# %% [markdown]
# ## 6. The quantised matrix-vector product
#
# A layer computes $y = W x$ with $W$ of shape `(n_out, n_in)` stored as
# blocks. With Q4_1 weights, block $b$ of row $r$ holds $d_b, m_b$ and
# $q_{bj}$, so
#
# $$
# y_r = \sum_b \sum_{j=0}^{31} (d_b\, q_{bj} + m_b)\, x_{bj} .
# $$
#
# llama.cpp's CPU code also quantises $x$, to **Q8_1**: per block,
# $x_{bj} \approx d'_b\, q'_{bj}$ with 8-bit $q'$ (Q8_0's rule) and the
# stored sum $s_b = d'_b \sum_j q'_{bj}$. Then
#
# $$
# y_r \approx \sum_b \Big( d_b\, d'_b \sum_{j=0}^{31} q_{bj}\, q'_{bj} \; + \; m_b\, s_b \Big),
# $$
#
# and the inner sum is a dot product of small integers, which CPUs compute 32
# at a time. Take a real vector, the embedding of the token `" Paris"`, and
# the first feed-forward matrix:

# %%
W_info = gguf.info("blk.0.ffn_up.weight")
W = QMatrix(gguf.tensor_bytes("blk.0.ffn_up.weight"), W_info.ggml_type, n_in=W_info.shape[0])
paris = model.tokenizer.encode(" Paris", add_special=False)[0]
x = get_rows(gguf.tensor_bytes("token_embd.weight"), GGMLType.Q8_0, [paris])[0]  # (576,) float32
xq = quantize_q8_1(x)  # (576 / 32 * 36,) uint8: 18 blocks of d', s, 32 int8
print(f"W: {W.shape} {W.qtype.name} ({W.n_out * W.n_in:,} weights), x: {x.shape}, x as Q8_1: {xq.size} bytes")

# %% [markdown]
# The naive version reads the bytes of one row and one activation vector
# block by block, with Python integers for the sum and `np.float32` for the
# scales, in llama.cpp's order of operations:

# %%
def half(b, o):
    """The little-endian float16 at byte o of b, as float32."""
    return f32(np.frombuffer(b, "<f2", count=1, offset=o)[0])


def dot_q4_1_q8_1(w_row, x_q8):
    """One output: a row of block_q4_1 bytes (20 per block) dot block_q8_1 bytes (36 per block)."""
    total = f32(0)
    for b in range(len(w_row) // 20):
        wb, xb = w_row[20 * b:20 * b + 20], x_q8[36 * b:36 * b + 36]
        d, m = half(wb, 0), half(wb, 2)
        dx, sx = half(xb, 0), half(xb, 2)
        qx = [v - 256 if v > 127 else v for v in xb[4:]]  # int8
        sumi = 0
        for j in range(16):  # low nibbles: weights 0..15, high nibbles: 16..31
            sumi += (wb[4 + j] & 15) * qx[j] + (wb[4 + j] >> 4) * qx[j + 16]
        total += (d * dx) * f32(sumi) + m * sx
    return total


n_rows_py = 16  # pure Python is slow: a few rows (timed below, then scaled to the whole matrix)
w_bytes, x_bytes = np.asarray(W.raw), xq.tobytes()
y_python = np.array([dot_q4_1_q8_1(w_bytes[r].tobytes(), x_bytes) for r in range(n_rows_py)], dtype=np.float32)
print(f"pure Python, first {n_rows_py} outputs:", y_python[:4], "...")

# %% [markdown]
# The numpy version does the same for all rows at once: unpack every block
# into arrays, one integer `einsum` for the block sums, then the float part
# block by block (the order of the float additions matters for the last bit).

# %%
def matvec_q4_1_numpy(raw, x_q8):
    """raw (n_out, n_blocks * 20) block_q4_1 bytes, x_q8 block_q8_1 bytes -> y (n_out,) float32."""
    n_out, nb = raw.shape[0], raw.shape[1] // 20
    blocks = raw.reshape(n_out, nb, 20)
    d = blocks[..., 0:2].copy().view("<f2")[..., 0].astype(f32)  # (n_out, nb)
    m = blocks[..., 2:4].copy().view("<f2")[..., 0].astype(f32)  # (n_out, nb)
    q = np.concatenate([blocks[..., 4:] & 15, blocks[..., 4:] >> 4], axis=-1).astype(np.int32)  # (n_out, nb, 32)
    xb = x_q8.reshape(nb, 36)
    dx = xb[:, 0:2].copy().view("<f2")[:, 0].astype(f32)  # (nb,)
    sx = xb[:, 2:4].copy().view("<f2")[:, 0].astype(f32)  # (nb,)
    qx = xb[:, 4:].view(np.int8).astype(np.int32)  # (nb, 32)
    sumi = np.einsum("obj,bj->ob", q, qx)  # (n_out, nb) integer block sums
    y = np.zeros(n_out, dtype=f32)
    for b in range(nb):
        y += (d[:, b] * dx[b]) * sumi[:, b].astype(f32) + m[:, b] * sx[b]
    return y


y_numpy = matvec_q4_1_numpy(w_bytes, xq)
y_numba = matmul(W, x, mode="q8")  # the library: Numba kernel, llama.cpp's 8-bit path
assert np.array_equal(y_python, y_numba[:n_rows_py])
assert np.array_equal(y_numpy, y_numba)
y_exact = dequantize(W.raw, W.qtype).astype(np.float64) @ x.astype(np.float64)
rel = np.abs(y_numba - y_exact).max() / np.abs(y_exact).max()
print(f"pure Python, numpy and Numba agree bit for bit; 8-bit x vs exact float product: {rel:.1e} relative")

# %% [markdown]
# All three give the same float32 numbers, bit for bit; the 8-bit rounding of
# $x$ moves the result by a few parts in ten thousand of its largest entry.
# Now the speed: the best of several calls of each (the best is the least
# disturbed by other programs on the machine; the pure Python time is for
# 16 rows, scaled to the whole matrix):

# %%
def best_time(fn, reps):
    """The shortest of ``reps`` wall-clock times of ``fn()``, in seconds."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


matmul(W, x, mode="q8")  # warm: packs W's integers once (kept in W)
t_python = best_time(lambda: [dot_q4_1_q8_1(w_bytes[r].tobytes(), x_bytes) for r in range(n_rows_py)], 3)
t_python *= W.n_out / n_rows_py  # scaled to all rows
t_numpy = best_time(lambda: matvec_q4_1_numpy(w_bytes, xq), 5)
t_numba = best_time(lambda: matmul(W, x, mode="q8"), 50)
# the engine's own kernel: llama.cpp's AVX2 instructions as LLVM vector code (linear_algebra.ggml_simd),
# the same integers per block, summed in llama.cpp's FMA-lane order: equal to its scalar reference
# ggml_exact.matmul_ggml bit for bit, and to the kernel above up to float32 summation order
y_simd = matmul_simd(W, x)
assert np.array_equal(y_simd, matmul_ggml(W, x))
np.testing.assert_allclose(y_simd, y_numba, rtol=0, atol=1e-5 * np.abs(y_numba).max())
t_simd = best_time(lambda: matmul_simd(W, x), 50)
times = {f"pure Python ({n_rows_py} rows, scaled)": t_python, "numpy": t_numpy, "Numba kernel (matmul, q8)": t_numba,
         "Numba SIMD kernel (ggml_simd)": t_simd}
for k, v in times.items():
    print(f"{k:32s} {v * 1e3:9.3f} ms")
print(f"the Numba kernel is {t_python / t_numba:,.0f}x faster than pure Python and "
      f"{t_numpy / t_numba:,.1f}x faster than numpy; the SIMD kernel {t_python / t_simd:,.0f}x and "
      f"{t_numpy / t_simd:,.0f}x")

# %%
fig = vq.plot_kernel_speed(times, title=f"y = W x, W of {W.shape[0]} x {W.shape[1]} in Q4_1: time per call")
plt.show()

# %% [markdown]
# The Python loop pays the interpreter's price for every one of the
# matrix's 884,736 multiply-adds. numpy moves the loops into C but builds a
# 32-bit integer copy of every weight on each call. The Numba kernel unpacks
# the weights once into int8 planes (about a byte per weight, kept in `W`),
# then runs tight loops over 8-bit integers that the compiler vectorises, in
# parallel over output rows. The SIMD kernel skips even the unpacking: it reads
# the GGUF blocks in place and does a block's 32 multiply-adds in two
# instructions (`pmaddubsw`, `pmaddwd`), written by hand as LLVM vector code.
#
# ## 7. Eight rows in one vector: the repacked Q4_K layout
#
# The SIMD kernel reads the file's rows: one vector holds 32 weights of *one*
# row, so once a row's products are in 8 integer lanes, those lanes must be
# added together (a horizontal sum: shuffles that do no multiply-adds). For
# Q4_K, whose super-blocks fold their integers into the float sum every 64
# weights, that happens for every row, token and pair of sub-blocks.
# Interleave 8 rows instead, so that lane $r$ of a vector holds four
# consecutive weights of row $r$, and broadcast the token's four matching
# activations to all lanes: one `vpdpbusd` (VNNI) then computes
#
# $$
# \text{acc}_r \mathrel{+}= \sum_{i=0}^{3} q_{r,i}\, y_i \qquad r = 0..7,
# $$
#
# eight rows at once, each finished in its own lane. The integers are summed in
# another order (exact: integer addition does not round) and the float
# operations per lane are the row kernel's, so the result has the same bits.
# Prefill builds this copy on a Q4_K matrix's first batch
# (`linear_algebra.ggml_repack`). Our model is Q4_1, so re-quantise its
# `ffn_down` matrix (576 x 1536: Q4_K needs rows of whole 256-weight
# super-blocks) to Q4_K, and take 64 random activation vectors:

# %%
down_info = gguf.info("blk.0.ffn_down.weight")
W_down = QMatrix(gguf.tensor_bytes("blk.0.ffn_down.weight"), down_info.ggml_type, n_in=down_info.shape[0])
W4k = QMatrix(quantize(dequantize(W_down.raw, W_down.qtype), GGMLType.Q4_K), GGMLType.Q4_K, n_in=W_down.n_in)
X = np.random.default_rng(0).standard_normal((64, W4k.n_in)).astype(np.float32)  # (64, 1536)
planes = quantize_activations(GGMLType.Q4_K, X)  # Q8_K: int8 quants, a scale per 256, sums per 16
packed = repack_q4_K_x8(W4k.raw)  # (n_out / 8, super-blocks per row, 1184) uint8
chunk = packed[0, 0, 160:192]  # the first 32 bytes of nibbles: 4 bytes of each of rows 0..7
rows_bytes = np.asarray(W4k.raw)[:8, 16:20]  # the same 4 bytes, read from the file's rows
assert np.array_equal(chunk.reshape(8, 4), rows_bytes)
print("lane r of the first vector = bytes 16..19 of row r:\n", chunk.reshape(8, 4))
y_rows = matmul_q8_planes(W4k, *planes, repacked=False)
y_x8 = matmul_q8_planes(W4k, *planes, repacked=True)
assert np.array_equal(y_rows.view(np.uint32), y_x8.view(np.uint32))
t_rows = best_time(lambda: matmul_q8_planes(W4k, *planes, repacked=False), 20)
t_x8 = best_time(lambda: matmul_q8_planes(W4k, *planes, repacked=True), 20)
n_sb = W4k.n_in // 256
print(f"{W4k.shape} x {X.shape[0]} tokens: the same {y_x8.size:,} float32 results, bit for bit")
print(f"horizontal sums: rows layout {W4k.n_out * X.shape[0] * n_sb:,} (one per row, 4 tokens and "
      f"sub-block pair), repacked 0")
print(f"best of 20: rows {t_rows * 1e3:.3f} ms, repacked {t_x8 * 1e3:.3f} ms ({t_rows / t_x8:.1f}x)")

# %% [markdown]
# The deterministic count (how many horizontal sums each layout needs) is the
# reason; the time ratio depends on the CPU and on how busy it is. Where the
# CPU lacks VNNI, two older instructions (`pmaddubsw`, `pmaddwd`) give the same
# lane sums.
#
# ## Summary
#
# - A block format stores, per 32 weights, a 16-bit scale (and for Q4_1/Q5_1 a
#   16-bit offset) and one small integer per weight: 4.5 (Q4_0), 5 (Q4_1),
#   5.5 (Q5_0), 6 (Q5_1) or 8.5 (Q8_0) bits per weight.
# - Rounding to the grid costs at most half a step per weight; each extra bit
#   halves the step, the offset of Q4_1 fits the grid to the block's range.
# - `quantize(x, qtype)` writes llama.cpp's bytes exactly: re-quantising the
#   file's tensors reproduces all of its blocks.
# - The measured error depends on the reference: against already-quantised
#   weights a tensor's own format scores zero.
# - A quantised matrix-vector product is integer dot products per block plus
#   a few float multiplications; the Numba kernel matches a pure Python
#   version bit for bit, orders of magnitude faster.
# - Layout is speed: with eight rows interleaved in a vector's lanes, Q4_K needs
#   no horizontal sums, and the results keep their bits.
#
# ## Exercises
#
# Each exercise has a code cell for your answer (a reference answer is filled
# in so the notebook runs top to bottom: replace it with your own) and a check
# cell that must run without an `AssertionError`.
#
# **Exercise 1.** A Q5_1 block stores $d$ and $m$ as 16-bit floats, the fifth
# bits of its 32 weights in one 32-bit word, and their low 4 bits in 16 bytes.
# Compute its bits per weight by hand, then the size in MB of SmolLM2's
# 2-D weight matrices (their number of weights is `n_weights` below) if they
# were all stored in Q5_1.

# %%
n_weights = sum(info.n_elements for info in gguf.tensors.values() if len(info.shape) == 2)
bpw_q5_1 = 8 * (2 + 2 + 4 + 16) / 32  # your answer
mb_q5_1 = n_weights * bpw_q5_1 / 8 / 1e6  # your answer
print(f"{bpw_q5_1} bits per weight; {n_weights:,} weights -> {mb_q5_1:.1f} MB")

# %%
# Check for exercise 1.
x_test = np.zeros((3, 320), dtype=np.float32)
assert bpw_q5_1 == quantize(x_test, GGMLType.Q5_1).size * 8 / x_test.size, "count every byte of the block"
assert np.isclose(mb_q5_1, n_weights * 24 / 32 / 1e6), "24 bytes per 32 weights"
print("all checks passed")

# %% [markdown]
# **Exercise 2.** Predict the largest Q8_0 error of a block. Rounding alone
# gives $d/2$, but the file stores $d$ rounded to a half, $\tilde d$, while
# the integers were computed with $d$, so
# $\hat x_j - x_j = (\tilde d\, q_j - d\, q_j) + (d\, q_j - x_j)$ and
#
# $$
# |\hat x_j - x_j| \le \frac{d}{2} + 127\, |\tilde d - d| .
# $$
#
# Write `q8_0_bound(blocks)` returning this bound for each row of
# `blocks (n, 32)` (compute $d$ and $\tilde d$ yourself, in float32), and
# check it on the first attention matrix, whose Q8_0 round trip `round_trip`
# computes.

# %%
def q8_0_bound(blocks):
    d = np.abs(blocks).max(axis=1) / np.float32(127)  # (n,) float32
    d_half = d.astype(np.float16).astype(np.float32)
    return d / 2 + 127 * np.abs(d_half - d)


w_q = dequantize(gguf.tensor_bytes("blk.0.attn_q.weight"), GGMLType.Q4_1)  # (576, 576)
blocks = w_q.reshape(-1, 32)
err = np.abs(round_trip(w_q, GGMLType.Q8_0) - w_q).reshape(-1, 32).max(axis=1)  # (n_blocks,)
bound = q8_0_bound(blocks)
print(f"{blocks.shape[0]} blocks; largest error / bound = {(err / bound).max():.3f}")

# %%
# Check for exercise 2.
hand = np.array([127.0, 0.5, -0.5, 1.5] + [0.0] * 28, dtype=np.float32)  # d = 1: 0.5 rounds to 1
assert np.isclose(q8_0_bound(hand[None])[0], 0.5)
assert np.abs(round_trip(hand, GGMLType.Q8_0) - hand).max() == 0.5, "halves round away from zero"
assert bound.shape == (blocks.shape[0],)
assert np.all(err <= bound * (1 + 1e-6)), "the bound must hold on every block"
assert np.all(bound <= np.abs(blocks).max(axis=1) / 127 * (0.5 + 127 * 2.0**-11) * (1 + 1e-6)), \
    "|d~ - d| is at most half a half-precision step, 2^-11 d"
print("all checks passed")

# %% [markdown]
# **Exercise 3.** Why pay half a bit for Q4_1's offset? Take a block whose
# weights all sit near $1$, $x_j = 1 + 0.01\, z_j$. Predict which of Q4_0
# and Q4_1 has the smaller RMS error, and roughly by how much, from their
# step sizes, then measure both with `round_trip`.

# %%
z = np.random.default_rng(3).standard_normal(32)
near_one = (1 + 0.01 * z).astype(np.float32)
rms_q4_0 = float(np.sqrt(np.mean((round_trip(near_one, GGMLType.Q4_0) - near_one) ** 2)))
rms_q4_1 = float(np.sqrt(np.mean((round_trip(near_one, GGMLType.Q4_1) - near_one) ** 2)))
better = "Q4_1"  # your prediction
print(f"RMS error: Q4_0 {rms_q4_0:.5f}, Q4_1 {rms_q4_1:.5f} (ratio {rms_q4_0 / rms_q4_1:.0f})")

# %%
# Check for exercise 3.
step_q4_0 = np.abs(near_one).max() / 8  # grid from -8d to 7d: steps of |M| / 8
step_q4_1 = (near_one.max() - near_one.min()) / 15  # 15 steps across the range
assert better == "Q4_1"
assert rms_q4_1 <= step_q4_1 / 2 + 1e-3 and rms_q4_0 <= step_q4_0 / 2 + 1e-3, "at most half a step"
assert rms_q4_0 > 3 * rms_q4_1, "Q4_0's step is many times coarser here"
print(f"steps: Q4_0 {step_q4_0:.4f}, Q4_1 {step_q4_1:.4f}; all checks passed")
