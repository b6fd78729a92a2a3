"""zigllama_lib.viz.primitives: activations, RMSNorm/LayerNorm statistics and RoPE pictures, against maths by hand.

The oracles are formulas worked out here (float64 numpy / ``math``), not the
library functions the module calls: RMS, mean and standard deviation of small
vectors, the 2-D rotation ``q . R(-offset * theta) k``, ``theta_i = base^(-2i/d)``,
and the slopes ``ReLU'(x) = [x > 0]``, ``SiLU'(0) = 1/2``, ``GELU'(0) = 1/2``.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from zigllama_lib.foundation.errors import ConfigError, ZigLlamaError  # noqa: E402
from zigllama_lib.viz.primitives import (  # noqa: E402
    activations_view,
    norm_statistics,
    norms_view,
    plot_activations,
    plot_norms,
    plot_rope,
    rope_dot_products,
    rope_frequencies,
    rope_pair,
    rope_view,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _labelled_lines(ax):
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


# -- activations ------------------------------------------------------------
def test_plot_activations_draws_each_function_and_its_slope():
    fig = plot_activations(("relu", "silu", "gelu_erf"), width=3.0, n_points=601)
    assert isinstance(fig, Figure)
    ax_f, ax_d = fig.axes
    for ax in (ax_f, ax_d):
        assert [line.get_label() for line in _labelled_lines(ax)] == ["relu", "silu", "gelu_erf"]
    relu_f, silu_f, gelu_f = _labelled_lines(ax_f)
    x = relu_f.get_xdata().astype(np.float64)
    assert x[0] == -3.0 and x[-1] == 3.0
    np.testing.assert_allclose(relu_f.get_ydata(), np.maximum(x, 0), atol=1e-7)
    np.testing.assert_allclose(silu_f.get_ydata(), x / (1 + np.exp(-x)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gelu_f.get_ydata(), [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x],
                               rtol=1e-6, atol=1e-7)
    relu_d, silu_d, gelu_d = _labelled_lines(ax_d)
    zero = int(np.argmin(np.abs(x)))
    assert x[zero] == 0.0
    # slopes by hand: ReLU' is 0 left of 0 and 1 right of it; SiLU'(0) = sigma(0) = 1/2; GELU'(0) = Phi(0) = 1/2
    np.testing.assert_allclose(relu_d.get_ydata()[: zero - 1], 0, atol=1e-6)
    np.testing.assert_allclose(relu_d.get_ydata()[zero + 2 :], 1, atol=1e-5)
    assert abs(silu_d.get_ydata()[zero] - 0.5) < 1e-4
    assert abs(gelu_d.get_ydata()[zero] - 0.5) < 1e-4
    # SiLU'(x) = s(x) (1 + x (1 - s(x))) away from 0 too
    s = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(silu_d.get_ydata()[1:-1], (s * (1 + x * (1 - s)))[1:-1], atol=1e-3)


@pytest.mark.parametrize("names", [("swish",), ()])
def test_plot_activations_rejects_unknown_or_no_names(names):
    with pytest.raises(ConfigError, match="activation"):
        plot_activations(names)


def test_plot_activations_rejects_a_non_positive_width():
    with pytest.raises(ZigLlamaError, match="width"):
        plot_activations(("relu",), width=0.0)


# -- normalisation ----------------------------------------------------------
def test_norm_statistics_by_hand():
    # x = (1, -1, 3, 1): mean 1, mean of squares 12/4 = 3, variance (0 + 4 + 4 + 0)/4 = 2
    x = np.array([[1.0, -1.0, 3.0, 1.0]], dtype=np.float32)
    st = norm_statistics(x, eps=0.0, weight=np.full(4, 2.0, dtype=np.float32))
    np.testing.assert_allclose(st["rms"], [math.sqrt(3)])
    np.testing.assert_allclose(st["mean"], [1.0])
    np.testing.assert_allclose(st["std"], [math.sqrt(2)])
    np.testing.assert_allclose(st["rms_after_rmsnorm"], [1.0], rtol=1e-6)
    np.testing.assert_allclose(st["rms_after_layernorm"], [1.0], rtol=1e-6)
    np.testing.assert_allclose(st["rms_after_gain"], [2.0], rtol=1e-6)
    # LayerNorm(x) = (0, -2, 2, 0)/sqrt 2, RMSNorm(x) = (1, -1, 3, 1)/sqrt 3: largest gap at the second coordinate
    np.testing.assert_allclose(st["max_norm_difference"], [2 / math.sqrt(2) - 1 / math.sqrt(3)], rtol=1e-6)
    assert "rms_after_gain" not in norm_statistics(x, eps=0.0)


def test_norm_statistics_eps_by_hand():
    # RMS of x / sqrt(mean(x^2) + eps) is sqrt(ms / (ms + eps))
    x = np.array([[0.01, -0.02, 0.03, 0.0]], dtype=np.float32)
    ms, eps = (1e-4 + 4e-4 + 9e-4) / 4, 1e-4
    st = norm_statistics(x, eps)
    np.testing.assert_allclose(st["rms_after_rmsnorm"], [math.sqrt(ms / (ms + eps))], rtol=1e-5)


def test_norm_statistics_on_real_embeddings(smollm):
    ids = np.array(smollm.tokenizer.encode("The capital of France is", add_special=False))
    h = smollm.decoder.embed(ids)  # (n_tok, d)
    eps = smollm.spec.norm_eps
    st = norm_statistics(h, eps, smollm.decoder.layers[0].attn_norm)
    h64 = h.astype(np.float64)
    ms = (h64**2).mean(axis=1)
    np.testing.assert_allclose(st["rms"], np.sqrt(ms), rtol=1e-12)
    np.testing.assert_allclose(st["rms_after_rmsnorm"], np.sqrt(ms / (ms + eps)), rtol=1e-5)
    g = smollm.decoder.layers[0].attn_norm.astype(np.float64)
    by_hand = np.sqrt(((h64 / np.sqrt(ms + eps)[:, None] * g) ** 2).mean(axis=1))
    np.testing.assert_allclose(st["rms_after_gain"], by_hand, rtol=1e-5)


def test_norm_statistics_rejects_a_vector():
    with pytest.raises(ConfigError, match=r"\(n_tok, d\)"):
        norm_statistics(np.ones(8, dtype=np.float32), 1e-5)


def test_plot_norms_bars_and_scatter():
    rng = np.random.default_rng(1)
    h = (rng.standard_normal((3, 32)) * [[0.1], [2.0], [50.0]] + 0.3).astype(np.float32)
    g = np.full(32, 0.5, dtype=np.float32)
    fig = plot_norms(h, 1e-6, g, token=2, labels=["a", "b", "c"], title="stage")
    assert isinstance(fig, Figure)
    ax_rms, ax_map = fig.axes
    assert ax_rms.get_yscale() == "log"
    assert [t.get_text() for t in ax_rms.get_xticklabels()] == ["a", "b", "c"]
    raw, normed, gained = ax_rms.containers
    rms = np.sqrt((h.astype(np.float64) ** 2).mean(axis=1))
    np.testing.assert_allclose([b.get_height() for b in raw], rms, rtol=1e-6)
    np.testing.assert_allclose([b.get_height() for b in normed], 1.0, rtol=1e-5)
    np.testing.assert_allclose([b.get_height() for b in gained], 0.5, rtol=1e-5)
    layer, rmsn = ax_map.collections
    x = h[2].astype(np.float64)
    np.testing.assert_allclose(rmsn.get_offsets()[:, 1], x / np.sqrt((x**2).mean() + 1e-6), rtol=1e-5)
    np.testing.assert_allclose(layer.get_offsets()[:, 1], (x - x.mean()) / np.sqrt(x.var() + 1e-6), rtol=1e-4,
                               atol=1e-5)
    assert fig._suptitle.get_text() == "stage"


def test_plot_norms_without_gain_has_two_bar_groups():
    h = np.arange(1, 9, dtype=np.float32).reshape(2, 4)
    fig = plot_norms(h, 1e-6)
    assert len(fig.axes[0].containers) == 2


@pytest.mark.parametrize("kwargs, match", [({"token": 3}, "token"), ({"labels": ["a"]}, "labels")])
def test_plot_norms_rejects_bad_token_or_labels(kwargs, match):
    h = np.ones((3, 4), dtype=np.float32)
    with pytest.raises(ConfigError, match=match):
        plot_norms(h, 1e-6, **kwargs)


# -- RoPE -----------------------------------------------------------------
def test_rope_pair_in_both_modes():
    assert rope_pair(0, 64, "norm") == (0, 1)
    assert rope_pair(5, 64, "norm") == (10, 11)
    assert rope_pair(0, 64, "neox") == (0, 32)
    assert rope_pair(31, 64, "neox") == (31, 63)
    with pytest.raises(ConfigError, match="pair index"):
        rope_pair(32, 64)
    with pytest.raises(ConfigError, match="mode"):
        rope_pair(0, 64, "gptj")


def test_rope_frequencies_by_hand():
    np.testing.assert_allclose(rope_frequencies(4, 10000.0), [1.0, 0.01])
    np.testing.assert_allclose(rope_frequencies(8, 10000.0), [1.0, 0.1, 0.01, 0.001])


def test_rope_dot_products_two_dimensions_by_hand():
    # one pair, theta = 1: (R(m) q) . (R(n) k) = q . R(n - m) k = (q.k) cos(m - n) + (q_a k_b - q_b k_a) sin(m - n)
    q, k = np.array([0.6, -1.3], dtype=np.float32), np.array([2.0, 0.5], dtype=np.float32)
    offsets = np.arange(0, 20)
    for start in (0, 7, 300):
        got = rope_dot_products(q, k, offsets, start, n_rot=2, base=10000.0, mode="norm")
        by_hand = [(0.6 * 2.0 - 1.3 * 0.5) * math.cos(o) + (0.6 * 0.5 + 1.3 * 2.0) * math.sin(o) for o in offsets]
        np.testing.assert_allclose(got, by_hand, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["norm", "neox"])
def test_rope_dot_products_sum_of_pair_rotations(mode):
    rng = np.random.default_rng(2)
    d, base = 16, 10000.0
    q, k = rng.standard_normal(d).astype(np.float32), rng.standard_normal(d).astype(np.float32)
    offsets = np.array([0, 1, 5, 40])
    got = rope_dot_products(q, k, offsets, 11, d, base, mode)
    by_hand = np.zeros(len(offsets))
    for i in range(d // 2):
        a, b = (2 * i, 2 * i + 1) if mode == "norm" else (i, i + d // 2)
        angle = offsets * base ** (-2 * i / d)
        by_hand += (q[a] * k[a] + q[b] * k[b]) * np.cos(angle) + (q[a] * k[b] - q[b] * k[a]) * np.sin(angle)
    np.testing.assert_allclose(got, by_hand, rtol=1e-4, atol=1e-4)


def test_plot_rope_panels():
    rng = np.random.default_rng(3)
    q, k = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    fig = plot_rope(q, k, position=5, pair=1, n_rot=16, base=100.0, mode="norm", far_start=300)
    assert isinstance(fig, Figure)
    ax_pair, ax_freq, ax_dot = fig.axes
    # left: one arrow per position 0..5, the last one at q's pair (2, 3) turned by 5 * theta_1
    arrows = [c for c in ax_pair.texts if type(c).__name__ == "Annotation"]
    assert len(arrows) == 6
    angle = 5 * 100.0 ** (-2 / 16)
    a, b = float(q[2]), float(q[3])
    np.testing.assert_allclose(arrows[-1].xy, (a * math.cos(angle) - b * math.sin(angle),
                                                a * math.sin(angle) + b * math.cos(angle)), rtol=1e-5, atol=1e-6)
    assert "pair 1" in ax_pair.get_title()
    # middle: theta_i = base^(-2i/d)
    dots = ax_freq.get_lines()[0]
    np.testing.assert_allclose(dots.get_ydata(), 100.0 ** (-2 * np.arange(8) / 16))
    # right: the key at 0 and at far_start give the same curve
    near, far, share = _labelled_lines(ax_dot)
    assert near.get_label() == "key at n = 0" and far.get_label() == "key at n = 300"
    np.testing.assert_allclose(far.get_ydata(), near.get_ydata()[::8], rtol=1e-4, atol=1e-4)
    assert near.get_xdata()[0] == 0 and near.get_xdata()[-1] == 64


def test_plot_rope_many_positions_draws_a_dozen_arrows():
    fig = plot_rope(position=1000, pair=0, n_rot=8)
    arrows = [c for c in fig.axes[0].texts if type(c).__name__ == "Annotation"]
    assert len(arrows) == 12
    assert fig.axes[2].get_lines()[0].get_xdata()[-1] == 1000


@pytest.mark.parametrize("kwargs, match", [({"pair": 4}, "pair index"), ({"mode": "x"}, "mode"),
                                           ({"position": -1}, "position"),
                                           ({"q": np.ones(4), "k": np.ones(4)}, "head_dim")])
def test_plot_rope_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        plot_rope(n_rot=8, **kwargs)


# -- widgets ----------------------------------------------------------------
def _controls(view):
    """The controls row of a figure_view: VBox(title, HBox(controls), Output)."""
    return list(view.children[1].children)


def test_activations_view_picks_and_redraws():
    widgets = pytest.importorskip("ipywidgets")
    view = activations_view(("silu",))
    assert isinstance(view, widgets.VBox)
    picker, width = _controls(view)
    assert isinstance(picker, widgets.SelectMultiple) and picker.value == ("silu",)
    assert set(picker.options) >= {"relu", "silu", "gelu", "gelu_erf", "sigmoid"}
    picker.value = ("relu", "sigmoid")  # redraws without error
    width.value = 8.0


def test_norms_view_steps_through_stages():
    widgets = pytest.importorskip("ipywidgets")
    rng = np.random.default_rng(4)
    stream = [rng.standard_normal((2, 8)).astype(np.float32) * s for s in (0.1, 10.0, 300.0)]
    view = norms_view(stream, 1e-5, [np.ones(8, np.float32)] * 3, labels=["x", "y"], names=["0", "1", "2"])
    stage, token = _controls(view)
    assert (stage.min, stage.max) == (0, 2)
    assert token.options == (("0: x", 0), ("1: y", 1))
    stage.value = 2
    token.value = 1
    with pytest.raises(ConfigError, match="weights"):
        norms_view(stream, 1e-5, [None])


def test_rope_view_sliders():
    widgets = pytest.importorskip("ipywidgets")
    view = rope_view(n_rot=16, base=100.0, position=3, pair=2, max_position=500)
    position, pair = _controls(view)
    assert (position.value, position.max) == (3, 500)
    assert (pair.value, pair.max) == (2, 7)
    position.value = 400
    pair.value = 7
