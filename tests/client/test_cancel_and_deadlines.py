"""Ending a request early against a slow engine with one slot: closing a stream, cancelling its task, or a deadline
stops the generation on the server (a request left running would delay the next one by seconds)."""

from __future__ import annotations

import asyncio
import time

import pytest

from koserve.client import AsyncChatClient, ChatClient, RequestTimeoutError

pytestmark = pytest.mark.server

MSGS = [{"role": "user", "content": "자기소개 해 줘."}]
TARGETS = ("ensemble", "tensorrt_llm_bls")
PROTOCOLS = ("grpc", "http")


@pytest.fixture(scope="module")
def slow_komt(triton_servers, tmp_path_factory, replay_text):
    long_text = (replay_text[: replay_text.index("###")] + " ") * 12  # ~1,500 tokens, no stop word
    path = tmp_path_factory.mktemp("slow") / "long.txt"
    path.write_text(long_text, encoding="utf-8")
    return triton_servers("komt-13b", "replay", replay_text_file=path, replay_delay_ms=10, max_batch_size=1)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_closing_a_stream_stops_generation_on_the_server(slow_komt, protocol, target, url_of):
    """With one engine slot, a request that kept running would delay the next one by ~4 s."""
    with ChatClient(url_of(slow_komt, protocol), "komt-13b", model=target) as client:
        stream = client.stream(MSGS, max_tokens=300)
        got = [next(stream) for _ in range(3)]
        stream.close()
        assert stream.result.finish_reason == "cancelled" and stream.result.text == "".join(got)
        started = time.perf_counter()
        result = client.chat(MSGS, max_tokens=5, timeout=3.0)
        assert result.text and time.perf_counter() - started < 2.0


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cancelling_the_task_stops_generation_on_the_server(slow_komt, protocol, target, url_of):
    async def main():
        async with AsyncChatClient(url_of(slow_komt, protocol), "komt-13b", model=target) as client:
            seen = []
            three = asyncio.Event()

            async def consume():
                async for delta in client.stream(MSGS, max_tokens=300):
                    seen.append(delta)
                    if len(seen) >= 3:
                        three.set()  # cancelled at its next await, mid-stream (polling could miss a fast stream)

            task = asyncio.create_task(consume())
            await asyncio.wait_for(three.wait(), 20)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            started = time.perf_counter()
            result = await client.chat(MSGS, max_tokens=5, timeout=3.0)
            assert result.text
            return time.perf_counter() - started

    assert asyncio.run(asyncio.wait_for(main(), 60)) < 2.0


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_deadline_raises_timeout_and_frees_the_server(slow_komt, protocol, target, url_of):
    with ChatClient(url_of(slow_komt, protocol), "komt-13b", model=target) as client:
        started = time.perf_counter()
        with pytest.raises(RequestTimeoutError, match="exceeded its deadline"):
            client.chat(MSGS, max_tokens=300, timeout=0.5)
        assert time.perf_counter() - started < 2.0
        with pytest.raises(RequestTimeoutError):
            list(client.stream(MSGS, max_tokens=300, timeout=0.3))
        started = time.perf_counter()
        assert client.chat(MSGS, max_tokens=5, timeout=3.0).text
        assert time.perf_counter() - started < 2.0
