"""zigllama bench: the result's structure and its honesty (no wall-clock limits: the machine is shared).

Checked: every JSON field; medians, ranges and ratios recomputed from the raw seconds;
memory figures in plausible units and the child's peak RSS its own; the markdown
table equal to the JSON; the printed command reproducing the run's settings; the
numerics choices taken from the decoder; clear errors for bad input.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import subprocess
import sys

import numpy as np
import pytest

from zigllama_lib.foundation.errors import ConfigError
from zigllama_lib.inference import bench
from zigllama_lib.models import decoder

MACHINE_FIELDS = {"cpu", "n_cores", "n_cores_available", "n_threads", "python", "numpy", "numba",
                  "llama_cpp_python", "date", "load_average_start", "load_average_end"}
TOP_FIELDS = {"command", "machine", "model", "file_bytes", "n_threads", "numerics", "n_prompt", "n_decode", "reps",
              "measurements", "ratios", "load", "memory", "startup"}
MEMORY_FIELDS = {"peak_rss_bytes", "ru_maxrss_bytes", "rss_before_load_bytes", "rss_anon_bytes", "rss_file_bytes",
                 "file_bytes", "peak_rss_over_file", "process"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One kernel thread in this module, restored after: on a busy 2-core machine two spinning
    threads can stall each other for seconds (the timings are not what these tests check)."""
    from zigllama_lib.foundation.threads import get_threads, set_threads

    before = get_threads()
    set_threads(1)
    yield
    set_threads(before)


def zigllama(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "zigllama_lib.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def physical_ram() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def result(smollm_path):
    """Ours only, in this process, from a path (so the load is timed)."""
    return bench.run(smollm_path, n_prompt=16, n_decode=4, reps=2, n_threads=1, numerics="float", command="cmd")


@pytest.fixture(scope="module")
def result_vs(smollm_path, llama_cpp):
    return bench.run(smollm_path, n_prompt=16, n_decode=4, reps=2, n_threads=1, numerics="float", vs_llama_cpp=True)


def check_measurements(res):
    for m in res["measurements"]:
        tok_s = [m["n_tokens"] / s for s in m["seconds"]]
        assert m["reps"] == len(m["seconds"]) == res["reps"]
        assert m["median_tok_s"] == pytest.approx(statistics.median(tok_s), rel=1e-12)
        assert m["min_tok_s"] == pytest.approx(min(tok_s)) and m["max_tok_s"] == pytest.approx(max(tok_s))
        assert 0 < m["min_tok_s"] <= m["median_tok_s"] <= m["max_tok_s"]
        assert m["n_tokens"] == {"prefill": res["n_prompt"], "decode": res["n_decode"]}[m["phase"]]


def check_memory(mem, file_bytes):
    assert MEMORY_FIELDS <= set(mem)
    assert mem["file_bytes"] == file_bytes
    # units: a Python process holding numpy is tens of MB, never more than the machine has
    assert 10e6 < mem["peak_rss_bytes"] < physical_ram()
    assert mem["rss_before_load_bytes"] is None or mem["rss_before_load_bytes"] <= mem["peak_rss_bytes"]
    assert mem["peak_rss_over_file"] == pytest.approx(mem["peak_rss_bytes"] / file_bytes)
    # peak RSS vs file size is not asserted: mapped pages may be dropped, repacked weights add more


def test_result_has_every_field_and_is_json(result, smollm_path):
    assert TOP_FIELDS <= set(result)
    assert MACHINE_FIELDS <= set(result["machine"])
    assert result["machine"]["n_threads"] == result["n_threads"] == 1
    assert result["machine"]["n_cores"] >= 1 and result["machine"]["cpu"]
    assert result["file_bytes"] == os.path.getsize(smollm_path)
    assert {(m["engine"], m["phase"]) for m in result["measurements"]} == {("zigllama", "prefill"),
                                                                          ("zigllama", "decode")}
    assert result["ratios"] == {} and result["startup"] is None
    assert result["load"]["zigllama"]["seconds"] > 0
    assert json.loads(json.dumps(result)) == result


def test_medians_and_ranges_follow_from_the_raw_seconds(result):
    check_measurements(result)


def test_memory_figures_are_plausible(result):
    check_memory(result["memory"]["zigllama"], result["file_bytes"])


def test_markdown_rows_match_the_json(result):
    md = bench.format_markdown(result)
    assert md.startswith("```\ncmd\n```")
    rows = re.findall(r"^\| (zigllama|llama\.cpp) \| (prefill|decode) \| (\d+) \| ([\d.]+) \| ([\d.]+)-([\d.]+) \|$",
                      md, re.M)
    assert len(rows) == len(result["measurements"])
    for row, m in zip(rows, result["measurements"]):
        assert (row[0], row[1], int(row[2])) == (m["engine"], m["phase"], m["n_tokens"])
        for cell, key in zip(row[3:], ("median_tok_s", "min_tok_s", "max_tok_s")):
            assert float(cell) == pytest.approx(m[key], abs=0.051)
    mem = re.search(r"^\| zigllama \| ([\d.]+) s \| (\d+) MB \|", md, re.M)
    assert float(mem.group(1)) == pytest.approx(result["load"]["zigllama"]["seconds"], abs=0.006)
    assert int(mem.group(2)) == round(result["memory"]["zigllama"]["peak_rss_bytes"] / 1e6)


@pytest.mark.oracle
def test_vs_llama_cpp_ratios_are_the_quotients_of_the_medians(result_vs):
    check_measurements(result_vs)
    med = {(m["engine"], m["phase"]): m["median_tok_s"] for m in result_vs["measurements"]}
    assert set(result_vs["ratios"]) == {"prefill", "decode"}
    for phase, r in result_vs["ratios"].items():
        assert r == pytest.approx(med[("zigllama", phase)] / med[("llama.cpp", phase)], rel=1e-12)
    for engine in ("zigllama", "llama.cpp"):
        check_memory(result_vs["memory"][engine], result_vs["file_bytes"])
        assert result_vs["load"][engine]["seconds"] > 0
    assert result_vs["memory"]["llama.cpp"]["process"].startswith("child")
    md = bench.format_markdown(result_vs)
    for phase, r in result_vs["ratios"].items():
        assert f"ratio ours / llama.cpp, {phase}: {r:.2f}" in md
    # rounds alternate: round i's ratio is the quotient of the two engines' i-th timings
    secs = {(m["engine"], m["phase"]): m["seconds"] for m in result_vs["measurements"]}
    for phase, paired in result_vs["paired_ratios"].items():
        assert len(paired) == result_vs["reps"]
        for i, r in enumerate(paired):
            assert r == pytest.approx(secs[("llama.cpp", phase)][i] / secs[("zigllama", phase)][i], rel=1e-12)


def test_a_child_peak_rss_is_its_own_not_its_parents():
    """On Linux a child's ru_maxrss starts at its parent's RSS; the child's reported peak must not."""
    ballast = np.ones(300_000_000 // 8)  # 300 MB resident in this (parent) process
    code = bench._CHILD_RSS + "\nprint(json.dumps({'peak': peak_rss_bytes(), 'ru': ru_maxrss_bytes()}))\n"
    child = bench._run_child(code)
    assert child["peak"] < 150e6, child
    assert bench.peak_rss_bytes() >= ballast.nbytes
    del ballast


def test_startup_wall_time_covers_the_childs_own_split(smollm, smollm_path):
    st = bench.measure_startup(smollm_path, "float", n_threads=1, reps=1, cold=False)
    warm = st["zigllama_warm"]
    assert set(st) == {"prompt", "zigllama_warm"}
    assert warm["wall_s"] >= warm["import_s"] + warm["load_s"] + warm["first_token_s"] > 0
    ids = smollm.tokenizer.encode(st["prompt"], add_special=True)
    expected = next(iter(smollm.generate_ids(ids, max_tokens=1, temperature=0.0, stop_at_eog=False,
                                             numerics="float")))
    assert warm["token"] == expected


def test_cold_startup_uses_an_empty_numba_cache_and_removes_it(monkeypatch, smollm_path):
    seen = []

    def fake(code, payload, env=None):
        cache = (env or {}).get("NUMBA_CACHE_DIR")
        seen.append(cache)
        if cache is not None:
            assert os.path.isdir(cache) and os.listdir(cache) == []
        return {"wall_s": 1.0, "import_s": 0.1, "load_s": 0.2, "first_token_s": 0.3, "token": 0}

    monkeypatch.setattr(bench, "_startup_once", fake)
    st = bench.measure_startup(smollm_path, "float", n_threads=1, reps=2, cold=True)
    cold_dirs = [d for d in seen if d is not None]
    assert len(cold_dirs) == 1 and not os.path.exists(cold_dirs[0])
    assert seen.count(None) == 3  # warm: one untimed run + 2 reps, the caller's Numba cache setting kept
    assert st["zigllama_cold"]["reps"] == 1 and st["zigllama_warm"]["reps"] == 2


def test_bad_input_is_a_clear_error(smollm):
    with pytest.raises(ConfigError, match="reps must be a positive integer"):
        bench.run(smollm, n_prompt=4, n_decode=2, reps=0)
    with pytest.raises(ConfigError, match="n_decode"):
        bench.bench_ours(smollm, 4, -1, 1)
    with pytest.raises(Exception, match="unknown numerics 'nope'"):
        bench.run(smollm, n_prompt=4, n_decode=2, reps=1, numerics="nope")
    for args, needle in ((("--reps", "0"), "positive integer"), (("--n-decode", "x"), "positive integer"),
                         (("--numerics", "nope"), "invalid choice"), (("--threads", "0"), "positive integer"),
                         (("--highlights", "--vs", "llama.cpp"), "runs alone"),
                         (("--highlights", "--only", "kv,bogus"), "--only takes some of")):
        out = zigllama("bench", *args)
        assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)


def test_numerics_choices_come_from_the_decoder(monkeypatch, capsys):
    from zigllama_lib.cli import build_parser

    def bench_help() -> str:
        with pytest.raises(SystemExit):
            build_parser().parse_args(["bench", "--help"])
        return " ".join(capsys.readouterr().out.split())

    assert f"one of: {', '.join(sorted(decoder.NUMERICS))} (default" in bench_help()
    for name in decoder.NUMERICS:
        assert build_parser().parse_args(["bench", "--numerics", name]).numerics == name
    assert bench.default_numerics() == ("fast" if "fast" in decoder.NUMERICS else "llama.cpp")
    monkeypatch.setitem(decoder.NUMERICS, "fast", decoder.NUMERICS["float"])
    assert "fast" in bench_help() and bench.default_numerics() == "fast"
    assert build_parser().parse_args(["bench", "--numerics", "fast"]).numerics == "fast"


def test_cli_writes_json_and_markdown_headed_by_a_reproducing_command(smollm_path, tmp_path):
    from zigllama_lib.cli import build_parser

    j, md = tmp_path / "b.json", tmp_path / "b.md"
    out = zigllama("bench", "--model", str(smollm_path), "--n-prompt", "8", "--n-decode", "2", "--reps", "1",
                   "--threads", "1", "--numerics", "float", "--json", str(j), "--markdown", str(md))
    assert out.returncode == 0, out.stderr
    res = json.loads(j.read_text(encoding="utf-8"))
    text = md.read_text(encoding="utf-8")
    assert text.splitlines()[1] == res["command"] and text.strip() == out.stdout.strip()
    argv = shlex.split(res["command"])
    assert argv[:2] == ["zigllama", "bench"]
    args = build_parser().parse_args(argv[1:])
    assert (args.n_prompt, args.n_decode, args.reps, args.threads, args.numerics) == (8, 2, 1, 1, "float")
    assert (res["n_prompt"], res["n_decode"], res["reps"], res["n_threads"], res["numerics"]) == (8, 2, 1, 1, "float")
    assert TOP_FIELDS <= set(res)


def test_a_child_killed_by_sigill_is_named_with_its_likely_cause():
    # The child really dies of SIGILL (as a -march=native llama.cpp does on a VM that hides AMX state).
    from zigllama_lib.inference import bench as bench_module

    code = "import os, signal; os.kill(os.getpid(), signal.SIGILL)"
    with pytest.raises(bench_module.BenchError, match=r"exit -4, SIGILL: .*tileloadd.*GGML_NATIVE=OFF.*--native.*--llama-cpp installed"):
        bench_module._run_child(code, timeout=60)
