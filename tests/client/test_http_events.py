"""Triton's HTTP ``generate_stream`` events, read by the client against real tritonservers (replay engine).

- A request the server refuses (a prompt over the engine's input limit, prompt + max_tokens over its sequence
  limit) is answered HTTP 400 with the error as an SSE event (``data: {"error": ...}``). The client reports the
  server's message, as over gRPC, never the event's framing (issue 25: ``model 'ensemble': data: {"error":...``).
- A model's text may hold U+2028, U+2029 or U+0085, which Triton's JSON carries raw: an event is split only where
  the SSE format splits lines, so such text streams exactly.
"""

from __future__ import annotations

import asyncio

import pytest

from koserve.client import AsyncChatClient, ChatClient, ServerError

pytestmark = pytest.mark.server

MSGS = [{"role": "user", "content": "자기소개 해 줘."}]
LONG = [{"role": "user", "content": "가나다 " * 400}]  # ~1,600 tokens: over the test servers' max input 384
TARGETS = ("ensemble", "tensorrt_llm_bls")


def _sync_error(url: str, target: str, messages, **params) -> ServerError:
    with ChatClient(url, "komt-13b", model=target, retries=0) as client:
        with pytest.raises(ServerError) as info:
            client.chat(messages, **params)
        assert client.chat(MSGS, max_tokens=3).completion_tokens == 3  # and the server keeps serving
    return info.value


def _async_error(url: str, target: str, messages, **params) -> ServerError:
    async def main():
        async with AsyncChatClient(url, "komt-13b", model=target, retries=0) as client:
            with pytest.raises(ServerError) as info:
                async for _ in client.stream(messages, **params):
                    pass
            return info.value

    return asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("messages, params, says", [
    pytest.param(LONG, {"max_tokens": 4}, "max input length is 384", id="prompt over the input limit"),
    pytest.param(MSGS, {"max_tokens": 600}, "max sequence length 512", id="prompt + max_tokens over the limit"),
])
def test_a_refused_request_reports_the_servers_message_over_http_as_over_grpc(triton_servers, replay_text_file,
                                                                              target, messages, params, says):
    server = triton_servers("komt-13b", "replay", replay_text_file=replay_text_file)
    over_grpc = _sync_error(server.grpc_url, target, messages, **params)
    assert says in over_grpc.server_message
    errors = {
        "sync, streamed": _sync_error(server.http_url, target, messages, **params),
        "sync, one response": _sync_error(server.http_url, target, messages, server_streaming=False, **params),
        "async, streamed": _async_error(server.http_url, target, messages, **params),
    }
    for how, error in errors.items():
        assert error.server_message == over_grpc.server_message, (how, error.server_message)
        assert error.status == 400, (how, error.status)
        assert str(error) == f"Triton at {server.http_url}, model {target!r}: {over_grpc.server_message}", how
        assert "data:" not in str(error) and '{"error"' not in str(error), how


LINE_SEPARATORS_TEXT = "첫 줄\u2028둘째 줄\u2029셋째 줄\u0085넷째 줄\n다섯째 🤗 끝."


@pytest.fixture(scope="module")
def separators_server(triton_servers, tmp_path_factory):
    path = tmp_path_factory.mktemp("separators") / "text.txt"
    path.write_text(LINE_SEPARATORS_TEXT, encoding="utf-8")
    return triton_servers("akallama-70b", "replay", replay_text_file=path)


@pytest.mark.parametrize("target", TARGETS)
def test_text_with_unicode_line_separators_streams_exactly_over_http(separators_server, target):
    url = separators_server.http_url
    with ChatClient(url, "akallama-70b", model=target) as client:
        assert client.chat(MSGS, max_tokens=100).text == LINE_SEPARATORS_TEXT
        assert "".join(client.stream(MSGS, max_tokens=100)) == LINE_SEPARATORS_TEXT
        assert client.chat(MSGS, max_tokens=100, server_streaming=False).text == LINE_SEPARATORS_TEXT

    async def main():
        async with AsyncChatClient(url, "akallama-70b", model=target) as client:
            return "".join([d async for d in client.stream(MSGS, max_tokens=100)])

    assert asyncio.run(asyncio.wait_for(main(), 60)) == LINE_SEPARATORS_TEXT
    with ChatClient(separators_server.grpc_url, "akallama-70b", model=target) as client:  # as over gRPC
        assert client.chat(MSGS, max_tokens=100).text == LINE_SEPARATORS_TEXT
