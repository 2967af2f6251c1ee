"""Stop strings in streamed text: text deltas in, text that is safe to show out.

A stop string may arrive split across deltas (``"##"`` then ``"# Response"``), so the matcher holds back the
shortest tail of the text that could still begin a stop string, and releases it once it cannot. When a stop string
completes, the text is cut where it starts: the stop string and everything after it are dropped. The stop string
that completes first wins (generation stops there; on a tie the longer one), so the result does not depend on how
the text was split into deltas: it equals the whole text cut at the start of the occurrence that ends earliest (or
the whole text when none occurs). The cost per delta depends only on the delta and the longest stop string, not on
the text so far.
"""

from __future__ import annotations

from collections.abc import Iterable

from koserve.errors import InvalidRequestError

MAX_STOP_STRINGS = 32
MAX_STOP_CHARS = 128


class StopStringMatcher:
    """Feed text deltas; each :meth:`feed` returns what can be shown now. :meth:`finish` releases the held tail."""

    __slots__ = ("_stops", "_prefixes", "_firsts", "_chars", "_max_len", "_held", "stopped", "matched")

    def __init__(self, stop_strings: Iterable[str] | None):
        stops: list[str] = []
        for index, stop in enumerate(stop_strings or ()):
            if not isinstance(stop, str):
                raise InvalidRequestError(f"stop string #{index} must be a string, got {type(stop).__name__}")
            if not stop:
                raise InvalidRequestError(f"stop string #{index} is empty")
            if len(stop) > MAX_STOP_CHARS:
                raise InvalidRequestError(
                    f"stop string #{index} has {len(stop)} characters; the limit is {MAX_STOP_CHARS}"
                )
            if stop not in stops:
                stops.append(stop)
        if len(stops) > MAX_STOP_STRINGS:
            raise InvalidRequestError(f"{len(stops)} stop strings given; the limit is {MAX_STOP_STRINGS}")
        self._stops = tuple(stops)
        # Every proper prefix of a stop string: a tail of the text equal to one of them may grow into a match.
        self._prefixes = frozenset(stop[:k] for stop in stops for k in range(1, len(stop)))
        self._firsts = frozenset(stop[0] for stop in stops)
        self._chars = frozenset("".join(stops))  # a delta with none of these can neither hold nor match
        self._max_len = max((len(s) for s in stops), default=0)
        self._held = ""
        #: True once a stop string has been seen; later deltas are ignored.
        self.stopped = False
        #: The stop string that ended the text (the first to complete; the longer on a tie), or None.
        self.matched: str | None = None

    def feed(self, delta: str) -> str:
        """Add a text delta; return the text now known to precede any stop string ("" while holding back)."""
        if self.stopped or not delta:
            return ""
        if not self._stops or (not self._held and self._chars.isdisjoint(delta)):
            return delta  # (the common delta: plain text, nothing held)
        text = self._held + delta
        # The first stop string to *complete* wins (generation would have stopped there); on a tie the longer one.
        best: tuple[int, int] | None = None
        for stop in self._stops:
            at = text.find(stop)
            if at != -1 and (best is None or (at + len(stop), at) < best):
                best, self.matched = (at + len(stop), at), stop
        if best is not None:
            self.stopped = True
            self._held = ""
            return text[: best[1]]
        # Hold back the longest tail that is a proper prefix of a stop string (shorter than the longest stop).
        hold_from = len(text)
        firsts, prefixes = self._firsts, self._prefixes
        for start in range(max(0, len(text) - self._max_len + 1), len(text)):
            if text[start] in firsts and text[start:] in prefixes:
                hold_from = start
                break
        self._held = text[hold_from:]
        return text[:hold_from]

    def finish(self) -> str:
        """End of the stream: the held-back tail is not a stop string after all, so release it."""
        held, self._held = self._held, ""
        return "" if self.stopped else held
