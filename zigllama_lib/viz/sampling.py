"""Sampling pictures: which next tokens each filter keeps, and what the sampler draws from.

The model's logits ``z`` give the distribution ``p = softmax(z)``. The sampler
chain (``inference/sampling.py``, llama.cpp's default order)::

    top-k -> top-p -> min-p      decide which tokens are *kept*, measured on p
    temperature -> softmax       reshape the kept tokens: q_i = exp(z_i / T) / sum_{j kept} exp(z_j / T)
    draw                         one token from q

so the filters never see the temperature: ``T`` changes ``q``, not the kept set
(``T = 0`` is greedy: only the argmax is kept, whatever the filters say).

* :func:`sampling_table`: for one setting, every token's ``p``, whether it is
  kept and its final ``q`` (from the library's own :class:`Sampler`);
* :func:`plot_sampling`: bars of ``p`` for the most likely tokens, coloured
  kept / removed, with ``q`` marked on the kept ones; the kept count and the
  kept mass ``sum_{i kept} p_i`` in the title;
* :func:`sampling_view`: the same figure under four sliders.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from ..foundation.errors import ConfigError
from ..inference.sampler_chain import Sampler
from ..inference.sampling import Candidates, SamplerConfig, softmax
from ._widgets import figure_view, require
from .tokenizer import piece_label

_KEPT, _REMOVED, _Q = "tab:blue", "#cccccc", "black"


@dataclass(frozen=True)
class SamplingTable:
    """One sampler setting applied to one logits vector; arrays are indexed by token id.

    ``order`` lists token ids by descending logit (lower id first on ties),
    ``p`` is the model's distribution ``softmax(z)``, ``kept`` marks the tokens
    the filters keep and ``q`` is what the sampler draws from (0 if removed).
    """

    order: np.ndarray  # (n_vocab,) int64 token ids, most likely first
    p: np.ndarray      # (n_vocab,) float64, sums to 1
    kept: np.ndarray   # (n_vocab,) bool
    q: np.ndarray      # (n_vocab,) float64, sums to 1 over the kept tokens

    @property
    def n_kept(self) -> int:
        return int(self.kept.sum())

    @property
    def kept_mass(self) -> float:
        """``sum_{i kept} p_i``: how much of the model's distribution survives the filters."""
        return float(self.p[self.kept].sum())


def sampling_table(logits, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                   min_p: float = 0.05) -> SamplingTable:
    """The kept set and final probabilities of the library's sampler for ``logits`` (n_vocab,).

    Settings are :class:`SamplerConfig`'s (validated there, ``ConfigError`` if
    out of range); the kept set and ``q`` are ``Sampler.candidates(logits)``.
    """
    z = np.asarray(logits)
    full = softmax(Candidates.from_logits(z))  # validates z: 1-D, finite maximum, no NaN
    config = SamplerConfig(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=0)
    chosen = Sampler(config).candidates(z)
    kept = np.zeros(len(z), dtype=bool)
    kept[chosen.ids] = True
    q = np.zeros(len(z))
    q[chosen.ids] = chosen.probs
    order = np.lexsort((np.arange(len(z)), -z.astype(np.float64)))  # last key is primary
    return SamplingTable(order, full.probs, kept, q)


def _setting_text(temperature, top_k, top_p, min_p) -> str:
    parts = [f"T={temperature:g}" + (" (greedy)" if temperature <= 0 else ""),
             f"top-k={top_k}" if top_k > 0 else "top-k off",
             f"top-p={top_p:g}" if top_p < 1 else "top-p off",
             f"min-p={min_p:g}" if min_p > 0 else "min-p off"]
    return ", ".join(parts)


def plot_sampling(logits, tokenizer, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                  min_p: float = 0.05, n_show: int = 20):
    """Figure: the ``n_show`` most likely next tokens, kept (blue) or removed (grey) by the filters.

    Bar heights are the model's probabilities ``p_i``; a black tick on a kept
    bar is ``q_i``, the probability the sampler finally draws it with (after
    the filters and the temperature, renormalised). The title gives the kept
    count and the kept mass ``sum_{i kept} p_i``.
    """
    plt = require("matplotlib.pyplot")
    if not isinstance(n_show, int) or n_show < 1:
        raise ConfigError(f"n_show must be a positive integer, got {n_show!r}")
    t = sampling_table(logits, temperature, top_k, top_p, min_p)
    shown = t.order[:n_show]                              # (n_show,) token ids
    x = np.arange(len(shown))
    kept = t.kept[shown]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar(x, t.p[shown], color=np.where(kept, _KEPT, _REMOVED), edgecolor="#555555", linewidth=0.4)
    ax.scatter(x[kept], t.q[shown][kept], marker="_", s=160, linewidths=2, color=_Q, zorder=3)
    labels = [piece_label(tokenizer.token_bytes(int(i))) for i in shown]
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7, family="DejaVu Sans Mono")
    ax.set_xlim(-0.6, len(shown) - 0.4)
    ax.set_ylim(0, 1.08 * max(t.p[shown].max(), t.q[shown].max()))
    ax.set_ylabel("probability")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=_KEPT, label="kept: p"), Patch(color=_REMOVED, label="removed: p"),
                       Line2D([], [], color=_Q, marker="_", linestyle="none", markersize=10, markeredgewidth=2,
                              label="q: drawn with")], fontsize=7, loc="upper right")
    hidden = t.n_kept - int(kept.sum())
    more = f" ({hidden} beyond the {len(shown)} shown)" if hidden else ""
    ax.set_title(f"kept {t.n_kept} tokens{more}, {t.kept_mass:.1%} of p\n"
                 f"{_setting_text(temperature, top_k, top_p, min_p)}", fontsize=9)
    fig.tight_layout()
    return fig


def sampling_view(logits, tokenizer, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                  min_p: float = 0.05, n_show: int = 20):
    """Widget: :func:`plot_sampling` under temperature, top-k, top-p and min-p sliders.

    Slider ends switch a filter off: ``top_k = 0``, ``top_p = 1``, ``min_p = 0``;
    ``T = 0`` is greedy.
    """
    widgets = require("ipywidgets")
    style = {"description_width": "initial"}
    common = dict(continuous_update=False, style=style, layout=widgets.Layout(width="48%"))
    controls = {
        "temperature": widgets.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.05,
                                           description="temperature T", **common),
        "top_k": widgets.IntSlider(value=top_k, min=0, max=100, step=1, description="top-k (0 = off)", **common),
        "top_p": widgets.FloatSlider(value=top_p, min=0.05, max=1.0, step=0.01,
                                     description="top-p (1 = off)", **common),
        "min_p": widgets.FloatSlider(value=min_p, min=0.0, max=0.5, step=0.01,
                                     description="min-p (0 = off)", **common),
    }
    return figure_view(partial(plot_sampling, logits, tokenizer, n_show=n_show), controls,
                       title="Which next tokens the sampler keeps")


__all__ = ["SamplingTable", "plot_sampling", "sampling_table", "sampling_view"]
