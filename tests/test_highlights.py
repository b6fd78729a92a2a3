"""The Performance Highlights: every row's comparison is between things that compute the same answer.

No wall-clock limits (shared machine): the checks are that the KV cache and
recomputation give the same tokens, the naive kernels and engine agree with
the library, the memory figures follow from the file, and the table matches
the JSON.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose

from zigllama_lib.foundation.errors import ConfigError
from zigllama_lib.foundation.ggml_types import GGMLType
from zigllama_lib.foundation.gguf import GGUFFile
from zigllama_lib.inference import highlights as hl
from zigllama_lib.inference.bench import _bench_prompt
from zigllama_lib.linear_algebra import QMatrix, dequantize, matmul
from zigllama_lib.linear_algebra.quantize import quantize
from zigllama_lib.models.decoder import NUMERICS, numerics_named


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One kernel thread in this module, restored after: on a busy 2-core machine two spinning
    threads can stall each other for seconds (the timings are not what these tests check)."""
    from zigllama_lib.foundation.threads import get_threads, set_threads

    before = get_threads()
    set_threads(1)
    yield
    set_threads(before)


@pytest.mark.parametrize("numerics", sorted(NUMERICS))
def test_kv_cache_and_recomputation_give_the_same_tokens(smollm, numerics):
    r = hl.kv_cache_vs_recompute(smollm, numerics, n_tokens=4, n_prompt=4)
    assert len(r["tokens_cached"]) == len(r["recompute_step_s"]) == len(r["cached_step_s"]) == 4
    assert r["tokens_cached"] == r["tokens_recompute"] and r["same_tokens"]
    assert r["speedup"] == pytest.approx(sum(r["recompute_step_s"]) / sum(r["cached_step_s"]))
    # and they are the model's greedy tokens
    ids = _bench_prompt(smollm.tokenizer, 4)
    expected = list(smollm.generate_ids(ids, max_tokens=4, temperature=0.0, stop_at_eog=False, numerics=numerics))
    assert r["tokens_cached"] == expected


@pytest.mark.parametrize("qtype", [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0])
def test_pure_python_kernel_matches_the_library_on_random_blocks(qtype):
    rng = np.random.default_rng(int(qtype))
    raw = quantize(rng.standard_normal((5, 96)).astype(np.float32), qtype)
    x = rng.standard_normal(96).astype(np.float32)
    exact = dequantize(raw, qtype).astype(np.float64) @ x.astype(np.float64)
    assert_allclose(hl.naive_matvec(raw, qtype, x), exact, rtol=1e-5, atol=1e-6)
    assert_allclose(hl.naive_matvec(raw, qtype, x), matmul(QMatrix(raw, qtype, 96), x, "float"), rtol=1e-5, atol=1e-5)


def test_pure_python_kernel_on_a_real_gemma_matrix(gemma_path):
    f = GGUFFile(gemma_path)
    info = f.info("blk.0.ffn_up.weight")
    assert info.ggml_type == GGMLType.Q5_0  # the file's type: the test reads its block layout
    w = QMatrix(f.tensor_bytes("blk.0.ffn_up.weight"), info.ggml_type, info.shape[0])
    x = np.random.default_rng(0).standard_normal(w.n_in).astype(np.float32)
    y = matmul(w, x, "float")
    assert_allclose(hl.naive_matvec(w.raw[:6], w.qtype, x), y[:6], rtol=1e-5, atol=1e-5 * np.abs(y).max())


def test_pure_python_kernel_refuses_other_types():
    with pytest.raises(ConfigError, match="no pure-Python kernel for Q4_K"):
        hl.naive_matvec(np.zeros((1, 144), np.uint8), GGMLType.Q4_K, np.zeros(256, np.float32))


def test_kernels_row_agrees_numerically(smollm):
    r = hl.kernels(smollm, reps=1, n_rows_python=4)
    assert r["matrix"] == "blk.0.ffn_up.weight" and r["qtype"] == "Q4_1"
    scale = r["max_abs_y"]
    diff = r["max_abs_diff_vs_float_kernel"]
    assert diff["pure Python"] <= 1e-5 * scale and diff["numpy"] <= 1e-5 * scale
    assert diff["numerics 'float'"] == 0.0
    # llama.cpp's numerics round the activations to 8 bits: close, not equal
    assert 0 < diff["numerics 'llama.cpp'"] <= 2e-3 * scale
    t = r["seconds"]
    assert all(v > 0 for v in t.values()) and len(t) == 3 + len(NUMERICS)
    fastest = min(v for k, v in t.items() if k.startswith("Numba"))
    assert r["speedup_vs_python"] == pytest.approx(next(iter(t.values())) / fastest)


def test_memory_row_follows_from_the_file(smollm, smollm_path):
    r = hl.memory(smollm.gguf)
    data_bytes = os.path.getsize(smollm_path) - smollm.gguf.data_offset
    assert 0.99 * data_bytes <= r["stored_bytes"] <= data_bytes  # the tensors fill the data section, bar padding
    assert 130e6 < r["n_params"] < 140e6  # SmolLM2-135M
    assert r["f32_bytes"] == 4 * r["n_params"]
    assert r["reduction"] == pytest.approx(1 - r["stored_bytes"] / r["f32_bytes"])
    assert sum(r["params_by_type"].values()) == r["n_params"] and set(r["params_by_type"]) == {"Q4_1", "Q8_0", "F32"}


def test_mmap_row_memory_growth(smollm_path):
    r = hl.mmap_vs_read(smollm_path, reps=1)
    size = os.path.getsize(smollm_path)
    assert r["file_bytes"] == size
    assert r["read_rss_growth_bytes"] >= 0.9 * size  # the copy is resident
    assert r["mmap_rss_growth_bytes"] < 0.5 * size  # the mapping reads only the header
    assert r["speedup"] == pytest.approx(r["read_s"] / r["mmap_s"])


def test_naive_engine_agrees_with_the_float_path(smollm):
    ids = _bench_prompt(smollm.tokenizer, 5)
    nm = numerics_named("float")
    ours = smollm.decoder.forward(ids, smollm.decoder.new_cache(5, nm), nm, all_logits=True)
    naive = smollm.decoder.forward(ids, smollm.decoder.new_cache(5, hl.NAIVE), hl.NAIVE, all_logits=True)
    assert_allclose(naive, ours, atol=1e-3 * np.abs(ours).max())
    tokens, steps = hl.naive_generate(smollm, ids, 1)
    assert tokens == [int(np.argmax(ours[-1]))] and len(steps) == 1


def test_run_rows_and_markdown_match(smollm):
    res = hl.run(smollm, n_threads=2, numerics="float", only=("memory", "batch", "combined"), n_naive=1,
                 n_prompt=8, n_decode=2, reps=1, command="cmd", row_command=lambda k: f"row {k}")
    assert json.loads(json.dumps(res)) == res
    assert list(res["rows"]) == ["memory", "batch", "combined"]
    assert {"cpu", "n_cores", "numba", "date", "load_average_start", "load_average_end"} <= set(res["machine"])
    b, c = res["rows"]["batch"], res["rows"]["combined"]
    assert b["speedup"] == pytest.approx(b["prefill_tok_s"] / b["decode_tok_s"])
    assert c["ours_decode_tok_s"] == b["decode_tok_s"]
    assert c["speedup"] == pytest.approx(c["ours_decode_tok_s"] / c["naive_tok_s"])
    md = hl.format_markdown(res)
    assert md.startswith("```\ncmd\n```")
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| optimisation")]
    assert len(rows) == 3
    for line, (key, r) in zip(rows, res["rows"].items()):
        assert r["seed_claim"] == hl.SEED_CLAIMS[key] and r["seed_claim"] in line and f"`row {key}`" in line
    assert f"{c['speedup']:.0f}x" in rows[2] and f"{b['speedup']:.1f}x" in rows[1]
    with pytest.raises(ConfigError, match="unknown highlight rows"):
        hl.run(smollm, only=("kv", "warp"))


def test_cli_highlights_json_markdown_and_row_commands(smollm_path, tmp_path):
    from zigllama_lib.cli import build_parser

    j, md = tmp_path / "h.json", tmp_path / "h.md"
    out = subprocess.run([sys.executable, "-m", "zigllama_lib.cli", "bench", "--highlights", "--model",
                          str(smollm_path), "--only", "memory,mmap", "--reps", "1", "--threads", "1",
                          "--json", str(j), "--markdown", str(md)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    res = json.loads(j.read_text(encoding="utf-8"))
    text = md.read_text(encoding="utf-8")
    assert text.splitlines()[1] == res["command"] and list(res["rows"]) == ["memory", "mmap"]
    for key, r in res["rows"].items():
        args = build_parser().parse_args(shlex.split(r["command"])[1:])
        assert args.highlights and args.only == key and args.threads == 1
        claim, cmd = re.escape(r["seed_claim"]), re.escape(r["command"])
        assert re.search(rf"\| [^|]+ \| [^|]+ \| [^|]+ \| {claim} \| `{cmd}` \|", text)
