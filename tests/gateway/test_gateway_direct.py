"""The gateway's direct engine path (``target=engine``: ids straight to ``tensorrt_llm``) against the text targets,
on real tritonservers: torture texts come out exactly (streamed and whole, both profiles, every ending), a client
that disconnects leaves nothing in flight in the engine (its own request metrics) nor in the gateway, and
``koserve gateway --workers 2`` (the real CLI) serves from two processes whose metrics add up on ``/metrics``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from koserve.gateway import load_config
from koserve.text import load_tokenizer


pytestmark = pytest.mark.server

KOSERVE = Path(sys.executable).with_name("koserve")
TARGETS = ("ensemble", "engine")  # the text path the gateway took so far, and the direct one


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

# Decomposed jamo, byte-fallback syllables, ZWJ emoji, a flag, hanja, a combining mark, full-width signs, a
# zero-width space, runs of spaces and a tab, then the endings that are prefixes of komt's stop word "###" or its
# "<|end|>"/"<s>": every one must come out whole.
TORTURE = ("한국어 \u1112\u1161\u11ab\u1100\u1173\u11af 뷁똠햏 쀍 👩\u200d👩\u200d👧 🇰🇷 漢字 e\u0301 ＃１ "
           "a\u200bb  두  칸\t탭\n\n 줄 앞 공백 <b> C# ## <")


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` that have ``labels`` (Prometheus text format)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, value = line.rsplit(" ", 1)
        base, _, label_text = series.partition("{")
        if base == name and all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


@pytest.fixture(scope="module")
def torture_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("torture") / "torture.txt"
    path.write_text(TORTURE, encoding="utf-8")
    return path


@pytest.mark.parametrize("profile", ["akallama-70b", "komt-13b"])
def test_torture_text_is_exact_on_every_target(triton_servers, torture_file, profile, gateway_at):
    ep = triton_servers(profile, "replay", replay_text_file=torture_file)
    tok = load_tokenizer(ep.tokenizer_dir)
    want = tok.decode(tok.encode(TORTURE, add_special_tokens=False))
    n = len(tok.encode(TORTURE, add_special_tokens=False))
    specs = [f"m-{t}={ep.grpc_url},profile={profile},tokenizer={ep.tokenizer_dir},target={t}"
             for t in (*TARGETS, "tensorrt_llm_bls")]
    with gateway_at(load_config(model_specs=specs, environ={})) as base:
        sdk = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=60)
        msgs = [{"role": "user", "content": "안녕?"}]
        for target in (*TARGETS, "tensorrt_llm_bls"):
            whole = sdk.chat.completions.create(model=f"m-{target}", messages=msgs, max_tokens=n + 5)
            deltas = [c.choices[0].delta.content or "" for c in sdk.chat.completions.create(
                model=f"m-{target}", messages=msgs, max_tokens=n + 5, stream=True) if c.choices]
            assert whole.choices[0].message.content == want, (target, whole.choices[0].message.content)
            assert "".join(deltas) == want and "\ufffd" not in "".join(deltas), target
            assert whole.usage.completion_tokens == n, target
            # cut at every length: never U+FFFD, always a prefix of the whole text
            for cut in range(1, n, 7):
                text = sdk.completions.create(model=f"m-{target}", prompt="안녕", max_tokens=cut).choices[0].text
                assert want.startswith(text) and "\ufffd" not in text, (target, cut, text)


@pytest.fixture(scope="module")
def slow_server(triton_servers):
    """The stand-in's long built-in text at 30 ms/token with one engine slot (tests/serving/test_cancellation.py's
    server): an engine request left running is seen at once."""
    return triton_servers("akallama-70b", "replay", replay_delay_ms=30, max_batch_size=1)


def _engine_active(ep) -> float:
    return _metric(httpx.get(ep.metrics_url, timeout=5).text, "nv_trt_llm_request_metrics", request_type="active")


@pytest.mark.parametrize("target", TARGETS)
def test_disconnect_leaves_nothing_in_flight(slow_server, target, gateway_at):
    spec = f"m={slow_server.grpc_url},profile=akallama-70b,tokenizer={slow_server.tokenizer_dir},target={target}"
    with gateway_at(load_config(model_specs=[spec], environ={})) as base:
        body = {"model": "m", "messages": [{"role": "user", "content": "안녕?"}], "max_tokens": 150, "stream": True}
        for _ in range(2):  # twice: the first disconnect must have freed the engine's only slot
            with httpx.Client(timeout=30) as client:
                with client.stream("POST", base + "/v1/chat/completions", json=body) as resp:
                    assert resp.status_code == 200
                    lines = 0
                    for line in resp.iter_lines():
                        lines += line.startswith("data: ")
                        if lines >= 3:
                            # generating (150 tokens x 30 ms = 4.5 s); the stand-in refreshes its gauges every 0.25 s
                            deadline = time.monotonic() + 3.0
                            while _engine_active(slow_server) < 1 and time.monotonic() < deadline:
                                time.sleep(0.05)
                            assert _engine_active(slow_server) >= 1
                            break  # leaving the iterator closes the connection (httpcore): the client is gone
                    left = time.monotonic()
            # the client is gone: the engine stops well before the 4.5 s the answer would take
            deadline = time.monotonic() + 5.0
            while _engine_active(slow_server) > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _engine_active(slow_server) == 0, "the engine kept generating for a client that left"
            # the gauge lags by up to 0.25 s; the answer would have taken 4.5 s from its start
            assert time.monotonic() - left < 3.0
        metrics = httpx.get(base + "/metrics", timeout=5).text
        assert _metric(metrics, "vllm:num_requests_running") == 0
        assert _metric(metrics, "vllm:num_requests_waiting") == 0
        assert _metric(metrics, "vllm:request_success_total", finished_reason="abort") == 2
        # and the engine serves the next request at once
        t0 = time.monotonic()
        r = httpx.post(base + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 3}, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        assert time.monotonic() - t0 < 2.0


@contextlib.contextmanager
def gateway_cli(*args: str, env: dict | None = None):
    port = _free_port()
    proc = subprocess.Popen([str(KOSERVE), "gateway", "--port", str(port), "--log-level", "warning", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if proc.poll() is not None:
                pytest.fail(f"koserve gateway exited: {proc.stdout.read()}")
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("koserve gateway did not become healthy in 30 s")
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _worker_pids(pid: int) -> list[int]:
    kids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid and b"multiprocessing" in cmd and \
                    b"resource_tracker" not in cmd:
                kids.append(int(proc.name))
    return kids


def test_two_workers_serve_and_their_metrics_add_up(triton_servers, replay_text_file):
    replay_text = replay_text_file.read_text(encoding="utf-8")
    ep = triton_servers("akallama-70b", "replay", replay_text_file=replay_text_file)
    spec = f"akallama-70b={ep.grpc_url},tokenizer={ep.tokenizer_dir}"
    with gateway_cli("--model", spec, "--workers", "2") as (proc, base):
        workers = _worker_pids(proc.pid)
        assert len(workers) == 2, workers
        n = 12
        for i in range(n):  # a new connection each: the kernel spreads them over the workers
            with httpx.Client(timeout=30) as client:
                r = client.post(base + "/v1/chat/completions", json={
                    "model": "akallama-70b", "messages": [{"role": "user", "content": "안녕?"}], "stream": i % 2 == 0,
                    "stream_options": {"include_usage": True} if i % 2 == 0 else None})
                assert r.status_code == 200
                if i % 2:
                    assert r.json()["choices"][0]["message"]["content"] == replay_text
                else:
                    events = [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: {")]
                    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                                   if e["choices"]) == replay_text
        tokens = load_tokenizer(ep.tokenizer_dir).encode(replay_text, add_special_tokens=False)
        # every scrape, whichever worker answers it, sums both workers' values
        for _ in range(4):
            with httpx.Client(timeout=10) as client:
                text = client.get(base + "/metrics").text
            assert _metric(text, "vllm:request_success_total") == n
            assert _metric(text, "vllm:generation_tokens_total") == n * len(tokens)
            assert _metric(text, "koserve_gateway_requests_total", endpoint="chat") == n
            assert _metric(text, "vllm:num_requests_running") == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


def test_workers_flag_is_checked(tmp_path):
    out = subprocess.run([str(KOSERVE), "gateway", "--model", "komt-13b=127.0.0.1:1", "--workers", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "--workers is 0; give 1 to 64" in out.stderr + out.stdout


def test_async_client_on_the_direct_path(triton_servers, replay_text_file):
    """``AsyncChatClient(model="engine")``: the gateway's direct path for Python applications — same text, counts
    and errors as through the ensemble; the sync client says where the direct path is."""
    import asyncio

    from koserve.client import AsyncChatClient, ChatClient
    from koserve.client.errors import ServerError
    from koserve.errors import InvalidRequestError

    ep = triton_servers("akallama-70b", "replay", replay_text_file=replay_text_file)
    replay_text = replay_text_file.read_text(encoding="utf-8")
    msgs = [{"role": "user", "content": "안녕?"}]

    async def main():
        async with AsyncChatClient(ep.grpc_url, "akallama-70b", model="engine", tokenizer=ep.tokenizer_dir) as direct, \
                AsyncChatClient(ep.grpc_url, "akallama-70b", tokenizer=ep.tokenizer_dir) as ensemble:
            a, b = await direct.chat(msgs), await ensemble.chat(msgs)
            assert a.text == b.text == replay_text and a.finish_reason == "stop"
            assert a.completion_tokens == b.completion_tokens and a.prompt_tokens == b.prompt_tokens
            deltas = [d async for d in direct.stream(msgs, stop=["기온"])]
            assert "".join(deltas) == replay_text[: replay_text.index("기온")] and len(deltas) > 5
            with pytest.raises(ServerError, match="max input length is 384"):
                await direct.chat([{"role": "user", "content": "가나다 " * 500}], max_tokens=3)
            assert (await direct.chat(msgs, max_tokens=4)).completion_tokens == 4  # and it keeps serving

    asyncio.run(main())
    with pytest.raises(InvalidRequestError, match="AsyncChatClient and the gateway"):
        ChatClient(ep.grpc_url, "akallama-70b", model="engine", tokenizer=ep.tokenizer_dir)
