"""Read GGUF files (versions 1-3): typed metadata, tensor infos, zero-copy data.

A GGUF file is laid out as::

    magic "GGUF" | version u32 | n_tensors | n_kv         (counts: u64, u32 in v1)
    n_kv x  (key: string, value_type: u32, value)
    n_tensors x (name: string, n_dims: u32, ne[n_dims], ggml_type: u32, offset: u64)
    padding to `general.alignment` (default 32)
    tensor data; each tensor at data_start + offset, offset a multiple of the alignment

Strings are a length (u64; u32 in v1) followed by UTF-8 bytes. An ARRAY value is
an element type (u32), a count, then the elements; arrays may nest.

Everything is validated against the file size before anything is allocated, so a
hostile header cannot make us allocate gigabytes or read past the end: every
count is bounded by the bytes that remain. Tensor data are never copied: each
tensor is a slice of one read-only ``numpy.memmap`` of the whole file.

Shapes are stored in ggml order, ``ne = (ne0, ne1, ...)`` with ``ne0`` the
contiguous (fastest) dimension; :attr:`TensorInfo.np_shape` is the reverse,
numpy's row-major order.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import GGUFError, TruncatedFileError, UnsupportedTypeError, UnsupportedVersionError
from .ggml_types import GGMLType, ggml_type, row_bytes

GGUF_MAGIC = b"GGUF"
GGUF_DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4
SUPPORTED_VERSIONS = (1, 2, 3)


class GGUFValueType(enum.IntEnum):
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


@dataclass(frozen=True)
class MetadataType:
    """The declared GGUF type of a metadata value (``item`` is set for arrays)."""

    type: GGUFValueType
    item: "MetadataType | None" = None

    def __str__(self) -> str:
        if self.type == GGUFValueType.ARRAY:
            return f"ARRAY[{self.item}]"
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
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


class _Cursor:
    """Bounds-checked little-endian reads from a byte buffer."""

    def __init__(self, buf: np.ndarray, path: str, count_fmt: str):
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.path = path
        self.count_fmt = count_fmt  # "<Q" for v2/v3, "<I" for v1
        self.count_size = struct.calcsize(count_fmt)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise TruncatedFileError(
                f"{self.path}: truncated while reading {what}: need {n} bytes at offset "
                f"{self.pos}, file has {self.size}"
            )

    def unpack(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def count(self, what: str, min_item_bytes: int) -> int:
        """Read a count and check the remaining bytes could hold that many items."""
        n = self.unpack(self.count_fmt, what)
        remaining = self.size - self.pos
        if min_item_bytes > 0 and n > remaining // min_item_bytes:
            raise GGUFError(
                f"{self.path}: {what} is {n}, but only {remaining} bytes remain "
                f"(each item needs at least {min_item_bytes})"
            )
        return n

    def string(self, what: str) -> str:
        n = self.count(f"length of {what}", 1)
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        # surrogateescape keeps invalid UTF-8 bytes recoverable instead of failing
        return raw.decode("utf-8", errors="surrogateescape")

    def value_type(self, what: str) -> GGUFValueType:
        raw = self.unpack("<I", f"value type of {what}")
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise UnsupportedTypeError(
                f"{self.path}: {what} has unknown GGUF value type {raw}"
            ) from None


def _min_bytes(t: GGUFValueType, count_size: int) -> int:
    """Smallest encoding of one value of type ``t`` (for count sanity checks)."""
    if t in SCALAR_DTYPES:
        return SCALAR_DTYPES[t].itemsize
    if t == GGUFValueType.STRING:
        return count_size
    return 4 + count_size  # ARRAY: item type + count


def _read_value(cur: _Cursor, t: GGUFValueType, what: str, depth: int = 0) -> tuple[Any, MetadataType]:
    if t in SCALAR_DTYPES:
        dtype = SCALAR_DTYPES[t]
        cur.need(dtype.itemsize, what)
        value = np.frombuffer(cur.buf, dtype=dtype, count=1, offset=cur.pos)[0].item()
        cur.pos += dtype.itemsize
        if t == GGUFValueType.BOOL:
            value = bool(value)
        return value, MetadataType(t)
    if t == GGUFValueType.STRING:
        return cur.string(what), MetadataType(t)
    # ARRAY
    if depth > 8:
        raise GGUFError(f"{cur.path}: {what} nests arrays more than 8 deep")
    item_t = cur.value_type(f"items of {what}")
    n = cur.count(f"item count of {what}", _min_bytes(item_t, cur.count_size))
    if item_t in SCALAR_DTYPES:
        dtype = SCALAR_DTYPES[item_t]
        cur.need(n * dtype.itemsize, what)
        arr = np.frombuffer(cur.buf, dtype=dtype, count=n, offset=cur.pos).copy()
        cur.pos += n * dtype.itemsize
        if item_t == GGUFValueType.BOOL:
            arr = arr.astype(bool)
        return arr, MetadataType(t, MetadataType(item_t))
    items, item_type = [], MetadataType(item_t)
    for i in range(n):
        v, item_type = _read_value(cur, item_t, f"{what}[{i}]", depth + 1)
        items.append(v)
    return items, MetadataType(t, item_type)


class GGUFFile:
    """A parsed GGUF file.

    Attributes:
        path: the file.
        version: GGUF version (1, 2 or 3).
        metadata: ``key -> value``; scalars are Python numbers/bools/strings,
            numeric arrays are 1-D numpy arrays, string and nested arrays are lists.
        metadata_types: ``key -> MetadataType`` as declared in the file.
        tensors: ``name -> TensorInfo`` in file order.
        alignment: the data alignment (``general.alignment`` or 32).
        data_offset: absolute offset of the tensor data section.

    Example::

        f = GGUFFile("model.gguf")
        f.metadata["general.architecture"]       # 'llama'
        w = f.tensor_data("blk.0.attn_q.weight") # (rows, row_bytes) uint8 memmap view
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            size = os.path.getsize(self.path)
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot open: {e.strerror}") from None
        if size < 4:
            raise TruncatedFileError(f"{self.path}: file is {size} bytes, too short for a GGUF header")
        self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._parse()

    # -- parsing ----------------------------------------------------------
    def _parse(self) -> None:
        buf = self._mm
        magic = bytes(buf[:4])
        if magic != GGUF_MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        cur = _Cursor(buf, self.path, "<Q")
        cur.pos = 4
        version = cur.unpack("<I", "version")
        if version not in SUPPORTED_VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            hint = " (this looks like a big-endian GGUF, which is not supported)" if swapped in SUPPORTED_VERSIONS else ""
            raise UnsupportedVersionError(
                f"{self.path}: GGUF version {version} is not supported (supported: 1, 2, 3){hint}"
            )
        self.version = version
        if version == 1:
            cur.count_fmt, cur.count_size = "<I", 4
        # every tensor info takes >= 8+4+4+8 bytes (v1: 4+4+4+8); every kv >= 8+4+1
        n_tensors = cur.count("tensor count", cur.count_size + 4 + 4 + 8)
        n_kv = cur.count("metadata key-value count", cur.count_size + 4 + 1)

        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, MetadataType] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            if key in self.metadata:
                raise GGUFError(f"{self.path}: duplicate metadata key {key!r}")
            t = cur.value_type(f"metadata key {key!r}")
            value, mtype = _read_value(cur, t, f"metadata key {key!r}")
            self.metadata[key] = value
            self.metadata_types[key] = mtype

        self.alignment = GGUF_DEFAULT_ALIGNMENT
        if "general.alignment" in self.metadata:
            a = self.metadata["general.alignment"]
            if self.metadata_types["general.alignment"].type != GGUFValueType.UINT32 or a <= 0 or a & (a - 1):
                raise GGUFError(f"{self.path}: general.alignment must be a power-of-two UINT32, got {a!r}")
            self.alignment = a

        raw_infos = []
        for i in range(n_tensors):
            name = cur.string(f"name of tensor #{i}")
            n_dims = cur.unpack("<I", f"n_dims of tensor {name!r}")
            if n_dims > GGML_MAX_DIMS:
                raise GGUFError(f"{self.path}: tensor {name!r} has {n_dims} dimensions (max {GGML_MAX_DIMS})")
            shape = tuple(cur.unpack(cur.count_fmt, f"shape of tensor {name!r}") for _ in range(n_dims))
            type_id = cur.unpack("<I", f"type of tensor {name!r}")
            offset = cur.unpack("<Q", f"offset of tensor {name!r}")
            raw_infos.append((name, shape, type_id, offset))

        data_offset = -(-cur.pos // self.alignment) * self.alignment
        self.data_offset = data_offset
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, type_id, offset in raw_infos:
            where = f"{self.path}: tensor {name!r}: "
            if name in self.tensors:
                raise GGUFError(f"{where}duplicate tensor name")
            t = ggml_type(type_id, where)
            n_elements = 1
            for d in shape:
                n_elements *= d
                if n_elements >= 2**62:
                    raise GGUFError(f"{where}shape {shape} has too many elements")
            ne0 = shape[0] if shape else 1
            n_bytes = row_bytes(t, ne0, where) * (n_elements // ne0) if ne0 else 0
            if offset % self.alignment:
                raise GGUFError(f"{where}data offset {offset} is not a multiple of the alignment {self.alignment}")
            start = data_offset + offset
            if start + n_bytes > len(self._mm):
                raise TruncatedFileError(
                    f"{where}data [{start}, {start + n_bytes}) runs past the end of the file ({len(self._mm)} bytes)"
                )
            self.tensors[name] = TensorInfo(name, shape, t, start, n_bytes)

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
        return raw.reshape(*rows, info.n_bytes // max(1, int(np.prod(rows, dtype=np.int64))))

    def tensor_data(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a zero-copy view: typed for float/int types, raw rows of bytes otherwise."""
        info = self.info(name)
        dtype = {
            GGMLType.F32: np.float32, GGMLType.F16: np.float16, GGMLType.F64: np.float64,
            GGMLType.I8: np.int8, GGMLType.I16: np.int16, GGMLType.I32: np.int32, GGMLType.I64: np.int64,
        }.get(info.ggml_type)
        raw = self._mm[info.offset : info.offset + info.n_bytes]
        if dtype is None:
            return self.tensor_bytes(name)
        return raw.view(dtype).reshape(info.np_shape)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def file_size(self) -> int:
        return len(self._mm)

    def __repr__(self) -> str:
        return f"GGUFFile({self.path!r}, v{self.version}, {len(self.metadata)} keys, {len(self.tensors)} tensors)"
