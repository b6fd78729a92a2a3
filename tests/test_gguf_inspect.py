"""inspect.format_report on a real model file and on a small synthetic one."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from oracles import require_file

from zigllama_lib.foundation.ggml_types import GGMLType
from zigllama_lib.foundation.gguf import GGUFFile, GGUFValueType as V, MetadataType as M
from zigllama_lib.foundation.gguf_writer import GGUFWriter
from zigllama_lib.foundation.inspect import byte_budget, format_report, format_value

CACHE = Path(os.path.expanduser(os.environ.get("ZIGLLAMA_CACHE", "~/.cache/zigllama")))
SMOLLM2 = CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smol() -> GGUFFile:
    require_file(SMOLLM2)
    return GGUFFile(SMOLLM2)


def test_report_of_real_file(smol):
    report = format_report(smol)
    assert str(SMOLLM2) in report
    for needle in ["version        3", "alignment      32", f"{smol.file_size:,} bytes", f"{smol.data_offset:,}",
                   "metadata keys  33", "tensors        272",
                   "general.architecture", "'llama'", "llama.block_count", "UINT32", "30",
                   "tokenizer.ggml.tokens", "ARRAY[STRING]", "(49152 items)", "'<|endoftext|>'",
                   "tokenizer.ggml.merges", "(48900 items)",
                   "token_embd.weight", "Q8_0", "(576, 49152)", "blk.0.attn_q.weight", "Q4_1", "output_norm.weight",
                   "Totals", "padding (all)"]:
        assert needle in report, needle
    for name, info in smol.tensors.items():
        assert re.search(rf"^  {re.escape(name)}\s+{info.ggml_type.name}\s", report, re.M), name
    for key in smol.metadata:
        assert re.search(rf"^  {re.escape(key)}\s", report, re.M), key
    # the per-type byte totals add up to the tensor data
    per_type = {t.name: sum(i.n_bytes for i in smol.tensors.values() if i.ggml_type == t)
                for t in {i.ggml_type for i in smol.tensors.values()}}
    for t, n in per_type.items():
        assert re.search(rf"^  {t}\s+\d+\s+{n:,}\s", report, re.M), t
    assert all(len(line) < 200 for line in report.splitlines())


def test_byte_budget_adds_up(smol):
    b = byte_budget(smol)
    assert sum(b.values()) == smol.file_size
    assert b["tensor data"] == sum(t.n_bytes for t in smol.tensors.values())


def test_report_of_synthetic_file(tmp_path):
    w = GGUFWriter(tmp_path / "s.gguf", alignment=64)
    w.add_metadata("a.long", list(range(100)))
    w.add_metadata("a.nested", [[1, 2, 3], [4]])
    w.add_metadata("a.text", "line1\nline2")
    w.add_metadata("a.eps", 1e-5)
    w.add_tensor("w", np.zeros((3, 4), np.float32))
    w.add_tensor("q", np.zeros((2, 20), np.uint8), GGMLType.Q4_1)
    w.write()
    f = GGUFFile(tmp_path / "s.gguf")
    report = format_report(f, max_items=4)
    assert "[0, 1, 2, 3, ...] (100 items)" in report
    assert "ARRAY[ARRAY[INT32]]" in report and "[[1, 2, ...] (3 items), [4]]" in report
    assert "'line1\\nline2'" in report
    assert "1e-05" in report
    assert re.search(r"^  w\s+F32\s+\(4, 3\)\s+48\s+", report, re.M)
    assert re.search(r"^  q\s+Q4_1\s+\(32, 2\)\s+40\s+", report, re.M)
    b = byte_budget(f)
    assert sum(b.values()) == f.file_size
    assert b["padding between tensors"] == 64 - 48 and b["padding after the last tensor"] == 64 - 40


def test_format_value():
    assert format_value("x", M(V.STRING)) == "'x'"
    assert format_value(True, M(V.BOOL)) == "True"
    assert format_value(np.arange(3, dtype=np.int32), M(V.ARRAY, M(V.INT32))) == "[0, 1, 2]"
    assert format_value(["a"] * 20, M(V.ARRAY, M(V.STRING)), 2) == "['a', 'a', ...] (20 items)"
    long = format_value(["x" * 50] * 10, M(V.ARRAY, M(V.STRING)))
    assert long.endswith("(10 items)") and len(long) <= 100
    assert format_value("y" * 500, M(V.STRING)).endswith("...")
