"""Generating against real tritonservers (replay engine: deterministic Korean text; hf: the tiny checkpoints).

Every method (chat / stream / generate / generate_stream, sync and async), both protocols, both targets, both
profiles; Korean streamed exactly; stop strings, max_tokens, token counts and timings.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from koserve.client import AsyncChatClient, ChatClient, InvalidRequestError

pytestmark = pytest.mark.server

MSGS = [{"role": "user", "content": "자기소개 해 줘."}]
TARGETS = ("ensemble", "tensorrt_llm_bls")
PROTOCOLS = ("grpc", "http")


def expected_reply(profile: str, text: str) -> str:
    """What the replay engine's text looks like after the profile's stop words."""
    return text[: text.index("###")] if profile == "komt-13b" else text


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sync_methods_stream_korean_exactly(triton_replay, replay_text, protocol, target, url_of):
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
def test_max_tokens_gives_length_and_exact_token_count(triton_replay, replay_text, protocol, url_of):
    with ChatClient(url_of(triton_replay, protocol), triton_replay.profile) as client:
        result = client.chat(MSGS, max_tokens=12)
        assert result.finish_reason == "length"
        assert result.completion_tokens == 12 == len(result.token_times)
        assert replay_text.startswith(result.text) and result.text
        assert result.prompt_tokens is None  # no tokenizer given


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bls_responses_of_several_tokens_are_counted(triton_servers, replay_text_file, protocol, url_of):
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
def test_caller_stop_string_is_cut_from_the_text(triton_replay, replay_text, protocol, target, url_of):
    with ChatClient(url_of(triton_replay, protocol), triton_replay.profile, model=target) as client:
        for stop in ("기온", "12도"):
            result = client.chat(MSGS, max_tokens=300, stop=[stop])
            assert result.finish_reason == "stop"
            assert stop not in result.text
            assert replay_text.startswith(result.text)
            # The text must end right before the stop string: nothing of it may leak.
            assert result.text == replay_text[: replay_text.index(stop)], (target, stop, result.text[-10:])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_methods_and_32_concurrent_requests(triton_replay, replay_text, protocol, url_of):
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


# -- hf mode: the real tiny checkpoints (random weights): the whole path works, text is arbitrary ----------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_hf_engine_smoke(triton_hf, protocol, url_of):
    with ChatClient(url_of(triton_hf, protocol), triton_hf.profile, system_prompt=None,
                    tokenizer=triton_hf.tokenizer_dir) as client:
        result = client.chat(MSGS, max_tokens=4, temperature=0)
        assert result.finish_reason in ("length", "stop") and result.completion_tokens <= 4
        assert result.prompt_tokens and result.prompt_tokens < 40
        again = client.chat(MSGS, max_tokens=4, temperature=0)
        assert again.text == result.text  # greedy is deterministic
        with pytest.raises(InvalidRequestError, match="top_p"):
            client.chat(MSGS, top_p=2)
