"""``koserve serve``'s health: ready only while serving with every model probed fresh, a dead stub or a restart is not
ready, the endpoints' status codes and JSON, finding a server's python stubs."""

from __future__ import annotations

import subprocess
import sys
import time

from koserve.server.health import HealthState, ProbeResult, serve_health, stub_processes
from koserve.server.tritonserver import free_port
from koserve.testing.faults import get_json


def _serving_state(**kw) -> HealthState:
    state = HealthState(models=("ensemble", "tensorrt_llm_bls"), probe_interval=1.0, probe_timeout=1.0, **kw)
    state.set_phase("serving")
    return state


def test_ready_only_when_serving_and_every_model_probed_fresh():
    state = _serving_state()
    ok, body = state.readiness()
    assert not ok and "ensemble: not probed yet" in body["problems"]
    now = time.monotonic()
    state.record_probe("ensemble", ProbeResult(True, now, 0.01))
    state.record_probe("tensorrt_llm_bls", ProbeResult(True, now, 0.02))
    ok, body = state.readiness()
    assert ok and body["problems"] == [] and body["models"]["ensemble"]["ok"]
    state.record_probe("tensorrt_llm_bls", ProbeResult(True, now - 5.0, 0.02))  # older than interval + timeout
    ok, body = state.readiness()
    assert not ok and "last successful probe" in body["models"]["tensorrt_llm_bls"]["error"]
    state.record_probe("tensorrt_llm_bls", ProbeResult(False, now, 1.0, "Stub process is not healthy"))
    ok, body = state.readiness()
    assert not ok and "tensorrt_llm_bls: Stub process is not healthy" in body["problems"]


def test_dead_stub_and_restart_phase_are_not_ready_but_live_failed_is_not_live():
    state = _serving_state()
    now = time.monotonic()
    for m in state.models:
        state.record_probe(m, ProbeResult(True, now, 0.01))
    state.set_phase("restarting", "python stub(s) died: postprocessing_0_0", ["postprocessing_0_0"])
    ok, body = state.readiness()
    assert not ok and "python stub(s) dead: postprocessing_0_0" in body["problems"]
    assert body["models"]["ensemble"]["error"] == "not probed yet"  # the old server's probes do not count
    assert state.liveness()[0]
    state.set_phase("failed", "gave up")
    assert not state.liveness()[0] and state.liveness()[1]["phase"] == "failed"


def test_health_endpoints_answer_200_503_404_with_json():
    state = _serving_state()
    port = free_port()
    server = serve_health(state, "127.0.0.1", port)
    try:
        status, body = get_json(f"http://127.0.0.1:{port}/health/ready")
        assert status == 503 and body["ready"] is False
        for m in state.models:
            state.record_probe(m, ProbeResult(True, time.monotonic(), 0.01))
        assert get_json(f"http://127.0.0.1:{port}/health/ready")[0] == 200
        assert get_json(f"http://127.0.0.1:{port}/health/live") == (200, {"live": True, "phase": "serving",
                                                                         "reason": "", "restarts": 0})
        status, body = get_json(f"http://127.0.0.1:{port}/v2/health/ready")
        assert status == 404 and "/health/ready" in body["error"]
    finally:
        server.shutdown()
        server.server_close()


def test_stub_processes_finds_none_under_a_plain_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert stub_processes(proc.pid) == []
    finally:
        proc.kill()
        proc.wait()
