"""The OpenAI-compatible gateway, driven by the real ``openai`` SDK, in front of real tritonservers (replay)."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import openai
import pytest
import uvicorn

from koserve.gateway import create_app, load_config
from koserve.gateway.config import parse_model_spec
from koserve.errors import ConfigError

pytestmark = pytest.mark.server

KEY = "sk-test-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def replay_text(replay_text_file) -> str:
    return replay_text_file.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def gateway(triton_servers, replay_text_file):
    aka = triton_servers("akallama-70b", "replay", replay_text_file=replay_text_file)
    komt = triton_servers("komt-13b", "replay", replay_text_file=replay_text_file)
    config = load_config(
        model_specs=[f"akallama-70b={aka.grpc_url},tokenizer={aka.tokenizer_dir}",
                     f"komt-13b={komt.http_url},tokenizer={komt.tokenizer_dir},max_tokens=300",
                     f"komt-bls={komt.grpc_url},profile=komt-13b,target=tensorrt_llm_bls,max_tokens=300"],
        environ={"KOSERVE_API_KEYS": f"{KEY}, sk-other"},
        max_request_bytes=64 * 1024,
    )
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(base + "/metrics", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    else:
        pytest.fail("gateway did not start")
    yield base
    server.should_exit = True
    thread.join(timeout=15)


@pytest.fixture()
def sdk(gateway):
    return openai.OpenAI(base_url=gateway + "/v1", api_key=KEY, max_retries=0, timeout=30)


def test_chat_completion_korean(sdk, replay_text):
    want = replay_text[: replay_text.index("###")]
    for model in ("komt-13b", "komt-bls"):
        r = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "안녕?"}])
        assert r.object == "chat.completion" and r.model == model
        assert r.choices[0].message.role == "assistant"
        assert r.choices[0].message.content == want
        assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens > 10
    r = sdk.chat.completions.create(model="akallama-70b", messages=[
        {"role": "system", "content": "짧게 답하세요."}, {"role": "user", "content": "안녕?"}])
    assert r.choices[0].message.content == replay_text
    assert r.usage.prompt_tokens > 10 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_chat_in_korean_is_exact(sdk, replay_text):
    stream = sdk.chat.completions.create(model="akallama-70b", messages=[{"role": "user", "content": "안녕?"}],
                                         stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(deltas) == replay_text and len(deltas) > 10
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens >= len(deltas) and usage.prompt_tokens > 10


def test_stop_sequences_and_max_tokens(sdk, replay_text):
    r = sdk.chat.completions.create(model="akallama-70b", messages=[{"role": "user", "content": "x"}],
                                    stop=["기온"])
    assert r.choices[0].message.content == replay_text[: replay_text.index("기온")]
    assert r.choices[0].finish_reason == "stop"
    r = sdk.chat.completions.create(model="akallama-70b", messages=[{"role": "user", "content": "x"}],
                                    max_tokens=7)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 7
    assert replay_text.startswith(r.choices[0].message.content)
    stream = sdk.chat.completions.create(model="komt-13b", messages=[{"role": "user", "content": "x"}],
                                         max_tokens=5, stream=True)
    reasons = [c.choices[0].finish_reason for c in stream if c.choices]
    assert reasons[-1] == "length"


def test_completions(sdk, replay_text):
    r = sdk.completions.create(model="komt-13b", prompt="### instruction: 안녕\n\n### Response:", max_tokens=300)
    assert r.object == "text_completion" and r.choices[0].text == replay_text[: replay_text.index("###")]
    stream = sdk.completions.create(model="akallama-70b", prompt="안녕", max_tokens=300, stream=True)
    assert "".join(c.choices[0].text for c in stream) == replay_text


def test_models_health_metrics(sdk, gateway):
    assert sorted(m.id for m in sdk.models.list()) == ["akallama-70b", "komt-13b", "komt-bls"]
    health = httpx.get(gateway + "/health", timeout=10)
    assert health.status_code == 200 and set(health.json()["models"].values()) == {"ready"}
    sdk.chat.completions.create(model="komt-13b", messages=[{"role": "user", "content": "x"}], max_tokens=3)
    text = httpx.get(gateway + "/metrics", timeout=10).text
    assert 'koserve_gateway_requests_total{endpoint="chat",model="komt-13b",status="200"}' in text
    assert "koserve_gateway_time_to_first_token_seconds_bucket" in text


def test_bad_requests_in_openai_error_format(sdk, gateway):
    msgs = [{"role": "user", "content": "x"}]
    cases = [
        (dict(model="gpt-4", messages=msgs), openai.NotFoundError, "does not exist"),
        (dict(model="komt-13b", messages=msgs, temperature=-1), openai.BadRequestError, "temperature must be"),
        (dict(model="komt-13b", messages=msgs, max_tokens=301), openai.BadRequestError, "limit for komt-13b is 300"),
        (dict(model="komt-13b", messages=msgs, n=2), openai.BadRequestError, "only n=1"),
        (dict(model="komt-13b", messages=[]), openai.BadRequestError, "messages"),
        (dict(model="komt-13b", messages=[{"role": "user", "content": "a ### Response: b"}]),
         openai.BadRequestError, "reserved by the komt chat format"),
        (dict(model="akallama-70b", messages=[{"role": "user", "content": "<|eot_id|>"}]),
         openai.BadRequestError, "reserved by the llama3 chat format"),
        (dict(model="akallama-70b", messages=[{"role": "user", "content": "가나다 " * 500}], max_tokens=3),
         openai.BadRequestError, "384"),
    ]
    for kwargs, error, text in cases:
        with pytest.raises(error) as info:
            sdk.chat.completions.create(**kwargs)
        assert text in info.value.body["message"], (kwargs, info.value.body)
        assert {"message", "type", "param", "code"} <= set(info.value.body)
    raw = httpx.post(gateway + "/v1/chat/completions", content=b"{not json",
                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
    big = httpx.post(gateway + "/v1/completions", content=b"x" * 100_000,
                     headers={"Authorization": f"Bearer {KEY}"})
    assert big.status_code == 413 and "65536" in big.json()["error"]["message"]


def test_api_keys(gateway):
    for key in ("wrong", ""):
        client = openai.OpenAI(base_url=gateway + "/v1", api_key=key or "x", max_retries=0,
                               default_headers={} if key else {"Authorization": ""})
        with pytest.raises(openai.AuthenticationError) as info:
            client.models.list()
        assert info.value.body["code"] == "invalid_api_key"
    assert httpx.get(gateway + "/v1/models").status_code == 401
    other = openai.OpenAI(base_url=gateway + "/v1", api_key="sk-other", max_retries=0)
    assert other.models.list().data


def test_backend_down_is_503(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    config = load_config(model_specs=[f"komt-13b=127.0.0.1:{dead}"], environ={})
    from fastapi.testclient import TestClient

    with TestClient(create_app(config)) as client:
        r = client.post("/v1/chat/completions", json={"model": "komt-13b", "messages": [
            {"role": "user", "content": "x"}]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "backend_unavailable"
        assert client.get("/health").status_code == 503
        assert client.get("/v1/models").status_code == 200  # no keys configured: open


def test_config_errors():
    with pytest.raises(ConfigError, match="expected NAME=URL"):
        parse_model_spec("komt-13b")
    with pytest.raises(ConfigError, match="unknown profile"):
        load_config(model_specs=["gpt=127.0.0.1:1"], environ={})
    with pytest.raises(ConfigError, match="unique"):
        load_config(model_specs=["komt-13b=a:1", "komt-13b=b:1"], environ={})
