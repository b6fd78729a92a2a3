"""zigllama bench-kernels: our products vs ggml's mul_mat on the same weight bytes (the pinned build)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zigllama_lib.foundation.errors import ConfigError
from zigllama_lib.inference import bench_kernels


def test_products_equal_ggml_mul_mat_bit_for_bit_and_q4_k_within_ulps(gemma_path, llama_cpp):
    # 8 tokens: Q6_K takes ggml's tiled K-quant matmul (>= 8 rows), Q5_0 / Q8_0 tinyBLAS
    result = bench_kernels.run(str(gemma_path), n_tok=8, rounds=1, reps=1, copies=1, n_threads=2,
                               llama_cpp="installed")
    by_type = {c["type"]: c for c in result["cases"]}
    assert {"Q5_0", "Q8_0", "Q6_K", "Q4_K"} <= set(by_type)
    for t in ("Q5_0", "Q8_0", "Q6_K"):  # the kernels ggml runs here are the ones we mirror
        assert by_type[t]["max_abs_diff"] == 0.0, (t, by_type[t]["max_abs_diff"])
    # Q4_K: ggml's plain buffer runs vec_dot, ours the repacked gemm's order (see the module docstring)
    assert 0.0 <= by_type["Q4_K"]["max_abs_diff"] < 1e-3
    for c in result["cases"]:
        assert c["ours_ms"] > 0 and c["ggml_ms"] > 0 and len(c["ratios"]) == 1
    table = bench_kernels.format_table(result)
    assert "| blk.0.ffn_gate.weight | Q5_0 | 2048 x 640 |" in table


def test_bad_arguments_are_clear_errors(gemma_path):
    with pytest.raises(ConfigError, match="n_tok"):
        bench_kernels.run(str(gemma_path), n_tok=0)
    with pytest.raises(ConfigError, match="no matrix of types"):
        bench_kernels.run(str(gemma_path), types={"Q2_K"})


def test_cli_prints_the_table_and_writes_json(gemma_path, llama_cpp, tmp_path):
    out = subprocess.run([sys.executable, "-m", "zigllama_lib.cli", "bench-kernels", "--model", str(gemma_path),
                          "--n-tok", "4", "--types", "Q8_0", "--rounds", "1", "--reps", "1", "--copies", "1",
                          "--llama-cpp", "installed", "--json", str(tmp_path / "k.json")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "| blk.0.attn_v.weight | Q8_0 | 256 x 640 |" in out.stdout
    result = json.loads((tmp_path / "k.json").read_text(encoding="utf-8"))
    assert [c["type"] for c in result["cases"]] == ["Q8_0"] and result["cases"][0]["max_abs_diff"] == 0.0
