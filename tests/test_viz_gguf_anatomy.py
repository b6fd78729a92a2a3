"""viz.gguf_anatomy: byte ranges checked against gguf-py's offsets and by hand; plot smoke tests."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from oracles import require_file, require_module  # noqa: E402

from zigllama_lib.foundation.errors import GGUFError  # noqa: E402
from zigllama_lib.foundation.ggml_types import GGMLType  # noqa: E402
from zigllama_lib.foundation.gguf import GGUFFile, GGUFValueType as V, MetadataType as M  # noqa: E402
from zigllama_lib.foundation.gguf_writer import GGUFWriter  # noqa: E402
from zigllama_lib.viz import gguf_anatomy as ga  # noqa: E402

gguf = require_module("gguf")

CACHE = Path(os.path.expanduser(os.environ.get("ZIGLLAMA_CACHE", "~/.cache/zigllama")))
SMOLLM2 = CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = CACHE / "gemma-3-270m-q4_k_m.gguf"


def need(path: Path) -> Path:
    return require_file(path)


@pytest.fixture(scope="module")
def smol() -> GGUFFile:
    return GGUFFile(need(SMOLLM2))


@pytest.fixture(scope="module")
def smol_reader():
    return gguf.GGUFReader(need(SMOLLM2))


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def write_synthetic(path: Path, version: int = 3) -> GGUFFile:
    """A small file exercising every value kind, odd-sized tensors (padding) and non-ASCII text."""
    w = GGUFWriter(path, version=version, alignment=64)
    w.add_metadata("general.architecture", "llama")
    w.add_metadata("ünïcode.kéy", "välue ✓")
    for t, v in [(V.UINT8, 1), (V.INT8, -2), (V.UINT16, 3), (V.INT16, -4), (V.UINT32, 5), (V.INT32, -6),
                 (V.FLOAT32, 0.5), (V.BOOL, True), (V.UINT64, 2**40), (V.INT64, -(2**40)), (V.FLOAT64, 0.25)]:
        w.add_metadata(f"scalar.{t.name.lower()}", v, t)
    w.add_metadata("array.ints", [1, 2, 3])
    w.add_metadata("array.bools", [True, False, True])
    w.add_metadata("array.floats", np.array([1.5, 2.5], np.float64))
    w.add_metadata("array.strings", ["a", "ßç", ""])
    w.add_metadata("array.empty", [], M(V.ARRAY, M(V.STRING)))
    w.add_metadata("array.nested", [[1, 2, 3], [4], []], M(V.ARRAY, M(V.ARRAY, M(V.INT32))))
    w.add_tensor("a", np.arange(3, dtype=np.float32))            # 12 bytes -> 52 bytes of padding after it
    w.add_tensor("b", np.zeros((2, 32), np.float16))             # 128 bytes, aligned
    w.add_tensor("c", np.zeros(5, np.int32))                     # 20 bytes (I32: no dequantiser)
    w.add_tensor("q", np.zeros((1, 20), np.uint8), GGMLType.Q4_1)  # one Q4_1 block
    w.write()
    return GGUFFile(path)


def assert_tiles(ranges: list[ga.ByteRange], size: int) -> None:
    """The ranges cover [0, size) exactly, in order, each non-empty."""
    assert ranges[0].start == 0
    for a, b in zip(ranges, ranges[1:]):
        assert a.stop == b.start, (a, b)
    assert ranges[-1].stop == size
    assert all(r.n_bytes > 0 for r in ranges)


def assert_matches_gguf_py(f: GGUFFile, reader) -> None:
    """Every range starts where gguf-py found that field and is as long as gguf-py's parts."""
    pre = {r.name: r for r in ga.preamble_ranges(f)}
    assert (pre["magic"].start, pre["magic"].stop) == (0, 4)
    assert pre["version"].start == reader.fields["GGUF.version"].offset
    assert pre["tensor count"].start == reader.fields["GGUF.tensor_count"].offset
    assert pre["kv count"].start == reader.fields["GGUF.kv_count"].offset
    assert pre["kv count"].stop == pre["kv count"].start + reader.fields["GGUF.kv_count"].parts[0].nbytes

    meta = ga.metadata_ranges(f)
    kv_fields = [fl for name, fl in reader.fields.items() if not name.startswith("GGUF.")]
    assert [r.name for r in meta] == [fl.name for fl in kv_fields]
    for r, fl in zip(meta, kv_fields):
        assert r.start == fl.offset, r.name
        assert r.n_bytes == sum(int(p.nbytes) for p in fl.parts), r.name

    infos = ga.tensor_info_ranges(f)
    assert [r.name for r in infos] == [t.name for t in reader.tensors]
    for r, t in zip(infos, reader.tensors):
        assert r.start == t.field.offset, r.name
        assert r.n_bytes == sum(int(p.nbytes) for p in t.field.parts), r.name

    data = {r.name: r for r in ga.tensor_data_ranges(f)}
    for t in reader.tensors:
        assert (data[t.name].start, data[t.name].n_bytes) == (t.data_offset, t.n_bytes), t.name

    ranges = ga.file_map(f)
    assert_tiles(ranges, os.path.getsize(f.path))
    first_data = min(r.start for r in ranges if r.section == ga.TENSOR_DATA)
    assert first_data == reader.data_offset


# -- byte ranges ----------------------------------------------------------------
def test_real_file_ranges_match_gguf_py(smol, smol_reader):
    assert_matches_gguf_py(smol, smol_reader)
    totals = ga.section_totals(ga.file_map(smol))
    assert sum(totals.values()) == os.path.getsize(SMOLLM2)
    assert totals[ga.PREAMBLE] == 24  # 4 + 4 + 8 + 8
    # gguf-py: the tensor infos run from the first info to the padding
    first_info = smol_reader.tensors[0].field.offset
    assert totals[ga.METADATA] == first_info - 24


def test_second_real_file_tiles():
    """Gemma 3 (Q4_K/Q5_0/Q6_K/Q8_0, a 262k vocabulary): the ranges end where our parser ended."""
    f = GGUFFile(need(GEMMA3))
    assert_tiles(ga.file_map(f), os.path.getsize(GEMMA3))


def test_synthetic_file_matches_gguf_py(tmp_path):
    f = write_synthetic(tmp_path / "s.gguf")
    assert_matches_gguf_py(f, gguf.GGUFReader(f.path))
    pads = [r for r in ga.file_map(f) if r.section == ga.PADDING]
    assert {r.name for r in pads} >= {"padding after a", "padding after the last tensor"}


def test_v1_file_by_hand(tmp_path):
    """GGUF v1 counts are u32: every size below is worked out by hand."""
    w = GGUFWriter(tmp_path / "v1.gguf", version=1)
    w.add_metadata("k", 7, V.UINT32)
    w.add_tensor("t", np.zeros(3, np.float32))
    w.write()
    f = GGUFFile(tmp_path / "v1.gguf")
    got = [(r.section, r.name, r.start, r.stop) for r in ga.file_map(f)]
    assert got == [
        ("preamble", "magic", 0, 4), ("preamble", "version", 4, 8),
        ("preamble", "tensor count", 8, 12), ("preamble", "kv count", 12, 16),
        ("metadata", "k", 16, 16 + 4 + 1 + 4 + 4),                     # len | "k" | type | u32
        ("tensor info", "t", 29, 29 + 4 + 1 + 4 + 4 + 4 + 8),           # len | "t" | n_dims | ne0 | type | offset
        ("padding", "header padding", 54, 64),                          # up to 2 * 32
        ("tensor data", "t", 64, 76),                                   # 3 float32
        ("padding", "padding after the last tensor", 76, 96),
    ]


def test_value_size_by_hand():
    c = 8
    assert ga.value_size(3, M(V.UINT16), c) == 2
    assert ga.value_size("é", M(V.STRING), c) == 8 + 2                  # é is 2 UTF-8 bytes
    assert ga.value_size(np.array([1, 2], np.int32), M(V.ARRAY, M(V.INT32)), c) == 4 + 8 + 8
    assert ga.value_size(["ab", ""], M(V.ARRAY, M(V.STRING)), c) == 4 + 8 + (8 + 2) + 8
    nested = [np.array([1], np.int64), ["x"]]
    assert ga.value_size(nested, M(V.ARRAY, M(V.ARRAY, M(V.INT64))), 4) == 4 + 4 + (4 + 4 + 8) + (4 + 4 + 4 + 1)


def test_padding_before(tmp_path):
    f = write_synthetic(tmp_path / "s.gguf")
    assert ga.padding_before(f, "a") == 0
    assert ga.padding_before(f, "b") == 64 - 12
    assert ga.padding_before(f, "c") == 0          # b is 128 bytes
    assert ga.padding_before(f, "q") == 64 - 20
    with pytest.raises(GGUFError, match="no tensor named 'nope'"):
        ga.padding_before(f, "nope")


def test_disagreeing_header_end_raises(tmp_path):
    f = write_synthetic(tmp_path / "s.gguf")
    f.header_end += 1
    with pytest.raises(GGUFError, match="add up to"):
        ga.file_map(f)


def test_bytes_by_type(smol):
    by_type = ga.bytes_by_type(smol)
    assert list(by_type) == ["Q4_1", "Q8_0", "F32"]
    # 30 blocks x 7 matrices are Q4_1; norms: 2 per block + the output norm
    assert by_type["Q4_1"][0] == 30 * 7 and by_type["F32"][0] == 30 * 2 + 1
    assert by_type["Q8_0"] == (1, 49152 * 576 // 32 * 34)


# -- hex dump and values -----------------------------------------------------------
def test_hex_dump_by_hand():
    assert ga.hex_dump(b"GGUF\x03\x00\x00\x00") == "0         47 47 55 46 03 00 00 00  |GGUF....|"
    text = ga.hex_dump(np.arange(65, 75, dtype=np.uint8), start=100, width=4)
    assert text.splitlines() == [
        "100       41 42 43 44  |ABCD|",
        "104       45 46 47 48  |EFGH|",
        "108       49 4a        |IJ|",
    ]


def test_dequantised_sample_matches_gguf_py(smol, smol_reader):
    name = "blk.0.ffn_down.weight"  # Q4_1, ggml (1536, 576): 576 rows of 1536
    values, n_used, n_rows = ga.dequantised_sample(smol, name, max_values=10 * 1536 + 5)
    assert (n_used, n_rows) == (10, 576)
    t = next(t for t in smol_reader.tensors if t.name == name)
    expected = gguf.quants.dequantize(np.asarray(t.data[:10]), t.tensor_type)
    np.testing.assert_array_equal(values, expected.reshape(-1))


# -- pictures -------------------------------------------------------------------------
def test_plot_file_map_smoke(smol):
    fig = ga.plot_file_map(smol)
    assert isinstance(fig, matplotlib.figure.Figure)
    ax_file, ax_head, ax_types = fig.axes
    ranges = ga.file_map(smol)
    header = [r for r in ranges if r.stop <= smol.data_offset]
    # one rectangle per range, one collection per colour
    assert sum(len(c.get_paths()) for c in ax_file.collections) == len(ranges)
    assert sum(len(c.get_paths()) for c in ax_head.collections) == len(header)
    assert len(ax_file.collections) == len({r.section for r in ranges} - {ga.TENSOR_DATA}) + 3  # + 3 types
    assert len(ax_types.patches) == 3  # one bar per ggml type
    labels = {t.get_text() for t in ax_head.texts}
    assert {"tokens", "merges"} <= labels


def test_plot_tensor_smoke(smol):
    fig = ga.plot_tensor(smol, "blk.0.attn_q.weight", n_hex_bytes=16, bins=30)
    assert isinstance(fig, matplotlib.figure.Figure)
    ax_where, ax_text, ax_hist = fig.axes
    assert len(ax_hist.patches) == 30
    text = ax_text.texts[0].get_text()
    info = smol.info("blk.0.attn_q.weight")
    assert "Q4_1" in text and f"{info.offset:,}" in text
    assert len(text.splitlines()) == 5 + 2 + 2  # summary, blank + title, 2 lines of 8 bytes


def test_plot_tensor_unsupported_type(tmp_path):
    f = write_synthetic(tmp_path / "s.gguf")
    fig = ga.plot_tensor(f, "c")  # I32: no dequantiser in linear_algebra
    assert "cannot dequantise" in fig.axes[2].texts[0].get_text()


def test_tensor_view(tmp_path, monkeypatch):
    pytest.importorskip("ipywidgets")
    f = write_synthetic(tmp_path / "s.gguf")
    drawn = []
    original = ga.plot_tensor

    def spy(f, name, **kwargs):
        drawn.append(name)
        return original(f, name, **kwargs)

    monkeypatch.setattr(ga, "plot_tensor", spy)
    view = ga.tensor_view(f, names=["a", "b"])
    picker = view.children[1].children[0]
    assert list(picker.options) == ["a", "b"] and picker.value == "a"
    assert drawn == ["a"]  # the first figure is drawn at creation
    picker.value = "b"
    assert drawn == ["a", "b"]
    with pytest.raises(GGUFError, match="no tensor named"):
        ga.tensor_view(f, names=["a", "zz"])
