"""The zigllama command: inspect, pull, bench, and errors reported without tracebacks."""

from __future__ import annotations

import subprocess
import sys


def zigllama(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "zigllama_lib.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_inspect_prints_metadata_and_tensor_table(smollm_path):
    out = zigllama("inspect", str(smollm_path))
    assert out.returncode == 0, out.stderr
    for needle in ("llama.block_count", "tokenizer.ggml.pre", "blk.29.ffn_down.weight", "token_embd.weight", "Q4_1"):
        assert needle in out.stdout


def test_inspect_of_a_non_gguf_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(64))
    out = zigllama("inspect", str(bad))
    assert out.returncode == 2
    assert "not a GGUF file" in out.stderr and "Traceback" not in out.stderr


def test_generate_with_an_unknown_model_is_a_clear_error():
    out = zigllama("generate", "hi", "--model", "no-such-model")
    assert out.returncode == 2 and "neither a registry model" in out.stderr


def test_generate_with_sampling_flags(smollm_path):
    args = ("generate", "Once upon a time", "--model", str(smollm_path), "--max-tokens", "8",
            "--temperature", "0.9", "--top-k", "20", "--top-p", "0.9", "--min-p", "0.02", "--seed", "3")
    a, b = zigllama(*args), zigllama(*args)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.strip()


def test_pull_prints_the_cached_path(smollm_path):
    out = zigllama("pull", "smollm2-135m-instruct")
    assert out.returncode == 0 and out.stdout.strip() == str(smollm_path)


def test_bench_vs_llama_cpp_prints_both_and_the_ratio(smollm_path, llama_cpp, tmp_path):
    out = zigllama("bench", "--model", str(smollm_path), "--vs", "llama.cpp", "--n-prompt", "16", "--n-decode", "4",
                   "--reps", "1", "--threads", "2", "--json", str(tmp_path / "b.json"))
    assert out.returncode == 0, out.stderr
    assert "| zigllama | prefill" in out.stdout and "| llama.cpp | decode" in out.stdout
    assert "ratio ours / llama.cpp, decode" in out.stdout
    import json

    result = json.loads((tmp_path / "b.json").read_text(encoding="utf-8"))
    assert set(result["ratios"]) == {"prefill", "decode"}
