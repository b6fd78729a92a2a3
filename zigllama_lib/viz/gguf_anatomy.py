"""The anatomy of a GGUF file: where every byte goes (layer 1's pictures).

A GGUF file is a sequence of byte ranges, each with one job (see
:mod:`zigllama_lib.foundation.gguf` for the format)::

    preamble      magic | version | tensor count | kv count      8 + 2c bytes
    metadata      one range per key/value pair                 c + len(key) + 4 + value
    tensor infos  one range per tensor                         c + len(name) + 4 + c n_dims + 4 + 8
    padding       [header_end, data_offset): zeros up to a multiple of the alignment A
    tensor data   one range per tensor, each starting on a multiple of A,
                  with zero padding between tensors and after the last one

where ``c`` is the size of a count (8 bytes in GGUF v2/v3, 4 in v1). A string
is ``c`` bytes of length then its UTF-8 bytes; an array value is
``4 + c`` bytes (item type, count) then its items. :class:`GGUFFile` keeps
the parsed values and the tensor offsets; :func:`file_map` recomputes the byte
range of every section from them alone, and checks that the ranges end exactly
where the parser found the header's end.

Pictures: :func:`plot_file_map` (the whole file, the header zoomed in, bytes
per ggml type) and :func:`plot_tensor` (one tensor: where it is, its info, a
hex dump of its first bytes and a histogram of its dequantised values);
:func:`tensor_view` puts a tensor picker over :func:`plot_tensor`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import Any, Sequence

import numpy as np

from ..foundation.errors import GGUFError, ZigLlamaError
from ..foundation.ggml_types import BLOCK_GEOMETRY
from ..foundation.gguf import GGUFFile, GGUFValueType, MetadataType, SCALAR_DTYPES
from ._widgets import figure_view, require

# section names of a ByteRange, in file order
PREAMBLE, METADATA, TENSOR_INFO, PADDING, TENSOR_DATA = (
    "preamble", "metadata", "tensor info", "padding", "tensor data")
SECTIONS = (PREAMBLE, METADATA, TENSOR_INFO, PADDING, TENSOR_DATA)
SECTION_COLORS = {PREAMBLE: "tab:red", METADATA: "tab:blue", TENSOR_INFO: "tab:orange",
                  PADDING: "0.75", TENSOR_DATA: "tab:green"}
TYPE_COLORS = ("tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``[start, stop)`` of a file, belonging to ``section`` (``name`` says which part)."""

    section: str  # one of SECTIONS
    name: str  # "magic", a metadata key, a tensor name, "header padding", ...
    start: int
    stop: int

    @property
    def n_bytes(self) -> int:
        return self.stop - self.start


# --------------------------------------------------------------------------
# byte ranges
# --------------------------------------------------------------------------
def count_size(f: GGUFFile) -> int:
    """Bytes of a count or string length: 8 (u64) in GGUF v2/v3, 4 (u32) in v1."""
    return 4 if f.version == 1 else 8


def string_size(s: str, c: int) -> int:
    """Encoded size of a GGUF string: ``c`` bytes of length + its UTF-8 bytes."""
    return c + len(s.encode("utf-8", "surrogateescape"))


def value_size(value: Any, t: MetadataType, c: int) -> int:
    """Encoded size of one metadata value of declared type ``t`` (without key and type id).

    scalar: its fixed size; string: ``c + len(utf8)``; array:
    ``4 + c + sum(item sizes)``. Array items are sized from the values
    themselves (numpy arrays by ``dtype.itemsize``, lists item by item), so
    nested arrays whose inner item types differ are sized correctly too.
    """
    if t.type in SCALAR_DTYPES:
        return SCALAR_DTYPES[t.type].itemsize
    if t.type == GGUFValueType.STRING:
        return string_size(value, c)
    return _array_size(value, c)


def _array_size(value: Any, c: int) -> int:
    """``4 + c`` (item type, count) + the items: numbers, strings or arrays again."""
    size = 4 + c
    if isinstance(value, np.ndarray):  # numeric items (BOOL is stored as 1 byte, numpy bool too)
        return size + value.size * value.dtype.itemsize
    for item in value:
        size += string_size(item, c) if isinstance(item, str) else _array_size(item, c)
    return size


def preamble_ranges(f: GGUFFile) -> list[ByteRange]:
    """magic (4 bytes), version (u32), tensor count and kv count (``c`` bytes each)."""
    c = count_size(f)
    spans = (("magic", 4), ("version", 4), ("tensor count", c), ("kv count", c))
    out, pos = [], 0
    for name, n in spans:
        out.append(ByteRange(PREAMBLE, name, pos, pos + n))
        pos += n
    return out


def metadata_ranges(f: GGUFFile) -> list[ByteRange]:
    """One range per key/value pair: key string | value type (u32) | value."""
    c = count_size(f)
    pos = preamble_ranges(f)[-1].stop
    out = []
    for key, value in f.metadata.items():
        n = string_size(key, c) + 4 + value_size(value, f.metadata_types[key], c)
        out.append(ByteRange(METADATA, key, pos, pos + n))
        pos += n
    return out


def tensor_info_ranges(f: GGUFFile) -> list[ByteRange]:
    """One range per tensor info: name | n_dims (u32) | ne[n_dims] (counts) | type (u32) | offset (u64).

    Raises :class:`GGUFError` if the ranges do not end at ``f.header_end``
    (the recomputation disagrees with the parser).
    """
    c = count_size(f)
    meta = metadata_ranges(f)
    pos = meta[-1].stop if meta else preamble_ranges(f)[-1].stop
    out = []
    for name, info in f.tensors.items():
        n = string_size(name, c) + 4 + c * len(info.shape) + 4 + 8
        out.append(ByteRange(TENSOR_INFO, name, pos, pos + n))
        pos += n
    if pos != f.header_end:
        raise GGUFError(
            f"{f.path}: the header's byte ranges add up to {pos} bytes, "
            f"but the parser ended the header at offset {f.header_end}"
        )
    return out


def tensor_data_ranges(f: GGUFFile) -> list[ByteRange]:
    """One range per tensor's data, ``[offset, offset + n_bytes)``, in file (offset) order."""
    infos = sorted(f.tensors.values(), key=lambda t: t.offset)
    return [ByteRange(TENSOR_DATA, t.name, t.offset, t.offset + t.n_bytes) for t in infos]


def padding_before(f: GGUFFile, name: str) -> int:
    """Zero bytes between the end of what precedes tensor ``name`` and its first byte.

    The first tensor (in offset order) follows the data section's start; the
    others follow the previous tensor's data.
    """
    info = f.info(name)
    end = f.data_offset
    for r in tensor_data_ranges(f):
        if r.name == name:
            return max(0, info.offset - end)
        end = max(end, r.stop)
    raise AssertionError("unreachable: f.info found the tensor")  # pragma: no cover


def file_map(f: GGUFFile) -> list[ByteRange]:
    """Every byte range of the file in order: preamble, metadata, tensor infos, padding, data.

    In a well-formed file the ranges tile ``[0, file_size)``: each starts where
    the one before it stops. Padding ranges are listed only when non-empty.
    """
    ranges = preamble_ranges(f) + metadata_ranges(f) + tensor_info_ranges(f)
    if f.data_offset > f.header_end:
        ranges.append(ByteRange(PADDING, "header padding", f.header_end, f.data_offset))
    end, previous = f.data_offset, None
    for r in tensor_data_ranges(f):
        if r.start > end:
            after = f"padding after {previous}" if previous else "padding before the first tensor"
            ranges.append(ByteRange(PADDING, after, end, r.start))
        ranges.append(r)
        end, previous = max(end, r.stop), r.name
    if f.file_size > end:
        ranges.append(ByteRange(PADDING, "padding after the last tensor", end, f.file_size))
    return ranges


def section_totals(ranges: Sequence[ByteRange]) -> dict[str, int]:
    """Bytes per section (``SECTIONS`` order; sections without bytes are left out)."""
    totals = {s: 0 for s in SECTIONS}
    for r in ranges:
        totals[r.section] += r.n_bytes
    return {s: n for s, n in totals.items() if n}


def bytes_by_type(f: GGUFFile) -> dict[str, tuple[int, int]]:
    """ggml type name -> (number of tensors, bytes of data), largest first."""
    out: dict[str, list[int]] = {}
    for t in f.tensors.values():
        entry = out.setdefault(t.ggml_type.name, [0, 0])
        entry[0] += 1
        entry[1] += t.n_bytes
    return {k: (n, b) for k, (n, b) in sorted(out.items(), key=lambda kv: -kv[1][1])}


def hex_dump(data: Any, start: int = 0, width: int = 8) -> str:
    """Classic hex dump: ``offset  hex bytes  |ascii|``, ``width`` bytes a line.

    ``start`` is the file offset of ``data[0]`` (printed in decimal); bytes
    outside printable ASCII show as ``.``.

    >>> print(hex_dump(b"GGUF\\x03\\x00\\x00\\x00", width=8))
    0         47 47 55 46 03 00 00 00  |GGUF....|
    """
    raw = bytes(data) if isinstance(data, (bytes, bytearray, memoryview)) else np.asarray(data, np.uint8).tobytes()
    lines = []
    for i in range(0, len(raw), width):
        chunk = raw[i : i + width]
        hexes = " ".join(f"{b:02x}" for b in chunk).ljust(3 * width - 1)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{start + i:<9d} {hexes}  |{text}|")
    return "\n".join(lines)


def dequantised_sample(f: GGUFFile, name: str, max_values: int = 1 << 20) -> tuple[np.ndarray, int, int]:
    """Dequantised values of the first rows of tensor ``name`` (at most ``max_values`` values).

    Returns ``(values (n_used * n_cols,) float32, n_used rows, n_rows in all)``.
    Raises :class:`~zigllama_lib.foundation.errors.UnsupportedTypeError` for a
    type :mod:`zigllama_lib.linear_algebra` cannot dequantise.
    """
    from ..linear_algebra import dequantize  # here: the file map needs no Numba

    info = f.info(name)
    raw = f.tensor_bytes(name)
    rows = raw.reshape(-1, raw.shape[-1])  # (n_rows, row_bytes) uint8
    n_cols = info.shape[0] if info.shape else 1
    n_used = max(1, min(rows.shape[0], max_values // max(n_cols, 1)))
    values = dequantize(rows[:n_used], info.ggml_type)  # (n_used, n_cols) float32
    return values.reshape(-1), n_used, rows.shape[0]


# --------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------
def _type_colors(f: GGUFFile) -> dict[str, str]:
    return {t: TYPE_COLORS[i % len(TYPE_COLORS)] for i, t in enumerate(bytes_by_type(f))}


def _draw_strip(ax, ranges: Sequence[ByteRange], colors: dict[str, str], scale: float, key) -> None:
    """Ranges as adjacent bars on one row, one bar collection per colour (x in units of ``scale`` bytes)."""
    groups: dict[str, list[tuple[float, float]]] = {}
    for r in ranges:
        groups.setdefault(key(r), []).append((r.start / scale, r.n_bytes / scale))
    for name, spans in groups.items():
        ax.broken_barh(spans, (0, 1), facecolors=colors[name], edgecolor="none")
    ax.set_yticks([])
    ax.set_ylim(0, 1)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)


def plot_file_map(f: GGUFFile, figsize: tuple[float, float] = (7, 4.2)):
    """The file map: (a) the whole file by section and tensor type, (b) the header zoomed in, (c) bytes per type.

    In (a) tensor data are coloured by ggml type; in (b) the preamble, each
    metadata key/value pair and the tensor infos, with the large pairs named.
    """
    plt = require("matplotlib.pyplot")
    from matplotlib.patches import Patch

    ranges = file_map(f)
    types = {t.name: t.ggml_type.name for t in f.tensors.values()}
    type_colors = _type_colors(f)
    colors = {**SECTION_COLORS, **type_colors}

    def key(r: ByteRange) -> str:
        return types[r.name] if r.section == TENSOR_DATA else r.section

    fig, (ax_file, ax_head, ax_types) = plt.subplots(
        3, 1, figsize=figsize, gridspec_kw={"height_ratios": [1, 1, 1.6]})

    mib = 2**20
    _draw_strip(ax_file, ranges, colors, mib, key)
    ax_file.set_xlim(0, f.file_size / mib)
    ax_file.set_xlabel("file offset (MiB)")
    ax_file.set_title(f"{os.path.basename(f.path)}: {f.file_size:,} bytes", fontsize=10)
    ax_file.axvspan(0, f.data_offset / mib, ymin=1.0, ymax=1.15, color="k", clip_on=False)
    ax_file.annotate("header", (f.data_offset / mib, 1.07), xytext=(4, 0), textcoords="offset points",
                     va="center", fontsize=7, annotation_clip=False)

    header = [r for r in ranges if r.stop <= f.data_offset]
    kib = 2**10
    _draw_strip(ax_head, header, colors, kib, key)
    for i, r in enumerate(header):  # separate adjacent metadata pairs with thin lines
        if r.section == METADATA and i:
            ax_head.axvline(r.start / kib, color="white", lw=0.3)
    for r in header:
        if r.section == METADATA and r.n_bytes > 0.08 * f.data_offset:
            ax_head.text((r.start + r.stop) / 2 / kib, 0.5, r.name.rsplit(".", 1)[-1],
                         ha="center", va="center", fontsize=8, color="white")
    ax_head.set_xlim(0, f.data_offset / kib)
    ax_head.set_xlabel(f"header zoomed in: the first {f.data_offset:,} bytes (KiB)")

    by_type = bytes_by_type(f)
    names = list(by_type)[::-1]
    sizes = [by_type[t][1] / mib for t in names]
    ax_types.barh(names, sizes, color=[type_colors[t] for t in names])
    total = sum(n for _, n in by_type.values())
    for y, t in enumerate(names):
        n, b = by_type[t]
        ax_types.text(b / mib, y, f" {n} tensor{'s' if n != 1 else ''}, {b / total:.1%}", va="center", fontsize=8)
    ax_types.set_xlim(0, max(sizes) * 1.45)
    ax_types.set_xlabel("tensor data per ggml type (MiB)")
    ax_types.tick_params(axis="y", labelsize=8)

    handles = [Patch(color=SECTION_COLORS[s], label=s) for s in (PREAMBLE, METADATA, TENSOR_INFO, PADDING)]
    handles += [Patch(color=c, label=f"data {t}") for t, c in type_colors.items()]
    ncol = min(len(handles), 5)
    legend_rows = -(-len(handles) // ncol)
    fig.legend(handles=handles, loc="upper center", ncol=ncol, fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.05 * legend_rows))
    return fig


def tensor_summary(f: GGUFFile, name: str) -> str:
    """A few lines about tensor ``name``: type and block geometry, shapes, offset, bytes, padding."""
    info = f.info(name)
    block, type_size = BLOCK_GEOMETRY[info.ggml_type]
    return "\n".join([
        f"{name}",
        f"type    {info.ggml_type.name}: {block} value(s) in {type_size} bytes",
        f"shape   ggml {info.shape}, numpy {info.np_shape}",
        f"offset  {info.offset:,} (data section + {info.offset - f.data_offset:,})",
        f"bytes   {info.n_bytes:,}, padding before {padding_before(f, name)}",
    ])


def plot_tensor(f: GGUFFile, name: str, n_hex_bytes: int = 40, bins: int = 60,
                max_values: int = 1 << 20, figsize: tuple[float, float] = (7, 3.6)):
    """One tensor: where it lies in the file, its info and first bytes, a histogram of its values."""
    plt = require("matplotlib.pyplot")

    info = f.info(name)
    fig = plt.figure(figsize=figsize)
    grid = fig.add_gridspec(2, 2, height_ratios=[0.22, 1], width_ratios=[1.15, 1])
    ax_where = fig.add_subplot(grid[0, :])
    ax_text = fig.add_subplot(grid[1, 0])
    ax_hist = fig.add_subplot(grid[1, 1])

    mib = 2**20
    ax_where.broken_barh([(0, f.data_offset / mib)], (0, 1), facecolors=SECTION_COLORS[METADATA])
    ax_where.broken_barh([(f.data_offset / mib, (f.file_size - f.data_offset) / mib)], (0, 1),
                         facecolors="0.85")
    ax_where.broken_barh([(info.offset / mib, info.n_bytes / mib)], (0, 1), facecolors="tab:red")
    ax_where.plot([(info.offset + info.n_bytes / 2) / mib], [1.25], "v", color="tab:red", clip_on=False)
    ax_where.set_xlim(0, f.file_size / mib)
    ax_where.set_ylim(0, 1)
    ax_where.set_yticks([])
    ax_where.set_xlabel("file offset (MiB): header (blue), tensor data (grey), this tensor (red)", fontsize=8)
    ax_where.tick_params(labelsize=7)

    first = f.tensor_bytes(name).reshape(-1)[:n_hex_bytes]
    text = tensor_summary(f, name) + f"\n\nfirst {len(first)} bytes:\n" + hex_dump(first, info.offset)
    ax_text.axis("off")
    ax_text.text(0, 1, text, family="monospace", fontsize=7, va="top", ha="left",
                 transform=ax_text.transAxes)

    try:
        values, n_used, n_rows = dequantised_sample(f, name, max_values)
    except ZigLlamaError as exc:  # an unsupported type: say so instead of failing the view
        ax_hist.text(0.5, 0.5, f"cannot dequantise:\n{exc}", ha="center", va="center",
                     fontsize=7, wrap=True, transform=ax_hist.transAxes)
        ax_hist.set_xticks([])
        ax_hist.set_yticks([])
    else:
        finite = values[np.isfinite(values)]
        ax_hist.hist(finite, bins=bins, color="tab:green", log=True)  # log: the tails show
        rows = f"all {n_rows:,} rows" if n_used == n_rows else f"first {n_used:,} of {n_rows:,} rows"
        ax_hist.set_title(f"dequantised values ({rows})", fontsize=8)
        ax_hist.set_xlabel("value", fontsize=8)
        ax_hist.set_ylabel("count (log scale)", fontsize=8)
        ax_hist.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def tensor_view(f: GGUFFile, names: Sequence[str] | None = None, value: str | None = None, **plot_kwargs):
    """A tensor picker (Dropdown) over :func:`plot_tensor`; ``names`` defaults to every tensor."""
    widgets = require("ipywidgets")
    names = list(names if names is not None else f.tensors)
    if not names:
        raise GGUFError(f"{f.path}: has no tensors to pick from")
    for n in names:
        f.info(n)  # raises naming an unknown tensor
    picker = widgets.Dropdown(options=names, value=value if value is not None else names[0],
                              description="tensor", layout=widgets.Layout(width="22em"))
    return figure_view(partial(plot_tensor, f, **plot_kwargs), {"name": picker},
                       title=f"Tensors of {os.path.basename(f.path)}")
