"""zigllama_lib.viz.anatomy: parameters and bytes per part and per block, against gguf-py's tensor table.

The oracle is llama.cpp's own GGUF reader (``gguf.GGUFReader``): its
``n_elements`` and ``n_bytes`` for every tensor, grouped here by a separate
name table, must give the same totals as ours, on SmolLM2 (Q4_1 + Q8_0, tied
embeddings) and Gemma 3 (Q4_K / Q5_0 / Q6_K / Q8_0, qk- and post-norms).
"""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from oracles import require_module  # noqa: E402

from zigllama_lib.foundation.errors import ConfigError, ZigLlamaError  # noqa: E402
from zigllama_lib.foundation.gguf import GGUFFile  # noqa: E402
from zigllama_lib.viz.anatomy import (  # noqa: E402
    PARTS,
    anatomy_table,
    anatomy_totals,
    anatomy_view,
    layer_of,
    part_of,
    plot_anatomy,
)

gguf_py = require_module("gguf")

# The oracle's grouping, written from the tensor names llama.cpp uses (llama-arch.cpp), not from part_of.
ORACLE_PART = [
    (r"token_embd\.weight", "embedding"),
    (r"output\.weight", "output"),
    (r"output_norm\.weight", "norms"),
    (r"blk\.\d+\.(attn_norm|ffn_norm|post_attention_norm|post_ffw_norm|attn_q_norm|attn_k_norm)\.weight", "norms"),
    (r"blk\.\d+\.attn_(q|k|v|output)\.(weight|bias)", "attention"),
    (r"blk\.\d+\.ffn_(gate|up|down)\.weight", "feed_forward"),
]


def oracle_part(name: str) -> str:
    for pattern, part in ORACLE_PART:
        if re.fullmatch(pattern, name):
            return part
    raise AssertionError(f"the oracle table does not know tensor {name!r}")


def oracle_tensors(path):
    """(name, n_elements, n_bytes) of every tensor, read by gguf-py."""
    reader = gguf_py.GGUFReader(str(path))
    return [(t.name, int(t.n_elements), int(t.n_bytes)) for t in reader.tensors]


@pytest.fixture(scope="module", params=["smollm", "gemma"])
def model_file(request, smollm_path, gemma_path):
    path = smollm_path if request.param == "smollm" else gemma_path
    return GGUFFile(path), oracle_tensors(path)


def test_table_matches_gguf_py_tensor_by_tensor(model_file):
    gguf, oracle = model_file
    ours = {r.name: (r.n_params, r.n_bytes) for r in anatomy_table(gguf)}
    assert ours == {name: (n, b) for name, n, b in oracle}


@pytest.mark.parametrize("measure", ["params", "bytes"])
def test_totals_per_part_match_gguf_py(model_file, measure):
    gguf, oracle = model_file
    expected = dict.fromkeys(PARTS, 0)
    for name, n, b in oracle:
        expected[oracle_part(name)] += n if measure == "params" else b
    assert anatomy_totals(gguf, measure, "part") == expected
    total = sum(n if measure == "params" else b for _, n, b in oracle)
    assert sum(anatomy_totals(gguf, measure, "part").values()) == total


@pytest.mark.parametrize("measure", ["params", "bytes"])
def test_totals_per_layer_match_gguf_py(model_file, measure):
    gguf, oracle = model_file
    expected: dict[int, dict[str, int]] = {}
    for name, n, b in oracle:
        m = re.match(r"blk\.(\d+)\.", name)
        if m:
            parts = expected.setdefault(int(m.group(1)), {})
            parts[oracle_part(name)] = parts.get(oracle_part(name), 0) + (n if measure == "params" else b)
    per_layer = anatomy_totals(gguf, measure, "layer")
    assert per_layer == expected
    arch = gguf.metadata["general.architecture"]
    assert list(per_layer) == list(range(gguf.metadata[f"{arch}.block_count"]))


def test_params_agree_with_decoder_and_the_formulas(smollm):
    """SmolLM2 by hand: every count from d_model, heads, head_dim, d_ff, n_vocab."""
    s = smollm.spec
    d, hd = s.d_model, s.head_dim_k
    totals = anatomy_totals(smollm, "params", "part")
    assert totals == smollm.decoder.parameter_counts()
    attention_block = d * (s.n_head * hd) + 2 * d * (s.n_kv_head * hd) + (s.n_head * hd) * d  # Wq, Wk, Wv, Wo
    assert attention_block == 576 * 576 * 2 + 2 * 576 * 192
    assert totals["attention"] == s.n_layer * attention_block
    assert totals["feed_forward"] == s.n_layer * 3 * d * s.d_ff  # gate, up, down
    assert totals["norms"] == (2 * s.n_layer + 1) * d  # two per block + the final norm
    assert totals["embedding"] == s.n_vocab * d
    assert totals["output"] == 0 and smollm.decoder.tied_embeddings


def test_bytes_follow_the_block_sizes(smollm):
    """Q4_1: 20 bytes per 32 weights; Q8_0: 34 bytes per 32; F32: 4 bytes a weight."""
    size = {"Q4_1": (32, 20), "Q8_0": (32, 34), "F32": (1, 4)}
    for r in anatomy_table(smollm):
        block, type_size = size[r.ggml_type]
        assert r.n_bytes * block == r.n_params * type_size, r.name


def test_names():
    assert part_of("token_embd.weight") == "embedding"
    assert part_of("output.weight") == "output"
    assert part_of("output_norm.weight") == "norms"
    assert part_of("blk.0.attn_k_norm.weight") == "norms"
    assert part_of("blk.7.attn_output.weight") == "attention"
    assert part_of("blk.7.ffn_down.weight") == "feed_forward"
    assert part_of("rope_freqs.weight") == "other"
    assert layer_of("blk.12.ffn_up.weight") == 12
    assert layer_of("output_norm.weight") is None


def test_bad_choices_are_config_errors(smollm):
    with pytest.raises(ConfigError, match="measure"):
        anatomy_totals(smollm, "flops")
    with pytest.raises(ZigLlamaError, match="by must be"):
        plot_anatomy(smollm, by="head")


def test_plot_by_part(smollm):
    fig = plot_anatomy(smollm, "bytes", "part")
    try:
        (ax,) = fig.axes
        fig.canvas.draw()  # the categorical tick labels exist once drawn
        bars = ax.patches
        assert len(bars) == len(PARTS)
        widths = {lab.get_text(): bar.get_width() for lab, bar in zip(ax.get_yticklabels(), bars)}
        expected = anatomy_totals(smollm, "bytes", "part")
        assert widths == pytest.approx({p: v / 1e6 for p, v in expected.items()})
        texts = " ".join(t.get_text() for t in ax.texts)
        assert "tied" in texts and "bits/weight" in texts
    finally:
        plt.close(fig)


def test_plot_by_layer(smollm):
    fig = plot_anatomy(smollm, "params", "layer")
    try:
        (ax,) = fig.axes
        assert len(ax.patches) == 3 * smollm.spec.n_layer  # attention, feed-forward, norms stacked per block
        tops = {}
        for bar in ax.patches:
            x = round(bar.get_x() + bar.get_width() / 2)
            tops[x] = max(tops.get(x, 0.0), bar.get_y() + bar.get_height())
        per_layer = anatomy_totals(smollm, "params", "layer")
        assert tops == pytest.approx({i: sum(p.values()) / 1e6 for i, p in per_layer.items()})
        assert f"{smollm.spec.n_layer} blocks" in ax.get_title()
    finally:
        plt.close(fig)


def test_view_has_pickers_and_redraws(smollm):
    widgets = pytest.importorskip("ipywidgets")
    view = anatomy_view(smollm)
    assert isinstance(view, widgets.VBox)
    pickers = [w for w in view.children[1].children if isinstance(w, widgets.ToggleButtons)]
    assert [p.options for p in pickers] == [("params", "bytes"), ("part", "layer")]
    pickers[0].value = "bytes"  # redraws without error
    pickers[1].value = "layer"
    plt.close("all")
