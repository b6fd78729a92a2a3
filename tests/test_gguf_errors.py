"""Bad GGUF input: every case raises a ZigLlamaError naming the file and the problem.

Files are assembled byte by byte here (independently of our writer) so that
each test controls exactly one defect. Nothing may crash, hang or allocate
memory proportional to a hostile count.
"""

from __future__ import annotations

import random
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from zigllama_lib.foundation.errors import (
    GGUFError,
    TruncatedFileError,
    UnsupportedTypeError,
    UnsupportedVersionError,
    ZigLlamaError,
)
from zigllama_lib.foundation.ggml_types import GGMLType
from zigllama_lib.foundation.gguf import GGUFFile, GGUFValueType as V

# ---------------------------------------------------------------------------
# a tiny independent GGUF assembler
# ---------------------------------------------------------------------------


class Raw:
    """Byte-level GGUF builder: counts/lengths are u64 (v2/v3) or u32 (v1)."""

    def __init__(self, version: int = 3):
        self.version = version
        self.c = "<I" if version == 1 else "<Q"

    def count(self, n: int) -> bytes:
        return struct.pack(self.c, n)

    def str(self, s: str | bytes) -> bytes:
        b = s.encode() if isinstance(s, str) else s
        return self.count(len(b)) + b

    def kv(self, key: str, t: int, payload: bytes) -> bytes:
        return self.str(key) + struct.pack("<I", t) + payload

    def kv_u32(self, key: str, v: int) -> bytes:
        return self.kv(key, V.UINT32, struct.pack("<I", v))

    def kv_str(self, key: str, v: str) -> bytes:
        return self.kv(key, V.STRING, self.str(v))

    def array(self, item_t: int, n: int, items: bytes) -> bytes:
        return struct.pack("<I", item_t) + self.count(n) + items

    def tinfo(self, name: str, shape: tuple[int, ...], t: int, offset: int) -> bytes:
        dims = b"".join(self.count(d) for d in shape)
        return self.str(name) + struct.pack("<I", len(shape)) + dims + struct.pack("<IQ", t, offset)

    def file(self, kvs: list[bytes], tinfos: list[bytes], data: bytes = b"", alignment: int = 32,
             n_tensors: int | None = None, n_kv: int | None = None) -> bytes:
        head = b"GGUF" + struct.pack("<I", self.version)
        head += self.count(len(tinfos) if n_tensors is None else n_tensors)
        head += self.count(len(kvs) if n_kv is None else n_kv)
        head += b"".join(kvs) + b"".join(tinfos)
        head += bytes(-len(head) % alignment)
        return head + data


def f32_bytes(n: int) -> bytes:
    return np.arange(n, dtype=np.float32).tobytes()


def valid_file(version: int = 3) -> bytes:
    """A small file using every kind of field: scalars, strings, numeric/string/nested arrays, 2 tensors."""
    r = Raw(version)
    kvs = [
        r.kv_str("general.architecture", "llama"),
        r.kv_u32("llama.block_count", 2),
        r.kv("f", V.FLOAT32, struct.pack("<f", 0.5)),
        r.kv("b", V.BOOL, b"\x01"),
        r.kv("i64", V.INT64, struct.pack("<q", -7)),
        r.kv("tokens", V.ARRAY, r.array(V.STRING, 3, r.str("a") + r.str("bc") + r.str("déf"))),
        r.kv("scores", V.ARRAY, r.array(V.FLOAT32, 3, np.array([1, 2, 3], "<f4").tobytes())),
        r.kv("nested", V.ARRAY, r.array(V.ARRAY, 2, r.array(V.INT8, 2, b"\x01\x02") + r.array(V.INT8, 1, b"\x03"))),
    ]
    data = f32_bytes(8) + bytes(32 - 32) + f32_bytes(16)
    tinfos = [r.tinfo("a", (4, 2), GGMLType.F32, 0), r.tinfo("b", (16,), GGMLType.F32, 32)]
    return r.file(kvs, tinfos, data)


def write(tmp_path: Path, blob: bytes, name: str = "bad.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(blob)
    return p


def expect(tmp_path: Path, blob: bytes, exc: type[Exception], *fragments: str) -> ZigLlamaError:
    """Parse ``blob``; assert ``exc`` is raised and its message has the path and every fragment."""
    p = write(tmp_path, blob)
    with pytest.raises(exc) as info:
        GGUFFile(p)
    msg = str(info.value)
    assert isinstance(info.value, ZigLlamaError)
    assert str(p) in msg, msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return info.value


# ---------------------------------------------------------------------------
# the valid baseline (so the defects below are the only defects)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2, 3])
def test_valid_baseline_parses(tmp_path, version):
    f = GGUFFile(write(tmp_path, valid_file(version)))
    assert f.version == version
    assert f.metadata["tokens"] == ["a", "bc", "déf"]
    assert f.metadata["i64"] == -7 and f.metadata["b"] is True and f.metadata["f"] == 0.5
    assert [a.tolist() for a in f.metadata["nested"]] == [[1, 2], [3]]
    assert str(f.metadata_types["nested"]) == "ARRAY[ARRAY[INT8]]"
    assert np.array_equal(f.tensor_data("a"), np.arange(8, dtype=np.float32).reshape(2, 4))
    assert np.array_equal(f.tensor_data("b"), np.arange(16, dtype=np.float32))


# ---------------------------------------------------------------------------
# preamble
# ---------------------------------------------------------------------------


def test_empty_file(tmp_path):
    expect(tmp_path, b"", TruncatedFileError, "empty")


def test_wrong_magic(tmp_path):
    expect(tmp_path, b"GGML" + valid_file()[4:], GGUFError, "not a GGUF file", "magic")


def test_unsupported_version(tmp_path):
    blob = bytearray(valid_file())
    blob[4:8] = struct.pack("<I", 4)
    e = expect(tmp_path, bytes(blob), UnsupportedVersionError, "version 4")
    assert "big-endian" not in str(e)


def test_big_endian_detected(tmp_path):
    blob = bytearray(valid_file())
    blob[4:8] = struct.pack(">I", 3)
    expect(tmp_path, bytes(blob), UnsupportedVersionError, "big-endian", f"version {0x03000000}")


def test_directory(tmp_path):
    d = tmp_path / "dir.gguf"
    d.mkdir()
    with pytest.raises(GGUFError, match="directory") as info:
        GGUFFile(d)
    assert str(d) in str(info.value)


def test_missing_path(tmp_path):
    p = tmp_path / "missing.gguf"
    with pytest.raises(GGUFError, match="cannot open") as info:
        GGUFFile(p)
    assert str(p) in str(info.value)


# ---------------------------------------------------------------------------
# truncation at every cut point
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2, 3])
def test_truncated_at_every_offset(tmp_path, version):
    blob = valid_file(version)
    p = tmp_path / "cut.gguf"
    for cut in range(len(blob)):  # the last tensor ends exactly at the end of the file
        p.write_bytes(blob[:cut])
        with pytest.raises(TruncatedFileError) as info:
            GGUFFile(p)
        assert str(p) in str(info.value), cut


def test_truncated_tensor_data(tmp_path):
    blob = valid_file()
    expect(tmp_path, blob[:-4], TruncatedFileError, "tensor 'b'", "past the end of the file")


def test_tensor_offset_past_end(tmp_path):
    r = Raw()
    blob = r.file([], [r.tinfo("w", (4,), GGMLType.F32, 1 << 40)], f32_bytes(4))
    expect(tmp_path, blob, TruncatedFileError, "tensor 'w'", "past the end of the file", str(1 << 40))


# ---------------------------------------------------------------------------
# absurd counts: rejected before any allocation, quickly
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "what, blob_fn, fragment",
    [
        ("tensors", lambda r: r.file([], [], n_tensors=2**63), "tensor count"),
        ("kv", lambda r: r.file([], [], n_kv=2**63), "metadata key-value count"),
        ("string", lambda r: r.file([r.count(2**40) + b"key"], [], n_kv=1), "length of metadata key #0"),
        ("value string", lambda r: r.file([r.str("k") + struct.pack("<I", V.STRING) + r.count(2**40)], []),
         "length of metadata key 'k'"),
        ("array", lambda r: r.file([r.kv("arr", V.ARRAY, struct.pack("<I", V.UINT8) + r.count(2**62))], []),
         "item count of metadata key 'arr'"),
        ("string array", lambda r: r.file([r.kv("arr", V.ARRAY, struct.pack("<I", V.STRING) + r.count(2**62))], []),
         "item count of metadata key 'arr'"),
        ("tensor name", lambda r: r.file([], [r.count(2**40) + b"x"]), "length of name of tensor #0"),
    ],
)
def test_absurd_counts(tmp_path, what, blob_fn, fragment):
    t0 = time.perf_counter()
    expect(tmp_path, blob_fn(Raw()), TruncatedFileError, fragment)
    assert time.perf_counter() - t0 < 1.0


def test_absurd_string_inside_string_array(tmp_path):
    r = Raw()
    items = r.str("ok") + r.count(2**40) + b"xx"
    blob = r.file([r.kv("toks", V.ARRAY, r.array(V.STRING, 2, items))], [])
    expect(tmp_path, blob, TruncatedFileError, "metadata key 'toks'[1]")


def test_absurd_counts_v1(tmp_path):
    r = Raw(1)
    expect(tmp_path, r.file([], [], n_tensors=2**32 - 1), TruncatedFileError, "tensor count")


def test_array_nesting_limit(tmp_path):
    r = Raw()
    inner = r.array(V.UINT8, 0, b"")
    for _ in range(20):
        inner = r.array(V.ARRAY, 1, inner)
    expect(tmp_path, r.file([r.kv("deep", V.ARRAY, inner)], []), GGUFError, "metadata key 'deep'", "deep")


# ---------------------------------------------------------------------------
# types
# ---------------------------------------------------------------------------


def test_unknown_metadata_value_type(tmp_path):
    r = Raw()
    e = expect(tmp_path, r.file([r.kv("weird", 13, b"\0" * 8)], []), GGUFError,
               "metadata key 'weird'", "unknown GGUF value type 13")
    assert isinstance(e, UnsupportedTypeError)


def test_unknown_array_item_type(tmp_path):
    r = Raw()
    blob = r.file([r.kv("arr", V.ARRAY, struct.pack("<I", 99) + r.count(1) + b"\0" * 8)], [])
    expect(tmp_path, blob, UnsupportedTypeError, "items of metadata key 'arr'", "unknown GGUF value type 99")


@pytest.mark.parametrize("type_id", [4, 5, 31, 999, 2**32 - 1])
def test_unknown_ggml_type(tmp_path, type_id):
    r = Raw()
    e = expect(tmp_path, r.file([], [r.tinfo("w", (32,), type_id, 0)], bytes(128)), UnsupportedTypeError,
               "tensor 'w'", f"unknown ggml tensor type id {type_id}")
    assert isinstance(e, GGUFError)


# ---------------------------------------------------------------------------
# alignment and offsets
# ---------------------------------------------------------------------------


def test_misaligned_tensor_offset(tmp_path):
    r = Raw()
    blob = r.file([], [r.tinfo("w", (4,), GGMLType.F32, 8)], bytes(64))
    expect(tmp_path, blob, GGUFError, "tensor 'w'", "data offset 8 is not a multiple of the alignment 32")


@pytest.mark.parametrize("alignment", [0, 3, 48, 100])
def test_alignment_not_power_of_two(tmp_path, alignment):
    r = Raw()
    blob = r.file([r.kv_u32("general.alignment", alignment)], [])
    expect(tmp_path, blob, GGUFError, "general.alignment", "not a power of two", str(alignment))


def test_alignment_wrong_type(tmp_path):
    r = Raw()
    blob = r.file([r.kv("general.alignment", V.INT32, struct.pack("<i", 64))], [])
    expect(tmp_path, blob, GGUFError, "general.alignment", "must be UINT32")


def test_custom_alignment_is_honoured(tmp_path):
    r = Raw()
    blob = r.file([r.kv_u32("general.alignment", 256)], [r.tinfo("w", (4,), GGMLType.F32, 0)],
                  f32_bytes(4), alignment=256)
    f = GGUFFile(write(tmp_path, blob))
    assert f.alignment == 256 and f.data_offset == 256
    assert f.tensors["w"].offset == 256


# ---------------------------------------------------------------------------
# duplicates and shapes
# ---------------------------------------------------------------------------


def test_duplicate_key(tmp_path):
    r = Raw()
    blob = r.file([r.kv_u32("a.b", 1), r.kv_u32("a.b", 2)], [])
    expect(tmp_path, blob, GGUFError, "duplicate metadata key 'a.b'")


def test_duplicate_tensor_name(tmp_path):
    r = Raw()
    blob = r.file([], [r.tinfo("w", (8,), GGMLType.F32, 0), r.tinfo("w", (8,), GGMLType.F32, 32)], bytes(64))
    expect(tmp_path, blob, GGUFError, "tensor 'w'", "duplicate tensor name")


def test_too_many_dims(tmp_path):
    r = Raw()
    blob = r.file([], [r.tinfo("w", (1, 1, 1, 1, 1), GGMLType.F32, 0)], bytes(32))
    expect(tmp_path, blob, GGUFError, "tensor 'w'", "n_dims = 5")


def test_huge_n_dims_does_not_read_dims(tmp_path):
    r = Raw()
    blob = r.file([], [r.str("w") + struct.pack("<I", 2**32 - 1)])
    expect(tmp_path, blob, GGUFError, "tensor 'w'", f"n_dims = {2**32 - 1}")


def test_ne0_not_multiple_of_block(tmp_path):
    r = Raw()
    blob = r.file([], [r.tinfo("q", (33, 2), GGMLType.Q4_0, 0)], bytes(256))
    expect(tmp_path, blob, GGUFError, "tensor 'q'", "ne0 = 33", "Q4_0 block size 32")


def test_dimension_negative_as_int64(tmp_path):
    r = Raw()
    blob = r.file([], [r.tinfo("w", (2**63 + 4,), GGMLType.F32, 0)], bytes(32))
    expect(tmp_path, blob, GGUFError, "tensor 'w'", "negative")


def test_element_count_overflow(tmp_path):
    r = Raw()
    blob = r.file([], [r.tinfo("w", (2**32, 2**32), GGMLType.F32, 0)], bytes(32))
    expect(tmp_path, blob, GGUFError, "tensor 'w'", "more than 2^63 elements")


def test_huge_shape_is_truncation_not_allocation(tmp_path):
    r = Raw()
    blob = r.file([], [r.tinfo("w", (2**20, 2**20), GGMLType.F32, 0)], bytes(32))
    expect(tmp_path, blob, TruncatedFileError, "tensor 'w'", "past the end of the file")


# ---------------------------------------------------------------------------
# fuzzing: random corruption never escapes the error hierarchy
# ---------------------------------------------------------------------------


def test_random_corruption_raises_only_zigllama_errors(tmp_path):
    base = bytearray(valid_file())
    rng = random.Random(1234)
    p = tmp_path / "fuzz.gguf"
    outcomes = {"ok": 0, "error": 0}
    t0 = time.perf_counter()
    for _ in range(1500):
        blob = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(blob))
            blob[i] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        if rng.random() < 0.2:
            blob = blob[: rng.randrange(len(blob))]
        p.write_bytes(bytes(blob))
        try:
            GGUFFile(p)
            outcomes["ok"] += 1
        except ZigLlamaError as e:
            assert str(p) in str(e)
            outcomes["error"] += 1
    assert outcomes["error"] > 100
    assert time.perf_counter() - t0 < 60
