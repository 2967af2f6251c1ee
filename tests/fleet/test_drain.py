"""Drain on SIGTERM (issue 30 item 1), against real servers with a real SIGTERM and raw clients.

- Why Triton alone cuts ensemble streams: SIGTERM straight to tritonserver stops every model's scheduler at once,
  so the next postprocessing step of each ensemble stream is refused, while a BLS stream (one engine request made up
  front) runs on.
- ``koserve serve`` drains first: /health/ready 503, new requests refused with UNAVAILABLE "server is draining" on
  every path (ensemble, BLS, direct engine; gRPC and HTTP), every stream in flight on every path finishes whole,
  then it exits 0.
- The gateway: /health and new /v1 requests 503 + Retry-After, its stream in flight finishes, exit 0.
"""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest

from koserve.server.drain import drain_grace, parse_engine_load, read_engine_load, wait_engine_idle
from koserve.server.triton_calls import grpc_stream, http_generate, text_inputs
from koserve.testing.faults import get_json, render_replay_repo, start_serve
from koserve.testing.fleet import openai_stream, start_gateway
from koserve.triton_models.drain import DRAINING_MESSAGE

TOKENS = 100  # of the 122-token replay text: every stream ends by length
DELAY_MS = 20.0


def engine_inputs(n: int) -> dict[str, np.ndarray]:
    return {"input_ids": np.array([[9906, 1917]], dtype=np.int32), "input_lengths": np.array([[2]], dtype=np.int32),
            "request_output_len": np.array([[n]], dtype=np.int32), "streaming": np.array([[True]])}


def start_streams(url: str, per_path: int = 2) -> tuple[list[threading.Thread], dict]:
    results: dict = {}

    def run(model: str, i: int) -> None:
        if model == "tensorrt_llm":
            results[(model, i)] = grpc_stream(url, model, engine_inputs(TOKENS), output="output_ids", timeout=60,
                                              request_id=f"drain-{model}-{i}")
        else:
            results[(model, i)] = grpc_stream(url, model, text_inputs("안녕하세요", TOKENS), timeout=60,
                                              request_id=f"drain-{model}-{i}")

    threads = [threading.Thread(target=run, args=(m, i)) for m in ("ensemble", "tensorrt_llm_bls", "tensorrt_llm")
               for i in range(per_path)]
    for t in threads:
        t.start()
    return threads, results


def wait_engine_active(metrics_url: str, n: int, timeout: float = 30.0) -> None:
    """Until the engine runs ``n`` requests (every stream started), instead of a fixed sleep on a loaded machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        load = read_engine_load(metrics_url)
        if load is not None and load.active >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"the engine never ran {n} requests at once")


def test_grace_rule_and_metric_reading():
    assert drain_grace(256) == pytest.approx(10 + 25.6)  # akallama-70b's max_new_tokens at 100 ms
    assert drain_grace(2048, 0.05) == pytest.approx(10 + 102.4)
    page = ('nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 2\n'
            'nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="waiting",version="1"} 0\n')
    load = parse_engine_load(page)
    assert (load.active, load.waiting, load.idle) == (2, 0, False)
    assert parse_engine_load("nv_inference_count 3\n") is None
    # no metric at all: the whole grace is waited (nothing says when the streams end), on a fake clock
    now = [0.0]
    result = wait_engine_idle("http://127.0.0.1:9/metrics", 3.0, clock=lambda: now[0],
                              sleep=lambda s: now.__setitem__(0, now[0] + max(s, 0.25)))
    assert not result.idle and "waited the whole grace" in result.why and now[0] >= 3.0


@pytest.mark.server
def test_sigterm_to_tritonserver_alone_cuts_ensemble_streams_but_not_bls_streams(tmp_path):
    from koserve.cpu_engine.pytriton_server import ServerOptions, cpu_triton_server

    repo = render_replay_repo(tmp_path / "repo", replay_delay_ms=DELAY_MS)
    server = cpu_triton_server(ServerOptions(repo, extra_args=("--exit-timeout-secs=3",)),
                               log_path=tmp_path / "triton.log")
    server.start(240)
    try:
        results: dict = {}

        def run(model: str, i: int) -> None:
            results[(model, i)] = grpc_stream(server.grpc_url, model, text_inputs("안녕하세요", TOKENS), timeout=60)

        threads = [threading.Thread(target=run, args=(m, i)) for m in ("ensemble", "tensorrt_llm_bls")
                   for i in range(2)]
        for t in threads:
            t.start()
        wait_engine_active(server.metrics_url, 4)
        server.terminate()  # Triton's own SIGTERM handling, no koserve serve in front
        for t in threads:
            t.join(60)
    finally:
        server.stop(10)
    for i in range(2):
        assert results[("tensorrt_llm_bls", i)].error is None
        assert results[("tensorrt_llm_bls", i)].token_count == TOKENS
        cut = results[("ensemble", i)]
        assert cut.error is not None and cut.token_count < TOKENS, cut  # the next postprocessing step was refused
    log = (tmp_path / "triton.log").read_text(errors="replace")
    assert "Model 'ensemble' (version 1) has 2 in-flight inferences" in log  # stuck until the exit timeout
    assert "Exit timeout expired" in log


@pytest.mark.server
@pytest.mark.parametrize("engine_backend", ["trtllm", "pytorch"])
def test_koserve_serve_drains_every_path_then_exits(tmp_path, engine_backend):
    repo = render_replay_repo(tmp_path / "repo", replay_delay_ms=DELAY_MS, engine_backend=engine_backend)
    serve = start_serve(repo, tmp_path / "serve.log")
    try:
        serve.wait_ready(240)
        threads, results = start_streams(serve.grpc_url)
        wait_engine_active(f"http://127.0.0.1:{serve.metrics_port}/metrics", 6)
        t0 = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        waited, body = serve.wait_not_ready(5)
        assert body["phase"] == "draining" and "server is draining" in " ".join(body["problems"])
        time.sleep(0.3)  # the drain file exists once the phase is set
        for model in ("ensemble", "tensorrt_llm_bls"):
            refused = grpc_stream(serve.grpc_url, model, text_inputs("새 요청", 4), timeout=10)
            assert refused.error is not None and DRAINING_MESSAGE in refused.error, (model, refused.error)
        refused = grpc_stream(serve.grpc_url, "tensorrt_llm", engine_inputs(4), output="output_ids", timeout=10)
        assert refused.error is not None and DRAINING_MESSAGE in refused.error
        status, answer = http_generate(f"http://127.0.0.1:{serve.http_port}", "tensorrt_llm_bls",
                                       {"text_input": "새 요청", "max_tokens": 4, "stream": False}, timeout=10)
        # UNAVAILABLE; Triton 2.51's HTTP generate answers 400 for every model error (503 on /infer, measured)
        assert status in (400, 503) and DRAINING_MESSAGE in str(answer.get("error")), (status, answer)
        for t in threads:
            t.join(60)
        code = serve.proc.wait(timeout=60)
        exited_after = time.monotonic() - t0
    finally:
        serve.stop()
    assert code == 0
    for key, res in sorted(results.items()):  # every stream on every path whole
        assert res.error is None and res.token_count == TOKENS, (key, res.error, res.token_count)
    out = serve.output()
    assert "koserve: drained in" in out and "the engine holds no request" in out, out
    assert exited_after < 30, out


@pytest.mark.server
def test_gateway_drains_its_stream_and_refuses_new_requests_with_retry_after(tmp_path):
    import httpx

    repo = render_replay_repo(tmp_path / "repo", replay_delay_ms=DELAY_MS)
    serve = start_serve(repo, tmp_path / "serve.log")
    gateway = None
    try:
        serve.wait_ready(240)
        gateway = start_gateway("akallama-70b", [serve.grpc_url], tmp_path / "gateway.log")
        gateway.wait_ready(60)
        outcome: dict = {}
        stream = threading.Thread(target=lambda: outcome.update(
            s=openai_stream(gateway.url, "akallama-70b", "이야기", TOKENS, timeout=60)))
        stream.start()
        wait_engine_active(f"http://127.0.0.1:{serve.metrics_port}/metrics", 1)
        gateway.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        status, body = get_json(f"{gateway.url}/health")
        assert status == 503 and body["status"] == "draining"
        resp = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=10, json={
            "model": "akallama-70b", "messages": [{"role": "user", "content": "새 요청"}], "max_tokens": 4})
        assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
        assert resp.json()["error"]["code"] == "draining"
        stream.join(60)
        code = gateway.proc.wait(timeout=30)
    finally:
        if gateway is not None:
            gateway.stop()
        serve.stop()
    assert code == 0, gateway.output()
    s = outcome["s"]
    assert s.done and s.error is None and s.text, s  # the stream in flight finished whole
