"""`koserve loadtest` when nothing works, as a user runs it (the real CLI, a real locust subprocess): a dead server
port and a dead metrics port. The console says what failed and the exit code is non-zero."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from koserve.loadtest.runner import LoadTestConfig, scrape_warning

pytestmark = pytest.mark.timeout(240)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_run_where_every_request_fails_says_why_and_exits_non_zero(tmp_path):
    server, metrics = _dead_port(), _dead_port()
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "koserve", "loadtest", "--url", f"127.0.0.1:{server}", "-p", "komt-13b",
         "--duration", "3s", "--concurrency", "2", "--max-requests", "20", "--request-timeout", "5s",
         "--metrics-url", f"http://127.0.0.1:{metrics}/metrics", "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=200)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "requests 0 ok /" in proc.stdout
    # the reason is on the console, not only in summary.md
    assert "most frequent errors" in proc.stdout and f"127.0.0.1:{server}" in proc.stdout, proc.stdout
    assert "koserve: error: no request succeeded" in proc.stderr
    # the scrape failure is a warning at the start and a line in the summary
    assert f"koserve: warning: cannot read the server's metrics (http://127.0.0.1:{metrics}/metrics" in proc.stderr
    assert "--metrics-url with the metrics address `koserve serve` printed" in proc.stderr
    assert "no server metrics in the report" in proc.stdout
    # no empty plots; the report says why there are none
    assert not list(out.glob("*.png"))
    assert "no plots: no request succeeded" in proc.stdout
    assert "Plots: none, no request succeeded (a plot would be empty)." in (out / "summary.md").read_text()
    assert "Traceback" not in proc.stderr


def test_the_auto_metrics_warning_names_the_port_it_guessed(tmp_path):
    grpc = LoadTestConfig(url="127.0.0.1:18001", out_dir=tmp_path)
    assert "--metrics-url auto guessed port 8002" in scrape_warning(grpc, "x: refused")
    gateway = LoadTestConfig(url="http://127.0.0.1:8080", out_dir=tmp_path, protocol="openai")
    assert "guessed" not in scrape_warning(gateway, "x: refused")
