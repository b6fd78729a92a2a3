"""Layer 6: JSON Schema -> GBNF. The grammar's language against jsonschema's verdict on instances.

For each schema, every instance (keys in the schema's property order, as llama.cpp's converter
emits them) is serialised with ``json.dumps`` and must match the grammar exactly when
``jsonschema`` says it is valid. llama-cpp-python's older Python converter
(``llama_cpp.llama_grammar.json_schema_to_gbnf``, which ignores numeric bounds) must accept
every valid instance too.
"""

from __future__ import annotations

import json

import pytest

from oracles import require_module

jsonschema = require_module("jsonschema")

from zigllama_lib.inference.grammar import Grammar  # noqa: E402
from zigllama_lib.inference.json_schema import SchemaError, json_object_gbnf, json_schema_to_gbnf  # noqa: E402

PERSON = {"type": "object", "properties": {"name": {"type": "string"},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150}},
          "required": ["name"]}
CASES = [
    (PERSON, [{"name": "Ann"}, {"name": "Bo", "age": 0}, {"name": "C", "age": 150}, {"name": "D", "age": 151},
              {"name": "E", "age": -1}, {"age": 3}, {"name": 3}, {"name": "F", "age": 2.5}]),
    ({"enum": ["red", "green", 3, None]}, ["red", "green", 3, None, "blue", 4, True]),
    ({"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 3},
     [[True], [True, False, True], [], [True] * 4, [1]]),
    ({"type": "object", "properties": {"p": {"$ref": "#/$defs/point"}}, "required": ["p"],
      "$defs": {"point": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                          "required": ["x", "y"]}}},
     [{"p": {"x": 1, "y": -2.5}}, {"p": {"x": 1}}, {"p": {"x": "1", "y": 2}}]),
    ({"type": "integer", "minimum": 10, "maximum": 1234}, [10, 99, 100, 1234, 9, 1235, 10000, -10]),
    ({"type": "string", "minLength": 2, "maxLength": 4}, ["ab", "abcd", "a", "abcde"]),
]


@pytest.mark.parametrize("schema, instances", CASES, ids=[f"schema{i}" for i in range(len(CASES))])
def test_grammar_language_equals_jsonschema(schema, instances):
    grammar = Grammar.parse(json_schema_to_gbnf(schema))
    for inst in instances:
        text = json.dumps(inst)
        valid = jsonschema.Draft202012Validator(schema).is_valid(inst)
        assert grammar.matches(text) == valid, (text, valid)


@pytest.mark.parametrize("schema, instances", CASES[:4], ids=[f"schema{i}" for i in range(4)])
def test_older_llama_cpp_converter_accepts_the_valid_instances(schema, instances):
    from llama_cpp.llama_grammar import json_schema_to_gbnf as reference

    grammar = Grammar.parse(reference(json.dumps(schema)))
    for inst in instances:
        if jsonschema.Draft202012Validator(schema).is_valid(inst):
            assert grammar.matches(json.dumps(inst)), inst


def test_json_object_grammar():
    g = Grammar.parse(json_object_gbnf())
    assert g.matches('{"a": [1, {"b": null}], "c": "x"}')
    assert not g.matches("[1, 2]") and not g.matches('{"a": }')


@pytest.mark.parametrize("schema, where", [
    ({"type": "object", "properties": {"p": {"$ref": "#/$defs/missing"}}}, "missing"),
    ({"type": "no-such-type"}, "no-such-type"),
])
def test_bad_schema_names_where(schema, where):
    with pytest.raises(SchemaError, match=where):
        json_schema_to_gbnf(schema)
