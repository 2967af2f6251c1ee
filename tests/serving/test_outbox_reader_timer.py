"""The outbox without a thread of its own (the BLS over gRPC): the engine reader posts, and sends what falls due
when it would wait — nothing is sent behind its back, nothing due is left unsent."""

from __future__ import annotations

import threading
import time

from koserve.triton_models.outbox import StreamOutbox, StreamReply


class Wire:
    def __init__(self):
        self.sent = []
        self.threads = set()

    def reply(self) -> StreamReply:
        def send(response, final):
            self.sent.append((response, final))
            self.threads.add(threading.get_ident())

        return StreamReply(lambda text, tokens, lp, cum: (text, tokens), send)


def test_posts_start_no_thread_and_the_caller_sends_what_is_due():
    outbox = StreamOutbox(send_share=0.25, max_interval_s=0.05, streams_in_flight=lambda: 1, own_thread=False)
    outbox.send_cost_s = 1.0  # interval = the 50 ms cap: a stream's second response waits
    wire = Wire()
    reply = wire.reply()
    before = threading.active_count()
    assert outbox.next_due() is None
    reply.add("안", 1)
    outbox.post(reply)  # the first response: due at once
    assert outbox.next_due() is not None and outbox.next_due() <= time.monotonic()
    outbox.send_all_due()
    assert wire.sent == [(("안", 1), False)] and outbox.next_due() is None
    reply.add("녕", 1)
    outbox.post(reply)
    due = outbox.next_due()
    assert due is not None and due > time.monotonic() + 0.02  # held: due after the interval
    outbox.send_all_due()
    assert len(wire.sent) == 1  # not due yet: nothing sent
    time.sleep(max(0.0, due - time.monotonic()) + 0.005)
    outbox.send_all_due()
    assert wire.sent[-1] == (("녕", 1), False)
    assert threading.active_count() == before  # no timer thread was started
    assert wire.threads == {threading.get_ident()}  # every send on the calling (reader) thread


def test_every_stream_due_is_sent_in_one_call_and_the_final_goes_at_once():
    outbox = StreamOutbox(send_share=0.25, max_interval_s=0.05, streams_in_flight=lambda: 8, own_thread=False)
    wire = Wire()
    replies = [wire.reply() for _ in range(8)]
    for i, reply in enumerate(replies):
        reply.add(str(i), 1, final=i == 7)
        outbox.post(reply)
    outbox.send_all_due()
    assert sorted(r[0][0] for r in wire.sent) == [str(i) for i in range(8)]
    assert replies[7].closed and outbox.next_due() is None


def test_close_sends_what_is_still_queued():
    outbox = StreamOutbox(send_share=0.25, max_interval_s=10.0, streams_in_flight=lambda: 1, own_thread=False)
    outbox.send_cost_s = 1.0
    wire = Wire()
    reply = wire.reply()
    reply.add("a", 1)
    outbox.post(reply)
    outbox.send_all_due()
    reply.add("b", 1)
    outbox.post(reply)  # held for 10 s
    outbox.close()
    assert [r[0] for r in wire.sent] == [("a", 1), ("b", 1)]
