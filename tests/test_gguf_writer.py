"""GGUFWriter and copy_gguf: round trips through our reader, gguf-py and llama.cpp."""

from __future__ import annotations

import filecmp
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from oracles import require_file, require_module

from zigllama_lib.foundation.errors import GGUFError, UnsupportedTypeError, ZigLlamaError
from zigllama_lib.foundation.ggml_types import BLOCK_GEOMETRY, GGMLType
from zigllama_lib.foundation.gguf import GGUFFile, GGUFValueType as V, MetadataType as M
from zigllama_lib.foundation.gguf_writer import GGUFWriter, copy_gguf, infer_type

gguf = require_module("gguf")

CACHE = Path(os.path.expanduser(os.environ.get("ZIGLLAMA_CACHE", "~/.cache/zigllama")))
SMOLLM2 = CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = CACHE / "gemma-3-270m-q4_k_m.gguf"


def need(p: Path) -> Path:
    return require_file(p)


def A(item: V) -> M:
    return M(V.ARRAY, M(item))


# (key, value, explicit type or None for inference, expected MetadataType)
SCALARS = [
    ("t.u8", 255, V.UINT8, M(V.UINT8)),
    ("t.i8", -128, V.INT8, M(V.INT8)),
    ("t.u16", 65535, V.UINT16, M(V.UINT16)),
    ("t.i16", -32768, V.INT16, M(V.INT16)),
    ("t.u32", 2**32 - 1, V.UINT32, M(V.UINT32)),
    ("t.i32", -(2**31), V.INT32, M(V.INT32)),
    ("t.u64", 2**64 - 1, V.UINT64, M(V.UINT64)),
    ("t.i64", -(2**63), V.INT64, M(V.INT64)),
    ("t.f32", 0.25, V.FLOAT32, M(V.FLOAT32)),
    ("t.f64", 1e300, V.FLOAT64, M(V.FLOAT64)),
    ("t.bool", False, V.BOOL, M(V.BOOL)),
    ("t.str", "héllo wörld ✓", V.STRING, M(V.STRING)),
    ("t.empty_str", "", V.STRING, M(V.STRING)),
    # inferred
    ("i.int", 7, None, M(V.INT32)),
    ("i.neg", -(2**31), None, M(V.INT32)),
    ("i.big", 2**31, None, M(V.INT64)),
    ("i.huge", 2**63, None, M(V.UINT64)),
    ("i.float", 1.5, None, M(V.FLOAT32)),
    ("i.bool", True, None, M(V.BOOL)),
    ("i.str", "x", None, M(V.STRING)),
    ("i.np_u16", np.uint16(9), None, M(V.UINT16)),
    ("i.np_f64", np.float64(2.5), None, M(V.FLOAT64)),
    ("i.np_bool", np.bool_(True), None, M(V.BOOL)),
]

ARRAYS = [
    ("a.u8", np.array([0, 255], np.uint8), None, A(V.UINT8)),
    ("a.i8", np.array([-1, 1], np.int8), None, A(V.INT8)),
    ("a.u16", np.array([1, 2], np.uint16), None, A(V.UINT16)),
    ("a.i16", np.array([-1, 2], np.int16), None, A(V.INT16)),
    ("a.u32", np.array([1, 2**32 - 1], np.uint32), None, A(V.UINT32)),
    ("a.i32", np.array([-5, 5], np.int32), None, A(V.INT32)),
    ("a.u64", np.array([2**64 - 1], np.uint64), None, A(V.UINT64)),
    ("a.i64", np.array([-(2**63)], np.int64), None, A(V.INT64)),
    ("a.f32", np.array([0.5, -1e-3], np.float32), None, A(V.FLOAT32)),
    ("a.f64", np.array([1e-300, 3.0]), None, A(V.FLOAT64)),
    ("a.bool", np.array([True, False, True]), None, A(V.BOOL)),
    ("a.list_int", [1, 2, 3], None, A(V.INT32)),
    ("a.list_widen", [1, 2**40], None, A(V.INT64)),
    ("a.list_float", [0.5, 1.0], None, A(V.FLOAT32)),
    ("a.list_bool", [True, False], None, A(V.BOOL)),
    ("a.list_u16", [1, 2], A(V.UINT16), A(V.UINT16)),
    ("a.list_bare_array", [1, 2], V.ARRAY, A(V.INT32)),
    ("a.str", ["a", "", "ü", "<|im_start|>", "x" * 1000], None, A(V.STRING)),
    ("a.np_str", np.array(["ab", "c"]), None, A(V.STRING)),
    ("a.empty_u32", [], A(V.UINT32), A(V.UINT32)),
    ("a.empty_str", [], A(V.STRING), A(V.STRING)),
    ("n.nested", [[1, 2], [3]], None, M(V.ARRAY, A(V.INT32))),
    ("n.nested_widen", [[1], [2**40]], None, M(V.ARRAY, A(V.INT64))),
    ("n.nested_str", [["a", "b"], ["c"]], None, M(V.ARRAY, A(V.STRING))),
    ("n.nested3", [[[1.0], [2.0, 3.0]], [[4.0]]], None, M(V.ARRAY, M(V.ARRAY, A(V.FLOAT32)))),
    ("n.np2d", np.arange(6, dtype=np.int16).reshape(2, 3), None, M(V.ARRAY, A(V.INT16))),
    ("n.with_empty", [[], [5]], None, M(V.ARRAY, A(V.INT32))),
]

ALL_VALUES = SCALARS + ARRAYS


def plain(value: Any) -> Any:
    """Nested lists of Python scalars, for equality checks."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def expected_value(value: Any, mt: M) -> Any:
    v = plain(value)
    if mt.type == V.FLOAT32:
        return float(np.float32(v))
    if mt.type == V.ARRAY and mt.item.type == V.FLOAT32:
        return np.asarray(v, np.float32).tolist()
    if mt.type == V.ARRAY and mt.item.type == V.ARRAY:
        return [expected_value(x, mt.item) for x in value]
    return v


def gguf_py_types(mt: M, value: Any) -> list[int]:
    if mt.type != V.ARRAY:
        return [int(mt.type)]
    return [int(V.ARRAY)] + (gguf_py_types(mt.item, value[0]) if len(value) else [])


def flat(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) and isinstance(value[0], (list, tuple, np.ndarray)):
        return [x for v in value for x in flat(v)]
    return plain(value)


# tensors: (name, data, ggml_type, shape)
rng = np.random.default_rng(0)


def quant_bytes(t: GGMLType, ne0: int, rows: int) -> np.ndarray:
    block, size = BLOCK_GEOMETRY[t]
    return rng.integers(0, 256, (rows, ne0 // block * size), dtype=np.uint8)


TENSORS = [
    ("f32", rng.standard_normal((3, 5)).astype(np.float32), None, None),
    ("f16", rng.standard_normal((2, 7)).astype(np.float16), None, None),
    ("f64", rng.standard_normal(3), None, None),
    ("i8", np.arange(-4, 4, dtype=np.int8), None, None),
    ("i16", np.arange(6, dtype=np.int16).reshape(3, 2), None, None),
    ("i32", np.arange(4, dtype=np.int32), None, None),
    ("i64", np.arange(2, dtype=np.int64), None, None),
    ("f32_4d", np.ones((2, 1, 3, 4), np.float32), None, None),
    ("q4_0", quant_bytes(GGMLType.Q4_0, 64, 3), GGMLType.Q4_0, (64, 3)),
    ("q8_0", quant_bytes(GGMLType.Q8_0, 32, 2), GGMLType.Q8_0, None),  # shape from (rows, row_bytes)
    ("q4_k", quant_bytes(GGMLType.Q4_K, 256, 2), GGMLType.Q4_K, (256, 2)),
    ("q6_k", quant_bytes(GGMLType.Q6_K, 512, 1), GGMLType.Q6_K, (512, 1)),
    ("f32_as_f16", np.linspace(0, 1, 8, dtype=np.float32), GGMLType.F16, None),  # cast
]


def build(path: Path, version: int = 3, alignment: int = 32) -> Path:
    w = GGUFWriter(path, version=version, alignment=alignment)
    w.add_metadata("general.architecture", "test")
    for key, value, t, _ in ALL_VALUES:
        w.add_metadata(key, value, t)
    for name, data, t, shape in TENSORS:
        w.add_tensor(name, data, t, shape)
    w.write()
    return path


def expected_tensor(name: str, data: np.ndarray, t: GGMLType | None, shape: Any) -> tuple[tuple, np.ndarray]:
    if data.dtype == np.uint8:
        block, size = BLOCK_GEOMETRY[t]
        ne = shape or (data.shape[-1] // size * block, data.shape[0])
        return tuple(ne), data
    if t == GGMLType.F16:
        data = data.astype(np.float16)
    return tuple(reversed(data.shape)), data


CASES = [(3, 32), (2, 32), (3, 1), (3, 8), (3, 64), (2, 256), (1, 32), (1, 128)]


@pytest.fixture(params=CASES, ids=[f"v{v}-align{a}" for v, a in CASES])
def written(request, tmp_path) -> tuple[Path, int, int]:
    version, alignment = request.param
    return build(tmp_path / "rt.gguf", version, alignment), version, alignment


# ---------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------


def test_inferred_types():
    for key, value, t, expected in ALL_VALUES:
        if t is None:
            assert infer_type(value) == expected, key


def test_round_trip_our_reader(written):
    path, version, alignment = written
    f = GGUFFile(path)
    assert f.version == version and f.alignment == alignment
    keys = ["general.architecture"] + [k for k, *_ in ALL_VALUES]
    if alignment != 32:
        keys = ["general.alignment"] + keys
        assert f.metadata_types["general.alignment"] == M(V.UINT32)
    assert list(f.metadata) == keys
    for key, value, _, mt in ALL_VALUES:
        assert f.metadata_types[key] == mt, key
        assert plain(f.metadata[key]) == expected_value(value, mt), key
    assert f.data_offset % alignment == 0
    assert list(f.tensors) == [n for n, *_ in TENSORS]
    for name, data, t, shape in TENSORS:
        info = f.tensors[name]
        ne, expected = expected_tensor(name, data, t, shape)
        assert info.shape == ne, name
        assert info.offset % alignment == 0, name
        if info.ggml_type in (GGMLType.F32, GGMLType.F16, GGMLType.F64, GGMLType.I8, GGMLType.I16,
                              GGMLType.I32, GGMLType.I64):
            assert np.array_equal(f.tensor_data(name), expected), name
        else:
            assert np.array_equal(f.tensor_bytes(name), expected), name


def test_round_trip_gguf_py(written):
    path, version, alignment = written
    if version == 1:
        pytest.skip("gguf-py does not read GGUF v1")
    ours = GGUFFile(path)
    ref = gguf.GGUFReader(path)
    ref_keys = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert ref_keys == list(ours.metadata)
    for key, value, _, mt in ALL_VALUES:
        field = ref.fields[key]
        assert [int(t) for t in field.types] == gguf_py_types(mt, value), key
        contents = field.contents()
        assert contents == flat(expected_value(value, mt)) or contents == expected_value(value, mt), key
    assert ref.alignment == alignment and ref.data_offset == ours.data_offset
    for t in ref.tensors:
        info = ours.tensors[t.name]
        assert (tuple(int(d) for d in t.shape), int(t.tensor_type), int(t.data_offset), int(t.n_bytes)) == (
            info.shape, int(info.ggml_type), info.offset, info.n_bytes), t.name
        assert np.array_equal(np.asarray(t.data).view(np.uint8).reshape(-1), ours.tensor_bytes(t.name).reshape(-1))


def test_layout_matches_llama_cpp_rules(written):
    """Tensors back to back in header order, each padded to the alignment; the file ends padded."""
    path, _, alignment = written
    f = GGUFFile(path)
    expected = f.data_offset
    for info in f.tensors.values():
        assert info.offset == expected, info.name
        expected += -(-info.n_bytes // alignment) * alignment
    assert f.file_size == expected


def test_no_tensors(tmp_path):
    w = GGUFWriter(tmp_path / "meta.gguf")
    w.add_metadata("only.key", "v")
    w.write()
    f = GGUFFile(tmp_path / "meta.gguf")
    assert f.metadata == {"only.key": "v"} and f.tensors == {}
    assert gguf.GGUFReader(tmp_path / "meta.gguf").fields["only.key"].contents() == "v"


def test_invalid_utf8_survives_round_trip(tmp_path):
    src = tmp_path / "a.gguf"
    w = GGUFWriter(src)
    w.add_metadata("raw", b"\xff\xfeok")
    w.write()
    f = GGUFFile(src)
    assert f.metadata["raw"].encode("utf-8", "surrogateescape") == b"\xff\xfeok"
    copy_gguf(f, tmp_path / "b.gguf")
    assert filecmp.cmp(src, tmp_path / "b.gguf", shallow=False)


def test_write_replaces_atomically(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"old")
    w = GGUFWriter(p)
    w.add_tensor("w", np.zeros(4, np.float32))
    w.write()
    assert GGUFFile(p).tensors["w"].n_bytes == 16
    assert [q.name for q in tmp_path.iterdir()] == ["x.gguf"]


# ---------------------------------------------------------------------------
# writer errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, t, exc, fragment",
    [
        ("k", 300, V.UINT8, GGUFError, "out of range for UINT8"),
        ("k", -1, V.UINT32, GGUFError, "out of range for UINT32"),
        ("k", 2**64, None, GGUFError, "does not fit"),
        ("k", 1.5, V.INT32, GGUFError, "not an integer"),
        ("k", "x", V.UINT32, GGUFError, "must be a scalar"),
        ("k", 5, V.STRING, GGUFError, "STRING value must be str"),
        ("k", [], None, GGUFError, "empty array"),
        ("k", [1, "a"], None, GGUFError, "mixes items"),
        ("k", [1.0, 2], None, GGUFError, "mixes items"),
        ("k", [[1], ["a"]], None, GGUFError, "mixes items"),
        ("k", [1, 256], A(V.UINT8), GGUFError, "out of range for UINT8"),
        ("k", ["a", 1], A(V.STRING), GGUFError, "STRING item must be str"),
        ("k", {"a": 1}, None, UnsupportedTypeError, "cannot store a dict"),
        ("k", np.float16(1), None, UnsupportedTypeError, "float16"),
        ("k", None, None, UnsupportedTypeError, "NoneType"),
        ("general.alignment", 48, None, GGUFError, "not a positive power of two"),
        ("general.alignment", 64, V.INT32, GGUFError, "must be UINT32"),
    ],
)
def test_bad_metadata(tmp_path, key, value, t, exc, fragment):
    w = GGUFWriter(tmp_path / "w.gguf")
    with pytest.raises(exc, match=fragment) as info:
        w.add_metadata(key, value, t)
    assert f"metadata key {key!r}" in str(info.value)
    assert key not in w.metadata


def test_duplicate_metadata_key(tmp_path):
    w = GGUFWriter(tmp_path / "w.gguf")
    w.add_metadata("a", 1)
    with pytest.raises(GGUFError, match="duplicate key"):
        w.add_metadata("a", 2)


@pytest.mark.parametrize(
    "name, data, t, shape, exc, fragment",
    [
        ("x" * 64, np.zeros(4, np.float32), None, None, GGUFError, "longer than 63 bytes"),
        ("raw", np.zeros(8, np.uint8), None, None, UnsupportedTypeError, "pass ggml_type"),
        ("q", np.zeros((2, 18), np.uint8), GGMLType.Q4_0, (33, 2), GGUFError, "ne0 = 33"),
        ("q", np.zeros((2, 18), np.uint8), GGMLType.Q4_0, (64, 2), GGUFError, "needs 72 bytes, the data have 36"),
        ("q", np.zeros((2, 17), np.uint8), GGMLType.Q4_0, None, GGUFError, "not a whole number"),
        ("q", np.zeros(32, np.float32), GGMLType.Q4_0, None, GGUFError, "raw uint8 bytes"),
        ("big", np.zeros((1, 1, 1, 1, 2), np.float32), None, None, GGUFError, "more than 4 dimensions"),
        ("s", np.zeros(4, np.float32), None, (5,), GGUFError, "needs 20 bytes"),
    ],
)
def test_bad_tensor(tmp_path, name, data, t, shape, exc, fragment):
    w = GGUFWriter(tmp_path / "w.gguf")
    with pytest.raises(exc, match=fragment):
        w.add_tensor(name, data, t, shape)
    assert not w.tensors


def test_duplicate_tensor_and_late_alignment(tmp_path):
    w = GGUFWriter(tmp_path / "w.gguf")
    w.add_tensor("a", np.zeros(4, np.float32))
    with pytest.raises(GGUFError, match="duplicate tensor name"):
        w.add_tensor("a", np.zeros(4, np.float32))
    with pytest.raises(GGUFError, match="before adding tensors"):
        w.add_metadata("general.alignment", 64)


def test_bad_writer_args(tmp_path):
    with pytest.raises(GGUFError, match="version 4"):
        GGUFWriter(tmp_path / "w.gguf", version=4)
    with pytest.raises(GGUFError, match="power of two"):
        GGUFWriter(tmp_path / "w.gguf", alignment=24)


def test_v1_count_limits(tmp_path):
    w = GGUFWriter(tmp_path / "w.gguf", version=1)
    w.add_tensor("w", np.zeros(4, np.float32), shape=(4,))
    w.tensors["w"].shape = (2**33,)  # bypass add_tensor's size check: the header encoder must still refuse
    with pytest.raises(GGUFError, match="does not fit"):
        w.write()
    assert not (tmp_path / "w.gguf").exists()
    assert not any(p.name.startswith("w.gguf.tmp") for p in tmp_path.iterdir())


def test_all_errors_are_zigllama_errors():
    assert issubclass(GGUFError, ZigLlamaError) and issubclass(UnsupportedTypeError, ZigLlamaError)


# ---------------------------------------------------------------------------
# copy_gguf
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("src", [SMOLLM2, GEMMA3], ids=["smollm2", "gemma3"])
def test_copy_of_real_file_is_byte_identical(tmp_path, src):
    dst = copy_gguf(GGUFFile(need(src)), tmp_path / "copy.gguf")
    assert filecmp.cmp(src, dst, shallow=False)


def test_copy_round_trip_of_synthetic_files(written, tmp_path):
    path, version, alignment = written
    dst = copy_gguf(GGUFFile(path), tmp_path / "copy2.gguf")
    assert filecmp.cmp(path, dst, shallow=False)


def test_copy_overrides_and_transform(tmp_path):
    src = GGUFFile(build(tmp_path / "src.gguf"))

    def transform(info, data):
        if info.name == "i8":
            return None  # drop
        if info.name == "f32":
            return data * 2  # same type, new values
        if info.name == "f64":
            return data.astype(np.float32), GGMLType.F32  # new type
        if info.name == "q4_0":
            return data[:1], GGMLType.Q4_0, (64, 1)  # new shape
        return data

    dst = copy_gguf(
        src, tmp_path / "dst.gguf",
        metadata_overrides={"t.u8": 7, "t.str": None, "new.key": [1, 2], "t.f32": 3},
        tensor_transform=transform,
        override_types={"t.f32": V.UINT16},
    )
    f = GGUFFile(dst)
    assert f.metadata["t.u8"] == 7 and f.metadata_types["t.u8"] == M(V.UINT8)  # type kept
    assert "t.str" not in f.metadata
    assert list(f.metadata)[-1] == "new.key" and f.metadata_types["new.key"] == A(V.INT32)
    assert f.metadata["t.f32"] == 3 and f.metadata_types["t.f32"] == M(V.UINT16)
    assert "i8" not in f.tensors
    assert np.array_equal(f.tensor_data("f32"), src.tensor_data("f32") * 2)
    assert f.tensors["f64"].ggml_type == GGMLType.F32
    assert f.tensors["q4_0"].shape == (64, 1)
    assert np.array_equal(f.tensor_bytes("q4_0"), src.tensor_bytes("q4_0")[:1])
    assert np.array_equal(f.tensor_bytes("q6_k"), src.tensor_bytes("q6_k"))


def test_copy_changes_version_and_alignment(tmp_path):
    src = GGUFFile(build(tmp_path / "src.gguf", 3, 64))
    f = GGUFFile(copy_gguf(src, tmp_path / "dst.gguf", version=2, alignment=128))
    assert f.version == 2 and f.alignment == 128 and f.metadata["general.alignment"] == 128
    for name in src.tensors:
        assert np.array_equal(f.tensor_bytes(name), src.tensor_bytes(name))
        assert f.tensors[name].offset % 128 == 0


def test_copy_onto_its_own_source(tmp_path):
    p = build(tmp_path / "self.gguf")
    before = p.read_bytes()
    copy_gguf(GGUFFile(p), p)
    assert p.read_bytes() == before


# ---------------------------------------------------------------------------
# llama.cpp loads our re-written file and computes the same logits
# ---------------------------------------------------------------------------

LLAMA_CASES = {
    "overrides": dict(metadata_overrides={"general.name": "zigllama copy", "zigllama.note": "re-written"}),
    "align64": dict(alignment=64),
    "v2": dict(version=2),
}


@pytest.fixture(scope="module")
def llama_reference():
    llama_cpp = require_module("llama_cpp")
    src = need(SMOLLM2)
    return llama_cpp, _llama_logits(llama_cpp, src)


def _llama_logits(llama_cpp, path: Path) -> tuple[list[int], np.ndarray, str]:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False)
    ids = llm.tokenize(b"The capital of France is")
    llm.eval(ids)
    scores = np.array(llm.scores[: len(ids)])
    llm.reset()
    text = llm.create_completion("The capital of France is", max_tokens=8, temperature=0.0)["choices"][0]["text"]
    llm.close()
    return ids, scores, text


@pytest.mark.oracle
@pytest.mark.parametrize("case", sorted(LLAMA_CASES))
def test_llama_cpp_loads_copy_with_same_logits(tmp_path, llama_reference, case):
    llama_cpp, (ids0, scores0, text0) = llama_reference
    dst = copy_gguf(GGUFFile(SMOLLM2), tmp_path / f"smol-{case}.gguf", **LLAMA_CASES[case])
    if case != "overrides":
        assert not filecmp.cmp(SMOLLM2, dst, shallow=False)
    ids, scores, text = _llama_logits(llama_cpp, Path(dst))
    assert ids == ids0 and len(ids) > 3
    assert scores.shape == (len(ids), 49152)
    assert np.array_equal(scores, scores0)
    assert text == text0
