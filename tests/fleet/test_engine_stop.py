"""Engines stop when their client leaves, on every path (issue 30 item 2), against the real server with raw
``tritonclient`` calls and NVIDIA's own client script (tensorrtllm_backend v0.19.0
``inflight_batcher_llm/client/end_to_end_grpc_client.py``, read from a git copy of that repository at test time and
never committed; skipped without one).

Triton marks the ensemble step requests made after a client left as cancelled; postprocessing sees that (only when it
runs without dynamic batching: the batcher's queue drops cancelled requests unseen) and stops the engine by request
id (koserve.triton_models.cancel_watch). The engine's own ``nv_trt_llm_request_metrics{request_type="active"}`` tells
whether it still generates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from koserve.cpu_engine.replay import long_replay_text
from koserve.server.drain import read_engine_load
from koserve.server.triton_calls import grpc_stream, text_inputs

pytestmark = pytest.mark.server

TOKENS = 400  # 8 s at 20 ms per token: far longer than any wait below
BACKEND_GIT_ENV = "KOSERVE_TRTLLM_BACKEND_GIT"  # a git dir of triton-inference-server/tensorrtllm_backend
BACKEND_GIT_CANDIDATES = ("/work/.mirror/triton-inference-server+tensorrtllm_backend/repo",)
NVIDIA_CLIENT = "inflight_batcher_llm/client/end_to_end_grpc_client.py"
NVIDIA_TAG = "v0.19.0"


@pytest.fixture(scope="module")
def long_text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stop") / "long.txt"
    path.write_text(long_replay_text(TOKENS + 50), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def no_batching(triton_servers, long_text):
    """postprocessing without dynamic batching: the engine can be stopped from there."""
    return triton_servers("akallama-70b", "replay", replay_text_file=long_text, replay_delay_ms=20,
                          postprocessing_max_queue_delay_us=0)


@pytest.fixture(scope="module")
def batching(triton_servers, long_text):
    """the render default (postprocessing dynamic batching, 1000 µs)."""
    return triton_servers("akallama-70b", "replay", replay_text_file=long_text, replay_delay_ms=20)


def seconds_until_idle(metrics_url: str, limit: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        load = read_engine_load(metrics_url)
        if load is not None and load.idle:
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def engine_inputs(n: int) -> dict[str, np.ndarray]:
    return {"input_ids": np.array([[9906, 1917]], dtype=np.int32), "input_lengths": np.array([[2]], dtype=np.int32),
            "request_output_len": np.array([[n]], dtype=np.int32), "streaming": np.array([[True]])}


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls", "tensorrt_llm"])
def test_raw_client_cancel_stops_the_engine_on_every_path(no_batching, model):
    assert seconds_until_idle(no_batching.metrics_url, 10) is not None
    inputs = engine_inputs(TOKENS) if model == "tensorrt_llm" else text_inputs("안녕하세요", TOKENS)
    res = grpc_stream(no_batching.grpc_url, model, inputs, request_id=f"leave-{model}", cancel_after=5,
                      output="output_ids" if model == "tensorrt_llm" else "text_output", timeout=30)
    assert res.error is None and len(res.pieces) == 5
    idle_after = seconds_until_idle(no_batching.metrics_url, 3.0)
    assert idle_after is not None, f"{model}: the engine still generates after the client left"


def test_with_dynamic_batching_on_postprocessing_a_cancelled_ensemble_is_not_seen(batching):
    """The documented limit: the render default keeps postprocessing's dynamic batcher, which drops the cancelled
    step unseen, so the engine runs on (Triton 2.51; same queue code in 2.68)."""
    assert seconds_until_idle(batching.metrics_url, 10) is not None
    res = grpc_stream(batching.grpc_url, "ensemble", text_inputs("안녕하세요", TOKENS), request_id="leave-batched",
                      cancel_after=5, timeout=30)
    assert res.error is None
    time.sleep(2.0)
    load = read_engine_load(batching.metrics_url)
    assert load is not None and load.active == 1
    assert seconds_until_idle(batching.metrics_url, 20) is not None  # it ends by length


def nvidia_client_script(dest: Path) -> Path:
    candidates = [os.environ.get(BACKEND_GIT_ENV, ""), *BACKEND_GIT_CANDIDATES]
    for git_dir in filter(None, candidates):
        if not Path(git_dir).exists():
            continue
        shown = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"{NVIDIA_TAG}:{NVIDIA_CLIENT}"],
                               capture_output=True, timeout=60)
        if shown.returncode == 0:
            path = dest / "end_to_end_grpc_client.py"
            path.write_bytes(shown.stdout)
            return path
    pytest.skip(f"no git copy of triton-inference-server/tensorrtllm_backend with {NVIDIA_TAG} (set {BACKEND_GIT_ENV})")


def test_nvidia_client_killed_mid_stream_stops_the_engine(no_batching, tmp_path):
    script = nvidia_client_script(tmp_path)
    assert seconds_until_idle(no_batching.metrics_url, 10) is not None
    proc = subprocess.Popen([sys.executable, str(script), "-u", no_batching.grpc_url, "-p", "서울의 날씨는?",
                             "--streaming", "-o", str(TOKENS), "--request-id", "nvidia-leaves"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        busy = False
        while time.monotonic() - t0 < 20 and not busy:  # its stream is running
            load = read_engine_load(no_batching.metrics_url)
            busy = load is not None and load.active >= 1
            time.sleep(0.05)
        assert busy, proc.stdout.read() if proc.poll() is not None else "the engine never got the request"
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)  # the client leaves: its connection closes mid-stream
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert seconds_until_idle(no_batching.metrics_url, 3.0) is not None
