"""Layer 3 pictures: activation functions, RMSNorm against LayerNorm, rotary position embedding.

* :func:`plot_activations` draws the library's activations and their slopes;
  :func:`activations_view` adds a picker for which ones;
* :func:`norm_statistics` measures vectors before and after normalisation;
  :func:`plot_norms` draws it for real hidden states (RMS per token, and each
  coordinate before against after RMSNorm and LayerNorm);
  :func:`norms_view` steps through the residual stream block by block;
* :func:`rope_pair`, :func:`rope_frequencies` and :func:`rope_dot_products` are
  the pieces of :func:`plot_rope`: one coordinate pair of a query turning with
  position, the frequencies ``theta_i = base^(-2i/n_rot)``, and ``q . k`` against
  the offset ``m - n``; :func:`rope_view` puts position and pair sliders above it.

Every number drawn comes from ``zigllama_lib.neural_primitives`` (``ACTIVATIONS``,
``rms_norm``, ``layer_norm``, ``apply_rope``); only the slopes are numerical
(central differences).
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import numpy as np

from ..foundation.errors import ConfigError
from ..neural_primitives import ACTIVATIONS, apply_rope, layer_norm, rms_norm
from ..neural_primitives.rope import ROPE_MODES
from ._widgets import figure_view, require

_ACTIVATION_COLOURS = {"relu": "tab:gray", "gelu": "tab:orange", "gelu_erf": "tab:red",
                       "silu": "tab:blue", "sigmoid": "tab:green"}


# -- activations ------------------------------------------------------------
def _check_activations(names: Sequence[str]) -> list[str]:
    names = list(names)
    unknown = [n for n in names if n not in ACTIVATIONS]
    if unknown:
        raise ConfigError(f"unknown activation(s) {unknown}; choose from {sorted(ACTIVATIONS)}")
    if not names:
        raise ConfigError(f"pick at least one activation from {sorted(ACTIVATIONS)}")
    return names


def plot_activations(names: Sequence[str] = ("relu", "gelu", "silu"), width: float = 4.0, n_points: int = 801):
    """Figure: ``f(x)`` (left) and its slope ``f'(x)`` (right) for each activation in ``names``, x in [-width, width].

    ``names`` are keys of ``ACTIVATIONS`` (``relu``, ``gelu`` (tanh form),
    ``gelu_erf``, ``silu``, ``sigmoid``). The slope is ``np.gradient`` of the
    float32 values on the grid (central differences).
    """
    plt = require("matplotlib.pyplot")
    names = _check_activations(names)
    if not width > 0:
        raise ConfigError(f"width must be positive, got {width}")
    x = np.linspace(-width, width, n_points, dtype=np.float32)  # (n_points,)
    fig, (ax_f, ax_d) = plt.subplots(1, 2, figsize=(7, 3))
    for name in names:
        y = ACTIVATIONS[name](x).astype(np.float64)  # (n_points,)
        colour = _ACTIVATION_COLOURS.get(name)
        ax_f.plot(x, y, label=name, color=colour)
        ax_d.plot(x, np.gradient(y, x.astype(np.float64)), label=name, color=colour)
    for ax, title in ((ax_f, "f(x)"), (ax_d, "slope f'(x)")):
        ax.axhline(0, color="black", lw=0.5)
        ax.axvline(0, color="black", lw=0.5)
        ax.set_xlabel("x")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    ax_f.legend(fontsize=8)
    fig.tight_layout()
    return fig


def activations_view(names: Sequence[str] = ("relu", "gelu", "silu"), width: float = 4.0):
    """Widget: :func:`plot_activations` with a multiple picker for the functions and a slider for the x range."""
    widgets = require("ipywidgets")
    controls = {
        "names": widgets.SelectMultiple(options=sorted(ACTIVATIONS), value=tuple(_check_activations(names)),
                                        rows=len(ACTIVATIONS), description="functions"),
        "width": widgets.FloatSlider(value=width, min=1.0, max=10.0, step=0.5, description="|x| up to"),
    }
    return figure_view(plot_activations, controls, title="Activation functions (ctrl-click to pick several)")


# -- normalisation ----------------------------------------------------------
def _rms(x: np.ndarray) -> np.ndarray:
    """Root mean square over the last axis, in float64: (..., d) -> (...)."""
    return np.sqrt(np.mean(np.square(np.asarray(x, dtype=np.float64)), axis=-1))


def norm_statistics(hidden: np.ndarray, eps: float, weight: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-token statistics of ``hidden: (n_tok, d)`` before and after normalisation, each (n_tok,).

    ``rms``: ``sqrt(mean(x^2))``; ``mean`` and ``std`` of the coordinates;
    ``rms_after_rmsnorm`` / ``rms_after_layernorm``: RMS of ``RMSNorm(x)`` /
    ``LayerNorm(x)`` without a gain (1 up to ``eps``); ``rms_after_gain``: RMS of
    ``RMSNorm(x) * weight`` (only with a ``weight``); ``max_norm_difference``:
    ``max_j |LayerNorm(x)_j - RMSNorm(x)_j|``, small when ``|mean| << rms``.
    """
    hidden = np.asarray(hidden, dtype=np.float32)
    if hidden.ndim != 2:
        raise ConfigError(f"hidden states must be (n_tok, d), got shape {hidden.shape}")
    x64 = hidden.astype(np.float64)
    rn = rms_norm(hidden, None, eps)  # (n_tok, d)
    ln = layer_norm(hidden, None, None, eps)  # (n_tok, d)
    stats = {
        "rms": _rms(hidden),
        "mean": x64.mean(axis=-1),
        "std": x64.std(axis=-1),
        "rms_after_rmsnorm": _rms(rn),
        "rms_after_layernorm": _rms(ln),
        "max_norm_difference": np.abs(ln.astype(np.float64) - rn).max(axis=-1),
    }
    if weight is not None:
        stats["rms_after_gain"] = _rms(rms_norm(hidden, weight, eps))
    return stats


def plot_norms(hidden: np.ndarray, eps: float, weight: np.ndarray | None = None, token: int = 0,
               labels: Sequence[str] | None = None, title: str | None = None):
    """Figure: RMSNorm and LayerNorm applied to hidden states ``hidden: (n_tok, d)``.

    Left: for each token, the RMS of ``x``, of ``RMSNorm(x)`` (1) and, with a
    ``weight`` g, of ``RMSNorm(x) * g``, on a log scale. Right: every coordinate
    ``x_j`` of token ``token`` against ``RMSNorm(x)_j = x_j / rms`` (a line
    through 0) and ``LayerNorm(x)_j = (x_j - mean) / std`` (shifted by
    ``mean / std``), both without the gain.
    """
    plt = require("matplotlib.pyplot")
    hidden = np.asarray(hidden, dtype=np.float32)
    stats = norm_statistics(hidden, eps, weight)
    n_tok = hidden.shape[0]
    if not 0 <= token < n_tok:
        raise ConfigError(f"token must be in [0, {n_tok}), got {token}")
    labels = [str(i) for i in range(n_tok)] if labels is None else [str(s) for s in labels]
    if len(labels) != n_tok:
        raise ConfigError(f"{len(labels)} labels for {n_tok} tokens")

    fig, (ax_rms, ax_map) = plt.subplots(1, 2, figsize=(8, 3), gridspec_kw={"width_ratios": [1.1, 1]})
    bars = [("x", stats["rms"], "tab:gray"), ("RMSNorm(x)", stats["rms_after_rmsnorm"], "tab:blue")]
    if weight is not None:
        bars.append(("RMSNorm(x) * g", stats["rms_after_gain"], "tab:green"))
    width = 0.8 / len(bars)
    pos = np.arange(n_tok)
    for n, (name, values, colour) in enumerate(bars):
        ax_rms.bar(pos + (n - (len(bars) - 1) / 2) * width, values, width, label=name, color=colour)
    ax_rms.set_yscale("log")
    low = min(float(np.min(v)) for _, v, _ in bars)
    high = max(float(np.max(v)) for _, v, _ in bars)
    ax_rms.set_ylim(low / 2, high * 20)  # room above the bars for the legend
    ax_rms.set_xticks(pos, labels, rotation=45, ha="right", fontsize=8)
    ax_rms.set_ylabel("RMS over the d coordinates")
    ax_rms.legend(fontsize=7, ncol=len(bars), loc="upper center")
    ax_rms.set_title("RMS per token", fontsize=10)

    x = hidden[token].astype(np.float64)  # (d,)
    rn = rms_norm(hidden[token], None, eps)
    ln = layer_norm(hidden[token], None, None, eps)
    ax_map.scatter(x, ln, s=6, color="tab:orange", label="LayerNorm(x)")
    ax_map.scatter(x, rn, s=3, color="tab:blue", label="RMSNorm(x)")
    ax_map.axhline(0, color="black", lw=0.5)
    ax_map.axvline(0, color="black", lw=0.5)
    ax_map.set_xlabel(f"coordinate x_j of token {labels[token]}")
    ax_map.set_ylabel("normalised")
    ax_map.legend(fontsize=7)
    ax_map.set_title(f"mean/rms = {stats['mean'][token] / stats['rms'][token]:+.3f}, "
                     f"max |LN - RMS| = {stats['max_norm_difference'][token]:.3f}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def norms_view(stream: Sequence[np.ndarray], eps: float, weights: Sequence[np.ndarray | None] | None = None,
               labels: Sequence[str] | None = None, names: Sequence[str] | None = None,
               stage: int = 0, token: int = 0):
    """Widget: :func:`plot_norms` over a sequence of hidden states, with a stage slider and a token picker.

    ``stream[s]``: (n_tok, d) hidden states at stage ``s`` (e.g. the residual
    stream entering block ``s``); ``weights[s]``: the gain of the norm applied
    there (or None); ``names[s]``: a title for the stage.
    """
    widgets = require("ipywidgets")
    stream = [np.asarray(h, dtype=np.float32) for h in stream]
    if not stream:
        raise ConfigError("norms_view needs at least one (n_tok, d) array of hidden states")
    if weights is not None and len(weights) != len(stream):
        raise ConfigError(f"{len(weights)} weights for {len(stream)} stages")
    if names is not None and len(names) != len(stream):
        raise ConfigError(f"{len(names)} names for {len(stream)} stages")
    n_tok = stream[0].shape[0]
    labels = [str(i) for i in range(n_tok)] if labels is None else list(labels)

    def plot(stage: int, token: int):
        return plot_norms(stream[stage], eps, None if weights is None else weights[stage], token, labels,
                          title=None if names is None else names[stage])

    controls = {
        "stage": widgets.IntSlider(value=stage, min=0, max=len(stream) - 1, description="stage"),
        "token": widgets.Dropdown(options=[(f"{i}: {s}", i) for i, s in enumerate(labels)], value=token,
                                  description="token"),
    }
    return figure_view(plot, controls, title="RMSNorm and LayerNorm on hidden states")


# -- rotary position embedding ------------------------------------------------
def rope_pair(i: int, n_rot: int, mode: str = "norm") -> tuple[int, int]:
    """The coordinates that pair ``i`` rotates: ``(2i, 2i+1)`` ("norm") or ``(i, i + n_rot/2)`` ("neox")."""
    if mode not in ROPE_MODES:
        raise ConfigError(f"unknown RoPE mode {mode!r}; expected one of {ROPE_MODES}")
    if not 0 <= i < n_rot // 2:
        raise ConfigError(f"pair index must be in [0, {n_rot // 2}), got {i}")
    return (2 * i, 2 * i + 1) if mode == "norm" else (i, i + n_rot // 2)


def rope_frequencies(n_rot: int, base: float) -> np.ndarray:
    """``theta_i = base^(-2i/n_rot)`` in radians per token, i = 0 .. n_rot/2 - 1: (n_rot/2,) float64."""
    return float(base) ** (-2.0 * np.arange(n_rot // 2) / n_rot)


def rope_dot_products(q: np.ndarray, k: np.ndarray, offsets: np.ndarray, start: int, n_rot: int, base: float,
                      mode: str = "norm") -> np.ndarray:
    """``RoPE(q, start + o) . RoPE(k, start)`` for each offset ``o``: (n_offsets,) float64.

    ``q``, ``k``: (head_dim,) vectors, rotated by the library's ``apply_rope``;
    the key sits at position ``start``, the query ``o`` tokens later.
    """
    offsets = np.asarray(offsets)
    q_rot = apply_rope(np.broadcast_to(q, (len(offsets), 1, len(q))), start + offsets, n_rot, base, mode)
    k_rot = apply_rope(np.asarray(k, dtype=np.float32)[None, None, :], np.array([start]), n_rot, base, mode)
    return (q_rot[:, 0].astype(np.float64) @ k_rot[0, 0].astype(np.float64))  # (n_offsets,)


def _trail(position: int, n_max: int = 12) -> np.ndarray:
    """Positions drawn as arrows: all of 0..position, or n_max of them evenly spaced."""
    if position < n_max:
        return np.arange(position + 1)
    return np.unique(np.linspace(0, position, n_max).round().astype(int))


def plot_rope(q: np.ndarray | None = None, k: np.ndarray | None = None, position: int = 8, pair: int = 0,
              n_rot: int = 64, base: float = 10000.0, mode: str = "norm", far_start: int = 1000):
    """Figure: rotary position embedding of one query/key, in three panels.

    Left: the coordinates of pair ``pair`` of ``q`` (``rope_pair``) at the
    positions 0 .. ``position``, each turned by ``position * theta_i``. Middle:
    the frequencies ``theta_i``, the chosen pair marked. Right: ``q . k`` with the
    query ``m - n`` tokens after the key, for the key at position 0 and at
    ``far_start`` (the curves coincide: only the offset counts), and pair
    ``pair``'s share of it; the offset ``position`` is marked. ``q``, ``k``:
    (head_dim,) vectors, seeded random ones when omitted.
    """
    plt = require("matplotlib.pyplot")
    a, b = rope_pair(pair, n_rot, mode)
    if position < 0:
        raise ConfigError(f"position must be >= 0, got {position}")
    rng = np.random.default_rng(0)
    q = rng.standard_normal(n_rot).astype(np.float32) if q is None else np.asarray(q, dtype=np.float32)
    k = rng.standard_normal(n_rot).astype(np.float32) if k is None else np.asarray(k, dtype=np.float32)
    if q.shape != k.shape or q.ndim != 1 or q.shape[0] < n_rot:
        raise ConfigError(f"q and k must be (head_dim,) vectors with head_dim >= n_rot={n_rot}, "
                          f"got {q.shape} and {k.shape}")
    theta = rope_frequencies(n_rot, base)  # (n_rot/2,)
    fig, (ax_pair, ax_freq, ax_dot) = plt.subplots(1, 3, figsize=(9.5, 3),
                                                   gridspec_kw={"width_ratios": [1, 1, 1.3]})

    # left: the pair (q_a, q_b) turning with position
    trail = _trail(position)
    rotated = apply_rope(np.broadcast_to(q, (len(trail), 1, len(q))), trail, n_rot, base, mode)[:, 0]
    radius = float(np.hypot(q[a], q[b])) or 1.0
    circle = np.linspace(0, 2 * np.pi, 200)
    ax_pair.plot(radius * np.cos(circle), radius * np.sin(circle), color="lightgray", lw=0.8)
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(trail)))
    for t, (p, colour) in enumerate(zip(trail, colours)):
        last = t == len(trail) - 1
        ax_pair.annotate("", xy=(rotated[t, a], rotated[t, b]), xytext=(0, 0),
                         arrowprops=dict(arrowstyle="-|>", color=colour, lw=2.0 if last else 0.8,
                                         alpha=1.0 if last or t == 0 else 0.6))
    ax_pair.text(rotated[0, a], rotated[0, b], " m=0", fontsize=7, color=colours[0])
    ax_pair.text(rotated[-1, a], rotated[-1, b], f" m={position}", fontsize=7, color=colours[-1])
    lim = 1.3 * radius
    ax_pair.set_xlim(-lim, lim)
    ax_pair.set_ylim(-lim, lim)
    ax_pair.set_aspect("equal")
    ax_pair.set_xticks([])
    ax_pair.set_yticks([])
    ax_pair.set_xlabel(f"q[{a}]", fontsize=8)
    ax_pair.set_ylabel(f"q[{b}]", fontsize=8)
    turn = position * theta[pair]
    ax_pair.set_title(f"pair {pair}: $m\\theta_{{{pair}}}$ = {turn:.3g} rad ({np.degrees(turn) % 360:.0f}° mod 360)",
                      fontsize=9)

    # middle: the frequencies
    ax_freq.semilogy(np.arange(len(theta)), theta, ".", color="tab:blue")
    ax_freq.semilogy([pair], [theta[pair]], "o", color="tab:red")
    ax_freq.set_xlabel("pair i")
    ax_freq.set_ylabel(r"$\theta_i$ (rad per token)")
    ax_freq.set_title(f"$\\theta_{{{pair}}}$ = {theta[pair]:.3g}: a turn every {2 * np.pi / theta[pair]:.3g} tokens",
                      fontsize=9)
    ax_freq.grid(alpha=0.3, which="both")

    # right: q . k against the offset, for two absolute positions of the key
    offsets = np.unique(np.linspace(0, max(64, position), 257).round().astype(int))
    near = rope_dot_products(q, k, offsets, 0, n_rot, base, mode)
    far = rope_dot_products(q, k, offsets, far_start, n_rot, base, mode)
    angle = offsets * theta[pair]
    share = (q[a] * k[a] + q[b] * k[b]) * np.cos(angle) + (q[a] * k[b] - q[b] * k[a]) * np.sin(angle)
    ax_dot.plot(offsets, near, color="tab:blue", label="key at n = 0")
    ax_dot.plot(offsets[::8], far[::8], "o", ms=3, color="tab:orange", label=f"key at n = {far_start}")
    ax_dot.plot(offsets, share, "--", color="tab:red", lw=0.8, label=f"pair {pair}'s share")
    ax_dot.axvline(position, color="gray", lw=0.8)
    ax_dot.set_xlabel(r"offset $m - n$ (tokens)")
    ax_dot.set_ylabel(r"$q \cdot k$ after RoPE")
    ax_dot.legend(fontsize=7)
    ax_dot.set_title(r"$q \cdot k$ depends only on $m - n$", fontsize=9)
    fig.tight_layout()
    return fig


def rope_view(q: np.ndarray | None = None, k: np.ndarray | None = None, n_rot: int = 64, base: float = 10000.0,
              mode: str = "norm", position: int = 8, pair: int = 0, max_position: int = 2048):
    """Widget: :func:`plot_rope` with a position slider and a pair-index slider."""
    widgets = require("ipywidgets")
    controls = {
        "position": widgets.IntSlider(value=position, min=0, max=max_position, description="position m"),
        "pair": widgets.IntSlider(value=pair, min=0, max=n_rot // 2 - 1, description="pair i"),
    }
    plot = partial(plot_rope, q, k, n_rot=n_rot, base=base, mode=mode)
    return figure_view(plot, controls, title=f"RoPE ({mode} pairing, base {base:g})")
