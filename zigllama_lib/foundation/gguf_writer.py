"""Write GGUF files (v3 by default; v2 and the legacy v1 on request).

The layout written is exactly the one :mod:`.gguf` reads (and llama.cpp's
``gguf.cpp`` writes)::

    b"GGUF" | version u32 | n_tensors count | n_kv count
    n_kv x (key string | value_type u32 | value)
    n_tensors x (name string | n_dims u32 | ne[n_dims] count | ggml_type u32 | offset u64)
    zero padding to a multiple of `alignment`                    -> data_offset
    tensor 0 data | zero padding to a multiple of `alignment`
    tensor 1 data | padding ...

``count`` is u64 in v2/v3 and u32 in v1. Tensor ``i`` sits at relative offset
``offset_i = sum_{j<i} pad(n_bytes_j)`` with ``pad(x) = ceil(x / alignment) *
alignment``; llama.cpp insists on exactly these offsets (tensors in header
order, no gaps beyond the padding), so files from this writer load there.

Metadata type inference (``value_type=None``)
---------------------------------------------
=========================  ==============================================
Python / numpy value       GGUF type
=========================  ==============================================
``bool``, ``np.bool_``     BOOL
``int``                    INT32 if it fits, else INT64, else UINT64
``float``                  FLOAT32
``np.integer/np.floating`` the matching fixed-size type (``np.float16``
                           has no GGUF type and is rejected)
``str`` / ``bytes``        STRING (bytes are written as they are)
``list`` / ``tuple``       ARRAY of the unified item type; ints widen
                           together (INT32 < INT64 < UINT64); nested
                           lists give nested arrays
1-D ``np.ndarray``         ARRAY of the dtype's type; an N-D array is an
                           array of N-1-D arrays
=========================  ==============================================

gguf-py's ``GGUFValueType.get_type`` maps every ``int`` to INT32 and fails on
larger values; we agree with it wherever it succeeds and widen otherwise. An
empty list has no item type to infer: pass ``value_type`` explicitly (e.g.
``MetadataType(GGUFValueType.ARRAY, MetadataType(GGUFValueType.INT32))``).
``general.alignment`` is always written as UINT32 (readers require it) and
sets the writer's alignment.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .errors import GGUFError, UnsupportedTypeError
from .ggml_types import BLOCK_GEOMETRY, GGMLType
from .gguf import (
    GGML_MAX_DIMS,
    GGML_NUMPY_DTYPES,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    SCALAR_DTYPES,
    SCALAR_STRUCTS,
    SUPPORTED_VERSIONS,
    GGUFFile,
    GGUFValueType,
    MetadataType,
    TensorInfo,
)

GGML_MAX_NAME = 64  # llama.cpp keeps tensor names in char[64], NUL included

_ARRAY = GGUFValueType.ARRAY
_INT_WIDENING = (GGUFValueType.INT32, GGUFValueType.INT64, GGUFValueType.UINT64)
# numpy (kind, itemsize) -> GGUF scalar type
_NP_KIND_TO_TYPE: dict[tuple[str, int], GGUFValueType] = {
    (dt.kind, dt.itemsize): t for t, dt in SCALAR_DTYPES.items() if t != GGUFValueType.BOOL
}
_NP_KIND_TO_TYPE[("b", 1)] = GGUFValueType.BOOL
_INT_LIMITS = {
    t: (int(np.iinfo(dt).min), int(np.iinfo(dt).max)) for t, dt in SCALAR_DTYPES.items() if dt.kind in "iu"
}


# --------------------------------------------------------------------------
# type inference
# --------------------------------------------------------------------------
def _int_type(v: int, what: str) -> GGUFValueType:
    for t in _INT_WIDENING:
        lo, hi = _INT_LIMITS[t]
        if lo <= v <= hi:
            return t
    raise GGUFError(f"{what}: integer {v} does not fit any GGUF integer type")


def _numpy_type(dtype: np.dtype, what: str) -> GGUFValueType:
    dtype = np.dtype(dtype)
    if dtype.kind in "US":
        return GGUFValueType.STRING
    t = _NP_KIND_TO_TYPE.get((dtype.kind, dtype.itemsize))
    if t is None:
        raise UnsupportedTypeError(f"{what}: numpy dtype {dtype} has no GGUF metadata type")
    return t


def _unify(a: MetadataType, b: MetadataType, what: str) -> MetadataType:
    """The one item type that holds items of types ``a`` and ``b``."""
    if a == b:
        return a
    if a.type in _INT_WIDENING and b.type in _INT_WIDENING:
        return MetadataType(max(a.type, b.type, key=_INT_WIDENING.index))
    if a.type == _ARRAY and b.type == _ARRAY:
        if a.item is None or b.item is None:
            return a if b.item is None else b
        return MetadataType(_ARRAY, _unify(a.item, b.item, what))
    raise GGUFError(f"{what}: array mixes items of type {a} and {b}")


def infer_type(value: Any, what: str = "value") -> MetadataType:
    """The GGUF type this module writes ``value`` as (see the module docstring)."""
    if isinstance(value, (bool, np.bool_)):
        return MetadataType(GGUFValueType.BOOL)
    if isinstance(value, (str, bytes, bytearray)):
        return MetadataType(GGUFValueType.STRING)
    if isinstance(value, np.generic):  # before int/float: np.float64 subclasses float
        return MetadataType(_numpy_type(value.dtype, what))
    if isinstance(value, int):
        return MetadataType(_int_type(value, what))
    if isinstance(value, float):
        return MetadataType(GGUFValueType.FLOAT32)
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return infer_type(value[()], what)
        item = MetadataType(_numpy_type(value.dtype, what))
        for _ in range(value.ndim - 1):
            item = MetadataType(_ARRAY, item)
        return MetadataType(_ARRAY, item)
    if isinstance(value, (list, tuple)):
        item: MetadataType | None = None
        for i, v in enumerate(value):
            t = infer_type(v, f"{what}[{i}]")
            item = t if item is None else _unify(item, t, what)
        return MetadataType(_ARRAY, item)
    raise UnsupportedTypeError(f"{what}: cannot store a {type(value).__name__} as GGUF metadata")


def _complete_type(value: Any, t: MetadataType | GGUFValueType | None, what: str) -> MetadataType:
    """Resolve a user-given type: None -> inferred; bare ARRAY -> item type inferred."""
    if t is None:
        mt = infer_type(value, what)
    elif isinstance(t, MetadataType):
        mt = t
    else:
        mt = MetadataType(GGUFValueType(t))
    if mt.type == _ARRAY and mt.item is None:
        mt = infer_type(value, what)
        if mt.type != _ARRAY:
            raise GGUFError(f"{what}: declared ARRAY but the value is a {type(value).__name__}")
    if mt.type == _ARRAY and mt.item is None:
        raise GGUFError(f"{what}: empty array: pass value_type with the item type")
    return mt


# --------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------
class _Encoder:
    """Encodes values in one GGUF version's conventions (u32 counts in v1, u64 after)."""

    def __init__(self, version: int):
        self.cnt = struct.Struct("<I" if version == 1 else "<Q")
        self.cnt_max = 2**32 - 1 if version == 1 else 2**64 - 1

    def count(self, n: int, what: str) -> bytes:
        if n > self.cnt_max:
            raise GGUFError(f"{what}: {n} does not fit this GGUF version's count field")
        return self.cnt.pack(n)

    def string(self, s: str | bytes, what: str) -> bytes:
        raw = s.encode("utf-8", "surrogateescape") if isinstance(s, str) else bytes(s)
        return self.count(len(raw), f"length of {what}") + raw

    def value(self, value: Any, mt: MetadataType, what: str) -> bytes:
        """The encoding of ``value`` as type ``mt`` (without the leading value type)."""
        t = mt.type
        if t in SCALAR_STRUCTS:
            return _scalar(value, t, what)
        if t == GGUFValueType.STRING:
            if not isinstance(value, (str, bytes, bytearray)):
                raise GGUFError(f"{what}: STRING value must be str or bytes, not {type(value).__name__}")
            return self.string(value, what)
        if t != _ARRAY:
            raise GGUFError(f"{what}: unknown value type {t}")
        return self.array(value, mt.item, what)

    def array(self, value: Any, item: MetadataType | None, what: str) -> bytes:
        if isinstance(value, (str, bytes, bytearray)) or not hasattr(value, "__len__"):
            raise GGUFError(f"{what}: ARRAY value must be a sequence, not {type(value).__name__}")
        item = item or MetadataType(GGUFValueType.UINT8)  # only reachable for empty arrays
        head = struct.pack("<I", item.type) + self.count(len(value), f"item count of {what}")
        if item.type in SCALAR_DTYPES:
            return head + _numeric_array(value, item.type, what)
        if item.type == GGUFValueType.STRING:
            parts = []
            for i, s in enumerate(value):
                if not isinstance(s, (str, bytes, bytearray)):
                    raise GGUFError(f"{what}[{i}]: STRING item must be str or bytes, not {type(s).__name__}")
                parts.append(self.string(s, f"{what}[{i}]"))
            return head + b"".join(parts)
        return head + b"".join(self.array(v, item.item, f"{what}[{i}]") for i, v in enumerate(value))


def _scalar(value: Any, t: GGUFValueType, what: str) -> bytes:
    if isinstance(value, (np.ndarray, list, tuple, str, bytes)):
        raise GGUFError(f"{what}: {t.name} value must be a scalar, not {type(value).__name__}")
    if t == GGUFValueType.BOOL:
        return b"\x01" if value else b"\x00"
    try:
        if t in _INT_LIMITS:
            if isinstance(value, (float, np.floating)) and not float(value).is_integer():
                raise GGUFError(f"{what}: {value!r} is not an integer ({t.name})")
            v = int(value)
            lo, hi = _INT_LIMITS[t]
            if not lo <= v <= hi:
                raise GGUFError(f"{what}: {v} is out of range for {t.name} [{lo}, {hi}]")
            return SCALAR_STRUCTS[t].pack(v)
        return SCALAR_STRUCTS[t].pack(float(value))
    except (TypeError, ValueError, OverflowError, struct.error) as e:
        raise GGUFError(f"{what}: cannot encode {value!r} as {t.name}: {e}") from None


def _numeric_array(value: Any, t: GGUFValueType, what: str) -> bytes:
    """Bulk-encode a numeric array, range-checking integers before the cast."""
    try:
        return _numeric_array_unchecked(value, t, what)
    except (OverflowError, ValueError, TypeError) as e:
        raise GGUFError(f"{what}: cannot encode as an array of {t.name}: {e}") from None


def _numeric_array_unchecked(value: Any, t: GGUFValueType, what: str) -> bytes:
    dtype = SCALAR_DTYPES[t]
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise GGUFError(f"{what}: an array of {t.name} must be 1-D, got shape {value.shape}")
        if value.dtype.kind not in "biuf":
            raise GGUFError(f"{what}: {value.dtype} items in an array of {t.name}")
        if t == GGUFValueType.BOOL:
            return value.astype(bool).astype(dtype).tobytes()
        if t in _INT_LIMITS and value.size:
            if value.dtype.kind == "f" and not np.all(np.mod(value, 1) == 0):
                raise GGUFError(f"{what}: non-integer values in an array of {t.name}")
            _check_range(int(value.min()), int(value.max()), t, what)
        return np.ascontiguousarray(value, dtype=dtype).tobytes()
    items = list(value)  # Python scalars: convert one by one (numpy would go via float64)
    for i, v in enumerate(items):
        if not isinstance(v, (int, float, np.number, np.bool_)):
            raise GGUFError(f"{what}[{i}]: {type(v).__name__} item in an array of {t.name}")
    if t == GGUFValueType.BOOL:
        return bytes(1 if v else 0 for v in items)
    if t in _INT_LIMITS:
        if any(isinstance(v, (float, np.floating)) and not float(v).is_integer() for v in items):
            raise GGUFError(f"{what}: non-integer values in an array of {t.name}")
        ints = [int(v) for v in items]
        if ints:
            _check_range(min(ints), max(ints), t, what)
        return np.array(ints, dtype=dtype).tobytes()
    return np.array([float(v) for v in items], dtype=dtype).tobytes()


def _check_range(mn: int, mx: int, t: GGUFValueType, what: str) -> None:
    lo, hi = _INT_LIMITS[t]
    if mn < lo or mx > hi:
        raise GGUFError(f"{what}: values [{mn}, {mx}] out of range for {t.name} [{lo}, {hi}]")


# --------------------------------------------------------------------------
# the writer
# --------------------------------------------------------------------------
@dataclass
class _PendingTensor:
    name: str
    shape: tuple[int, ...]  # ggml order
    ggml_type: GGMLType
    data: np.ndarray  # any dtype; its bytes are written as they are
    n_bytes: int


def _pad(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


class GGUFWriter:
    """Collect metadata and tensors, then :meth:`write` one GGUF file.

    Example::

        w = GGUFWriter("tiny.gguf")
        w.add_metadata("general.architecture", "llama")
        w.add_metadata("llama.block_count", 2, GGUFValueType.UINT32)
        w.add_tensor("token_embd.weight", np.zeros((10, 64), np.float32))  # ggml shape (64, 10)
        w.write()

    Tensor arrays are kept by reference (not copied) until :meth:`write`, so
    re-writing memory-mapped tensors streams them from disk.
    """

    def __init__(self, path: str | os.PathLike, version: int = 3, alignment: int = GGUF_DEFAULT_ALIGNMENT):
        if version not in SUPPORTED_VERSIONS:
            raise GGUFError(f"{os.fspath(path)}: cannot write GGUF version {version} (supported: 1, 2, 3)")
        self.path = os.fspath(path)
        self.version = version
        self.alignment = GGUF_DEFAULT_ALIGNMENT
        self.metadata: dict[str, tuple[Any, MetadataType]] = {}
        self.tensors: dict[str, _PendingTensor] = {}
        self._enc = _Encoder(version)
        if alignment != GGUF_DEFAULT_ALIGNMENT:
            self.add_metadata("general.alignment", alignment)

    # -- metadata ---------------------------------------------------------
    def add_metadata(self, key: str, value: Any, value_type: MetadataType | GGUFValueType | None = None) -> None:
        """Add ``key = value``; ``value_type`` None infers it (module docstring).

        The value is encoded right away, so a bad value raises here, naming the key.
        """
        what = f"{self.path}: metadata key {key!r}"
        if not isinstance(key, str) or not key:
            raise GGUFError(f"{self.path}: metadata keys must be non-empty strings, got {key!r}")
        if key in self.metadata:
            raise GGUFError(f"{what}: duplicate key")
        if key == "general.alignment":
            value_type = self._check_alignment(value, value_type, what)
        mt = _complete_type(value, value_type, what)
        encoded = self._enc.value(value, mt, what)
        self.metadata[key] = (encoded, mt)

    def _check_alignment(self, value: Any, value_type: Any, what: str) -> MetadataType:
        if value_type is not None and MetadataType(GGUFValueType.UINT32) != (
            value_type if isinstance(value_type, MetadataType) else MetadataType(GGUFValueType(value_type))
        ):
            raise GGUFError(f"{what}: must be UINT32")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0 or value & (value - 1):
            raise GGUFError(f"{what}: alignment {value!r} is not a positive power of two")
        if self.tensors:
            raise GGUFError(f"{what}: set the alignment before adding tensors")
        self.alignment = int(value)
        return MetadataType(GGUFValueType.UINT32)

    # -- tensors ------------------------------------------------------------
    def add_tensor(
        self,
        name: str,
        data: np.ndarray,
        ggml_type: GGMLType | None = None,
        shape: tuple[int, ...] | None = None,
    ) -> None:
        """Add tensor ``name``.

        * float32/float16/float64/int8/16/32/64 arrays: the type is inferred and
          the ggml shape is ``data.shape`` reversed (numpy row-major -> ggml order).
        * ``ggml_type`` given with a non-uint8 array of a plain type (F32, F16, I32, ...):
          the data are cast to that type.
        * ``uint8`` data with an explicit ``ggml_type``: raw (e.g. quantised)
          bytes, written as they are. ``shape`` (ggml order) may be omitted when
          ``data`` has the ``(..., row_bytes)`` layout of :meth:`GGUFFile.tensor_bytes`.
        """
        where = f"{self.path}: tensor {name!r}"
        self._check_name(name, where)
        data = np.asarray(data)
        t, data = self._tensor_type(data, ggml_type, where)
        shape = self._tensor_shape(data, t, shape, where)
        n_bytes = _tensor_nbytes(shape, t, where)
        if data.nbytes != n_bytes:
            raise GGUFError(
                f"{where}: {t.name} shape {shape} needs {n_bytes} bytes, the data have {data.nbytes}"
            )
        self.tensors[name] = _PendingTensor(name, shape, t, data, n_bytes)

    def _check_name(self, name: str, where: str) -> None:
        if not isinstance(name, str) or not name:
            raise GGUFError(f"{self.path}: tensor names must be non-empty strings, got {name!r}")
        if len(name.encode("utf-8", "surrogateescape")) >= GGML_MAX_NAME:
            raise GGUFError(f"{where}: name is longer than {GGML_MAX_NAME - 1} bytes (llama.cpp's limit)")
        if name in self.tensors:
            raise GGUFError(f"{where}: duplicate tensor name")

    @staticmethod
    def _tensor_type(data: np.ndarray, ggml_type: GGMLType | None, where: str) -> tuple[GGMLType, np.ndarray]:
        if ggml_type is None:
            for t, dt in GGML_NUMPY_DTYPES.items():
                if data.dtype == dt or data.dtype == dt.newbyteorder(">"):
                    return t, data.astype(dt, copy=False)
            raise UnsupportedTypeError(
                f"{where}: cannot infer a ggml type for dtype {data.dtype}; pass ggml_type "
                f"(uint8 data are raw bytes of an explicit type)"
            )
        t = GGMLType(ggml_type)
        if t not in BLOCK_GEOMETRY:
            raise UnsupportedTypeError(f"{where}: ggml type {t.name} has no known block layout")
        if data.dtype == np.uint8:
            return t, data
        if t in GGML_NUMPY_DTYPES:
            return t, data.astype(GGML_NUMPY_DTYPES[t], copy=False)
        raise GGUFError(f"{where}: {t.name} data must be given as raw uint8 bytes, not {data.dtype}")

    @staticmethod
    def _tensor_shape(data: np.ndarray, t: GGMLType, shape: tuple[int, ...] | None, where: str) -> tuple[int, ...]:
        if shape is not None:
            shape = tuple(int(d) for d in shape)
        elif data.dtype != np.uint8:
            shape = tuple(reversed(data.shape))
        else:  # raw bytes laid out (..., row_bytes)
            if data.ndim == 0:
                raise GGUFError(f"{where}: raw {t.name} bytes need a shape")
            block, size = BLOCK_GEOMETRY[t]
            if data.shape[-1] % size:
                raise GGUFError(f"{where}: row of {data.shape[-1]} bytes is not a whole number of {t.name} blocks")
            shape = (data.shape[-1] // size * block, *reversed(data.shape[:-1]))
        if len(shape) > GGML_MAX_DIMS:
            raise GGUFError(f"{where}: shape {shape} has more than {GGML_MAX_DIMS} dimensions")
        if any(d < 0 for d in shape):
            raise GGUFError(f"{where}: negative dimension in shape {shape}")
        return shape

    # -- output -------------------------------------------------------------
    def header_bytes(self) -> bytes:
        """Everything before the tensor data: preamble, metadata, tensor infos, padding."""
        enc = self._enc
        parts = [
            GGUF_MAGIC,
            struct.pack("<I", self.version),
            enc.count(len(self.tensors), "tensor count"),
            enc.count(len(self.metadata), "metadata count"),
        ]
        for key, (encoded, mt) in self.metadata.items():
            parts += [enc.string(key, f"key {key!r}"), struct.pack("<I", mt.type), encoded]
        offset = 0
        for t in self.tensors.values():
            what = f"tensor {t.name!r}"
            parts += [enc.string(t.name, what), struct.pack("<I", len(t.shape))]
            parts += [enc.count(d, f"dimension of {what}") for d in t.shape]
            parts += [struct.pack("<IQ", t.ggml_type, offset)]
            offset += _pad(t.n_bytes, self.alignment)
        head = b"".join(parts)
        return head + bytes(_pad(len(head), self.alignment) - len(head))

    def write(self) -> str:
        """Write the file (via a temporary name, then an atomic rename); return its path."""
        header = self.header_bytes()
        tmp = f"{self.path}.tmp{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(header)
                for t in self.tensors.values():
                    _write_array(f, t.data)
                    f.write(bytes(_pad(t.n_bytes, self.alignment) - t.n_bytes))
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return self.path


def _tensor_nbytes(shape: tuple[int, ...], t: GGMLType, where: str) -> int:
    block, size = BLOCK_GEOMETRY[t]
    ne0 = shape[0] if shape else 1
    if ne0 % block:
        raise GGUFError(f"{where}: ne0 = {ne0} is not a multiple of the {t.name} block size {block}")
    n = 1
    for d in shape:
        n *= d
    return n // block * size


def _write_array(f: Any, data: np.ndarray, chunk: int = 64 << 20) -> None:
    """Write an array's bytes in C order, in chunks (no full copy of memmaps)."""
    flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    for start in range(0, flat.size, chunk):
        f.write(memoryview(flat[start : start + chunk]))


# --------------------------------------------------------------------------
# re-writing a file
# --------------------------------------------------------------------------
TensorTransform = Callable[[TensorInfo, np.ndarray], Any]


def copy_gguf(
    src: GGUFFile,
    dst_path: str | os.PathLike,
    metadata_overrides: Mapping[str, Any] | None = None,
    tensor_transform: TensorTransform | None = None,
    *,
    override_types: Mapping[str, MetadataType | GGUFValueType] | None = None,
    version: int | None = None,
    alignment: int | None = None,
) -> str:
    """Re-write ``src`` to ``dst_path``, optionally changing metadata and tensors.

    * ``metadata_overrides``: ``key -> value``. An existing key keeps its declared
      type unless ``override_types`` names one; new keys are appended (type
      inferred unless given); ``None`` deletes the key.
    * ``tensor_transform(info, data)`` gets each tensor's :meth:`GGUFFile.tensor_data`
      view and returns ``None`` (drop the tensor), an array (same name and ggml
      type; raw ``(rows, row_bytes)`` uint8 for quantised types), or a tuple
      ``(array, ggml_type)`` / ``(array, ggml_type, ggml_shape)`` to change the type.
    * ``version`` / ``alignment`` default to the source's.

    Without overrides, the result has the same metadata, tensor infos and data
    as ``src`` (byte-identical when ``src`` was written with llama.cpp's layout).
    """
    overrides = dict(metadata_overrides or {})
    types = dict(override_types or {})
    w = GGUFWriter(dst_path, version=version or src.version, alignment=GGUF_DEFAULT_ALIGNMENT)
    align = alignment or src.alignment
    keys: Iterable[str] = list(src.metadata) + [k for k in overrides if k not in src.metadata]
    if align != GGUF_DEFAULT_ALIGNMENT and "general.alignment" not in keys:
        w.add_metadata("general.alignment", align)
    for key in keys:
        if key in overrides and overrides[key] is None:
            continue
        if key == "general.alignment":
            w.add_metadata(key, align if "general.alignment" not in overrides else overrides[key])
            continue
        value = overrides.get(key, src.metadata.get(key))
        mt = types.get(key, src.metadata_types.get(key) if key in src.metadata else None)
        w.add_metadata(key, value, mt)
    for name, info in src.tensors.items():
        _copy_tensor(w, src, name, info, tensor_transform)
    return w.write()


def _copy_tensor(w: GGUFWriter, src: GGUFFile, name: str, info: TensorInfo, transform: TensorTransform | None) -> None:
    if transform is None:
        w.add_tensor(name, src.tensor_bytes(name), info.ggml_type, info.shape)
        return
    data = src.tensor_data(name)
    out = transform(info, data)
    if out is None:
        return
    if isinstance(out, tuple):
        w.add_tensor(name, *out)
    elif info.ggml_type in GGML_NUMPY_DTYPES:
        w.add_tensor(name, out, info.ggml_type)
    else:
        w.add_tensor(name, out, info.ggml_type, info.shape if np.asarray(out).shape == data.shape else None)
