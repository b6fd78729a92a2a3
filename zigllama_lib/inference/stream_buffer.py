"""Streaming generated text to a consumer: a bounded buffer with back-pressure, callbacks, natural breaks.

A generator (:func:`.generation.generate_steps`) already streams: it yields one token
at a time and stops before the next forward pass when its consumer stops asking. Two
more shapes are common:

* **a producer thread and a consumer** (a UI, a socket): :class:`BoundedStream` hands
  items over through a queue of at most ``maxsize`` items. When the consumer is slow,
  the queue fills and the producer *blocks* in :meth:`BoundedStream.put` -- back-pressure:
  generation waits instead of piling up text nobody reads (memory stays bounded by
  ``maxsize``). When the consumer gives up it calls :meth:`BoundedStream.cancel`; the
  producer's next ``put`` returns ``False`` and :func:`stream_in_thread` closes the
  generator, so no further forward pass runs. A producer error reaches the consumer,
  re-raised from its iteration.
* **a callback**: :func:`stream_with_callback` calls ``callback(item)`` per item and stops
  as soon as it returns ``False``.

For display, :class:`NaturalBreaks` regroups the text pieces (sub-word tokens) into whole
words or whole sentences, so a reader sees ``"Paris is"`` then ``" the capital."`` instead
of ``"Par"``, ``"is"``, ``" is"``...
"""

from __future__ import annotations

import re
import threading
from collections import deque
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from ..foundation.errors import ConfigError

__all__ = ["BoundedStream", "NaturalBreaks", "StreamCancelled", "stream_in_thread", "stream_with_callback"]

T = TypeVar("T")


class StreamCancelled(Exception):
    """Raised by :meth:`BoundedStream.put` with ``raise_if_cancelled=True`` once the consumer cancelled."""


class BoundedStream(Generic[T]):
    """A thread-safe FIFO of at most ``maxsize`` items between one producer and one consumer.

        stream = BoundedStream(maxsize=8)
        # producer thread:  stream.put(piece) ... stream.close()   (or close(error))
        # consumer:         for piece in stream: ...               (stream.cancel() to stop early)

    ``put`` blocks while the queue is full (back-pressure) and returns ``False`` without
    queueing once the stream is cancelled; iteration ends after ``close()`` and the queued
    items, and re-raises the error given to ``close(error)``.
    """

    def __init__(self, maxsize: int = 16):
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1:
            raise ConfigError(f"maxsize must be an integer >= 1, got {maxsize!r}")
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._cancelled = False
        self._error: BaseException | None = None
        self.max_queued = 0  # the most items ever waiting at once (<= maxsize): back-pressure at work

    # -- producer side
    def put(self, item: T, timeout: float | None = None, raise_if_cancelled: bool = False) -> bool:
        """Queue ``item``, waiting while the queue is full; ``False`` if the consumer cancelled.

        ``timeout`` (seconds) bounds the wait for room; past it, ``TimeoutError``."""
        with self._cond:
            if self._closed:
                raise ConfigError("put() on a closed stream")
            if not self._cond.wait_for(lambda: self._cancelled or len(self._items) < self.maxsize, timeout):
                raise TimeoutError(f"the consumer took no item for {timeout} s (queue full at {self.maxsize})")
            if self._cancelled:
                if raise_if_cancelled:
                    raise StreamCancelled("the consumer cancelled the stream")
                return False
            self._items.append(item)
            self.max_queued = max(self.max_queued, len(self._items))
            self._cond.notify_all()
            return True

    def close(self, error: BaseException | None = None) -> None:
        """No more items; ``error``, if given, is raised in the consumer after the queued items."""
        with self._cond:
            self._closed = True
            self._error = error
            self._cond.notify_all()

    # -- consumer side
    def cancel(self) -> None:
        """Stop the producer: its next ``put`` returns ``False``; queued items are dropped."""
        with self._cond:
            self._cancelled = True
            self._items.clear()
            self._cond.notify_all()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def get(self, timeout: float | None = None) -> tuple[bool, T | None]:
        """``(True, item)``, or ``(False, None)`` once the stream is closed and drained (or cancelled)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed or self._cancelled, timeout):
                raise TimeoutError(f"no item from the producer for {timeout} s")
            if self._items:
                item = self._items.popleft()
                self._cond.notify_all()
                return True, item
            if self._error is not None and not self._cancelled:
                error, self._error = self._error, None
                raise error
            return False, None

    def __iter__(self) -> Iterator[T]:
        while True:
            ok, item = self.get()
            if not ok:
                return
            yield item


def stream_in_thread(items: Iterable[T], maxsize: int = 16) -> BoundedStream[T]:
    """Run ``items`` (e.g. a generation iterator) in a daemon thread, feeding a :class:`BoundedStream`.

    On cancel the thread closes the iterator (a generator's ``close()``: the generation loop
    ends before its next forward pass); an exception in it is re-raised in the consumer."""
    stream: BoundedStream[T] = BoundedStream(maxsize)

    def produce():
        iterator = iter(items)
        try:
            for item in iterator:
                if not stream.put(item):
                    break
        except BaseException as e:  # handed to the consumer, not lost in the thread
            stream.close(e)
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        stream.close()

    threading.Thread(target=produce, name="zigllama-stream", daemon=True).start()
    return stream


def stream_with_callback(items: Iterable[T], callback: Callable[[T], bool | None]) -> int:
    """Call ``callback(item)`` for each item; stop when it returns ``False`` (``None`` goes on).

    Returns how many items the callback received. The iterator is closed on an early stop."""
    iterator = iter(items)
    n = 0
    try:
        for item in iterator:
            n += 1
            if callback(item) is False:
                break
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
    return n


# A sentence ends at . ! ? or an ellipsis (with closing quotes or brackets) before whitespace, or at a newline.
_SENTENCE_END = re.compile(r"""(?:[.!?\u2026]+["'\u201d\u2019)\]]*\s+|\n+)""")
_WORD_END = re.compile(r"\s+")


class NaturalBreaks:
    """Regroup streamed text pieces at word or sentence boundaries, for display.

        breaks = NaturalBreaks("word")
        breaks.push("Par") -> []      breaks.push("is is") -> ["Paris "]      breaks.flush() -> ["is"]

    ``"word"``: a chunk ends after a run of whitespace; ``"sentence"``: after ``.``, ``!``, ``?``
    or ``…`` (and closing quotes/brackets) followed by whitespace, or after newlines. The
    concatenated chunks always equal the concatenated pieces (``flush`` gives the rest).
    """

    MODES = {"word": _WORD_END, "sentence": _SENTENCE_END}

    def __init__(self, mode: str = "word"):
        if mode not in self.MODES:
            raise ConfigError(f"mode must be one of {sorted(self.MODES)}, got {mode!r}")
        self.mode = mode
        self._pattern = self.MODES[mode]
        self._pending = ""

    def push(self, piece: str) -> list[str]:
        """The complete chunks that ``piece`` finishes (possibly none)."""
        self._pending += piece
        ends = [m.end() for m in self._pattern.finditer(self._pending)]
        # a boundary at the very end may still grow (more spaces, another "!"): wait for the next piece
        ends = [e for e in ends if e < len(self._pending)]
        chunks, start = [], 0
        for end in ends:
            chunks.append(self._pending[start:end])
            start = end
        self._pending = self._pending[start:]
        return chunks

    def flush(self) -> list[str]:
        """Whatever is left, as a last chunk (``[]`` if nothing)."""
        rest, self._pending = self._pending, ""
        return [rest] if rest else []
