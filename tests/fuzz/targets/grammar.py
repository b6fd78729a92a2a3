"""The GBNF parser (and a little matching) on arbitrary text.

Invariant: ``Grammar.parse`` returns a grammar or raises ``GrammarError``; a parsed grammar
matches short strings without error.
"""

from __future__ import annotations

import zigllama_lib.inference.grammar  # noqa: F401

INSTRUMENT = ["zigllama_lib.inference.grammar"]
PROBES = ("", "a", "ab", "{}", '{"a": 1}', "123", " ", "\u00e9x")


def setup() -> None:
    pass


def TestOneInput(data: bytes) -> None:
    from zigllama_lib.foundation.errors import ZigLlamaError
    from zigllama_lib.inference.grammar import Grammar

    text = data.decode("utf-8", "replace")
    try:
        g = Grammar.parse(text)
    except ZigLlamaError:
        return
    for probe in PROBES:
        try:
            assert isinstance(g.matches(probe), bool)
        except ZigLlamaError:
            pass
