"""Turning responses into text: stop strings cut across responses and UTF-8 splits, token counts, the I/O-free
stream state both streams share, and the retry policy. No server needed."""

from __future__ import annotations

import time

import pytest

from koserve.client import ChatClient, ClientError, ServerError, ServerUnavailableError
from koserve.client._base import backoff_delays, retry_delay
from koserve.client.result import Piece, ResponseAssembler
from koserve.client.stream_state import StreamState

MSGS = [{"role": "user", "content": "안녕?"}]


@pytest.fixture(scope="module")
def komt():
    """A komt client (stop strings <|end|>, <s>, ###) only for preparing requests: nothing is sent."""
    client = ChatClient("127.0.0.1:9", "komt-13b")
    yield client
    client.close()


def new_state(client: ChatClient, engine: str | None = "tensorrt_llm", **params) -> StreamState:
    return StreamState(client.prepare_chat(MSGS, {"temperature": 0, **params}, stream=True), client.build_result,
                       engine)



def test_assembler_trims_stop_strings_across_deltas_and_utf8_splits():
    asm = ResponseAssembler(("###",))
    korean = "안녕하세요".encode()
    out = [asm.add(korean[:2]), asm.add(korean[2:7]), asm.add(korean[7:] + b" #"), asm.add(b"#"),
           asm.add(b"# Response: x")]
    assert "".join(out) + asm.finish() == "안녕하세요 "
    assert asm.stopped and asm.matched == "###" and asm.responses == 5
    asm = ResponseAssembler(("###",))
    assert asm.add("끝 ##") == "끝 "
    assert asm.finish() == "##"  # held back, then released: not a stop string after all
    assert asm.add(None) == "" and asm.responses == 1


def test_assembler_counts_the_tokens_a_response_says_it_covers():
    asm = ResponseAssembler(())
    assert asm.add("안녕", 3) == "안녕"  # a BLS response covering three tokens (num_output_tokens)
    assert asm.add("") == ""  # an ensemble response: one token, no text yet
    assert asm.add("하세요", None) == "하세요"
    assert asm.add("", 0) == ""  # the last text of a stream, no new token
    assert asm.add(None) == ""  # an empty final response
    assert asm.tokens == 5 and asm.responses == 4 and len(asm.token_times) == 5
    assert asm.token_times[0] == asm.token_times[1] == asm.token_times[2]


def test_backoff_has_jitter_and_cap():
    for _ in range(20):
        delays = list(backoff_delays(5, base=0.1, cap=0.5))
        assert len(delays) == 5
        assert all(0 <= d <= min(0.5, 0.1 * 2**i) for i, d in enumerate(delays))
    assert len({round(d, 6) for d in backoff_delays(6, base=1, cap=1)}) > 1


def test_state_cuts_a_stop_string_the_server_did_not_stop_on_and_says_the_stream_ended(komt):
    state = new_state(komt, max_tokens=50)
    assert not state.started and not state.done
    state.start()
    assert state.on_response(Piece("답은 ".encode())) == ("답은 ", False)
    assert state.on_response(Piece(b"4 #")) == ("4 ", False)  # "#" held back: it may start "###"
    assert state.received_any and not state.done
    assert state.on_response(Piece(b"## Response:")) == ("", True)
    assert state.done
    result = state.result("close")
    assert (result.text, result.finish_reason, result.stop_string) == ("답은 4 ", "stop", "###")
    assert result.completion_tokens == 3 and len(result.token_times) == 3
    assert result.request_id == state.request_id and result.seed is None


def test_state_end_releases_held_text_and_reports_length(komt):
    state = new_state(komt, max_tokens=2)
    state.start()
    assert state.on_response(Piece("끝 ".encode())).delta == "끝 "
    assert state.on_response(Piece(b"##")) == ("", False)
    assert state.on_end() == "##"  # not a stop string after all
    result = state.result("close")
    assert (result.text, result.finish_reason, result.completion_tokens) == ("끝 ##", "length", 2)
    state = new_state(komt, max_tokens=5)
    state.start()
    state.on_response(Piece("네".encode()))
    assert state.on_end() == "" and state.result("close").finish_reason == "stop"  # fewer tokens than max_tokens


def test_state_failure_names_the_engine_to_stop_unless_the_server_is_unreachable(komt):
    state = new_state(komt)
    state.start()
    assert state.on_error(ServerError("boom")) == "tensorrt_llm"
    assert state.done and not state.on_close()
    with pytest.raises(ClientError, match="the stream failed: boom"):
        state.result("close")
    state = new_state(komt)
    state.start()
    assert state.on_error(ServerUnavailableError("gone")) is None
    state = new_state(komt, engine=None)  # the transport stops the engine itself (gRPC)
    state.start()
    assert state.on_error(ServerError("boom")) is None


def test_state_close_before_and_after_sending(komt):
    state = new_state(komt)
    with pytest.raises(ClientError, match="iterate it to the end or aclose\\(\\) it first"):
        state.result("aclose")
    assert state.on_close() is False  # never sent: nothing to stop
    result = state.result("aclose")
    assert (result.text, result.finish_reason, result.completion_tokens) == ("", "cancelled", 0)
    state = new_state(komt)
    state.start()
    state.on_response(Piece("안녕".encode()))
    assert state.on_close() is True  # a request is running: the stream must stop it
    assert state.on_close() is False  # once
    result = state.result("close")
    assert (result.text, result.finish_reason) == ("안녕", "cancelled")


def test_retry_only_before_any_response_within_retries_and_deadline():
    far = time.perf_counter() + 60
    assert retry_delay(iter([0.5]), received_any=True, deadline=far) is None
    assert retry_delay(iter([0.5]), received_any=False, deadline=far) == 0.5
    assert retry_delay(iter([0.5]), received_any=False, deadline=None) == 0.5
    assert retry_delay(iter([]), received_any=False, deadline=far) is None
    assert retry_delay(iter([0.5]), received_any=False, deadline=time.perf_counter() + 0.1) is None
    delays = backoff_delays(2)
    assert [retry_delay(delays, received_any=False, deadline=None) is not None for _ in range(3)] == [True, True, False]
