"""zigllama_lib.viz.attention: recorded attention weights against a hand computation, statistics by hand.

Oracles: layer 0's attention of SmolLM2 recomputed here from the GGUF bytes
with the numpy reference dequantiser, a float64 RMSNorm, RoPE and softmax
written from their formulas (not the library's functions); head statistics
on constructed heads whose previous-token weight, first-token weight and
entropy are known by hand; token labels from the tokenizer's bytes.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402

from zigllama_lib.foundation.errors import ConfigError, ZigLlamaError  # noqa: E402
from zigllama_lib.linear_algebra import dequantize_reference  # noqa: E402
from zigllama_lib.viz.attention import (  # noqa: E402
    ALL,
    MEAN,
    attention_view,
    head_statistics,
    head_weights,
    plot_attention,
    plot_attention_heads,
    plot_head_summary,
    record_attention,
)

PROMPT = "The capital of France is Paris. The capital of Italy is"


@pytest.fixture(scope="module")
def record(smollm):
    return record_attention(smollm, PROMPT)


def test_record_has_the_prompt_tokens_and_one_map_per_layer_and_head(smollm, record):
    s = smollm.spec
    ids = smollm.tokenizer.encode(PROMPT, add_special=True)
    assert record.ids == ids
    assert record.weights.shape == (s.n_layer, s.n_head, len(ids), len(ids))
    # labels: the token's bytes with the leading space shown as ␣ (by hand for two of them)
    assert record.tokens[0] == "The"
    assert record.tokens[1] == "␣capital"
    assert len(record.tokens) == len(ids)


def test_recorded_rows_are_causal_probability_distributions(record):
    w = record.weights.astype(np.float64)
    np.testing.assert_allclose(w.sum(axis=-1), 1.0, atol=1e-5)
    n = w.shape[-1]
    future = np.triu(np.ones((n, n), dtype=bool), k=1)
    assert np.all(w[..., future] == 0.0)
    assert np.all(w >= 0.0)


def rope_by_hand(x, base):
    """Interleaved-pair RoPE from its formula, float64: x (n_tok, n_head, d) at positions 0..n_tok-1."""
    n_tok, _, d = x.shape
    theta = np.arange(n_tok)[:, None] * base ** (-2.0 * np.arange(d // 2) / d)  # (n_tok, d/2)
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


def test_layer0_weights_match_a_hand_computation_from_the_gguf_bytes(smollm, record):
    s, g = smollm.spec, smollm.gguf
    assert s.traits.rope_mode == "norm"  # GGUF llama files: interleaved pairs

    def weight(name):
        info = g.tensors[name]
        return dequantize_reference(g.tensor_bytes(name), info.ggml_type).astype(np.float64)

    emb_info = g.tensors["token_embd.weight"]
    h = dequantize_reference(g.tensor_bytes("token_embd.weight")[record.ids], emb_info.ggml_type).astype(np.float64)
    x = h / np.sqrt((h * h).mean(axis=1, keepdims=True) + s.norm_eps) * weight("blk.0.attn_norm.weight")
    n = len(record.ids)
    q = rope_by_hand((x @ weight("blk.0.attn_q.weight").T).reshape(n, s.n_head, s.head_dim_k), s.rope_base)
    k = rope_by_hand((x @ weight("blk.0.attn_k.weight").T).reshape(n, s.n_kv_head, s.head_dim_k), s.rope_base)
    group = s.n_head // s.n_kv_head
    expected = np.empty((s.n_head, n, n))
    for head in range(s.n_head):
        scores = q[:, head] @ k[:, head // group].T / np.sqrt(s.head_dim_k)  # (n, n)
        scores[np.triu_indices(n, 1)] = -np.inf
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        expected[head] = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(record.weights[0], expected, atol=2e-5)


def test_head_weights_selects_a_head_or_averages_them(record):
    w = record.weights
    np.testing.assert_array_equal(head_weights(w, 4, 2), w[4, 2])
    by_hand = sum(w[4, h].astype(np.float64) for h in range(w.shape[1])) / w.shape[1]
    np.testing.assert_allclose(head_weights(w, 4, MEAN), by_hand, rtol=1e-6)
    # the decoder's list of per-layer arrays works as well as the stacked array
    np.testing.assert_array_equal(head_weights(list(w), 4, 2), w[4, 2])


@pytest.mark.parametrize("layer, head", [(-1, 0), (30, 0), (0, 9), (0, -1), (0, "max")])
def test_head_weights_rejects_a_missing_layer_or_head(record, layer, head):
    with pytest.raises(ConfigError, match="layer|head"):
        head_weights(record.weights, layer, head)


def test_weights_of_the_wrong_shape_are_rejected():
    with pytest.raises(ZigLlamaError, match=r"\(n_layer, n_head, n_tok, n_kv\)"):
        head_weights(np.ones((3, 4, 4)), 0, 0)
    with pytest.raises(ConfigError, match="fewer keys"):
        head_weights(np.ones((1, 1, 4, 3)), 0, 0)


def constructed_heads(n_tok, n_past=0):
    """(1, 3, n_tok, n_past + n_tok): head 0 one-hot on the previous token, head 1 uniform, head 2 on token 0."""
    n_kv = n_past + n_tok
    w = np.zeros((1, 3, n_tok, n_kv))
    for t in range(n_tok):
        p = n_past + t  # the query's position
        w[0, 0, t, max(p - 1, 0)] = 1.0
        w[0, 1, t, : p + 1] = 1.0 / (p + 1)
        w[0, 2, t, 0] = 1.0
    return w


@pytest.mark.parametrize("n_tok, n_past", [(6, 0), (3, 5), (1, 7)])
def test_head_statistics_of_constructed_heads(n_tok, n_past):
    stats = head_statistics(constructed_heads(n_tok, n_past))
    positions = [p for p in range(n_past, n_past + n_tok) if p >= 1]
    # uniform over p + 1 keys: entropy ln(p + 1), weight 1/(p + 1) on the previous and on the first token
    uniform_entropy = np.mean([np.log(p + 1) for p in positions])
    uniform_share = np.mean([1.0 / (p + 1) for p in positions])
    at_1 = np.mean([p == 1 for p in positions])  # only at position 1 is the previous token the first one
    np.testing.assert_allclose(stats["previous"][0], [1.0, uniform_share, at_1])
    np.testing.assert_allclose(stats["first"][0], [at_1, uniform_share, 1.0])
    np.testing.assert_allclose(stats["entropy"][0], [0.0, uniform_entropy, 0.0], atol=1e-12)


def test_head_statistics_need_a_second_position():
    with pytest.raises(ConfigError, match="position >= 1"):
        head_statistics(np.ones((1, 1, 1, 1)))


def test_plot_attention_draws_one_masked_map_with_token_labels(record):
    fig = plot_attention(record.weights, record.tokens, layer=3, head=5)
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # the map and its colour bar
    images = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    assert len(images) == 1
    data = images[0].get_array()
    n = len(record.ids)
    assert data.shape == (n, n)
    np.testing.assert_array_equal(data.mask, np.triu(np.ones((n, n), dtype=bool), k=1))
    np.testing.assert_array_equal(data.data, record.weights[3, 5])
    assert [t.get_text() for t in ax.get_xticklabels()] == record.tokens
    assert [t.get_text() for t in ax.get_yticklabels()] == record.tokens
    assert ax.get_title() == "layer 3, head 5"
    plt.close(fig)


def test_plot_attention_of_the_mean_and_of_decoding_steps():
    # two queries decoded after 3 cached tokens: 5 keys, the hidden cells are the last key of row 0
    w = constructed_heads(2, n_past=3)
    fig = plot_attention(w, list("abcde"), layer=0, head=MEAN)
    data = fig.axes[0].get_images()[0].get_array()
    assert data.mask.tolist() == [[False] * 4 + [True], [False] * 5]
    assert fig.axes[0].get_title() == "layer 0, mean over heads"
    plt.close(fig)
    with pytest.raises(ConfigError, match="4 token labels for 5 key positions"):
        plot_attention(w, list("abcd"))


def test_plot_attention_heads_draws_every_head(record):
    n_head = record.weights.shape[1]
    fig = plot_attention_heads(record.weights, record.tokens, layer=7)
    maps = [ax for ax in fig.axes if ax.get_visible() and ax.get_title().startswith("head")]
    assert [ax.get_title() for ax in maps] == [f"head {h}" for h in range(n_head)]
    for h, ax in enumerate(maps):
        np.testing.assert_array_equal(ax.get_images()[0].get_array().data, record.weights[7, h])
    plt.close(fig)


@pytest.mark.parametrize("measure", ["previous", "first", "entropy"])
def test_plot_head_summary_shows_heads_by_layers(measure):
    w = np.concatenate([constructed_heads(6), constructed_heads(6)[:, ::-1]])  # 2 layers, 3 heads
    fig = plot_head_summary(w, measure)
    image = fig.axes[0].get_images()[0]
    assert image.get_array().shape == (3, 2)  # heads down, layers across
    best = {"previous": "layer 0, head 0", "first": "layer 0, head 2", "entropy": "layer 0, head 1"}[measure]
    assert best in fig.axes[0].get_title()
    plt.close(fig)
    with pytest.raises(ConfigError, match="measure"):
        plot_head_summary(w, "max")


def test_view_has_a_layer_slider_and_a_head_picker(smollm):
    widgets = pytest.importorskip("ipywidgets")
    view = attention_view(smollm, "Hello world, hello")
    assert isinstance(view, widgets.VBox)
    slider, picker = view.children[1].children
    assert isinstance(slider, widgets.IntSlider) and (slider.min, slider.max) == (0, smollm.spec.n_layer - 1)
    assert isinstance(picker, widgets.Dropdown)
    assert list(picker.options[:2]) == [("mean over heads", MEAN), ("all heads", ALL)]
    assert len(picker.options) == 2 + smollm.spec.n_head
    slider.value = 5  # each change redraws without error
    picker.value = ALL
    picker.value = 2
    plt.close("all")
