"""The BLS's engine transport (``koserve.triton_models.engine_h2.H2EngineClient``) against a real tritonserver's gRPC
endpoint: concurrent requests each get their own tokens and a final response, a request larger than the server's
flow-control window, an engine error with its Triton code, ids in flight, ``stop``, an unreachable engine, a
dropped connection."""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid

import numpy as np
import pytest

from koserve.triton_models.engine_h2 import H2EngineClient
from koserve.triton_models.engine_types import EngineError


OUTPUTS = ["output_ids", "sequence_length"]


class Collector:
    """An engine handler that keeps what it is given."""

    def __init__(self):
        self.ids: list[int] = []
        self.chunks = 0
        self.error: tuple[str, bool] | None = None
        self.done = threading.Event()
        self.first_chunks = threading.Event()

    def on_chunk(self, chunk):
        self.ids += chunk.ids.tolist()
        self.chunks += 1
        if self.chunks >= 3:
            self.first_chunks.set()
        if chunk.final:
            self.done.set()

    def on_error(self, message, code):
        self.error = (message, code)
        self.done.set()


def engine_tensors(tokens: int, **extra) -> dict[str, np.ndarray]:
    return {
        "input_ids": np.array([[128000, 9906, 1917]], dtype=np.int32),
        "input_lengths": np.array([[3]], dtype=np.int32),
        "request_output_len": np.array([[tokens]], dtype=np.int32),
        "streaming": np.array([[True]], dtype=np.bool_),
        **extra,
    }


@pytest.fixture(scope="module")
def server(triton_servers, replay_text_file):
    return triton_servers("akallama-70b", "replay", replay_text_file=replay_text_file)


@pytest.fixture
def client(server):
    engine = H2EngineClient(server.grpc_url, "tensorrt_llm")
    yield engine
    engine.close()


def test_concurrent_requests_each_get_their_own_tokens_and_a_final(client):
    lengths = [5, 12, 20, 1, 30]
    handlers = [Collector() for _ in lengths]
    for n, handler in zip(lengths, handlers):
        client.submit(uuid.uuid4().hex, engine_tensors(n), OUTPUTS, handler)
    for handler in handlers:
        assert handler.done.wait(30), "no final response"
    longest = handlers[-1].ids
    for n, handler in zip(lengths, handlers):
        assert handler.error is None
        assert handler.ids == longest[:n]  # the replay text's first n tokens, routed to the right request


def test_a_request_larger_than_the_servers_flow_control_window_arrives_whole(client):
    # 2 x 1.5 M int32 = 12 MB of bad words: more than the HTTP/2 windows Triton's gRPC server grants (4-8 MB seen),
    # so the client must wait for its WINDOW_UPDATE frames. Token 7 never comes in the replay text: same tokens.
    n = 1_500_000
    words = np.stack([np.full(n, 7, dtype=np.int32), np.arange(1, n + 1, dtype=np.int32)])[None]
    small, big = Collector(), Collector()
    client.submit(uuid.uuid4().hex, engine_tensors(10), OUTPUTS, small)
    client.submit(uuid.uuid4().hex, engine_tensors(10, bad_words_list=words), OUTPUTS, big)
    assert big.done.wait(60) and small.done.wait(30)
    assert big.error is None and big.ids == small.ids and len(big.ids) == 10
    assert client._conn.window_waits >= 1  # the test still tests that


def test_an_engine_error_reaches_the_handler_with_the_request_error_code(client):
    """Triton sends a request's error on the shared stream as text only: its code is engine_wire's fixed
    REQUEST_ERROR_CODE whatever the text says (the BLS refuses bad input itself before the engine sees it)."""
    handler = Collector()
    too_long = {"input_ids": np.full((1, 400), 9906, dtype=np.int32), "input_lengths": np.array([[400]], np.int32)}
    client.submit(uuid.uuid4().hex, engine_tensors(5, **too_long), OUTPUTS, handler)
    assert handler.done.wait(30)
    message, code = handler.error
    assert "input length 400 exceeds the engine's max_input_len 384" in message and code == "INTERNAL"
    ok = Collector()  # the shared stream is still good
    client.submit(uuid.uuid4().hex, engine_tensors(4), OUTPUTS, ok)
    assert ok.done.wait(30) and ok.error is None and len(ok.ids) == 4


def test_an_id_in_flight_is_refused(triton_servers):
    slow = triton_servers("akallama-70b", "replay", replay_delay_ms=30, max_batch_size=1)
    engine = H2EngineClient(slow.grpc_url, "tensorrt_llm")
    try:
        request_id = uuid.uuid4().hex
        first = Collector()
        engine.submit(request_id, engine_tensors(5), OUTPUTS, first)
        assert engine.in_flight(request_id)
        with pytest.raises(Exception, match="already in flight"):
            engine.submit(request_id, engine_tensors(5), OUTPUTS, Collector())
        assert first.done.wait(30) and first.error is None
        assert not engine.in_flight(request_id)
    finally:
        engine.close()


def test_stop_ends_a_request_in_flight(triton_servers):
    """TensorRT-LLM's `stop` on a stream of its own: the request ends early with a final response."""
    slow = triton_servers("akallama-70b", "replay", replay_delay_ms=30, max_batch_size=1)
    engine = H2EngineClient(slow.grpc_url, "tensorrt_llm")
    try:
        request_id, handler = uuid.uuid4().hex, Collector()
        engine.submit(request_id, engine_tensors(150), OUTPUTS, handler)  # 4.5 s if not stopped
        assert handler.first_chunks.wait(30)
        t0 = time.perf_counter()
        engine.stop(request_id)
        assert handler.done.wait(30)
        assert time.perf_counter() - t0 < 2.0 and len(handler.ids) < 150
        nxt = Collector()  # the one engine slot is free again
        engine.submit(uuid.uuid4().hex, engine_tensors(2), OUTPUTS, nxt)
        assert nxt.done.wait(5) and nxt.error is None and len(nxt.ids) == 2
    finally:
        engine.close()


def test_an_unreachable_engine_is_a_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = H2EngineClient(f"127.0.0.1:{port}", "tensorrt_llm")
    with pytest.raises(EngineError, match=f"cannot reach the engine at 127.0.0.1:{port}"):
        engine.submit("a", engine_tensors(2), OUTPUTS, Collector())
    engine.close()


def test_bad_url_is_refused():
    with pytest.raises(Exception, match="host:port"):
        H2EngineClient("localhost", "tensorrt_llm")


def test_requests_in_flight_fail_when_the_connection_drops():
    """A peer that accepts and hangs up (a server going away): every request on the connection gets an error, and
    the next request opens a new connection."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        engine = H2EngineClient(f"127.0.0.1:{port}", "tensorrt_llm")
        try:
            handlers = [Collector(), Collector()]
            for handler in handlers:
                engine.submit(uuid.uuid4().hex, engine_tensors(2), OUTPUTS, handler)
            peer, _ = listener.accept()
            peer.close()
            for handler in handlers:
                assert handler.done.wait(10)
                message, code = handler.error
                # closed, or reset (the peer closed with our request unread)
                assert re.fullmatch(r"tensorrt_llm_bls: the engine (connection closed|stream failed: "
                                    r"ConnectionResetError: .*Connection reset by peer)", message), message
                assert code == "UNAVAILABLE"
            later = Collector()
            engine.submit(uuid.uuid4().hex, engine_tensors(2), OUTPUTS, later)  # a new connection
            listener.accept()[0].close()
            assert later.done.wait(10) and later.error is not None
        finally:
            engine.close()
