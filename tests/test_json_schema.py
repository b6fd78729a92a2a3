"""JSON Schema -> GBNF: the language vs llama-cpp-python's converter, and sampled outputs validated by jsonschema."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zigllama_lib.foundation.gguf import GGUFFile
from zigllama_lib.inference.grammar import Grammar, GrammarMatcher, TokenTrie
from zigllama_lib.inference.json_schema import (SchemaError, int_range_gbnf, json_object_gbnf, json_schema_to_gbnf,
                                                regex_to_grammar)
from zigllama_lib.models.tokenizer import Tokenizer

SCHEMAS = {
    "object": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                                "age": {"type": "integer"}, "ok": {"type": "boolean"}},
               "required": ["name"]},
    "enum": {"enum": ["red", "green", 3, None]},
    "array": {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 12}, "minItems": 1,
              "maxItems": 3},
    "ref": {"type": "object", "properties": {"a": {"$ref": "#/$defs/pt"}, "b": {"$ref": "#/definitions/pt"}},
            "required": ["a"], "$defs": {"pt": {"type": "object", "properties": {"x": {"type": "number"}},
                                                 "required": ["x"]}},
            "definitions": {"pt": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}}},
    "format": {"type": "object", "properties": {"d": {"type": "string", "format": "date"},
                                                "id": {"type": "string", "format": "uuid"}}, "required": ["d", "id"]},
    "bounds": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 10, "maximum": 250},
                                                "s": {"type": "string", "pattern": "^[a-c]+x?$"}},
               "required": ["n", "s"]},
}

PROBES = {
    "object": ['{"name": "ab"}', '{"name":"a","age":-3,"ok":true}', '{"age":3}', '{"name":"a","ok":1}',
               '{"name":"ab","age":1.5}'],
    "enum": ['"red"', "3", "null", '"blue"', "4"],
    "array": ["[1]", "[-5, 12, 0]", "[]", "[13]", "[1,2,3,4]"],
    "ref": ['{"a": {"x": 1.5}}', '{"a":{"x":1},"b":{"x":-2e3}}', '{"b":{"x":1}}', '{"a":{}}'],
    "format": ['{"d": "2024-02-29", "id": "123e4567-e89b-12d3-a456-426614174000"}', '{"d":"2024-13-01","id":"x"}'],
    "bounds": ['{"n": 10, "s": "abcx"}', '{"n": 251, "s": "a"}', '{"n": 9, "s": "a"}', '{"n": 99, "s": "ad"}'],
}


def valid(schema, text, formats: bool = True) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), schema, format_checker=jsonschema.FormatChecker() if formats else None)
        return True
    except (jsonschema.ValidationError, json.JSONDecodeError):
        return False


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_grammar_accepts_exactly_the_valid_probes(name):
    g = Grammar.parse(json_schema_to_gbnf(SCHEMAS[name]))
    for text in PROBES[name]:
        assert g.matches(text) == valid(SCHEMAS[name], text), text


@pytest.mark.oracle
@pytest.mark.parametrize("name", ["object", "enum", "ref", "format"])
def test_same_language_as_llama_cpp_python(llama_cpp, name):
    # llama-cpp-python's port: an older converter (space is '" "?', no integer bounds, no \\d in patterns),
    # so compare on probes without newlines-as-space, bounds or patterns.
    from llama_cpp.llama_grammar import json_schema_to_gbnf as theirs

    ours, ref = Grammar.parse(json_schema_to_gbnf(SCHEMAS[name])), Grammar.parse(theirs(json.dumps(SCHEMAS[name])))
    for text in PROBES[name]:
        assert ours.matches(text) == ref.matches(text), text


def test_integer_ranges_are_exact():
    for lo, hi in [(0, 150), (-20, 7), (None, -3), (5, None), (-1000, None), (None, 42), (17, 17), (99, 1001)]:
        g = Grammar.parse("root ::= " + int_range_gbnf(lo, hi))
        for v in range(-1100, 1100, 3):
            assert g.matches(str(v)) == ((lo is None or v >= lo) and (hi is None or v <= hi)), (lo, hi, v)
        assert not g.matches("01") and not g.matches("-0")


@pytest.mark.parametrize("pattern, yes, no", [
    ("[a-z]+\\d{2}", ["ab12"], ["ab1", "12"]),
    ("(?:ab|c)*x?", ["", "abcx", "cc"], ["b", "xx"]),
    ("\\w+@[^@ ]+\\.com", ["a_1@b.com"], ["@b.com", "a@b c.com"]),
    ("\\[a\\]", ["[a]"], ["a", "[a"]),                      # escaped brackets are literals (found by fuzzing)
    ("[\\[\\]x]+\\[", ["[x][", "]]["], ["x", "y["]),
])
def test_regex_to_grammar(pattern, yes, no):
    import re

    g = Grammar.parse(regex_to_grammar(pattern))
    assert all(g.matches(s) and re.fullmatch(pattern, s) for s in yes)
    assert not any(g.matches(s) or re.fullmatch(pattern, s) for s in no)


def test_json_object_grammar():
    g = Grammar.parse(json_object_gbnf())
    assert g.matches('{"a": [1, {"b": null}]}') and g.matches("{}") and not g.matches("[1]")


@pytest.mark.parametrize("schema, where", [
    ({"type": "object", "properties": {"a": {"type": "strin"}}}, "#/properties/a/type"),
    ({"$ref": "#/$defs/missing"}, "#/$ref"),
    ({"$ref": "http://example.com/s.json"}, "only local references"),
    ({"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 1}, "minItems/maxItems"),
    ({"properties": {"p": {"type": "string", "pattern": "^(ab$"}}}, "#/properties/p/pattern"),
    ({"type": "object", "properties": {"a": {}}, "required": ["b"]}, "#/required"),
    ({"anyOf": []}, "#/anyOf"),
])
def test_malformed_schema_names_where(schema, where):
    with pytest.raises(SchemaError, match=None) as exc:
        json_schema_to_gbnf(schema)
    assert where in str(exc.value)


# -- sampled outputs over SmolLM2's vocabulary -------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm_trie(smollm_path):
    return TokenTrie.from_tokenizer(Tokenizer.from_metadata(GGUFFile(smollm_path).metadata))


def random_walk(m: GrammarMatcher, rng, closing: np.ndarray, max_steps: int = 60) -> bytes | None:
    """Random allowed tokens (biased towards closing tokens so the text ends); None if it did not finish."""
    m.reset()
    out = []
    for _ in range(max_steps):
        allowed = m.allowed_mask()
        if m.is_complete and rng.random() < 0.7:
            return b"".join(out)
        ids = np.flatnonzero(allowed & ~m.trie.eog)
        if not len(ids):
            return b"".join(out) if m.is_complete else None
        short = ids[closing[ids]]
        pick = short if len(short) and rng.random() < 0.6 else ids
        t = int(rng.choice(pick))
        m.accept(t)
        out.append(m.trie.pieces[t])
    return None


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_sampled_outputs_validate(smollm_trie, name):
    schema = SCHEMAS[name]
    m = GrammarMatcher(json_schema_to_gbnf(schema), smollm_trie)
    closing = np.array([len(p) <= 2 for p in smollm_trie.pieces])  # short tokens: punctuation, digits, quotes
    rng = np.random.default_rng(0)
    n, tries = 0, 0
    while n < 200 and tries < 600:
        tries += 1
        text = random_walk(m, rng, closing)
        if text is None:
            continue
        try:
            decoded = text.decode("utf-8")
        except UnicodeDecodeError:  # llama.cpp's UTF-8 rule lets overlong sequences (E0 9F ..) through
            continue
        assert valid(schema, decoded, formats=False), text  # llama.cpp's date rule admits 04-31  # llama.cpp's date rule admits 04-31
        n += 1
    assert n == 200, f"only {n} of {tries} walks finished"

