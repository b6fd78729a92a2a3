"""A human-readable report of a GGUF file (what ``zigllama inspect FILE`` prints).

The report has four parts:

1. **Header** - path, version, file size, alignment, where the tensor data
   start and how many keys and tensors there are.
2. **Metadata** - one row per key: key, declared type (``ARRAY[STRING]``...)
   and value. Arrays longer than ``max_items`` show their first items and a
   count, ``['<pad>', '<eos>', ... ] (262144 items)``.
3. **Tensors** - one row per tensor in file order: name, ggml type, shape in
   ggml order (``ne0`` first, the contiguous dimension), bytes and absolute
   offset.
4. **Totals** - tensors and bytes per ggml type, and the file's byte budget::

       file_size = header + header padding + tensor bytes
                  + padding between tensors + padding after the last tensor

   where ``header`` ends after the last tensor info and the header padding
   fills up to ``data_offset``, the next multiple of the alignment.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

import numpy as np

from .gguf import GGUFFile, GGUFValueType, MetadataType

MAX_VALUE_CHARS = 100  # a value cell longer than this is cut with "..."


# --------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------
def _scalar_text(value: Any, t: MetadataType | None) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (bytes, bytearray)):
        return repr(bytes(value))
    if t is not None and t.type == GGUFValueType.FLOAT32:
        return f"{float(value):.7g}"
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    return str(int(value)) if isinstance(value, (int, np.integer)) else str(value)


def format_value(value: Any, t: MetadataType | None, max_items: int = 8) -> str:
    """One metadata value as text; arrays show at most ``max_items`` items."""
    if t is not None and t.type == GGUFValueType.ARRAY:
        return _array_text(value, t, max_items)
    text = _scalar_text(value, t).replace("\n", "\\n")
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def _array_text(value: Any, t: MetadataType, max_items: int) -> str:
    """``[a, b, c]``, or ``[a, b, ...] (N items)`` keeping the whole text within MAX_VALUE_CHARS."""
    n = len(value)
    suffix = f", ...] ({n} items)"
    budget = MAX_VALUE_CHARS - len(suffix)
    shown: list[str] = []
    for v in value[:max_items]:
        cell = format_value(v, t.item, max(1, max_items // 2))
        if sum(len(c) + 2 for c in shown) + len(cell) > budget:
            break
        shown.append(cell)
    if len(shown) == n:
        return "[" + ", ".join(shown) + "]"
    return "[" + ", ".join(shown) + suffix


# --------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------
def _table(header: tuple[str, ...], rows: Iterable[tuple[str, ...]], right: set[int] = frozenset()) -> list[str]:
    """Columns padded to their widest cell; ``right`` holds right-aligned column indexes."""
    rows = list(rows)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: tuple[str, ...]) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return "  " + "  ".join(cells).rstrip()

    return [line(header), "  " + "  ".join("-" * w for w in widths), *map(line, rows)]


def _mib(n: int) -> str:
    return f"{n:,} bytes ({n / 2**20:.1f} MiB)"


def _header_section(f: GGUFFile) -> list[str]:
    return [
        f"GGUF file: {f.path}",
        f"  version        {f.version}",
        f"  file size      {_mib(f.file_size)}",
        f"  alignment      {f.alignment}",
        f"  data offset    {f.data_offset:,}",
        f"  metadata keys  {len(f.metadata)}",
        f"  tensors        {len(f.tensors)}",
    ]


def _metadata_section(f: GGUFFile, max_items: int) -> list[str]:
    rows = [(k, str(f.metadata_types[k]), format_value(v, f.metadata_types[k], max_items)) for k, v in f.metadata.items()]
    return [f"Metadata ({len(rows)} keys)", *_table(("key", "type", "value"), rows)]


def _tensor_section(f: GGUFFile) -> list[str]:
    rows = [
        (t.name, t.ggml_type.name, "(" + ", ".join(map(str, t.shape)) + ")", f"{t.n_bytes:,}", f"{t.offset:,}")
        for t in f.tensors.values()
    ]
    return [f"Tensors ({len(rows)})", *_table(("name", "type", "shape (ggml ne)", "bytes", "offset"), rows, {3, 4})]


def byte_budget(f: GGUFFile) -> dict[str, int]:
    """Split the file into header, header padding, tensor data, gaps between tensors and trailing bytes."""
    spans = sorted((t.offset, t.offset + t.n_bytes) for t in f.tensors.values())
    gaps, end = 0, f.data_offset
    for start, stop in spans:
        gaps += max(0, start - end)
        end = max(end, stop)
    return {
        "header": f.header_end,
        "header padding": f.data_offset - f.header_end,
        "tensor data": sum(t.n_bytes for t in f.tensors.values()),
        "padding between tensors": gaps,
        "padding after the last tensor": max(0, f.file_size - end),
    }


def _totals_section(f: GGUFFile) -> list[str]:
    count: Counter[str] = Counter()
    size: Counter[str] = Counter()
    for t in f.tensors.values():
        count[t.ggml_type.name] += 1
        size[t.ggml_type.name] += t.n_bytes
    total = sum(size.values()) or 1
    rows = [(k, str(count[k]), f"{size[k]:,}", f"{100 * size[k] / total:.1f}%") for k in sorted(size, key=size.get, reverse=True)]
    lines = ["Totals", *_table(("ggml type", "tensors", "bytes", "share"), rows, {1, 2, 3}), ""]
    budget = byte_budget(f)
    lines += [f"  {k:<28} {v:>14,}" for k, v in budget.items()]
    padding = budget["header padding"] + budget["padding between tensors"] + budget["padding after the last tensor"]
    lines.append(f"  {'padding (all)':<28} {padding:>14,}")
    return lines


def format_report(f: GGUFFile, max_items: int = 8) -> str:
    """The full report of ``f``: header, metadata, tensors and totals (module docstring)."""
    sections = [_header_section(f), _metadata_section(f, max_items), _tensor_section(f), _totals_section(f)]
    return "\n\n".join("\n".join(s) for s in sections) + "\n"
