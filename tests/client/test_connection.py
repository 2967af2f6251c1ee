"""Which transport a URL picks, and a server that is down: a clear error, quickly, from every method."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from koserve.client import AsyncChatClient, ChatClient, ServerUnavailableError
from koserve.client._base import infer_protocol

MSGS = [{"role": "user", "content": "안녕?"}]


def test_protocol_from_url():
    assert infer_protocol("127.0.0.1:8001", None) == ("127.0.0.1:8001", "grpc")
    assert infer_protocol("grpc://h:1/", None) == ("h:1", "grpc")
    assert infer_protocol("http://h:8000/", None) == ("http://h:8000", "http")
    assert infer_protocol("h:8000", "http") == ("http://h:8000", "http")
    assert infer_protocol("http://h:8001", "grpc") == ("h:8001", "grpc")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["", "http://"])
def test_server_down_is_a_clear_error_quickly(scheme):
    url = f"{scheme}127.0.0.1:{_closed_port()}"
    client = ChatClient(url, "komt-13b", retries=2)
    started = time.perf_counter()
    with pytest.raises(ServerUnavailableError, match=r"cannot reach Triton at .*127\.0\.0\.1"):
        client.chat(MSGS)
    with pytest.raises(ServerUnavailableError, match="cannot reach Triton"):
        list(client.stream(MSGS))
    assert time.perf_counter() - started < 10
    client.close()

    async def main():
        async with AsyncChatClient(url, "komt-13b", retries=1) as aclient:
            with pytest.raises(ServerUnavailableError, match="cannot reach Triton"):
                await aclient.chat(MSGS)
            with pytest.raises(ServerUnavailableError, match="cannot reach Triton"):
                async for _ in aclient.stream(MSGS):
                    pass
            assert await aclient.is_ready() is False

    asyncio.run(asyncio.wait_for(main(), 20))
