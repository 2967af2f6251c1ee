"""The BLS's streamed-response policy (koserve.triton_models.outbox), outside Triton: what is sent, when, and how many
tokens each response says it covers. The outbox has no thread: the engine reader calls its hook
(:meth:`StreamOutbox.on_reader`) after each engine response and before each wait, and every send happens there."""

from __future__ import annotations

import threading
import time

import pytest

import koserve.triton_models.outbox as outbox_module
from koserve.triton_models.outbox import INLINE_SENDS_PER_RESPONSE, StreamOutbox, StreamReply


class Wire:
    """Records what a reply sends: (text, tokens) per response (None: an empty final one) and the final flags."""

    def __init__(self, send_delay_s: float = 0.0):
        self.sent: list[tuple[object, bool, float]] = []
        self.send_delay_s = send_delay_s
        self.lock = threading.Lock()
        self.threads: set[int] = set()

    def build(self, text, tokens, log_probs, cum_log_prob):
        return (text, tokens)

    def send(self, response, final):
        if self.send_delay_s:
            time.sleep(self.send_delay_s)
        with self.lock:
            self.sent.append((response, final, time.monotonic()))
            self.threads.add(threading.get_ident())

    def reply(self, prefix: str = "") -> StreamReply:
        return StreamReply(self.build, self.send, prefix=prefix)

    def responses(self):
        with self.lock:
            return [(r, f) for r, f, _ in self.sent]

    def wait_for(self, n: int, outbox: StreamOutbox, timeout: float = 5.0) -> None:
        """Be the engine reader with nothing to read: call the hook before each wait and wait until the time it
        returns, until ``n`` responses went out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            at = outbox.on_reader(True)
            with self.lock:
                if len(self.sent) >= n:
                    return
            pause = 0.002 if at is None else min(0.05, max(0.0, at - time.monotonic()))
            time.sleep(pause)
        pytest.fail(f"expected {n} responses within {timeout} s, got {self.responses()}")


def test_reply_sends_everything_pending_as_one_response():
    wire = Wire()
    reply = wire.reply(prefix="질문: ")
    reply.add("안", 1)
    reply.add("", 1)  # a byte-fallback piece: no text yet, still a token
    reply.add("녕", 2)
    assert reply.flush() == 1
    assert wire.responses() == [(("질문: 안녕", 4), False)]
    assert reply.flush() == 0  # nothing pending: nothing sent
    reply.add("하세요", 1, final=True)
    assert reply.flush() == 1 and reply.closed
    assert wire.responses()[-1] == (("하세요", 1), True)
    reply.add("late", 1)
    assert reply.flush() == 0  # nothing after the final response


def test_reply_empty_final_and_errors():
    wire = Wire()
    reply = wire.reply()
    reply.add("", 0, final=True)  # the engine's empty final response, nothing pending
    reply.flush()
    assert wire.responses() == [(None, True)]

    wire = Wire()
    streamed = wire.reply()
    streamed.add("부분", 2)
    streamed.fail("ERR")
    assert streamed.flush() == 2  # a stream keeps the text it had, then ends with the error
    assert wire.responses() == [(("부분", 2), False), ("ERR", True)]

    wire = Wire()
    whole = wire.reply()
    whole.add("부분", 2)
    whole.fail("ERR", keep_text=False)  # a non-streamed request: one response, the error
    assert whole.flush() == 1
    assert wire.responses() == [("ERR", True)]

    wire = Wire()
    gone = wire.reply()
    gone.add("x", 1)
    gone.abandon()
    assert gone.flush() == 0 and wire.responses() == []


def test_outbox_sends_each_engine_response_when_sharing_is_off():
    wire = Wire()
    outbox = StreamOutbox(send_share=0.0)
    try:
        reply = wire.reply()
        for i, piece in enumerate(["가", "나", "다"]):
            reply.add(piece, 1)
            outbox.post(reply)
            wire.wait_for(i + 1, outbox)
        reply.add("", 0, final=True)
        outbox.post(reply)
        wire.wait_for(4, outbox)
        assert wire.responses() == [(("가", 1), False), (("나", 1), False), (("다", 1), False), (None, True)]
    finally:
        outbox.close()


def test_outbox_lets_tokens_share_a_response_when_sending_is_expensive():
    wire = Wire()
    outbox = StreamOutbox(send_share=0.25, max_interval_s=0.2, streams_in_flight=lambda: 8)
    outbox.send_cost_s = 0.01  # as if measured: 8 streams × 10 ms / 0.25 = 320 ms, capped at 200 ms
    assert outbox.interval() == pytest.approx(0.2)
    try:
        reply = wire.reply()
        reply.add("첫", 1)
        outbox.post(reply)
        wire.wait_for(1, outbox)  # the first response goes out at once
        first_at = wire.sent[0][2]
        for piece in ["번", "째", " 줄"]:
            reply.add(piece, 1)
            outbox.post(reply)
        time.sleep(0.05)
        outbox.on_reader(True)
        assert len(wire.responses()) == 1  # held: the stream had a response less than 200 ms ago
        wire.wait_for(2, outbox)
        assert wire.responses()[1] == (("번째 줄", 3), False)
        assert wire.sent[1][2] - first_at >= 0.15
        reply.add("끝", 1, final=True)
        outbox.post(reply)
        wire.wait_for(3, outbox, timeout=0.15)  # the last response does not wait for the interval
        assert wire.responses()[2] == (("끝", 1), True)
    finally:
        outbox.close()


def test_outbox_holds_a_stream_at_most_a_few_engine_gaps():
    outbox = StreamOutbox(send_share=0.25, max_interval_s=10.0, streams_in_flight=lambda: 8, max_wait_gaps=3)
    outbox.send_cost_s = 0.01  # 8 streams × 10 ms / 0.25 = 320 ms
    assert outbox.interval() == pytest.approx(0.32)  # no engine gap measured yet: no such limit
    outbox.note_engine_gap(0.02)
    assert outbox.engine_gap_s == pytest.approx(0.0002)  # a moving average: one gap moves it a little
    for _ in range(1000):
        outbox.note_engine_gap(0.02)
    assert outbox.engine_gap_s == pytest.approx(0.02, rel=1e-3)
    assert outbox.interval() == pytest.approx(0.06, rel=1e-3)  # 3 engine gaps of 20 ms
    outbox.max_wait_gaps = 0.0
    assert outbox.interval() == pytest.approx(0.32)
    outbox.max_interval_s = 0.1
    assert outbox.interval() == pytest.approx(0.1)


def test_outbox_measures_the_send_cost_and_close_sends_what_is_queued():
    wire = Wire(send_delay_s=0.004)
    outbox = StreamOutbox(send_share=0.5, max_interval_s=10.0)
    replies = [wire.reply() for _ in range(5)]
    for reply in replies:
        reply.add("가", 1)
        outbox.post(reply)
    wire.wait_for(5, outbox)
    # a moving average (weight 0.05 per send) of sends taking >= 4 ms: >= (1 - 0.95**5) * 4 ms after five
    assert outbox.sends == 5 and outbox.send_cost_s >= 0.0009
    for reply in replies:  # now due only after 1 × cost / 0.5 (not yet): close() sends them anyway
        reply.add("나", 1)
        outbox.post(reply)
    outbox.close()
    assert len(wire.responses()) == 10


def test_two_threads_flushing_one_reply_keep_the_text_in_order():
    """The engine reader and ``close`` at shutdown may both flush a reply: the second send waits for the first."""
    wire = Wire()
    slow_first = threading.Event()

    def send(response, final):
        if not slow_first.is_set():
            slow_first.set()
            time.sleep(0.1)  # the first send is slow (a busy server)
        wire.send(response, final)

    reply = StreamReply(wire.build, send)
    reply.add("앞", 1)
    first = threading.Thread(target=reply.flush)
    first.start()
    assert slow_first.wait(5)
    reply.add("뒤", 1)
    reply.flush()  # on this thread, while the first send is still going on
    first.join(5)
    assert wire.responses() == [(("앞", 1), False), (("뒤", 1), False)]


def test_the_engine_reader_sends_a_few_due_replies_per_engine_response():
    wire = Wire()
    outbox = StreamOutbox(send_share=0.0)
    try:
        replies = [wire.reply() for _ in range(5)]
        for reply in replies:
            reply.add("가", 1)
            outbox.post(reply)
        assert outbox.on_reader(False) is None
        assert len(wire.responses()) == INLINE_SENDS_PER_RESPONSE  # then back to reading
        outbox.on_reader(False)
        outbox.on_reader(False)
        assert len(wire.responses()) == 5
    finally:
        outbox.close()


# -- the reader is the outbox's timer ------------------------------------------------------------------------------
def test_posts_start_no_thread_and_the_reader_sends_what_is_due():
    outbox = StreamOutbox(send_share=0.25, max_interval_s=0.05, streams_in_flight=lambda: 1)
    outbox.send_cost_s = 1.0  # interval = the 50 ms cap: a stream's second response waits
    wire = Wire()
    reply = wire.reply()
    before = threading.active_count()
    assert outbox.next_due() is None and outbox.on_reader(True) is None
    reply.add("안", 1)
    outbox.post(reply)  # the first response: due at once
    assert outbox.next_due() is not None and outbox.next_due() <= time.monotonic()
    assert outbox.on_reader(True) is None  # sent; nothing else queued
    assert wire.responses() == [(("안", 1), False)]
    reply.add("녕", 1)
    outbox.post(reply)
    due = outbox.on_reader(True)  # not due yet: nothing sent, the reader waits until then
    assert due is not None and due > time.monotonic() + 0.02
    assert len(wire.sent) == 1
    time.sleep(max(0.0, due - time.monotonic()) + 0.005)
    assert outbox.on_reader(True) is None
    assert wire.responses()[-1] == (("녕", 1), False)
    assert threading.active_count() == before  # no thread was started
    assert wire.threads == {threading.get_ident()}  # every send on the calling (reader) thread


def test_every_stream_due_is_sent_before_a_wait_and_the_final_goes_at_once():
    outbox = StreamOutbox(send_share=0.25, max_interval_s=0.05, streams_in_flight=lambda: 8)
    wire = Wire()
    replies = [wire.reply() for _ in range(8)]
    for i, reply in enumerate(replies):
        reply.add(str(i), 1, final=i == 7)
        outbox.post(reply)
    outbox.on_reader(True)
    assert sorted(r[0][0] for r in wire.responses()) == [str(i) for i in range(8)]
    assert replies[7].closed and outbox.next_due() is None


def test_close_sends_what_is_still_queued():
    outbox = StreamOutbox(send_share=0.25, max_interval_s=10.0, streams_in_flight=lambda: 1)
    outbox.send_cost_s = 1.0
    wire = Wire()
    reply = wire.reply()
    reply.add("a", 1)
    outbox.post(reply)
    outbox.on_reader(True)
    reply.add("b", 1)
    outbox.post(reply)  # held for 10 s
    outbox.close()
    assert [r[0] for r in wire.responses()] == [("a", 1), ("b", 1)]


@pytest.mark.parametrize(("responses", "held_s", "paused"), [
    (3, 0.05, True),  # a short read while streams are held >= 10 ms: pause so that the next read finds several
    (outbox_module.SHORT_READ_RESPONSES, 0.05, False),  # a long read: no pause
    (3, 0.001, False),  # streams barely held (few streams, cheap sends): read each response as it comes
    (0, 0.05, False),  # the wait's time came with nothing read: no pause
])
def test_reads_are_paced_only_after_a_short_read_while_streams_are_held(monkeypatch, responses, held_s, paused):
    sleeps = []
    monkeypatch.setattr(outbox_module.time, "sleep", sleeps.append)
    outbox = StreamOutbox(send_share=0.25, max_interval_s=held_s, streams_in_flight=lambda: 64)
    outbox.send_cost_s = 1.0  # interval = the cap
    for _ in range(responses):
        outbox.on_reader(False)
    outbox.on_reader(True)
    assert sleeps == ([outbox_module.READ_PACE_S] if paused else [])
    outbox.on_reader(True)  # the count starts again after each wait
    assert len(sleeps) == (1 if paused else 0)
