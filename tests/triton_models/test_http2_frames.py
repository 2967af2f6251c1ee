"""The engine reader's DATA-frame merging (``engine_h2.DataFrameMerger``): same payload bytes in order, same
flow-controlled length, whole frames only, never above the frame-size limit; ``h2`` accepts the result."""

from __future__ import annotations

import random

import h2.config
import h2.connection
import h2.events
import hyperframe.frame as hf
import pytest
from h2.frame_buffer import FrameBuffer

from koserve.triton_models.engine_h2 import DataFrameMerger


def _data(stream_id, payload, *flags):
    frame = hf.DataFrame(stream_id, payload)
    for flag in flags:
        frame.flags.add(flag)
    return frame.serialize()


def _frames(wire: bytes):
    buf = FrameBuffer(server=False)
    buf.max_frame_size = 1 << 24
    buf.add_data(wire)
    return [(type(f).__name__, f.stream_id, bytes(getattr(f, "data", b"")), sorted(f.flags)) for f in buf]


WIRE = (_data(1, b"ab") + _data(1, b"cde") + _data(3, b"x") + _data(1, b"f") + _data(1, b"gh", "END_STREAM")
        + hf.PingFrame(0).serialize() + _data(1, b"ij") + _data(1, b"kl"))


def test_runs_of_plain_data_frames_on_the_stream_become_one_frame_the_rest_passes_unchanged():
    out = DataFrameMerger(1).merge(WIRE, 1000)
    assert _frames(out) == [
        ("DataFrame", 1, b"abcde", []), ("DataFrame", 3, b"x", []), ("DataFrame", 1, b"f", []),
        ("DataFrame", 1, b"gh", ["END_STREAM"]), ("PingFrame", 0, b"", []), ("DataFrame", 1, b"ijkl", []),
    ]


def test_a_merged_frame_never_exceeds_the_frame_size_limit():
    out = DataFrameMerger(1).merge(_data(1, b"ab") + _data(1, b"cde") + _data(1, b"f"), 4)
    assert [f[2] for f in _frames(out)] == [b"ab", b"cdef"]


@pytest.mark.parametrize("seed", range(5))
def test_any_split_into_reads_gives_the_same_payload_in_order_and_whole_frames_only(seed):
    rng = random.Random(seed)
    payloads = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) for _ in range(60)]
    wire = b"".join(_data(1 if rng.random() < 0.8 else 3, p) for p in payloads)
    merger, out, pos = DataFrameMerger(1), b"", 0
    while pos < len(wire):
        step = rng.randrange(1, 120)
        piece = merger.merge(wire[pos:pos + step], 1 << 14)
        pos += step
        buf = FrameBuffer(server=False)
        buf.max_frame_size = 1 << 24
        buf.add_data(piece)
        assert b"".join(f.serialize() for f in buf) == piece  # whole frames only: nothing half
        out += piece
    assert merger.merge(b"", 1 << 14) == b""  # nothing held once the last frame is whole
    got = _frames(out)
    assert b"".join(d for _, sid, d, _ in got if sid == 1) == b"".join(
        d for _, sid, d, _ in _frames(wire) if sid == 1)
    assert [d for _, sid, d, _ in got if sid == 3] == [d for _, sid, d, _ in _frames(wire) if sid == 3]


def test_h2_sees_merged_frames_with_the_same_flow_controlled_length():
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    client.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":path", "/x"), (":authority", "a")])
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.send_headers(1, [(":status", "200")])
    for i in range(10):
        server.send_data(1, bytes([i]) * 7)
    merger = DataFrameMerger(1)
    events = client.receive_data(merger.merge(server.data_to_send(), client.max_inbound_frame_size))
    data = [e for e in events if isinstance(e, h2.events.DataReceived)]
    assert len(data) == 1 and data[0].data == b"".join(bytes([i]) * 7 for i in range(10))
    assert data[0].flow_controlled_length == 70
    assert client.inbound_flow_control_window == 65535 - 70
