"""Model anatomy: where a model's parameters and bytes go, read from its GGUF tensor table.

Every weight of a decoder-only transformer belongs to one of five parts,
named by its GGUF tensor name (the same grouping as
``Decoder.parameter_counts``)::

    token_embd.weight                      embedding     (n_vocab, d_model)
    blk.N.attn_q / _k / _v / _output       attention     per block
    blk.N.ffn_gate / _up / _down           feed_forward  per block
    *norm*  (blk.N.attn_norm, output_norm)  norms        vectors of d_model
    output.weight                          output        (n_vocab, d_model); absent when
                                                         the embedding is tied (reused)

A tensor of ``n`` parameters stored in a ggml type of ``type_size`` bytes per
block of ``block_size`` weights takes ``n / block_size * type_size`` bytes:
4.5 bits a weight for Q4_0, 5 for Q4_1, 8.5 for Q8_0, 32 for F32.

* :func:`anatomy_table`: one :class:`TensorPart` row per tensor;
* :func:`anatomy_totals`: sums per part, or per block and part;
* :func:`plot_anatomy`: bars of either; :func:`anatomy_view`: the same with pickers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

from ..foundation.errors import ConfigError
from ._widgets import figure_view, require

PARTS = ("embedding", "attention", "feed_forward", "norms", "output")
MEASURES = ("params", "bytes")
GROUPINGS = ("part", "layer")
_COLOURS = {"embedding": "tab:purple", "attention": "tab:blue", "feed_forward": "tab:orange",
            "norms": "tab:green", "output": "tab:red", "other": "tab:gray"}
_BLOCK = re.compile(r"blk\.(\d+)\.")


@dataclass(frozen=True)
class TensorPart:
    """One tensor of the GGUF table: which part and block it belongs to, and its size."""

    name: str
    part: str  # one of PARTS, or "other" (e.g. rope_freqs)
    layer: int | None  # block index, None outside the blocks
    n_params: int
    n_bytes: int
    ggml_type: str


def part_of(name: str) -> str:
    """The part a GGUF tensor name belongs to (``Decoder.parameter_counts``' grouping).

    Examples: ``part_of("blk.3.attn_k.weight")`` -> ``"attention"``,
    ``part_of("output_norm.weight")`` -> ``"norms"``.
    """
    if name.startswith("token_embd"):
        return "embedding"
    if name.startswith("output."):
        return "output"
    if "norm" in name:
        return "norms"
    if ".attn_" in name:
        return "attention"
    if ".ffn_" in name:
        return "feed_forward"
    return "other"


def layer_of(name: str) -> int | None:
    """The block index in a tensor name. Example: ``layer_of("blk.12.ffn_up.weight")`` -> ``12``."""
    m = _BLOCK.match(name)
    return int(m.group(1)) if m else None


def _gguf_of(model):
    """The GGUFFile of a loaded model (``model.gguf``), or ``model`` itself if it is one."""
    return getattr(model, "gguf", model)


def anatomy_table(model) -> list[TensorPart]:
    """One row per tensor of ``model`` (a loaded model or a GGUFFile), in file order."""
    rows = []
    for name, info in _gguf_of(model).tensors.items():
        rows.append(TensorPart(name, part_of(name), layer_of(name), int(info.n_elements), int(info.n_bytes),
                               info.ggml_type.name))
    return rows


def _check(measure: str, by: str) -> None:
    if measure not in MEASURES:
        raise ConfigError(f"measure must be one of {MEASURES}, got {measure!r}")
    if by not in GROUPINGS:
        raise ConfigError(f"by must be one of {GROUPINGS}, got {by!r}")


def anatomy_totals(model, measure: str = "params", by: str = "part") -> dict:
    """Parameters or bytes summed per part, or per block and part.

    ``by="part"``: ``{part: total}`` for every part in :data:`PARTS` (0 when
    absent, e.g. a tied ``output``) plus ``"other"`` if any tensor is unclaimed.
    ``by="layer"``: ``{layer: {part: total}}`` over the blocks only (their
    attention, feed-forward and norm tensors).
    """
    _check(measure, by)
    rows = anatomy_table(model)
    size = (lambda r: r.n_params) if measure == "params" else (lambda r: r.n_bytes)
    if by == "part":
        totals = dict.fromkeys(PARTS, 0)
        for r in rows:
            totals[r.part] = totals.get(r.part, 0) + size(r)
        return totals
    per_layer: dict[int, dict[str, int]] = {}
    for r in rows:
        if r.layer is not None:
            parts = per_layer.setdefault(r.layer, {})
            parts[r.part] = parts.get(r.part, 0) + size(r)
    return dict(sorted(per_layer.items()))


def _format(value: float, measure: str) -> str:
    return f"{value / 1e6:.2f} M" if measure == "params" else f"{value / 1e6:.2f} MB"


def plot_anatomy(model, measure: str = "params", by: str = "part"):
    """Figure: where the parameters (or bytes) of ``model`` are.

    ``by="part"``: one horizontal bar per part, labelled with its total and
    share (and bits per weight when ``measure="bytes"``); a tied output head
    is marked. ``by="layer"``: one stacked bar per block (attention,
    feed-forward, norms); the embedding and output are named in the title.
    """
    plt = require("matplotlib.pyplot")
    _check(measure, by)
    totals = anatomy_totals(model, measure, "part")
    grand = sum(totals.values())
    unit = "parameters (millions)" if measure == "params" else "bytes (MB)"
    fig, ax = plt.subplots(figsize=(7, 3))
    if by == "part":
        params = anatomy_totals(model, "params", "part")
        names = list(totals)
        values = [totals[p] for p in names]
        ax.barh(names[::-1], [v / 1e6 for v in values[::-1]], color=[_COLOURS[p] for p in names[::-1]])
        for y, p in enumerate(names[::-1]):
            v = totals[p]
            note = f"{_format(v, measure)} ({v / grand:.1%})"
            if measure == "bytes" and params[p]:
                note += f", {8 * v / params[p]:.2f} bits/weight"
            if p == "output" and v == 0 and totals["embedding"]:
                note = "0: tied, reuses token_embd"
            ax.text(v / 1e6, y, "  " + note, va="center", fontsize=8)
        ax.set_xlim(0, (1.45 if measure == "params" else 1.75) * max(values) / 1e6)
        ax.set_xlabel(unit)
        ax.set_title(f"{_format(grand, measure)} in total, by part", fontsize=10)
    else:
        per_layer = anatomy_totals(model, measure, "layer")
        layers = list(per_layer)
        bottom = [0.0] * len(layers)
        for p in ("attention", "feed_forward", "norms"):
            h = [per_layer[i].get(p, 0) / 1e6 for i in layers]
            ax.bar(layers, h, bottom=bottom, color=_COLOURS[p], label=p, width=0.8)
            bottom = [b + x for b, x in zip(bottom, h)]
        ax.xaxis.set_major_locator(require("matplotlib.ticker").MaxNLocator(integer=True))
        ax.set_xlabel("block")
        ax.set_ylabel(unit)
        ax.set_ylim(0, 1.3 * max(bottom, default=1))
        ax.legend(fontsize=8, loc="upper center", ncol=3, framealpha=0.9)
        in_blocks = sum(sum(parts.values()) for parts in per_layer.values())
        outside = ", ".join(f"{p} {_format(totals[p], measure)}" for p in ("embedding", "output") if totals[p])
        if totals["embedding"] and not totals["output"]:
            outside += ", output tied"
        ax.set_title(f"{len(layers)} blocks, {_format(in_blocks, measure)} (not shown: {outside})", fontsize=10)
    fig.tight_layout()
    return fig


def anatomy_view(model, measure: str = "params", by: str = "part"):
    """Widget: :func:`plot_anatomy` with pickers for the measure (params/bytes) and grouping (part/layer)."""
    widgets = require("ipywidgets")
    controls = {
        "measure": widgets.ToggleButtons(options=MEASURES, value=measure, description="measure"),
        "by": widgets.ToggleButtons(options=GROUPINGS, value=by, description="per"),
    }
    return figure_view(partial(plot_anatomy, model), controls, title="Model anatomy")
