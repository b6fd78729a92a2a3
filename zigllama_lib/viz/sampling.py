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
* :func:`sampling_view`: the same figure under four sliders;
* :func:`sampler_playground`: the same figure under a control for every stage
  of llama.cpp's chain (penalties, DRY, typical, top-n-sigma, XTC, dynamic
  temperature, Mirostat), given the context's token ids.
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
                   min_p: float = 0.05, history=(), tokenizer=None, **settings) -> SamplingTable:
    """The kept set and final probabilities of the library's sampler for ``logits`` (n_vocab,).

    Settings are :class:`SamplerConfig`'s: the four named here and any other
    field as a keyword (``repeat_penalty``, ``dry_multiplier``, ``typical_p``,
    ``top_n_sigma``, ``xtc_probability``, ``dynatemp_range``, ``mirostat``, ...;
    validated there, ``ConfigError`` if out of range). ``history`` is the token
    ids already in the context, which the penalties and DRY look back over
    (``tokenizer`` maps DRY's sequence breakers to tokens). The kept set and
    ``q`` are ``Sampler.candidates(logits)``; ``p`` is always the model's own
    ``softmax(z)``, before any penalty.
    """
    z = np.asarray(logits)
    full = softmax(Candidates.from_logits(z))  # validates z: 1-D, finite maximum, no NaN
    unknown = sorted(set(settings) - set(SamplerConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"unknown sampler settings {unknown}; SamplerConfig's fields are "
                          f"{sorted(SamplerConfig.__dataclass_fields__)}")
    config = SamplerConfig(**{"seed": 0, **settings, "temperature": temperature, "top_k": top_k,
                              "top_p": top_p, "min_p": min_p})
    sampler = Sampler(config, tokenizer if config.dry_multiplier else None, n_ctx=max(len(history), 1))
    sampler.accept_prompt(history)
    chosen = sampler.candidates(z)
    kept = np.zeros(len(z), dtype=bool)
    kept[chosen.ids] = True
    q = np.zeros(len(z))
    q[chosen.ids] = chosen.probs
    order = np.lexsort((np.arange(len(z)), -z.astype(np.float64)))  # last key is primary
    return SamplingTable(order, full.probs, kept, q)


def _setting_text(temperature, top_k, top_p, min_p, **settings) -> str:
    parts = [f"T={temperature:g}" + (" (greedy)" if temperature <= 0 else ""),
             f"top-k={top_k}" if top_k > 0 else "top-k off",
             f"top-p={top_p:g}" if top_p < 1 else "top-p off",
             f"min-p={min_p:g}" if min_p > 0 else "min-p off"]
    defaults = SamplerConfig()
    parts += [f"{name}={value:g}" for name, value in settings.items()
              if name != "seed" and isinstance(value, (int, float)) and value != getattr(defaults, name)]
    return ", ".join(parts)


def plot_sampling(logits, tokenizer, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                  min_p: float = 0.05, n_show: int = 20, history=(), **settings):
    """Figure: the ``n_show`` most likely next tokens, kept (blue) or removed (grey) by the filters.

    Bar heights are the model's probabilities ``p_i``; a black tick on a kept
    bar is ``q_i``, the probability the sampler finally draws it with (after
    the filters and the temperature, renormalised). The title gives the kept
    count and the kept mass ``sum_{i kept} p_i``. ``history`` and ``settings``
    are :func:`sampling_table`'s (penalties, DRY, typical, XTC, Mirostat, ...).
    """
    plt = require("matplotlib.pyplot")
    if not isinstance(n_show, int) or n_show < 1:
        raise ConfigError(f"n_show must be a positive integer, got {n_show!r}")
    t = sampling_table(logits, temperature, top_k, top_p, min_p, history=history, tokenizer=tokenizer, **settings)
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
                 f"{_setting_text(temperature, top_k, top_p, min_p, **settings)}", fontsize=9)
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


# (group, SamplerConfig field, slider kind, min, max, step, label); llama.cpp's default is the start value
PLAYGROUND_CONTROLS = (
    ("truncation", "temperature", "float", 0.0, 2.0, 0.05, "temperature T"),
    ("truncation", "top_k", "int", 0, 100, 1, "top-k (0 = off)"),
    ("truncation", "top_p", "float", 0.05, 1.0, 0.01, "top-p (1 = off)"),
    ("truncation", "min_p", "float", 0.0, 0.5, 0.01, "min-p (0 = off)"),
    ("truncation", "typical_p", "float", 0.05, 1.0, 0.01, "typical-p (1 = off)"),
    ("truncation", "top_n_sigma", "float", -1.0, 5.0, 0.1, "top-n-sigma (<= 0 off)"),
    ("penalties", "repeat_penalty", "float", 0.5, 2.0, 0.05, "repeat (1 = off)"),
    ("penalties", "frequency_penalty", "float", -2.0, 2.0, 0.05, "frequency (0 = off)"),
    ("penalties", "presence_penalty", "float", -2.0, 2.0, 0.05, "presence (0 = off)"),
    ("penalties", "penalty_last_n", "int", 0, 256, 1, "last n tokens"),
    ("DRY", "dry_multiplier", "float", 0.0, 2.0, 0.05, "DRY multiplier (0 = off)"),
    ("DRY", "dry_base", "float", 1.0, 3.0, 0.05, "DRY base"),
    ("DRY", "dry_allowed_length", "int", 1, 8, 1, "DRY allowed length"),
    ("DRY", "dry_penalty_last_n", "int", 0, 256, 1, "DRY last n"),
    ("XTC", "xtc_probability", "float", 0.0, 1.0, 0.05, "XTC probability (0 = off)"),
    ("XTC", "xtc_threshold", "float", 0.0, 0.5, 0.01, "XTC threshold"),
    ("XTC", "seed", "int", 0, 20, 1, "seed (XTC's coin)"),
    ("dynamic T", "dynatemp_range", "float", 0.0, 1.5, 0.05, "dynatemp range (0 = off)"),
    ("dynamic T", "dynatemp_exponent", "float", 0.1, 3.0, 0.1, "dynatemp exponent"),
    ("Mirostat", "mirostat", "choice", 0, 2, 1, "Mirostat (0 = off)"),
    ("Mirostat", "mirostat_tau", "float", 0.5, 10.0, 0.25, "tau (target surprise, bits)"),
    ("Mirostat", "mirostat_eta", "float", 0.01, 1.0, 0.01, "eta (learning rate)"),
)


def sampler_playground(logits, tokenizer, history=(), n_show: int = 20, **start):
    """Widget: :func:`plot_sampling` under a control for every stage of llama.cpp's chain.

    One tab per group (truncation filters, penalties, DRY, XTC, dynamic
    temperature, Mirostat); every control starts at llama.cpp's default (or
    ``start[name]``), which is the stage's "off" value except for the default
    top-k 40 / top-p 0.95 / min-p 0.05 / T 0.8. ``history`` is the context the
    penalties and DRY look back over (the prompt's token ids).
    """
    widgets = require("ipywidgets")
    defaults = SamplerConfig(seed=0)
    unknown = sorted(set(start) - {c[1] for c in PLAYGROUND_CONTROLS})
    if unknown:
        raise ConfigError(f"no playground control for {unknown}")
    style = {"description_width": "initial"}
    common = dict(continuous_update=False, style=style, layout=widgets.Layout(width="48%"))
    controls, sections = {}, {}
    for group, name, kind, lo, hi, step, label in PLAYGROUND_CONTROLS:
        value = start.get(name, getattr(defaults, name))
        if kind == "choice":
            w = widgets.ToggleButtons(options=[("off", 0), ("v1", 1), ("v2", 2)], value=value,
                                      description=label, style=style)
        elif kind == "int":
            w = widgets.IntSlider(value=value, min=lo, max=hi, step=step, description=label, **common)
        else:
            w = widgets.FloatSlider(value=value, min=lo, max=hi, step=step, description=label, **common)
        controls[name] = w
        sections.setdefault(group, []).append(name)
    return figure_view(partial(plot_sampling, logits, tokenizer, n_show=n_show, history=tuple(history)), controls,
                       title="The whole sampler chain on real logits", sections=sections)


__all__ = ["PLAYGROUND_CONTROLS", "SamplingTable", "plot_sampling", "sampler_playground", "sampling_table",
           "sampling_view"]
