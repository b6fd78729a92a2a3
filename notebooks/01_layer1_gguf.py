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
# # Layer 1 - Foundation: the bytes of a GGUF file
#
# Everything the model knows sits in one file: SmolLM2-135M-Instruct in the
# GGUF format, about 94 MiB. Before any maths runs, `zigllama_lib.foundation`
# has to find the tokenizer's vocabulary, the model's hyperparameters and the
# address of every weight matrix in that file. This notebook reads the file
# byte by byte, first by hand and then with the library.
#
# **Objectives.** After this notebook you can
#
# 1. read numbers out of raw bytes with `struct` and numpy dtypes, and say
#    what *little-endian* means;
# 2. draw the layout of a GGUF file: preamble, metadata, tensor infos,
#    padding, tensor data;
# 3. write a GGUF header reader in plain Python and check it against
#    `zigllama_lib`'s `GGUFFile`, key by key and tensor by tensor;
# 4. compute alignment padding, and a tensor's size from its shape and type;
# 5. explain why memory-mapping the file makes loading almost free.
#
# It runs in a few seconds and needs no Numba compilation except for the
# histogram of section 7.

# %%
# Versions: numbers in this notebook were produced with these.
import mmap
import os
import platform
import struct
import sys
import tempfile
import time

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

import zigllama_lib as zl
from zigllama_lib.foundation.gguf import GGUFFile
from zigllama_lib.models.registry import resolve
from zigllama_lib.viz import gguf_anatomy as ga

print(f"python {platform.python_version()}, numpy {np.__version__}, "
      f"matplotlib {matplotlib.__version__}, zigllama_lib {zl.__version__}")

# %% [markdown]
# `resolve` turns a registry name into the path of the cached file (fetching
# and checking it on first use, as `zl.load` does).

# %%
path = resolve("smollm2-135m-instruct")
file_size = os.path.getsize(path)
print(path.name, f"{file_size:,} bytes ({file_size / 2**20:.1f} MiB)")

# %% [markdown]
# ## 1. Bytes, dtypes and endianness
#
# A file is a sequence of bytes, integers from 0 to 255. A number wider than a
# byte is spread over several: a 32-bit unsigned integer takes 4 bytes
# $b_0, b_1, b_2, b_3$. GGUF stores them **little-endian**, least significant
# byte first, so
#
# $$
# v = \sum_{i=0}^{n-1} b_i \, 256^{i} = b_0 + 256\, b_1 + 256^2\, b_2 + 256^3\, b_3 .
# $$
#
# A big-endian format would store the same number with $b_3$ first. x86 CPUs,
# and ARM ones as they are almost always run, are little-endian too, so the
# bytes can be used as they are.
# Here are the first 24 bytes of the file:

# %%
with open(path, "rb") as fh:
    head = fh.read(24)
print(" ".join(f"{b:02x}" for b in head))
print(list(head))

# %% [markdown]
# The first four bytes are the *magic* `b"GGUF"`, the file's signature. The
# next four are the version. Decoded by hand with the formula above, then with
# Python's `int.from_bytes`, `struct` (format `"<I"`: `<` little-endian, `I`
# unsigned 32-bit) and numpy (dtype `"<u4"`):

# %%
print("magic  ", head[:4])
b = head[4:8]
by_hand = b[0] + 256 * b[1] + 256**2 * b[2] + 256**3 * b[3]
print("version by hand            ", by_hand)
print("int.from_bytes(little)     ", int.from_bytes(b, "little"))
print("struct.unpack('<I')        ", struct.unpack("<I", b)[0])
print("np.frombuffer(dtype='<u4') ", np.frombuffer(head, dtype="<u4", count=1, offset=4)[0])
print("read big-endian (wrong)    ", np.frombuffer(head, dtype=">u4", count=1, offset=4)[0])

# %% [markdown]
# A numpy **dtype** says how to turn bytes into numbers: the kind (`u`
# unsigned, `i` signed, `f` float), the size in bytes and the byte order
# (`<` little, `>` big). numpy reports the machine's own order as `=`, so on
# a little-endian machine `"<u4"` shows `=` and `">u4"` shows `>`. The two
# counts after the version are 64-bit (`"<u8"`): the number of tensors and
# the number of metadata key/value pairs.

# %%
n_tensors, n_kv = np.frombuffer(head, dtype="<u8", count=2, offset=8)
print("tensors:", n_tensors, " metadata keys:", n_kv)
for code in ("<u4", ">u4", "<u8", "<f4", "<f2"):
    dt = np.dtype(code)
    print(f"{code}: kind {dt.kind!r}, {dt.itemsize} bytes, byte order {dt.byteorder!r}")
print("this machine is", sys.byteorder, "endian")
print("float32 1.0 is stored as", np.float32(1.0).tobytes().hex(" "),
      "and float16 1.0 as", np.float16(1.0).tobytes().hex(" "))

# %% [markdown]
# ## 2. The layout of a GGUF file
#
# ```text
# offset 0   magic         4 bytes   b"GGUF"
#        4   version       u32       3
#        8   n_tensors     u64
#       16   n_kv          u64
#       24   n_kv x        key: string | value_type: u32 | value
#            n_tensors x   name: string | n_dims: u32 | ne[n_dims]: u64
#                          | ggml_type: u32 | offset: u64
#            zero padding up to a multiple of the alignment A    -> data_offset
#            tensor data; tensor i starts at data_offset + offset_i
# ```
#
# * A **string** is its length (u64) followed by that many UTF-8 bytes, with
#   no terminating zero.
# * A **value** starts with its type id (u32): 0 `UINT8`, 1 `INT8`,
#   2 `UINT16`, 3 `INT16`, 4 `UINT32`, 5 `INT32`, 6 `FLOAT32`, 7 `BOOL`
#   (one byte), 8 `STRING`, 9 `ARRAY`, 10 `UINT64`, 11 `INT64`, 12 `FLOAT64`.
# * An **array** value is `item_type: u32 | n: u64 | n items`; the items can
#   be strings, or arrays again.
# * A **tensor info** gives the shape in ggml order, `ne = (ne0, ne1, ...)`
#   with `ne0` the contiguous dimension (numpy's shape is the reverse), the
#   ggml type (how values are packed) and the offset of its data, counted
#   from `data_offset`.
#
# The header (everything before `data_offset`) says what the data are; the
# data section is just the tensors' bytes, one after the other.

# %% [markdown]
# ## 3. A naive reader
#
# The whole header can be read with `struct` and a file handle: read a value,
# and the handle's position moves past it. One function per kind of thing in
# the layout above.

# %%
SCALAR_FORMATS = {  # GGUF value type id -> struct format (little-endian)
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i",
    6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}
STRING, ARRAY = 8, 9


def read_scalar(fh, fmt):
    """One little-endian number in struct format ``fmt``."""
    return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]


def read_string(fh):
    """u64 length, then that many UTF-8 bytes."""
    n = read_scalar(fh, "<Q")
    return fh.read(n).decode("utf-8")


def read_array(fh):
    """item type (u32), count n (u64), then n items -> (item type, list of items)."""
    item_type = read_scalar(fh, "<I")
    n = read_scalar(fh, "<Q")
    return item_type, [read_value(fh, item_type) for _ in range(n)]


def read_value(fh, value_type):
    """One metadata value: a number, a string, or a list (an array, maybe of arrays)."""
    if value_type == STRING:
        return read_string(fh)
    if value_type == ARRAY:
        return read_array(fh)[1]
    return read_scalar(fh, SCALAR_FORMATS[value_type])


def read_gguf_header(path):
    """Parse a GGUF v3 header: counts, metadata and tensor infos."""
    with open(path, "rb") as fh:
        assert fh.read(4) == b"GGUF", "not a GGUF file"
        version = read_scalar(fh, "<I")
        n_tensors = read_scalar(fh, "<Q")
        n_kv = read_scalar(fh, "<Q")
        metadata = {}  # key -> (type id, item type id or None, value)
        for _ in range(n_kv):
            key = read_string(fh)
            value_type = read_scalar(fh, "<I")
            if value_type == ARRAY:
                item_type, value = read_array(fh)
            else:
                item_type, value = None, read_value(fh, value_type)
            metadata[key] = (value_type, item_type, value)
        tensors = []
        for _ in range(n_tensors):
            name = read_string(fh)
            n_dims = read_scalar(fh, "<I")
            dims = tuple(read_scalar(fh, "<Q") for _ in range(n_dims))
            ggml_type = read_scalar(fh, "<I")
            offset = read_scalar(fh, "<Q")
            tensors.append({"name": name, "dims": dims, "type": ggml_type, "offset": offset})
        header_end = fh.tell()
    return {"version": version, "metadata": metadata, "tensors": tensors, "header_end": header_end}


t0 = time.perf_counter()
naive = read_gguf_header(path)
print(f"naive reader: {time.perf_counter() - t0:.2f} s, version {naive['version']}, "
      f"{len(naive['metadata'])} keys, {len(naive['tensors'])} tensors, "
      f"header ends at byte {naive['header_end']:,}")

# %% [markdown]
# A few of the values it found (arrays cut to their first items):

# %%
for key in ("general.architecture", "llama.block_count", "llama.embedding_length",
            "llama.rope.freq_base", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.tokens"):
    value_type, item_type, value = naive["metadata"][key]
    shown = value[:5] + ["..."] if isinstance(value, list) else value
    print(f"{key:30} type {value_type:2}  {shown}")
for t in naive["tensors"][:3]:
    print(t)

# %% [markdown]
# Now the library's reader, `GGUFFile`. It parses the same header (from a
# memory map, with bounds checks on every read and bulk numpy decoding of
# numeric arrays) and must agree with the naive reader on **every** key,
# declared type and value, and on every tensor's shape, type and offset.
# `GGUFFile` stores absolute offsets, `data_offset + offset`.

# %%
t0 = time.perf_counter()
f = GGUFFile(path)
print(f"GGUFFile: {time.perf_counter() - t0:.2f} s  {f}")

assert f.version == naive["version"]
assert list(f.metadata) == list(naive["metadata"]), "same keys in the same order"
for key, (value_type, item_type, value) in naive["metadata"].items():
    declared = f.metadata_types[key]
    assert declared.type == value_type, key
    if value_type == ARRAY:
        assert declared.item.type == item_type, key
    ours = f.metadata[key]
    ours = ours.tolist() if isinstance(ours, np.ndarray) else ours
    assert ours == value, key

assert f.header_end == naive["header_end"]
assert list(f.tensors) == [t["name"] for t in naive["tensors"]]
for t in naive["tensors"]:
    info = f.tensors[t["name"]]
    assert info.shape == t["dims"], t["name"]
    assert int(info.ggml_type) == t["type"], t["name"]
    assert info.offset == f.data_offset + t["offset"], t["name"]
print(f"all {len(naive['metadata'])} keys and {len(naive['tensors'])} tensor infos agree")

# %% [markdown]
# ## 4. Alignment and padding
#
# Tensor data start on multiples of an **alignment** $A$ (the metadata key
# `general.alignment`, or 32 if absent): 32 bytes is the width of an AVX2
# register, so a kernel can load a row with aligned instructions. The number
# of zero bytes that moves a position $x$ up to the next multiple of $A$ is
#
# $$
# \mathrm{pad}(x) = (A - x \bmod A) \bmod A ,
# $$
#
# which is $0$ when $x$ is already a multiple of $A$ and at most $A - 1$
# otherwise. The data section starts right after the header, padded:
# $\mathrm{data\_offset} = h + \mathrm{pad}(h)$, with $h$ the end of the last
# tensor info.

# %%
def pad(x, A):
    """Zero bytes from position x up to the next multiple of A."""
    return (A - x % A) % A


for x in (0, 1, 31, 32, 33, 100):
    print(f"pad({x:3}, 32) = {pad(x, 32):2}  ->  {x + pad(x, 32)}")

A = naive["metadata"].get("general.alignment", (4, None, 32))[2]
h = naive["header_end"]
data_offset = h + pad(h, A)
print(f"alignment {A}, header ends at {h:,}, pad {pad(h, A)}, data_offset {data_offset:,}")
assert data_offset == f.data_offset

offsets = np.array([t["offset"] for t in naive["tensors"]])
assert np.all(offsets % A == 0), "every tensor offset is a multiple of the alignment"
print(f"all {len(offsets)} tensor offsets are multiples of {A}")

# %% [markdown]
# In this file every padding happens to be zero: the header ends on a multiple
# of 32, and so does every tensor's byte size (printed below). To see padding
# at work, here is a tiny file written with the library's `GGUFWriter`: a
# tensor of 3 float32 values takes 12 bytes, so 20 zero bytes follow it
# before the next tensor may start. `ga.file_map` (from `zigllama_lib.viz`)
# lists every byte range of a file, padding included.

# %%
from zigllama_lib.foundation.gguf_writer import GGUFWriter

sizes = [f.tensors[t["name"]].n_bytes for t in naive["tensors"]]
print("tensor sizes mod 32 in SmolLM2:", sorted(set(s % 32 for s in sizes)))

with tempfile.TemporaryDirectory() as tmp:
    w = GGUFWriter(os.path.join(tmp, "tiny.gguf"))
    w.add_metadata("general.architecture", "tiny")
    w.add_tensor("three", np.array([1.0, 2.0, 3.0], np.float32))
    w.add_tensor("four", np.array([4.0, 5.0, 6.0, 7.0], np.float32))
    tiny = GGUFFile(w.write())
    for r in ga.file_map(tiny):
        print(f"{r.start:4} .. {r.stop:4}  {r.n_bytes:3} bytes  {r.section:12} {r.name}")
    del tiny  # closes its memory map before the folder is removed

# %% [markdown]
# ## 5. Bytes per tensor, by type
#
# A ggml type packs its values in **blocks**: `block` consecutive values of a
# row stored in `type_size` bytes. The types in this file:
#
# * `F32`: blocks of 1 value in 4 bytes (plain float32);
# * `Q4_1`: 32 values in 20 bytes, a float16 scale $d$, a float16 minimum $m$
#   and 32 four-bit integers $q_j$ (two per byte), value $d\,q_j + m$;
# * `Q8_0`: 32 values in 34 bytes, a float16 scale $d$ and 32 signed bytes.
#
# So a tensor of $N$ values takes, and costs per weight,
#
# $$
# \text{bytes} = \frac{N}{\text{block}} \times \mathrm{type\_size},
# \qquad
# \text{bits per weight} = \frac{8 \times \mathrm{type\_size}}{\text{block}} .
# $$
#
# Layer 2 opens the blocks up; here we only need their sizes.

# %%
GEOMETRY = {0: ("F32", 1, 4), 3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34)}  # id -> (name, block, type_size)

per_type = {}
for t in naive["tensors"]:
    name, block, type_size = GEOMETRY[t["type"]]
    n_values = int(np.prod(t["dims"]))
    n_bytes = n_values // block * type_size
    assert n_bytes == f.tensors[t["name"]].n_bytes, t["name"]
    count, total, values = per_type.get(name, (0, 0, 0))
    per_type[name] = (count + 1, total + n_bytes, values + n_values)

print(f"{'type':5} {'tensors':>7} {'values':>12} {'bytes':>12} {'bits/weight':>11}")
for name, (count, total, values) in per_type.items():
    print(f"{name:5} {count:7} {values:12,} {total:12,} {8 * total / values:11.2f}")

# %% [markdown]
# The file map draws the whole file to scale. The top strip is the file, with
# the tensor data coloured by type: one `Q8_0` tensor (the token embedding,
# one row of 576 values per vocabulary entry) takes almost a third of it. The
# middle strip zooms into the header: nearly all of it is the tokenizer
# (`tokens`, their `token_type`s and the BPE `merges`); the 272 tensor infos
# are the thin orange sliver at the end.

# %%
fig = ga.plot_file_map(f)
plt.show()

totals = ga.section_totals(ga.file_map(f))
for section, n in totals.items():
    print(f"{section:12} {n:12,} bytes  {n / f.file_size:7.2%}")
biggest = sorted(ga.metadata_ranges(f), key=lambda r: -r.n_bytes)[:3]
print("largest metadata values:", [(r.name, f"{r.n_bytes:,} bytes") for r in biggest])

# %% [markdown]
# ## 6. Memory mapping: loading without reading
#
# `GGUFFile` does not read the tensor data. It asks the operating system to
# **map** the file into the process's address space (`mmap`): the tensors then
# look like arrays in memory, but a page of the file (a few KiB, printed
# below) is only read from disk when something first touches it, and it stays
# in the OS page cache, shared by every process that maps the same file. `tensor_data` returns a
# numpy *view* of those mapped bytes: no copy, read-only.

# %%
norm = f.tensor_data("output_norm.weight")  # F32, numpy shape (576,)
print("page size:", mmap.PAGESIZE, "bytes")
print(type(norm).__name__, norm.dtype, norm.shape,
      "owns its data:", norm.flags.owndata, " writeable:", norm.flags.writeable)

base = norm  # follow .base from the view down to the memory map it was cut from
chain = [type(base).__name__]
while isinstance(base, np.ndarray):
    base = base.base
    chain.append(type(base).__name__)
print(" -> ".join(chain))

whole_file = np.frombuffer(base, dtype=np.uint8)  # all the mapped bytes, (file_size,)
assert isinstance(base, mmap.mmap) and len(whole_file) == f.file_size
assert np.shares_memory(norm, whole_file), "the tensor is a window on the mapped file"
assert not np.shares_memory(norm.copy(), whole_file), "a copy is not"

with open(path, "rb") as fh:  # the same bytes, read the ordinary way
    info = f.info("output_norm.weight")
    fh.seek(info.offset)
    copied = np.frombuffer(fh.read(info.n_bytes), dtype="<f4")
np.testing.assert_array_equal(copied, norm)
print("view == bytes read from the file:", copied[:4])

# %% [markdown]
# Hence loading is fast. Below, measured on this machine: mapping the file
# (one `mmap` call), opening it with `GGUFFile` (the map plus parsing the
# header), and reading all of it into memory the ordinary way, which copies
# every byte into the process before anything can be parsed. The file is in
# the page cache after its first use, so the read here is a copy from memory;
# from a cold disk it would be slower still, while the map would not change.
# The last line is the price paid later: a first pass over the token
# embedding, whose pages come in through the map as they are touched.

# %%
with open(path, "rb") as fh:
    t0 = time.perf_counter()
    just_the_map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    t_mmap = time.perf_counter() - t0
    just_the_map.close()

t0 = time.perf_counter()
mapped = GGUFFile(path)
t_open = time.perf_counter() - t0

t0 = time.perf_counter()
with open(path, "rb") as fh:
    everything = fh.read()
t_read = time.perf_counter() - t0

t0 = time.perf_counter()
mapped.tensor_bytes("token_embd.weight").sum(dtype=np.uint64)  # touches every page of the tensor
t_touch = time.perf_counter() - t0

print(f"mmap the file                  {t_mmap * 1e3:8.3f} ms")
print(f"GGUFFile (map + parse header)  {t_open * 1e3:8.3f} ms")
print(f"read the whole file            {t_read * 1e3:8.3f} ms  ({len(everything) / 2**20:.0f} MiB copied)")
embd_mib = mapped.info("token_embd.weight").n_bytes / 2**20
print(f"first pass over token_embd     {t_touch * 1e3:8.3f} ms  ({embd_mib:.0f} MiB through the map)")
del everything

# %% [markdown]
# ## 7. One tensor up close
#
# The view below shows one tensor at a time: where it lies in the file, its
# info, the padding before it, a hex dump of its first bytes and a histogram of
# its values after dequantisation (`zigllama_lib.linear_algebra.dequantize`,
# layer 2). Pick a tensor in JupyterLab; the book shows `blk.0.attn_q.weight`.
#
# Its first 20 bytes are one `Q4_1` block: the two float16 numbers $d$ and $m$
# (bytes 0-1 and 2-3), then 16 bytes of four-bit integers. The dtype `"<f2"`
# reads the two scales straight out of the hex dump:

# %%
first_block = f.tensor_bytes("blk.0.attn_q.weight").reshape(-1)[:20]  # (20,) uint8
d, m = np.frombuffer(first_block[:4].tobytes(), dtype="<f2")
print("bytes", first_block[:4].tobytes().hex(" "), "->  d =", d, " m =", m)
print("four-bit integers of the first byte:", first_block[4] & 0x0F, first_block[4] >> 4)

# %%
ga.tensor_view(f, value="blk.0.attn_q.weight")

# %% [markdown]
# ## Summary
#
# - Multi-byte numbers in GGUF are little-endian; `struct` formats (`"<I"`)
#   and numpy dtypes (`"<u4"`) say how to decode them.
# - A GGUF file is a preamble (magic, version, two counts), typed metadata
#   key/value pairs, one info per tensor (name, ggml shape, type, offset),
#   zero padding up to the alignment, then the tensor data.
# - A few dozen lines of `struct` read the whole header; `GGUFFile` agrees with
#   them on every key and tensor.
# - $\mathrm{pad}(x) = (A - x \bmod A) \bmod A$ aligns the data section and
#   every tensor; a tensor of $N$ values takes
#   $N / \mathrm{block} \times \mathrm{type\_size}$ bytes.
# - The tensors are views on a memory map: opening the model reads only the
#   header, the OS brings in weights as they are used.
#
# ## Exercises
#
# Each exercise has a code cell for your answer (a reference answer is filled
# in so the notebook runs top to bottom: replace it with your own) and a check
# cell that must run without an `AssertionError`.
#
# **Exercise 1.** Compute the byte size of `blk.0.ffn_gate.weight` from its
# shape and type alone: write `tensor_nbytes(dims, block, type_size)` and use
# the block geometry of section 5.

# %%
def tensor_nbytes(dims, block, type_size):
    n_values = 1
    for d_ in dims:
        n_values *= d_
    return n_values // block * type_size


gate = next(t for t in naive["tensors"] if t["name"] == "blk.0.ffn_gate.weight")
_, gate_block, gate_type_size = GEOMETRY[gate["type"]]
gate_bytes = tensor_nbytes(gate["dims"], gate_block, gate_type_size)
print(gate["dims"], GEOMETRY[gate["type"]][0], "->", f"{gate_bytes:,} bytes")

# %%
# Check for exercise 1.
assert tensor_nbytes((64, 2), 32, 20) == 2 * 2 * 20         # two rows of two blocks
assert tensor_nbytes((576,), 1, 4) == 576 * 4                # a float32 vector
assert gate_bytes == 576 * 1536 * 5 // 8                     # Q4_1 is 5 bits per weight
# the next tensor starts right after this one (this file has no padding)
order = sorted(naive["tensors"], key=lambda t: t["offset"])
i = order.index(gate)
assert order[i + 1]["offset"] - gate["offset"] == gate_bytes
print("all checks passed")

# %% [markdown]
# **Exercise 2.** Which metadata key holds the context length the model was
# trained with, and what is its value? (Keys of the model's architecture
# start with the value of `general.architecture`.)

# %%
context_key = next(k for k in naive["metadata"] if k.endswith(".context_length"))
context_length = naive["metadata"][context_key][2]
print(context_key, "=", context_length)

# %%
# Check for exercise 2: find the key's bytes in the raw header, decode what follows.
arch = naive["metadata"]["general.architecture"][2]
assert context_key == arch + ".context_length"
with open(path, "rb") as fh:
    header = fh.read(f.data_offset)
key_bytes = context_key.encode("utf-8")
at = header.find(struct.pack("<Q", len(key_bytes)) + key_bytes)  # length u64, then the key
assert at > 0, "key not found in the header"
value_type, value = struct.unpack_from("<II", header, at + 8 + len(key_bytes))
assert value_type == 4, "UINT32"
assert value == context_length
print("all checks passed")

# %% [markdown]
# **Exercise 3.** How many parameters (weights) does the model have? Count
# them from the tensor infos. The check recomputes the count from the
# hyperparameters in the metadata: a vocabulary of $V$ embeddings of size $d$,
# $L$ blocks each with two norm vectors, the query and output projections
# ($d \times d$), the key and value projections ($d \times d_{kv}$ with
# $d_{kv} = d \, n_{kv} / n_{head}$) and three feed-forward matrices
# ($d \times d_{ff}$), and a final norm; the output layer reuses the
# embedding, so it adds nothing.

# %%
n_params = sum(int(np.prod(t["dims"])) for t in naive["tensors"])
print(f"{n_params:,} parameters")

# %%
# Check for exercise 3.
meta = {k: v[2] for k, v in naive["metadata"].items()}
V = len(meta["tokenizer.ggml.tokens"])
d_model = meta["llama.embedding_length"]
L = meta["llama.block_count"]
d_ff = meta["llama.feed_forward_length"]
d_kv = d_model * meta["llama.attention.head_count_kv"] // meta["llama.attention.head_count"]
per_block = 2 * d_model + 2 * d_model * d_model + 2 * d_model * d_kv + 3 * d_model * d_ff
assert n_params == V * d_model + L * per_block + d_model
assert round(n_params / 1e6) == 135, "the 135M of the model's name"
print("all checks passed")
