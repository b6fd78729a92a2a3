"""Malformed GGUF files: each is refused with a GGUFError naming the problem, fast and without
a big allocation; gguf-py (llama.cpp's reader, the oracle) refuses or flags the same files."""

from __future__ import annotations

import struct
import time
import tracemalloc

import numpy as np
import pytest

from zigllama_lib.foundation.errors import GGUFError, TruncatedFileError, ZigLlamaError
from zigllama_lib.foundation.gguf import GGUFFile
from zigllama_lib.foundation.gguf_writer import GGUFWriter


def _good(tmp_path, version=3):
    p = tmp_path / "good.gguf"
    w = GGUFWriter(p, version=version)
    w.add_metadata("general.architecture", "llama")
    w.add_metadata("tokenizer.ggml.tokens", ["a", "b"])
    w.add_tensor("a.weight", np.arange(8, dtype=np.float32).reshape(2, 4))
    w.add_tensor("b.weight", np.ones(8, np.float32))
    w.write()
    return p.read_bytes()


def _refused(tmp_path, data: bytes, *words: str, exc=GGUFError):
    p = tmp_path / "bad.gguf"
    p.write_bytes(data)
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(exc) as e:
            GGUFFile(p)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.monotonic() - t0 < 2.0
    assert peak < 64 << 20, f"peak allocation {peak} bytes"
    msg = str(e.value)
    assert str(p) in msg
    for w in words:
        assert w in msg, msg
    return msg


def _gguf_py_refuses(tmp_path, data: bytes) -> bool:
    gguf = pytest.importorskip("gguf")
    p = tmp_path / "oracle.gguf"
    p.write_bytes(data)
    try:
        gguf.GGUFReader(p)
    except Exception:
        return True
    return False


def test_the_good_file_reads_in_both(tmp_path):
    data = _good(tmp_path)
    (tmp_path / "g.gguf").write_bytes(data)
    assert set(GGUFFile(tmp_path / "g.gguf").tensors) == {"a.weight", "b.weight"}
    assert not _gguf_py_refuses(tmp_path, data)


@pytest.mark.parametrize("cut", [3, 7, 15, 23, 40, 60, 100])
def test_every_truncation_of_the_header_is_refused(tmp_path, cut):
    data = _good(tmp_path)[:cut]
    _refused(tmp_path, data, exc=ZigLlamaError)
    assert _gguf_py_refuses(tmp_path, data)


def test_truncated_tensor_data(tmp_path):
    data = _good(tmp_path)
    _refused(tmp_path, data[:-4], "b.weight", "past the end", exc=TruncatedFileError)


@pytest.mark.parametrize("field_offset,what", [(8, "tensor count"), (16, "metadata key-value count")])
def test_absurd_counts(tmp_path, field_offset, what):
    data = bytearray(_good(tmp_path))
    data[field_offset:field_offset + 8] = struct.pack("<Q", 2**62)
    _refused(tmp_path, bytes(data), what, "absurd count", exc=TruncatedFileError)


def test_absurd_string_length(tmp_path):
    data = bytearray(_good(tmp_path))
    data[24:32] = struct.pack("<Q", 2**63 - 1)  # length of the first key
    _refused(tmp_path, bytes(data), "length of metadata key #0")


def _patch_offset(data: bytes, name: bytes, new: int) -> bytes:
    i = data.index(name) + len(name)
    n_dims = struct.unpack_from("<I", data, i)[0]
    at = i + 4 + 8 * n_dims + 4
    return data[:at] + struct.pack("<Q", new) + data[at + 8:]


def test_overlapping_tensors(tmp_path):
    data = _patch_offset(_good(tmp_path), b"b.weight", 0)  # b starts where a does
    _refused(tmp_path, data, "a.weight", "b.weight", "overlap")


def test_out_of_range_tensor(tmp_path):
    data = _patch_offset(_good(tmp_path), b"b.weight", 1 << 40)
    _refused(tmp_path, data, "b.weight", "past the end")
    assert _gguf_py_refuses(tmp_path, data)


def test_misaligned_tensor(tmp_path):
    data = _patch_offset(_good(tmp_path), b"b.weight", 33)
    _refused(tmp_path, data, "b.weight", "alignment")


def test_unknown_tensor_type(tmp_path):
    data = bytearray(_good(tmp_path))
    i = data.index(b"b.weight") + len(b"b.weight") + 4 + 8
    data[i:i + 4] = struct.pack("<I", 9999)
    _refused(tmp_path, bytes(data), "b.weight", "9999")


def test_unknown_value_type(tmp_path):
    data = bytearray(_good(tmp_path))
    i = data.index(b"general.architecture") + len(b"general.architecture")
    data[i:i + 4] = struct.pack("<I", 77)
    _refused(tmp_path, bytes(data), "general.architecture", "77")


def test_too_many_dims(tmp_path):
    data = bytearray(_good(tmp_path))
    i = data.index(b"a.weight") + len(b"a.weight")
    data[i:i + 4] = struct.pack("<I", 1000)
    _refused(tmp_path, bytes(data), "a.weight", "n_dims")


def test_wrong_magic_and_version(tmp_path):
    data = _good(tmp_path)
    _refused(tmp_path, b"GGML" + data[4:], "magic")
    _refused(tmp_path, data[:4] + struct.pack("<I", 99) + data[8:], "version 99")
