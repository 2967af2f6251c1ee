"""The locust command line the runner builds, its bounds, and why a run ended."""

from __future__ import annotations

import pytest

from koserve.errors import ConfigError
from koserve.loadtest.options import OPTIONS, to_locust_flags
from koserve.loadtest.runner import LoadTestConfig, locust_command


def test_every_locust_option_round_trips_to_flags():
    flags = to_locust_flags({o.dest: o.default for o in OPTIONS})
    assert len(flags) == 2 * len(OPTIONS)
    with pytest.raises(KeyError):
        to_locust_flags({"users": 3})  # locust's own options are not ours to set


def test_locust_command_is_bounded_and_targets_only_the_given_url(tmp_path):
    cfg = LoadTestConfig(url="grpc://127.0.0.1:8001", out_dir=tmp_path, protocol="grpc", duration=20,
                         max_requests=50, request_timeout=10, processes=2, request_rate=8, shape="poisson")
    cfg.validate()
    cmd = locust_command(cfg, tmp_path / "records")
    assert cmd[-1] == "TritonGrpcUser" and "--headless" in cmd
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1:8001"
    assert [c for c in cmd if "://" in c] == []  # no other target anywhere on the command line
    assert cmd[cmd.index("--max-requests") + 1] == "25"  # split across the 2 processes
    assert cmd[cmd.index("--request-rate") + 1] == "4.0"
    assert cmd[cmd.index("--shape-duration") + 1] == "20"
    assert cfg.hard_timeout() == 60.0
    assert cfg.resolved_metrics_url() == "http://127.0.0.1:8002/metrics"
    http = LoadTestConfig(url="http://127.0.0.1:9000", out_dir=tmp_path, protocol="openai")
    assert locust_command(http, tmp_path)[-1] == "OpenAIChatUser"
    assert http.resolved_metrics_url() == "http://127.0.0.1:9000/metrics"
    with pytest.raises(ConfigError, match="max_requests"):
        LoadTestConfig(url="x", out_dir=tmp_path, max_requests=0).validate()
    with pytest.raises(ConfigError, match="protocol"):
        LoadTestConfig(url="x", out_dir=tmp_path, protocol="websocket").validate()


def test_the_report_says_why_the_run_ended(tmp_path):
    from koserve.loadtest.runner import end_of_run

    cfg = LoadTestConfig(url="h:1", out_dir=tmp_path, duration=60, warmup=10, max_requests=40)
    kw = dict(returncode=0, killed=False, interrupted=False, statuses=[{}], elapsed=71.0)
    reason, text = end_of_run(cfg, **kw)
    assert reason == "duration" and "1m10s" in text and "10s warm-up" in text
    assert end_of_run(cfg, **{**kw, "statuses": [{"stop_reason": "max_requests"}]})[0] == "max_requests"
    assert end_of_run(cfg, **{**kw, "returncode": 1})[1].startswith("error: locust exited with code 1")
    assert end_of_run(cfg, **{**kw, "killed": True})[0] == "time_limit"
    assert end_of_run(cfg, **{**kw, "interrupted": True})[0] == "interrupted"


def test_locust_command_runs_warmup_plus_duration_and_echo_keeps_the_periodic_stats(tmp_path):
    cfg = LoadTestConfig(url="127.0.0.1:8001", out_dir=tmp_path, duration=20, warmup=5, warmup_requests=3,
                         processes=2)
    cmd = locust_command(cfg, tmp_path / "records")
    assert cmd[cmd.index("--shape-duration") + 1] == "25"
    assert cmd[cmd.index("--warmup-seconds") + 1] == "5"
    assert cmd[cmd.index("--warmup-requests") + 1] == "2"  # per process
    assert "--only-summary" in cmd and "--only-summary" not in locust_command(cfg, tmp_path, echo=True)
    assert cfg.hard_timeout() == 25 + 60 + 30
