"""`koserve chat` says when a reply was cut at --max-tokens ([length], finish_reason) and warns when its profile is
not the one the server was rendered for — against a real tritonserver with the replay engine (komt-13b)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest

from koserve.testing.pty import read_until

pytestmark = pytest.mark.server

KOSERVE = [sys.executable, "-m", "koserve"]


@pytest.fixture(scope="module")
def komt(triton_servers, replay_text_file):
    return triton_servers("komt-13b", "replay", replay_text_file=replay_text_file)


def run(args, timeout=60):
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(KOSERVE + args, capture_output=True, text=True, encoding="utf-8", timeout=timeout, env=env)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_reply_cut_at_max_tokens_says_length(komt, protocol):
    url = komt.grpc_url if protocol == "grpc" else komt.http_url
    cut = run(["chat", "-p", "komt-13b", "--url", url, "--max-tokens", "6", "안녕"])
    assert cut.returncode == 0, cut.stderr
    assert cut.stdout.strip() and "[length]" not in cut.stdout  # stdout stays the reply when it is not a terminal
    assert cut.stderr.strip().splitlines()[-1] == "[length]"
    whole = run(["chat", "-p", "komt-13b", "--url", url, "--max-tokens", "300", "안녕"])
    assert whole.returncode == 0 and "[length]" not in whole.stdout + whole.stderr
    assert whole.stdout.startswith(cut.stdout.rstrip("\n"))
    no_stream = run(["chat", "-p", "komt-13b", "--url", url, "--max-tokens", "6", "--no-stream", "안녕"])
    assert no_stream.stdout == cut.stdout and no_stream.stderr.strip().endswith("[length]")


def test_json_has_the_finish_reason(komt):
    cut = json.loads(run(["chat", "-p", "komt-13b", "--url", komt.grpc_url, "--json", "--max-tokens", "6",
                          "안녕"]).stdout)
    assert cut["finish_reason"] == "length" and cut["completion_tokens"] == 6
    whole = json.loads(run(["chat", "-p", "komt-13b", "--url", komt.grpc_url, "--json", "--max-tokens", "300",
                            "안녕"]).stdout)
    assert whole["finish_reason"] == "stop"


def test_on_a_terminal_the_marker_is_dim_after_the_reply(komt):
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update({"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TERM": "xterm"})
        os.execv(sys.executable, KOSERVE + ["chat", "-p", "komt-13b", "--url", komt.grpc_url, "--max-tokens", "6",
                                            "안녕"])
    try:
        out = read_until(fd, None, 60)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0, out
        assert b" \x1b[2m[length]\x1b[0m\r\n" in out, out
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_profile_that_does_not_match_the_server_gets_a_warning(komt, protocol):
    url = komt.grpc_url if protocol == "grpc" else komt.http_url
    wrong = run(["chat", "-p", "akallama-70b", "--url", url, "--max-tokens", "4", "안녕"])
    assert "warning: the server" in wrong.stderr and "'komt-13b'" in wrong.stderr, wrong.stderr
    assert "-p komt-13b" in wrong.stderr
    right = run(["chat", "-p", "komt-13b", "--url", url, "--target", "tensorrt_llm_bls", "--max-tokens", "300",
                 "안녕"])
    assert right.returncode == 0 and "warning" not in right.stderr, right.stderr
