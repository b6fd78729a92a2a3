"""``zigllama parity``: our llama.cpp numerics against a llama.cpp build, in a child process.

Against the installed (pinned) build the report must show what the parity tests
assert: identical logits and every greedy token the same.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zigllama_lib.foundation.errors import ConfigError
from zigllama_lib.inference import llama_cpp_builds as builds


def test_report_against_the_pinned_build(smollm, llama_cpp):
    report = builds.parity_report(smollm, "installed", prompts=["The capital of France is", "Water boils at"],
                                  n_greedy=12)
    assert report["build"]["pinned"], report["build"]["why"]
    for row in report["rows"]:
        assert row["identical_logits"] and row["max_logit_diff"] == 0.0, row
        assert row["greedy_agree"] == 12 and row["margin_at_divergence"] is None, row
    text = builds.format_parity(report)
    assert "x86-64 AVX2 build" in text and "12/12" in text


def test_cli_parity_prints_and_writes_json(smollm_path, llama_cpp, tmp_path):
    out = tmp_path / "parity.json"
    proc = subprocess.run([sys.executable, "-m", "zigllama_lib.cli", "parity", "--model", str(smollm_path),
                           "--n-greedy", "4", "--prompt", "Hello there", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Hello there" in proc.stdout and "4/4" in proc.stdout
    rows = json.loads(out.read_text(encoding="utf-8"))["rows"]
    assert [r["greedy_agree"] for r in rows] == [4]


def test_unknown_build_folder_is_a_clear_error(tmp_path, smollm_path):
    with pytest.raises(builds.OracleError, match="no llama_cpp package"):
        builds.resolve(str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "zigllama_lib.cli", "parity", "--model", str(smollm_path),
                           "--llama-cpp", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no llama_cpp package" in proc.stderr


def test_feature_parsing():
    info = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 0 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |"
    assert builds.parse_features(info) == {"SSE3": 1, "AVX": 1, "AVX2": 1, "AVX512": 0, "LLAMAFILE": 1,
                                           "OPENMP": 1, "REPACK": 1}


def test_empty_or_too_long_prompt_is_a_clear_error(smollm):
    with pytest.raises(ConfigError, match="has no tokens"):
        builds.parity_report(smollm, "installed", prompts=[""], n_greedy=2)
    with pytest.raises(ConfigError, match="exceeds the context"):
        builds.parity_report(smollm, "installed", prompts=["word " * 600], n_greedy=2)
