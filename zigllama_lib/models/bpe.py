"""Byte-level BPE (GPT-2 style) tokenizer built from GGUF metadata, as llama.cpp runs it.

Encoding a text takes four steps::

    1. special tokens: with parse_special, split the text at special-token strings
    2. pre-tokenize:   split each piece into "words" (the pre-tokenizer named by
                       tokenizer.ggml.pre: letters, numbers, punctuation, spaces...)
    3. byte-map:       each word's UTF-8 bytes -> printable characters (GPT-2's
                       table: byte 0x20 ' ' becomes 'Ġ', 0x0A becomes 'Ċ', ...)
    4. merge:          repeatedly join the adjacent pair with the lowest merge rank
                       (its line number in tokenizer.ggml.merges), leftmost first

Example: " hello" -> word " hello" -> "Ġhello" -> Ġ h e l l o -> ... -> ["Ġhello"].

Decoding maps each token's characters back to bytes and joins them, so
``decode(encode(s)) == s`` for every string.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import regex

from ..foundation.errors import TokenizerError

# token types (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


# -- step 3: GPT-2's byte <-> printable character table ----------------------
@lru_cache(maxsize=1)
def byte_to_char() -> tuple[str, ...]:
    """The 256 characters that stand for bytes 0..255 in byte-level BPE vocabularies.

    Printable Latin-1 bytes stand for themselves; the others (control bytes,
    space, 0x7F-0xA0, 0xAD) are moved to U+0100 onwards, in order.
    """
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return tuple(table[b] for b in range(256))


@lru_cache(maxsize=1)
def char_to_byte() -> dict[str, int]:
    return {c: b for b, c in enumerate(byte_to_char())}


def bytes_to_symbols(data: bytes) -> str:
    table = byte_to_char()
    return "".join(table[b] for b in data)


# -- step 2: pre-tokenizers ----------------------------------------------------
# llama.cpp's definition of \s (unicode.cpp's whitespace ranges); note that
# Python's str.isspace also counts U+001C..U+001F, which llama.cpp does not.
_WHITESPACE = frozenset([*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                         0x2028, 0x2029, 0x202F, 0x205F, 0x3000])


def _is_space(c: str) -> bool:
    return ord(c) in _WHITESPACE


def _is_letter(c: str) -> bool:
    return unicodedata.category(c)[0] == "L"


def _is_number(c: str) -> bool:
    return unicodedata.category(c)[0] == "N"


def split_gpt2(text: str) -> list[str]:
    """GPT-2's pre-tokenizer, as llama.cpp's hand-written matcher runs it::

        's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+

    Example: ``split_gpt2("I'm  fine!")`` -> ``["I", "'m", " ", " fine", "!"]``.
    Quirk kept from llama.cpp: contractions are case-sensitive (``'S`` is not one).
    """
    words, pos, n = [], 0, len(text)
    while pos < n:
        c = text[pos]
        if c == "'" and pos + 1 < n:
            if text[pos + 1] in "stmd":
                words.append(text[pos : pos + 2])
                pos += 2
                continue
            if text[pos + 1 : pos + 3] in ("re", "ve", "ll"):
                words.append(text[pos : pos + 3])
                pos += 3
                continue
        start = pos
        # the class of the character after an optional leading space
        look = text[pos + 1] if c == " " and pos + 1 < n else (None if c == " " else c)
        if look is not None and not _is_space(look):
            pos += c == " "
            if _is_letter(look):
                while pos < n and _is_letter(text[pos]):
                    pos += 1
            elif _is_number(look):
                while pos < n and _is_number(text[pos]):
                    pos += 1
            else:
                while pos < n and not (_is_space(text[pos]) or _is_letter(text[pos]) or _is_number(text[pos])):
                    pos += 1
            words.append(text[start:pos])
            continue
        run = 0
        while pos + run < n and _is_space(text[pos + run]):
            run += 1
        if run > 1 and pos + run < n:  # \s+(?!\S): leave the last space to the next word
            pos += run - 1
        elif run > 0:
            pos += run
        else:  # a lone character no rule matches
            pos += 1
        words.append(text[start:pos])
    return words


def split_llama3(text: str) -> list[str]:
    """Llama 3's pre-tokenizer, as llama.cpp's hand-written matcher runs it::

        (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}
        | ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+
    """
    words, pos, n = [], 0, len(text)
    while pos < n:
        c = text[pos]
        start = pos
        if c == "'" and pos + 1 < n:
            if text[pos + 1].lower() in "stmd":
                words.append(text[pos : pos + 2])
                pos += 2
                continue
            if text[pos + 1 : pos + 3].lower() in ("re", "ve", "ll"):
                words.append(text[pos : pos + 3])
                pos += 3
                continue
        if not (c in "\r\n" or _is_number(c)) and (_is_letter(c) or (pos + 1 < n and _is_letter(text[pos + 1]))):
            pos += 1
            while pos < n and _is_letter(text[pos]):
                pos += 1
            words.append(text[start:pos])
            continue
        if _is_number(c):
            while pos < n and _is_number(text[pos]) and pos - start < 3:
                pos += 1
            words.append(text[start:pos])
            continue
        look = text[pos + 1] if c == " " and pos + 1 < n else (None if c == " " else c)
        if look is not None and not (_is_space(look) or _is_letter(look) or _is_number(look)):
            pos += c == " "
            while pos < n and not (_is_space(text[pos]) or _is_letter(text[pos]) or _is_number(text[pos])):
                pos += 1
            while pos < n and text[pos] in "\r\n":
                pos += 1
            words.append(text[start:pos])
            continue
        run, last_newline = 0, 0
        while pos + run < n and _is_space(text[pos + run]):
            if text[pos + run] in "\r\n":
                last_newline = pos + run + 1
            run += 1
        if last_newline:
            pos = last_newline
        elif run > 1 and pos + run < n:
            pos += run - 1
        elif run > 0:
            pos += run
        else:
            pos += 1
        words.append(text[start:pos])
    return words


def regex_splitter(pattern: str) -> Callable[[str], list[str]]:
    """Split at matches of ``pattern``: both matches and the text between them become pieces."""
    compiled = regex.compile(pattern)

    def split(text: str) -> list[str]:
        out, last = [], 0
        for m in compiled.finditer(text):
            if m.start() > last:
                out.append(text[last : m.start()])
            if m.end() > m.start():
                out.append(m.group())
            last = m.end()
        if last < len(text):
            out.append(text[last:])
        return out

    return split


_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_QWEN2_RE = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.ggml.pre -> the splitters applied in turn (each splits every piece of the previous)
PRE_TOKENIZERS: dict[str, tuple[Callable[[str], list[str]], ...]] = {}
for _names, _steps in (
    (("gpt-2", "gpt2", "mpt", "olmo", "jais"), (split_gpt2,)),
    (("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"),
     (regex_splitter(r"\p{N}"), split_gpt2)),
    (("llama-bpe", "llama3", "dbrx", "smaug-bpe"), (split_llama3,)),
    (("qwen2", "stablelm2", "hunyuan"), (regex_splitter(_QWEN2_RE),)),
    (("default",), (regex_splitter(r"[\p{P}\$\+<=>\^~\|]+"), split_gpt2, regex_splitter(r"\p{N}+"),
                    regex_splitter(r"[0-9][0-9][0-9]"))),
):
    for _name in _names:
        PRE_TOKENIZERS[_name] = _steps


def pre_tokenize(text: str, steps: Iterable[Callable[[str], list[str]]]) -> list[str]:
    pieces = [text] if text else []
    for step in steps:
        pieces = [w for p in pieces for w in step(p)]
    return pieces


# -- the tokenizer ---------------------------------------------------------------
class Tokenizer:
    """Byte-level BPE tokenizer. Build it with :meth:`from_metadata`."""

    def __init__(self, tokens: list[str], token_types: np.ndarray, merges: list[str], pre: str,
                 bos_id: int | None, eos_id: int | None, add_bos: bool, add_eos: bool,
                 eot_id: int | None = None, eom_id: int | None = None, unk_id: int | None = None):
        if pre not in PRE_TOKENIZERS:
            raise TokenizerError(f"unknown pre-tokenizer {pre!r} (tokenizer.ggml.pre); "
                                 f"supported: {', '.join(sorted(PRE_TOKENIZERS))}")
        self.tokens = tokens
        self.token_types = np.asarray(token_types, dtype=np.int32)
        self.pre = pre
        self._steps = PRE_TOKENIZERS[pre]
        self.token_to_id = {t: i for i, t in enumerate(tokens)}
        self.ranks: dict[tuple[str, str], int] = {}
        for rank, line in enumerate(merges):
            a, sep, b = line.partition(" ")
            if not sep or a not in self.token_to_id or b not in self.token_to_id:
                raise TokenizerError(f"merge #{rank} {line!r} does not join two known tokens")
            self.ranks[(a, b)] = rank
        for name, tid in (("bos", bos_id), ("eos", eos_id), ("eot", eot_id), ("eom", eom_id), ("unk", unk_id)):
            if tid is not None and not 0 <= tid < len(tokens):
                raise TokenizerError(f"{name} token id {tid} is outside the vocabulary of {len(tokens)}")
        self.bos_id, self.eos_id, self.eot_id, self.eom_id, self.unk_id = bos_id, eos_id, eot_id, eom_id, unk_id
        self.add_bos, self.add_eos = add_bos, add_eos
        if add_bos and bos_id is None:
            raise TokenizerError("add_bos_token is true but tokenizer.ggml.bos_token_id is not set")
        # special tokens matched by parse_special, longest first (as llama.cpp)
        special = [i for i, t in enumerate(self.token_types) if t in (CONTROL, USER_DEFINED, UNKNOWN)]
        self._special = sorted(special, key=lambda i: -len(tokens[i]))
        self._user_defined = [i for i in self._special if self.token_types[i] == USER_DEFINED]
        self._eog = {i for i in (eos_id, eot_id, eom_id) if i is not None}
        self._cache: dict[str, list[int]] = {}
        self._byte_table = char_to_byte()

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any]) -> "Tokenizer":
        model = md.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise TokenizerError(f"tokenizer.ggml.model {model!r} is not byte-level BPE ('gpt2')")
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if key not in md:
                raise TokenizerError(f"missing metadata key {key!r}")
        tokens = list(md["tokenizer.ggml.tokens"])
        types = md.get("tokenizer.ggml.token_type")
        types = np.full(len(tokens), NORMAL, np.int32) if types is None else np.asarray(types)
        if len(types) != len(tokens):
            raise TokenizerError(f"{len(types)} token types for {len(tokens)} tokens")

        def opt_id(key):
            v = md.get(key)
            return None if v is None or v < 0 or v == 0xFFFFFFFF else int(v)

        return cls(tokens, types, list(md["tokenizer.ggml.merges"]), md.get("tokenizer.ggml.pre", "default"),
                   bos_id=opt_id("tokenizer.ggml.bos_token_id"), eos_id=opt_id("tokenizer.ggml.eos_token_id"),
                   add_bos=bool(md.get("tokenizer.ggml.add_bos_token", False)),
                   add_eos=bool(md.get("tokenizer.ggml.add_eos_token", False)),
                   eot_id=opt_id("tokenizer.ggml.eot_token_id"), eom_id=opt_id("tokenizer.ggml.eom_token_id"),
                   unk_id=opt_id("tokenizer.ggml.unknown_token_id"))

    # -- vocabulary ---------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    def is_eog(self, token_id: int) -> bool:
        """End of generation: EOS, EOT or EOM."""
        return token_id in self._eog

    def id_to_piece(self, token_id: int) -> str:
        self._check_id(token_id)
        return self.tokens[token_id]

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < len(self.tokens):
            raise TokenizerError(f"token id {token_id} is outside the vocabulary of {len(self.tokens)}")

    def token_bytes(self, token_id: int, render_special: bool = True) -> bytes:
        """The bytes token ``token_id`` stands for (control tokens: their text, or b"")."""
        self._check_id(token_id)
        t = self.token_types[token_id]
        text = self.tokens[token_id]
        if t == CONTROL:
            return text.encode("utf-8", "surrogateescape") if render_special else b""
        if t == USER_DEFINED:
            return text.encode("utf-8", "surrogateescape")
        table = self._byte_table
        try:
            return bytes(table[c] for c in text)
        except KeyError:  # not byte-mapped text (some vocabularies): take it as UTF-8
            return text.encode("utf-8", "surrogateescape")

    # -- encoding -----------------------------------------------------------
    def _merge(self, symbols: list[str]) -> list[str]:
        """Apply merges, lowest rank first (leftmost on ties), until none applies."""
        ranks = self.ranks
        while len(symbols) > 1:
            best, best_rank = -1, None
            for i in range(len(symbols) - 1):
                r = ranks.get((symbols[i], symbols[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best < 0:
                break
            symbols[best : best + 2] = [symbols[best] + symbols[best + 1]]
        return symbols

    def _encode_word(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        ids = []
        for sym in self._merge(list(bytes_to_symbols(word.encode("utf-8", "surrogatepass")))):
            tid = self.token_to_id.get(sym)
            if tid is not None:
                ids.append(tid)
            else:  # a merge result missing from the vocabulary: fall back to single characters
                ids.extend(self.token_to_id[c] for c in sym if c in self.token_to_id)
        if len(self._cache) < 100_000:
            self._cache[word] = ids
        return ids

    def _split_special(self, text: str, parse_special: bool) -> list[str | int]:
        """Split ``text`` at special-token strings: a list of text pieces and token ids."""
        specials = self._special if parse_special else self._user_defined
        pieces: list[str | int] = [text]
        for tid in specials:
            needle = self.tokens[tid]
            if not needle:
                continue
            out: list[str | int] = []
            for p in pieces:
                if isinstance(p, int) or needle not in p:
                    out.append(p)
                    continue
                parts = p.split(needle)
                for k, part in enumerate(parts):
                    if part:
                        out.append(part)
                    if k < len(parts) - 1:
                        out.append(tid)
            pieces = out
        return pieces

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of ``text``; BOS/EOS added per metadata when ``add_special``.

        Example: ``encode("Hello world", add_special=False)`` -> ``[19556, 905]`` (SmolLM2).
        """
        if not isinstance(text, str):
            raise TokenizerError(f"encode needs a str, got {type(text).__name__}")
        ids: list[int] = []
        if add_special and self.add_bos:
            ids.append(self.bos_id)
        for piece in self._split_special(text, parse_special):
            if isinstance(piece, int):
                ids.append(piece)
                continue
            for word in pre_tokenize(piece, self._steps):
                ids.extend(self._encode_word(word))
        if add_special and self.add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of ``ids`` (control tokens rendered as their text unless ``skip_special``)."""
        data = b"".join(self.token_bytes(int(i), render_special=not skip_special) for i in ids)
        return data.decode("utf-8", errors="replace")

    # -- teaching -----------------------------------------------------------
    def pre_tokenize(self, text: str) -> list[str]:
        """The words the pre-tokenizer cuts ``text`` into."""
        return pre_tokenize(text, self._steps)

    def merge_steps(self, text: str) -> list[list[list[bytes]]]:
        """For each word of ``text``: the parts after each merge, as bytes.

        Example (SmolLM2): ``merge_steps(" hi")[0]`` ->
        ``[[b' ', b'h', b'i'], [b' h', b'i'], [b' hi']]``.
        """
        table = self._byte_table
        out = []
        for word in self.pre_tokenize(text):
            symbols = list(bytes_to_symbols(word.encode("utf-8", "surrogatepass")))
            steps = [[bytes(table[c] for c in s) for s in symbols]]
            while len(symbols) > 1:
                before = len(symbols)
                best = min(((self.ranks[(a, b)], i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))
                            if (a, b) in self.ranks), default=None)
                if best is None:
                    break
                i = best[1]
                symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
                steps.append([bytes(table[c] for c in s) for s in symbols])
                if len(symbols) == before:
                    break
            out.append(steps)
        return out
