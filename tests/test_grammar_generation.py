"""Layer 6: generation under a grammar -- the model's outputs always parse and validate."""

from __future__ import annotations

import json

from oracles import require_module

jsonschema = require_module("jsonschema")

from zigllama_lib.inference.json_schema import json_schema_to_gbnf  # noqa: E402

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150}},
          "required": ["name", "age"]}


def test_generation_under_a_schema_always_validates(smollm):
    """SmolLM2 under the PERSON schema's grammar: greedy and 12 seeded samples at temperature 1.2
    (no top-k/p, so the model wanders) all end with a complete object that validates."""
    gbnf = json_schema_to_gbnf(PERSON)
    prompt = "A person as JSON:"
    runs = [dict(temperature=0.0)] + [dict(temperature=1.2, top_k=0, top_p=1.0, min_p=0.0, seed=s) for s in range(12)]
    finished = 0
    for kw in runs:
        text = "".join(smollm.generate(prompt, max_tokens=64, grammar=gbnf, **kw))
        if smollm.last_stats["stop_reason"] == "max_tokens":
            continue  # a long string cut off: the grammar could not have ended yet
        jsonschema.validate(json.loads(text), PERSON)
        assert smollm.last_stats["stop_reason"] == "eog", (kw, text)
        finished += 1
    assert finished >= len(runs) // 2, f"only {finished} of {len(runs)} runs ended within 64 tokens"
