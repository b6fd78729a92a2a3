"""JSON Schema -> GBNF, after llama.cpp's ``common/json-schema-to-grammar.cpp``; and regex -> GBNF.

How a schema becomes rules
--------------------------
Every sub-schema becomes one named rule, named after its path (``root``,
``name``, ``address-city``...), built from a few primitive rules::

    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
     "required": ["name"]}

    root     ::= "{" space name-kv ( "," space age-kv )? "}" space
    name-kv  ::= "\\"name\\"" space ":" space string
    age-kv   ::= "\\"age\\"" space ":" space integer
    string   ::= "\\"" char* "\\"" space          (and char, integer, space ... as needed)

* required properties come first, in the order of ``properties``; optional
  ones after them, each optional one followed by a ``-rest`` rule admitting
  the later optional ones (so any subset, in order, without a dangling comma);
* ``enum`` / ``const`` become alternatives of JSON literals; ``anyOf`` / ``oneOf``
  alternatives of sub-rules; ``allOf`` merges the object parts;
* arrays: ``item ("," space item){m-1,n-1}`` from ``minItems`` / ``maxItems``;
  ``prefixItems`` a fixed sequence;
* strings: ``char{m,n}`` from ``minLength`` / ``maxLength``, formats ``date``,
  ``time``, ``date-time``, ``uuid``, and ``pattern`` through :func:`regex_to_gbnf`;
* integers: ``minimum`` / ``maximum`` (and the exclusive ones) as exact
  digit-range rules (``[0-9] | [1-9] [0-9] | "1" [0-4] [0-9] | "150"``);
* ``$ref`` to ``#/definitions/...`` or ``#/$defs/...`` becomes a reference to
  that definition's rule (so recursive schemas give recursive grammars).

Where we differ from llama.cpp: ``\\d``, ``\\w``, ``\\s`` in patterns become
char classes (llama.cpp passes them through); ``additionalProperties`` keys
are any string (llama.cpp excludes the declared names); rule bodies are
spelled our own way, so compare grammars by the strings they accept.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ..foundation.errors import ZigLlamaError
from .grammar import MAX_REPETITION_THRESHOLD

SPACE_RULE = '| " " | "\\n"{1,2} [ \\t]{0,20}'

# name -> (body, dependencies)
PRIMITIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "boolean": ('("true" | "false") space', ()),
    "decimal-part": ("[0-9]{1,16}", ()),
    "integral-part": ("[0] | [1-9] [0-9]{0,15}", ()),
    "number": ('("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)? space',
               ("integral-part", "decimal-part")),
    "integer": ('("-"? integral-part) space', ("integral-part",)),
    "value": ("object | array | string | number | boolean | null",
              ("object", "array", "string", "number", "boolean", "null")),
    "object": ('"{" space ( string ":" space value ("," space string ":" space value)* )? "}" space',
               ("string", "value")),
    "array": ('"[" space ( value ("," space value)* )? "]" space', ("value",)),
    "uuid": ('"\\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" '
             '[0-9a-fA-F]{12} "\\"" space', ()),
    "char": ('[^"\\\\\\x7F\\x00-\\x1F] | [\\\\] (["\\\\bfnrt] | "u" [0-9a-fA-F]{4})', ()),
    "string": ('"\\"" char* "\\"" space', ("char",)),
    "null": ('"null" space', ()),
    "date": ('[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )', ()),
    "time": ('([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? '
             '( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )', ()),
    "date-time": ('date "T" time', ("date", "time")),
    "date-string": ('"\\"" date "\\"" space', ("date",)),
    "time-string": ('"\\"" time "\\"" space', ("time",)),
    "date-time-string": ('"\\"" date-time "\\"" space', ("date-time",)),
}
FORMATS = {"date": "date-string", "time": "time-string", "date-time": "date-time-string", "uuid": "uuid"}

MAX_DIGITS = 16  # integral-part allows up to 16 digits, as llama.cpp


class SchemaError(ZigLlamaError):
    """A JSON schema is malformed or uses something the converter does not support (the message names where)."""


_JSON_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
                   bool: "a boolean"}


def _keyword(schema: dict, key: str, types: type | tuple[type, ...], path: str, default: Any = None) -> Any:
    """``schema[key]`` checked to be one of ``types`` (a bool is not an integer here), else a
    SchemaError naming ``path/key``; ``default`` when the key is absent."""
    if key not in schema:
        return default
    value, types = schema[key], types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        expected = " or ".join(_JSON_TYPE_NAMES[t] for t in types)
        raise SchemaError(f"{path}/{key}: must be {expected}, got {value!r:.80}")
    return value


def _integer_bound(value: Any, where: str) -> int:
    """An integer schema's bound as a Python int: a JSON number with an integral value (1 or 1.0),
    never a bool, a string or an infinity."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SchemaError(f"{where}: integer bounds must be numbers, got {value!r}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise SchemaError(f"{where}: integer bounds must be integers, got {value!r}")
    return int(value)


def _literal(s: str) -> str:
    """A GBNF string literal for ``s``."""
    out = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{out}"'


def _class_char(c: str) -> str:
    if c == "^":  # found by fuzzing: GBNF has no "\^" escape (llama.cpp's parser neither)
        return "\\x5E"
    if c in "\\]-[":
        return "\\" + c
    if c == "\n":
        return "\\n"
    if c == "\r":
        return "\\r"
    if c == "\t":
        return "\\t"
    if ord(c) < 0x20 or ord(c) == 0x7F:
        return f"\\x{ord(c):02X}"
    return c


def _repeat(item: str, lo: int, hi: int | None, sep: str = "") -> str:
    """``item`` repeated lo..hi times (hi None = unbounded), separated by ``sep``."""
    if hi == 0:
        return ""
    if not sep:
        if (lo, hi) == (0, 1):
            return f"{item}?"
        if hi is None and lo in (0, 1):
            return f"{item}{'*' if lo == 0 else '+'}"
        return f"{item}{{{lo},{'' if hi is None else hi}}}" if hi != lo else f"{item}{{{lo}}}"
    rest = _repeat(f"({sep} {item})", max(lo - 1, 0), None if hi is None else hi - 1)
    out = f"{item} {rest}".strip()
    return f"({out})?" if lo == 0 else out


# -- integer ranges ---------------------------------------------------------------------------------

def _same_length(a: str, b: str) -> str:
    """GBNF for the decimal numbers a..b, two strings of equal length (a <= b)."""
    if a == b:
        return f'"{a}"'
    if len(a) == 1:
        return f"[{a}-{b}]"
    if a[0] == b[0]:
        return f'"{a[0]}" ({_same_length(a[1:], b[1:])})'
    k = len(a) - 1
    parts = []
    lo_digit, hi_digit = int(a[0]), int(b[0])
    if a[1:] == "0" * k:
        lo_full = lo_digit
    else:
        parts.append(f'"{a[0]}" ({_same_length(a[1:], "9" * k)})')
        lo_full = lo_digit + 1
    if b[1:] == "9" * k:
        hi_full = hi_digit
    else:
        hi_full = hi_digit - 1
    if lo_full <= hi_full:
        d = f"[{lo_full}]" if lo_full == hi_full else f"[{lo_full}-{hi_full}]"
        parts.append(f"{d} [0-9]{{{k}}}")
    if b[1:] != "9" * k:
        parts.append(f'"{b[0]}" ({_same_length("0" * k, b[1:])})')
    return " | ".join(parts)


def _uint_range(lo: int, hi: int) -> str:
    """GBNF for the integers lo..hi (0 <= lo <= hi), without leading zeros."""
    parts = []
    for d in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (d - 1) if d > 1 else 0)
        b = min(hi, 10 ** d - 1)
        if a <= b:
            parts.append(_same_length(str(a), str(b)))
    return " | ".join(parts)


def _uint_at_least(lo: int) -> str:
    """GBNF for the integers >= lo >= 0 with at most MAX_DIGITS digits."""
    n = len(str(lo))
    parts = [_uint_range(lo, 10 ** n - 1)]
    if n < MAX_DIGITS:
        parts.append(f"[1-9] [0-9]{{{n},{MAX_DIGITS - 1}}}")
    return " | ".join(parts)


def int_range_gbnf(lo: int | None, hi: int | None) -> str:
    """GBNF (a rule body) for the decimal integers in [lo, hi]; None = unbounded on that side."""
    any_pos = f"[0] | [1-9] [0-9]{{0,{MAX_DIGITS - 1}}}"
    any_neg = f'"-" [1-9] [0-9]{{0,{MAX_DIGITS - 1}}}'
    alts = []
    if lo is None and hi is None:
        return f'"-"? ({any_pos})'
    # negative side: values in [lo, min(hi, -1)]
    if lo is None or lo < 0:
        neg_hi = -1 if hi is None or hi >= 0 else hi  # most negative magnitude bound below
        if lo is None:
            alts.append(f'"-" ({_uint_at_least(-neg_hi)})' if neg_hi != -1 else any_neg)
        elif -lo >= -neg_hi:
            alts.append(f'"-" ({_uint_range(-neg_hi, -lo)})')
    # non-negative side: [max(lo, 0), hi]
    if hi is None or hi >= 0:
        pos_lo = 0 if lo is None or lo < 0 else lo
        if hi is None:
            alts.append(any_pos if pos_lo == 0 else _uint_at_least(pos_lo))
        elif pos_lo <= hi:
            alts.append(_uint_range(pos_lo, hi))
    if not alts:
        raise SchemaError(f"empty integer range [{lo}, {hi}]")
    return " | ".join(f"({a})" if " | " in a else a for a in alts)


# -- regex -> GBNF ------------------------------------------------------------------------------------

_CLASS_ESCAPES = {"d": "0-9", "w": "a-zA-Z0-9_", "s": " \\t\\n\\r"}


class _Regex:
    """A small regex parser (literals, ``.``, classes, ``\\d\\w\\s``, groups, ``|``, ``* + ? {m,n}``)."""

    def __init__(self, pattern: str, dot: str):
        self.p, self.i, self.dot = pattern, 0, dot

    def error(self, msg: str) -> SchemaError:
        return SchemaError(f"regex {self.p!r}, position {self.i}: {msg}")

    def parse(self) -> str:
        p = self.p
        if p.startswith("^"):
            self.i = 1
        out = self.alternation()
        if self.i < len(p):
            raise self.error(f"unexpected {p[self.i]!r}")
        return out

    def alternation(self) -> str:
        alts = [self.sequence()]
        while self.i < len(self.p) and self.p[self.i] == "|":
            self.i += 1
            alts.append(self.sequence())
        return " | ".join(a or '""' for a in alts) if len(alts) > 1 else alts[0]

    def sequence(self) -> str:
        items: list[str] = []
        p = self.p
        while self.i < len(p) and p[self.i] not in "|)":
            c = p[self.i]
            if c == "$" and self.i == len(p) - 1:
                self.i += 1
                continue
            atom = self.atom()
            if self.i < len(p) and p[self.i] in "*+?{":
                atom = self.quantify(atom)
            items.append(atom)
        return " ".join(items)

    def quantify(self, atom: str) -> str:
        p = self.p
        c = p[self.i]
        self.i += 1
        if c in "*+?":
            out = atom + c
        else:
            m = re.match(r"(\d{1,9})(,(\d{0,9}))?\}", p[self.i:])
            if not m:
                raise self.error("malformed {m,n} quantifier (counts of at most nine digits)")
            self.i += m.end()
            lo = int(m.group(1))
            hi = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
            if hi is not None and hi < lo:  # found by fuzzing: {4,3} wrote GBNF the parser rejects
                raise self.error(f"quantifier {{{lo},{hi}}} has max < min")
            if max(lo, hi or 0) > MAX_REPETITION_THRESHOLD:  # found by fuzzing, as minItems was
                raise self.error(f"quantifier {{{m.group(0)} above {MAX_REPETITION_THRESHOLD}, the grammar's "
                                 f"repetition limit")
            out = _repeat(atom, lo, hi)
        if self.i < len(p) and p[self.i] in "?+":  # lazy / possessive: same language
            self.i += 1
        return out

    def atom(self) -> str:
        p = self.p
        c = p[self.i]
        if c == "(":
            self.i += 1
            if p.startswith("?:", self.i):
                self.i += 2
            elif p.startswith("?", self.i):
                raise self.error("lookaround and named groups are not supported")
            inner = self.alternation()
            if self.i >= len(p) or p[self.i] != ")":
                raise self.error("unclosed group")
            self.i += 1
            return f"({inner})"
        if c == "[":
            return self.char_class()
        if c == ".":
            self.i += 1
            return self.dot
        if c == "\\":
            e = self.escape()
            return e if len(e) > 1 else _literal(e)  # a class [...] or one escaped char (\[ is "[")
        if c in "*+?{":
            raise self.error(f"nothing to repeat before {c!r}")
        if c in "^$":
            raise self.error(f"anchor {c!r} only supported at the ends")
        self.i += 1
        return _literal(c)

    def escape(self) -> str:
        """After a backslash: a class ``[...]`` for \\d \\w \\s (\\D ...), else the escaped char
        (one character, so ``len > 1`` tells a class)."""
        p = self.p
        if self.i + 1 >= len(p):
            raise self.error("trailing backslash")
        e = p[self.i + 1]
        self.i += 2
        if e.lower() in _CLASS_ESCAPES:
            return f"[{'^' if e.isupper() else ''}{_CLASS_ESCAPES[e.lower()]}]"
        simple = {"n": "\n", "r": "\r", "t": "\t", "f": "\f", "v": "\v"}
        if e in simple:
            return simple[e]
        if e in "xu":
            n = 2 if e == "x" else 4
            digits = p[self.i:self.i + n]
            if not re.fullmatch(f"[0-9a-fA-F]{{{n}}}", digits):
                raise self.error(f"expecting {n} hex digits after \\{e}")
            self.i += n
            return chr(int(digits, 16))
        if e.isalnum():
            raise self.error(f"unsupported escape \\{e}")
        return e

    def char_class(self) -> str:
        p = self.p
        self.i += 1
        neg = p.startswith("^", self.i)
        if neg:
            self.i += 1
        body = []
        first = True
        while True:
            if self.i >= len(p):
                raise self.error("unclosed character class")
            c = p[self.i]
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            if c == "\\":
                e = self.escape()
                if len(e) > 1:  # a class escape such as \d (a lone "[" is the escaped \[, found by fuzzing)
                    if e[1] == "^":
                        raise self.error("negated class escapes inside [...] are not supported")
                    body.append(e[1:-1])
                    continue
                lo = e
            else:
                lo = c
                self.i += 1
            if p.startswith("-", self.i) and self.i + 1 < len(p) and p[self.i + 1] != "]":
                self.i += 1
                if p[self.i] == "\\":
                    hi = self.escape()
                    if len(hi) > 1:
                        raise self.error("a class escape cannot end a range")
                else:
                    hi = p[self.i]
                    self.i += 1
                body.append(f"{_class_char(lo)}-{_class_char(hi)}")
            else:
                body.append(_class_char(lo))
        return f"[{'^' if neg else ''}{''.join(body)}]"


def regex_to_gbnf(pattern: str, dotall: bool = False) -> str:
    """A GBNF rule body matching exactly the strings that fully match ``pattern``.

    The "regex to automaton" route: the grammar matcher then runs the regex
    as a pushdown (here: finite) automaton over tokens. Example::

        regex_to_gbnf("[a-z]+\\\\d{2}")   # -> '[a-z]+ [0-9]{2}'
    """
    dot = "[\\U00000000-\\U0010FFFF]" if dotall else "[^\\x0A\\x0D]"
    body = _Regex(pattern, dot).parse()
    return body or '""'


def regex_to_grammar(pattern: str, dotall: bool = False) -> str:
    """A whole GBNF grammar (``root ::= ...``) for ``pattern`` (see :func:`regex_to_gbnf`)."""
    return f"root ::= {regex_to_gbnf(pattern, dotall)}\n"


# -- the converter -----------------------------------------------------------------------------------

class SchemaConverter:
    """Collects rules while visiting a schema; :meth:`grammar` prints them as GBNF."""

    def __init__(self, schema: Any, dotall: bool = False):
        self.schema = schema
        self.dotall = dotall
        self.rules: dict[str, str] = {"space": SPACE_RULE}
        self.refs: dict[str, str] = {}  # "#/$defs/X" -> rule name

    def add_rule(self, name: str, body: str) -> str:
        key = re.sub(r"[^a-zA-Z0-9-]+", "-", name) or "rule"
        if self.rules.get(key, "") not in ("", body):  # "" = a name reserved for a $ref being visited
            i = 0
            while self.rules.get(f"{key}{i}", "") not in ("", body):
                i += 1
            key = f"{key}{i}"
        self.rules[key] = body
        return key

    def primitive(self, name: str) -> str:
        body, deps = PRIMITIVES[name]
        self.rules[name] = body
        for d in deps:
            if d not in self.rules:
                self.primitive(d)
        return name

    def grammar(self) -> str:
        self.visit(self.schema, "root", "#")
        return "".join(f"{name} ::= {body}\n" for name, body in sorted(self.rules.items()))

    # -- visiting ------------------------------------------------------------------------------------
    def resolve(self, ref: str, path: str) -> Any:
        if not ref.startswith("#/"):
            raise SchemaError(f"{path}/$ref: only local references (#/definitions/..., #/$defs/...) are supported, "
                              f"got {ref!r}")
        node = self.schema
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise SchemaError(f"{path}/$ref: {ref!r} does not resolve (no {part!r})")
            node = node[part]
        return node

    def visit(self, schema: Any, name: str, path: str) -> str:
        if schema is True or schema == {}:
            return self.add_rule(name, self.primitive("value")) if name == "root" else self.primitive("value")
        if not isinstance(schema, dict):
            raise SchemaError(f"{path}: a schema must be an object or true, got {schema!r}")
        rule_name = name
        if "$ref" in schema:
            ref = schema["$ref"]
            if not isinstance(ref, str):
                raise SchemaError(f"{path}/$ref: must be a string")
            if ref not in self.refs:
                target = re.sub(r"[^a-zA-Z0-9-]+", "-", ref.split("/")[-1]) or "ref"
                self.refs[ref] = target
                self.rules.setdefault(target, "")  # reserve the name (recursion)
                body_name = self.visit(self.resolve(ref, path), target, ref)
                if body_name != target:
                    self.rules[target] = body_name
            return self.add_rule(rule_name, self.refs[ref]) if name == "root" else self.refs[ref]
        for key in ("oneOf", "anyOf"):
            if key in schema:
                alts = schema[key]
                if not isinstance(alts, list) or not alts:
                    raise SchemaError(f"{path}/{key}: must be a non-empty list")
                subs = [self.visit(s, f"{name}-{i}", f"{path}/{key}/{i}") for i, s in enumerate(alts)]
                return self.add_rule(rule_name, " | ".join(subs))
        if "const" in schema:
            return self.add_rule(rule_name, f"{self.json_literal(schema['const'])} space")
        if "enum" in schema:
            vals = schema["enum"]
            if not isinstance(vals, list) or not vals:
                raise SchemaError(f"{path}/enum: must be a non-empty list")
            return self.add_rule(rule_name, "(" + " | ".join(self.json_literal(v) for v in vals) + ") space")
        if "allOf" in schema:
            return self.visit(self.merge_all_of(schema, path), name, path)
        stype = schema.get("type")
        if isinstance(stype, list):
            subs = [self.visit({**schema, "type": t}, f"{name}-{t}", f"{path}/type/{i}")
                    for i, t in enumerate(stype)]
            return self.add_rule(rule_name, " | ".join(subs))
        if stype is None:
            if "properties" in schema or "additionalProperties" in schema:
                stype = "object"
            elif "items" in schema or "prefixItems" in schema:
                stype = "array"
            else:
                return self.add_rule(rule_name, self.primitive("value"))
        if stype == "object":
            return self.object_rule(schema, name, path)
        if stype == "array":
            return self.array_rule(schema, name, path)
        if stype == "string":
            return self.string_rule(schema, name, path)
        if stype == "integer" and any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum",
                                                            "exclusiveMaximum")):
            bounds = {k: _integer_bound(schema[k], f"{path}/{k}")
                      for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if k in schema}
            lo, hi = bounds.get("minimum"), bounds.get("maximum")
            if "exclusiveMinimum" in bounds:
                lo = bounds["exclusiveMinimum"] + 1 if lo is None else max(lo, bounds["exclusiveMinimum"] + 1)
            if "exclusiveMaximum" in bounds:
                hi = bounds["exclusiveMaximum"] - 1 if hi is None else min(hi, bounds["exclusiveMaximum"] - 1)
            return self.add_rule(rule_name, f"({int_range_gbnf(lo, hi)}) space")
        if stype in ("integer", "number", "boolean", "null"):
            prim = self.primitive(stype)
            return self.add_rule(rule_name, prim) if name == "root" else prim
        raise SchemaError(f"{path}/type: unsupported type {stype!r}")

    def json_literal(self, value: Any) -> str:
        return _literal(json.dumps(value, ensure_ascii=False, separators=(",", ":")))

    def merge_all_of(self, schema: dict, path: str) -> dict:
        props, required = {}, []
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        parts = [(f"{path}/allOf/{i}", sub) for i, sub in enumerate(_keyword(schema, "allOf", list, path))]
        for where, sub in parts + [(path, rest)]:
            if isinstance(sub, dict) and "$ref" in sub:
                sub = self.resolve(_keyword(sub, "$ref", str, where), where)
            if not isinstance(sub, dict) or sub.get("type", "object") != "object":
                raise SchemaError(f"{where}: only object schemas can be merged")
            props.update(_keyword(sub, "properties", dict, where, {}))
            required += [r for r in self.required_names(sub, where) if r not in required]
        return {**rest, "type": "object", "properties": props, "required": required}

    def object_rule(self, schema: dict, name: str, path: str) -> str:
        props = _keyword(schema, "properties", dict, path, {})
        additional = schema.get("additionalProperties")
        if not props and additional in (None, True):
            return self.add_rule(name, self.primitive("object"))
        required = self.required_names(schema, path)
        for r in required:
            if r not in props:
                raise SchemaError(f"{path}/required: {r!r} is not in properties")
        prefix = "" if name == "root" else f"{name}-"
        kv = {}
        for pname, pschema in props.items():
            value = self.visit(pschema, f"{prefix}{pname}", f"{path}/properties/{pname}")
            kv[pname] = self.add_rule(f"{prefix}{pname}-kv", f'{self.json_literal(pname)} space ":" space {value}')
        req = [kv[p] for p in props if p in required]
        opt = [kv[p] for p in props if p not in required]
        opt_names = [p for p in props if p not in required]
        if additional is True or isinstance(additional, dict):
            value = self.visit(additional if isinstance(additional, dict) else {}, f"{prefix}additional",
                               f"{path}/additionalProperties")
            self.primitive("string")
            opt.append(self.add_rule(f"{prefix}additional-kv", f'string ":" space {value}') + "*")
            opt_names.append("additional")
        elif additional not in (None, False):
            raise SchemaError(f"{path}/additionalProperties: must be a boolean or a schema")
        body = '"{" space ' + ' "," space '.join(req)
        if opt:
            # alternatives: start at optional i, then its -rest rule admits the later ones
            alts = []
            for i, first in enumerate(opt):
                rest = self.opt_rest(opt[i + 1:], f"{prefix}{opt_names[i]}-rest")
                item = self.star_item(first)
                alts.append(f"{item} {rest}".strip())
            group = "( " + " | ".join(alts) + " )"
            body += f' ( "," space {group} )?' if req else f" {group}?"
        return self.add_rule(name, body + ' "}" space')

    @staticmethod
    def required_names(schema: dict, path: str) -> list[str]:
        required = _keyword(schema, "required", list, path, [])
        for i, r in enumerate(required):
            if not isinstance(r, str):
                raise SchemaError(f"{path}/required/{i}: property names are strings, got {r!r:.80}")
        return required

    @staticmethod
    def star_item(kv: str) -> str:
        return f'{kv[:-1]} ( "," space {kv[:-1]} )*' if kv.endswith("*") else kv

    def opt_rest(self, later: list[str], rest_name: str) -> str:
        """A rule admitting any in-order subset of ``later`` optional key-values, each after a comma."""
        if not later:
            return ""
        body = ""
        for kv in reversed(later):
            item = self.star_item(kv)
            body = f'( "," space {item} )? {body}'.strip()
        return self.add_rule(rest_name, body)

    def array_rule(self, schema: dict, name: str, path: str) -> str:
        if "prefixItems" in schema or isinstance(schema.get("items"), list):
            items = _keyword(schema, "prefixItems", list, path) if "prefixItems" in schema else schema["items"]
            subs = [self.visit(s, f"{name}-{i}", f"{path}/prefixItems/{i}") for i, s in enumerate(items)]
            return self.add_rule(name, '"[" space ' + ' "," space '.join(subs) + ' "]" space')
        item = self.visit(schema.get("items", {}), f"{name}-item", f"{path}/items")
        lo, hi = schema.get("minItems", 0), schema.get("maxItems")
        if not isinstance(lo, int) or lo < 0 or (hi is not None and (not isinstance(hi, int) or hi < lo)):
            raise SchemaError(f"{path}: minItems/maxItems must be integers with 0 <= minItems <= maxItems")
        if max(lo, hi or 0) > MAX_REPETITION_THRESHOLD:  # found by fuzzing: GBNF caps {m,n} (llama.cpp too)
            raise SchemaError(f"{path}: minItems/maxItems above {MAX_REPETITION_THRESHOLD}, the grammar's "
                              f"repetition limit")
        return self.add_rule(name, f'"[" space {_repeat(item, lo, hi, sep=chr(34) + "," + chr(34) + " space")} "]" space')

    def string_rule(self, schema: dict, name: str, path: str) -> str:
        if "pattern" in schema:
            pat = schema["pattern"]
            if not isinstance(pat, str):
                raise SchemaError(f"{path}/pattern: must be a string")
            if not (pat.startswith("^") and pat.endswith("$")):
                raise SchemaError(f"{path}/pattern: must start with '^' and end with '$' (as llama.cpp requires)")
            try:
                body = regex_to_gbnf(pat, self.dotall)
            except SchemaError as e:
                raise SchemaError(f"{path}/pattern: {e}") from None
            return self.add_rule(name, f'"\\"" ({body}) "\\"" space')
        fmt = _keyword(schema, "format", str, path)
        if fmt in FORMATS:
            prim = self.primitive(FORMATS[fmt])
            return self.add_rule(name, prim) if name == "root" else prim
        if fmt is not None and fmt not in ("email", "uri", "hostname", "ipv4", "ipv6", "regex"):
            raise SchemaError(f"{path}/format: unsupported string format {fmt!r}")
        lo, hi = schema.get("minLength", 0), schema.get("maxLength")
        if lo or hi is not None:
            if not isinstance(lo, int) or lo < 0 or (hi is not None and (not isinstance(hi, int) or hi < lo)):
                raise SchemaError(f"{path}: minLength/maxLength must be integers with 0 <= minLength <= maxLength")
            if max(lo, hi or 0) > MAX_REPETITION_THRESHOLD:
                raise SchemaError(f"{path}: minLength/maxLength above {MAX_REPETITION_THRESHOLD}, the grammar's "
                                  f"repetition limit")
            char = self.primitive("char")
            return self.add_rule(name, f'"\\"" {_repeat(char, lo, hi) or chr(34) * 2} "\\"" space')
        prim = self.primitive("string")
        return self.add_rule(name, prim) if name == "root" else prim


def json_schema_to_gbnf(schema: Any, dotall: bool = False) -> str:
    """GBNF text (root rule ``root``) for the JSON values valid under ``schema`` (a dict or JSON text)."""
    if isinstance(schema, (str, bytes)):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise SchemaError(f"the schema is not valid JSON: {e}") from None
    return SchemaConverter(schema, dotall).grammar()


def json_object_gbnf() -> str:
    """The grammar of any JSON object (OpenAI's ``response_format={"type": "json_object"}``)."""
    return json_schema_to_gbnf({"type": "object"})
