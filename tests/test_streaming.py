"""Streaming detokenisation: pieces never split a UTF-8 character, invalid bytes never stall."""

from __future__ import annotations

import codecs
import itertools
import random
import re

import pytest

from zigllama_lib.foundation.errors import ConfigError, ZigLlamaError
from zigllama_lib.inference.streaming import (
    Utf8Stream,
    incomplete_tail_length,
    is_continuation,
    sequence_length,
    stream_text,
)

FFFD = "\ufffd"
SURROGATE = re.compile("[\ud800-\udfff]")

SAMPLES = [
    "\U0001F469\u200d\U0001F469\u200d\U0001F467",  # 👩‍👩‍👧: 3 emoji joined by ZWJ (18 bytes)
    "\U0001F1EB\U0001F1F7",                        # 🇫🇷: two regional indicators (8 bytes)
    "日本語",                                       # 3 x 3 bytes
    "\u00e9",                                      # é precomposed: C3 A9
    "e\u0301",                                     # é decomposed: e + combining acute (CC 81)
    "a\u20ac\U0001D11Eb",                          # 1-, 3-, 4- and 1-byte characters
]


def push_all(chunks) -> tuple[list[str], str]:
    stream = Utf8Stream()
    pieces = [stream.push(c) for c in chunks]
    return pieces, stream.flush()


def split_at(data: bytes, cuts) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def char_boundaries(text: str) -> set[int]:
    """Byte offsets in text.encode() where a character starts or the text ends."""
    offsets, pos = {0}, 0
    for ch in text:
        pos += len(ch.encode())
        offsets.add(pos)
    return offsets


def all_valid_unfinished_prefixes() -> set[bytes]:
    """Every proper prefix (1-3 bytes) of the UTF-8 encoding of some scalar value."""
    out = set()
    for cp in itertools.chain(range(0x80, 0xD800), range(0xE000, 0x110000)):
        enc = chr(cp).encode()
        out.update(enc[:k] for k in range(1, len(enc)))
    return out


@pytest.fixture(scope="module")
def unfinished_prefixes():
    return all_valid_unfinished_prefixes()


# ----------------------------------------------------------------- the bit patterns


def test_sequence_length_follows_the_lead_bit_patterns():
    assert [sequence_length(b) for b in (0x00, 0x41, 0x7F)] == [1, 1, 1]           # 0xxxxxxx
    assert [sequence_length(b) for b in (0xC2, 0xC3, 0xDF)] == [2, 2, 2]           # 110xxxxx
    assert [sequence_length(b) for b in (0xE0, 0xE6, 0xED, 0xEF)] == [3, 3, 3, 3]  # 1110xxxx
    assert [sequence_length(b) for b in (0xF0, 0xF4)] == [4, 4]                    # 11110xxx
    assert [sequence_length(b) for b in (0x80, 0xBF)] == [0, 0]                    # 10xxxxxx
    assert [sequence_length(b) for b in (0xC0, 0xC1, 0xF5, 0xF8, 0xFF)] == [0] * 5  # never valid
    assert [b for b in range(256) if is_continuation(b)] == list(range(0x80, 0xC0))


def test_sequence_length_agrees_with_the_encoder():
    for cp in (0x41, 0x7F, 0x80, 0x7FF, 0x800, 0xFFFF, 0x10000, 0x10FFFF):
        enc = chr(cp).encode()
        assert sequence_length(enc[0]) == len(enc)
        assert all(is_continuation(b) for b in enc[1:])


def test_incomplete_tail_length_is_exactly_the_valid_unfinished_prefixes(unfinished_prefixes):
    """Every 1-3 byte tail (after an ASCII byte) waits iff it is a proper prefix of a real character."""
    high = range(0x80, 0x100)
    for n in (1, 2, 3):
        for tail in itertools.product(high, repeat=n):
            tail = bytes(tail)
            expected = n if tail in unfinished_prefixes else 0
            if expected == 0 and n > 1 and tail[1:] in unfinished_prefixes:
                expected = n - 1  # e.g. FF E6: FF is dead, E6 waits
            if expected == 0 and n > 2 and tail[2:] in unfinished_prefixes:
                expected = n - 2
            assert incomplete_tail_length(b"a" + tail) == expected, tail.hex()


# ----------------------------------------------------------------- valid input


@pytest.mark.parametrize("text", SAMPLES)
def test_every_split_into_up_to_four_tokens(text):
    """Cut the bytes at every 1, 2 or 3 positions: the pieces rebuild the text, no U+FFFD."""
    data = text.encode()
    boundaries = char_boundaries(text)
    for n_cuts in (1, 2, 3):
        for cuts in itertools.combinations(range(1, len(data)), n_cuts):
            stream, pushed, out = Utf8Stream(), 0, ""
            for chunk in split_at(data, cuts):
                piece = stream.push(chunk)
                pushed += len(chunk)
                out += piece
                assert FFFD not in piece
                # emitted promptly: everything up to the last character boundary
                done = max(b for b in boundaries if b <= pushed)
                assert out == data[:done].decode() and stream.pending == data[done:pushed]
            assert stream.flush() == "" and out == text


def test_decomposed_and_precomposed_e_acute_stay_distinct():
    pre, _ = push_all([b"caf\xc3", b"\xa9"])
    dec, _ = push_all([b"cafe\xcc", b"\x81"])
    assert "".join(pre) == "caf\u00e9" and "".join(dec) == "cafe\u0301"
    assert pre == ["caf", "\u00e9"] and dec == ["cafe", "\u0301"]


def random_text(rng: random.Random, n: int) -> str:
    """n random scalar values drawn from 1-, 2-, 3- and 4-byte ranges (no surrogates)."""
    ranges = [(0x20, 0x7E), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF),
              (0x1F300, 0x1FAFF)]
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(n))


def random_chunks(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), k=rng.randint(0, min(12, len(data) - 1)))) if len(data) > 1 else []
    return split_at(data, cuts)


def test_random_text_random_splits_join_exactly():
    rng = random.Random(20240611)
    for _ in range(2000):
        text = random_text(rng, rng.randint(0, 12))
        chunks = random_chunks(rng, text.encode())
        if rng.random() < 0.2:
            chunks.insert(rng.randint(0, len(chunks)), b"")  # empty tokens are harmless
        pieces, tail = push_all(chunks)
        assert "".join(pieces) + tail == text
        assert tail == ""
        for piece in pieces:
            assert FFFD not in piece and not SURROGATE.search(piece)
            piece.encode("utf-8")  # strict: a lone surrogate would raise here


# ----------------------------------------------------------------- invalid input


@pytest.mark.parametrize("data, expected", [
    (b"\xff", FFFD),                      # never a UTF-8 byte
    (b"a\xffb", f"a{FFFD}b"),
    (b"\x80", FFFD),                      # continuation byte with no lead
    (b"\xc0\xaf", FFFD * 2),              # overlong lead
    (b"\xe0\x80", FFFD * 2),              # overlong 3-byte form
    (b"\xed\xa0", FFFD * 2),              # UTF-16 surrogate D800.. (CPython's incremental decoder waits here)
    (b"\xf0\x8f", FFFD * 2),              # overlong 4-byte form
    (b"\xf4\x90", FFFD * 2),              # above U+10FFFF
    (b"\xf5", FFFD),
    (b"\xe6\x97A", f"{FFFD}A"),           # a lead cut short by ASCII: one U+FFFD for the two bytes
    (b"\xc3\xa9\xa9", f"\u00e9{FFFD}"),   # one continuation too many
])
def test_invalid_bytes_come_out_at_once(data, expected):
    stream = Utf8Stream()
    assert stream.push(data) == expected
    assert stream.pending == b"" and stream.flush() == ""


@pytest.mark.parametrize("data", [b"\xc3", b"\xe6\x97", b"\xe0\xa0", b"\xed\x9f", b"\xf0\x90", b"\xf0\x9f\x98",
                                  b"\xf4\x8f\xbf"])
def test_truncated_character_waits_then_flushes_to_one_replacement(data):
    stream = Utf8Stream()
    assert stream.push(b"ok " + data) == "ok "
    assert stream.pending == data
    assert stream.flush() == FFFD
    assert stream.pending == b"" and stream.flush() == ""


def test_waiting_bytes_that_turn_out_invalid_are_replaced_when_the_next_token_arrives():
    stream = Utf8Stream()
    assert stream.push(b"\xf0\x9f") == ""
    assert stream.push(b"!") == f"{FFFD}!"


def test_stream_is_reusable_after_flush():
    stream = Utf8Stream()
    assert stream.push(b"\xe6") == "" and stream.flush() == FFFD
    assert stream.push("日".encode()) == "日"


def test_pushing_anything_but_bytes_is_refused():
    stream = Utf8Stream()
    assert stream.push(bytearray(b"\xc3")) == "" and stream.push(memoryview(b"\xa9")) == "\u00e9"
    with pytest.raises(ConfigError, match="data must be bytes"):
        stream.push("text")
    assert issubclass(ConfigError, ZigLlamaError)


def random_bytes_stream(rng: random.Random) -> bytes:
    """Valid characters mixed with random (mostly high) bytes."""
    parts = []
    for _ in range(rng.randint(0, 10)):
        if rng.random() < 0.6:
            parts.append(random_text(rng, 1).encode())
        else:
            parts.append(bytes(rng.choice([rng.randint(0x80, 0xFF), rng.randint(0, 0xFF)])
                               for _ in range(rng.randint(1, 3))))
    return b"".join(parts)


def test_random_bytes_agree_with_pythons_decoders(unfinished_prefixes):
    """Against bytes.decode (joined text) and codecs' incremental decoder (each piece).

    The one known difference: CPython's incremental decoder holds ``ED A0..BF``
    back; streams containing that pair are compared on the joined text only.
    """
    rng = random.Random(7)
    surrogate_start = re.compile(rb"\xed[\xa0-\xbf]")
    n_piecewise = 0
    for _ in range(5000):
        data = random_bytes_stream(rng)
        chunks = random_chunks(rng, data)
        stream, reference = Utf8Stream(), codecs.getincrementaldecoder("utf-8")(errors="replace")
        pieces, ref_pieces = [], []
        for chunk in chunks:
            pieces.append(stream.push(chunk))
            ref_pieces.append(reference.decode(chunk, final=False))
            # never stalls: what waits is at most 3 bytes that can still become a character
            assert stream.pending == b"" or stream.pending in unfinished_prefixes
            assert not any(SURROGATE.search(p) for p in pieces)
        pieces.append(stream.flush())
        ref_pieces.append(reference.decode(b"", final=True))
        assert "".join(pieces) == data.decode("utf-8", errors="replace")
        if not surrogate_start.search(data):
            assert pieces == ref_pieces
            n_piecewise += 1
    assert n_piecewise > 4000


# ----------------------------------------------------------------- stream_text


def test_stream_text_yields_nonempty_pieces_and_flushes():
    # a toy vocabulary that cuts 🇫🇷 and 日 mid-character
    flag, ri = "\U0001F1EB\U0001F1F7".encode(), "日".encode()
    vocab = {0: b"Hi ", 1: flag[:3], 2: flag[3:6], 3: flag[6:], 4: b" ", 5: ri[:1], 6: ri[1:], 7: b"\xe6\x97"}
    pieces = list(stream_text([0, 1, 2, 3, 4, 5, 6], vocab.__getitem__))
    assert pieces == ["Hi ", "\U0001F1EB", "\U0001F1F7", " ", "日"]  # nothing yielded for token 5
    assert list(stream_text([0, 7], vocab.__getitem__)) == ["Hi ", FFFD]  # truncated at the end
    assert list(stream_text([], vocab.__getitem__)) == []
    assert list(stream_text([1], vocab.__getitem__)) == [FFFD]


def test_stream_text_joins_to_the_full_decode():
    rng = random.Random(3)
    for _ in range(500):
        data = random_bytes_stream(rng)
        tokens = random_chunks(rng, data)
        pieces = list(stream_text(range(len(tokens)), tokens.__getitem__))
        assert all(pieces)
        assert "".join(pieces) == data.decode("utf-8", errors="replace")
