"""Token ids out of the engine → text, correct for Korean when streamed.

:class:`TextStream` is one request's state: an :class:`~koserve.text.IncrementalDetokenizer` (whole characters
only, Llama-2 spaces kept) followed by a :class:`~koserve.text.StopStringMatcher` (stop words removed). The BLS owns
one per request and knows when the request ends (``finish``).

The ``postprocessing`` model of the ensemble cannot know when a stream ends (Triton never shows it the final flag)
nor which request a response belongs to, except through the client's request id, which every composing model sees.
:class:`StreamRegistry` therefore keeps one :class:`TextStream` per request id, evicts streams idle for
``idle_timeout_s`` (and the least recently used beyond ``max_streams``), and for responses without a request id
decodes each response alone (whole characters only, never partial UTF-8 or U+FFFD). ``preprocessing`` makes the
engine stream a request only when it has an id, so a response without an id carries the whole answer and decoding it
alone is exact. A new request with an id resets that id's stream (:mod:`koserve.serving.startsignal`). This relies on
ONE postprocessing instance (responses of a stream then arrive in order; measured on Triton 2.51).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import numpy as np

from koserve.text import IncrementalDetokenizer, StopStringMatcher
from koserve.text.tokenizer import TextTokenizer

REPLACEMENT = "\ufffd"


class TextStream:
    """One request: ids in (any number per call), safe text out."""

    __slots__ = ("detokenizer", "matcher", "last_used")

    def __init__(self, tokenizer: TextTokenizer, stop_strings: tuple[str, ...] = ()):
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.matcher = StopStringMatcher(stop_strings)
        self.last_used = time.monotonic()

    @property
    def stopped(self) -> bool:
        """A stop string was seen: the text is complete, later ids are ignored."""
        return self.matcher.stopped

    def add(self, ids) -> str:
        self.last_used = time.monotonic()
        if self.matcher.stopped:
            return ""
        return self.matcher.feed(self.detokenizer.add(ids))

    def finish(self) -> str:
        if self.matcher.stopped:
            return ""
        # Text still held back at the end is the text of the last token(s) ending in an incomplete character
        # (generation stopped mid-character, e.g. max_tokens): drop all of it — never U+FFFD — exactly what the
        # ensemble's postprocessing (which never sees the end) gives. With Llama-3 that token may also carry a space.
        tail = self.detokenizer.finish()
        if tail.endswith(REPLACEMENT):
            tail = ""
        return self.matcher.feed(tail) + self.matcher.finish()


def tokens_of(tokens_batch: np.ndarray, sequence_length: np.ndarray | None) -> np.ndarray:
    """The valid ids of beam 0 of batch item 0: ``output_ids`` ``[B, beam, L]`` (or ``[beam, L]``/``[L]``)
    cut at ``sequence_length``."""
    arr = np.asarray(tokens_batch)
    while arr.ndim > 1:
        arr = arr[0]
    if sequence_length is not None:
        seq = np.asarray(sequence_length).reshape(-1)
        if seq.size:
            n = int(seq[0])
            if 0 <= n < arr.shape[0]:
                arr = arr[:n]
    return arr


class StreamRegistry:
    """Text streams keyed by request id, for the ensemble's ``postprocessing`` model (see module doc)."""

    def __init__(
        self,
        tokenizer: TextTokenizer,
        stop_strings: tuple[str, ...] = (),
        *,
        idle_timeout_s: float = 60.0,
        max_streams: int = 4096,
    ):
        self.tokenizer = tokenizer
        self.stop_strings = stop_strings
        self.idle_timeout_s = idle_timeout_s
        self.max_streams = max_streams
        self._streams: OrderedDict[str, TextStream] = OrderedDict()
        self._lock = threading.Lock()
        self._last_sweep = time.monotonic()

    def __len__(self) -> int:
        return len(self._streams)

    def decode(self, request_id: str, ids) -> str:
        """Text for the ids of one engine response of request ``request_id``."""
        if not request_id:
            return self.decode_alone(ids)
        with self._lock:
            now = time.monotonic()
            stream = self._streams.get(request_id)
            if stream is None:
                stream = TextStream(self.tokenizer, self.stop_strings)
                self._streams[request_id] = stream
                if len(self._streams) > self.max_streams:
                    self._streams.popitem(last=False)
            else:
                self._streams.move_to_end(request_id)
            if now - self._last_sweep > min(self.idle_timeout_s, 5.0):
                self._sweep(now)
        return stream.add(ids)

    def reset(self, request_id: str) -> None:
        """A new request with this id starts: forget the stream the id had (see :mod:`koserve.serving.startsignal`)."""
        with self._lock:
            self._streams.pop(request_id, None)

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        limit = now - self.idle_timeout_s
        while self._streams:
            key, stream = next(iter(self._streams.items()))
            if stream.last_used >= limit:
                break
            del self._streams[key]

    def decode_alone(self, ids) -> str:
        """Decode one response with no history, as a whole answer (``preprocessing`` has the engine answer requests
        without an id in one response): the same text a request with an id gets, never U+FFFD for an incomplete
        last character."""
        stream = TextStream(self.tokenizer, self.stop_strings)
        return stream.add(ids) + stream.finish()
