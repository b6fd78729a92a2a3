"""zigllama_lib.viz.quantisation: error statistics against gguf-py's round trip, grid steps by hand, figure smoke tests.

Oracles: gguf-py 0.19 (``gguf.quants.quantize`` / ``dequantize`` and its GGUF reader)
for the weights and round-trip errors the statistics summarise; hand-made blocks
for the grid steps; the figures are checked for their axes and artists.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from oracles import require_module  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from zigllama_lib.foundation.errors import ConfigError, GGUFError  # noqa: E402
from zigllama_lib.foundation.ggml_types import GGMLType  # noqa: E402
from zigllama_lib.foundation.gguf import GGUFFile  # noqa: E402
from zigllama_lib.linear_algebra import dequantize  # noqa: E402
from zigllama_lib.linear_algebra.quantize import quantize  # noqa: E402
from zigllama_lib.viz.quantisation import (  # noqa: E402
    LEGACY_FORMATS,
    MAX_ROWS,
    error_stats,
    error_table,
    fits,
    grid_steps,
    matrix_names,
    plot_error_histograms,
    plot_error_vs_bits,
    plot_kernel_speed,
    quantisation_error_view,
    quantisation_errors,
    tensor_values,
)

gguf = require_module("gguf")


@pytest.fixture(scope="module")
def smollm_file(smollm_path):
    return GGUFFile(smollm_path)


@pytest.fixture(scope="module")
def reader(smollm_path):
    return gguf.GGUFReader(str(smollm_path))


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def gguf_py_round_trip(x: np.ndarray, fmt: str) -> np.ndarray:
    t = gguf.GGMLQuantizationType[fmt]
    return np.asarray(gguf.quants.dequantize(gguf.quants.quantize(x, t), t), np.float32).reshape(x.shape)


def test_tensor_values_subsamples_rows_evenly(reader, smollm_file):
    t = next(t for t in reader.tensors if t.name == "token_embd.weight")
    want = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)  # (49152, 576)
    got = tensor_values(smollm_file, "token_embd.weight")
    step = -(-want.shape[0] // MAX_ROWS)  # every 24th row keeps 2048 of 49152
    np.testing.assert_array_equal(got, want[::step])
    assert got.shape == (-(-want.shape[0] // step), 576)
    small = tensor_values(smollm_file, "blk.0.attn_k.weight", max_rows=None)  # (192, 576): every row
    assert small.shape == (192, 576)
    with pytest.raises(ConfigError, match="2-D"):
        tensor_values(smollm_file, "blk.0.attn_norm.weight")
    with pytest.raises(GGUFError, match="no tensor"):
        tensor_values(smollm_file, "blk.99.ffn_up.weight")


def test_matrix_names_are_the_2d_tensors(reader, smollm_file):
    want = [t.name for t in reader.tensors if len([d for d in t.shape if d > 0]) == 2 and min(t.shape) > 1]
    assert matrix_names(smollm_file) == want
    assert len(want) == 1 + 30 * 7  # the embedding (tied output) and 7 matrices per block


def test_grid_steps_by_hand():
    x = np.zeros((1, 64), np.float32)
    x[0, 0] = 254.0  # Q8_0 block 0: d = 254 / 127 = 2
    x[0, 32] = -16.0  # Q4_0 block 1: d = -16 / -8 = 2; Q8_0: 16 / 127
    s8 = grid_steps(quantize(x, GGMLType.Q8_0), "Q8_0")
    assert s8.shape == (1, 64)
    np.testing.assert_array_equal(s8[0, :32], 2.0)
    np.testing.assert_array_equal(s8[0, 32:], np.float32(np.float16(np.float32(16) / np.float32(127))))
    s4 = grid_steps(quantize(x, GGMLType.Q4_0), "Q4_0")
    np.testing.assert_array_equal(s4[0, 32:], 2.0)  # |d|, though d itself is negative here
    assert np.isnan(grid_steps(quantize(x, GGMLType.F16), "F16")).all()


@pytest.mark.parametrize("fmt", ["Q4_K", "Q6_K"])
def test_kquant_grid_steps_space_the_dequantised_values(fmt):
    # Within a sub-block, every dequantised value is step * integer + offset: differences are whole steps.
    x = np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32)
    raw = quantize(x, GGMLType[fmt])
    y = dequantize(raw, GGMLType[fmt]).reshape(-1, 16).astype(np.float64)  # groups of 16 share a step
    steps = grid_steps(raw, fmt).reshape(-1, 16)
    assert np.all(steps == steps[:, :1]) and np.all(steps > 0)
    k = (y - y[:, :1]) / steps
    np.testing.assert_allclose(k, np.round(k), atol=1e-3)


def test_error_stats_match_a_gguf_py_round_trip(smollm_file):
    x = tensor_values(smollm_file, "blk.3.attn_q.weight")  # (576, 576): no K-quant fits
    stats = error_stats(x, ["Q4_0", "Q4_1", "Q8_0", "Q4_K"], tensor="q", source="Q4_1")
    assert [s.format for s in stats] == ["Q4_0", "Q4_1", "Q8_0"]  # Q4_K skipped: 576 % 256 != 0
    rms_x = np.sqrt(np.mean(x.astype(np.float64) ** 2))
    for s in stats:
        e = gguf_py_round_trip(x, s.format).astype(np.float64) - x
        assert (s.tensor, s.source) == ("q", "Q4_1")
        assert np.isclose(s.rms, np.sqrt(np.mean(e * e)), rtol=1e-12)
        assert s.max_abs == np.abs(e).max()
        assert np.isclose(s.rel_rms, s.rms / rms_x, rtol=1e-12)
        assert s.exact == np.mean(e == 0)
    by = {s.format: s for s in stats}
    assert by["Q4_1"].rms == 0 and by["Q4_1"].exact == 1.0  # stored Q4_1: its own grid
    assert by["Q4_0"].bits_per_weight == 4.5 and by["Q8_0"].bits_per_weight == 8.5
    assert by["Q8_0"].rms < by["Q4_0"].rms


def test_error_table_names_sources(smollm_file):
    table = error_table(smollm_file, ["token_embd.weight", "blk.0.ffn_down.weight"], ["Q4_0", "Q8_0", "Q4_K"])
    rows = [(s.tensor, s.source, s.format) for s in table]
    assert rows == [("token_embd.weight", "Q8_0", "Q4_0"), ("token_embd.weight", "Q8_0", "Q8_0"),
                    ("blk.0.ffn_down.weight", "Q4_1", "Q4_0"), ("blk.0.ffn_down.weight", "Q4_1", "Q8_0"),
                    ("blk.0.ffn_down.weight", "Q4_1", "Q4_K")]  # ffn_down rows are 1536 = 6 x 256 wide
    assert table[1].rms == 0  # the embedding is stored in Q8_0


def test_quantisation_errors_and_fits():
    x = np.random.default_rng(1).standard_normal((3, 96)).astype(np.float32)
    errs = quantisation_errors(x, ["Q4_0", "Q6_K", "F16"])
    assert list(errs) == ["Q4_0", "F16"] and errs["Q4_0"].shape == x.shape
    np.testing.assert_array_equal(errs["Q4_0"], gguf_py_round_trip(x, "Q4_0") - x)
    assert fits("Q4_0", 96) and not fits("Q4_K", 96) and fits(GGMLType.Q6_K, 512)


def test_plot_error_histograms():
    x = np.random.default_rng(2).standard_normal((64, 256)).astype(np.float32)
    x = dequantize(quantize(x, GGMLType.Q8_0), GGMLType.Q8_0)  # on the Q8_0 grid: Q8_0 is exact
    fig = plot_error_histograms(x, LEGACY_FORMATS + ("F16",), title="t")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    ax0, ax1 = fig.axes
    assert ax0.get_xscale() == "log"
    labels = [t.get_text() for t in ax0.get_legend().get_texts()]
    assert len(labels) == 6 and "Q8_0: all exact" in labels and any(lb.startswith("F16") for lb in labels)
    assert len(ax0.patches) == 5  # one step histogram per format with errors
    steps = [p for p in ax1.patches if not p.get_fill()]  # the step outlines (the shaded +-1/2 band is filled)
    assert len(steps) == 4  # e / d for the quantised ones (not F16, not the exact Q8_0)
    assert "16,384 weights" in fig._suptitle.get_text()
    with pytest.raises(ConfigError, match="fits"):
        plot_error_histograms(x[:, :96], ["Q4_K"])


def test_plot_error_vs_bits():
    x = np.random.default_rng(3).standard_normal((8, 512)).astype(np.float32)
    stats = error_stats(x, ["Q4_0", "Q4_K", "Q8_0", "F16"], tensor="a") + \
        error_stats(dequantize(quantize(x, GGMLType.Q8_0), GGMLType.Q8_0), ["Q4_0", "Q8_0"], tensor="b")
    fig = plot_error_vs_bits(stats, title="demo")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_title(loc="left") == "demo"
    markers = [ln for ln in ax.get_lines() if ln.get_linestyle() in ("None", "")]
    assert len(markers) == len(stats)
    hollow = [ln for ln in markers if ln.get_markerfacecolor() == "none"]
    assert len(hollow) == 1  # b re-quantised in Q8_0 is exact
    top = [t.get_text() for t in ax.child_axes[0].get_xticklabels()]  # the formats, on the top axis
    assert "Q4_0/Q4_K" in top and "Q8_0" in top and "F16" in top
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"a", "b", "K-quants", "floats", "exact: own format", "2x less per bit"} <= set(legend)
    with pytest.raises(ConfigError):
        plot_error_vs_bits([])


def test_plot_kernel_speed():
    fig = plot_kernel_speed({"python": 2.0, "numpy": 0.01, "numba": 0.0005})
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len(ax.patches) == 3
    texts = [t.get_text() for t in ax.texts]
    assert any("4,000x faster" in t for t in texts) and any("200x faster" in t for t in texts)
    assert sum("faster" in t for t in texts) == 2  # not the slowest
    with pytest.raises(ConfigError):
        plot_kernel_speed({"broken": 0.0})


def test_quantisation_error_view_redraws(smollm_file):
    pytest.importorskip("ipywidgets")
    view = quantisation_error_view(smollm_file, tensors=["blk.0.attn_v.weight", "blk.0.ffn_down.weight"],
                                   formats=("Q4_0", "Q8_0", "Q4_K"), fmt="Q4_0")
    header, controls, out = view.children
    tensor, fmt = controls.children
    assert tensor.value == "blk.0.attn_v.weight" and list(fmt.options) == ["all", "Q4_0", "Q8_0", "Q4_K"]
    fmt.value = "Q4_K"  # does not fit 576-wide rows: redraws a figure that says so
    tensor.value = "blk.0.ffn_down.weight"  # 1536-wide: it fits
    fmt.value = "all"
    with pytest.raises(ConfigError):
        quantisation_error_view(smollm_file, tensors=[])
