"""Quantisation pictures: how far each GGUF format moves a tensor's weights, and what a kernel costs.

For weights ``x`` and a format ``t``, the *round trip* ``x_hat = dequantize(quantize(x, t))``
is what a file of type ``t`` would hold, and ``e = x_hat - x`` its error. Within a
block, rounding to a grid of step ``d`` gives ``|e| <= d / 2``, so measured in steps,
``e / d`` lies in ``[-1/2, 1/2]`` for every format (Q4_0 / Q5_0 clamp the weights
beyond ``7.5 d`` / ``15.5 d`` on the side opposite the block's extreme: up to one
step). Halving the step costs one bit per weight, so the RMS error falls by about
2x per extra bit.

* :func:`tensor_weights`: a tensor of a model, dequantised (rows subsampled if large);
* :func:`grid_steps`: the step ``|d|`` (K-quants: ``|d sc|``) that applies to each weight;
* :func:`error_stats`: RMS / max / relative RMS error of each format on some weights;
* :func:`plot_error_histograms`: histograms of ``e`` and of ``e / d`` per format;
* :func:`plot_error_vs_bits`: relative RMS error against bits per weight, per tensor;
* :func:`plot_kernel_speed`: measured time per call of several implementations (log scale);
* :func:`quantisation_error_view`: the histograms under a tensor and a format picker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Mapping, Sequence

import numpy as np

from ..foundation.errors import ConfigError
from ..foundation.ggml_types import BLOCK_GEOMETRY, GGMLType
from ..linear_algebra import dequantize
from ..linear_algebra import kquants as kq
from ..linear_algebra.quantize import QUANTIZE_TYPES, bits_per_weight, check_quantize_type, quantize
from ._widgets import figure_view, require

MAX_ROWS = 2048  # rows of a tensor used for its error (evenly spaced); keeps the embedding quick
LEGACY_FORMATS = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
DEFAULT_FORMATS = LEGACY_FORMATS + ("Q4_K", "Q6_K", "BF16", "F16")
_COLOURS = {"Q4_0": "tab:red", "Q4_1": "tab:orange", "Q5_0": "tab:olive", "Q5_1": "tab:green",
            "Q8_0": "tab:blue", "Q4_K": "tab:brown", "Q6_K": "tab:cyan", "BF16": "tab:purple",
            "F16": "tab:pink", "F32": "black"}


def _type(fmt) -> GGMLType:
    return check_quantize_type(GGMLType[fmt] if isinstance(fmt, str) else fmt)


def fits(fmt, n_cols: int) -> bool:
    """Whether rows of ``n_cols`` weights are whole blocks of ``fmt`` (K-quants need multiples of 256)."""
    return n_cols % BLOCK_GEOMETRY[_type(fmt)][0] == 0


def _gguf_of(model):
    """The GGUFFile of a loaded model (``model.gguf``), or ``model`` itself if it is one."""
    return getattr(model, "gguf", model)


def matrix_names(model) -> list[str]:
    """Names of the 2-D tensors (the weight matrices) of a model or GGUFFile, in file order."""
    return [name for name, info in _gguf_of(model).tensors.items() if len(info.shape) == 2]


def tensor_values(model, name: str, max_rows: int | None = MAX_ROWS) -> np.ndarray:
    """Tensor ``name`` dequantised to float32 ``(n_rows, n_cols)``; if it has more than ``max_rows`` rows,
    every k-th row (evenly spaced, k as small as fits), so a 49152-row embedding stays quick."""
    f = _gguf_of(model)
    info = f.info(name)
    raw = np.asarray(f.tensor_bytes(name))
    if raw.ndim != 2:
        raise ConfigError(f"{name} has shape {info.np_shape}: pick a weight matrix (2-D)")
    if max_rows is not None and raw.shape[0] > max_rows:
        raw = raw[:: math.ceil(raw.shape[0] / max_rows)]
    return dequantize(raw, info.ggml_type)


def grid_steps(raw: np.ndarray, fmt) -> np.ndarray:
    """The grid step that applies to each weight of ``raw (n_rows, row_bytes)`` -> ``(n_rows, n_cols)`` float32.

    Legacy types: ``|d|`` of the weight's 32-block; Q4_K / Q6_K: ``|d * sc|`` of its sub-block;
    float types: NaN (no fixed step).
    """
    t = _type(fmt)
    block, size = BLOCK_GEOMETRY[t]
    raw = np.asarray(raw)
    blocks = raw.reshape(-1, size)
    if block == 1:
        return np.full((raw.shape[0], raw.shape[1] // size), np.nan, np.float32)
    if t.name in kq.UNPACK:
        d, _, sc, _, _ = kq.UNPACK[t.name](blocks)  # sc: one per group of 16
        steps = np.repeat(np.abs(d[:, None] * sc.astype(np.float32)), 16, axis=1)
    else:
        d = np.ascontiguousarray(blocks[:, 0:2]).view("<f2")[:, 0].astype(np.float32)
        steps = np.repeat(np.abs(d)[:, None], block, axis=1)
    return steps.reshape(raw.shape[0], -1)


@dataclass(frozen=True)
class ErrorStat:
    """The error ``e = x_hat - x`` of re-quantising one tensor's weights ``x`` in one format."""

    tensor: str
    source: str  # the type the tensor is stored in ("" if unknown)
    format: str
    bits_per_weight: float  # of the format, scales included
    rms: float  # sqrt(mean e^2)
    max_abs: float  # max |e|
    rel_rms: float  # rms / sqrt(mean x^2)
    exact: float  # fraction of weights with e == 0


def quantisation_errors(x: np.ndarray, formats: Sequence[str] = LEGACY_FORMATS) -> dict[str, np.ndarray]:
    """``{format: e}`` with ``e = dequantize(quantize(x)) - x`` (same shape as ``x``), for each of
    ``formats`` whose blocks fit the rows of ``x``."""
    x = np.asarray(x, dtype=np.float32)
    out = {}
    for fmt in formats:
        if fits(fmt, x.shape[-1]):
            t = _type(fmt)
            out[t.name] = dequantize(quantize(x, t), t) - x
    return out


def error_stats(x: np.ndarray, formats: Sequence[str] = DEFAULT_FORMATS, tensor: str = "",
                source: str = "") -> list[ErrorStat]:
    """One :class:`ErrorStat` per format of ``formats`` whose blocks fit the rows of ``x (n_rows, n_cols)``."""
    x = np.asarray(x, dtype=np.float32)
    scale = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    out = []
    for fmt, e in quantisation_errors(x, formats).items():
        e = e.astype(np.float64)
        rms = float(np.sqrt(np.mean(e * e)))
        out.append(ErrorStat(tensor, source, fmt, bits_per_weight(GGMLType[fmt]), rms, float(np.abs(e).max()),
                             rms / scale if scale else 0.0, float(np.mean(e == 0))))
    return out


def error_table(model, tensors: Sequence[str], formats: Sequence[str] = DEFAULT_FORMATS,
                max_rows: int | None = MAX_ROWS) -> list[ErrorStat]:
    """:func:`error_stats` of each tensor of ``model`` (a loaded model or GGUFFile), dequantised first
    (:func:`tensor_values`: at most ``max_rows`` evenly spaced rows)."""
    f = _gguf_of(model)
    rows = []
    for name in tensors:
        rows += error_stats(tensor_values(f, name, max_rows), formats, name, f.info(name).ggml_type.name)
    return rows


def plot_error_histograms(x: np.ndarray, formats: Sequence[str] = LEGACY_FORMATS, title: str | None = None,
                          bins: int = 60):
    """Figure: histograms of the round-trip error of ``x`` in each format that fits its rows.

    Left: ``|e|`` on logarithmic bins (one more bit halves the step: the hump moves left by 2x);
    weights with no error at all are counted in the legend ("exact"). Right: ``e / d``, the error in
    grid steps of the weight's block (quantised types only), inside ``[-1/2, 1/2]`` (shaded) but for
    the values Q4_0 / Q5_0 clamp.
    """
    plt = require("matplotlib.pyplot")
    x = np.asarray(x, dtype=np.float32)
    errors = quantisation_errors(x, formats)
    if not errors:
        raise ConfigError(f"none of {list(formats)} fits rows of {x.shape[-1]} weights")
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(7, 3), gridspec_kw={"width_ratios": [3, 2]})
    nonzero = np.concatenate([np.abs(e[e != 0]).ravel() for e in errors.values()])
    lo, hi = (np.quantile(nonzero, 1e-4), nonzero.max()) if nonzero.size else (1e-8, 1.0)
    edges = np.geomspace(lo, hi, bins + 1)
    for fmt, e in errors.items():
        a = np.abs(e).ravel()
        exact = float(np.mean(a == 0))
        label = fmt + (f" ({exact:.0%} exact)" if exact >= 0.005 else "")
        if exact == 1.0:
            ax0.plot([], [], color=_COLOURS.get(fmt), label=f"{fmt}: all exact")
            continue
        ax0.hist(a[a > 0], bins=edges, histtype="step", color=_COLOURS.get(fmt), label=label)
        t = GGMLType[fmt]
        if BLOCK_GEOMETRY[t][0] > 1:
            steps = grid_steps(quantize(x, t), t).ravel()
            ok = steps > 0
            ax1.hist(e.ravel()[ok] / steps[ok], bins=np.linspace(-1.05, 1.05, 22), histtype="step",
                     color=_COLOURS.get(fmt), density=True)
    ax0.set_xscale("log")
    ax0.set_xlabel("$|\\hat{x} - x|$ (log scale)")
    ax0.set_ylabel("weights")
    ax0.legend(fontsize=7, loc="upper left")
    ax1.axvspan(-0.5, 0.5, color="0.92", zorder=0)
    ax1.set_xlabel("$(\\hat{x} - x) / d$, in grid steps")
    ax1.set_ylabel("density")
    fig.suptitle(f"{title + ': ' if title else ''}round-trip error of {x.size:,} weights", fontsize=10)
    fig.tight_layout()
    return fig


def _marker(fmt: str) -> str:
    """Marker per format family: legacy blocks of 32 (o), K-quants (s), floats (^)."""
    return "s" if fmt.endswith("_K") else "^" if fmt in ("F16", "BF16", "F32") else "o"


def plot_error_vs_bits(stats: Sequence[ErrorStat], title: str | None = None, guide: bool = True):
    """Figure: relative RMS error against bits per weight; one colour per tensor, one marker per
    format family, the formats named on the top axis.

    Log scale; an exact round trip (error 0: the tensor is already stored in that format) is
    drawn hollow on the bottom edge. ``guide`` adds a dashed line falling 2x per bit.
    """
    plt = require("matplotlib.pyplot")
    Line2D = require("matplotlib.lines").Line2D
    if not stats:
        raise ConfigError("plot_error_vs_bits needs at least one ErrorStat")
    positive = [s.rel_rms for s in stats if s.rel_rms > 0]
    floor = min(positive) / 4 if positive else 1e-6
    fig, ax = plt.subplots(figsize=(7, 3.2))
    tensors = list(dict.fromkeys(s.tensor for s in stats))
    cmap = plt.get_cmap("tab10")
    handles = []
    for k, name in enumerate(tensors):
        colour = cmap(k % 10)
        jitter = 0.08 * (k - (len(tensors) - 1) / 2)  # tensors side by side at the same bits
        for s in stats:
            if s.tensor == name:
                exact = s.rel_rms == 0
                ax.plot(s.bits_per_weight + jitter, floor if exact else s.rel_rms, _marker(s.format),
                        color=colour, mfc="none" if exact else colour, ms=6 if exact else 5)
        handles.append(Line2D([], [], color=colour, marker="o", ls="", label=name))
    families = {_marker(s.format) for s in stats}
    for marker, label in (("o", "blocks of 32"), ("s", "K-quants"), ("^", "floats")):
        if marker in families and len(families) > 1:
            handles.append(Line2D([], [], color="0.4", marker=marker, ls="", label=label))
    if any(s.rel_rms == 0 for s in stats):
        handles.append(Line2D([], [], color="0.4", marker="o", mfc="none", ls="", label="exact: own format"))
    formats: dict[float, list[str]] = {}
    for s in stats:
        names = formats.setdefault(s.bits_per_weight, [])
        if s.format not in names:
            names.append(s.format)
    if guide and positive:
        b0 = min(s.bits_per_weight for s in stats if s.rel_rms > 0)
        y0 = max(s.rel_rms for s in stats if s.bits_per_weight == b0 and s.rel_rms > 0)
        bs = np.linspace(b0, max(formats), 50)
        ax.plot(bs, y0 * 2.0 ** -(bs - b0), "--", color="0.6", lw=1)
        handles.append(Line2D([], [], color="0.6", ls="--", label="2x less per bit"))
    ax.set_yscale("log")
    ax.set_ylim(floor / 2, max(positive, default=1.0) * 3)
    ax.set_xlabel("bits per weight (scales included)")
    ax.set_ylabel("RMS error / RMS weight")
    top = ax.secondary_xaxis("top")
    top.set_xticks(sorted(formats), ["/".join(formats[b]) for b in sorted(formats)], fontsize=7, rotation=90)
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        ax.set_title(title, fontsize=10, loc="left")
    fig.tight_layout()
    return fig


def plot_kernel_speed(seconds: Mapping[str, float], title: str = "time per matrix-vector product"):
    """Figure: horizontal bars of measured seconds per call (log scale), each labelled with its time
    and how many times faster it is than the slowest."""
    plt = require("matplotlib.pyplot")
    if not seconds or min(seconds.values()) <= 0:
        raise ConfigError("plot_kernel_speed needs positive times, one per implementation")
    names = list(seconds)
    times = np.array([seconds[n] for n in names], np.float64)
    slowest = times.max()
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(names) + 1.2))
    ax.barh(names[::-1], times[::-1], color="tab:blue")
    for y, (name, t) in enumerate(zip(names[::-1], times[::-1])):
        note = f"  {_format_seconds(t)}" + ("" if t == slowest else f"  ({slowest / t:,.0f}x faster)")
        ax.text(t, y, note, va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(times.min() / 3, slowest * 30)  # room for the labels right of the longest bar
    ax.set_xlabel("seconds per call (log scale)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def _format_seconds(t: float) -> str:
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.2f} ms"
    return f"{t * 1e6:.1f} us"


def quantisation_error_view(model, tensors: Sequence[str] | None = None, formats: Sequence[str] = LEGACY_FORMATS,
                            tensor: str | None = None, fmt: str = "all", max_rows: int | None = MAX_ROWS):
    """Widget: :func:`plot_error_histograms` of one tensor of ``model`` (a loaded model or GGUFFile),
    with a tensor picker and a format picker (one format, or ``"all"`` of ``formats``)."""
    widgets = require("ipywidgets")
    names = list(tensors) if tensors is not None else matrix_names(model)
    if not names:
        raise ConfigError("the model has no weight matrix to show")
    tensor = tensor or names[0]
    cache: dict[str, np.ndarray] = {}

    def weights_of(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = tensor_values(model, name, max_rows)
        return cache[name]

    def plot(tensor: str, fmt: str):
        x = weights_of(tensor)
        chosen = formats if fmt == "all" else (fmt,)
        usable = [f for f in chosen if fits(f, x.shape[-1])]
        if not usable:  # e.g. Q4_K on 576-wide rows: say so in the figure
            plt = require("matplotlib.pyplot")
            fig, ax = plt.subplots(figsize=(7, 1.2))
            ax.axis("off")
            ax.text(0.5, 0.5, f"{fmt} needs rows of a multiple of {BLOCK_GEOMETRY[_type(fmt)][0]} weights; "
                    f"{tensor} has {x.shape[-1]}", ha="center", va="center")
            return fig
        return plot_error_histograms(x, usable, title=tensor)

    controls = {
        "tensor": widgets.Dropdown(options=names, value=tensor, description="tensor"),
        "fmt": widgets.Dropdown(options=["all", *formats], value=fmt, description="format"),
    }
    return figure_view(plot, controls, title="Quantisation error")


__all__ = [
    "DEFAULT_FORMATS", "LEGACY_FORMATS", "MAX_ROWS", "QUANTIZE_TYPES", "ErrorStat", "error_stats", "error_table",
    "fits", "grid_steps", "matrix_names", "plot_error_histograms", "plot_error_vs_bits", "plot_kernel_speed",
    "quantisation_error_view", "quantisation_errors", "tensor_values",
]
