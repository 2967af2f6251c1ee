"""Health state, restart policy and the reaper, without a Triton server (issue 18 §1, §3)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import deque
from pathlib import Path

import pytest

from koserve.testing.faults import get_json, wait_until
from koserve.server.health import HealthState, ProbeResult, serve_health, stub_processes
from koserve.server.supervisor import RestartPolicy
from koserve.server.tritonserver import SHM_DIR, free_port

REAPER = Path(__file__).resolve().parents[2] / "src" / "koserve" / "serving" / "reaper.py"


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


def test_restart_policy_counts_restarts_within_the_window():
    policy = RestartPolicy(max_restarts=2, window_s=10.0)
    history: deque = deque()
    assert policy.allows(history, 0.0)
    history.append(0.0)
    history.append(1.0)
    assert not policy.allows(history, 5.0)
    assert policy.allows(history, 10.5)  # the first one left the window
    assert not RestartPolicy(max_restarts=0).allows(deque(), 0.0)


def test_stub_processes_finds_none_under_a_plain_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert stub_processes(proc.pid) == []
    finally:
        proc.kill()
        proc.wait()


def _group_with_shm(tag: str) -> tuple[subprocess.Popen, Path]:
    prefix = f"triton_python_backend_shm_region_kstest{uuid.uuid4().hex[:8]}{tag}_"
    region = SHM_DIR / f"{prefix}region"
    region.write_bytes(b"\0" * 16)
    group = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"],
                             start_new_session=True)
    return group, region


def _start_reaper(group: subprocess.Popen, prefix: str) -> tuple[subprocess.Popen, int]:
    r, w = os.pipe()
    reaper = subprocess.Popen([sys.executable, "-S", str(REAPER), str(r), str(group.pid), prefix], pass_fds=(r,),
                              start_new_session=True)
    os.close(r)
    return reaper, w


@pytest.mark.timeout(60)
@pytest.mark.skipif(not SHM_DIR.is_dir(), reason="needs /dev/shm")
def test_reaper_kills_the_group_and_removes_shm_when_the_launcher_vanishes():
    group, region = _group_with_shm("a")
    prefix = region.name[: -len("region")]
    reaper, w = _start_reaper(group, prefix)
    time.sleep(0.5)  # the group's child has started
    members = [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == group.pid]
    assert len(members) >= 2
    os.close(w)  # as when the launcher is SIGKILLed: end of file, no "done"
    assert reaper.wait(timeout=20) == 0
    assert group.wait(timeout=5) is not None
    assert wait_until(lambda: all(_pgid(p) != group.pid for p in members), 10)
    assert not region.exists()


@pytest.mark.timeout(60)
@pytest.mark.skipif(not SHM_DIR.is_dir(), reason="needs /dev/shm")
def test_reaper_leaves_everything_alone_after_a_normal_stop():
    group, region = _group_with_shm("b")
    try:
        reaper, w = _start_reaper(group, region.name[: -len("region")])
        os.write(w, b"done")
        os.close(w)
        assert reaper.wait(timeout=20) == 0
        assert group.poll() is None and region.exists()
    finally:
        os.killpg(group.pid, 9)
        group.wait()
        region.unlink(missing_ok=True)


def _pgid(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[2]) if fields[0] != "Z" else None


def test_serve_refuses_a_busy_health_port_and_bad_restart_flags_before_starting_triton(tmp_path, capsys):
    import socket

    from koserve.cli import main
    from koserve.testing.faults import render_replay_repo

    repo = render_replay_repo(tmp_path / "repo")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--repo", str(repo), "--health-port", str(port)]) == 2
    assert f"cannot serve health on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["serve", "--repo", str(repo), "--max-restarts", "-1"]) == 2
    assert "--max-restarts must be in [0, 1000], got -1" in capsys.readouterr().err
    assert main(["serve", "--repo", str(repo), "--probe-interval", "0"]) == 2
    assert "--probe-interval must be > 0 seconds" in capsys.readouterr().err
