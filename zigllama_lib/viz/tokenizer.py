"""Tokenizer pictures: byte-level BPE merging a text step by step, and the tokens it ends with.

Byte-level BPE (``models/tokenizer.py``) cuts a text into words (the
pre-tokenizer), writes each word as bytes, then repeatedly joins the adjacent
pair of parts whose merge has the lowest rank (its line number in
``tokenizer.ggml.merges``) until no pair has a rank::

    " token" -> [" ", "t", "o", "k", "e", "n"]   bytes
             -> [" t", "o", "k", "e", "n"]       rank 0   (("Ġ", "t") is the first merge line)
             -> ...                              one merge per step
             -> [" token"]                       one token

* :func:`merge_trace` records that loop per word, with the rank of every merge;
* :func:`plot_merge_steps` draws it: one row per step, every word side by side,
  the piece each merge creates coloured by its rank;
* :func:`plot_tokens` draws the final tokens as coloured pieces with their ids;
* :func:`plot_tokenization` stacks the two, and :func:`tokenizer_view` puts a
  text box above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial

from ..foundation.errors import TokenizerError
from ..models.tokenizer import bytes_to_symbols
from ._widgets import figure_view, require

_MONO = "DejaVu Sans Mono"  # ships with matplotlib, so labels look the same everywhere
_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}
_PIECE_COLOURS = ("#cfe2f3", "#fce5cd", "#d9ead3", "#ead1dc", "#fff2cc", "#d0e0e3")


@dataclass(frozen=True)
class WordTrace:
    """One pre-token word merged step by step.

    ``steps[0]`` holds the word's bytes, ``steps[k]`` the parts after ``k``
    merges. Merge ``k`` (0-based) joined ``steps[k][at[k]]`` and
    ``steps[k][at[k] + 1]`` into ``steps[k + 1][at[k]]``; its rank is
    ``ranks[k]`` (``None`` for a word taken whole by ``ignore_merges``).
    """

    word: str
    steps: list[list[bytes]]  # (n_merges + 1,) lists of parts
    ranks: list[int | None]  # (n_merges,)
    at: list[int]  # (n_merges,) index of the new part in the step after the merge

    @property
    def tokens(self) -> list[bytes]:
        """The word's final parts: its tokens, as bytes."""
        return self.steps[-1]


def merge_trace(tokenizer, text: str) -> list[WordTrace]:
    """The BPE merge loop of ``text``, word by word, with the rank of each merge.

    Uses ``tokenizer.merge_steps`` (the library's own loop) and finds, between
    two consecutive steps, the one pair that was joined and its rank in
    ``tokenizer.ranks``. Example (SmolLM2): ``merge_trace(tok, " hi")[0].steps``
    -> ``[[b" ", b"h", b"i"], [b" h", b"i"], [b" hi"]]``, ``ranks`` ``[42, 15624]``.
    """
    if not hasattr(tokenizer, "ranks"):
        raise TokenizerError(f"merge traces need a byte-level BPE tokenizer (tokenizer.ggml.model 'gpt2'), "
                             f"this one is {getattr(tokenizer, 'model', '?')!r}")
    traces = []
    for word, steps in zip(tokenizer.pre_tokenize(text), tokenizer.merge_steps(text)):
        ranks: list[int | None] = []
        at: list[int] = []
        for before, after in zip(steps, steps[1:]):
            i = _first_difference(before, after)
            if len(before) - len(after) == 1 and before[i] + before[i + 1] == after[i]:
                pair = (bytes_to_symbols(before[i]), bytes_to_symbols(before[i + 1]))
                ranks.append(tokenizer.ranks[pair])
            else:  # ignore_merges: the whole word is one token, no merge happened
                i = 0
                ranks.append(None)
            at.append(i)
        traces.append(WordTrace(word, steps, ranks, at))
    return traces


def _first_difference(a: list[bytes], b: list[bytes]) -> int:
    """The first index where the part lists ``a`` and ``b`` differ."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


@lru_cache(maxsize=1)
def _mono_font():
    from matplotlib.font_manager import FontProperties, findfont, get_font

    return get_font(findfont(FontProperties(family=_MONO)))


def piece_label(piece: bytes) -> str:
    """A printable label for a token's bytes.

    Whitespace becomes a visible sign (space ``␣``, newline ``↵``, tab ``⇥``),
    bytes that are not whole UTF-8 characters become hex in angle brackets,
    and characters the monospace font cannot draw become ``U+XXXX``.
    Examples: ``piece_label(b" hi")`` -> ``"␣hi"``, ``piece_label(b" \\xf0\\x9f")``
    -> ``"␣<F0 9F>"``, ``piece_label("🦙".encode())`` -> ``"U+1F999"``.
    """
    font = _mono_font()
    out: list[str] = []
    stray: list[int] = []  # bytes that are not part of a whole character, waiting to be shown as hex
    i = 0
    while i < len(piece):
        c = _char_at(piece, i)
        if c is None:
            stray.append(piece[i])
            i += 1
            continue
        if stray:
            out.append("<" + " ".join(f"{b:02X}" for b in stray) + ">")
            stray = []
        if c in _VISIBLE:
            out.append(_VISIBLE[c])
        elif not c.isprintable() or font.get_char_index(ord(c)) == 0:
            out.append(f"U+{ord(c):04X}")
        else:
            out.append(c)
        i += len(c.encode("utf-8"))
    if stray:
        out.append("<" + " ".join(f"{b:02X}" for b in stray) + ">")
    return "".join(out)


def _char_at(data: bytes, i: int) -> str | None:
    """The whole UTF-8 character starting at byte ``i`` of ``data``, or None."""
    for n in (1, 2, 3, 4):
        try:
            c = data[i:i + n].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return c if len(c) == 1 else None
    return None


def _fontsize(label: str, width: float, points_per_unit: float, base: float = 9.0) -> float:
    """The font size (at most ``base``) at which ``label`` fits ``width`` x-units (monospace: 0.6 em a character)."""
    return max(3.5, min(base, 0.9 * width * points_per_unit / (0.6 * max(1, len(label)))))


def _points_per_unit(ax, x_range: float) -> float:
    """How many points one x-unit of ``ax`` spans (from the axes' width in the figure)."""
    return ax.get_position().width * ax.figure.get_figwidth() * 72 / max(x_range, 1e-9)


# -- merge steps -------------------------------------------------------------------

def _draw_merge_steps(ax, traces: list[WordTrace], n_merges: int) -> None:
    """Rows = steps (bytes at the top), x = bytes of the text; new pieces coloured by rank."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    n_rows = max((len(t.steps) for t in traces), default=1)
    norm = LogNorm(vmin=1, vmax=max(2, n_merges))
    cmap = colormaps["viridis_r"]
    x_range = sum(len(t.word.encode("utf-8", "surrogatepass")) for t in traces) + 0.4 * max(0, len(traces) - 1)
    ppu = 0.9 * _points_per_unit(ax, x_range + 0.2)  # 0.9: room for the colour bar
    x0 = 0.0
    for t in traces:
        for row in range(n_rows):
            k = min(row, len(t.steps) - 1)  # a finished word keeps its tokens
            new = t.at[k - 1] if 0 < row < len(t.steps) else None
            rank = t.ranks[k - 1] if new is not None else None
            x = x0
            for j, part in enumerate(t.steps[k]):
                w = len(part)
                if j == new and rank is not None:
                    face, ink = cmap(norm(rank + 1)), "white" if norm(rank + 1) > 0.45 else "black"
                elif row == n_rows - 1:
                    face, ink = "#cfe2f3", "black"
                else:
                    face, ink = "#f2f2f2", "black"
                ax.add_patch(Rectangle((x + 0.04, row + 0.08), w - 0.08, 0.84, facecolor=face,
                                       edgecolor="#555555", linewidth=0.6))
                label = piece_label(part)
                ax.text(x + w / 2, row + 0.5, label, ha="center", va="center", family=_MONO,
                        fontsize=_fontsize(label, w, ppu), color=ink)
                x += w
        x0 = x + 0.4  # a gap between words: merges never cross it
    ax.set_xlim(-0.2, max(x0 - 0.2, 1))
    ax.set_ylim(n_rows, 0)
    ax.set_yticks([r + 0.5 for r in range(n_rows)],
                  ["bytes"] + [f"merge {r}" for r in range(1, n_rows - 1)] + (["tokens"] if n_rows > 1 else []))
    ax.tick_params(axis="y", labelsize=7, length=0)
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    cb = ax.figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.03, pad=0.01)
    cb.set_label("merge rank + 1", fontsize=7)
    cb.ax.tick_params(labelsize=6)


def plot_merge_steps(tokenizer, text: str):
    """Figure: the BPE merges of ``text``, one row per step, all words side by side.

    Row 0 shows each word's bytes; row ``k`` the parts after ``k`` merges (a
    word that has finished keeps its tokens); the piece each merge creates is
    coloured by its rank (dark: a late, rare merge). Gaps separate the
    pre-tokenizer's words, which never merge across.
    """
    plt = require("matplotlib.pyplot")
    traces = merge_trace(tokenizer, text)
    n_rows = max((len(t.steps) for t in traces), default=1)
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.26 * n_rows))
    _draw_merge_steps(ax, traces, len(tokenizer.ranks))
    n_merges = sum(len(t.ranks) for t in traces)
    ax.set_title(f"{text!r}: {len(traces)} words, {n_merges} merges", fontsize=9)
    fig.tight_layout()
    return fig


# -- tokens ----------------------------------------------------------------------

def _token_layout(labels: list[str], ids: list[int], line_chars: int) -> list[tuple[int, float, float]]:
    """(line, x, width) of each token box, wrapping at ``line_chars`` character cells."""
    layout, line, x = [], 0, 0.0
    for label, tid in zip(labels, ids):
        w = max(len(label), 0.7 * len(str(tid))) + 0.6
        if x > 0 and x + w > line_chars:
            line, x = line + 1, 0.0
        layout.append((line, x, w))
        x += w
    return layout


def _draw_tokens(ax, tokenizer, text: str, line_chars: int) -> list[int]:
    """Coloured boxes, one per token of ``text``, with the token id underneath; returns the ids."""
    from matplotlib.patches import Rectangle

    ids = tokenizer.encode(text, add_special=False)
    labels = [piece_label(tokenizer.token_bytes(i)) for i in ids]
    layout = _token_layout(labels, ids, line_chars)
    ppu = _points_per_unit(ax, line_chars)
    for n, ((line, x, w), label, tid) in enumerate(zip(layout, labels, ids)):
        y = 1.6 * line
        ax.add_patch(Rectangle((x + 0.05, y + 0.05), w - 0.1, 0.9, facecolor=_PIECE_COLOURS[n % len(_PIECE_COLOURS)],
                               edgecolor="#555555", linewidth=0.6))
        ax.text(x + w / 2, y + 0.5, label, ha="center", va="center", family=_MONO, fontsize=_fontsize(label, w - 0.2, ppu))
        ax.text(x + w / 2, y + 1.2, str(tid), ha="center", va="center", family=_MONO,
                fontsize=min(6.0, _fontsize(str(tid), w, ppu)), color="#444444")
    n_lines = (layout[-1][0] + 1) if layout else 1
    ax.set_xlim(0, line_chars)
    ax.set_ylim(1.6 * n_lines, -0.1)
    ax.axis("off")
    return ids


def plot_tokens(tokenizer, text: str, line_chars: int = 64):
    """Figure: ``text`` cut into its tokens, each a coloured box with its id underneath.

    Labels follow :func:`piece_label` (``␣`` for a space, ``<F0 9F>`` for bytes
    that are only part of a character). The boxes are exactly
    ``tokenizer.encode(text, add_special=False)``.
    """
    plt = require("matplotlib.pyplot")
    ids = tokenizer.encode(text, add_special=False)
    labels = [piece_label(tokenizer.token_bytes(i)) for i in ids]
    layout = _token_layout(labels, ids, line_chars)
    n_lines = (layout[-1][0] + 1) if layout else 1
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.45 * n_lines))
    _draw_tokens(ax, tokenizer, text, line_chars)
    n_bytes = len(text.encode("utf-8", "surrogatepass"))
    ax.set_title(f"{len(ids)} tokens for {len(text)} characters ({n_bytes} bytes)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_tokenization(tokenizer, text: str, max_bytes: int = 60, line_chars: int = 64):
    """Figure: :func:`plot_merge_steps` above :func:`plot_tokens`, for the first ``max_bytes`` bytes of ``text``."""
    plt = require("matplotlib.pyplot")
    shown = _truncate_utf8(text, max_bytes)
    traces = merge_trace(tokenizer, shown)
    n_rows = max((len(t.steps) for t in traces), default=1)
    ids = tokenizer.encode(shown, add_special=False)
    labels = [piece_label(tokenizer.token_bytes(i)) for i in ids]
    layout = _token_layout(labels, ids, line_chars)
    n_lines = (layout[-1][0] + 1) if layout else 1
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 1.3 + 0.26 * n_rows + 0.45 * n_lines),
                                      height_ratios=[0.26 * n_rows + 0.3, 0.45 * n_lines + 0.2])
    _draw_merge_steps(top, traces, len(tokenizer.ranks))
    n_merges = sum(len(t.ranks) for t in traces)
    cut = "" if shown == text else f" (first {len(shown.encode('utf-8', 'surrogatepass'))} bytes)"
    top.set_title(f"{len(traces)} words, {n_merges} merges{cut}", fontsize=9)
    _draw_tokens(bottom, tokenizer, shown, line_chars)
    bottom.set_title(f"{len(ids)} tokens", fontsize=9)
    fig.tight_layout()
    return fig


def _truncate_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` (whole characters) whose UTF-8 fits in ``max_bytes``."""
    n = 0
    for i, c in enumerate(text):
        n += len(c.encode("utf-8", "surrogatepass"))
        if n > max_bytes:
            return text[:i]
    return text


def tokenizer_view(tokenizer, text: str = "Tokenization of 1234567 naïve 🦙s"):
    """Widget: a text box above :func:`plot_tokenization` (press Enter to redraw)."""
    widgets = require("ipywidgets")
    box = widgets.Text(value=text, description="text", continuous_update=False,
                       layout=widgets.Layout(width="95%"))
    return figure_view(partial(plot_tokenization, tokenizer), {"text": box},
                       title="Byte-level BPE: the merges, then the tokens")
