"""Property tests (hypothesis) where an invariant exists: GGUF writer/reader round trips (our
reader and gguf-py agree), quantise/dequantise error bounds per format, samplers keep only
candidates of the kept set, the server's body parser refuses instead of crashing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zigllama_lib.foundation.gguf import GGUFFile, GGUFValueType
from zigllama_lib.foundation.gguf_writer import GGUFWriter
from zigllama_lib.inference import sampling
from zigllama_lib.linear_algebra import legacy, quantize
from zigllama_lib.serve.errors import APIError
from zigllama_lib.serve.limits import parse_json_body

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

keys = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
scalars = st.one_of(st.integers(-(2**31), 2**31 - 1), st.booleans(),
                    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
                    st.lists(st.integers(0, 255), min_size=1, max_size=8),
                    st.lists(st.text(max_size=5, alphabet="abc\u00e9"), min_size=1, max_size=5))
shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)


@SETTINGS
@given(md=st.dictionaries(keys, scalars, max_size=6), tensors=st.lists(shapes, max_size=4),
       version=st.sampled_from([1, 2, 3]), alignment=st.sampled_from([32, 64, 128]))
def test_gguf_round_trip(tmp_path, md, tensors, version, alignment):
    md.pop("general.alignment", None)
    p = tmp_path / f"rt{version}.gguf"
    w = GGUFWriter(p, version=version, alignment=alignment)
    for k, v in md.items():
        w.add_metadata(k, v)
    arrays = {f"t{i}": np.arange(int(np.prod(s)), dtype=np.float32).reshape(s) for i, s in enumerate(tensors)}
    for name, a in arrays.items():
        w.add_tensor(name, a)
    w.write()
    g = GGUFFile(p)
    assert g.version == version and g.alignment == alignment
    for k, v in md.items():
        got = g.metadata[k]
        assert (list(got) if isinstance(got, np.ndarray) else got) == v, k
    for name, a in arrays.items():
        np.testing.assert_array_equal(g.tensor_data(name), a)
    if version >= 2:  # the oracle: llama.cpp's reader sees the same tensors
        gguf = pytest.importorskip("gguf")
        r = gguf.GGUFReader(p)
        assert {t.name: t.data.reshape(-1).tolist() for t in r.tensors} == \
               {n: a.reshape(-1).tolist() for n, a in arrays.items()}


blocks = st.integers(1, 4).flatmap(lambda n: st.lists(
    st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=32 * n, max_size=32 * n))


@pytest.mark.parametrize("fmt,levels", [("q8_0", 127), ("q4_0", 8), ("q5_0", 16), ("q4_1", 15), ("q5_1", 31)])
@SETTINGS
@given(values=blocks)
def test_quantise_dequantise_error_bound(fmt, levels, values):
    x = np.array(values, np.float32).reshape(-1, 32)
    q = getattr(quantize, f"quantize_blocks_{fmt}")(x)
    y = getattr(legacy, f"dequantize_blocks_{fmt}")(q).reshape(x.shape)
    if fmt.endswith("_1"):
        step = (x.max(axis=1) - x.min(axis=1)) / levels
    else:
        step = np.abs(x).max(axis=1) / levels
    # one quantisation step per value (rounding plus the f16 scale), and a little slack for f16 rounding
    bound = step[:, None] * 1.01 + np.abs(x).max(axis=1, keepdims=True) * 2e-3 + 1e-6
    assert np.all(np.abs(y - x) <= bound)


logits = st.lists(st.floats(-30, 30, allow_nan=False, width=32), min_size=1, max_size=50)


@SETTINGS
@given(z=logits, k=st.integers(1, 60), p=st.floats(0.01, 1.0), mp=st.floats(0.0, 1.0), seed=st.integers(0, 2**32))
def test_samplers_stay_in_the_kept_set(z, k, p, mp, seed):
    c = sampling.Candidates.from_logits(np.array(z, np.float32))
    for f, arg in ((sampling.top_k_filter, k), (sampling.top_p_filter, p), (sampling.min_p_filter, mp)):
        kept = f(c, arg)
        assert 1 <= len(kept) <= len(c)
        assert set(kept.ids.tolist()) <= set(c.ids.tolist())
        if f is sampling.top_k_filter:
            assert len(kept) == min(k, len(c))
            assert kept.logits.min() >= np.sort(c.logits)[::-1][len(kept) - 1]
        c2 = kept
    tok = sampling.draw(sampling.softmax(c2), np.random.default_rng(seed))
    assert tok in set(c2.ids.tolist())


@SETTINGS
@given(raw=st.one_of(st.binary(max_size=200),
                     st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                                  lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c,
                                                                                      max_size=3),
                                  max_leaves=20).map(lambda v: __import__("json").dumps(v).encode())))
def test_body_parser_accepts_objects_or_says_why(raw):
    try:
        body = parse_json_body(raw)
    except APIError as e:
        assert 400 <= e.status < 500 and e.message
        return
    assert isinstance(body, dict)


def test_deep_json_is_a_400_not_a_crash():
    with pytest.raises(APIError, match="nests"):
        parse_json_body(b"[" * 100000)
    with pytest.raises(APIError, match="digits"):
        parse_json_body(b'{"max_tokens": ' + b"9" * 5000 + b"}")
    with pytest.raises(APIError, match="NaN"):
        parse_json_body(b'{"temperature": NaN}')
