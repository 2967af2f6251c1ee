"""Streamed responses of the BLS: one response for several engine responses when the server is saturated.

Every ``ResponseSender.send`` of the python backend is a round trip to the tritonserver process, which then writes
one more gRPC/HTTP message that the client parses: at 64 streams on a CPU-bound box that cost, paid per token, was
most of what the BLS added to the engine's own cost. So a streaming request does not send its text itself: it adds
it to its :class:`StreamReply` and posts the reply to the model's :class:`StreamOutbox`, which sends it when it is due
(from the engine reader's thread under load, from its own thread when the reader is quiet).

Policy: a stream's first and last responses go out at once. Between them a stream gets a response at most every
``streams in flight × send cost / send_share`` seconds, where ``send cost`` is the measured moving average of
building and sending one response — but never waits longer than ``max_wait_gaps`` times the engine's own average gap
between two responses of a stream, nor than ``max_interval_s`` (so a held stream's gap keeps in proportion to the
engine's pace whatever the load). Sending thus takes at most about ``send_share`` of the time: with few streams,
or when sends are cheap (an idle CPU), every engine response is sent as it comes; when the box is saturated, the
tokens that came meanwhile share one response (vLLM's v1 output collector merges a lagging stream's outputs the same
way). Each response says how many generated tokens it covers
(``num_output_tokens``, left out when it is one), so clients still count tokens exactly.
"""


from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger("koserve")
ENGINE_GAP_WEIGHT = 0.01  # of one engine response in the moving average of the engine's per-stream gap
READER_QUIET_S = 0.002  # the outbox thread sends only when the engine reader has not called send_due() for this long
# the engine reader sends at most this many due replies per engine response: reading and sending interleave, so the
# first responses of 64 streams that arrive together do not wait behind each other's sends (TTFT at 64 streams 577 →
# ~240 ms p50, measured)
INLINE_SENDS_PER_RESPONSE = 2


class StreamReply:
    """One request's text, token count and log probs not sent yet (thread-safe: the engine reader adds, the
    outbox's thread sends).

    ``build(text, tokens, log_probs, cum_log_prob)`` makes the response object; ``send(response, final)`` sends it
    (``response`` None: an empty final response).
    """

    __slots__ = ("_build", "_send", "_lock", "_send_lock", "_text", "_tokens", "_log_probs", "_cum_log_prob",
                 "_final", "_error", "closed", "due", "last_sent")

    def __init__(self, build: Callable[..., Any], send: Callable[[Any, bool], None], prefix: str = ""):
        self._build, self._send = build, send
        self._lock = threading.Lock()  # the pending state
        self._send_lock = threading.Lock()  # one flush at a time: responses leave in the order their text came
        self._text: list[str] = [prefix] if prefix else []
        self._tokens = 0
        self._log_probs: list[np.ndarray] = []
        self._cum_log_prob: np.ndarray | None = None
        self._final = False
        self._error = None
        self.closed = False  # the final response went out (or the client is gone): nothing more is sent
        self.due: float | None = None  # when the outbox sends it (None: not queued)
        self.last_sent = 0.0  # monotonic time of the last send (0: none yet)

    @property
    def ending(self) -> bool:
        """The stream ended (its final response is pending): sent without waiting."""
        return self._final

    def add(self, text: str, tokens: int, log_probs: np.ndarray | None = None, cum_log_prob: np.ndarray | None = None,
            *, final: bool = False) -> None:
        with self._lock:
            if text:
                self._text.append(text)
            self._tokens += tokens
            if log_probs is not None:
                self._log_probs.append(log_probs)
            if cum_log_prob is not None:
                self._cum_log_prob = cum_log_prob
            self._final = self._final or final

    def fail(self, error_response: Any, *, keep_text: bool = True) -> None:
        """End with an error response, after the pending text when ``keep_text`` (a stream), else instead of it."""
        with self._lock:
            self._error = error_response
            self._final = True
            if not keep_text:
                self._text, self._tokens, self._log_probs = [], 0, []

    def abandon(self) -> None:
        """The client went away: drop what is pending, send nothing more."""
        self.closed = True

    def flush(self) -> int:
        """Send what is pending as one response (final when the stream ended); returns the number of sends.

        Two threads may flush one reply (the engine reader and the outbox thread): the second waits for the first
        to have sent, so text never overtakes the text before it."""
        with self._send_lock:
            with self._lock:
                if self.closed or not (self._final or self._tokens or self._text or self._log_probs):
                    return 0
                pending = self._text
                text = pending[0] if len(pending) == 1 else "".join(pending)  # (non-empty pieces only)
                pending.clear()
                tokens, log_probs, cum = self._tokens, self._log_probs, self._cum_log_prob
                final, error = self._final, self._error
                self._tokens = 0
                if log_probs:
                    self._log_probs = []
                else:
                    log_probs = []  # (not the pending list: the builder may keep what it is given)
                if final:
                    self.closed = True
            sends = 0
            response = error  # None with nothing to say: an empty final response
            if text or tokens or log_probs:
                response = self._build(text, tokens, log_probs, cum)
                if error is not None:  # the text first, then the error as the final response
                    self._send(response, False)
                    sends += 1
                    response = error
            self._send(response, final)
            self.last_sent = time.monotonic()
            return sends + 1


class StreamOutbox:
    """Sends the posted :class:`StreamReply` objects of one model from its own thread, each when it is due (see
    the module doc for the policy). ``ResponseSender.send`` releases the GIL while it waits for the server, so engine
    responses keep being read meanwhile.

    ``send_share``: the share of time sending may take before streams share responses (0: never; one response per
    engine response). ``max_interval_s``: the longest a stream waits between two responses; ``max_wait_gaps``: the
    same in multiples of the engine's average gap between two responses of a stream (0: no such limit), which
    :meth:`note_engine_gap` measures.
    ``streams_in_flight``: how many streams the model has now. ``own_thread`` False: no timer thread — every post
    comes from one thread (the engine reader), which also sends what falls due while it waits
    (:meth:`next_due`, :meth:`send_all_due`): no wake-ups of a second thread and no GIL hand-overs to it.
    """

    def __init__(self, send_share: float = 0.0, max_interval_s: float = 0.1,
                 streams_in_flight: Callable[[], int] | None = None, max_wait_gaps: float = 0.0,
                 own_thread: bool = True):
        self.send_share = max(0.0, float(send_share))
        self.max_interval_s = max(0.0, float(max_interval_s))
        self.max_wait_gaps = max(0.0, float(max_wait_gaps))
        self.engine_gap_s = 0.0  # moving average of the time between two engine responses of one stream (0: none yet)
        self.send_cost_s = 0.0  # moving average of one response's build + send time
        self._streams_in_flight = streams_in_flight or (lambda: 1)
        self._queue: list[tuple[float, int, StreamReply]] = []  # heap of (due time, tie-breaker, reply)
        self._seq = itertools.count()
        # the queue's lock, entered directly (C) on the per-response paths; ``_cond`` (a Python-level wrapper of
        # it) only to wait and notify
        self._mutex = threading.RLock()
        self._cond = threading.Condition(self._mutex)
        self._sleeping_until: float | None = None  # the thread's wake-up time while it waits (None: it is busy)
        self._reader_seen = 0.0  # when the engine reader last called send_due()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.own_thread = own_thread
        self.sends = 0

    def interval(self) -> float:
        """Seconds between two responses of one stream right now."""
        share = self.send_share
        if not share:
            return 0.0
        limit = self.max_interval_s
        if self.max_wait_gaps and self.engine_gap_s:
            by_gaps = self.max_wait_gaps * self.engine_gap_s
            if by_gaps < limit:  # (min() without the builtin's call: this runs once per engine response)
                limit = by_gaps
        by_cost = self._streams_in_flight() * self.send_cost_s / share
        return by_cost if by_cost < limit else limit

    def note_engine_gap(self, gap_s: float) -> None:
        """One stream's time between two engine responses (called by the engine reader)."""
        self.engine_gap_s += (gap_s - self.engine_gap_s) * ENGINE_GAP_WEIGHT

    def post(self, reply: StreamReply) -> None:
        """Have ``reply`` sent when it is due (once, however often it is posted before it is sent)."""
        if reply.closed:
            return
        interval = self.interval()
        due = reply.last_sent + interval if (interval and reply.last_sent and not reply._final) else 0.0
        queued = reply.due
        if queued is not None and queued <= due:
            # Already queued as early (most posts under load), seen without the lock: the entry's flush comes after
            # _take_due clears ``due`` — after this read, hence after the text this post follows was added.
            return
        with self._mutex:
            if reply.due is not None and reply.due <= due:
                return  # already queued, as early or earlier
            reply.due = due
            heapq.heappush(self._queue, (due, next(self._seq), reply))
            if not self.own_thread:
                return  # the posting thread sends it (next_due / send_all_due)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="koserve-outbox", daemon=True)
                self._thread.start()
            # wake the thread only when this reply is due before it would wake anyway: one wake-up per round, not
            # one per engine response
            if self._sleeping_until is not None and due < self._sleeping_until:
                self._cond.notify()

    def _take_due(self, limit: int = 0, now: float | None = None) -> tuple[list[StreamReply], float | None]:
        """(replies due at ``now`` (default: now) — at most ``limit`` when > 0 —, the time the next one is due) —
        with the lock held."""
        if now is None:
            now = time.monotonic()
        queue, due = self._queue, []
        while queue and queue[0][0] <= now and not (limit and len(due) >= limit):
            at, _, reply = heapq.heappop(queue)
            if reply.due == at:  # else a stale entry: the reply was queued again, earlier
                reply.due = None
                due.append(reply)
        return due, (queue[0][0] if queue else None)

    def send_due(self) -> None:
        """Send replies due now (at most :data:`INLINE_SENDS_PER_RESPONSE`), on the calling thread.

        The engine reader calls this after each engine response, so under load the sends happen on that thread:
        handing the GIL to the outbox thread for each send costs up to the interpreter's switch interval (5 ms) while
        the reader is busy, which at 64 streams made rounds of sends last longer than the interval itself."""
        now = time.monotonic()
        self._reader_seen = now
        queue = self._queue
        if not queue or queue[0][0] > now:
            return
        with self._mutex:
            due, _ = self._take_due(INLINE_SENDS_PER_RESPONSE, now)
        if due:
            self.send_round(due)
            self._reader_seen = time.monotonic()

    def next_due(self) -> float | None:
        """When (``time.monotonic()``) the earliest queued reply is due; None with nothing queued."""
        queue = self._queue
        return queue[0][0] if queue else None

    def send_all_due(self) -> None:
        """Send every reply due now, on the calling thread (the engine reader, when it would wait anyway)."""
        if not self._queue:
            return
        with self._mutex:
            due, _ = self._take_due()
        if due:
            self.send_round(due)

    def _run(self) -> None:
        """The timer side: sends what is due while the engine reader is quiet (low load, or a slow engine)."""
        while True:
            with self._cond:
                while True:
                    if self._stop:
                        return  # close() sends what is queued
                    now = time.monotonic()
                    next_at = self._queue[0][0] if self._queue else None
                    if next_at is not None and next_at <= now:
                        quiet_at = self._reader_seen + READER_QUIET_S
                        if now >= quiet_at:
                            due, _ = self._take_due()
                            if due:
                                break
                            continue
                        wake = quiet_at  # the reader is busy: it sends what is due itself
                    else:
                        wake = next_at
                    self._sleeping_until = float("inf") if wake is None else wake
                    self._cond.wait(timeout=None if wake is None else max(0.0, wake - now))
                    self._sleeping_until = None
            self.send_round(due)

    def send_round(self, replies: list[StreamReply]) -> None:
        clock = time.perf_counter
        for reply in replies:
            try:
                started = clock()
                sent = reply.flush()
                if sent:
                    self.sends += sent
                    self.send_cost_s += ((clock() - started) / sent - self.send_cost_s) * 0.05
            except Exception as exc:  # noqa: BLE001 - one request's failed send must not stop the others
                reply.closed = True
                log.warning("tensorrt_llm_bls: sending a response failed: %s", exc)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, stop the thread."""
        with self._cond:
            self._stop = True
            queued = [reply for _, _, reply in self._queue if reply.due is not None]
            self._queue.clear()
            for reply in queued:
                reply.due = None
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        self.send_round(queued)
