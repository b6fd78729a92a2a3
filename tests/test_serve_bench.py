"""`zigllama bench-serve`: the pure parts against hand maths, and one small run against our own server."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pytest

from zigllama_lib.foundation.errors import ZigLlamaError
from zigllama_lib.serve import bench


def test_parse_sse_line():
    assert bench.parse_sse_line('data: {"a": 1}\n') == {"a": 1}
    assert bench.parse_sse_line('data:{"a": 1}') == {"a": 1}
    assert bench.parse_sse_line("data: [DONE]") == bench.DONE
    for line in ("", "\n", ": keep-alive", "event: message", "id: 3", "data: "):
        assert bench.parse_sse_line(line) is None
    with pytest.raises(ValueError):
        bench.parse_sse_line("data: {not json")


def test_chunk_content():
    assert bench.chunk_content({"choices": [{"delta": {"content": "Hi"}}]}) == "Hi"
    assert bench.chunk_content({"choices": [{"delta": {"role": "assistant", "content": ""}}]}) == ""
    assert bench.chunk_content({"choices": [{"delta": {}}]}) == ""
    assert bench.chunk_content({"choices": [{"text": "x"}]}) == "x"
    assert bench.chunk_content({"choices": [], "usage": {"completion_tokens": 3}}) == ""


def test_request_latencies_by_hand():
    lat = bench.request_latencies(10.0, [10.5, 10.6, 10.8, 11.2], 11.25)
    assert lat["ttft"] == pytest.approx(0.5)
    assert lat["itl"] == pytest.approx([0.1, 0.2, 0.4])
    assert lat["e2e"] == pytest.approx(1.25)
    empty = bench.request_latencies(1.0, [], 2.0)
    assert empty["ttft"] is None and empty["itl"] == [] and empty["e2e"] == pytest.approx(1.0)


def test_percentiles_by_hand():
    p = bench.percentiles([1.0, 2.0, 3.0, 4.0, 5.0])
    # linear interpolation at rank q/100 * (n-1): p50 -> 3, p90 -> 4 + 0.6, p99 -> 4 + 0.96
    assert p == pytest.approx({"p50": 3.0, "p90": 4.6, "p99": 4.96})
    assert bench.percentiles([]) == {"p50": None, "p90": None, "p99": None}


def _record(client, t0, chunks, t_end, tokens=None, error=None):
    return bench.RequestRecord(client=client, index=0, prompt=0, t_start=t0, t_end=t_end, chunk_times=chunks,
                               completion_tokens=tokens, prompt_tokens=40, error=error)


def test_summarize_level_by_hand():
    recs = [_record(0, 0.0, [0.2, 0.3, 0.5], 0.6, tokens=3),
            _record(1, 0.0, [0.4, 0.5], 1.0, tokens=None),          # no usage: 2 content chunks count
            _record(2, 0.0, [], 0.1, error="HTTP 503: busy")]
    s = bench.summarize_level(recs, wall_s=2.0)
    assert (s["requests"], s["ok"], s["failures"]) == (3, 2, 1)
    assert s["errors"] == {"HTTP 503: busy": 1}
    assert s["completion_tokens"] == 5 and not s["tokens_from_usage"]
    assert s["tok_per_s"] == pytest.approx(2.5) and s["req_per_s"] == pytest.approx(1.0)
    assert s["ttft_s"]["p50"] == pytest.approx(0.3)                      # median of 0.2, 0.4
    assert s["n_itl_samples"] == 3                                        # 0.1, 0.2 and 0.1, pooled
    assert s["itl_s"]["p50"] == pytest.approx(0.1)
    assert s["itl_s"]["p90"] == pytest.approx(np.percentile([0.1, 0.2, 0.1], 90))
    assert s["e2e_s"]["p90"] == pytest.approx(0.6 + 0.9 * 0.4)


def test_parse_clients():
    assert bench.parse_clients("1,4,16") == [1, 4, 16]
    for bad in ("", "0,1", "a", "1,-2"):
        with pytest.raises(bench.ServeBenchError):
            bench.parse_clients(bad)


def _fake_result():
    level = lambda server, c, tps: {  # noqa: E731
        "server": server, "clients": c, "requests": 4, "ok": 4, "failures": 0, "errors": {},
        "completion_tokens": 256, "tokens_from_usage": True, "prompt_tokens": [46, 48], "wall_s": 256 / tps,
        "tok_per_s": tps, "req_per_s": 4 * tps / 256, "ttft_s": bench.percentiles([0.1, 0.2]),
        "itl_s": bench.percentiles([0.01, 0.02]), "e2e_s": bench.percentiles([1.0, 1.5]),
        "cpu_s": {"server": 5.0, "client": 0.1, "idle_servers": {}, "others": 0.0}}
    return {"command": "zigllama bench-serve --model smollm2-135m-instruct --clients 1,4",
            "gguf": "/x/SmolLM2-135M-Instruct.Q4_1.gguf", "threads": 2, "n_ctx": 512, "clients": [1, 4],
            "requests_per_client": 4, "max_tokens": 64, "date": "2026-01-01T00:00:00+00:00",
            "load_average_start": (0.1, 0.2, 0.3),
            "machine": {"cpu": "Some CPU", "avx2": True, "avx512f": False, "n_cores_available": 2},
            "anchor": {"label": bench.ANCHOR_LLAMA_SERVER, "binary": "/b/llama-server", "build_info": None},
            "servers": [{"label": bench.OURS, "command": "python -m zigllama_lib.cli serve", "startup_s": 2.0},
                        {"label": "llama-server --parallel 1", "command": "llama-server -np 1", "startup_s": 0.5}],
            "levels": [level(bench.OURS, 1, 50.0), level("llama-server --parallel 1", 1, 100.0),
                       level("llama-server --parallel 1", 4, 80.0), level(bench.OURS, 4, 60.0)]}


def test_markdown_has_command_machine_anchor_rows_and_ratios():
    r = _fake_result()
    md = bench.format_markdown(r)
    assert md.startswith("```\nzigllama bench-serve --model smollm2-135m-instruct --clients 1,4\n```")
    assert "Some CPU (avx2 yes, avx512f no)" in md and bench.ANCHOR_LLAMA_SERVER in md
    rows = [line for line in md.splitlines() if line.startswith("| zigllama serve") or line.startswith("| llama")]
    assert [row.split(" | ")[:2] for row in rows] == [["| zigllama serve", "1"], ["| llama-server --parallel 1", "1"],
                                                      ["| zigllama serve", "4"], ["| llama-server --parallel 1", "4"]]
    assert "1 client 0.50x, 4 clients 0.75x" in md
    assert bench.throughput_ratios(r) == {"llama-server --parallel 1": {1: 0.5, 4: 0.75}}


def _run_cli(argv):
    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_end_to_end_against_our_server(tmp_path, capsys, smollm_path):
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    rc = _run_cli(["bench-serve", "--model", "smollm2-135m-instruct", "--threads", "2", "--llama-server", "none",
                   "--clients", "1,2", "--requests", "2", "--max-tokens", "8", "--startup-timeout", "240",
                   "--request-timeout", "120", "--json", str(out_json), "--markdown", str(out_md)])
    assert rc == 0
    result = json.loads(out_json.read_text())
    md = out_md.read_text()
    assert md.strip() in capsys.readouterr().out
    assert result["command"] in md and "--llama-server none" in result["command"]
    assert [(lv["server"], lv["clients"]) for lv in result["levels"]] == [(bench.OURS, 1), (bench.OURS, 2)]
    for lv in result["levels"]:
        assert lv["failures"] == 0 and lv["ok"] == lv["requests"] == 2 * lv["clients"]
        assert lv["tokens_from_usage"] and 0 < lv["completion_tokens"] <= 8 * lv["requests"]
        assert lv["ttft_s"]["p50"] > 0 and lv["tok_per_s"] > 0
        for rec in lv["records"]:
            assert rec["ok"] and rec["n_content_chunks"] >= 1 and rec["e2e_s"] >= rec["ttft_s"]


def test_a_server_that_exits_is_reported_with_its_output():
    spec = bench.ServerSpec("fake server", [sys.executable, "-c",
                                            "import sys; print('boom: no model', file=sys.stderr); sys.exit(3)"])
    with pytest.raises(ZigLlamaError, match=r"(?s)fake server exited with status 3.*boom: no model"):
        with bench.BenchServer(spec, startup_timeout=30):
            pass


def test_a_server_that_never_gets_ready_times_out_and_is_killed():
    spec = bench.ServerSpec("silent server", [sys.executable, "-c", "import sys, time; "
                                              "print('loading', file=sys.stderr, flush=True); time.sleep(60)"])
    srv = bench.BenchServer(spec, startup_timeout=1.5)
    with pytest.raises(ZigLlamaError, match=r"(?s)silent server did not answer /health.*loading"):
        with srv:
            pass
    assert srv.proc.poll() is not None
