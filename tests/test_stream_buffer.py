"""Layer 6 streaming: bounded buffer with back-pressure and cancellation, callbacks, natural breaks."""

from __future__ import annotations

import threading
import time

import pytest

from zigllama_lib.foundation.errors import ConfigError
from zigllama_lib.inference.stream_buffer import (
    BoundedStream,
    NaturalBreaks,
    StreamCancelled,
    stream_in_thread,
    stream_with_callback,
)


def counting(n: int, produced: list, finished: list):
    """A generator of 0..n-1 that records what it produced and whether it was closed or ran out."""
    try:
        for i in range(n):
            produced.append(i)
            yield i
    finally:
        finished.append(True)


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_items_arrive_in_order_and_the_stream_ends():
    produced, finished = [], []
    assert list(stream_in_thread(counting(50, produced, finished), maxsize=3)) == list(range(50))
    wait_until(lambda: finished)


def test_a_full_queue_blocks_the_producer():
    """Consumer takes nothing: the producer stops at maxsize queued (+ the one it holds), not at 1000."""
    produced, finished = [], []
    stream = stream_in_thread(counting(1000, produced, finished), maxsize=4)
    wait_until(lambda: len(produced) >= 5)
    time.sleep(0.2)  # room for a runaway producer to show itself
    assert len(produced) == 5  # 4 queued, the 5th waiting in put()
    assert stream.max_queued == 4
    got = [stream.get()[1] for _ in range(10)]
    assert got == list(range(10))
    stream.cancel()
    wait_until(lambda: finished)
    assert len(produced) < 20


def test_cancel_closes_the_generator_early():
    produced, finished = [], []
    stream = stream_in_thread(counting(10_000, produced, finished), maxsize=2)
    for i, item in enumerate(stream):
        if i == 3:
            stream.cancel()
            break
    wait_until(lambda: finished)
    assert len(produced) <= 3 + 1 + 2 + 1  # consumed, in hand, queued, one more put refused
    assert stream.cancelled and list(stream) == []


def test_producer_error_reaches_the_consumer_after_the_queued_items():
    def failing():
        yield "a"
        yield "b"
        raise ValueError("model exploded")

    got = []
    with pytest.raises(ValueError, match="model exploded"):
        for item in stream_in_thread(failing(), maxsize=8):
            got.append(item)
    assert got == ["a", "b"]


def test_put_after_cancel_and_timeouts():
    stream = BoundedStream(maxsize=1)
    assert stream.put(1)
    with pytest.raises(TimeoutError, match="queue full at 1"):
        stream.put(2, timeout=0.05)
    stream.cancel()
    assert stream.put(3) is False
    with pytest.raises(StreamCancelled):
        stream.put(4, raise_if_cancelled=True)
    empty = BoundedStream(maxsize=2)
    with pytest.raises(TimeoutError, match="no item"):
        empty.get(timeout=0.05)
    empty.close()
    with pytest.raises(ConfigError, match="closed"):
        empty.put(1)
    with pytest.raises(ConfigError, match="maxsize"):
        BoundedStream(0)


def test_two_threads_many_items_nothing_lost_or_duplicated():
    stream = BoundedStream(maxsize=3)
    n = 5000

    def produce():
        for i in range(n):
            stream.put(i)
        stream.close()

    thread = threading.Thread(target=produce)
    thread.start()
    assert list(stream) == list(range(n))
    thread.join(5)
    assert stream.max_queued <= 3


def test_callback_stops_when_it_returns_false():
    produced, finished, seen = [], [], []
    n = stream_with_callback(counting(100, produced, finished), lambda x: seen.append(x) or x < 4)
    assert seen == [0, 1, 2, 3, 4] and n == 5 and finished == [True]
    assert stream_with_callback(iter("abc"), lambda x: None) == 3


@pytest.mark.parametrize("pieces, mode, chunks", [
    (["Par", "is is", " the", " capital", "."], "word", ["Paris ", "is ", "the ", "capital."]),
    (["Hi", "!  ", "How", " are you?", " Fine.", "\n", "Ok"], "sentence",
     ["Hi!  ", "How are you? ", "Fine.\n", "Ok"]),
    (["He said \"stop.\" Then", " left"], "sentence", ["He said \"stop.\" ", "Then left"]),
    (["e.g", ".x ", "y"], "sentence", ["e.g.x y"]),  # a dot inside a word is no sentence end
    (["wait", "\u2026 ", "then"], "sentence", ["wait\u2026 ", "then"]),
    (["", "a", "", " b"], "word", ["a ", "b"]),
])
def test_natural_breaks(pieces, mode, chunks):
    breaks = NaturalBreaks(mode)
    out = [c for p in pieces for c in breaks.push(p)] + breaks.flush()
    assert out == chunks
    assert "".join(out) == "".join(pieces)


def test_trailing_boundary_waits_for_more_whitespace():
    breaks = NaturalBreaks("word")
    assert breaks.push("one ") == []  # more spaces may follow: the chunk is not finished yet
    assert breaks.push(" two") == ["one  "]
    assert breaks.flush() == ["two"] and breaks.flush() == []
    with pytest.raises(ConfigError, match="mode"):
        NaturalBreaks("paragraph")


def test_real_generation_through_the_buffer(smollm):
    """Greedy SmolLM2 text through a 2-item buffer equals the direct stream; cancelling after
    3 pieces stops generation (fewer forward passes than max_tokens)."""
    kw = dict(max_tokens=24, temperature=0.0, numerics="llama.cpp")
    direct = list(smollm.generate("The capital of France is", **kw))
    assert "".join(stream_in_thread(smollm.generate("The capital of France is", **kw), maxsize=2)) == "".join(direct)
    stream = stream_in_thread(smollm.generate("The capital of France is", **kw), maxsize=2)
    for i, _ in enumerate(stream):
        if i == 2:
            stream.cancel()
            break
    wait_until(lambda: smollm.last_stats.get("decode_s") is not None or smollm.last_stats.get("n_generated", 0) > 0)
    time.sleep(0.5)
    assert smollm.last_stats["n_generated"] <= 3 + 1 + 2 + 1 < kw["max_tokens"]
