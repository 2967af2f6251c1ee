"""Faults against the real ``koserve serve`` (issue 18 §1, §3): a killed python stub of each kind, a SIGKILLed launcher.

Each test runs its own ``koserve serve`` subprocess (never the shared session servers) on a replay repository, and
checks from outside: ``/health/ready`` turns 503 within seconds, the stream in flight ends (no hang), the server is
restarted and serves again; a SIGKILLed launcher leaves no tritonserver, stub, port or shm region behind."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import pytest

from koserve.testing.faults import (
    ServeProcess,
    live_processes_with,
    port_free,
    render_replay_repo,
    shm_regions,
    start_serve,
    wait_until,
)
from koserve.server.health import stub_processes
from koserve.server.triton_calls import grpc_stream, text_inputs

# -- tests -------------------------------------------------------------------------------------------------------
READY_TIMEOUT = 240.0  # a loaded 2-core machine can take a while to start 4 python stubs
NOT_READY_WITHIN = 5.0  # seconds from kill -9 to /health/ready != 200
STREAM_ENDS_WITHIN = 60.0


def _ok(serve: ServeProcess, model: str) -> bool:
    res = grpc_stream(serve.grpc_url, model, text_inputs("안녕?", 4), request_id=uuid.uuid4().hex, timeout=30)
    return res.error is None and bool(res.text)


@pytest.fixture
def replay_repo(tmp_path, request):
    # 20 ms per token: a 200-token stream is in flight for ~4 s, long enough to kill a stub under it
    return render_replay_repo(tmp_path / "repo", replay_delay_ms=20.0,
                              engine_backend=getattr(request, "param", "trtllm"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("replay_repo", ["trtllm", "pytorch"], indirect=True)
def test_killed_stub_of_each_kind_turns_unready_ends_streams_and_recovers_then_serve_gives_up(replay_repo, tmp_path):
    cases = [("postprocessing_0_0", "ensemble"), ("tensorrt_llm_bls_0_0", "tensorrt_llm_bls"),
             ("tensorrt_llm_0_0", "ensemble"), ("preprocessing_0_0", "ensemble")]  # stub killed, stream in flight
    serve = start_serve(replay_repo, tmp_path / "serve.log", "--probe-interval=1", "--probe-timeout=5",
                        f"--max-restarts={len(cases)}", "--restart-window=3600", "--restart-grace=2")
    try:
        body = serve.wait_ready(READY_TIMEOUT)
        assert set(body["models"]) == {"ensemble", "tensorrt_llm_bls"} and body["restarts"] == 0
        assert serve.live()[0] == 200
        for restarts, (instance, model) in enumerate(cases, start=1):
            started = threading.Event()
            outcome: dict = {}

            def stream(model=model, started=started, outcome=outcome):
                outcome["res"] = grpc_stream(serve.grpc_url, model, text_inputs("안녕하세요", 200),
                                             request_id=uuid.uuid4().hex, timeout=STREAM_ENDS_WITHIN + 30,
                                             on_piece=lambda _p: started.set())
                outcome["at"] = time.monotonic()

            t = threading.Thread(target=stream, daemon=True)
            t.start()
            assert started.wait(30), f"{model}: no first piece"
            os.kill(serve.stub_pid(instance), signal.SIGKILL)
            killed_at = time.monotonic()
            _took, body = serve.wait_not_ready(NOT_READY_WITHIN)
            assert body["ready"] is False and body["problems"], body
            t.join(STREAM_ENDS_WITHIN)
            assert not t.is_alive(), f"kill {instance}: the {model} stream in flight never ended"
            res = outcome["res"]
            assert res.error is not None and "timeout" not in res.error, (instance, res.error, res.text)
            assert outcome["at"] - killed_at < STREAM_ENDS_WITHIN
            body = serve.wait_ready(READY_TIMEOUT)
            assert body["restarts"] == restarts, body
            assert all(_ok(serve, m) for m in ("ensemble", "tensorrt_llm_bls")), f"after {instance} died"
            assert serve.live()[0] == 200
        assert "python stub(s) died: preprocessing_0_0" in serve.output()
        prefix = serve.shm_prefix()
        # restarts used up: the next dead stub makes koserve serve exit 3 (the pod restarts)
        os.kill(serve.stub_pid("postprocessing_0_0"), signal.SIGKILL)
        serve.proc.wait(timeout=60)
    finally:
        serve.stop()
    assert serve.proc.returncode == 3, serve.output()
    assert "giving up" in serve.output()
    assert wait_until(lambda: not live_processes_with(prefix), 15)
    assert shm_regions(prefix) == []


@pytest.mark.timeout(600)
def test_sigkill_of_koserve_serve_takes_tritonserver_stubs_ports_and_shm_with_it(replay_repo, tmp_path):
    serve = start_serve(replay_repo, tmp_path / "serve.log")
    try:
        serve.wait_ready(READY_TIMEOUT)
        prefix = serve.shm_prefix()
        triton = serve.tritonserver_pid()
        stubs = stub_processes(triton)
        assert len(stubs) == 4 and shm_regions(prefix), "4 stubs with their shm regions while serving"
        serve.proc.send_signal(signal.SIGKILL)
        serve.proc.wait(timeout=10)
        assert wait_until(lambda: not live_processes_with(prefix), 15), \
            f"left running: {live_processes_with(prefix)}"
        assert wait_until(lambda: all(port_free(p) for p in (serve.http_port, serve.grpc_port,
                                                             serve.metrics_port, serve.health_port)), 15)
        assert wait_until(lambda: shm_regions(prefix) == [], 15), shm_regions(prefix)
    finally:
        serve.stop()
