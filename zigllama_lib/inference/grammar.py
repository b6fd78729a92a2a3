"""Grammar-constrained decoding: GBNF grammars, a pushdown matcher and a token mask (llama.cpp's ``llama-grammar.cpp``).

A GBNF grammar is a set of rules, ``name ::= alternatives``::

    root  ::= "[" item ("," item)* "]"     # a list of one or more items
    item  ::= [a-z]+ | "\\u00e9"{1,3}       # char classes, repetition, escapes

Elements: ``"literal"``, char classes ``[a-z0-9_]`` / negated ``[^"\\\\]``,
``.`` (any char), rule references, groups ``( ... )``, repetition ``*``, ``+``,
``?``, ``{m}``, ``{m,}``, ``{m,n}``, token references ``<[id]>`` / ``!<[id]>``,
comments ``# ...``. Escapes: ``\\xHH \\uHHHH \\UHHHHHHHH \\t \\r \\n \\\\ \\" \\[ \\] \\-``.

Rules as element arrays
-----------------------
:meth:`Grammar.parse` turns every rule into one flat array of elements, as
llama.cpp does, with alternatives separated by ``ALT`` and closed by ``END``::

    item ::= [a-z] "!" | "x"   ->  CHAR a, RNG_UPPER z, CHAR !, ALT, CHAR x, END

Groups and repetitions become generated rules (``S*`` -> ``S' ::= S S' |``),
so the matcher only ever sees sequences of chars and rule references.

The stack-of-positions matcher
------------------------------
A parse in progress is a *stack* of positions into those arrays: the top is
the element to match next, the entries below are where to return once the
current rule ends (a call stack). Because a grammar is ambiguous mid-text,
the matcher keeps the *set* of all live stacks:

* **advance**: a stack whose top is a rule reference is replaced by one stack
  per alternative of that rule (the reference's successor pushed below), until
  every top is a char element (or the stack is empty: the text may end here);
* **accept a char**: keep the stacks whose top matches it, pop that element,
  push its successor, advance again. No stack left = the char is not allowed.

A rule whose first element can reach itself without consuming a char (left
recursion, ``expr ::= expr "+" term``) would make *advance* loop forever;
:meth:`Grammar.parse` rejects it, as llama.cpp does.

Why the token trie makes masking cheap
--------------------------------------
A token is allowed iff its code points can be accepted one by one from the
current stack set. Checking the 49k tokens of a vocabulary separately repeats
the same work for every shared prefix (``" the"``, ``" then"``, ``" there"``...).
:class:`TokenTrie` stores the vocabulary as a prefix tree over code points, so
one depth-first walk advances the stack set once per trie node and drops a
whole subtree the moment its prefix dies. The stack sets themselves are
interned as integer *states* and every ``(state, char) -> state`` transition
is cached, so after the first few masks a walk is mostly dictionary lookups
(a lazily built automaton), and a whole mask is cached per state.

Tokens that end inside a UTF-8 sequence (byte tokens like ``b"\\xe2\\x82"``)
follow llama.cpp: the partial sequence is allowed if some completion of it
could match the next char element; the matcher then carries the partial bytes
over to the next token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..foundation.errors import ZigLlamaError

# Element types, numbered as llama.cpp's enum llama_gretype.
END, ALT, RULE_REF, CHAR, CHAR_NOT, CHAR_RNG_UPPER, CHAR_ALT, CHAR_ANY, TOKEN, TOKEN_NOT = range(10)

MAX_REPETITION_THRESHOLD = 2000  # llama.cpp's cap on {m,n}
# Parse stacks alive at once. Unambiguous grammars keep a handful (llama.cpp's json.gbnf: 12);
# an ambiguous repetition such as ``root ::= "a" | root{2,7}`` multiplies them with every
# character (found by fuzzing: over 10^5 after four characters). Past this a GrammarError.
MAX_PARSE_STACKS = 4096
# Work one step may do: every stack popped in _advance counts 1 + depth / 8 (cached results are
# free). Nested repetitions such as ``.+++*{323}`` keep fewer stacks than the cap but expand
# hundreds per stack per character, and deep stacks cost their copies (both found by fuzzing:
# seconds per character). llama.cpp's json.gbnf needs < 100.
MAX_STEP_EXPANSIONS = 100_000


class GrammarError(ZigLlamaError):
    """A GBNF grammar is malformed, or generation under it reached a dead end."""


# =====================================================================================================
# Parsing GBNF
# =====================================================================================================

def _is_word_char(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c == "-"


def _too_ambiguous() -> GrammarError:
    return GrammarError(f"the grammar is too ambiguous: more than {MAX_PARSE_STACKS} parse stacks alive at once or "
                        f"{MAX_STEP_EXPANSIONS} expansions for one character (a repetition whose items can match "
                        f"the same text in many ways, such as (x?)*, (x+)+ or r{{2,7}} of a recursive r); rewrite it "
                        f"so each text has few parses")


class _Parser:
    """A recursive-descent GBNF parser following ``llama_grammar_parser`` (errors say line and column)."""

    def __init__(self, text: str):
        self.src = text + "\0"  # a sentinel, as the C string's terminator
        self.text = text
        self.symbol_ids: dict[str, int] = {}
        self.rules: list[list[tuple[int, int]] | None] = []
        self.ref_sites: dict[int, int] = {}  # rule id -> source offset of its first reference

    # -- errors ------------------------------------------------------------------
    def error(self, msg: str, pos: int) -> GrammarError:
        line = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        snippet = self.text[pos:pos + 20].split("\n")[0]
        return GrammarError(f"grammar line {line}, column {col}: {msg} (at {snippet!r})")

    # -- lexical -----------------------------------------------------------------
    def space(self, pos: int, newline_ok: bool) -> int:
        s = self.src
        while s[pos] in " \t#" or (newline_ok and s[pos] in "\r\n"):
            if s[pos] == "#":
                while s[pos] not in "\0\r\n":
                    pos += 1
            else:
                pos += 1
        return pos

    def name(self, pos: int) -> int:
        end = pos
        while _is_word_char(self.src[end]):
            end += 1
        if end == pos:
            raise self.error("expecting a rule name", pos)
        return end

    def integer(self, pos: int) -> int:
        end = pos
        while "0" <= self.src[end] <= "9":
            end += 1
        if end == pos:
            raise self.error("expecting an integer", pos)
        return end

    def hex(self, pos: int, size: int) -> tuple[int, int]:
        digits = self.src[pos:pos + size]
        if len(digits) != size or any(c not in "0123456789abcdefABCDEF" for c in digits):
            raise self.error(f"expecting {size} hex digits", pos)
        return int(digits, 16), pos + size

    def char(self, pos: int) -> tuple[int, int]:
        s = self.src
        if s[pos] == "\\":
            e = s[pos + 1]
            if e in "xuU":
                return self.hex(pos + 2, {"x": 2, "u": 4, "U": 8}[e])
            simple = {"t": "\t", "r": "\r", "n": "\n", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-"}
            if e in simple:
                return ord(simple[e]), pos + 2
            raise self.error(f"unknown escape '\\{e}' (expecting one of \\x \\u \\U \\t \\r \\n \\\\ \\\" \\[ \\] \\-)",
                             pos)
        if s[pos] == "\0" and pos == len(self.text):
            raise self.error("unexpected end of input", pos)
        return ord(s[pos]), pos + 1

    # -- symbols -----------------------------------------------------------------
    def symbol(self, name: str) -> int:
        return self.symbol_ids.setdefault(name, len(self.symbol_ids))

    def generate_symbol(self, base: str) -> int:
        i = len(self.symbol_ids)
        self.symbol_ids[f"{base}_{i}"] = i
        return i

    def add_rule(self, rule_id: int, rule: list) -> None:
        while len(self.rules) <= rule_id:
            self.rules.append(None)
        self.rules[rule_id] = rule

    # -- grammar -----------------------------------------------------------------
    def parse(self) -> None:
        pos = self.space(0, True)
        while self.src[pos] != "\0" or pos < len(self.text):
            pos = self.rule(pos)
        for name, i in self.symbol_ids.items():
            if i >= len(self.rules) or self.rules[i] is None:
                raise self.error(f"undefined rule '{name}'", self.ref_sites.get(i, 0))

    def rule(self, pos: int) -> int:
        end = self.name(pos)
        name = self.src[pos:end]
        rule_id = self.symbol(name)
        pos = self.space(end, False)
        if self.src[pos:pos + 3] != "::=":
            raise self.error(f"expecting '::=' after rule name '{name}'", pos)
        pos = self.alternates(self.space(pos + 3, True), name, rule_id, False)
        if self.src[pos] == "\r":
            pos += 2 if self.src[pos + 1] == "\n" else 1
        elif self.src[pos] == "\n":
            pos += 1
        elif pos < len(self.text):
            raise self.error("expecting newline or end of input", pos)
        return self.space(pos, True)

    def alternates(self, pos: int, name: str, rule_id: int, nested: bool) -> int:
        rule: list[tuple[int, int]] = []
        pos = self.sequence(pos, name, rule, nested)
        while self.src[pos] == "|":
            rule.append((ALT, 0))
            pos = self.sequence(self.space(pos + 1, True), name, rule, nested)
        rule.append((END, 0))
        self.add_rule(rule_id, rule)
        return pos

    def sequence(self, pos: int, name: str, rule: list, nested: bool) -> int:
        s = self.src
        last = len(rule)  # where the last element (the operand of */+/?/{}) starts
        n_prev_rules = 1

        def repeat(lo: int, hi: int | None, at: int) -> None:
            # S{m,n} -> S (m times) S'(n-m) with S'(x) ::= S S'(x-1) | ; S{m,} -> S (m times) S', S' ::= S S' |
            nonlocal n_prev_rules
            if last == len(rule):
                raise self.error("expecting an item before the repetition operator", at)
            total = hi if (hi is not None and hi > 0) else (lo if lo > 0 else 1)
            if n_prev_rules * total > MAX_REPETITION_THRESHOLD:
                raise self.error("too many repetitions of a complex item (exceeds 2000 rules)", at)
            prev = rule[last:]
            del rule[last:]
            for _ in range(lo):
                rule.extend(prev)
            n_opt = 1 if hi is None else hi - lo
            last_rec = 0
            for i in range(n_opt):
                rec_id = self.generate_symbol(name)
                rec = list(prev)
                if hi is None:
                    rec.append((RULE_REF, rec_id))
                elif i > 0:
                    rec.append((RULE_REF, last_rec))
                rec += [(ALT, 0), (END, 0)]
                self.add_rule(rec_id, rec)
                last_rec = rec_id
            if n_opt > 0:
                rule.append((RULE_REF, last_rec))
            n_prev_rules *= total

        while True:
            c = s[pos]
            if c == "\0" and pos >= len(self.text):
                break
            if c == '"':
                start = pos
                pos += 1
                last, n_prev_rules = len(rule), 1
                while s[pos] != '"':
                    if pos >= len(self.text):
                        raise self.error("unclosed string literal (expecting '\"')", start)
                    cp, pos = self.char(pos)
                    rule.append((CHAR, cp))
                pos = self.space(pos + 1, nested)
            elif c == "[":
                start = pos
                pos += 1
                kind = CHAR
                if s[pos] == "^":
                    pos, kind = pos + 1, CHAR_NOT
                last, n_prev_rules = len(rule), 1
                while s[pos] != "]":
                    if pos >= len(self.text):
                        raise self.error("unclosed character class (expecting ']')", start)
                    cp, pos = self.char(pos)
                    rule.append((CHAR_ALT if last < len(rule) else kind, cp))
                    if s[pos] == "-" and s[pos + 1] != "]":
                        if pos + 1 >= len(self.text):
                            raise self.error("unclosed character class (expecting ']')", start)
                        hi, pos = self.char(pos + 1)
                        rule.append((CHAR_RNG_UPPER, hi))
                pos = self.space(pos + 1, nested)
            elif c in "<!":
                kind = TOKEN
                if c == "!":
                    pos, kind = pos + 1, TOKEN_NOT
                if s[pos:pos + 2] != "<[":
                    raise self.error("expecting a token reference '<[id]>' (token text needs a vocabulary)", pos)
                end = self.integer(pos + 2)
                if s[end:end + 2] != "]>":
                    raise self.error("expecting ']>' after the token id", end)
                last, n_prev_rules = len(rule), 1
                rule.append((kind, int(s[pos + 2:end])))
                pos = self.space(end + 2, nested)
            elif _is_word_char(c):
                end = self.name(pos)
                ref = self.symbol(s[pos:end])
                self.ref_sites.setdefault(ref, pos)
                pos = self.space(end, nested)
                last, n_prev_rules = len(rule), 1
                rule.append((RULE_REF, ref))
            elif c == "(":
                start = pos
                pos = self.space(pos + 1, True)
                n_before = len(self.symbol_ids)
                sub = self.generate_symbol(name)
                pos = self.alternates(pos, name, sub, True)
                n_prev_rules = max(1, len(self.symbol_ids) - n_before)
                last = len(rule)
                rule.append((RULE_REF, sub))
                if s[pos] != ")":
                    raise self.error(f"expecting ')' to close the group opened at column "
                                     f"{start - (self.text.rfind(chr(10), 0, start) + 1) + 1}", pos)
                pos = self.space(pos + 1, nested)
            elif c == ".":
                last, n_prev_rules = len(rule), 1
                rule.append((CHAR_ANY, 0))
                pos = self.space(pos + 1, nested)
            elif c in "*+?":
                at = pos
                pos = self.space(pos + 1, nested)
                repeat(*{"*": (0, None), "+": (1, None), "?": (0, 1)}[c], at)
            elif c == "{":
                at = pos
                pos = self.space(pos + 1, nested)
                end = self.integer(pos)
                lo, hi = int(s[pos:end]), None
                pos = self.space(end, nested)
                if s[pos] == "}":
                    hi = lo
                    pos = self.space(pos + 1, nested)
                elif s[pos] == ",":
                    pos = self.space(pos + 1, nested)
                    if "0" <= s[pos] <= "9":
                        end = self.integer(pos)
                        hi = int(s[pos:end])
                        pos = self.space(end, nested)
                    if s[pos] != "}":
                        raise self.error("expecting '}' to close the repetition", pos)
                    pos = self.space(pos + 1, nested)
                else:
                    raise self.error("expecting ',' or '}' in the repetition", pos)
                if lo > MAX_REPETITION_THRESHOLD:
                    raise self.error("repetition count exceeds 2000", at)
                if hi is not None and hi > MAX_REPETITION_THRESHOLD:
                    hi = None
                if hi is not None and hi < lo:
                    raise self.error(f"repetition {{{lo},{hi}}} has max < min", at)
                repeat(lo, hi, at)
            else:
                break
        return pos


def _detect_left_recursion(rules: list[list[tuple[int, int]]], names: list[str]) -> None:
    """Raise if some rule can reach itself before consuming a char (llama.cpp's check, nullable-aware)."""
    n = len(rules)
    nullable = [False] * n
    changed = True
    while changed:  # fixpoint: a rule is nullable if some alternative is all nullable rule refs
        changed = False
        for i, rule in enumerate(rules):
            if nullable[i]:
                continue
            ok = True
            for t, v in rule:
                if t in (ALT, END):
                    if ok:
                        nullable[i] = changed = True
                        break
                    ok = True
                elif not (t == RULE_REF and nullable[v]):
                    ok = False
    # left edges: i -> j if j is referenced with only nullable refs before it in some alternative
    edges = [set() for _ in range(n)]
    for i, rule in enumerate(rules):
        at_start = True
        for t, v in rule:
            if t in (ALT, END):
                at_start = True
            elif t == RULE_REF and at_start:
                edges[i].add(v)
                at_start = nullable[v]
            else:
                at_start = False
    state = [0] * n  # 0 new, 1 on the DFS path, 2 done
    for root in range(n):
        if state[root]:
            continue
        path = [(root, iter(sorted(edges[root])))]
        state[root] = 1
        while path:
            node, it = path[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                path.pop()
            elif state[nxt] == 1:
                cycle = [names[p] for p, _ in path[[p for p, _ in path].index(nxt):]] + [names[nxt]]
                raise GrammarError(f"left recursion in the grammar: {' -> '.join(cycle)} "
                                   "(rewrite it as repetition, e.g. expr ::= term (\"+\" term)*)")
            elif state[nxt] == 0:
                state[nxt] = 1
                path.append((nxt, iter(sorted(edges[nxt]))))


# =====================================================================================================
# The grammar: flat element arrays and the stack operations
# =====================================================================================================

@dataclass(frozen=True)
class _CharElem:
    positive: bool
    ranges: tuple[tuple[int, int], ...]
    any: bool
    after: int  # flat position of the element following this char element


class Grammar:
    """A parsed GBNF grammar: its rules flattened into one element array, plus the stack operations.

    Positions are indices into ``self.elems``; a stack is a tuple of positions,
    top last. Example::

        g = Grammar.parse('root ::= "a"+ "b"')
        g.matches("aab")   # True
        g.matches("ba")    # False
    """

    def __init__(self, rules: list[list[tuple[int, int]]], names: list[str], root: int, text: str = ""):
        self.text = text
        self.names = names
        self.root_id = root
        self.offsets: list[int] = []
        elems: list[tuple[int, int]] = []
        for rule in rules:
            self.offsets.append(len(elems))
            elems.extend(rule)
        self.elems = elems
        self.chars: dict[int, _CharElem] = {}
        for p, (t, _v) in enumerate(elems):
            if t in (CHAR, CHAR_NOT, CHAR_ANY):  # the first element of a char class or literal char
                self._compile_char(p)
        self._advance_cache: dict[tuple[int, ...], frozenset] = {}
        # each rule's alternatives as their first element's position (None: an empty alternative), so an
        # expansion does not rescan a long rule for its "|"s (found by fuzzing: 12 million scans per step)
        self._alternatives: list[tuple[int | None, ...]] = [self._rule_alternatives(o) for o in self.offsets]
        # Lazily built automaton over stack sets (shared by every matcher of this grammar).
        self._states: list[frozenset] = [frozenset()]  # state 0 = dead (no stack)
        self._state_ids: dict[frozenset, int] = {frozenset(): 0}
        self._trans: list[dict[int, int]] = [{}]
        self._mask_cache: dict[tuple, np.ndarray] = {}
        self._expansions = 0  # stack expansions of the step being computed (MAX_STEP_EXPANSIONS)
        self.start_state = self._intern(self._initial_stacks())

    @classmethod
    def parse(cls, text: str, root: str = "root") -> "Grammar":
        """Parse GBNF ``text``; raises :class:`GrammarError` naming line and column of the first problem."""
        p = _Parser(text)
        p.parse()
        names = [""] * len(p.symbol_ids)
        for name, i in p.symbol_ids.items():
            names[i] = name
        if root not in p.symbol_ids:
            raise GrammarError(f"the grammar has no '{root}' rule (the start symbol)")
        rules = [r for r in p.rules]
        _detect_left_recursion(rules, names)
        return cls(rules, names, p.symbol_ids[root], text)

    # -- element helpers -------------------------------------------------------------
    def _compile_char(self, p: int) -> None:
        elems = self.elems
        t = elems[p][0]
        ranges, any_ = [], False
        q = p
        while True:
            tq, vq = elems[q]
            if elems[q + 1][0] == CHAR_RNG_UPPER:
                ranges.append((vq, elems[q + 1][1]))
                q += 2
            elif tq == CHAR_ANY:
                any_ = True
                q += 1
            else:
                ranges.append((vq, vq))
                q += 1
            if elems[q][0] != CHAR_ALT:
                break
        self.chars[p] = _CharElem(t != CHAR_NOT, tuple(ranges), any_, q)

    def _match_char(self, p: int, cp: int) -> bool:
        ce = self.chars[p]
        found = ce.any or any(lo <= cp <= hi for lo, hi in ce.ranges)
        return found == ce.positive

    def _match_partial(self, p: int, value: int, n_remain: int) -> bool:
        """Could some completion of a partial UTF-8 sequence match the char element at ``p``? (llama.cpp's rule)"""
        if n_remain < 0 or (n_remain == 1 and value < 2):
            return False
        low = value << (n_remain * 6)
        high = low | ((1 << (n_remain * 6)) - 1)
        if low == 0:
            low = {2: 1 << 11, 3: 1 << 16}.get(n_remain, low)
        ce = self.chars[p]
        if ce.any:
            # llama.cpp scans elements in order; "." returns True where it is met
            for lo, hi in ce.ranges:
                if lo <= high and low <= hi:
                    return ce.positive
            return True
        for lo, hi in ce.ranges:
            if lo <= high and low <= hi:
                return ce.positive
        return not ce.positive

    def _is_end(self, p: int) -> bool:
        return self.elems[p][0] in (END, ALT)

    def _rule_alternatives(self, p: int) -> tuple[int | None, ...]:
        starts = []
        while True:
            starts.append(None if self._is_end(p) else p)
            while not self._is_end(p):
                p += 1
            if self.elems[p][0] != ALT:
                return tuple(starts)
            p += 1

    def _initial_stacks(self) -> frozenset:
        out: set = set()
        self._expansions = 0
        for start in self._alternatives[self.root_id]:
            self._advance((start,) if start is not None else (), out)
        return frozenset(out)

    def _advance(self, stack: tuple[int, ...], out: set) -> None:
        """Expand rule references at the top of ``stack`` until every top is a char/token (or the stack is empty)."""
        cached = self._advance_cache.get(stack)
        if cached is None:
            res: set = set()
            todo, seen = [stack], set()
            while todo:
                st = todo.pop()
                if st in seen:
                    continue
                seen.add(st)
                self._expansions += 1 + len(st) // 8  # a deep stack costs its copy: weigh it by depth
                if len(seen) > MAX_PARSE_STACKS or self._expansions > MAX_STEP_EXPANSIONS:
                    raise _too_ambiguous()
                if not st:
                    res.add(st)
                    continue
                p = st[-1]
                t, v = self.elems[p]
                if t == RULE_REF:
                    base = st[:-1] + ((p + 1,) if not self._is_end(p + 1) else ())
                    for sub in self._alternatives[v]:
                        todo.append(base + ((sub,) if sub is not None else ()))
                else:
                    res.add(st)
            cached = self._advance_cache[stack] = frozenset(res)
        out |= cached
        if len(out) > MAX_PARSE_STACKS:
            raise _too_ambiguous()

    # -- states: interned stack sets -----------------------------------------------------
    def _intern(self, stacks: frozenset) -> int:
        sid = self._state_ids.get(stacks)
        if sid is None:
            sid = self._state_ids[stacks] = len(self._states)
            self._states.append(stacks)
            self._trans.append({})
        return sid

    def step(self, state: int, cp: int) -> int:
        """The state after accepting code point ``cp`` in ``state`` (0 = rejected)."""
        nxt = self._trans[state].get(cp)
        if nxt is None:
            out: set = set()
            self._expansions = 0
            for st in self._states[state]:
                if st and st[-1] in self.chars and self._match_char(st[-1], cp):
                    after = self.chars[st[-1]].after
                    self._advance(st[:-1] + ((after,) if not self._is_end(after) else ()), out)
            nxt = self._trans[state][cp] = self._intern(frozenset(out))
        return nxt

    def state_complete(self, state: int) -> bool:
        return () in self._states[state]

    def partial_ok(self, state: int, value: int, n_remain: int) -> bool:
        return any(st and st[-1] in self.chars and self._match_partial(st[-1], value, n_remain)
                   for st in self._states[state])

    def token_tops(self, state: int) -> list[tuple[int, int]]:
        """(TOKEN or TOKEN_NOT, id) for the stacks of ``state`` waiting on a token reference."""
        return [self.elems[st[-1]] for st in self._states[state] if st and self.elems[st[-1]][0] in (TOKEN, TOKEN_NOT)]

    def token_step(self, state: int, token_id: int) -> int:
        out: set = set()
        self._expansions = 0
        for st in self._states[state]:
            if st:
                t, v = self.elems[st[-1]]
                if (t == TOKEN and v == token_id) or (t == TOKEN_NOT and v != token_id):
                    nxt = st[-1] + 1
                    self._advance(st[:-1] + ((nxt,) if not self._is_end(nxt) else ()), out)
        return self._intern(frozenset(out))

    def matches(self, text: str) -> bool:
        """Does the whole of ``text`` belong to the grammar's language?"""
        s = self.start_state
        for ch in text:
            s = self.step(s, ord(ch))
            if not s:
                return False
        return self.state_complete(s)

    def __repr__(self) -> str:
        return f"Grammar({len(self.offsets)} rules, root={self.names[self.root_id]!r})"


# =====================================================================================================
# UTF-8 decoding as llama.cpp's grammar does it
# =====================================================================================================

_UTF8_LEN = (1,) * 8 + (0,) * 4 + (2, 2, 3, 4)  # sequence length by first byte >> 4 (0 = continuation)


def decode_utf8(data: bytes, partial: tuple[int, int] = (0, 0)) -> tuple[list[int], tuple[int, int]] | None:
    """Code points of ``data`` and the partial sequence it ends in, ``(value, n_remain)``, continuing ``partial``.

    Returns None for an invalid sequence (llama.cpp rejects such a token). As
    in llama.cpp, a NUL byte ends the data. Example: ``decode_utf8(b"a\\xe2\\x82")``
    -> ``([97], (0x82 | (0x2 << 6), 1))``.
    """
    z = data.find(b"\0")
    if z >= 0:
        data = data[:z]
    value, n_remain = partial
    cps: list[int] = []
    i, n = 0, len(data)
    while i < n and n_remain > 0:
        b = data[i]
        if b >> 6 != 2:
            return None
        value = (value << 6) + (b & 0x3F)
        i += 1
        n_remain -= 1
    if partial[1] > 0 and n_remain == 0:
        cps.append(value)
    while i < n:
        b = data[i]
        n_remain = _UTF8_LEN[b >> 4] - 1
        if n_remain < 0:
            return None
        value = b & ((1 << (7 - n_remain)) - 1)
        i += 1
        while i < n and n_remain > 0:
            value = (value << 6) + (data[i] & 0x3F)
            i += 1
            n_remain -= 1
        if n_remain == 0:
            cps.append(value)
    return cps, (value, n_remain) if n_remain else (0, 0)


# =====================================================================================================
# The vocabulary as a trie, and the matcher
# =====================================================================================================

class TokenTrie:
    """A prefix tree of a vocabulary's tokens over their code points (built once per tokenizer).

    Node 0 is the root; ``children[node]`` maps a code point to a child node;
    ``ends[node]`` lists the tokens whose complete code points end at that
    node; ``partials[node]`` lists ``((value, n_remain), token ids)`` for tokens
    that end there in an incomplete UTF-8 sequence. Tokens that are end-of-
    generation, empty, start with NUL or hold invalid UTF-8 are not in the trie
    (the grammar never admits them as text).
    """

    def __init__(self, pieces: Sequence[bytes], eog_ids: Iterable[int] = ()):
        self.pieces = list(pieces)
        self.n_vocab = len(self.pieces)
        self.eog = np.zeros(self.n_vocab, dtype=bool)
        for i in eog_ids:
            self.eog[i] = True
        self.children: list[dict[int, int]] = [{}]
        self.ends: list[list[int]] = [[]]
        self.partials: dict[int, list] = {}
        self.textual = np.zeros(self.n_vocab, dtype=bool)  # not EOG, non-empty, no leading NUL
        self.continuation_ids: list[int] = []  # tokens starting with a UTF-8 continuation byte
        for tid, piece in enumerate(self.pieces):
            if self.eog[tid] or not piece or piece[0] == 0:
                continue
            self.textual[tid] = True
            if piece[0] >> 6 == 2:
                self.continuation_ids.append(tid)
            dec = decode_utf8(piece)
            if dec is None:
                continue
            cps, partial = dec
            node = 0
            for cp in cps:
                nxt = self.children[node].get(cp)
                if nxt is None:
                    nxt = self.children[node][cp] = len(self.children)
                    self.children.append({})
                    self.ends.append([])
                node = nxt
            if partial[1]:
                lst = self.partials.setdefault(node, [])
                for entry in lst:
                    if entry[0] == partial:
                        entry[1].append(tid)
                        break
                else:
                    lst.append((partial, [tid]))
            else:
                self.ends[node].append(tid)
        self.items = [list(c.items()) for c in self.children]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "TokenTrie":
        """The trie of a :class:`~zigllama_lib.models.tokenizer.Tokenizer` (pieces as llama.cpp renders them)."""
        return cls([tokenizer.token_bytes(i) for i in range(tokenizer.n_vocab)], tokenizer.eog_ids)

    def __len__(self) -> int:
        return len(self.children)


class GrammarMatcher:
    """Incremental grammar state over tokens: ``mask`` the logits, sample, ``accept`` the token, repeat.

    Usable as generation's ``logits_processor``::

        trie = TokenTrie.from_tokenizer(model.tokenizer)          # once per vocabulary
        m = GrammarMatcher(Grammar.parse(gbnf), trie)
        logits = m.mask(logits)            # disallowed tokens -> -inf (a copy)
        token = sampler(logits); m.accept(token)

    End-of-generation tokens are allowed only when ``is_complete``.
    """

    MASK_CACHE_SIZE = 256

    def __init__(self, grammar: Grammar | str, trie: TokenTrie):
        self.grammar = Grammar.parse(grammar) if isinstance(grammar, str) else grammar
        self.trie = trie
        self.state = self.grammar.start_state
        self.partial = (0, 0)  # an unfinished UTF-8 sequence carried over from the last token
        self.finished = False  # an end-of-generation token was accepted

    @property
    def is_complete(self) -> bool:
        """May the text end here (an end-of-generation token is allowed)?"""
        return self.grammar.state_complete(self.state)

    # -- masks ---------------------------------------------------------------------
    def allowed_mask(self) -> np.ndarray:
        """``(n_vocab,)`` bool: which tokens the grammar admits next."""
        key = (self.state, self.partial)
        cache = self.grammar._mask_cache
        hit = cache.get((id(self.trie),) + key)
        if hit is not None:
            return hit
        trie, g = self.trie, self.grammar
        allowed = np.zeros(trie.n_vocab, dtype=bool)
        if self.partial == (0, 0):
            ids = self._walk(self.state)
            if ids:
                allowed[np.array(ids)] = True
        else:
            for tid in trie.continuation_ids:
                allowed[tid] = self._admits_text(tid)
        for t, v in g.token_tops(self.state):
            if t == TOKEN:
                if 0 <= v < trie.n_vocab and trie.textual[v]:
                    allowed[v] = True
            else:
                keep = trie.textual.copy()
                if 0 <= v < trie.n_vocab:
                    keep[v] = False
                allowed |= keep
        if self.is_complete:
            allowed |= trie.eog
        if len(cache) >= self.MASK_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        allowed.setflags(write=False)
        cache[(id(self.trie),) + key] = allowed
        return allowed

    def _walk(self, state: int) -> list[int]:
        """Depth-first walk of the trie from ``state``: every token whose code points the grammar accepts."""
        g, trie = self.grammar, self.trie
        items, ends, partials = trie.items, trie.ends, trie.partials
        trans, step = g._trans, g.step
        out: list[int] = []
        todo = [(0, state)]
        pop, push = todo.pop, todo.append
        while todo:
            node, st = pop()
            if ends[node]:
                out.extend(ends[node])
            part = partials.get(node)
            if part:
                for (value, n_remain), ids in part:
                    if g.partial_ok(st, value, n_remain):
                        out.extend(ids)
            tr = trans[st]
            for cp, child in items[node]:
                nxt = tr.get(cp)
                if nxt is None:
                    nxt = step(st, cp)
                if nxt:
                    push((child, nxt))
        return out

    def _admits_text(self, tid: int) -> bool:
        dec = decode_utf8(self.trie.pieces[tid], self.partial)
        if dec is None:
            return False
        cps, partial = dec
        st = self.state
        for cp in cps:
            st = self.grammar.step(st, cp)
            if not st:
                return False
        return not partial[1] or self.grammar.partial_ok(st, *partial)

    def allowed(self, token_id: int) -> bool:
        """Does the grammar admit ``token_id`` next?"""
        return bool(self.allowed_mask()[token_id])

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of ``logits`` with the tokens the grammar rejects set to -inf.

        Raises :class:`GrammarError` if the grammar admits no token at all.
        """
        allowed = self.allowed_mask()
        if not allowed.any():
            raise GrammarError("the grammar admits no token here (a dead end: the text so far can only be "
                               "continued by characters no token of the vocabulary starts with)")
        return np.where(allowed, logits, np.float32(-np.inf)).astype(logits.dtype, copy=False)

    __call__ = mask

    # -- accepting -----------------------------------------------------------------------
    def accept(self, token_id: int) -> None:
        """Advance past ``token_id``; raises :class:`GrammarError` if the grammar does not admit it."""
        trie, g = self.trie, self.grammar
        if trie.eog[token_id]:
            if not self.is_complete:
                raise GrammarError(f"end-of-generation token {token_id} before the grammar is complete")
            self.finished = True
            return
        piece = trie.pieces[token_id]
        new = 0
        if g.token_tops(self.state):
            new = g.token_step(self.state, token_id)
        dec = decode_utf8(piece, self.partial)
        if dec is None:
            raise GrammarError(f"token {token_id} ({piece!r}) is not valid UTF-8 here")
        cps, partial = dec
        st = self.state
        for cp in cps:
            st = g.step(st, cp)
            if not st:
                break
        if new and st:
            st = g._intern(g._states[new] | g._states[st])
        elif new:
            st = new
        if not st:
            raise GrammarError(f"token {token_id} ({piece!r}) is not allowed by the grammar here")
        self.state, self.partial = st, partial

    def accept_text(self, text: str | bytes) -> None:
        """Advance past raw text (for tests and prompts): each code point as if generated."""
        data = text.encode("utf-8") if isinstance(text, str) else text
        dec = decode_utf8(data, self.partial)
        if dec is None:
            raise GrammarError(f"{data!r} is not valid UTF-8 here")
        st = self.state
        for cp in dec[0]:
            st = self.grammar.step(st, cp)
            if not st:
                raise GrammarError(f"{data!r} is not allowed by the grammar here (at {chr(cp)!r})")
        self.state, self.partial = st, dec[1]

    def reset(self) -> None:
        self.state, self.partial, self.finished = self.grammar.start_state, (0, 0), False
