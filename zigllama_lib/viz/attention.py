"""Attention pictures: which earlier token each query looks at, per layer and head.

A decoder records, for every layer, the softmax weights of every head (see
``Decoder.forward(..., attention_sink=list)``)::

    A[l, h, t, s] = softmax_s(q_t . k_s / sqrt(d) + M[t, s])   # (n_layer, n_head, n_tok, n_kv)

Row ``t`` is a probability distribution over the keys ``s`` that query ``t``
may see (``M[t, s] = -inf`` above the causal diagonal, so those weights are 0).
When the tokens were decoded after ``n_past = n_kv - n_tok`` cached ones,
query ``t`` sits at position ``n_past + t``.

* :func:`record_attention`: run a prompt through a model and keep every weight;
* :func:`head_weights`: one head's (n_tok, n_kv) map, or the mean over heads;
* :func:`head_statistics`: per layer and head, the mean row entropy and the
  mean weight on the previous and on the first token;
* :func:`plot_attention` (one head), :func:`plot_attention_heads` (all heads
  of a layer), :func:`plot_head_summary` (a statistic for every head);
* :func:`attention_view`: the heatmap under a layer slider and a head picker.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from ..foundation.errors import ConfigError
from ._widgets import figure_view, require
from .tokenizer import piece_label

MEAN = "mean"  # head picker: the mean over all heads of the layer
ALL = "all"  # head picker: a grid of every head of the layer
MEASURES = ("previous", "first", "entropy")
_MEASURE_TITLES = {
    "previous": "mean weight on the previous token",
    "first": "mean weight on the first token",
    "entropy": "mean entropy of a row (nats)",
}


@dataclass(frozen=True)
class AttentionRecord:
    """A prompt's tokens and the attention weights of every layer and head."""

    ids: list[int]
    tokens: list[str]  # printable labels, one per id (whitespace shown as ␣ ↵ ⇥)
    weights: np.ndarray  # (n_layer, n_head, n_tok, n_tok) float32


def record_attention(model, prompt: str, add_special: bool = True) -> AttentionRecord:
    """Run ``prompt`` through ``model`` (float numerics, a fresh cache) and keep every attention weight."""
    from ..models.decoder import numerics_named

    ids = list(model.tokenizer.encode(prompt, add_special=add_special))
    if not ids:
        raise ConfigError(f"prompt {prompt!r} has no tokens")
    numerics = numerics_named("float")
    cache = model.decoder.new_cache(len(ids), numerics)
    sink: list[np.ndarray] = []
    model.decoder.forward(ids, cache, numerics, attention_sink=sink)
    tokens = [piece_label(model.tokenizer.token_bytes(i)) for i in ids]
    return AttentionRecord(ids, tokens, np.stack(sink))


def _as_weights(weights) -> np.ndarray:
    """``weights`` (a stacked array or the decoder's list of per-layer arrays) as (n_layer, n_head, n_tok, n_kv)."""
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim != 4:
        raise ConfigError(f"attention weights must be (n_layer, n_head, n_tok, n_kv), got shape {w.shape}")
    if w.shape[3] < w.shape[2]:
        raise ConfigError(f"attention weights of shape {w.shape}: "
                          f"fewer keys ({w.shape[3]}) than queries ({w.shape[2]})")
    return w


def head_weights(weights, layer: int, head: int | str = MEAN) -> np.ndarray:
    """The (n_tok, n_kv) weights of one head of ``layer``, or their mean over heads (``head="mean"``)."""
    w = _as_weights(weights)
    n_layer, n_head = w.shape[:2]
    if not 0 <= layer < n_layer:
        raise ConfigError(f"layer {layer} out of range: the weights have {n_layer} layers")
    if head == MEAN:
        return w[layer].mean(axis=0)
    if isinstance(head, str) or not 0 <= head < n_head:
        raise ConfigError(f"head must be 0..{n_head - 1} or {MEAN!r}, got {head!r}")
    return w[layer, head]


def head_statistics(weights) -> dict[str, np.ndarray]:
    """Per layer and head (n_layer, n_head): how each head spreads its attention.

    Averaged over the queries that have a previous token (positions >= 1):

    * ``"previous"``: mean weight on the token just before the query, ``A[t, p-1]``;
    * ``"first"``: mean weight on the first token, ``A[t, 0]`` (many heads park
      attention there: the "attention sink");
    * ``"entropy"``: mean of ``H_t = -sum_s A[t, s] ln A[t, s]`` in nats, from 0
      (all weight on one key) to ``ln(p + 1)`` (uniform over the visible keys).
    """
    w = _as_weights(weights).astype(np.float64)
    n_tok, n_kv = w.shape[2:]
    pos = n_kv - n_tok + np.arange(n_tok)  # (n_tok,) position of each query
    rows = np.nonzero(pos >= 1)[0]
    if len(rows) == 0:
        raise ConfigError("head statistics need a query at position >= 1 (at least two tokens)")
    rows_w = w[:, :, rows, :]  # (n_layer, n_head, n_rows, n_kv)
    plogp = np.where(rows_w > 0, rows_w * np.log(np.where(rows_w > 0, rows_w, 1.0)), 0.0)
    return {
        "previous": rows_w[:, :, np.arange(len(rows)), pos[rows] - 1].mean(axis=2),
        "first": rows_w[:, :, :, 0].mean(axis=2),
        "entropy": (-plogp.sum(axis=3)).mean(axis=2),
    }


def _head_name(head: int | str) -> str:
    return "mean over heads" if head == MEAN else f"head {head}"


def _draw_map(ax, a: np.ndarray, tokens, labels: bool = True, fontsize: int = 8):
    """Heatmap of one (n_tok, n_kv) weight map on ``ax``; the causally hidden cells left blank.

    Colour follows sqrt(weight) (a power norm), so weights of a few percent
    stay visible next to a head that puts 0.9 on one token.
    """
    colors = require("matplotlib.colors")
    n_tok, n_kv = a.shape
    pos = n_kv - n_tok + np.arange(n_tok)[:, None]  # query positions
    hidden = np.arange(n_kv)[None, :] > pos
    image = ax.imshow(np.ma.masked_array(a, hidden), cmap="viridis",
                      norm=colors.PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0), interpolation="nearest", aspect="auto")
    ax.set_facecolor("0.92")
    if labels and tokens is not None:
        ax.set_xticks(np.arange(n_kv), tokens, rotation=90, fontsize=fontsize)
        ax.set_yticks(np.arange(n_tok), tokens[-n_tok:], fontsize=fontsize)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    return image


def _check_tokens(tokens, n_kv: int) -> list[str]:
    tokens = list(tokens)
    if len(tokens) != n_kv:
        raise ConfigError(f"{len(tokens)} token labels for {n_kv} key positions")
    return tokens


def plot_attention(weights, tokens, layer: int = 0, head: int | str = MEAN):
    """Figure: the attention map of one head (or the mean over heads) of ``layer``.

    Rows are queries (the token being computed), columns the keys it may look
    at; each row sums to 1. ``tokens``: one label per key position.
    """
    plt = require("matplotlib.pyplot")
    a = head_weights(weights, layer, head)
    tokens = _check_tokens(tokens, a.shape[1])
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    image = _draw_map(ax, a, tokens)
    ax.set_xlabel("key: attended-to token")
    ax.set_ylabel("query: current token")
    ax.set_title(f"layer {layer}, {_head_name(head)}", fontsize=10)
    fig.colorbar(image, ax=ax, label="attention weight", fraction=0.05, pad=0.02)
    fig.tight_layout()
    return fig


def plot_attention_heads(weights, tokens, layer: int = 0):
    """Figure: every head of ``layer`` side by side (token labels on the outer axes only)."""
    plt = require("matplotlib.pyplot")
    w = _as_weights(weights)
    n_head, n_tok, n_kv = w.shape[1:]
    tokens = _check_tokens(tokens, n_kv)
    n_cols = int(np.ceil(np.sqrt(n_head)))
    n_rows = int(np.ceil(n_head / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(7, 1.7 * n_rows + 1.2), squeeze=False, layout="constrained")
    for h, ax in enumerate(axes.flat):
        if h >= n_head:
            ax.set_visible(False)
            continue
        row, col = divmod(h, n_cols)
        image = _draw_map(ax, head_weights(w, layer, h), tokens, labels=False)
        ax.set_title(f"head {h}", fontsize=8)
        if col == 0:
            ax.set_yticks(np.arange(n_tok), tokens[-n_tok:], fontsize=6)
        if row == n_rows - 1 or h + n_cols >= n_head:
            ax.set_xticks(np.arange(n_kv), tokens, rotation=90, fontsize=6)
    fig.suptitle(f"layer {layer}: all {n_head} heads (rows: queries, columns: keys)", fontsize=10)
    fig.colorbar(image, ax=axes, label="attention weight", fraction=0.03, pad=0.02)
    return fig


def plot_head_summary(weights, measure: str = "previous"):
    """Figure: one statistic of :func:`head_statistics` for every layer (x) and head (y)."""
    plt = require("matplotlib.pyplot")
    if measure not in MEASURES:
        raise ConfigError(f"measure must be one of {MEASURES}, got {measure!r}")
    stat = head_statistics(weights)[measure]  # (n_layer, n_head)
    n_layer, n_head = stat.shape
    fig, ax = plt.subplots(figsize=(7, 2.6))
    vmax = None if measure == "entropy" else 1.0
    image = ax.imshow(stat.T, cmap="magma", vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_xlabel("layer")
    ax.set_ylabel("head")
    ax.set_yticks(np.arange(n_head))
    ax.set_xticks(np.arange(0, n_layer, max(1, n_layer // 15)))
    ax.tick_params(labelsize=7)
    layer, head = np.unravel_index(int(np.argmax(stat)), stat.shape)
    ax.set_title(f"{_MEASURE_TITLES[measure]}; highest: layer {layer}, head {head} ({stat[layer, head]:.2f})",
                 fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    fig.tight_layout()
    return fig


def _plot_pick(weights, tokens, layer: int, head):
    """One head, the mean, or the grid of all heads (``head="all"``)."""
    if head == ALL:
        return plot_attention_heads(weights, tokens, layer)
    return plot_attention(weights, tokens, layer, head)


def attention_view(model, prompt: str, layer: int = 0, head: int | str = MEAN, add_special: bool = True):
    """Widget: the attention map of ``prompt`` in ``model`` with a layer slider and a head picker.

    The head picker offers every head, the mean over heads and a grid of all
    heads. The prompt is run once (:func:`record_attention`); the controls only redraw.
    """
    widgets = require("ipywidgets")
    record = record_attention(model, prompt, add_special=add_special)
    n_layer, n_head = record.weights.shape[:2]
    options = [("mean over heads", MEAN), ("all heads", ALL)] + [(f"head {h}", h) for h in range(n_head)]
    controls = {
        "layer": widgets.IntSlider(value=layer, min=0, max=n_layer - 1, description="layer",
                                   continuous_update=False),
        "head": widgets.Dropdown(options=options, value=head, description="head"),
    }
    return figure_view(partial(_plot_pick, record.weights, record.tokens), controls,
                       title=f"Attention of {model.spec.arch} on {prompt!r}")
