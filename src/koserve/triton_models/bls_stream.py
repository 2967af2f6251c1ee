"""One ``tensorrt_llm_bls`` request as pure state: engine token ids in; text deltas, token counts and the time its
next response is due out. No Triton objects, no threads, no clock of its own (callers pass the time), so it is
tested alone (tests/triton_models/test_bls_stream.py).

The text is exact (:class:`~koserve.triton_models.postprocess.TextStream`: whole characters, spaces kept, stop strings
removed). What the engine sent since the last response waits here until the outbox
(:mod:`koserve.triton_models.outbox`) says it is due: a stream's first and last responses at once, the others at most
every ``interval`` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from koserve.triton_models.postprocess import TextStream


@dataclass(slots=True)
class PendingResponse:
    """What one response carries: the text and token count since the last one (+ log probs), whether it ends the
    stream, and the error that then follows it (message, Triton error code)."""

    text: str
    tokens: int
    log_probs: list
    cum_log_prob: np.ndarray | None
    final: bool
    error: object = None


class BlsStream:
    """One request's text and what its next response will carry."""

    __slots__ = ("text", "stop_early", "ended", "closed", "last_sent", "_pieces", "_tokens", "_log_probs",
                 "_cum_log_prob", "_final", "_error")

    def __init__(self, text: TextStream | None = None, prefix: str = ""):
        self.text = text  # None: deltas come as text (add)
        self.stop_early = False  # the request ended before the engine's last response (a stop string matched)
        self.ended = False  # no more engine responses are taken
        self.closed = False  # the final response was taken (or the client went away): nothing more to send
        self.last_sent = 0.0  # when the last response was sent (0: none yet)
        self._pieces: list[str] = [prefix] if prefix else []
        self._tokens = 0
        self._log_probs: list[np.ndarray] = []
        self._cum_log_prob: np.ndarray | None = None
        self._final = False
        self._error = None

    @property
    def ending(self) -> bool:
        """The final response is pending: it goes out without waiting."""
        return self._final

    def add_ids(self, ids: np.ndarray, log_probs=None, cum_log_prob=None, final: bool = False) -> bool:
        """One engine response; True when it ended the request (the engine's last, or a stop string matched)."""
        if self.ended:
            return False
        text = self.text
        delta = text.add(ids)
        ended = final or text.stopped
        if ended:
            delta += text.finish()
            self.ended = True
            self.stop_early = not final
        self.add(delta, ids.size, log_probs, cum_log_prob, final=ended)
        return ended

    def add(self, text: str, tokens: int, log_probs: np.ndarray | None = None, cum_log_prob: np.ndarray | None = None,
            *, final: bool = False) -> None:
        """A text delta covering ``tokens`` generated tokens."""
        if text:
            self._pieces.append(text)
        self._tokens += tokens
        if log_probs is not None:
            self._log_probs.append(log_probs)
        if cum_log_prob is not None:
            self._cum_log_prob = cum_log_prob
        if final:
            self._final = True

    def fail(self, error, *, keep_text: bool = True) -> bool:
        """End with ``error`` after the pending text when ``keep_text`` (a stream), else instead of it; False when the
        request had already ended."""
        if self.ended:
            return False
        self.ended = True
        self._error = error
        self._final = True
        if not keep_text:
            self._pieces, self._tokens, self._log_probs = [], 0, []
        return True

    def abandon(self) -> bool:
        """The client went away: nothing more is sent; False when the request had already ended."""
        if self.ended:
            return False
        self.ended = self.closed = True
        return True

    def next_due(self, interval: float) -> float:
        """When the pending response is due (``time.monotonic()`` time; 0: at once)."""
        if self._final or not interval or not self.last_sent:
            return 0.0
        return self.last_sent + interval

    def take(self) -> PendingResponse | None:
        """The pending response, cleared (None: nothing to send); after the final one the stream is closed."""
        if self.closed or not (self._final or self._tokens or self._pieces or self._log_probs):
            return None
        pieces = self._pieces
        text = pieces[0] if len(pieces) == 1 else "".join(pieces)  # (non-empty pieces only)
        pieces.clear()
        log_probs = self._log_probs
        if log_probs:
            self._log_probs = []
        else:
            log_probs = []  # (not the pending list: the builder may keep what it is given)
        pending = PendingResponse(text, self._tokens, log_probs, self._cum_log_prob, self._final, self._error)
        self._tokens = 0
        if self._final:
            self.closed = True
        return pending
