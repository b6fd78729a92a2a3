"""Seed corpora: small inputs written by our own code (committed), plus real ones from the cache.

    python -m tests.fuzz.seeds          # rewrite tests/fuzz/corpus/<target>/ (a few kB each)

Committed seeds (``corpus/<target>/``) are tiny GGUF files written with
:class:`~zigllama_lib.foundation.gguf_writer.GGUFWriter` (v1/v2/v3, every metadata type,
nested arrays, several tensor types, non-default alignment), chat templates (our built-ins
and hostile ones), GBNF grammars, JSON schemas and request bodies. At run time
:func:`write_runtime` adds real inputs that are not ours to commit: the first 64 kB of the
cached SmolLM2 GGUF (magic, counts, metadata), both cached models' chat templates, and
llama.cpp's ``grammars/*.gbnf`` from the cached sdist.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
CACHE = Path(os.environ.get("ZIGLLAMA_CACHE", Path.home() / ".cache" / "zigllama"))


def gguf_seeds() -> dict[str, bytes]:
    from zigllama_lib.foundation.ggml_types import GGMLType
    from zigllama_lib.foundation.gguf import GGUFValueType, MetadataType
    from zigllama_lib.foundation.gguf_writer import GGUFWriter

    out = {}
    tmp = Path(tempfile.mkdtemp())
    try:
        for version in (1, 2, 3):
            for alignment in (32, 64):
                p = tmp / f"v{version}_a{alignment}.gguf"
                w = GGUFWriter(p, version=version, alignment=alignment)
                w.add_metadata("general.architecture", "llama")
                w.add_metadata("general.name", "fuzz-seed \u00e9")
                w.add_metadata("llama.block_count", 1, GGUFValueType.UINT32)
                w.add_metadata("u8", 7, GGUFValueType.UINT8)
                w.add_metadata("i8", -7, GGUFValueType.INT8)
                w.add_metadata("u16", 700, GGUFValueType.UINT16)
                w.add_metadata("i16", -700, GGUFValueType.INT16)
                w.add_metadata("i32", -70000, GGUFValueType.INT32)
                w.add_metadata("f32", 1.5, GGUFValueType.FLOAT32)
                w.add_metadata("b", True, GGUFValueType.BOOL)
                w.add_metadata("u64", 2**40, GGUFValueType.UINT64)
                w.add_metadata("i64", -(2**40), GGUFValueType.INT64)
                w.add_metadata("f64", 2.25, GGUFValueType.FLOAT64)
                w.add_metadata("tokenizer.ggml.tokens", ["<s>", "a", "b", "ab"])
                w.add_metadata("tokenizer.ggml.scores", np.array([0.0, -1.0, -2.0, -0.5], np.float32))
                w.add_metadata("nested", [[1, 2], [3]], MetadataType(GGUFValueType.ARRAY, MetadataType(
                    GGUFValueType.ARRAY, MetadataType(GGUFValueType.INT32))))
                w.add_metadata("tokenizer.chat_template", "{% for m in messages %}{{ m['content'] }}{% endfor %}")
                w.add_tensor("a.weight", np.arange(8, dtype=np.float32).reshape(2, 4))
                w.add_tensor("b.weight", np.ones((3, 2), np.float16))
                if version >= 2:
                    w.add_tensor("q.weight", np.zeros((1, 34), np.uint8), ggml_type=GGMLType.Q8_0, shape=(32, 1))
                w.write()
                out[p.name] = p.read_bytes()
        p = tmp / "empty.gguf"
        GGUFWriter(p).write()
        out[p.name] = p.read_bytes()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def template_seeds() -> dict[str, bytes]:
    from zigllama_lib.models.chat_template import BUILTIN_TEMPLATES

    out = {f"builtin_{k}.jinja": v.encode() for k, v in BUILTIN_TEMPLATES.items()}
    hostile = {
        "mro": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "globals": "{{ raise_exception.__globals__ }}",
        "cycler": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "attr_filter": "{{ ''|attr('__class__') }}",
        "format": "{{ '{0.__class__}'.format('') }}",
        "big_mul": "{{ 'x' * 1000000000 }}",
        "doubling": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        "nested_loops": "{% for a in 'x' * 10000 %}{% for b in 'y' * 10000 %}{% endfor %}{% endfor %}",
        "macro_tree": "{% macro f(d) %}{% if d < 40 %}{{ f(d + 1) }}{{ f(d + 1) }}{% endif %}{% endmacro %}{{ f(0) }}",
        "macro_recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
        "center": "{{ 'a'|center(1000000000) }}",
        "percent": "{{ '%1000000000s' % 'a' }}",
        "join": "{% set s = 'x' * 1000000 %}{{ [s, s, s, s, s, s, s, s, s, s]|join }}",
        "loop_recursive": "{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}",
        "pow": "{{ 10 ** 10 ** 10 }}",
        "lipsum": "{{ lipsum(100000) }}",
    }
    out.update({f"hostile_{k}.jinja": v.encode() for k, v in hostile.items()})
    return out


def grammar_seeds() -> dict[str, bytes]:
    g = {
        "chars": 'root ::= [a-z]+ "!" | "\\x41" [^"\\\\]* | . {2,5}',
        "json": 'root ::= object\nobject ::= "{" ws (string ":" ws value ("," ws string ":" ws value)*)? "}"\n'
                'value ::= object | string | [0-9]+ | "true" | "false" | "null"\n'
                'string ::= "\\"" ([^"\\\\] | "\\\\" ["\\\\/bfnrt])* "\\""\nws ::= [ \\t\\n]*',
        "groups": 'root ::= ("a" | "b" ("c" | "d")?)* item{1,3}\nitem ::= "\\u00e9" | "\\U0001F600" # comment',
        "tokens": "root ::= <[1]> !<[2]> [0-9]",
        "arith": 'root ::= expr\nexpr ::= term (("+" | "-") term)*\nterm ::= [0-9]+ | "(" expr ")"',
        "left_recursion": 'root ::= root "a" | "b"',
    }
    return {f"{k}.gbnf": v.encode() for k, v in g.items()}


def json_schema_seeds() -> dict[str, bytes]:
    s = {
        "object": {"type": "object", "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 8},
                                                    "age": {"type": "integer", "minimum": 0, "maximum": 150}},
                   "required": ["name"], "additionalProperties": False},
        "array": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 4},
        "enum": {"enum": ["a", 1, None, True, {"x": [1]}]},
        "anyof": {"anyOf": [{"type": "string", "pattern": "^[a-c]{2,3}(x|y)?$"}, {"const": 3}]},
        "refs": {"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}},
                 "$ref": "#/$defs/n"},
        "formats": {"type": "object", "properties": {"d": {"type": "string", "format": "date-time"},
                                                     "u": {"type": "string", "format": "uuid"}}},
        "tuple": {"type": "array", "prefixItems": [{"type": "boolean"}, {"type": "null"}], "items": False},
        "allof": {"allOf": [{"type": "object", "properties": {"a": {"type": "integer", "exclusiveMinimum": -5}}},
                            {"properties": {"b": {"type": "string"}}}]},
    }
    return {f"{k}.json": json.dumps(v).encode() for k, v in s.items()}


def server_seeds() -> dict[str, bytes]:
    bodies = {
        "chat": (1, {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8,
                     "temperature": 0.5, "stream": True, "stream_options": {"include_usage": True},
                     "logprobs": True, "top_logprobs": 2, "stop": ["\n"], "seed": 3, "logit_bias": {"5": -100}}),
        "chat_parts": (1, {"model": "m", "messages": [{"role": "system", "content": [{"type": "text", "text": "x"}]},
                                                      {"role": "assistant", "content": None}]}),
        "completion": (0, {"model": "m", "prompt": "Once", "max_tokens": 4, "echo": True, "logprobs": 3,
                           "top_p": 0.9, "top_k": 10, "min_p": 0.1}),
        "completion_ids": (0, {"model": "m", "prompt": [1, 2, 3], "n": 1, "user": "u"}),
        "unsupported": (1, {"model": "m", "messages": [], "tools": [{}], "response_format": {"type": "text"}}),
    }
    return {f"{k}.json": bytes([flag]) + json.dumps(v).encode() for k, (flag, v) in bodies.items()}


def tokenizer_seeds() -> dict[str, bytes]:
    texts = ["Hello world", " leading  spaces\tand\nnewlines\r\n", "caf\u00e9 na\u00efve \u4e2d\u6587 \U0001F600",
             "<|im_start|>user\nHi<|im_end|>", "<start_of_turn>model\n", "1234567890 3.14 -7", "'s 're 've 'll",
             "\u0000\u0001\u007f\u0080\u00ff", "a" * 200]
    out = {}
    for i, t in enumerate(texts):
        for mode in (0, 1):
            # FuzzedDataProvider: one byte picks the tokenizer and one the mode, the rest is the text
            out[f"text{i}_tok{mode}.bin"] = bytes([mode, i % 3]) + t.encode("utf-8")
    return out


SEEDS = {"gguf": gguf_seeds, "template": template_seeds, "grammar": grammar_seeds,
         "json_schema": json_schema_seeds, "server": server_seeds, "tokenizer": tokenizer_seeds}


def write_committed() -> None:
    for target, make in SEEDS.items():
        d = CORPUS / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in make().items():
            (d / name).write_bytes(data)
        print(f"{d}: {len(list(d.iterdir()))} files, {sum(f.stat().st_size for f in d.iterdir())} bytes")


def write_runtime(target: str, dest: Path) -> int:
    """Real inputs from the cache (not committed) into ``dest``; returns how many were written."""
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    models = [CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf", CACHE / "gemma-3-270m-q4_k_m.gguf"]
    if target == "gguf" and models[0].is_file():
        with open(models[0], "rb") as f:
            (dest / "smollm2_head64k.gguf").write_bytes(f.read(65536))
        n += 1
    if target == "template":
        from zigllama_lib.foundation.gguf import GGUFFile

        for m in models:
            if m.is_file():
                t = GGUFFile(m).metadata.get("tokenizer.chat_template")
                if isinstance(t, str):
                    (dest / f"{m.stem}.jinja").write_text(t, encoding="utf-8")
                    n += 1
    if target == "grammar":
        src = CACHE / "sources" / "llama-cpp-python-0.3.36" / "vendor" / "llama.cpp" / "grammars"
        for g in sorted(src.glob("*.gbnf")) if src.is_dir() else []:
            shutil.copy(g, dest / g.name)
            n += 1
    return n


if __name__ == "__main__":
    write_committed()
