"""Stop strings in a stream of text pieces: emit everything that cannot be the start of a stop
string, hold back the rest, and cut at the first complete match (the stop string itself is never
emitted, as OpenAI's ``stop`` promises).

    m = StopMatcher(["\\n\\n", "User:"])
    m.push("Hello Us")  -> ("Hello ", False)   # "Us" might become "User:": held back
    m.push("er: hi")    -> ("", True)           # "User:" found: stop; nothing after it comes out
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.held = ""

    def _held_back_length(self, text: str) -> int:
        """Longest suffix of ``text`` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best

    def push(self, piece: str) -> tuple[str, bool]:
        """``(text safe to emit, stopped)`` after appending ``piece``."""
        text = self.held + piece
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.held = ""
            return text[:cut], True
        keep = self._held_back_length(text)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        """What was held back, once the stream ends without a match."""
        text, self.held = self.held, ""
        return text
