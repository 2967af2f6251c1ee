"""GuardedSender: no is_cancelled() reaches Triton once a request's final response is on its way (it would read a
response factory the server has freed)."""

from __future__ import annotations

import threading

import pytest

from koserve.triton_models.guarded_sender import GuardedSender

FINAL = 1  # TRITONSERVER_RESPONSE_COMPLETE_FINAL


class RecordingSender:
    """Stands in for pb_utils' response sender: records calls; a send can be held until released."""

    def __init__(self, cancelled: bool = False):
        self.calls: list[tuple] = []
        self.cancelled = cancelled
        self.sending = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def send(self, response=None, flags=0):
        self.calls.append(("send", response, flags))
        self.sending.set()
        assert self.release.wait(10)

    def is_cancelled(self):
        self.calls.append(("is_cancelled",))
        return self.cancelled


def test_asks_the_server_until_the_final_send_then_never():
    raw = RecordingSender(cancelled=True)
    sender = GuardedSender(raw, FINAL)
    sender.send("r1")
    assert sender.is_cancelled() is True
    sender.send(flags=FINAL)
    assert sender.is_cancelled() is False
    assert raw.calls == [("send", "r1", 0), ("is_cancelled",), ("send", None, FINAL)]


def test_a_check_racing_the_final_send_waits_for_it_and_does_not_ask():
    raw = RecordingSender(cancelled=True)
    raw.release.clear()
    sender = GuardedSender(raw, FINAL)
    sending = threading.Thread(target=sender.send, args=("last",), kwargs={"flags": FINAL})
    sending.start()
    assert raw.sending.wait(10)
    answers: list[bool] = []
    checking = threading.Thread(target=lambda: answers.append(sender.is_cancelled()))
    checking.start()
    checking.join(0.2)
    assert checking.is_alive() and answers == []  # held while the final send is in the server
    raw.release.set()
    sending.join(10)
    checking.join(10)
    assert answers == [False]
    assert raw.calls == [("send", "last", FINAL)]


def test_a_failed_final_send_still_closes_the_sender():
    class Failing(RecordingSender):
        def send(self, response=None, flags=0):
            raise RuntimeError("Unable to send response")

    raw = Failing(cancelled=True)
    sender = GuardedSender(raw, FINAL)
    with pytest.raises(RuntimeError, match="Unable to send"):  # the send error reaches the caller
        sender.send("x", flags=FINAL)
    assert sender.is_cancelled() is False and raw.calls == []
