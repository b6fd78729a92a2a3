"""zigllama_lib.viz.sampling: the kept set and final probabilities it draws, against hand maths and llama.cpp.

Oracles: small distributions worked by hand (which tokens top-k / top-p /
min-p keep, ``q`` proportional to ``p ** (1 / T)`` over them); a plain numpy
chain written here on SmolLM2's real next-token logits; llama.cpp's own
sampler chain (top-k, top-p, min-p, temp, dist) on the same logits. The
figure and the widget get smoke tests on what they draw.
"""

from __future__ import annotations

import ctypes

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from zigllama_lib.foundation.errors import ConfigError  # noqa: E402
from zigllama_lib.viz.sampling import plot_sampling, sampling_table, sampling_view  # noqa: E402
from zigllama_lib.viz.tokenizer import piece_label  # noqa: E402

P7 = np.array([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02])  # sums to 1
Z7 = np.log(P7)  # float64 logits whose softmax is exactly P7 (to rounding)


class ByteTokenizer:
    """A stand-in tokenizer: token ``i`` is the letter ``chr(ord('a') + i)``."""

    def token_bytes(self, i: int) -> bytes:
        return bytes([ord("a") + i])


def off(**kw):
    """Every filter off, temperature 1, unless overridden."""
    return {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, **kw}


# ----------------------------------------------------------------- sampling_table by hand


@pytest.mark.parametrize("settings, kept", [
    (off(), [0, 1, 2, 3, 4, 5, 6]),
    (off(top_k=2), [0, 1]),
    (off(top_p=0.5), [0, 1]),              # 0.4 < 0.5 <= 0.65
    (off(top_p=0.75), [0, 1, 2]),          # 0.65 < 0.75 <= 0.8
    (off(min_p=0.1), [0, 1, 2, 3, 4]),     # p >= 0.04
    (off(min_p=0.5), [0, 1]),              # p >= 0.2
    (off(top_k=4, min_p=0.5), [0, 1]),     # min-p on the renormalised top 4: p / 0.9 >= 0.5 * 0.4 / 0.9
    (off(temperature=0.0, top_k=5), [0]),  # greedy whatever the filters
])
def test_kept_set_and_mass_by_hand(settings, kept):
    t = sampling_table(Z7, **settings)
    assert np.flatnonzero(t.kept).tolist() == kept
    assert t.n_kept == len(kept)
    assert t.kept_mass == pytest.approx(P7[kept].sum())
    np.testing.assert_allclose(t.p, P7, rtol=1e-12)
    assert t.order.tolist() == list(range(7))


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0])
def test_q_is_p_to_the_one_over_t_over_the_kept_tokens(T):
    t = sampling_table(Z7, **off(temperature=T, top_p=0.75))   # keeps 0, 1, 2
    w = P7[:3] ** (1 / T)                                      # exp(z / T) = p ** (1 / T)
    np.testing.assert_allclose(t.q[:3], w / w.sum(), rtol=1e-12)
    assert (t.q[3:] == 0).all()


def test_greedy_q_is_one_on_the_argmax():
    t = sampling_table(Z7[::-1].copy(), temperature=0.0)
    assert t.q.tolist() == [0, 0, 0, 0, 0, 0, 1.0]
    assert t.order.tolist() == list(range(6, -1, -1))


def test_order_breaks_ties_towards_the_lower_id():
    z = np.array([1.0, 3.0, 1.0, 3.0, 2.0], dtype=np.float32)
    assert sampling_table(z, **off()).order.tolist() == [1, 3, 4, 0, 2]


@pytest.mark.parametrize("bad", [dict(top_p=0.0), dict(min_p=1.5), dict(temperature=-1.0), dict(top_k=2.5)])
def test_bad_settings_raise_config_error(bad):
    with pytest.raises(ConfigError):
        sampling_table(Z7, **{**off(), **bad})


def test_bad_logits_raise_config_error():
    with pytest.raises(ConfigError, match="1-D"):
        sampling_table(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match="NaN"):
        sampling_table(np.array([0.0, np.nan]))


# ----------------------------------------------------------------- the real model's logits


@pytest.fixture(scope="module")
def story_logits(smollm):
    ids = smollm.tokenizer.encode("Once upon a time, there was a", add_special=True)
    return smollm.logits(ids)[-1]  # (n_vocab,) float32


def numpy_chain(z: np.ndarray, temperature, top_k, top_p, min_p):
    """llama.cpp's chain in plain numpy: kept mask and final q, over the whole vocabulary."""
    z64 = z.astype(np.float64)
    ranked = np.lexsort((np.arange(len(z)), -z64))     # most likely first
    alive = ranked[:top_k] if top_k > 0 else ranked    # top-k, still in rank order
    w = np.exp(z64[alive] - z64[alive[0]])
    if top_p < 1:                                      # smallest prefix reaching top_p
        cum = np.cumsum(w / w.sum())
        alive, w = alive[: int(np.argmax(cum >= top_p)) + 1], w[: int(np.argmax(cum >= top_p)) + 1]
    if min_p > 0:                                      # p_i >= min_p * p_max
        keep = w >= min_p * w[0]
        alive, w = alive[keep], w[keep]
    kept = np.zeros(len(z), dtype=bool)
    kept[alive] = True
    q = np.zeros(len(z))
    e = np.exp((z64[alive] - z64[alive[0]]) / temperature)
    q[alive] = e / e.sum()
    return kept, q


SETTINGS = [
    dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),  # llama.cpp's defaults
    dict(temperature=1.3, top_k=0, top_p=0.6, min_p=0.0),
    dict(temperature=0.5, top_k=0, top_p=1.0, min_p=0.2),
    dict(temperature=1.0, top_k=7, top_p=1.0, min_p=0.0),
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_table_matches_a_numpy_chain_on_real_logits(story_logits, settings):
    t = sampling_table(story_logits, **settings)
    kept, q = numpy_chain(story_logits, **settings)
    assert np.array_equal(t.kept, kept)
    np.testing.assert_allclose(t.q, q, rtol=1e-5, atol=1e-12)
    z = story_logits.astype(np.float64)
    p = np.exp(z - z.max())
    np.testing.assert_allclose(t.p, p / p.sum(), rtol=1e-5)
    assert t.kept_mass == pytest.approx((p / p.sum())[kept].sum(), rel=1e-5)


def llama_cpp_kept(llama_cpp, z: np.ndarray, temperature, top_k, top_p, min_p):
    """Ids and probabilities left by llama.cpp's top-k, top-p, min-p, temp and dist samplers."""
    lc = llama_cpp
    n = len(z)
    buf = (lc.llama_token_data * n)()
    data = np.ctypeslib.as_array(buf)
    data["id"], data["logit"], data["p"] = np.arange(n), z, 0.0
    cur = lc.llama_token_data_array(data=ctypes.cast(buf, lc.llama_token_data_p), size=n, selected=-1,
                                    sorted=False)
    chain = [lc.llama_sampler_init_top_k(top_k), lc.llama_sampler_init_top_p(top_p, 1),
             lc.llama_sampler_init_min_p(min_p, 1), lc.llama_sampler_init_temp(temperature),
             lc.llama_sampler_init_dist(0)]
    try:
        for s in chain:
            lc.llama_sampler_apply(s, ctypes.byref(cur))
    finally:
        for s in chain:
            lc.llama_sampler_free(s)
    ids = np.array([cur.data[i].id for i in range(cur.size)])
    probs = np.array([cur.data[i].p for i in range(cur.size)])
    return ids, probs


@pytest.mark.oracle
@pytest.mark.parametrize("settings", SETTINGS[:2])
def test_table_matches_llama_cpp_on_real_logits(llama_cpp, story_logits, settings):
    t = sampling_table(story_logits, **settings)
    ids, probs = llama_cpp_kept(llama_cpp, story_logits, **settings)
    assert sorted(ids.tolist()) == np.flatnonzero(t.kept).tolist()
    np.testing.assert_allclose(t.q[ids], probs, rtol=1e-4, atol=1e-9)


# ----------------------------------------------------------------- the figure and the widget


def bar_colours(ax):
    return [p.get_facecolor() for p in ax.patches]


def test_plot_colours_kept_and_removed_bars_by_hand():
    fig = plot_sampling(Z7, ByteTokenizer(), temperature=1.0, top_k=0, top_p=0.75, min_p=0.0, n_show=5)
    try:
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        assert len(ax.patches) == 5                                      # one bar per shown token
        np.testing.assert_allclose([b.get_height() for b in ax.patches], P7[:5], rtol=1e-12)
        colours = bar_colours(ax)
        assert len({c for c in colours[:3]}) == 1 and colours[3] == colours[4] != colours[0]
        assert colours[0] == to_rgba("tab:blue")
        (ticks,) = [c for c in ax.collections if isinstance(c, PathCollection)]
        np.testing.assert_allclose(ticks.get_offsets()[:, 1], P7[:3] / 0.8, rtol=1e-12)  # q on kept bars
        assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c", "d", "e"]
        title = ax.get_title()
        assert "kept 3 tokens" in title and "80.0% of p" in title
        assert "top-p=0.75" in title and "top-k off" in title and "min-p off" in title
    finally:
        plt.close(fig)


def test_plot_says_how_many_kept_tokens_are_not_shown():
    fig = plot_sampling(Z7, ByteTokenizer(), temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, n_show=4)
    try:
        assert "kept 7 tokens (3 beyond the 4 shown)" in fig.axes[0].get_title()
    finally:
        plt.close(fig)


def test_plot_greedy_title():
    fig = plot_sampling(Z7, ByteTokenizer(), temperature=0.0, n_show=3)
    try:
        title = fig.axes[0].get_title()
        assert "kept 1 tokens" in title and "(greedy)" in title and "40.0% of p" in title
    finally:
        plt.close(fig)


def test_plot_rejects_a_bad_n_show():
    with pytest.raises(ConfigError, match="n_show"):
        plot_sampling(Z7, ByteTokenizer(), n_show=0)


def test_plot_on_the_real_model_labels_the_most_likely_tokens(smollm, story_logits):
    tok = smollm.tokenizer
    fig = plot_sampling(story_logits, tok, n_show=12)
    try:
        ax = fig.axes[0]
        top = np.argsort(-story_logits.astype(np.float64), kind="stable")[:12]
        assert [t.get_text() for t in ax.get_xticklabels()] == [piece_label(tok.token_bytes(int(i))) for i in top]
        n_kept = sampling_table(story_logits).n_kept
        assert f"kept {n_kept} tokens" in ax.get_title()
    finally:
        plt.close(fig)


def test_view_has_four_sliders_and_redraws(story_logits, smollm, monkeypatch):
    widgets = pytest.importorskip("ipywidgets")
    import zigllama_lib.viz.sampling as viz_sampling

    calls = []
    real_plot = viz_sampling.plot_sampling

    def recording_plot(*args, **kwargs):
        calls.append(kwargs)
        return real_plot(*args, **kwargs)

    monkeypatch.setattr(viz_sampling, "plot_sampling", recording_plot)
    view = viz_sampling.sampling_view(story_logits, smollm.tokenizer, n_show=8)
    sliders = [w for w in view.children[1].children if isinstance(w, (widgets.FloatSlider, widgets.IntSlider))]
    assert [s.description.split()[0] for s in sliders] == ["temperature", "top-k", "top-p", "min-p"]
    assert [s.value for s in sliders] == [0.8, 40, 0.95, 0.05]
    assert calls == [dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, n_show=8)]  # drawn at creation
    sliders[1].value = 3
    assert calls[-1] == dict(temperature=0.8, top_k=3, top_p=0.95, min_p=0.05, n_show=8)
    sliders[0].value = 0.0
    assert len(calls) == 3 and calls[-1]["temperature"] == 0.0
    plt.close("all")


# ----------------------------------------------------------------- the whole chain: penalties, playground


def test_penalty_in_the_table_by_hand():
    """Token 0 (p = 0.4, z = ln 0.4 < 0) seen once with repeat penalty 2: z_0 -> 2 ln 0.4, so its weight
    becomes 0.4^2 = 0.16 against the others' unchanged 0.6: q_0 = 0.16 / 0.76."""
    t = sampling_table(Z7, **off(), history=[0], repeat_penalty=2.0)
    assert t.q[0] == pytest.approx(0.16 / 0.76, rel=1e-5)
    assert t.q[1] == pytest.approx(0.25 / 0.76, rel=1e-5)
    assert t.p[0] == pytest.approx(0.4, rel=1e-6)  # p stays the model's own


def test_presence_and_xtc_in_the_table_by_hand():
    # presence 1 on token 0: its weight 0.4 e^-1; the rest keep theirs
    t = sampling_table(Z7, **off(), history=[0, 0], presence_penalty=1.0)
    w0 = 0.4 * np.exp(-1.0)
    assert t.q[0] == pytest.approx(w0 / (w0 + 0.6), rel=1e-5)
    # XTC always on, threshold 0.12: tokens 0, 1, 2 are above it; all but the least likely (2) go
    t = sampling_table(Z7, **off(), xtc_probability=1.0, xtc_threshold=0.12)
    assert np.flatnonzero(t.kept).tolist() == [2, 3, 4, 5, 6]


def test_unknown_setting_is_refused():
    with pytest.raises(ConfigError, match="unknown sampler settings"):
        sampling_table(Z7, repetition_penalty=1.1)
    with pytest.raises(ConfigError, match="dry_multiplier"):
        sampling_table(Z7, dry_multiplier=-1.0)


def test_playground_has_a_tab_per_stage_and_redraws(story_logits, smollm, monkeypatch):
    widgets = pytest.importorskip("ipywidgets")
    import zigllama_lib.viz.sampling as viz_sampling
    from zigllama_lib.inference.sampling import SamplerConfig

    calls = []
    real_plot = viz_sampling.plot_sampling

    def recording_plot(*args, **kwargs):
        calls.append(kwargs)
        return real_plot(*args, **kwargs)

    monkeypatch.setattr(viz_sampling, "plot_sampling", recording_plot)
    history = smollm.tokenizer.encode("Once upon a time, there was a", add_special=True)
    view = viz_sampling.sampler_playground(story_logits, smollm.tokenizer, history=history, n_show=8)
    tabs = view.children[1]
    assert isinstance(tabs, widgets.Tab)
    assert list(tabs.titles) == ["truncation", "penalties", "DRY", "XTC", "dynamic T", "Mirostat"]
    controls = [w for page in tabs.children for w in page.children]
    assert len(controls) == len(viz_sampling.PLAYGROUND_CONTROLS)
    defaults = SamplerConfig(seed=0)
    first = calls[0]
    assert first["history"] == tuple(history) and first["n_show"] == 8
    for _group, name, *_rest in viz_sampling.PLAYGROUND_CONTROLS:
        assert first[name] == getattr(defaults, name), name  # every control starts at llama.cpp's default
    dry = next(w for w in controls if w.description.startswith("DRY multiplier"))
    dry.value = 0.8
    assert len(calls) == 2 and calls[-1]["dry_multiplier"] == 0.8
    mirostat = next(w for w in controls if isinstance(w, widgets.ToggleButtons))
    mirostat.value = 2
    assert calls[-1]["mirostat"] == 2 and calls[-1]["dry_multiplier"] == 0.8
    plt.close("all")
