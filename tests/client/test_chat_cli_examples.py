"""`koserve chat` (one-shot, --json, REPL through a pty with Korean) and the examples/ scripts, against Triton."""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from koserve.testing.pty import read_until

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[2]
KOSERVE = [sys.executable, "-m", "koserve"]


@pytest.fixture(scope="module")
def komt(triton_servers, replay_text_file):
    return triton_servers("komt-13b", "replay", replay_text_file=replay_text_file)


@pytest.fixture(scope="module")
def want(replay_text_file) -> str:
    text = replay_text_file.read_text(encoding="utf-8")
    return text[: text.index("###")]


def run(args, timeout=60, **kw):
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(args, capture_output=True, text=True, encoding="utf-8", timeout=timeout, env=env, **kw)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_one_shot_streams_korean(komt, want, protocol):
    url = komt.grpc_url if protocol == "grpc" else komt.http_url
    out = run(KOSERVE + ["chat", "-p", "komt-13b", "--url", url, "--max-tokens", "300", "네 이름은 뭐야?"])
    assert out.returncode == 0, out.stderr
    assert out.stdout == want + "\n"


def test_json_output_with_timings(komt, want):
    out = run(KOSERVE + ["chat", "-p", "komt-13b", "--url", komt.grpc_url, "--target", "tensorrt_llm_bls",
                         "--json", "--max-tokens", "300", "--tokenizer", str(komt.tokenizer_dir), "안녕"])
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["text"] == want and data["finish_reason"] == "stop"
    assert data["ttft_ms"] > 0 and data["total_ms"] >= data["ttft_ms"] and data["prompt_tokens"] > 3


def test_failures_exit_non_zero():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = run(KOSERVE + ["chat", "--url", f"127.0.0.1:{port}", "안녕"])
    assert out.returncode != 0 and "cannot reach Triton" in out.stderr and "Traceback" not in out.stderr
    out = run(KOSERVE + ["chat", "--url", f"127.0.0.1:{port}", "--temperature", "-2", "안녕"])
    assert out.returncode != 0 and "temperature must be >= 0.0" in out.stderr


def test_interactive_session_in_a_pty_renders_korean(komt, want):
    pid, fd = pty.fork()
    if pid == 0:  # child: the REPL on a real terminal
        os.environ.update({"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TERM": "dumb"})
        os.execv(sys.executable, KOSERVE + ["chat", "-p", "komt-13b", "--url", komt.grpc_url,
                                            "--max-tokens", "300"])
    try:
        assert b">>> " in read_until(fd, b">>> ", 30)
        os.write(fd, "안녕하세요?\r".encode())
        first = read_until(fd, b"\n>>> ", 60).decode("utf-8", "replace")
        assert want.replace("\n", "\r\n") in first, first
        os.write(fd, b"/history\r")
        history = read_until(fd, b"\n>>> ", 30).decode("utf-8", "replace")
        assert "[user] 안녕하세요?" in history and "[assistant] 안녕하세요, 반갑습니다!" in history
        os.write(fd, b"/exit\r")
        read_until(fd, b"\x00", 10)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def test_examples_run_against_the_server(komt, want):
    examples = REPO / "examples"
    out = run([sys.executable, str(examples / "grpc_streaming.py"), "--url", komt.grpc_url, "-p", "komt-13b",
               "--max-tokens", "300", "안녕"])
    assert out.returncode == 0 and out.stdout == want + "\n", out.stderr
    out = run([sys.executable, str(examples / "http_sse.py"), "--url", komt.http_url, "--max-tokens", "300", "안녕"])
    assert out.returncode == 0 and out.stdout == want + "\n", out.stderr
    out = run([sys.executable, str(examples / "async_concurrent.py"), "--url", komt.grpc_url, "-p", "komt-13b",
               "--max-tokens", "20"], timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("32/32 requests ok"), out.stdout + out.stderr
    out = run([sys.executable, str(examples / "raw_tritonclient.py"), "--url", komt.grpc_url, "--format", "komt",
               "--max-tokens", "300", "안녕"])
    assert out.returncode == 0, out.stderr
    assert out.stdout == want + "\n"  # the ensemble already cuts komt's stop word on the server
