"""The tritonserver command lines ``koserve serve`` builds: the GPU ``mpirun`` launch (TensorRT-LLM's pattern, rank 0's
arguments and the process-wide flags on every rank) and the stop grace that follows ``--exit-timeout-secs``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from koserve.errors import ConfigError
from koserve.fixtures import tokenizer_dir
from koserve.repo.render import RenderOptions, render_repository
from koserve.server.tritonserver import default_stop_grace, gpu_command, split_rank_args


def _fake_engine(path: Path, tp=2, pp=1, ranks=None):
    path.mkdir()
    cfg = {"version": "1.2.1", "pretrained_config": {"mapping": {"world_size": tp * pp, "tp_size": tp, "pp_size": pp}},
           "build_config": {"max_batch_size": 32, "max_input_len": 3072, "max_seq_len": 4096}}
    (path / "config.json").write_text(json.dumps(cfg))
    for r in range(tp * pp if ranks is None else ranks):
        (path / f"rank{r}.engine").write_bytes(b"")
    return path


# --- launcher ---------------------------------------------------------------------------------------------------
def test_gpu_command_follows_trtllm_launch_pattern(tmp_path):
    cmd = gpu_command(tmp_path, 4, shm_prefix="p", extra_args=("--log-verbose=1",))
    parts = " ".join(cmd).split(" : ")
    assert cmd[0] == "mpirun" and len(parts) == 4
    assert "--http-port=8000" in parts[0] and "--log-verbose=1" in parts[0]
    for rank, part in enumerate(parts[1:], start=1):
        assert "--model-control-mode=explicit" in part and "--load-model=tensorrt_llm" in part
        assert "--allow-http=false" in part and "--allow-grpc=false" in part and "--allow-metrics=false" in part
        assert f"shm-region-prefix-name=p{rank}_" in part and "--http-port" not in part


def test_serve_cli_prints_gpu_command(tmp_path, capsys):
    from koserve.cli import main

    engine = _fake_engine(tmp_path / "engine")
    render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tokenizer_dir("llama3"),
                                    out=tmp_path / "r", engine_dir=engine))
    assert main(["serve", "--repo", str(tmp_path / "r"), "--print-command", "--", "--log-info=false"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mpirun --allow-run-as-root ") and " -x PATH " in out  # -x: ranks on other nodes
    assert "-n 1 /opt/tritonserver/bin/tritonserver" in out
    assert out.count("-n 1") == 2 and "--log-info=false" in out


def test_stop_grace_follows_exit_timeout():
    assert default_stop_grace(()) == 15.0
    assert default_stop_grace(("--exit-timeout-secs=60",)) == 65.0
    assert default_stop_grace(("--log-verbose=1", "--exit-timeout-secs", "120")) == 125.0
    with pytest.raises(ConfigError, match="exit-timeout-secs"):
        default_stop_grace(("--exit-timeout-secs=soon",))


def test_serve_cli_stop_grace(tmp_path):
    import argparse

    from koserve.cli import serve

    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    repo = tmp_path / "repo"
    repo.mkdir()
    args = parser.parse_args(["serve", "--repo", str(repo), "--cpu", "--", "--exit-timeout-secs=40"])
    assert serve.build_server(args).stop_grace == 45.0
    args = parser.parse_args(["serve", "--repo", str(repo), "--cpu", "--stop-grace", "3"])
    assert serve.build_server(args).stop_grace == 3.0


def test_gpu_extra_args_rank0_and_process_wide_flags_everywhere():
    rank0, others = split_rank_args(["--exit-timeout-secs", "60", "--http-thread-count=8", "--log-verbose=1"])
    assert rank0 == ["--exit-timeout-secs", "60", "--http-thread-count=8", "--log-verbose=1"]
    assert others == ["--exit-timeout-secs", "60", "--log-verbose=1"]
    cmd = gpu_command("/repo", 2, extra_args=("--exit-timeout-secs=60", "--http-thread-count=8"))
    rank1 = cmd[cmd.index(":") + 1:]
    assert "--exit-timeout-secs=60" in rank1 and "--http-thread-count=8" not in rank1
    assert "--allow-grpc=false" in rank1
