"""Errors the server reports (unknown model, a request it refuses, /generate on a streaming model) come back with
the server's own text, over both protocols, and the server keeps serving. (HTTP's error events in detail:
test_http_events.py.)"""

from __future__ import annotations

import time

import pytest

from koserve.client import ChatClient, ServerError
from koserve.client.wire import WireRequest, WireTensor

pytestmark = pytest.mark.server

MSGS = [{"role": "user", "content": "자기소개 해 줘."}]
PROTOCOLS = ("grpc", "http")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_errors_are_reported_with_their_text(triton_replay, protocol, url_of):
    url = url_of(triton_replay, protocol)
    with ChatClient(url, triton_replay.profile, model="no_such_model", retries=0) as client:
        with pytest.raises(ServerError, match="no_such_model"):
            client.chat(MSGS)
    with ChatClient(url, triton_replay.profile) as client:
        # longer than the server's max_input_len (384 tokens): the server's own validation message comes back
        with pytest.raises(ServerError, match="384") as info:
            client.chat([{"role": "user", "content": "가나다라 " * 400}], max_tokens=4)
        assert info.value.server_message.startswith("in ensemble 'ensemble', prompt is ")
        assert info.value.server_message.endswith("tokens long; the engine's max input length is 384")
        # and the server keeps serving
        assert client.chat(MSGS, max_tokens=3).completion_tokens == 3


def test_generate_endpoint_error_for_a_streaming_reply_is_surfaced(triton_replay):
    """/generate answers HTTP 200 with an error body when the model sends several responses."""
    from koserve.client._http import HttpTransport

    transport = HttpTransport(triton_replay.http_url)
    try:
        tensors = {
            "text_input": WireTensor("text_input", "BYTES", ("안녕",)),
            "max_tokens": WireTensor("max_tokens", "INT32", (5,)),
            "stream": WireTensor("stream", "BOOL", (True,)),  # the model will stream ...
        }
        request = WireRequest(tensors, "ks-generate-error", stream=False)  # ... but we call /generate
        with pytest.raises(ServerError, match="exactly 1 response"):
            list(transport.responses("ensemble", request, time.perf_counter() + 30))
    finally:
        transport.close()
