"""SentencePiece-style tokenizer (``tokenizer.ggml.model = "llama"``), as llama.cpp's SPM path.

Used by Gemma 3, Llama 1/2, Mistral v0.1 ... There is no pre-tokenizer: each raw
fragment (text between special tokens) is one "word"::

    "Hello world"
    1. space prefix   " Hello world"       only if add_space_prefix and the fragment starts the
                                           text or follows a special token
    2. escape spaces  "▁Hello▁world"       every " " -> U+2581
    3. characters     ▁ H e l l o ▁ w o r l d
    4. merge          repeatedly join the adjacent pair whose concatenation is a
                      token with the highest score (leftmost on ties)
    5. emit           each final piece's token; a piece with no token -> its bytes'
                      tokens "<0xXX>" (byte fallback)

Decoding turns "▁" back into " ", a ``<0xXX>`` token into its byte, and (with
``add_space_prefix``) drops one leading space of the first token, as
``llama_detokenize`` does.

Quirks reproduced: the bytes are cut into "characters" by their lead byte only
(as ``unicode_len_utf8``), the merge candidates are any tokens whose text
matches (CONTROL, BYTE and UNUSED ones included), and a final piece without a
token is rebuilt from the pair that last produced that text (llama.cpp's
``rev_merge``) before falling back to bytes.
"""

from __future__ import annotations

import heapq
from typing import Any, Mapping

from ..foundation.errors import TokenizerError
from .tokenizer import Tokenizer, _strtol_hex, text_to_utf8
from .tokenizer_vocab import (
    ATTR_BYTE,
    ATTR_CONTROL,
    ATTR_NORMAL,
    ATTR_UNKNOWN,
    ATTR_USER_DEFINED,
    DEFAULT_IDS,
    Vocab,
    load_vocab,
)

SPACE = "\u2581".encode()  # b"\xe2\x96\x81", SentencePiece's visible space


def utf8_lengths(data: bytes) -> list[int]:
    """Start offsets of llama.cpp's "characters": lengths from lead bytes only, clipped at the end.

    Example: ``utf8_lengths("a▁é".encode())`` -> ``[0, 1, 4, 6]`` (the last entry is ``len(data)``).
    """
    lookup = (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)  # by the high nibble of the lead byte
    starts, pos = [0], 0
    while pos < len(data):
        pos = min(pos + lookup[data[pos] >> 4], len(data))
        starts.append(pos)
    return starts


class _Symbols:
    """The merge state: symbol ``i`` spans ``data[lo[i]:hi[i]]`` (empty once merged away)."""

    def __init__(self, lo: list[int], hi: list[int], rev_merge: dict[bytes, tuple[int, int]]):
        self.lo, self.hi, self.rev_merge = lo, hi, rev_merge

    def parts(self) -> list[tuple[int, int]]:
        """(start, end) of the surviving symbols, in order."""
        return [(a, b) for a, b in zip(self.lo, self.hi) if b > a]


class SPMTokenizer(Tokenizer):
    """SentencePiece-style BPE over scores, with byte fallback."""

    model = "llama"

    def __init__(self, vocab: Vocab):
        super().__init__(vocab)
        self.by_bytes = {t.encode("utf-8", "surrogateescape"): i for t, i in vocab.token_to_id.items()}
        self.scores = vocab.scores.tolist()  # (n_vocab,) float
        self.add_space_prefix = vocab.add_space_prefix

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any]) -> "SPMTokenizer":
        """Build from GGUF metadata (llama.cpp's SPM defaults: add_bos, add_space_prefix)."""
        return cls(load_vocab(md, True, False, DEFAULT_IDS["llama"], default_add_space_prefix=True))

    # -- encoding ------------------------------------------------------------
    def _encode_fragments(self, fragments: list[str | int]) -> list[int]:
        ids: list[int] = []
        after_special = True  # the text start counts as "after a special token"
        for frag in fragments:
            if isinstance(frag, int):
                ids.append(frag)
                after_special = True
            else:
                prefix = " " if self.add_space_prefix and after_special else ""
                ids.extend(self.encode_piece(prefix + frag))
                after_special = False
        return ids

    def escape(self, text: str) -> bytes:
        """UTF-8 of ``text`` with spaces as U+2581. Example: ``escape("a b")`` -> ``"a▁b".encode()``."""
        return text_to_utf8(text).replace(b" ", SPACE)

    def encode_piece(self, text: str) -> list[int]:
        """Ids of one raw fragment (space prefix already added).

        Example (Gemma 3): ``encode_piece("Hello")`` -> ``[9259]``.
        """
        data = self.escape(text)
        state = self.merge(data)
        ids: list[int] = []
        for start, end in state.parts():
            self._resegment(data, start, end, state, ids)
        return ids

    def merge(self, data: bytes, steps: list[list[bytes]] | None = None) -> "_Symbols":
        """Merge the characters of ``data`` by token score (highest first, leftmost on ties).

        ``steps``, if given, receives the parts (bytes) after each merge.
        """
        starts = utf8_lengths(data)
        n = len(starts) - 1
        lo, hi = starts[:-1], starts[1:]  # (n,) byte span of each symbol; hi == lo once merged away
        nxt = list(range(1, n)) + [-1] if n else []
        prv = list(range(-1, n - 1))
        heap: list[tuple[float, int, int, int]] = []
        rev_merge: dict[bytes, tuple[int, int]] = {}  # text -> the symbol pair that last formed it

        def add_pair(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            tid = self.by_bytes.get(data[lo[left]:hi[right]])
            if tid is None:
                return
            heapq.heappush(heap, (-self.scores[tid], left, right, hi[right] - lo[left]))
            rev_merge[data[lo[left]:hi[right]]] = (left, right)

        for i in range(1, n):
            add_pair(i - 1, i)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            n_left, n_right = hi[left] - lo[left], hi[right] - lo[right]
            if n_left == 0 or n_right == 0 or n_left + n_right != size:
                continue  # outdated
            hi[left], hi[right] = hi[right], lo[right]
            nxt[left] = nxt[right]
            if nxt[left] >= 0:
                prv[nxt[left]] = left
            add_pair(prv[left], left)
            add_pair(left, nxt[left])
            if steps is not None:
                steps.append([data[lo[i]:hi[i]] for i in range(n) if hi[i] > lo[i]])
        return _Symbols(lo, hi, rev_merge)

    def _resegment(self, data: bytes, start: int, end: int, state: "_Symbols", ids: list[int],
                   depth: int = 0) -> None:
        """Emit the token of ``data[start:end]``, else re-split it by rev_merge, else its byte tokens."""
        text = data[start:end]
        tid = self.by_bytes.get(text)
        if tid is not None:
            ids.append(tid)
            return
        pair = state.rev_merge.get(text) if depth < 64 else None
        if pair is None:
            ids.extend(self.byte_token(b) for b in text)
            return
        for k in pair:  # llama.cpp re-reads the symbols at those indices as they are now
            self._resegment(data, state.lo[k], state.hi[k], state, ids, depth + 1)

    def byte_token(self, b: int) -> int:
        """The token of byte ``b``: ``<0xXX>``, else the one-byte text (as llama.cpp's ``byte_to_token``)."""
        tid = self.by_bytes.get(b"<0x%02X>" % b)
        if tid is None:
            tid = self.by_bytes.get(bytes([b]))
        if tid is None:
            raise TokenizerError(f"the vocabulary has no token for byte 0x{b:02X} (<0x{b:02X}>)")
        return tid

    # -- decoding ----------------------------------------------------------
    def _piece(self, i: int) -> bytes:
        attr = self._attrs[i]
        if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED):
            return self._raw_text(i)
        if attr & ATTR_NORMAL:
            return self._raw_text(i).replace(SPACE, b" ")
        if attr & ATTR_BYTE:
            return bytes([_strtol_hex(self.vocab.texts[i][3:5]) & 0xFF])
        return b""  # UNUSED, UNDEFINED

    def decode_bytes(self, ids, skip_special: bool = False) -> bytes:
        """Joined bytes; with add_space_prefix, one leading space of the first token is dropped."""
        pieces = [self.token_bytes(i, not skip_special) for i in ids]
        if self.add_space_prefix and pieces and pieces[0][:1] == b" ":
            pieces[0] = pieces[0][1:]
        return b"".join(pieces)

    # -- teaching ------------------------------------------------------------
    def pre_tokenize(self, text: str) -> list[str]:
        """SPM has no pre-tokenizer: the (space-prefixed, escaped) text is one word."""
        prefix = " " if self.add_space_prefix else ""
        return [(prefix + text).replace(" ", "\u2581")] if text else []

    def merge_steps(self, text: str) -> list[list[list[bytes]]]:
        """The one word's parts (bytes, "▁" for spaces) at the start and after each merge."""
        if not text:
            return []
        data = self.escape((" " if self.add_space_prefix else "") + text)
        starts = utf8_lengths(data)
        steps = [[data[a:b] for a, b in zip(starts, starts[1:])]]
        self.merge(data, steps)
        return [steps]
