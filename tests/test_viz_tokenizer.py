"""zigllama_lib.viz.tokenizer: the merge trace and token pictures, against the tokenizer itself and llama.cpp.

Oracles: ``model.tokenizer.encode`` (itself checked against llama.cpp in
test_tokenizer.py) for the tokens a trace ends with; the BPE rule checked
step by step (each merge joins the adjacent pair of lowest rank, leftmost on
ties, and the loop stops when no pair has a rank); llama.cpp's vocab-only
tokenizer for the ids :func:`plot_tokens` draws; labels by hand.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from zigllama_lib.foundation.errors import TokenizerError  # noqa: E402
from zigllama_lib.foundation.gguf import GGUFFile  # noqa: E402
from zigllama_lib.models.tokenizer import Tokenizer, bytes_to_symbols  # noqa: E402
from zigllama_lib.viz.tokenizer import (  # noqa: E402
    merge_trace,
    piece_label,
    plot_merge_steps,
    plot_tokenization,
    plot_tokens,
    tokenizer_view,
)

TEXTS = [
    "tokenization",
    " Hello, world!",
    "1234567",
    "I'm sure they'll say naïve café",
    "東京 and Ελληνικά",
    "emoji 🦙🙂 end",
    "line one\n\n\tline two   ",
]


@pytest.fixture(scope="module")
def tok(smollm):
    return smollm.tokenizer


def ranked_pairs(parts: list[bytes], ranks) -> list[tuple[int, int]]:
    """(rank, index) of every adjacent pair of ``parts`` that has a merge rank."""
    out = []
    for i in range(len(parts) - 1):
        r = ranks.get((bytes_to_symbols(parts[i]), bytes_to_symbols(parts[i + 1])))
        if r is not None:
            out.append((r, i))
    return out


@pytest.mark.parametrize("text", TEXTS)
def test_trace_ends_in_the_tokens_of_encode(tok, text):
    traces = merge_trace(tok, text)
    assert "".join(t.word for t in traces) == text
    ids = [tok.vocab.token_to_id[bytes_to_symbols(p)] for t in traces for p in t.tokens]
    assert ids == tok.encode(text, add_special=False)


@pytest.mark.parametrize("text", TEXTS)
def test_every_step_is_the_lowest_rank_merge(tok, text):
    for t in merge_trace(tok, text):
        data = t.word.encode("utf-8")
        assert t.steps[0] == [bytes([b]) for b in data]  # one part per byte to start
        assert len(t.ranks) == len(t.at) == len(t.steps) - 1
        for before, after, rank, at in zip(t.steps, t.steps[1:], t.ranks, t.at):
            assert b"".join(after) == data
            candidates = ranked_pairs(before, tok.ranks)
            assert (rank, at) == min(candidates), "not the lowest-rank (then leftmost) pair"
            assert after == before[:at] + [before[at] + before[at + 1]] + before[at + 2:]
        assert ranked_pairs(t.tokens, tok.ranks) == [], "the loop stopped while a pair still had a rank"


def test_digits_never_merge(tok):
    traces = merge_trace(tok, "1234567")
    assert [t.word for t in traces] == list("1234567")
    assert all(t.ranks == [] for t in traces)


def test_trace_needs_byte_level_bpe(gemma_path):
    spm = Tokenizer.from_metadata(GGUFFile(gemma_path).metadata)
    with pytest.raises(TokenizerError, match="byte-level BPE"):
        merge_trace(spm, "hello")


def test_piece_labels_by_hand():
    assert piece_label(b" hi") == "␣hi"
    assert piece_label(b"a\nb\tc") == "a↵b⇥c"
    assert piece_label(b" \xf0\x9f") == "␣<F0 9F>"  # a space and half an emoji
    assert piece_label(b"\xa6") == "<A6>"
    assert piece_label("🦙".encode()) == "U+1F999"  # not in the monospace font
    assert piece_label("naïve".encode()) == "naïve"
    assert piece_label(b"\xc3\xa9\xff") == "é<FF>"
    assert piece_label(b"") == ""


def rectangles(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_plot_tokens_draws_the_ids_of_encode(tok, llama_cpp, smollm_path):
    text = "Tokens of 1234567, naïve 🦙s\nand 東京"
    fig = plot_tokens(tok, text)
    try:
        (ax,) = fig.axes
        ids = tok.encode(text, add_special=False)
        assert len(rectangles(ax)) == len(ids)
        drawn = [t.get_text() for t in ax.texts]
        assert drawn[1::2] == [str(i) for i in ids]  # label, id, label, id ...
        assert drawn[0::2] == [piece_label(tok.token_bytes(i)) for i in ids]
        assert f"{len(ids)} tokens" in ax.get_title()
    finally:
        plt.close(fig)
    llm = llama_cpp.Llama(model_path=str(smollm_path), vocab_only=True, verbose=False)
    try:
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) == ids
    finally:
        llm.close()


def test_plot_merge_steps(tok):
    text = " tokenization 42"
    fig = plot_merge_steps(tok, text)
    try:
        ax, colorbar = fig.axes
        traces = merge_trace(tok, text)
        n_rows = max(len(t.steps) for t in traces)
        # every row shows every word: its parts at that step, or its tokens once finished
        n_boxes = sum(len(t.steps[min(r, len(t.steps) - 1)]) for t in traces for r in range(n_rows))
        assert len(rectangles(ax)) == n_boxes
        assert [t.get_text() for t in ax.get_yticklabels()][0] == "bytes"
        assert [t.get_text() for t in ax.get_yticklabels()][-1] == "tokens"
        assert "merge rank" in colorbar.get_ylabel()
    finally:
        plt.close(fig)


def test_plot_tokenization_truncates_long_text(tok):
    fig = plot_tokenization(tok, "é" * 40, max_bytes=21)  # 2 bytes a character: 10 fit
    try:
        steps_ax, tokens_ax = fig.axes[:2]
        assert "first 20 bytes" in steps_ax.get_title()
        ids = tok.encode("é" * 10, add_special=False)
        assert len(rectangles(tokens_ax)) == len(ids)
    finally:
        plt.close(fig)


def test_view_redraws_on_new_text(tok):
    widgets = pytest.importorskip("ipywidgets")
    view = tokenizer_view(tok, "hello")
    boxes = [w for w in view.children[1].children if isinstance(w, widgets.Text)]
    assert len(boxes) == 1 and boxes[0].value == "hello"
    boxes[0].value = "1234567 🦙"  # redraws without error
    plt.close("all")
