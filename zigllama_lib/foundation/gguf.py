"""Read GGUF files (versions 1-3): typed metadata, tensor infos, zero-copy data.

Layout
------
A GGUF file is little-endian throughout and laid out as::

    offset 0   magic        4 bytes  b"GGUF"
           4   version      u32      1, 2 or 3
           8   n_tensors    count    (count = u64 in v2/v3, u32 in v1)
               n_kv         count
               n_kv x       key: string | value_type: u32 | value
               n_tensors x  name: string | n_dims: u32 | ne[n_dims]: count
                            | ggml_type: u32 | offset: u64
               zero padding up to the next multiple of ``alignment``   -> data_offset
               tensor data; tensor i starts at data_offset + offset_i,
               every offset_i a multiple of ``alignment``

* ``string`` = ``length: count`` followed by ``length`` UTF-8 bytes (no NUL).
* a scalar value is its fixed-size little-endian encoding (BOOL is one byte).
* an ``ARRAY`` value = ``item_type: u32 | n: count | n items``; items may be
  strings or arrays again (nested arrays; each inner array repeats its own
  item type and count).
* ``alignment`` is the UINT32 metadata value ``general.alignment`` (a power of
  two) or 32; ``data_offset = ceil(header_end / alignment) * alignment``.

Tensor size
-----------
Shapes are stored in ggml order, ``ne = (ne0, ne1, ...)`` with ``ne0`` the
contiguous (fastest) dimension; :attr:`TensorInfo.np_shape` is the reverse,
numpy's row-major order. A ggml type packs ``block`` values into ``type_size``
bytes (see :mod:`.ggml_types`), so with ``ne0 % block == 0``::

    n_bytes = ne0 / block * type_size * ne1 * ne2 * ne3

Safety
------
Every read is bounds-checked against the file size, and every count is checked
against the bytes that remain *before* anything is allocated: an item of a
count-prefixed list needs at least ``m`` bytes, so ``n > remaining // m``
cannot be honest. A hostile or truncated header therefore raises a
:class:`~.errors.GGUFError` (naming the file, field and offset) instead of
allocating gigabytes, looping for hours or reading past the end.

Speed
-----
The header is parsed from a read-only :class:`mmap.mmap` with precompiled
:class:`struct.Struct` readers; numeric arrays are decoded in bulk with
``np.frombuffer`` and string arrays in one tight loop, so the header of a
262k-token vocabulary (gemma-3) parses in about 0.13 s. Tensor data is never copied: each
tensor is a slice of one read-only ``numpy.memmap`` of the whole file.
"""

from __future__ import annotations

import enum
import mmap
import os
import stat
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import GGUFError, TruncatedFileError, UnsupportedTypeError, UnsupportedVersionError
from .ggml_types import BLOCK_GEOMETRY, GGMLType

GGUF_MAGIC = b"GGUF"
GGUF_DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4
SUPPORTED_VERSIONS = (1, 2, 3)
MAX_ARRAY_NESTING = 8  # deeper nested arrays are rejected (no model uses more than 2)


class GGUFValueType(enum.IntEnum):
    """Metadata value type ids (``gguf_type`` in llama.cpp's ``gguf.h``)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# scalar value type -> little-endian numpy dtype
SCALAR_DTYPES: dict[GGUFValueType, np.dtype] = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("<u1"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}

# scalar value type -> precompiled struct reader
_STRUCT_CODES = {"u1": "B", "i1": "b", "u2": "H", "i2": "h", "u4": "I", "i4": "i",
                 "u8": "Q", "i8": "q", "f4": "f", "f8": "d"}
SCALAR_STRUCTS: dict[GGUFValueType, struct.Struct] = {
    t: struct.Struct("<" + _STRUCT_CODES[dt.str[1:]]) for t, dt in SCALAR_DTYPES.items()
}

# ggml types whose data have a plain numpy dtype
GGML_NUMPY_DTYPES: dict[GGMLType, np.dtype] = {
    GGMLType.F32: np.dtype("<f4"),
    GGMLType.F16: np.dtype("<f2"),
    GGMLType.F64: np.dtype("<f8"),
    GGMLType.I8: np.dtype("<i1"),
    GGMLType.I16: np.dtype("<i2"),
    GGMLType.I32: np.dtype("<i4"),
    GGMLType.I64: np.dtype("<i8"),
}

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
# (count size, n_dims) -> reader of a tensor's ne[]: u64 each (v2/v3) or u32 (v1)
_DIMS = {(c, n): struct.Struct(f"<{n}{'Q' if c == 8 else 'I'}") for c in (4, 8) for n in range(GGML_MAX_DIMS + 1)}


class GGUFUnsupportedTypeError(GGUFError, UnsupportedTypeError):
    """A GGUF file uses an unknown metadata value type or ggml tensor type.

    It is both a :class:`GGUFError` (the file is unusable) and an
    :class:`UnsupportedTypeError` (the type is what we do not know).
    """


@dataclass(frozen=True)
class MetadataType:
    """The declared GGUF type of a metadata value (``item`` is set for arrays)."""

    type: GGUFValueType
    item: "MetadataType | None" = None

    def __str__(self) -> str:
        if self.type == GGUFValueType.ARRAY:
            return f"ARRAY[{self.item if self.item is not None else '?'}]"
        return self.type.name


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's descriptor: where its bytes are and how to read them."""

    name: str
    shape: tuple[int, ...]  # ggml order: (ne0, ne1, ...), ne0 contiguous
    ggml_type: GGMLType
    offset: int  # absolute byte offset in the file
    n_bytes: int

    @property
    def np_shape(self) -> tuple[int, ...]:
        """Row-major (numpy) shape: ``shape`` reversed."""
        return tuple(reversed(self.shape))

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


# --------------------------------------------------------------------------
# header parsing
# --------------------------------------------------------------------------
class _HeaderReader:
    """Bounds-checked little-endian reads from a buffer (an ``mmap`` or ``bytes``).

    ``pos`` is the read position; every method advances it past what it read.
    ``cnt`` reads counts and string lengths: u64 (v2/v3) or u32 (v1).
    """

    def __init__(self, buf: Any, size: int, path: str):
        self.buf = buf
        self.size = size
        self.path = path
        self.pos = 0
        self.cnt = _U64
        self.cnt_size = 8

    # -- primitives -------------------------------------------------------
    def truncated(self, what: str, n: int) -> TruncatedFileError:
        return TruncatedFileError(
            f"{self.path}: truncated while reading {what}: need {n} bytes at offset "
            f"{self.pos}, but the file has {self.size} bytes"
        )

    def need(self, n: int, what: str) -> None:
        if self.pos + n > self.size:
            raise self.truncated(what, n)

    def read(self, s: struct.Struct, what: str) -> Any:
        pos = self.pos
        if pos + s.size > self.size:
            raise self.truncated(what, s.size)
        self.pos = pos + s.size
        return s.unpack_from(self.buf, pos)[0]

    def read_many(self, s: struct.Struct, what: str) -> tuple[Any, ...]:
        pos = self.pos
        if pos + s.size > self.size:
            raise self.truncated(what, s.size)
        self.pos = pos + s.size
        return s.unpack_from(self.buf, pos)

    def count(self, what: str, min_item_bytes: int) -> int:
        """Read a count; reject it if the remaining bytes cannot hold that many items."""
        start = self.pos
        n = self.read(self.cnt, what)
        remaining = self.size - self.pos
        if n > remaining // min_item_bytes:
            each = f" and each item needs at least {min_item_bytes}" if min_item_bytes > 1 else ""
            raise TruncatedFileError(
                f"{self.path}: {what} at offset {start} is {n}, but only {remaining} bytes "
                f"remain{each} (absurd count or truncated file)"
            )
        return n

    def string(self, what: str) -> str:
        n = self.count(f"length of {what}", 1)
        pos = self.pos
        self.pos = pos + n
        # surrogateescape: invalid UTF-8 survives (and re-encodes) instead of failing
        return str(self.buf[pos : pos + n], "utf-8", "surrogateescape")

    def value_type(self, what: str) -> GGUFValueType:
        start = self.pos
        raw = self.read(_U32, f"value type of {what}")
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise GGUFUnsupportedTypeError(
                f"{self.path}: {what} has unknown GGUF value type {raw} (at offset {start})"
            ) from None

    # -- values -------------------------------------------------------------
    def min_bytes(self, t: GGUFValueType) -> int:
        """Smallest encoding of one value of type ``t`` (bounds counts)."""
        if t in SCALAR_DTYPES:
            return SCALAR_DTYPES[t].itemsize
        if t == GGUFValueType.STRING:
            return self.cnt_size
        return 4 + self.cnt_size  # ARRAY: item type + count

    def value(self, t: GGUFValueType, what: str, depth: int = 0) -> tuple[Any, MetadataType]:
        """Read one value of type ``t``: a Python scalar/str, numpy array or list."""
        s = SCALAR_STRUCTS.get(t)
        if s is not None:
            v = self.read(s, what)
            return (v != 0 if t == GGUFValueType.BOOL else v), MetadataType(t)
        if t == GGUFValueType.STRING:
            return self.string(what), MetadataType(t)
        return self.array(what, depth)

    def array(self, what: str, depth: int) -> tuple[Any, MetadataType]:
        if depth >= MAX_ARRAY_NESTING:
            raise GGUFError(f"{self.path}: {what} nests arrays more than {MAX_ARRAY_NESTING} deep")
        item_t = self.value_type(f"items of {what}")
        n = self.count(f"item count of {what}", self.min_bytes(item_t))
        if item_t in SCALAR_DTYPES:
            return self.numeric_array(item_t, n), MetadataType(GGUFValueType.ARRAY, MetadataType(item_t))
        if item_t == GGUFValueType.STRING:
            return self.string_array(n, what), MetadataType(GGUFValueType.ARRAY, MetadataType(item_t))
        items: list[Any] = []
        inner: MetadataType | None = None
        for i in range(n):
            v, mt = self.array(f"{what}[{i}]", depth + 1)
            inner = inner or mt  # the first inner array's type stands for all
            items.append(v)
        return items, MetadataType(GGUFValueType.ARRAY, inner or MetadataType(GGUFValueType.ARRAY))

    def numeric_array(self, t: GGUFValueType, n: int) -> np.ndarray:
        """``n`` scalars in one ``np.frombuffer`` (count already bounds-checked)."""
        dtype = SCALAR_DTYPES[t]
        arr = np.frombuffer(self.buf, dtype=dtype, count=n, offset=self.pos).copy()
        self.pos += n * dtype.itemsize
        return arr.astype(bool) if t == GGUFValueType.BOOL else arr

    def string_array(self, n: int, what: str) -> list[str]:
        """``n`` strings: the hot loop of a vocabulary, kept free of method calls."""
        # No per-item bounds test: ``unpack_from`` raises past the end of the
        # buffer, slices clamp to it, and ``pos`` only grows, so one check
        # after the loop (``pos <= size``) catches any overrun.
        buf, unpack, cs = self.buf, self.cnt.unpack_from, self.cnt_size
        pos = start = self.pos
        raw: list[bytes] = []
        append = raw.append
        try:
            for _ in range(n):
                ln = unpack(buf, pos)[0]
                append(buf[pos + cs : pos + cs + ln])
                pos += cs + ln
        except (struct.error, OverflowError):  # read past the end (OverflowError: past 2^63)
            pass
        i = len(raw)
        if pos > self.size:  # string i - 1 ran past the end
            self.pos = pos - cs - ln
            raise self.truncated(f"{what}[{i - 1}] (string array at offset {start})", cs + ln)
        if i < n:  # the length of string i is cut
            self.pos = pos
            raise self.truncated(f"length of {what}[{i}] (string array at offset {start})", cs)
        self.pos = pos
        return [b.decode("utf-8", "surrogateescape") for b in raw]


def _open_checked(path: str) -> tuple[Any, int]:
    """Open ``path`` for reading, or raise a :class:`GGUFError` saying why not."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise GGUFError(f"{path}: cannot open: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise GGUFError(f"{path}: is a directory, not a GGUF file")
    if not stat.S_ISREG(st.st_mode):
        raise GGUFError(f"{path}: not a regular file")
    if st.st_size == 0:
        raise TruncatedFileError(f"{path}: file is empty (0 bytes), expected a GGUF header")
    try:
        return open(path, "rb"), st.st_size
    except OSError as e:
        raise GGUFError(f"{path}: cannot open: {e.strerror or e}") from None


class GGUFFile:
    """A parsed GGUF file.

    Attributes:
        path: the file.
        version: GGUF version (1, 2 or 3).
        metadata: ``key -> value`` in file order; scalars are Python
            numbers/bools/strings, numeric arrays are 1-D numpy arrays, string
            arrays are lists of ``str`` and nested arrays are lists.
        metadata_types: ``key -> MetadataType`` as declared in the file.
        tensors: ``name -> TensorInfo`` in file order.
        alignment: the data alignment (``general.alignment`` or 32).
        header_end: offset just past the last tensor info (start of the padding).
        data_offset: absolute offset of the tensor data section.

    Example::

        f = GGUFFile("model.gguf")
        f.metadata["general.architecture"]       # 'llama'
        w = f.tensor_bytes("blk.0.attn_q.weight") # (rows, row_bytes) uint8 memmap view
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        fh, size = _open_checked(self.path)
        with fh:
            try:
                hdr = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as e:
                raise GGUFError(f"{self.path}: cannot map the file: {e}") from None
            try:
                self._parse(_HeaderReader(hdr, size, self.path))
            finally:
                hdr.close()
            self._mm = np.memmap(fh, dtype=np.uint8, mode="r", shape=(size,))

    # -- parsing ----------------------------------------------------------
    def _parse(self, r: _HeaderReader) -> None:
        self._parse_preamble(r)
        # each kv is >= key length + value type + 1 byte of value;
        # each tensor info >= name length + n_dims + type + offset
        n_tensors = r.count("tensor count", r.cnt_size + 4 + 4 + 8)
        n_kv = r.count("metadata key-value count", r.cnt_size + 4 + 1)
        self._parse_metadata(r, n_kv)
        self.alignment = self._alignment()
        raw = [self._parse_tensor_info(r, i) for i in range(n_tensors)]
        self.header_end = r.pos
        self.data_offset = -(-r.pos // self.alignment) * self.alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, type_id, offset in raw:
            self.tensors[name] = self._tensor_info(name, shape, type_id, offset, r.size)
        self._check_overlaps()

    def _check_overlaps(self) -> None:
        """Two tensors may not share bytes (llama.cpp requires disjoint, in-file data)."""
        spans = sorted((t.offset, t.offset + t.n_bytes, t.name) for t in self.tensors.values() if t.n_bytes)
        for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
            if b0 < a1:
                raise GGUFError(
                    f"{self.path}: tensors {an!r} [{a0}, {a1}) and {bn!r} [{b0}, {b1}) overlap in the file"
                )

    def _parse_preamble(self, r: _HeaderReader) -> None:
        r.need(4, "magic")
        magic = bytes(r.buf[0:4])
        if magic != GGUF_MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        r.pos = 4
        version = r.read(_U32, "version")
        if version not in SUPPORTED_VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            hint = (
                f" (read byte-swapped it is {swapped}: this is a big-endian GGUF, which is not supported)"
                if swapped in SUPPORTED_VERSIONS
                else ""
            )
            raise UnsupportedVersionError(
                f"{self.path}: GGUF version {version} is not supported (supported: 1, 2, 3){hint}"
            )
        self.version = version
        if version == 1:
            r.cnt, r.cnt_size = _U32, 4

    def _parse_metadata(self, r: _HeaderReader, n_kv: int) -> None:
        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, MetadataType] = {}
        for i in range(n_kv):
            start = r.pos
            key = r.string(f"metadata key #{i}")
            if key in self.metadata:
                raise GGUFError(f"{self.path}: duplicate metadata key {key!r} (key #{i} at offset {start})")
            t = r.value_type(f"metadata key {key!r}")
            self.metadata[key], self.metadata_types[key] = r.value(t, f"metadata key {key!r}")

    def _alignment(self) -> int:
        if "general.alignment" not in self.metadata:
            return GGUF_DEFAULT_ALIGNMENT
        a, mt = self.metadata["general.alignment"], self.metadata_types["general.alignment"]
        if mt.type != GGUFValueType.UINT32:
            raise GGUFError(f"{self.path}: metadata key 'general.alignment' must be UINT32, not {mt}")
        if a <= 0 or a & (a - 1):
            raise GGUFError(
                f"{self.path}: metadata key 'general.alignment' = {a} is not a power of two"
            )
        return a

    def _parse_tensor_info(self, r: _HeaderReader, i: int) -> tuple[str, tuple[int, ...], int, int]:
        name = r.string(f"name of tensor #{i}")
        what = f"tensor {name!r} (#{i})"
        n_dims = r.read(_U32, f"n_dims of {what}")
        if n_dims > GGML_MAX_DIMS:
            raise GGUFError(
                f"{self.path}: {what} has n_dims = {n_dims} (at most {GGML_MAX_DIMS} are allowed)"
            )
        shape = r.read_many(_DIMS[r.cnt_size, n_dims], f"shape of {what}") if n_dims else ()
        type_id = r.read(_U32, f"ggml type of {what}")
        offset = r.read(_U64, f"data offset of {what}")
        return name, shape, type_id, offset

    def _tensor_info(self, name: str, shape: tuple[int, ...], type_id: int, offset: int, size: int) -> TensorInfo:
        """Validate one tensor's descriptor against the format and the file size."""
        where = f"{self.path}: tensor {name!r}: "
        if name in self.tensors:
            raise GGUFError(f"{where}duplicate tensor name")
        t = _ggml_type(type_id, where)
        n_elements, extent = 1, 1  # extent: the product of the non-zero dimensions
        for d in shape:
            if d >= 2**63:
                raise GGUFError(f"{where}dimension {d} of shape {shape} is negative as int64")
            n_elements *= d
            if n_elements >= 2**63:
                raise GGUFError(f"{where}shape {shape} has more than 2^63 elements")
            extent *= max(d, 1)
            # ggml refuses products of dimensions past INT64_MAX even when another is 0 (found by fuzzing:
            # numpy then cannot even shape an empty view of them)
            if extent >= 2**60:  # numpy views at most 2^63 bytes: 2^60 elements of up to 8 bytes
                raise GGUFError(f"{where}shape {shape} has dimensions whose product exceeds 2^60")
        block, type_size = BLOCK_GEOMETRY[t]
        ne0 = shape[0] if shape else 1
        if ne0 % block:
            raise GGUFError(
                f"{where}ne0 = {ne0} (shape {shape}) is not a multiple of the {t.name} block size {block}"
            )
        n_bytes = n_elements // block * type_size
        if offset % self.alignment:
            raise GGUFError(
                f"{where}data offset {offset} is not a multiple of the alignment {self.alignment}"
            )
        start = self.data_offset + offset
        if start > size:
            raise TruncatedFileError(
                f"{where}data offset {offset} (absolute {start}) is past the end of the file ({size} bytes)"
            )
        if start + n_bytes > size:
            raise TruncatedFileError(
                f"{where}data [{start}, {start + n_bytes}) runs past the end of the file ({size} bytes): "
                f"truncated tensor data"
            )
        return TensorInfo(name, tuple(shape), t, start, n_bytes)

    # -- access -----------------------------------------------------------
    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path}: no tensor named {name!r}") from None

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The raw bytes of tensor ``name``, shape ``(*np_shape[:-1], row_bytes)``, zero-copy."""
        info = self.info(name)
        raw = self._mm[info.offset : info.offset + info.n_bytes]
        if not info.shape:
            return raw
        rows = info.np_shape[:-1]
        n_rows = 1
        for d in rows:
            n_rows *= d
        return raw.reshape(*rows, info.n_bytes // n_rows if n_rows else 0)

    def tensor_data(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a zero-copy view: typed for float/int types, raw rows of bytes otherwise."""
        info = self.info(name)
        dtype = GGML_NUMPY_DTYPES.get(info.ggml_type)
        if dtype is None:
            return self.tensor_bytes(name)
        raw = self._mm[info.offset : info.offset + info.n_bytes]
        return raw.view(dtype).reshape(info.np_shape)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def file_size(self) -> int:
        return len(self._mm)

    def __repr__(self) -> str:
        return f"GGUFFile({self.path!r}, v{self.version}, {len(self.metadata)} keys, {len(self.tensors)} tensors)"


def _ggml_type(type_id: int, where: str) -> GGMLType:
    """The :class:`GGMLType` of a raw id, or raise naming ``where``."""
    try:
        t = GGMLType(type_id)
    except ValueError:
        raise GGUFUnsupportedTypeError(f"{where}unknown ggml tensor type id {type_id}") from None
    if t not in BLOCK_GEOMETRY:
        raise GGUFUnsupportedTypeError(f"{where}ggml type {t.name} has no known block layout")
    return t
