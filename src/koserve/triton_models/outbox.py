"""Streamed responses of the BLS: one response for several engine responses when the server is saturated.

Every ``ResponseSender.send`` of the python backend is a round trip to the tritonserver process, which then writes
one more gRPC/HTTP message that the client parses: at 64 streams on a CPU-bound box that cost, paid per token, was
most of what the BLS added to the engine's own cost. So a streaming request does not send its text itself: it adds
it to its :class:`StreamReply` and posts the reply to the model's :class:`StreamOutbox`, which sends it when it is due.
The outbox owns its timing but no thread: the engine reader calls it (:meth:`StreamOutbox.on_reader`, the transport's
one hook) after each engine response and before each wait for the socket, and waits at most until the next reply is
due, so every send happens on the reader's thread.

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

from koserve.triton_models.bls_stream import BlsStream

log = logging.getLogger("koserve")
ENGINE_GAP_WEIGHT = 0.01  # of one engine response in the moving average of the engine's per-stream gap
# the engine reader sends at most this many due replies per engine response: reading and sending interleave, so the
# first responses of 64 streams that arrive together do not wait behind each other's sends (TTFT at 64 streams 577 →
# ~240 ms p50, measured)
INLINE_SENDS_PER_RESPONSE = 2
# Read pacing: while streams are held this long (a saturated model), a read that brought fewer than
# SHORT_READ_RESPONSES engine responses (≈ 16 KB of one-token responses) is followed by a READ_PACE_S pause, so that
# the next read finds several (the pause adds <= 10 % to a held gap; docs/serving.md "How the BLS reads the engine")
PACE_FROM_INTERVAL_S = 0.01
READ_PACE_S = 0.001
SHORT_READ_RESPONSES = 100


class StreamReply:
    """One request's outgoing responses: its :class:`~koserve.triton_models.bls_stream.BlsStream` (``state``), sent
    by the Triton edge's ``build(text, tokens, log_probs, cum_log_prob)`` (makes a response) and
    ``send(response, final)`` (``response`` None: an empty final response). ``lock`` guards the state: hold it to
    change the state from another thread."""

    __slots__ = ("state", "_build", "_send", "lock", "_send_lock", "due")

    def __init__(self, build: Callable[..., Any], send: Callable[[Any, bool], None], prefix: str = "",
                 state: BlsStream | None = None):
        self.state = state if state is not None else BlsStream(prefix=prefix)
        self._build, self._send = build, send
        self.lock = threading.Lock()
        self._send_lock = threading.Lock()  # one flush at a time: responses leave in the order their text came
        self.due: float | None = None  # when the outbox sends it (None: not queued)

    @property
    def closed(self) -> bool:
        return self.state.closed

    @property
    def last_sent(self) -> float:
        return self.state.last_sent

    def add(self, text: str, tokens: int, log_probs: np.ndarray | None = None, cum_log_prob: np.ndarray | None = None,
            *, final: bool = False) -> None:
        with self.lock:
            self.state.add(text, tokens, log_probs, cum_log_prob, final=final)

    def fail(self, error_response: Any, *, keep_text: bool = True) -> None:
        """End with an error response, after the pending text when ``keep_text`` (a stream), else instead of it."""
        with self.lock:
            self.state.fail(error_response, keep_text=keep_text)

    def abandon(self) -> None:
        """The client went away: drop what is pending, send nothing more."""
        self.state.closed = True

    def flush(self) -> int:
        """Send what is pending as one response (final when the stream ended); returns the number of sends.

        Two threads may flush one reply (the engine reader, and ``close`` at shutdown): the second waits for the
        first to have sent, so text never overtakes the text before it."""
        with self._send_lock:
            with self.lock:
                pending = self.state.take()
            if pending is None:
                return 0
            sends = 0
            error = pending.error
            response = error  # None with nothing to say: an empty final response
            if pending.text or pending.tokens or pending.log_probs:
                response = self._build(pending.text, pending.tokens, pending.log_probs, pending.cum_log_prob)
                if error is not None:  # the text first, then the error as the final response
                    self._send(response, False)
                    sends += 1
                    response = error
            self._send(response, pending.final)
            self.state.last_sent = time.monotonic()
            return sends + 1


class StreamOutbox:
    """Sends the posted :class:`StreamReply` objects of one model, each when it is due (see the module doc for the
    policy), on the thread that calls :meth:`on_reader` (the engine reader).

    ``send_share``: the share of time sending may take before streams share responses (0: never; one response per
    engine response). ``max_interval_s``: the longest a stream waits between two responses; ``max_wait_gaps``: the
    same in multiples of the engine's average gap between two responses of a stream (0: no such limit), which
    :meth:`note_engine_gap` measures. ``streams_in_flight``: how many streams the model has now.
    """

    def __init__(self, send_share: float = 0.0, max_interval_s: float = 0.1,
                 streams_in_flight: Callable[[], int] | None = None, max_wait_gaps: float = 0.0):
        self.send_share = max(0.0, float(send_share))
        self.max_interval_s = max(0.0, float(max_interval_s))
        self.max_wait_gaps = max(0.0, float(max_wait_gaps))
        self.engine_gap_s = 0.0  # moving average of the time between two engine responses of one stream (0: none yet)
        self.send_cost_s = 0.0  # moving average of one response's build + send time
        self._streams_in_flight = streams_in_flight or (lambda: 1)
        self._queue: list[tuple[float, int, StreamReply]] = []  # heap of (due time, tie-breaker, reply)
        self._seq = itertools.count()
        self._mutex = threading.RLock()  # the queue (posts and sends happen on the reader; close on another thread)
        self._responses_read = 0  # engine responses since the reader last waited
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
        state = reply.state
        if state.closed:
            return
        due = state.next_due(self.interval())
        queued = reply.due
        if queued is not None and queued <= due:
            return  # already queued, as early or earlier (most posts under load)
        with self._mutex:
            if reply.due is not None and reply.due <= due:
                return
            reply.due = due
            heapq.heappush(self._queue, (due, next(self._seq), reply))

    def next_due(self) -> float | None:
        """When (``time.monotonic()``) the earliest queued reply is due; None with nothing queued."""
        queue = self._queue
        return queue[0][0] if queue else None

    def on_reader(self, waiting: bool) -> float | None:
        """The engine reader's hook (:data:`~koserve.triton_models.engine_types.ReaderHook`).

        After each engine response (``waiting`` False) it sends at most :data:`INLINE_SENDS_PER_RESPONSE` due
        replies, so that under load reading and sending interleave on the reader's thread (handing the GIL to
        another thread per send cost up to the interpreter's 5 ms switch interval). Before the reader waits
        (``waiting`` True) it paces reads (see :data:`PACE_FROM_INTERVAL_S`), sends every reply due and returns when
        the next one is due."""
        queue = self._queue
        if not waiting:
            self._responses_read += 1
            if not queue:
                return None
            now = time.monotonic()
            if queue[0][0] > now:
                return None
            with self._mutex:
                due = self._take_due(INLINE_SENDS_PER_RESPONSE, now)
            if due:
                self.send_round(due)
            return None
        responses, self._responses_read = self._responses_read, 0
        if 0 < responses < SHORT_READ_RESPONSES and self.interval() >= PACE_FROM_INTERVAL_S:
            time.sleep(READ_PACE_S)
        self.send_all_due()
        return queue[0][0] if queue else None

    def send_all_due(self) -> None:
        """Send every reply due now, on the calling thread."""
        if not self._queue:
            return
        with self._mutex:
            due = self._take_due(0, time.monotonic())
        if due:
            self.send_round(due)

    def _take_due(self, limit: int, now: float) -> list[StreamReply]:
        """The replies due at ``now`` (at most ``limit`` when > 0), off the queue — with the lock held."""
        queue, due = self._queue, []
        while queue and queue[0][0] <= now and not (limit and len(due) >= limit):
            at, _, reply = heapq.heappop(queue)
            if reply.due == at:  # else a stale entry: the reply was queued again, earlier
                reply.due = None
                due.append(reply)
        return due

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
                reply.state.closed = True
                log.warning("tensorrt_llm_bls: sending a response failed: %s", exc)

    def close(self) -> None:
        """Send what is queued."""
        with self._mutex:
            queued = [reply for _, _, reply in self._queue if reply.due is not None]
            self._queue.clear()
            for reply in queued:
                reply.due = None
        self.send_round(queued)
