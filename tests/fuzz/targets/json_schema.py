"""The JSON-Schema -> GBNF converter on arbitrary JSON.

Invariant: ``json_schema_to_gbnf`` returns GBNF that our own parser accepts, or raises
``SchemaError`` (a ``ZigLlamaError``).
"""

from __future__ import annotations

import zigllama_lib.inference.json_schema, zigllama_lib.inference.grammar  # noqa: E401,F401

import json

INSTRUMENT = ["zigllama_lib.inference.json_schema", "zigllama_lib.inference.grammar"]


def setup() -> None:
    pass


def TestOneInput(data: bytes) -> None:
    from zigllama_lib.foundation.errors import ZigLlamaError
    from zigllama_lib.inference.grammar import Grammar
    from zigllama_lib.inference.json_schema import json_schema_to_gbnf

    try:
        schema = json.loads(data.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return
    try:
        gbnf = json_schema_to_gbnf(schema)
    except ZigLlamaError:
        return
    assert isinstance(gbnf, str)
    try:
        Grammar.parse(gbnf)
    except ZigLlamaError as e:
        if any(named in str(e) for named in ("too large", "limit", "too ambiguous", "left recursion")):
            return  # a named refusal: a resource limit, or a pattern such as ^(a*)*$ whose nested nullable
            # repetition is left-recursive GBNF (llama.cpp's converter writes the same and its parser refuses it)
        raise AssertionError(f"the converter wrote GBNF our parser rejects: {e}\n{gbnf[:2000]}") from None
