"""Streaming detokenisation: token bytes in, text pieces out, no split characters.

A token is a byte string, not a character string: byte-level BPE vocabularies
cut multi-byte characters into several tokens (an emoji often takes 2-4), so
decoding each token on its own would print replacement characters. UTF-8 makes
it easy to know whether the bytes so far end inside a character, because
every byte says what it is by its high bits:

    0xxxxxxx                              1 byte:  U+0000..U+007F (ASCII)
    110xxxxx 10xxxxxx                     2 bytes: U+0080..U+07FF
    1110xxxx 10xxxxxx 10xxxxxx            3 bytes: U+0800..U+FFFF
    11110xxx 10xxxxxx 10xxxxxx 10xxxxxx   4 bytes: U+10000..U+10FFFF

A *lead* byte (``0xxxxxxx``, ``110xxxxx``, ``1110xxxx``, ``11110xxx``) starts a
character and its count of leading 1s is the character's length; a
*continuation* byte ``10xxxxxx`` (0x80-0xBF) carries 6 more payload bits and
can never start one. Some combinations the patterns allow are still invalid
(Unicode Table 3-7): overlong forms (lead 0xC0/0xC1, 0xE0 then < 0xA0, 0xF0
then < 0x90), UTF-16 surrogates (0xED then >= 0xA0), code points above
U+10FFFF (0xF4 then >= 0x90, leads 0xF5-0xFF). So the second byte's range
depends on the lead:

    lead C2..DF: 80..BF    lead E0: A0..BF    lead E1..EC, EE..EF: 80..BF
    lead ED:     80..9F    lead F0: 90..BF    lead F1..F3:         80..BF
    lead F4:     80..8F    (every later byte: 80..BF)

:class:`Utf8Stream` looks back at most 3 bytes from the end for a lead byte.
If the tail is a *valid but unfinished* character (for example ``F0 9F 98``,
3 of the 4 bytes of an emoji) it waits for more bytes; everything before it
is complete and is decoded now. Bytes that can never become valid (``FF``, a
stray continuation byte, ``ED A0``...) are not waited for: they come out at
once as U+FFFD, one per maximal invalid subpart, exactly as Python's
``bytes.decode("utf-8", "replace")`` does (the decoding itself is left to it;
this module only decides where to cut).

Why not ``codecs.getincrementaldecoder("utf-8")("replace")``? Its pieces are
the same with one exception, found by trying every 1-3 byte input: CPython
holds back ``ED A0..BF`` (the start of a UTF-16 surrogate, which can never
become valid) until a third byte arrives, so a stream could stall on it. Here
it comes out as U+FFFD at once. The joined text is identical either way.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

from ..foundation.errors import ConfigError

__all__ = ["Utf8Stream", "incomplete_tail_length", "sequence_length", "stream_text"]

REPLACEMENT = "\ufffd"


def is_continuation(byte: int) -> bool:
    """``10xxxxxx``: the top two bits are 1 0."""
    return byte & 0b1100_0000 == 0b1000_0000


def sequence_length(lead: int) -> int:
    """Bytes in a character starting with ``lead``; 0 if it cannot start one.

    ``0xxxxxxx`` -> 1, ``110xxxxx`` -> 2, ``1110xxxx`` -> 3, ``11110xxx`` -> 4.
    Continuation bytes, the overlong leads 0xC0/0xC1 and 0xF5..0xFF give 0.
    """
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def _second_byte_range(lead: int) -> tuple[int, int]:
    """Allowed range of the byte after ``lead`` (Unicode Table 3-7)."""
    return {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}.get(lead, (0x80, 0xBF))


def _is_valid_prefix(seq: bytes) -> bool:
    """Can ``seq`` (a lead byte then continuation bytes) still become a valid character?"""
    lo, hi = _second_byte_range(seq[0])
    return len(seq) < 2 or lo <= seq[1] <= hi


def incomplete_tail_length(buf: bytes) -> int:
    """Length (0-3) of an unfinished but valid character at the end of ``buf``.

    Walk back over continuation bytes (at most 3) to the lead byte; if the
    lead announces more bytes than are present and the bytes so far are
    allowed after it, the tail must wait. Otherwise nothing waits: the tail is
    complete, or it is invalid and will decode to U+FFFD now.
    """
    for back in range(1, min(3, len(buf)) + 1):
        byte = buf[-back]
        if is_continuation(byte):
            continue
        if sequence_length(byte) > back and _is_valid_prefix(buf[-back:]):
            return back
        return 0
    return 0


def _as_bytes(data) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise ConfigError(f"data must be bytes (a token's byte string), got {type(data).__name__}")


class Utf8Stream:
    """Incremental UTF-8 decoder that never splits a character.

        stream = Utf8Stream()
        stream.push(b"caf\\xc3")    # -> "caf"   (0xC3 = 110 00011 waits for its continuation)
        stream.push(b"\\xa9!")      # -> "é!"
        stream.flush()             # -> ""      (call once, at the end of generation)
    """

    def __init__(self):
        self._pending = b""  # 0-3 bytes: the start of an unfinished character

    @property
    def pending(self) -> bytes:
        """Bytes held back because they end inside a character."""
        return self._pending

    def push(self, data: bytes) -> str:
        """Append ``data``; return the longest complete prefix decoded (may be "")."""
        buf = self._pending + _as_bytes(data)
        cut = len(buf) - incomplete_tail_length(buf)
        self._pending = buf[cut:]
        return buf[:cut].decode("utf-8", errors="replace")

    def flush(self) -> str:
        """Decode whatever is pending (an unfinished character becomes U+FFFD) and reset."""
        text = self._pending.decode("utf-8", errors="replace")
        self._pending = b""
        return text


def stream_text(token_ids: Iterable[int], token_bytes: Callable[[int], bytes]) -> Iterator[str]:
    """Yield the non-empty text pieces of a token stream, flushing at the end.

    ``token_bytes(id)`` gives a token's bytes (e.g. ``tokenizer.token_bytes``).
    ``"".join(stream_text(ids, f))`` equals ``b"".join(map(f, ids)).decode("utf-8", "replace")``.
    """
    stream = Utf8Stream()
    for token in token_ids:
        piece = stream.push(token_bytes(token))
        if piece:
            yield piece
    tail = stream.flush()
    if tail:
        yield tail
