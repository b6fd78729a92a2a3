"""Pre-tokenizers: cut text into "words" before BPE, exactly as llama.cpp does.

Byte-level BPE never merges across word boundaries, so the split decides a lot:
``" hello world"`` becomes ``[" hello", " world"]`` and each word is merged on
its own. Every GGUF names its split in ``tokenizer.ggml.pre``; llama.cpp maps
that name to a list of regular expressions (``llm_tokenizer_bpe`` in
``llama-vocab.cpp``) and applies them in turn, each one cutting the pieces the
previous one left (``unicode_regex_split`` in ``unicode.cpp``)::

    smollm:  r"\\p{N}"  then  GPT-2's  r"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
    "x 123"  -> ["x 123"] -> ["x ", "1", "2", "3"] -> ["x", " ", "1", "2", "3"]

A match and the text between two matches both become pieces; nothing is lost,
so ``"".join(split(text)) == text``.

How llama.cpp runs a regex (and how we reproduce it)
----------------------------------------------------
llama.cpp does not use a Unicode regex engine. A few expressions (GPT-2's,
Llama 3's, Qwen's, the digit groupers) have hand-written matchers; the others go to C++
``std::regex`` (ECMAScript, bytes) after a trick: each code point >= 128 is
*collapsed* to one stand-in byte naming its class, and each ``\\p{X}`` in the
pattern becomes a class of that stand-in plus the ASCII members::

    non-ASCII whitespace -> 0x0B    \\p{N} -> [\\xD1 0-9]      \\p{L} -> [\\xD2 A-Za-z]
    \\p{P} -> [\\xD3 !-#%-*,-/:-;?-@[-]_{}]   \\p{M} -> [\\xD4]   \\p{S} -> [\\xD5 $+<=>^`|~]
    anything else (C, unassigned, ...) -> 0xD0

We do the same: :func:`collapse` maps the text (same length, so offsets carry
over) and :func:`translate` rewrites the pattern, which the ``regex`` package
then runs with ASCII semantics for ``\\s``, ``\\d``, ``\\w``, ``\\b``, as
``std::regex`` has. The hand-written matchers agree with their regexes run the
same way (checked case by case against the C++ code and against llama.cpp
itself), so one mechanism serves every pre-tokenizer, except the digit grouper
of quirk 8.

llama.cpp quirks reproduced here (each checked against llama.cpp itself)
-----------------------------------------------------------------------
1. Code point classes are Unicode **15.1** (llama.cpp's ``unicode-data.cpp``),
   not the newer Unicode of the installed ``regex`` package: the code points
   first assigned in Unicode 16.0 / 17.0 (:data:`POST_15_1`, e.g. the Garay
   letters U+10D4A.. or the emoji U+1FAE9) count as unassigned ("other"), so
   GPT-2's split treats a Garay word like punctuation.
2. In patterns that go through ``std::regex``, every ``\\p{Lu}``, ``\\p{Ll}``,
   ``\\p{Lt}``, ``\\p{Lm}``, ``\\p{Lo}`` means all of ``\\p{L}`` (so tekken's
   and GPT-4o's case-aware patterns only see case for ASCII letters).
3. In a pattern without ``\\p{..}`` (run by ``std::wregex`` on code points),
   non-ASCII whitespace is first replaced by U+000B, so a literal U+3000 in a
   pattern (deepseek-llm's ``[　-。]``) never matches the text's U+3000.
4. ``\\s`` is Unicode ``White_Space`` (the ``regex`` package's ``\\s``): U+001C..
   U+001F are *not* whitespace, although Python's ``str.isspace`` says they are.
5. ECMAScript's ``$`` matches only at the very end (Python's also before a
   final newline), and ``.`` excludes ``\\r``, U+2028, U+2029 as well as ``\\n``.
6. An empty match (a pure lookahead, e.g. superbpe's digit grouping) still
   cuts the text at its position.
7. GPT-2's hand-written matcher also ends in ``|\\s+`` and matches a lone
   leftover character by itself: the same pieces the regex gives.
8. tiny_aya's ``\\d{1,3}(?=(?:\\d{3})*\\b)`` and AFMoE's ``\\p{AFMoE_digits}``
   are not run as regexes but by one hand-written digit grouper
   (:func:`split_digit_groups`): any run of ``\\p{N}`` (not only ASCII digits, and
   whatever follows it) is cut into a 1-2 digit head and groups of three, and
   the text before a run is glued to the run's first group (a later expression
   separates them again).
9. AFMoE's CJK class was written with U+8C48 (a unified ideograph) where
   U+F900 was meant, so its range U+8C48-U+FAFF also covers Hangul and more.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable

import regex

# -- 1. code point classes, as llama.cpp's Unicode 15.1 tables ----------------

# Code points first assigned in Unicode 16.0 or 17.0 (inclusive ranges): the
# ones a Unicode-17 ``regex`` package classifies but llama.cpp's tables (Unicode
# 15.1) leave unassigned, found by comparing the two code point by code point.
# With a ``regex`` package older than Unicode 15.1, the 15.1 additions (U+2FFC..,
# U+31EF, CJK extension I) would wrongly count as unassigned.
POST_15_1: tuple[tuple[int, int], ...] = (
    (0x00558, 0x00558), (0x0058B, 0x0058C), (0x005C8, 0x005C9), (0x0088F, 0x0088F), (0x00897, 0x00897),
    (0x00B53, 0x00B54), (0x00C5C, 0x00C5C), (0x00CDC, 0x00CDC), (0x01ACF, 0x01AF0), (0x01B4E, 0x01B4F),
    (0x01B7F, 0x01B7F), (0x01C89, 0x01C8A), (0x0208F, 0x0208F), (0x0209D, 0x0209F), (0x020C1, 0x020C4),
    (0x02427, 0x02429), (0x02B96, 0x02B96), (0x02E60, 0x02E63), (0x031E4, 0x031E5), (0x0A7CB, 0x0A7CF),
    (0x0A7D2, 0x0A7D2), (0x0A7D4, 0x0A7D4), (0x0A7DA, 0x0A7DD), (0x0A7E2, 0x0A7E2), (0x0A7F1, 0x0A7F1),
    (0x0AB6C, 0x0AB6D), (0x0FBC3, 0x0FBD2), (0x0FD90, 0x0FD91), (0x0FDC8, 0x0FDCE), (0x105C0, 0x105F3),
    (0x107BB, 0x107BF), (0x10940, 0x10959), (0x10D40, 0x10D65), (0x10D69, 0x10D85), (0x10D8E, 0x10D8F),
    (0x10EC2, 0x10EC7), (0x10EC9, 0x10EEE), (0x10EF0, 0x10EFC), (0x11380, 0x11389), (0x1138B, 0x1138B),
    (0x1138E, 0x1138E), (0x11390, 0x113B5), (0x113B7, 0x113C0), (0x113C2, 0x113C2), (0x113C5, 0x113C5),
    (0x113C7, 0x113CA), (0x113CC, 0x113D5), (0x113D7, 0x113D8), (0x113E1, 0x113E2), (0x116D0, 0x116E3),
    (0x11B0A, 0x11B0A), (0x11B60, 0x11B67), (0x11BC0, 0x11BE1), (0x11BF0, 0x11BF9), (0x11DB0, 0x11DDB),
    (0x11DE0, 0x11DE9), (0x11DF0, 0x11DF1), (0x11F5A, 0x11F5A), (0x1246F, 0x1246F), (0x12475, 0x1247F),
    (0x12550, 0x12686), (0x13460, 0x143FA), (0x16100, 0x16139), (0x16D40, 0x16D79), (0x16EA0, 0x16EB8),
    (0x16EBB, 0x16ED3), (0x16FF2, 0x16FF6), (0x187F8, 0x187FF), (0x18CD6, 0x18CDA), (0x18CFF, 0x18CFF),
    (0x18D09, 0x18D20), (0x18D80, 0x18DF2), (0x18E00, 0x19191), (0x191A0, 0x191D2), (0x1B123, 0x1B128),
    (0x1B168, 0x1B168), (0x1CC00, 0x1CCFC), (0x1CD00, 0x1CEB3), (0x1CEBA, 0x1CED0), (0x1CED2, 0x1CED4),
    (0x1CEDD, 0x1CEFD), (0x1D127, 0x1D128), (0x1D1EB, 0x1D1FF), (0x1D250, 0x1D281), (0x1D6A6, 0x1D6A6),
    (0x1DB00, 0x1DB1C), (0x1DF1F, 0x1DF24), (0x1DF2B, 0x1DF81), (0x1DF90, 0x1DF96), (0x1DFCD, 0x1DFFF),
    (0x1E5D0, 0x1E5FA), (0x1E5FF, 0x1E5FF), (0x1E6C0, 0x1E6DE), (0x1E6E0, 0x1E6F5), (0x1E6FE, 0x1E6FF),
    (0x1F1AE, 0x1F1AE), (0x1F6D8, 0x1F6D9), (0x1F777, 0x1F77A), (0x1F7DA, 0x1F7DB), (0x1F7F1, 0x1F7FF),
    (0x1F8B2, 0x1F8BB), (0x1F8C0, 0x1F8C1), (0x1F8D0, 0x1F8D8), (0x1FA54, 0x1FA57), (0x1FA89, 0x1FA8F),
    (0x1FABE, 0x1FABE), (0x1FAC6, 0x1FAC6), (0x1FAC8, 0x1FAC8), (0x1FACC, 0x1FACD), (0x1FADC, 0x1FADD),
    (0x1FADF, 0x1FADF), (0x1FAE9, 0x1FAEB), (0x1FAEF, 0x1FAEF), (0x1FAF9, 0x1FAFA), (0x1FBCB, 0x1FBEF),
    (0x1FBFA, 0x1FBFA), (0x2B73A, 0x2B73F), (0x2B81E, 0x2B81E), (0x2CEA2, 0x2CEAD), (0x323B0, 0x33479),
    (0x3D000, 0x3FC3F),
)

# the stand-in byte of each class in llama.cpp's collapsed text
WHITESPACE, OTHER, NUMBER, LETTER, PUNCTUATION, MARK, SYMBOL = "\x0b", "\xd0", "\xd1", "\xd2", "\xd3", "\xd4", "\xd5"

_CLASS_OF = regex.compile(r"(?P<ws>\s)|(?P<n>\p{N})|(?P<l>\p{L})|(?P<p>\p{P})|(?P<m>\p{M})|(?P<s>\p{S})")
_STAND_IN = {"ws": WHITESPACE, "n": NUMBER, "l": LETTER, "p": PUNCTUATION, "m": MARK, "s": SYMBOL}


def _is_post_15_1(cp: int) -> bool:
    """True if ``cp`` was assigned after Unicode 15.1 (binary search in :data:`POST_15_1`)."""
    lo, hi = 0, len(POST_15_1)
    while lo < hi:
        mid = (lo + hi) // 2
        if POST_15_1[mid][1] < cp:
            lo = mid + 1
        else:
            hi = mid
    return lo < len(POST_15_1) and POST_15_1[lo][0] <= cp


def stand_in(cp: int) -> str:
    """llama.cpp's collapsed character for code point ``cp`` (ASCII stays itself).

    Example: ``stand_in(ord("é"))`` -> ``"\\xd2"`` (a letter); ``stand_in(0x3000)``
    -> ``"\\x0b"`` (whitespace); ``stand_in(ord("a"))`` -> ``"a"``.
    """
    if cp < 128:
        return chr(cp)
    if _is_post_15_1(cp):
        return OTHER
    m = _CLASS_OF.match(chr(cp))
    return _STAND_IN[m.lastgroup] if m else OTHER


class _CollapseTable(dict):
    """``str.translate`` table that fills itself: code point -> stand-in."""

    def __missing__(self, cp: int) -> str:
        value = self[cp] = stand_in(cp)
        return value


class _WideTable(dict):
    """``str.translate`` table for std::wregex patterns: only non-ASCII whitespace changes."""

    def __missing__(self, cp: int) -> str:
        value = self[cp] = WHITESPACE if cp >= 128 and stand_in(cp) == WHITESPACE else chr(cp)
        return value


_COLLAPSE = _CollapseTable({cp: chr(cp) for cp in range(128)})
_WIDE = _WideTable({cp: chr(cp) for cp in range(128)})


def collapse(text: str) -> str:
    """The text llama.cpp's ``std::regex`` sees: one stand-in per code point.

    Example: ``collapse("Ça va, 東京!")`` -> ``"\\xd2a va, \\xd2\\xd2!"`` (same length).
    """
    return text.translate(_COLLAPSE)


def widen(text: str) -> str:
    """The text llama.cpp's ``std::wregex`` sees: non-ASCII whitespace -> U+000B.

    Example: ``widen("a\\u3000b")`` -> ``"a\\x0bb"``.
    """
    return text.translate(_WIDE)


# -- 2. patterns: llama.cpp's collapsing rewrite -------------------------------

Span = tuple[int, int]  # [start, end) in code points

_CATEGORY_CLASS = {  # \p{X} -> stand-in + ASCII members (llama.cpp's k_ucat_cpt / k_ucat_map)
    "N": NUMBER + "0-9",
    "L": LETTER + "A-Za-z",
    "P": PUNCTUATION + r"!-#%-*,-/:-;?-@\[-\]_\{\}",
    "M": MARK,
    "S": SYMBOL + r"\$\+<->\^`\|\~",
}
_CATEGORY_CLASS.update({sub: _CATEGORY_CLASS["L"] for sub in ("Lu", "Ll", "Lt", "Lm", "Lo")})
_PROPERTY = regex.compile(r"\\p\{([A-Za-z]+)\}")


def uses_categories(expr: str) -> bool:
    """True if ``expr`` has a ``\\p{..}`` llama.cpp collapses (so it runs on collapsed text)."""
    return any(m.group(1) in _CATEGORY_CLASS for m in _PROPERTY.finditer(expr))


def translate(expr: str, collapsed: bool) -> str:
    """Rewrite one of llama.cpp's patterns for the ``regex`` package, ECMAScript-style.

    ``collapsed``: replace each ``\\p{X}`` by its stand-in class (bracketed when
    outside ``[...]``). Always: unescaped ``$`` outside brackets -> ``\\Z`` and
    ``.`` -> ``[^\\n\\r\\u2028\\u2029]`` (ECMAScript meanings).

    Example: ``translate(r" ?\\p{L}+", True)`` -> ``" ?[\\xd2A-Za-z]+"``.
    """
    out, i, inside = [], 0, False
    while i < len(expr):
        c = expr[i]
        if c == "\\" and i + 1 < len(expr):
            m = _PROPERTY.match(expr, i) if collapsed else None
            if m and m.group(1) in _CATEGORY_CLASS:
                cls = _CATEGORY_CLASS[m.group(1)]
                out.append(cls if inside else f"[{cls}]")
                i = m.end()
                continue
            out.append(expr[i : i + 2])
            i += 2
            continue
        if c == "[" and not inside:
            inside = True
        elif c == "]" and inside:
            inside = False
        elif c == "$" and not inside:
            c = r"\Z"
        elif c == "." and not inside:
            c = "[^\\n\\r\\u2028\\u2029]"
        out.append(c)
        i += 1
    return "".join(out)


@dataclass(frozen=True)
class CompiledExpr:
    """One of llama.cpp's split expressions, ready to run on collapsed or widened text."""

    source: str  # llama.cpp's pattern, as written there
    pattern: regex.Pattern | None  # the translated pattern (None: a hand-written splitter)
    collapsed: bool  # True: runs on collapse(text); False: on widen(text)
    custom: Callable[[str, list[Span]], list[Span]] | None = None  # llama.cpp's hand-written splitter


@lru_cache(maxsize=None)
def compile_expr(expr: str) -> CompiledExpr:
    """Compile one llama.cpp split expression (cached).

    Example: ``compile_expr(r"\\p{N}").pattern.pattern`` -> ``"[\\xd10-9]"``.
    """
    if expr in CUSTOM_SPLITTERS:
        return CompiledExpr(expr, None, True, CUSTOM_SPLITTERS[expr])
    collapsed = uses_categories(expr)
    if collapsed and any(ord(c) >= 128 for c in expr):
        # llama.cpp refuses these too ("Regex includes both unicode categories and non-ASCII characters")
        raise ValueError(f"pattern mixes \\p{{..}} and non-ASCII characters: {expr!r}")
    return CompiledExpr(expr, regex.compile(translate(expr, collapsed), regex.ASCII), collapsed)




def split_digit_groups(view: str, spans: Iterable[Span]) -> list[Span]:
    """llama.cpp's hand-written digit grouper (quirk 8), on collapsed text.

    Each run of numbers is cut into a head of ``len % 3`` digits and groups of
    three; text before a run joins the run's first piece.

    Example: ``split_digit_groups("ab1234cd", [(0, 8)])`` ->
    ``[(0, 3), (3, 6), (6, 8)]``, i.e. ``["ab1", "234", "cd"]``.
    """
    out: list[Span] = []
    for start, end in spans:
        prev = pos = start
        while pos < end:
            if not _is_number(view[pos]):
                pos += 1
                continue
            run = pos
            while pos < end and _is_number(view[pos]):
                pos += 1
            head = run + (pos - run) % 3  # end of the 0-2 digit head
            for cut in ([head] if head > run else []) + list(range(head + 3, pos + 1, 3)):
                out.append((prev, cut))
                prev = cut
        if prev < end:
            out.append((prev, end))
    return out


def _is_number(c: str) -> bool:
    return c == NUMBER or "0" <= c <= "9"


def split_spans(view: str, spans: Iterable[Span], pattern: regex.Pattern) -> list[Span]:
    """Cut every span of ``view`` at the matches of ``pattern`` (matches and gaps both kept).

    Example: ``split_spans("ab12", [(0, 4)], regex.compile("[0-9]"))`` ->
    ``[(0, 2), (2, 3), (3, 4)]``.
    """
    out: list[Span] = []
    for start, end in spans:
        last = start
        for m in pattern.finditer(view, start, end):
            a, b = m.span()
            if a > last:
                out.append((last, a))
            if b > a:  # quirk 6: an empty match is a cut, not a piece
                out.append((a, b))
            last = b
        if last < end:
            out.append((last, end))
    return out


class PreTokenizer:
    """llama.cpp's split for one ``tokenizer.ggml.pre``: a list of expressions applied in turn.

    Example::

        PreTokenizer.named("smollm").split("I'm  fine 42")
        # -> ["I", "'m", " ", " fine", " ", "4", "2"]
    """

    def __init__(self, name: str, exprs: Iterable[str]):
        self.name = name
        self.exprs = tuple(compile_expr(e) for e in exprs)  # (n_exprs,)

    @classmethod
    def named(cls, name: str) -> "PreTokenizer":
        """The pre-tokenizer ``tokenizer.ggml.pre = name`` selects (KeyError if unknown)."""
        return cls(name, PRE_TOKENIZERS[name].exprs)

    def split_spans(self, text: str) -> list[Span]:
        """Word boundaries of ``text`` as code point spans (empty text: no words)."""
        spans: list[Span] = [(0, len(text))] if text else []
        views: dict[bool, str] = {}
        for e in self.exprs:
            if e.collapsed not in views:
                views[e.collapsed] = collapse(text) if e.collapsed else widen(text)
            view = views[e.collapsed]
            spans = e.custom(view, spans) if e.custom else split_spans(view, spans, e.pattern)
        return spans

    def split(self, text: str) -> list[str]:
        """The words of ``text``; ``"".join(split(text)) == text``."""
        return [text[a:b] for a, b in self.split_spans(text)]


# -- 4. the pre-tokenizers llama.cpp knows ------------------------------------

# llama.cpp's expressions (llm_tokenizer_bpe in llama-vocab.cpp), by pre-tokenizer type
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_CASED_WORDS = (  # GPT-4o style: an optional lead, upper-case run then lower-case run (or the reverse)
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+{c}"
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*{c}"
)
_CASED_CLASSES = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+{c}"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*{c}"
)
_DEEPSEEK_LATIN = (  # deepseek-llm's letters, as llama.cpp lists them
    "\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376"
    "\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f"
    "\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d"
    "\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb"
    "\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
    "\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4"
    "\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
    "\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"
)
# deepseek-v3 / spark: a punctuation mark glued to the Latin word after it (note the raw CR LF)
_PUNCT_LATIN = "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+"

EXPRS: dict[str, tuple[str, ...]] = {
    "DEFAULT": (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
    "GPT2": (GPT2,),
    "STARCODER": (r"\p{N}", GPT2),  # also refact, command-r, smollm, codeshell, exaone, minerva, mellum2
    "FALCON": (r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"),
    "LLAMA3": (LLAMA3,),  # also dbrx, smaug, chatglm4
    "QWEN2": (QWEN2,),  # also stablelm2, hunyuan, solar-open, grok-2
    "QWEN35": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "MINICPM5": (r"\p{N}{1,3}", _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+"),
    "SEED_CODER": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+"
                   r"|\s+(?!\S)|\s+",),
    "BAILINGMOE": (r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",),
    "UFAKZEKA": (r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "LAGUNA": (r"[^\n]+|[\n]+", QWEN2),
    "EXAONE_MOE": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",),
    "JAIS2": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              + "".join(rf"|\s{{{n}}}(?!\S)" for n in (512, 256, 128, 64, 32, 16, 8, 4)) + r"|\s{1,2}(?!\S)|\s{1}",),
    "DEEPSEEK_LLM": ("[\r\n]", _DEEPSEEK_LATIN, "\\s?[!-/:-~！-／：-～‘-‟　-。]+", "\\s+$", "[一-龥ࠀ-一가-퟿]+",
                     r"\p{N}+"),
    "DEEPSEEK_CODER": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}"),
    "DEEPSEEK3_LLM": (r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
                      _PUNCT_LATIN + "|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+"
                      "|\\s+(?!\\S)|\\s+"),  # also hunyuan-dense, joyai-llm, hy_v4
    "SPARK2_5": (r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
                 _PUNCT_LATIN + "|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+|[\r\n]|\\s+(?!\\S)|\\s+",
                 r"\p{N}"),
    "YOUTU": ("[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥぀-ゟ゠-ヿ]+",
              _CASED_CLASSES.replace("{c}", _CONTRACTIONS + "?")
              + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    "PORO": (" ?[^(\\s|.,!?…。，、।۔،)]+",),  # also bloom, gpt3-finnish
    "VIKING": (" ?[^(\\s|.,!?…。，、।۔،)]+", r"\p{N}"),
    "TEKKEN": (_CASED_WORDS.replace("{c}", "") + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "CHAMELEON": ("<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )", r"\p{N}",
                  r"[\p{P}!-/:-@\[-`{-~]", GPT2),
    "GPT4O": (_CASED_WORDS.replace("{c}", _CONTRACTIONS + "?")
              + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",),  # also minimax-m2
    "GRANITE_EMB_MULTI": (_CASED_WORDS.replace("[\\p{L}]", "[\\p{L}\\p{M}]").replace("{c}", _CONTRACTIONS + "?")
                          + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "TINY_AYA": (r"\d{1,3}(?=(?:\d{3})*\b)",
                 _CASED_CLASSES.replace("{c}", _CONTRACTIONS + "?")
                 + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    "SUPERBPE": (r"\p{N}+", r"(?=(\d{3})+(?!\d))"),
    "AFMOE": (r"\p{AFMoE_digits}",
              "[\u4e00-\u9fff\u3400-\u4dbf\u8c48-\ufaff\u3040-\u309f\u30a0-\u30ff\uff65-\uff9f\u2f00-\u2fdf"
              "\u0e40-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f\uaa60-\uaa7f\ua9e0-\ua9ff\uac00-\ud7af"
              "\u1100-\u11ff]+",  # quirk 9: \u8c48 where \uf900 was meant
              _PUNCT_LATIN + r"|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+"),
}

# expressions llama.cpp does not run as regexes but by hand-written code (quirk 8)
CUSTOM_SPLITTERS: dict[str, Callable[[str, list[Span]], list[Span]]] = {
    r"\p{AFMoE_digits}": split_digit_groups,
    r"\d{1,3}(?=(?:\d{3})*\b)": split_digit_groups,
}


@dataclass(frozen=True)
class PreTokenizerSpec:
    """What ``tokenizer.ggml.pre = name`` sets in llama.cpp's ``llama_vocab::impl::load``."""

    kind: str  # llama.cpp's pre-tokenizer type, a key of EXPRS
    ignore_merges: bool = False  # a word that is a whole token is taken as is, unmerged
    add_bos: bool = False  # default of add_bos_token when the metadata lacks it
    clean_spaces: bool = True  # llama.cpp's detokenizer tidies " ," etc. (we never do: see tokenizer.py)
    no_bos: bool = False  # the BOS id defaults to none (chatglm)

    @property
    def exprs(self) -> tuple[str, ...]:
        return EXPRS[self.kind]


def _specs() -> dict[str, PreTokenizerSpec]:
    s = PreTokenizerSpec
    table: dict[str, PreTokenizerSpec] = {"default": s("DEFAULT")}
    groups: list[tuple[tuple[str, ...], PreTokenizerSpec]] = [
        (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
          "jina-v5-nano"), s("LLAMA3", ignore_merges=True, add_bos=True)),
        (("minicpm5",), s("MINICPM5", ignore_merges=True)),
        (("deepseek-llm",), s("DEEPSEEK_LLM", clean_spaces=False)),
        (("deepseek-coder",), s("DEEPSEEK_CODER", clean_spaces=False)),
        (("deepseek-v3",), s("DEEPSEEK3_LLM", clean_spaces=False)),
        (("spark2_5",), s("SPARK2_5", clean_spaces=False)),
        (("youtu",), s("YOUTU", clean_spaces=False, ignore_merges=True)),
        (("falcon",), s("FALCON")),
        (("mpt", "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
          "mellum", "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "olmo", "jais", "exaone4"),
         s("GPT2")),
        (("starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"), s("STARCODER")),
        (("command-r", "smollm"), s("STARCODER", clean_spaces=False)),
        (("jais-2",), s("JAIS2")),
        (("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open", "grok-2"),
         s("QWEN2", clean_spaces=False)),
        (("stablelm2", "megrez"), s("QWEN2")),
        (("qwen35",), s("QWEN35", clean_spaces=False)),
        (("dbrx", "smaug-bpe"), s("LLAMA3")),
        (("poro-chat",), s("PORO", clean_spaces=False)),
        (("bloom", "gpt3-finnish"), s("PORO")),
        (("glm4", "chatglm-bpe"), s("LLAMA3", no_bos=True)),
        (("viking",), s("VIKING", clean_spaces=False)),
        (("tekken",), s("TEKKEN", clean_spaces=False, ignore_merges=True, add_bos=True)),
        (("exaone-moe",), s("EXAONE_MOE")),
        (("chameleon",), s("CHAMELEON", add_bos=True, clean_spaces=False)),
        (("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), s("GPT4O", clean_spaces=False)),
        (("granite-embed-multi-97m",), s("GRANITE_EMB_MULTI", clean_spaces=False, ignore_merges=True)),
        (("tiny_aya", "cohere2moe"), s("TINY_AYA", clean_spaces=False)),
        (("superbpe",), s("SUPERBPE", clean_spaces=False)),
        (("trillion", "granite-docling"), s("GPT2", clean_spaces=False)),
        (("bailingmoe", "bailingmoe2", "llada-moe"), s("BAILINGMOE", clean_spaces=False)),
        (("seed-coder",), s("SEED_CODER", clean_spaces=False)),
        (("hunyuan-dense", "hy_v4", "joyai-llm"), s("DEEPSEEK3_LLM", clean_spaces=False)),
        (("ufakzeka",), s("UFAKZEKA", clean_spaces=False)),
        (("laguna",), s("LAGUNA", clean_spaces=False)),
        (("afmoe",), s("AFMOE", clean_spaces=False)),
    ]
    for names, spec in groups:
        for name in names:
            table[name] = spec
    return table


PRE_TOKENIZERS: dict[str, PreTokenizerSpec] = _specs()

# names llama.cpp knows but splits with hand-written code or a non-byte-level
# scheme that this module does not reproduce
NOT_IMPLEMENTED: frozenset[str] = frozenset(
    {"kimi-k2", "gemma4", "granite-embed-multi-311m", "sarvam-moe", "whitespace"}
)
