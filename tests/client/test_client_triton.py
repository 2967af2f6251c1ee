"""The client against real tritonservers (replay engine: deterministic Korean text; hf: the tiny checkpoints).

Every method (chat / stream / generate / generate_stream, sync and async), both protocols, both targets, both
profiles; Korean streamed exactly; stop strings, max_tokens, timings; cancellation reaching the engine; deadlines.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from koserve.client import (
    AsyncChatClient,
    ChatClient,
    InvalidRequestError,
    RequestTimeoutError,
    ServerError,
)
from koserve.client.wire import WireRequest, WireTensor

pytestmark = pytest.mark.server

MSGS = [{"role": "user", "content": "자기소개 해 줘."}]
TARGETS = ("ensemble", "tensorrt_llm_bls")
PROTOCOLS = ("grpc", "http")


def url_of(endpoints, protocol: str) -> str:
    return endpoints.grpc_url if protocol == "grpc" else endpoints.http_url


@pytest.fixture(scope="module")
def replay_text(replay_text_file) -> str:
    return replay_text_file.read_text(encoding="utf-8")


def expected_reply(profile: str, text: str) -> str:
    """What the replay engine's text looks like after the profile's stop words."""
    return text[: text.index("###")] if profile == "komt-13b" else text


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sync_methods_stream_korean_exactly(triton_replay, replay_text, protocol, target):
    profile = triton_replay.profile
    want = expected_reply(profile, replay_text)
    with ChatClient(url_of(triton_replay, protocol), profile, model=target,
                    tokenizer=triton_replay.tokenizer_dir) as client:
        assert client.is_ready()
        result = client.chat(MSGS, max_tokens=300)
        assert result.text == want
        assert result.finish_reason == "stop"
        assert result.prompt_tokens and result.prompt_tokens > 5
        assert result.ttft is not None and 0 < result.ttft <= result.total_time
        assert len(result.token_times) == result.completion_tokens
        assert list(result.token_times) == sorted(result.token_times)

        stream = client.stream(MSGS, max_tokens=300)
        deltas = list(stream)
        assert "".join(deltas) == want
        # really streamed (the BLS may let tokens share responses on a busy server), no empty deltas
        assert len(deltas) > (10 if target == "ensemble" else 1) and all(deltas)
        assert "\ufffd" not in "".join(deltas)
        assert stream.result.text == want and stream.result.finish_reason == "stop"

        prompt = client.render(MSGS)
        assert client.generate(prompt, max_tokens=300).text == want
        assert "".join(client.generate_stream(prompt, max_tokens=300)) == want
        # one response on the wire (HTTP /generate)
        single = client.generate(prompt, max_tokens=300, server_streaming=False)
        assert single.text == want and single.token_times == ()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_max_tokens_gives_length_and_exact_token_count(triton_replay, replay_text, protocol):
    with ChatClient(url_of(triton_replay, protocol), triton_replay.profile) as client:
        result = client.chat(MSGS, max_tokens=12)
        assert result.finish_reason == "length"
        assert result.completion_tokens == 12 == len(result.token_times)
        assert replay_text.startswith(result.text) and result.text
        assert result.prompt_tokens is None  # no tokenizer given


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bls_responses_of_several_tokens_are_counted(triton_servers, replay_text_file, protocol):
    """Through a BLS that lets tokens share responses, the client still counts every token (``length``)."""
    server = triton_servers("komt-13b", "replay", replay_text_file=replay_text_file, replay_delay_ms=2,
                            bls_stream_send_share=1e-9, bls_stream_max_interval_us=40_000,
                            bls_stream_max_wait_gaps=0)
    with ChatClient(url_of(server, protocol), "komt-13b", model="tensorrt_llm_bls") as client:
        result = client.chat(MSGS, max_tokens=60)
        assert result.finish_reason == "length"
        assert result.completion_tokens == 60 == len(result.token_times)
        assert len(set(result.token_times)) < 30  # several tokens arrived in one response
        assert replay_text_file.read_text(encoding="utf-8").startswith(result.text) and result.text


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_caller_stop_string_is_cut_from_the_text(triton_replay, replay_text, protocol, target):
    with ChatClient(url_of(triton_replay, protocol), triton_replay.profile, model=target) as client:
        for stop in ("기온", "12도"):
            result = client.chat(MSGS, max_tokens=300, stop=[stop])
            assert result.finish_reason == "stop"
            assert stop not in result.text
            assert replay_text.startswith(result.text)
            # The text must end right before the stop string: nothing of it may leak.
            assert result.text == replay_text[: replay_text.index(stop)], (target, stop, result.text[-10:])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_methods_and_32_concurrent_requests(triton_replay, replay_text, protocol):
    profile = triton_replay.profile
    want = expected_reply(profile, replay_text)

    async def main():
        async with AsyncChatClient(url_of(triton_replay, protocol), profile) as client:
            assert await client.is_ready()
            results = await asyncio.gather(*(client.chat(MSGS, max_tokens=300) for _ in range(32)))
            assert {r.text for r in results} == {want}
            assert len({r.request_id for r in results}) == 32
            deltas = [d async for d in client.stream(MSGS, max_tokens=300, request_id=f"my-own-id-{uuid.uuid4().hex}")]
            assert "".join(deltas) == want and len(deltas) > 10
            prompt = client.render(MSGS)
            assert (await client.generate(prompt, max_tokens=300)).text == want
            stream = client.generate_stream(prompt, max_tokens=5)
            assert replay_text.startswith("".join([d async for d in stream]))
            assert stream.result.finish_reason == "length"

    asyncio.run(asyncio.wait_for(main(), 120))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_errors_are_reported_with_their_text(triton_replay, protocol):
    url = url_of(triton_replay, protocol)
    with ChatClient(url, triton_replay.profile, model="no_such_model", retries=0) as client:
        with pytest.raises(ServerError, match="no_such_model"):
            client.chat(MSGS)
    with ChatClient(url, triton_replay.profile) as client:
        # longer than the server's max_input_len (384 tokens): the server's own validation message comes back
        with pytest.raises(ServerError, match="384"):
            client.chat([{"role": "user", "content": "가나다라 " * 400}], max_tokens=4)
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


# -- cancellation and deadlines against a slow engine (one request at a time) -------------------------------------
@pytest.fixture(scope="module")
def slow_komt(triton_servers, tmp_path_factory, replay_text):
    long_text = (replay_text[: replay_text.index("###")] + " ") * 12  # ~1,500 tokens, no stop word
    path = tmp_path_factory.mktemp("slow") / "long.txt"
    path.write_text(long_text, encoding="utf-8")
    return triton_servers("komt-13b", "replay", replay_text_file=path, replay_delay_ms=10, max_batch_size=1)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_closing_a_stream_stops_generation_on_the_server(slow_komt, protocol, target):
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
def test_cancelling_the_task_stops_generation_on_the_server(slow_komt, protocol, target):
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
def test_deadline_raises_timeout_and_frees_the_server(slow_komt, protocol, target):
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


# -- hf mode: the real tiny checkpoints (random weights): the whole path works, text is arbitrary ----------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_hf_engine_smoke(triton_hf, protocol):
    with ChatClient(url_of(triton_hf, protocol), triton_hf.profile, system_prompt=None,
                    tokenizer=triton_hf.tokenizer_dir) as client:
        result = client.chat(MSGS, max_tokens=4, temperature=0)
        assert result.finish_reason in ("length", "stop") and result.completion_tokens <= 4
        assert result.prompt_tokens and result.prompt_tokens < 40
        again = client.chat(MSGS, max_tokens=4, temperature=0)
        assert again.text == result.text  # greedy is deterministic
        with pytest.raises(InvalidRequestError, match="top_p"):
            client.chat(MSGS, top_p=2)
