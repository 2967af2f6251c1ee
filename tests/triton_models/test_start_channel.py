"""The request-start channel (``koserve.triton_models.startsignal``) between preprocessing and postprocessing: every
start is answered before the next step, a start round-trips, a sender without a receiver never raises."""

from __future__ import annotations

import uuid

from koserve.triton_models.startsignal import StartReceiver, StartSender, StreamStart


def test_start_signal_is_answered_before_the_next_step():
    """Every start is handled (registered or refused) before started() returns: ordering is exact."""
    name = b"\0koserve-test-" + uuid.uuid4().hex.encode()
    seen: list[str] = []

    def on_start(start: StreamStart):
        seen.append(start.request_id)
        return "busy" if start.request_id == "taken" else None

    receiver = StartReceiver(on_start, name)
    sender = StartSender(name)
    try:
        ids = [f"req-{i}" for i in range(2000)]  # far more than the kernel's datagram queue (10 here)
        for rid in ids:
            assert sender.started(StreamStart(rid, max_tokens=3, stop_ids=((1, 2),), stop_words=("###",))) is None
            assert seen[-1] == rid  # handled before started() returned
        assert seen == ids
        assert sender.started(StreamStart("")) is None and seen == ids  # no id: nothing sent
        assert sender.started(StreamStart("taken")) == "busy"
        assert sender.started(StreamStart("한국어-id")) is None and seen[-1] == "한국어-id"
    finally:
        sender.close()
        receiver.close()


def test_stream_start_round_trips():
    start = StreamStart("ks-1", streaming=True, max_tokens=7, input_len=3, exclude_input_in_output=False,
                        end_ids=(2,), stop_ids=((835, 29937),), stop_words=("###", "끝"),
                        return_num_input_tokens=True)
    assert StreamStart.decode(start.encode()) == start


def test_start_sender_without_receiver_never_raises():
    sender = StartSender(b"\0koserve-test-nobody-" + uuid.uuid4().hex.encode(), timeout_s=0.05)
    assert sender.started(StreamStart("x")) is None
    sender.close()
