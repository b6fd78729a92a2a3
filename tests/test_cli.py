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


def test_generate_takes_llama_cpp_sampler_flags(smollm_path, smollm):
    """llama-cli's flag names reach the sampler: the printed text is model.generate's with the same
    SamplerConfig fields (and differs from the text without them)."""
    prompt = "The cat sat on the mat. The cat sat on the"
    flags = {"--repeat-penalty": ("repeat_penalty", 1.5), "--presence-penalty": ("presence_penalty", 0.5),
             "--dry-multiplier": ("dry_multiplier", 0.8), "--typical": ("typical_p", 0.9),
             "--mirostat": ("mirostat", 2), "--mirostat-ent": ("mirostat_tau", 4.0)}
    argv = ["generate", prompt, "--model", str(smollm_path), "-n", "10", "--temperature", "0.7", "--seed", "5"]
    for flag, (_name, value) in flags.items():
        argv += [flag, str(value)]
    out = zigllama(*argv)
    assert out.returncode == 0, out.stderr
    options = {name: value for name, value in flags.values()}
    expected = "".join(smollm.generate(prompt, max_tokens=10, temperature=0.7, seed=5, **options))
    assert out.stdout == expected + "\n"
    assert out.stdout != "".join(smollm.generate(prompt, max_tokens=10, temperature=0.7, seed=5)) + "\n"


def test_generate_with_a_json_schema_validates_and_bad_flags_are_clear(smollm_path):
    import json

    import jsonschema

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    out = zigllama("generate", "A number as JSON:", "--model", str(smollm_path), "-n", "12",
                   "--json-schema", json.dumps(schema))
    assert out.returncode == 0, out.stderr
    jsonschema.validate(json.loads(out.stdout), schema)  # whitespace after the object is allowed
    bad = zigllama("generate", "x", "--model", str(smollm_path), "--mirostat", "5")
    assert bad.returncode == 2 and "mirostat must be 0 (off), 1 or 2" in bad.stderr and "Traceback" not in bad.stderr
    bad = zigllama("generate", "x", "--model", str(smollm_path), "--grammar", 'root ::= "a')
    assert bad.returncode == 2 and "line 1" in bad.stderr and "Traceback" not in bad.stderr


def test_generate_strategies_reduce_to_greedy_at_their_neutral_settings(smollm_path, smollm):
    """Contrastive search with alpha 0 is greedy search; guidance with gamma 1 follows the prompt alone
    (log p_cfg = log p(x | prompt)), so greedy it is greedy too. Other settings change the text."""
    prompt = "The best thing about Paris is"
    greedy = "".join(smollm.generate(prompt, max_tokens=12, temperature=0)) + "\n"
    base = ["generate", prompt, "--model", str(smollm_path), "-n", "12"]
    out = zigllama(*base, "--penalty-alpha", "0", "--top-k", "4")
    assert out.returncode == 0, out.stderr
    assert out.stdout == greedy
    out = zigllama(*base, "--cfg-negative-prompt", "The worst thing", "--cfg-scale", "1", "--temperature", "0")
    assert out.returncode == 0, out.stderr
    assert out.stdout == greedy
    assert zigllama(*base, "--penalty-alpha", "0.6", "--top-k", "4").stdout != greedy
    assert zigllama(*base, "--cfg-negative-prompt", "The worst thing", "--cfg-scale", "3",
                    "--temperature", "0").stdout != greedy
    bad = zigllama(*base, "--penalty-alpha", "0.5", "--cfg-negative-prompt", "x")
    assert bad.returncode == 2 and "choose one strategy" in bad.stderr


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
