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
alone is exact. ``preprocessing`` announces every request with an id (:mod:`koserve.triton_models.startsignal`): the id
gets a fresh stream that knows how the engine ends it (:class:`StreamEnd`), so the stream's last response flushes
what the stop-string matcher held back and a second request with an id still in flight is refused. This relies on
ONE postprocessing instance (responses of a stream then arrive in order; measured on Triton 2.51).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from koserve.triton_models.startsignal import StreamStart
from koserve.text import IncrementalDetokenizer, StopStringMatcher
from koserve.text.tokenizer import TextTokenizer

REPLACEMENT = "\ufffd"
# An announced streamed request that has not ended counts as in flight (a new request with its id is refused) while
# it saw a response (or started) within this many seconds: a stream abandoned mid-way (client gone, engine error)
# frees its id after that.
IN_FLIGHT_IDLE_S = 10.0


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


class StreamEnd:
    """How the engine ends a stream announced by :class:`StreamStart`, with TensorRT-LLM's rules (the CPU stand-in
    follows them): a streamed response carries only new tokens; an end id is never emitted, so when one is sampled
    the last streamed response carries no tokens; stop-word tokens are emitted and then generation stops; at most
    ``max_tokens`` tokens; not streaming, the one response is the whole answer."""

    __slots__ = ("start", "generated", "tail", "_longest")

    def __init__(self, start: StreamStart):
        self.start = start
        self.generated = 0
        self.tail: tuple[int, ...] = ()
        self._longest = max((len(w) for w in start.stop_ids), default=0)

    def last(self, ids: np.ndarray) -> bool:
        """Whether the response with these (new) token ids is the stream's last."""
        start = self.start
        if not start.streaming:
            return True
        n = int(ids.shape[0])
        if n == 0:
            return True
        self.generated += n
        if start.max_tokens and self.generated >= start.max_tokens:
            return True
        last_id = int(ids[-1])
        if last_id in start.end_ids:
            return True
        if self._longest:
            self.tail = (self.tail + tuple(int(t) for t in ids[-self._longest:]))[-self._longest:]
            for word in start.stop_ids:
                if word and self.tail[-len(word):] == tuple(word):
                    return True
        return False


@dataclass
class Decoded:
    """One postprocessing response: the text and, when the request asked, the token counts."""

    text: str
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None


class _Tracked:
    """A stream announced by preprocessing: its text state until its last response, then only that it ended."""

    __slots__ = ("text", "end", "last_used")

    def __init__(self, text: TextStream, end: StreamEnd):
        self.text: TextStream | None = text
        self.end = end
        self.last_used = time.monotonic()

    @property
    def ended(self) -> bool:
        return self.text is None


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
        self._streams: OrderedDict[str, TextStream | _Tracked] = OrderedDict()
        self._lock = threading.Lock()
        self._last_sweep = time.monotonic()

    def __len__(self) -> int:
        return len(self._streams)

    # -- announced streams ---------------------------------------------------------------------------------
    def start(self, start: StreamStart) -> str | None:
        """A request with this id starts (called by the start channel's thread): None, or why it is refused."""
        with self._lock:
            now = time.monotonic()
            old = self._streams.get(start.request_id)
            busy_for = min(self.idle_timeout_s, IN_FLIGHT_IDLE_S)
            # A stream blocks its id, and a stream is refused while any request with its id is in flight. Two
            # requests answered in one response each (not streamed) cannot be mixed up, so they may share an id:
            # NVIDIA's end_to_end_test calls preprocessing on its own (that announcement never ends) and then the
            # ensemble with the same id.
            if (isinstance(old, _Tracked) and not old.ended and (old.end.start.streaming or start.streaming)
                    and now - old.last_used < busy_for):
                return (
                    f"request id {start.request_id!r} is already in flight (another request with this id has not "
                    f"finished); the ensemble follows a stream by its id: give every concurrent request its own id"
                )
            words = tuple(dict.fromkeys([*self.stop_strings, *start.stop_words]))
            self._streams[start.request_id] = _Tracked(TextStream(self.tokenizer, words), StreamEnd(start))
            self._streams.move_to_end(start.request_id)
            self._trim(now)
        return None

    def reset(self, request_id: str) -> None:
        """Forget the stream an id had."""
        with self._lock:
            self._streams.pop(request_id, None)

    # -- responses -----------------------------------------------------------------------------------------
    def decode(self, request_id: str, ids) -> str:
        """Text for the ids of one engine response of request ``request_id``."""
        return self.decode_response(request_id, ids).text

    def decode_response(self, request_id: str, ids) -> Decoded:
        """The text (and asked-for token counts) for one engine response of request ``request_id``."""
        if not request_id:
            return Decoded(self.decode_alone(ids))
        with self._lock:
            now = time.monotonic()
            stream = self._streams.get(request_id)
            if stream is None:  # not announced (no start channel, or postprocessing called directly)
                stream = TextStream(self.tokenizer, self.stop_strings)
                self._streams[request_id] = stream
                self._trim(now)
            else:
                self._streams.move_to_end(request_id)
            if now - self._last_sweep > min(self.idle_timeout_s, 5.0):
                self._sweep(now)
        if isinstance(stream, TextStream):
            return Decoded(stream.add(ids))
        return self._decode_tracked(stream, np.asarray(ids))

    def _decode_tracked(self, tracked: _Tracked, ids: np.ndarray) -> Decoded:
        tracked.last_used = time.monotonic()
        start = tracked.end.start
        text_stream = tracked.text
        if text_stream is None and not start.streaming:  # another whole answer with this id: decode it alone
            return Decoded(self.decode_alone(ids))
        if text_stream is None:  # after the stream's end (e.g. the engine ran on after a text-level stop string)
            text = ""
            generated = 0
        else:
            generated = int(ids.shape[0])
            if not start.streaming and not start.exclude_input_in_output and start.input_len:
                # the whole answer, preceded by the prompt: the prompt's text is echoed, never stop-matched
                prompt, ids = ids[:start.input_len], ids[start.input_len:]
                generated -= int(prompt.shape[0])
                text = text_stream.detokenizer.add(prompt)
            else:
                text = ""
            text += text_stream.add(ids)
            if text_stream.stopped or tracked.end.last(ids):
                text += text_stream.finish()
                tracked.text = None  # ended: later responses of this id add nothing
        # the token count when asked, or when it is not one (as the BLS): clients count tokens exactly, and most
        # responses (one token each) carry one tensor less
        return Decoded(
            text,
            start.input_len if start.return_num_input_tokens else None,
            generated if start.return_num_output_tokens or generated != 1 else None,
        )

    def _trim(self, now: float) -> None:  # caller holds the lock
        while len(self._streams) > self.max_streams:
            self._streams.popitem(last=False)

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
