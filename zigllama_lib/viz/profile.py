"""Profile pictures: where a forward pass spends its time, and how far each product is from the machine's roofs.

Both take the dict of :func:`zigllama_lib.inference.profile.run` (or its JSON).

* :func:`plot_roofline`: each matrix-product kind as a point (arithmetic
  intensity ``I`` = FLOPs / weight bytes, achieved GFLOP/s), decode and
  prefill, log-log, under the two roofs of the machine::

      attainable FLOP/s = min(bandwidth * I, peak FLOP/s)

  A point far below its roof wastes the machine: the decode points sit at
  ``I`` ~ 2-3 FLOP/B, where only bandwidth should limit them.
* :func:`plot_step_breakdown`: milliseconds per operation of one decode step
  or one prefill (``other`` = Python glue), with its share of the step;
* :func:`profile_view`: the breakdown under a decode / prefill picker.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from ..foundation.errors import ConfigError
from ._widgets import figure_view, require

_PHASES = ("decode", "prefill")
_MARKERS = {"decode": "o", "prefill": "s"}


def _check_phase(phase: str) -> None:
    if phase not in _PHASES:
        raise ConfigError(f"phase must be one of {_PHASES}, got {phase!r}")


def plot_roofline(result: dict):
    """Figure: the decode and prefill products on a log-log roofline (bandwidth and dot-product roofs)."""
    plt = require("matplotlib.pyplot")
    n = str(result["n_threads"])
    bandwidth = result["machine"]["bandwidth_b_s"][n]  # B/s
    peak = result["machine"]["dot_flop_s"][n]  # FLOP/s
    rows = {phase: result[f"{phase}_matmuls"] for phase in _PHASES}
    intensities = [r["flop_per_byte"] for rs in rows.values() for r in rs]
    x = np.geomspace(min(intensities) / 3, max(intensities) * 3, 200)  # FLOP/B
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(x, np.minimum(bandwidth * x, peak) / 1e9, color="black", linewidth=1.5,
            label=f"roof: {bandwidth / 1e9:.0f} GB/s, {peak / 1e9:.0f} GFLOP/s ({n} thr.)")
    colours = plt.get_cmap("tab10")
    kinds = [r["kind"] for r in rows["decode"]]
    for phase, rs in rows.items():
        for r in rs:
            ax.scatter(r["flop_per_byte"], r["gflop_s"], marker=_MARKERS[phase], s=36, zorder=3,
                       color=colours(kinds.index(r["kind"])), edgecolor="black", linewidth=0.4,
                       label=r["kind"] if phase == "decode" else None)
    for phase, marker in _MARKERS.items():
        ax.scatter([], [], marker=marker, color="white", edgecolor="black", label=phase)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per weight byte)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title(f"matrix products vs the machine, numerics {result['numerics']}")
    ax.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def plot_step_breakdown(result: dict, phase: str = "decode"):
    """Figure: milliseconds per operation of one ``phase`` pass (horizontal bars), share of the step annotated."""
    _check_phase(phase)
    plt = require("matplotlib.pyplot")
    step = result[phase]
    ops = step["ops"]
    names = [r["op"] for r in ops]
    ms = np.array([r["seconds"] for r in ops]) * 1e3
    fig, ax = plt.subplots(figsize=(7, 3.5))
    y = np.arange(len(ops))
    colours = ["#888888" if name == "other" else "tab:blue" for name in names]
    ax.barh(y, ms, color=colours)
    for yi, m, r in zip(y, ms, ops):
        ax.text(m, yi, f" {100 * r['share']:.0f}%", va="center", fontsize=6)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms (median over reps)")
    ax.set_xlim(0, ms.max() * 1.15)
    ax.set_title(f"{phase}: {step['n_tok']} token(s), {step['total_s'] * 1e3:.1f} ms, "
                 f"numerics {step['numerics']}, {step['n_threads']} thr.", fontsize=9)
    fig.tight_layout()
    return fig


def profile_view(result: dict):
    """Widget: :func:`plot_step_breakdown` under a decode / prefill picker."""
    widgets = require("ipywidgets")
    phase = widgets.ToggleButtons(options=list(_PHASES), value="decode", description="pass")
    return figure_view(partial(plot_step_breakdown, result), {"phase": phase}, title="time per operation")


__all__ = ["plot_roofline", "plot_step_breakdown", "profile_view"]
