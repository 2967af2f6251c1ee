"""From `make demo DEMO_ARGS=--keep` to a load test, as a new user goes: start the demo as make does, copy each
command it prints and run it in a shell (chat, curl to Triton, the load test, the gateway and a curl to it), then
stop the demo with Ctrl-C."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.server, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]


def _read_until(proc: subprocess.Popen, needle: str, timeout: float) -> str:
    """stdout of ``proc`` up to the line holding ``needle`` (bounded in time)."""
    out = ""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while needle not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536).decode("utf-8", "replace")
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out


def _shell(line: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", line], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_the_commands_the_kept_demo_prints_run_as_printed(tmp_path):
    koserve = Path(sys.executable).with_name("koserve")
    demo = subprocess.Popen([str(koserve), "demo", "--keep"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    gateway = None
    try:
        text = _read_until(demo, "/v1/chat/completions", 600)
        assert "next steps:" in text, text[-3000:]
        assert "Sampling is seeded (seed 0)" in text and "decode " in text and "tokens/s after the first token" in text
        assert "(hf = the CPU stand-in engine running a tiny random-weight Hugging Face Llama checkpoint)" in text
        steps = text.split("next steps:", 1)[1].splitlines()[1:]
        commands = [s.strip() for s in steps if s.startswith("  ") and not s.strip().startswith(("#", "("))]
        chats = [c for c in commands if " chat " in c]
        assert len(chats) == 4 and all("--url 127.0.0.1:" in c for c in chats)
        for line in (c for c in chats if "--max-tokens" in c):  # the one-shot questions
            out = _shell(line, tmp_path, 180)
            assert out.returncode == 0 and out.stdout.strip(), line + "\n" + out.stderr
        for line in (c for c in commands if c.startswith("curl") and "generate_stream" in c):
            out = _shell(line, tmp_path, 120)
            assert out.returncode == 0 and out.stdout.startswith("data: {") and '"text_output":"' in out.stdout, \
                line + "\n" + out.stdout[-2000:]
            assert '"error"' not in out.stdout
        (loadtest,) = [c for c in commands if " loadtest " in c]
        out = _shell(loadtest, tmp_path, 300)
        assert out.returncode == 0, out.stdout + out.stderr
        assert " failed (0.0 %)" in out.stdout and "no server metrics" not in out.stdout, out.stdout
        assert list((tmp_path / "reports").glob("loadtest-*/summary.md"))
        (gateway_line,) = [c for c in commands if " gateway " in c]
        port = int(gateway_line.rsplit("--port", 1)[1].split()[0])
        gateway = subprocess.Popen(["bash", "-c", f"exec {gateway_line}"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            assert gateway.poll() is None, "the printed gateway command exited"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway was not healthy within 120 s"
            time.sleep(0.5)
        (request,) = [c for c in commands if c.startswith("curl") and "/v1/chat/completions" in c]
        out = _shell(request, tmp_path, 120)
        assert out.returncode == 0 and '"object":"chat.completion"' in out.stdout, out.stdout + out.stderr
    finally:
        if gateway is not None:
            _stop(gateway)
        _stop(demo, signal.SIGINT)  # Ctrl-C, as the demo says
    rest = demo.stdout.read().decode("utf-8", "replace")
    assert demo.returncode == 0 and "done." in rest, rest
