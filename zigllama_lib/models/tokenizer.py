"""Tokenizers built from GGUF metadata, token for token as llama.cpp (``llama-vocab.cpp``).

``Tokenizer.from_metadata(md)`` reads ``tokenizer.ggml.model`` and builds

* ``"gpt2"``  -> :class:`BPETokenizer`, byte-level BPE (SmolLM2, Llama 3, Qwen 2, GPT-2 ...);
* ``"llama"`` -> :class:`~.tokenizer_spm.SPMTokenizer`, SentencePiece-style (Gemma 3, Llama 2 ...).

Byte-level BPE encodes a text in four steps::

    "Hi <|im_end|> 42!"
    1. special tokens  ["Hi ", 2, " 42!"]           only with parse_special for CONTROL tokens;
                                                    USER_DEFINED tokens are always cut out
    2. pre-tokenize    ["Hi", " "] [" ", "4", "2", "!"]    (pretokenizers.py, per tokenizer.ggml.pre)
    3. byte map        "Hi" -> "Hi", " " -> "Ġ"      each UTF-8 byte -> one printable character
    4. merge           repeatedly join the adjacent pair whose merge line comes first
                       in tokenizer.ggml.merges (lowest rank; leftmost on ties)

Decoding maps each token back to bytes (``token_bytes``) and joins them, so
``decode(encode(s, add_special=False)) == s`` for every string ``s`` (lone
surrogates included: text is UTF-8 encoded with ``surrogatepass``, as the
bytes llama.cpp would be given, and decoded back the same way).

Where we differ from llama.cpp on purpose
-----------------------------------------
* ``decode`` never tidies spaces (llama.cpp's ``llama_detokenize`` removes the
  space in ``" ,"``, ``" 's"`` ... for some vocabularies), so that the round
  trip above holds; invalid UTF-8 decodes to U+FFFD.
* Merge lines that do not join two known tokens are an error here; llama.cpp
  keeps them (they can never fire).

llama.cpp quirks reproduced
---------------------------
* A word whose merged piece is not in the vocabulary falls back to the tokens
  of its single bytes, silently dropping bytes without a token.
* ``ignore_merges`` pre-tokenizers (llama3, tekken, ...) take a word that is a
  whole token as that token, without merging.
* A NORMAL token whose text has a character outside the byte map decodes to
  ``[UNK_BYTE_0x<utf-8 hex><token text>]``; UNUSED and UNDEFINED tokens decode to nothing.
* See ``pretokenizers.py`` for the splitting quirks and ``tokenizer_vocab.py``
  for the special-id and attribute ones.
"""

from __future__ import annotations

import codecs
import heapq
import operator
import warnings
from functools import lru_cache
from typing import Any, Iterable, Mapping

from ..foundation.errors import TokenizerError
from .pretokenizers import NOT_IMPLEMENTED, PRE_TOKENIZERS, PreTokenizer, PreTokenizerSpec
from .tokenizer_vocab import (
    ATTR_BYTE,
    ATTR_CONTROL,
    ATTR_LSTRIP,
    ATTR_NORMAL,
    ATTR_RSTRIP,
    ATTR_UNKNOWN,
    ATTR_USER_DEFINED,
    DEFAULT_IDS,
    KEY,
    SpecialIds,
    Vocab,
    load_vocab,
    require,
)

_C_SPACE = " \t\n\v\f\r"  # C isspace(), what llama.cpp's lstrip/rstrip remove
_CACHE_LIMIT = 100_000  # words remembered per tokenizer


# -- bytes <-> text ---------------------------------------------------------------

def _decode_error_handler(err: UnicodeDecodeError) -> tuple[str, int]:
    """Decode an encoded lone surrogate (ED A0..BF 80..BF) as itself; anything else invalid as U+FFFD."""
    data, i = err.object, err.start
    if data[i] == 0xED and i + 2 < len(data) and 0xA0 <= data[i + 1] <= 0xBF and 0x80 <= data[i + 2] <= 0xBF:
        return chr(0xD000 | (data[i + 1] & 0x3F) << 6 | data[i + 2] & 0x3F), i + 3
    return "\ufffd", err.end


codecs.register_error("zigllama.tokens", _decode_error_handler)


def text_to_utf8(text: str) -> bytes:
    """The bytes llama.cpp is given for ``text`` (lone surrogates as 3-byte sequences).

    Example: ``text_to_utf8("é\\ud800")`` -> ``b"\\xc3\\xa9\\xed\\xa0\\x80"``.
    """
    return text.encode("utf-8", "surrogatepass")


def utf8_to_text(data: bytes) -> str:
    """Inverse of :func:`text_to_utf8`; other invalid UTF-8 becomes U+FFFD.

    Example: ``utf8_to_text(b"a\\xed\\xa0\\x80\\xff")`` -> ``"a\\ud800\\ufffd"``.
    """
    return data.decode("utf-8", "zigllama.tokens")


@lru_cache(maxsize=1)
def byte_symbols() -> tuple[str, ...]:
    """GPT-2's 256 printable stand-ins for bytes 0..255 (byte-level BPE's alphabet).

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space,
    0x7F-0xA0, 0xAD) move to U+0100 onwards, in byte order.
    Example: ``byte_symbols()[0x20]`` -> ``"Ġ"``, ``byte_symbols()[ord("A")]`` -> ``"A"``.
    """
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return tuple(out)


_TO_SYMBOLS = {b: s for b, s in enumerate(byte_symbols())}  # for str.translate on latin-1 text
_FROM_SYMBOLS = {s: b for b, s in enumerate(byte_symbols())}


def bytes_to_symbols(data: bytes) -> str:
    """Byte-map ``data`` (one character per byte). Example: ``bytes_to_symbols(b" hi")`` -> ``"Ġhi"``."""
    return data.decode("latin-1").translate(_TO_SYMBOLS)


def symbols_to_bytes(text: str) -> bytes:
    """Inverse of :func:`bytes_to_symbols` (KeyError on a character outside the map)."""
    return bytes(_FROM_SYMBOLS[c] for c in text)


def _strtol_hex(s: str) -> int:
    """C ``strtol(s, NULL, 16)`` for llama.cpp's ``<0xXX>`` byte tokens: leading hex digits, else 0."""
    digits = ""
    for c in s:
        if c not in "0123456789abcdefABCDEF":
            break
        digits += c
    return int(digits, 16) if digits else 0


def check_id(token_id: Any, n_vocab: int) -> int:
    """``token_id`` as an int in [0, n_vocab), or TokenizerError."""
    try:
        i = operator.index(token_id)
    except TypeError:
        raise TokenizerError(f"token id {token_id!r} is not an integer") from None
    if not 0 <= i < n_vocab:
        raise TokenizerError(f"token id {i} is out of range: the vocabulary has {n_vocab} tokens (0..{n_vocab - 1})")
    return i


# -- the common part: vocabulary, special tokens, decoding ----------------------

class Tokenizer:
    """A GGUF tokenizer; build one with :meth:`from_metadata`.

    Example (SmolLM2)::

        tok = Tokenizer.from_metadata(GGUFFile(path).metadata)
        tok.encode("Hello world")            # -> [19556, 905]
        tok.decode([19556, 905])             # -> "Hello world"
        tok.encode("<|im_start|>", parse_special=True)   # -> [1]
    """

    model = ""  # tokenizer.ggml.model
    # Jinja source of the chat template: the file's ``tokenizer.chat_template``, or the
    # built-in named by ``chat_template_name`` when the file has none (set by models.loader).
    chat_template: str | None = None
    chat_template_name: str | None = None

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self._attrs = vocab.attrs.tolist()  # plain ints: faster in loops than numpy scalars
        self._special_order = vocab.special_ids_longest_first()
        self._pieces: dict[int, bytes] = {}

    # -- construction ------------------------------------------------------
    @classmethod
    def from_metadata(cls, md: Mapping[str, Any]) -> "Tokenizer":
        """The tokenizer ``md`` describes (``tokenizer.ggml.model``: ``"gpt2"`` or ``"llama"``)."""
        model = require(md, KEY + "model")
        if model == "gpt2":
            return BPETokenizer.from_metadata(md)
        if model == "llama":
            from .tokenizer_spm import SPMTokenizer

            return SPMTokenizer.from_metadata(md)
        raise TokenizerError(f"tokenizer.ggml.model {model!r} is not supported (supported: 'gpt2', 'llama')")

    # -- vocabulary ----------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return self.vocab.n_vocab

    @property
    def ids(self) -> SpecialIds:
        return self.vocab.ids

    @property
    def bos_id(self) -> int | None:
        return self.vocab.ids.bos

    @property
    def eos_id(self) -> int | None:
        return self.vocab.ids.eos

    @property
    def eot_id(self) -> int | None:
        return self.vocab.ids.eot

    @property
    def eom_id(self) -> int | None:
        return self.vocab.ids.eom

    @property
    def unk_id(self) -> int | None:
        return self.vocab.ids.unk

    @property
    def pad_id(self) -> int | None:
        return self.vocab.ids.pad

    @property
    def add_bos(self) -> bool:
        return self.vocab.add_bos

    @property
    def add_eos(self) -> bool:
        return self.vocab.add_eos

    @property
    def eog_ids(self) -> frozenset[int]:
        """Every id that ends generation (llama.cpp's ``special_eog_ids``)."""
        return self.vocab.eog

    def is_eog(self, token_id: int) -> bool:
        """True for end-of-generation ids: EOS, EOT, EOM, FIM pad/repo/sep and well-known end texts."""
        return token_id in self.vocab.eog

    @property
    def end_of_turn_ids(self) -> frozenset[int]:
        """Ids a chat reply stops at (SmolLM2 ``<|im_end|>``, Gemma ``<end_of_turn>``): the EOG set."""
        return self.vocab.eog

    def apply_chat_template(self, messages, add_generation_prompt: bool = False, tokenize: bool = True,
                            tools=None, chat_template: str | None = None, **kwargs) -> str | list[int]:
        """Render ``messages`` with the model's chat template (transformers' signature).

        Returns the prompt text when ``tokenize=False``, else its ids, encoded with
        ``parse_special=True`` and ``add_special=False``: the template writes BOS
        where it wants one (``bos_token``), as transformers does. ``chat_template``:
        another Jinja source or built-in name; ``kwargs`` reach the template
        (``documents=``, ``enable_thinking=``...).
        Example (SmolLM2): ``apply_chat_template([{"role": "user", "content": "Hi"}], True, False)``
        -> ``"<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"``.
        """
        from .chat_template import render_chat_template

        template = chat_template if chat_template is not None else self.chat_template
        if template is None:
            raise TokenizerError("this tokenizer has no chat template (the model loader sets one); "
                                 "pass chat_template= (Jinja source or a built-in name such as 'chatml')")
        specials = {"bos_token": self._special_text(self.bos_id), "eos_token": self._special_text(self.eos_id)}
        text = render_chat_template(template, messages, add_generation_prompt=add_generation_prompt, tools=tools,
                                    **{**specials, **kwargs})
        return self.encode(text, add_special=False, parse_special=True) if tokenize else text

    def _special_text(self, token_id: int | None) -> str:
        return self.vocab.texts[token_id] if token_id is not None and 0 <= token_id < self.n_vocab else ""

    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary string of ``token_id`` as stored (``"Ġworld"``, ``"<|im_end|>"``)."""
        return self.vocab.tokens[check_id(token_id, self.n_vocab)]

    def token_attr(self, token_id: int) -> int:
        """llama.cpp's attribute bits of ``token_id`` (``tokenizer_vocab.ATTR_*``)."""
        return self._attrs[check_id(token_id, self.n_vocab)]

    # -- decoding ----------------------------------------------------------
    def token_bytes(self, token_id: int, render_special: bool = True) -> bytes:
        """The raw bytes of one token (llama.cpp's ``token_to_piece``).

        CONTROL and UNKNOWN tokens give their text, or b"" when ``render_special``
        is False. Example (SmolLM2): ``token_bytes(905)`` -> ``b" world"``,
        ``token_bytes(2, render_special=False)`` -> ``b""``.
        """
        i = check_id(token_id, self.n_vocab)
        if not render_special and self._attrs[i] & (ATTR_CONTROL | ATTR_UNKNOWN):
            return b""
        piece = self._pieces.get(i)
        if piece is None:
            piece = self._pieces[i] = self._piece(i)
        return piece

    def _piece(self, i: int) -> bytes:
        """The rendered bytes of token ``i`` with specials shown (per tokenizer kind)."""
        raise NotImplementedError

    def _raw_text(self, i: int) -> bytes:
        return self.vocab.texts[i].encode("utf-8", "surrogateescape")

    def decode_bytes(self, ids: Iterable[int], skip_special: bool = False) -> bytes:
        """The bytes of ``ids`` joined (CONTROL/UNKNOWN tokens dropped when ``skip_special``)."""
        return b"".join(self.token_bytes(i, not skip_special) for i in ids)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """The text of ``ids``. Example (SmolLM2): ``decode([19556, 905])`` -> ``"Hello world"``."""
        return utf8_to_text(self.decode_bytes(ids, skip_special))

    # -- encoding ------------------------------------------------------------
    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of ``text``.

        ``add_special``: add BOS / EOS as the metadata says (``add_bos_token`` /
        ``add_eos_token``). ``parse_special``: also turn the text of CONTROL
        tokens (``"<|im_start|>"``) into those tokens (llama.cpp's ``special=True``);
        USER_DEFINED tokens are always recognised.
        Example (SmolLM2): ``encode("Hello world")`` -> ``[19556, 905]``.
        """
        if not isinstance(text, str):
            raise TokenizerError(f"encode needs a str, got {type(text).__name__}")
        ids: list[int] = []
        if add_special and self.vocab.add_bos:
            ids.append(self.vocab.ids.bos)
        ids.extend(self._encode_fragments(self.partition(text, parse_special)))
        if add_special and self.vocab.add_eos:
            ids.append(self.vocab.ids.eos)
        return ids

    def _encode_fragments(self, fragments: list[str | int]) -> list[int]:
        """Ids of a partitioned text (str: raw text, int: a special token already found)."""
        raise NotImplementedError

    def partition(self, text: str, parse_special: bool = False) -> list[str | int]:
        """Cut ``text`` at special-token texts, longest token first (llama.cpp's ``tokenizer_st_partition``).

        Example (SmolLM2): ``partition("a<|im_end|>b", True)`` -> ``["a", 2, "b"]``.
        """
        fragments: list[str | int] = [text] if text else []
        for tid in self._special_order:
            attr = self._attrs[tid]
            if not parse_special and attr & (ATTR_CONTROL | ATTR_UNKNOWN):
                continue
            needle = self.vocab.texts[tid]
            if any(isinstance(f, str) and needle in f for f in fragments):
                fragments = _cut_at(fragments, needle, tid, bool(attr & ATTR_LSTRIP), bool(attr & ATTR_RSTRIP))
        return fragments

    # -- teaching ------------------------------------------------------------
    def pre_tokenize(self, text: str) -> list[str]:
        """The words the pre-tokenizer cuts ``text`` into (no special-token parsing)."""
        raise NotImplementedError

    def merge_steps(self, text: str) -> list[list[list[bytes]]]:
        """For each word of ``text``: its parts before the first merge and after each merge, as bytes."""
        raise NotImplementedError


def _cut_at(fragments: list[str | int], needle: str, tid: int, lstrip: bool, rstrip: bool) -> list[str | int]:
    """Replace every occurrence of ``needle`` in the text fragments by ``tid``.

    ``lstrip``/``rstrip``: also drop C whitespace just before/after it (token attributes).
    Example: ``_cut_at(["a<x>b<x>"], "<x>", 7, False, False)`` -> ``["a", 7, "b", 7]``.
    """
    out: list[str | int] = []
    for frag in fragments:
        if isinstance(frag, int) or needle not in frag:
            out.append(frag)
            continue
        rest = frag
        while rest:
            k = rest.find(needle)
            if k < 0:
                out.append(rest)
                break
            left = rest[:k].rstrip(_C_SPACE) if lstrip else rest[:k]
            if left:
                out.append(left)
            out.append(tid)
            rest = rest[k + len(needle):]
            if rstrip:
                rest = rest.lstrip(_C_SPACE)
    return out


# -- byte-level BPE --------------------------------------------------------------

def parse_merges(merges: Iterable[str], token_to_id: Mapping[str, int]) -> dict[tuple[str, str], int]:
    """``tokenizer.ggml.merges`` -> {(left, right): rank}; the first of duplicate pairs wins.

    Each line is ``"left right"`` split at the first space after its first
    character (as llama.cpp). Example: ``parse_merges(["Ġ t", "h e"], vocab)``
    -> ``{("Ġ", "t"): 0, ("h", "e"): 1}``.
    """
    ranks: dict[tuple[str, str], int] = {}
    for rank, line in enumerate(merges):
        if not isinstance(line, str):
            raise TokenizerError(f"merge #{rank} is not a string: {line!r}")
        cut = line.find(" ", 1)
        left, right = (line[:cut], line[cut + 1:]) if cut > 0 else ("", "")
        if left not in token_to_id or right not in token_to_id:
            raise TokenizerError(f"merge #{rank} {line!r} does not join two tokens of the vocabulary")
        ranks.setdefault((left, right), rank)
    return ranks


def bpe_merge(parts: list[str], ranks: Mapping[tuple[str, str], int],
              steps: list[list[str]] | None = None) -> list[str]:
    """Merge adjacent parts, lowest rank first (leftmost on ties), until no pair has a rank.

    llama.cpp's queue-based loop: a heap of candidate pairs; a popped pair is
    skipped if either side was merged away meanwhile. ``steps``, if given,
    receives the parts after each merge. Example with ranks {("a","b"): 0,
    ("ab","c"): 1}: ``bpe_merge(["a", "b", "c"], ranks)`` -> ``["abc"]``.
    """
    n = len(parts)
    if n < 2:
        return parts
    parts = list(parts)  # (n,) current text of each symbol; "" once merged into its left neighbour
    nxt = list(range(1, n)) + [-1]
    prv = list(range(-1, n - 1))
    heap = [(r, i, i + 1, parts[i] + parts[i + 1]) for i in range(n - 1)
            if (r := ranks.get((parts[i], parts[i + 1]))) is not None]
    heapq.heapify(heap)
    while heap:
        _, left, right, joined = heapq.heappop(heap)
        if not parts[left] or not parts[right] or parts[left] + parts[right] != joined:
            continue  # outdated
        parts[left], parts[right] = joined, ""
        nxt[left] = nxt[right]
        if nxt[left] >= 0:
            prv[nxt[left]] = left
        for a, b in ((prv[left], left), (left, nxt[left])):
            if a >= 0 and b >= 0 and (r := ranks.get((parts[a], parts[b]))) is not None:
                heapq.heappush(heap, (r, a, b, parts[a] + parts[b]))
        if steps is not None:
            steps.append([p for p in parts if p])
    return [p for p in parts if p]


def pre_tokenizer_spec(md: Mapping[str, Any]) -> tuple[str, PreTokenizerSpec]:
    """(name, spec) of ``tokenizer.ggml.pre``; missing or empty -> "default" with a warning, as llama.cpp."""
    name = md.get(KEY + "pre")
    if name is None or name == "":
        warnings.warn("tokenizer.ggml.pre is missing: using the 'default' pre-tokenizer "
                      "(llama.cpp warns that generation quality will be degraded)", stacklevel=3)
        name = "default"
    if name in NOT_IMPLEMENTED:
        raise TokenizerError(f"pre-tokenizer {name!r} (tokenizer.ggml.pre) is known to llama.cpp but not "
                             "implemented here")
    if name not in PRE_TOKENIZERS:
        raise TokenizerError(f"unknown pre-tokenizer type {name!r} (tokenizer.ggml.pre); supported: "
                             f"{', '.join(sorted(PRE_TOKENIZERS))}")
    return name, PRE_TOKENIZERS[name]


class BPETokenizer(Tokenizer):
    """Byte-level BPE (``tokenizer.ggml.model = "gpt2"``)."""

    model = "gpt2"

    def __init__(self, vocab: Vocab, ranks: dict[tuple[str, str], int], pre_name: str, spec: PreTokenizerSpec):
        super().__init__(vocab)
        self.ranks = ranks
        self.pre = pre_name
        self.pre_tokenizer = PreTokenizer(pre_name, spec.exprs)
        self.ignore_merges = spec.ignore_merges
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any]) -> "BPETokenizer":
        """Build from GGUF metadata with llama.cpp's defaults for the pre-tokenizer."""
        pre_name, spec = pre_tokenizer_spec(md)
        defaults = DEFAULT_IDS["gpt2"]
        if spec.no_bos:
            defaults = SpecialIds(**{**defaults.__dict__, "bos": None})
        vocab = load_vocab(md, spec.add_bos, False, defaults, default_add_space_prefix=False)
        merges = require(md, KEY + "merges")
        if isinstance(merges, (str, bytes)):
            raise TokenizerError(f"metadata key {KEY + 'merges'!r} must be an array of strings")
        return cls(vocab, parse_merges(merges, vocab.token_to_id), pre_name, spec)

    # -- encoding ------------------------------------------------------------
    def pre_tokenize(self, text: str) -> list[str]:
        """Words of ``text``. Example (smollm): ``pre_tokenize("I'm 42")`` -> ``["I", "'m", " ", "4", "2"]``."""
        return self.pre_tokenizer.split(text)

    def _encode_fragments(self, fragments: list[str | int]) -> list[int]:
        ids: list[int] = []
        for frag in fragments:
            if isinstance(frag, int):
                ids.append(frag)
            else:
                for word in self.pre_tokenizer.split(frag):
                    ids.extend(self.encode_word(word))
        return ids

    def encode_word(self, word: str) -> list[int]:
        """Ids of one pre-token word (cached). Example (SmolLM2): ``encode_word(" world")`` -> ``[905]``."""
        ids = self._cache.get(word)
        if ids is None:
            symbols = bytes_to_symbols(text_to_utf8(word))
            whole = self.vocab.token_to_id.get(symbols) if self.ignore_merges else None
            ids = [whole] if whole is not None else self.parts_to_ids(bpe_merge(list(symbols), self.ranks))
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[word] = ids
        return ids

    def parts_to_ids(self, parts: list[str]) -> list[int]:
        """Token ids of merged parts; a part missing from the vocabulary falls back to its bytes' tokens."""
        token_to_id = self.vocab.token_to_id
        ids = []
        for part in parts:
            tid = token_to_id.get(part)
            if tid is not None:
                ids.append(tid)
                continue
            for b in part.encode("utf-8"):  # llama.cpp: single bytes of the mapped text; missing ones dropped
                tid = token_to_id.get(bytes([b]).decode("utf-8", "surrogateescape"))
                if tid is not None:
                    ids.append(tid)
        return ids

    # -- decoding ----------------------------------------------------------
    def _piece(self, i: int) -> bytes:
        attr = self._attrs[i]
        if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED):
            return self._raw_text(i)
        if attr & ATTR_NORMAL:
            return _unmap_token_text(self.vocab.texts[i])
        if attr & ATTR_BYTE:
            return bytes([_strtol_hex(self.vocab.texts[i][3:5]) & 0xFF])
        return b""  # UNUSED, UNDEFINED

    # -- teaching ------------------------------------------------------------
    def merge_steps(self, text: str) -> list[list[list[bytes]]]:
        """Per pre-token word: the parts (as bytes) at the start and after each merge.

        Example (SmolLM2): ``merge_steps(" hi")`` ->
        ``[[[b" ", b"h", b"i"], [b" h", b"i"], [b" hi"]]]`` (which pair merges
        first depends on the ranks). A word that ``ignore_merges`` takes whole
        shows two steps: its bytes, then itself.
        """
        out = []
        for word in self.pre_tokenize(text):
            symbols = bytes_to_symbols(text_to_utf8(word))
            steps: list[list[str]] = [list(symbols)]
            if self.ignore_merges and symbols in self.vocab.token_to_id:
                steps.append([symbols])
            else:
                bpe_merge(list(symbols), self.ranks, steps)
            out.append([[symbols_to_bytes(p) for p in step] for step in steps])
        return out


def _unmap_token_text(text: str) -> bytes:
    """A NORMAL byte-level token's bytes (llama.cpp's ``llama_decode_text``, quirks included)."""
    out = bytearray()
    for c in text:
        b = _FROM_SYMBOLS.get(c)
        if b is not None:
            out.append(b)
            continue
        cp = 0xFFFD if 0xDC80 <= ord(c) <= 0xDCFF else ord(c)  # undecodable byte -> U+FFFD, as llama.cpp
        utf8 = chr(cp).encode("utf-8", "surrogatepass")
        out += b"[UNK_BYTE_0x" + utf8.hex().encode() + text.encode("utf-8", "surrogateescape") + b"]"
    return bytes(out)
