"""zigllama_lib.inference.profile, foundation.bandwidth, viz.profile and ``zigllama profile``.

Oracles: the per-operation call counts of one forward pass worked out from
SmolLM2's architecture (30 layers, 7 products per layer + the output head);
the byte counts of each weight matrix from its shape and ggml block geometry,
and from gguf-py's reader; FLOPs and percentiles by hand; logits of an
unprofiled pass (bit for bit). No wall-clock assertions: only that times are
finite, non-negative and add up.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from oracles import require_module  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from numba import njit, prange  # noqa: E402

from zigllama_lib.foundation.bandwidth import dot_flops, parallel_launch_seconds, read_bandwidth  # noqa: E402
from zigllama_lib.foundation.errors import ConfigError  # noqa: E402
from zigllama_lib.inference import profile as prof  # noqa: E402
from zigllama_lib.inference.bench import _bench_prompt  # noqa: E402
from zigllama_lib.linear_algebra import ggml_exact  # noqa: E402
from zigllama_lib.models.decoder import numerics_named  # noqa: E402

N_LAYER = 30  # SmolLM2-135M


@pytest.fixture(scope="module")
def prompt(smollm):
    return _bench_prompt(smollm.tokenizer, 6)


@pytest.fixture(scope="module")
def tiny_run(smollm):
    """A whole profile with tiny sizes and one thread (the machine figures included)."""
    return prof.run(smollm, n_prompt=4, n_decode=3, reps=1, numerics="llama.cpp", n_threads=1)


# -- the per-operation times ------------------------------------------------------------------
@pytest.mark.parametrize("numerics", ["llama.cpp", "float"])
def test_decode_op_times_add_up_to_the_total_and_calls_match_the_architecture(smollm, prompt, numerics):
    step = prof.profile_decode(smollm.decoder, numerics, prompt, reps=2)
    rows = step.rows()
    assert [r[0] for r in rows] == list(prof.OPS) + [prof.OTHER]
    assert math.isclose(sum(r[2] for r in rows), step.total, rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(sum(r[3] for r in rows), 1.0, rel_tol=1e-9)
    for i, other in enumerate(step.others()):  # the timed intervals are disjoint parts of the pass
        assert 0 <= other <= step.totals[i]
    assert all(t >= 0 and math.isfinite(t) for ts in step.seconds.values() for t in ts)
    # one pass: embedding once; per layer 7 products, 2 norms, RoPE of q and k, attention, K/V store, 2 residual adds
    expected = {"embedding": 1, "output": 1, "rms_norm": 2 * N_LAYER + 1, "rope": 2 * N_LAYER,
                "attention": N_LAYER, "kv_store": N_LAYER, "residual_add": 2 * N_LAYER,
                # llama.cpp: one fused swiglu call; float: silu(gate) then the product with up
                "swiglu": N_LAYER if numerics == "llama.cpp" else 2 * N_LAYER}
    expected.update({k: N_LAYER for k in prof.MATMUL_KINDS if k != "output"})
    assert step.calls == expected
    assert step.matmul_tokens == dict.fromkeys(prof.MATMUL_KINDS, 1)
    assert (step.n_tok, step.position) == (1, len(prompt))


def test_prefill_products_see_every_token_but_the_head_only_the_last(smollm, prompt):
    step = prof.profile_prefill(smollm.decoder, "float", prompt, reps=1)
    assert step.matmul_tokens == {**dict.fromkeys(prof.MATMUL_KINDS, len(prompt)), "output": 1}
    table = prof.matmul_table(smollm.decoder, step)
    q = next(r for r in table if r["kind"] == "attn_q")
    assert q["flops"] == N_LAYER * 2 * len(prompt) * 576 * 576
    # the last layer after attention runs on the last row only (llama.cpp's graph does the same)
    down = next(r for r in table if r["kind"] == "ffn_down")
    assert step.matmul_rows["ffn_down"] == (N_LAYER - 1) * len(prompt) + 1
    assert down["flops"] == ((N_LAYER - 1) * len(prompt) + 1) * 2 * 1536 * 576
    assert math.isclose(sum(r[2] for r in step.rows()), step.total, rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.parametrize("numerics", ["llama.cpp", "float"])
def test_profiling_leaves_the_logits_bit_for_bit_and_restores_everything(smollm, prompt, numerics):
    dec, nm = smollm.decoder, numerics_named(numerics)
    plain_cache = dec.new_cache(len(prompt) + 1, nm)
    plain = [dec.forward(prompt, plain_cache, nm, all_logits=True), dec.forward([42], plain_cache, nm)]
    cache = dec.new_cache(len(prompt) + 1, nm)
    clock = prof.OpClock()
    with prof.profiling(dec, nm, cache, clock) as timed, prof.counting_kernels():
        profiled = [dec.forward(prompt, cache, timed, all_logits=True), dec.forward([42], cache, timed)]
    for a, b in zip(plain, profiled):
        assert type(b) is np.ndarray and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert clock.calls["attn_q"] == 2 * N_LAYER
    # the instances and modules are as before
    assert "embed" not in vars(dec) and "store" not in vars(cache)
    assert dec.activation.__module__.startswith("zigllama_lib.neural_primitives")
    assert type(ggml_exact._mm_kernel).__name__ == "CPUDispatcher"


def test_the_residual_stream_marker_adds_exactly_like_numpy():
    clock = prof.OpClock()
    h = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    a = np.full((2, 3), 0.1, np.float32)
    t = prof._mark(h, clock, "residual_add", keep=True)
    s = t + a
    r = a + t
    assert isinstance(s, prof._TimedOperand) and isinstance(s[-1:], prof._TimedOperand)
    np.testing.assert_array_equal(s.view(np.ndarray), h + a)
    np.testing.assert_array_equal(r.view(np.ndarray), a + h)
    g = prof._mark(h, clock, "swiglu", keep=False) * a
    assert type(g) is np.ndarray
    np.testing.assert_array_equal(g, h * a)
    assert clock.calls["residual_add"] == 2 and clock.calls["swiglu"] == 1


# -- bytes, FLOPs, ceiling ---------------------------------------------------------------------
def test_weight_bytes_and_flops_by_hand_and_against_gguf_py(smollm, smollm_path):
    gguf = require_module("gguf")
    dec = smollm.decoder
    wq, wd, out = dec.layers[0].wq, dec.layers[0].w_down, dec.output
    # Q4_1: blocks of 32 values in 20 bytes (f16 d, f16 m, 16 bytes of nibbles); Q8_0: 32 values in 34 bytes
    assert prof.weight_bytes(wq) == 576 * (576 // 32) * 20 == 207_360
    assert prof.weight_bytes(wd) == 576 * (1536 // 32) * 20
    assert prof.weight_bytes(out) == 49152 * (576 // 32) * 34
    reader = gguf.GGUFReader(str(smollm_path))
    n_bytes = {t.name: int(t.n_bytes) for t in reader.tensors}
    assert prof.weight_bytes(wq) == n_bytes["blk.0.attn_q.weight"]
    assert prof.weight_bytes(wd) == n_bytes["blk.0.ffn_down.weight"]
    assert prof.weight_bytes(out) == n_bytes["token_embd.weight"]  # tied embeddings: the head is token_embd
    assert prof.matmul_flops(wq, 1) == 2 * 576 * 576
    assert prof.matmul_flops(wd, 7) == 2 * 7 * 1536 * 576
    # llama.cpp numerics on Q4_1: the SIMD kernel reads the GGUF rows in place
    assert prof.kernel_weight_bytes(wq, "llama.cpp", 1) == 207_360
    # prefill in float mode streams the GGUF rows themselves
    assert prof.kernel_weight_bytes(wq, "float", 64) == 207_360


def test_decode_ceiling_and_latency_percentiles_by_hand():
    c = prof.decode_ceiling(30e9, 100_000_000, 75.0)
    assert math.isclose(c["ceiling_tok_s"], 300.0) and math.isclose(c["fraction"], 0.25)
    assert "= 300 tok/s; we reach 25% (75.0 tok/s)" in prof.ceiling_statement(c)
    s = prof.latency_summary(np.arange(1, 101) / 1000)  # 1 .. 100 ms
    # linear interpolation at rank q * (n - 1): 49.5 -> 50.5 ms, 89.1 -> 90.1 ms, 98.01 -> 99.01 ms
    assert math.isclose(s["p50_s"], 0.0505) and math.isclose(s["p90_s"], 0.0901) and math.isclose(s["p99_s"], 0.09901)
    assert math.isclose(s["tok_s"], 100 / 5.05)


# -- kernel counting -------------------------------------------------------------------------
@njit(parallel=True)
def _two_loops_and_a_fill(x):
    out = np.zeros(x.shape[0])  # a parallel fill
    for i in prange(x.shape[0]):
        for j in prange(2):  # nested: part of the outer region
            out[i] += x[i] * j
    for i in prange(x.shape[0]):
        out[i] += 1
    return out


@njit
def _serial(x):
    return x + 1


def test_parallel_regions_counts_outer_prange_loops_and_fills():
    assert prof.parallel_regions(_two_loops_and_a_fill) == 3
    assert prof.parallel_regions(_serial) == 0


def test_a_decode_step_launches_one_product_kernel_per_matrix(smollm, prompt):
    step = prof.profile_decode(smollm.decoder, "llama.cpp", prompt, reps=1)
    mm = step.kernels["ggml_simd._mm_parallel"]
    assert mm.parallel and mm.regions_per_call == 1
    assert mm.calls == 7 * N_LAYER + 1  # every product, the output head included, is one parallel call
    assert all(k.calls > 0 and k.seconds >= 0 for k in step.kernels.values())


# -- the machine ----------------------------------------------------------------------------
def test_machine_figures_are_positive_and_finite():
    for value in (read_bandwidth(1, repeats=1), dot_flops(1, n_repeat=100, repeats=1),
                  parallel_launch_seconds(1, n_launch=10, repeats=1)):
        assert value > 0 and math.isfinite(value)


def test_machine_arguments_are_checked():
    with pytest.raises(ConfigError, match="256 MiB"):
        read_bandwidth(1, mib=16)
    with pytest.raises(ConfigError, match="repeats"):
        dot_flops(1, repeats=0)
    with pytest.raises(ConfigError, match="n_launch"):
        parallel_launch_seconds(1, n_launch=0)


# -- the whole run, its text and its pictures ----------------------------------------------------
def test_run_reports_tables_and_the_ceiling(tiny_run):
    r = tiny_run
    assert r["decode_parallel_calls"] >= 7 * N_LAYER + 1
    assert set(r["latency"]) == {"1"} and r["latency"]["1"]["n_tokens"] == 3
    assert r["ceiling"]["weight_bytes_per_token"] == sum(m["gguf_bytes"] for m in r["decode_matmuls"])
    text = prof.format_report(r)
    for needle in ("| attn_q |", "| other |", "decode ceiling = bandwidth / weight bytes per token", "| threads |",
                   "ggml_simd._mm_parallel"):
        assert needle in text
    json.dumps(r)  # JSON-able as is


def test_run_rejects_bad_sizes(smollm):
    with pytest.raises(ConfigError, match="n_decode"):
        prof.run(smollm, n_prompt=4, n_decode=0, reps=1)


def test_plot_roofline_draws_every_product_of_both_passes(tiny_run):
    from zigllama_lib.viz.profile import plot_roofline

    fig = plot_roofline(tiny_run)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    drawn = [c for c in ax.collections if len(c.get_offsets())]
    assert len(drawn) == 2 * len(prof.MATMUL_KINDS)
    assert len(ax.lines) == 1  # the roof
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_plot_step_breakdown_and_view(tiny_run):
    import matplotlib.pyplot as plt

    from zigllama_lib.viz.profile import plot_step_breakdown, profile_view

    fig = plot_step_breakdown(tiny_run, "prefill")
    ax = fig.axes[0]
    assert len(ax.patches) == len(prof.OPS) + 1
    assert [t.get_text() for t in ax.get_yticklabels()] == list(prof.OPS) + [prof.OTHER]
    plt.close(fig)
    with pytest.raises(ConfigError, match="phase"):
        plot_step_breakdown(tiny_run, "train")
    pytest.importorskip("ipywidgets")
    view = profile_view(tiny_run)
    assert type(view).__name__ == "VBox"
    plt.close("all")


def test_cli_profile_prints_the_tables_and_writes_json(smollm_path, tmp_path):
    out = subprocess.run([sys.executable, "-m", "zigllama_lib.cli", "profile", "--model", str(smollm_path),
                          "--n-prompt", "4", "--n-decode", "2", "--reps", "1", "--threads", "1",
                          "--numerics", "float", "--json", str(tmp_path / "p.json")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "| operation | calls | ms | % of step |" in out.stdout and "decode ceiling" in out.stdout
    result = json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))
    assert result["numerics"] == "float" and result["n_prompt"] == 4
    assert {r["op"] for r in result["decode"]["ops"]} == set(prof.OPS) | {prof.OTHER}
