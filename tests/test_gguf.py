"""Our GGUF reader against gguf-py's ``GGUFReader`` on the real model files.

Every metadata key (value and declared type) and every tensor info (name,
shape, ggml type, absolute data offset, byte size) must agree; tensor data
must be zero-copy memmap views of the same bytes; the header must parse fast.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from oracles import require_file, require_module

from zigllama_lib.foundation.errors import GGUFError
from zigllama_lib.foundation.ggml_types import GGMLType
from zigllama_lib.foundation.gguf import GGUFFile, GGUFValueType, MetadataType

gguf = require_module("gguf")

CACHE = Path(os.path.expanduser(os.environ.get("ZIGLLAMA_CACHE", "~/.cache/zigllama")))
MODEL_FILES = {
    "smollm2": CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": CACHE / "gemma-3-270m-q4_k_m.gguf",
}


def model_path(key: str) -> Path:
    p = MODEL_FILES[key]
    return require_file(p)


@pytest.fixture(scope="module", params=sorted(MODEL_FILES))
def pair(request) -> tuple[GGUFFile, Any]:
    p = model_path(request.param)
    return GGUFFile(p), gguf.GGUFReader(p)


# -- helpers shared in spirit with test_gguf_writer.py ------------------------
def gguf_py_types(mt: MetadataType, value: Any) -> list[GGUFValueType]:
    """The ``ReaderField.types`` gguf-py reports: array types, then the first item's, recursively."""
    if mt.type != GGUFValueType.ARRAY:
        return [mt.type]
    return [GGUFValueType.ARRAY] + (gguf_py_types(mt.item, value[0]) if len(value) else [])


def flat_contents(mt: MetadataType, value: Any) -> Any:
    """Our value flattened the way ``ReaderField.contents()`` flattens nested arrays."""
    if mt.type != GGUFValueType.ARRAY:
        return value
    if mt.item.type == GGUFValueType.ARRAY:
        return [x for v in value for x in flat_contents(mt.item, v)]
    return value.tolist() if isinstance(value, np.ndarray) else list(value)


# -- metadata -----------------------------------------------------------------
def test_same_keys_in_same_order(pair):
    ours, ref = pair
    ref_keys = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert list(ours.metadata) == ref_keys
    assert list(ours.metadata_types) == ref_keys
    assert ours.version == ref.fields["GGUF.version"].contents()


def test_every_metadata_value_and_type(pair):
    ours, ref = pair
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        mt, value = ours.metadata_types[key], ours.metadata[key]
        assert [int(t) for t in gguf_py_types(mt, value)] == [int(t) for t in field.types], key
        expected = field.contents()
        got = flat_contents(mt, value)
        assert type(got) is type(expected) or isinstance(got, type(expected)), key
        assert got == expected, key


def test_scalar_python_types(pair):
    ours, _ = pair
    for key, mt in ours.metadata_types.items():
        v = ours.metadata[key]
        if mt.type == GGUFValueType.STRING:
            assert isinstance(v, str)
        elif mt.type == GGUFValueType.BOOL:
            assert isinstance(v, bool)
        elif mt.type in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
            assert isinstance(v, float)
        elif mt.type == GGUFValueType.ARRAY and mt.item.type == GGUFValueType.STRING:
            assert isinstance(v, list) and all(isinstance(s, str) for s in v)
        elif mt.type == GGUFValueType.ARRAY:
            assert isinstance(v, np.ndarray) and v.ndim == 1
        else:
            assert isinstance(v, int) and not isinstance(v, bool)


def test_alignment_and_data_offset(pair):
    ours, ref = pair
    assert ours.alignment == ref.alignment
    assert ours.data_offset == ref.data_offset
    assert ours.data_offset % ours.alignment == 0
    assert ours.header_end <= ours.data_offset < ours.header_end + ours.alignment
    assert ours.file_size == os.path.getsize(ours.path)


# -- tensors ------------------------------------------------------------------
def test_every_tensor_info(pair):
    ours, ref = pair
    assert list(ours.tensors) == [t.name for t in ref.tensors]
    for t in ref.tensors:
        info = ours.tensors[t.name]
        assert info.shape == tuple(int(d) for d in t.shape), t.name
        assert int(info.ggml_type) == int(t.tensor_type), t.name
        assert info.offset == int(t.data_offset), t.name
        assert info.n_bytes == int(t.n_bytes), t.name
        assert info.n_elements == int(t.n_elements), t.name
        assert info.offset % ours.alignment == 0


def test_tensor_data_is_zero_copy_and_equal(pair):
    ours, ref = pair
    by_name = {t.name: t for t in ref.tensors}
    names = list(ours.tensors)
    for name in names[:3] + names[-3:] + [n for n in names if "token_embd" in n]:
        raw = ours.tensor_bytes(name)
        assert isinstance(raw, np.memmap), name
        assert not raw.flags.writeable
        expected = np.asarray(by_name[name].data).view(np.uint8).reshape(-1)
        assert np.array_equal(raw.reshape(-1), expected), name
        data = ours.tensor_data(name)
        assert isinstance(data, np.memmap), name
        info = ours.tensors[name]
        if info.ggml_type == GGMLType.F32:
            assert data.dtype == np.float32 and data.shape == info.np_shape
            assert np.array_equal(data, by_name[name].data)
        else:
            assert raw.shape[:-1] == info.np_shape[:-1]


def test_unknown_tensor_name_raises(pair):
    ours, _ = pair
    with pytest.raises(GGUFError, match="no tensor named 'nope'"):
        ours.tensor_data("nope")


# -- speed ----------------------------------------------------------------------
@pytest.mark.parametrize("key", sorted(MODEL_FILES))
def test_header_parse_is_fast(key):
    p = model_path(key)
    best = min(_timed(lambda: GGUFFile(p)) for _ in range(3))
    # target < 0.3 s for gemma's 262k-token vocabulary; the bound leaves room for slow CI
    assert best < 0.6, f"{p.name}: header parse took {best:.3f} s"


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def test_gemma_vocabulary_shapes():
    f = GGUFFile(model_path("gemma3"))
    n = 262144
    assert len(f.metadata["tokenizer.ggml.tokens"]) == n
    assert f.metadata["tokenizer.ggml.scores"].shape == (n,)
    assert f.metadata["tokenizer.ggml.scores"].dtype == np.float32
    assert f.metadata["tokenizer.ggml.token_type"].dtype == np.int32
    assert f.metadata["general.architecture"] == "gemma3"
