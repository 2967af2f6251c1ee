"""`koserve repo render --engine-backend pytorch` and `koserve serve`'s launch line for it.

The launch follows TensorRT-LLM's own (tests/engines/data/trtllm-1.2.1-llmapi-contract.json, "launch"): one node:
`mpirun -n 1 tritonserver` (the LLM spawns its ranks); several nodes: `mpirun -n TP*PP trtllm-llmapi-launch
tritonserver`. Lines are produced by the real CLI (`koserve serve --print-command`) and parsed back."""

from __future__ import annotations

import json
import os
import shlex
import stat
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from koserve.cli import main
from koserve.errors import ConfigError
from koserve.fixtures import tiny_model_dir, tokenizer_dir
from koserve.repo.render import RenderOptions, render_repository
from koserve.server.tritonserver import LLMAPI_LAUNCH, llmapi_command

CONTRACT = json.loads((Path(__file__).resolve().parents[1] / "engines" / "data" /
                       "trtllm-1.2.1-llmapi-contract.json").read_text(encoding="utf-8"))


def _config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def _render_checkpoint(tmp_path, **options):
    return render_repository(RenderOptions(
        profile="akallama-70b", tokenizer_dir=tokenizer_dir("llama3"), out=tmp_path / "repo",
        checkpoint_dir=tiny_model_dir("llama3"), engine_backend="pytorch", max_seq_len=1024, **options))


@pytest.fixture
def fake_mpirun(tmp_path, monkeypatch):
    prefix = tmp_path / "ompi"
    exe = prefix / "bin" / "mpirun"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "eth0")
    return exe


def test_checkpoint_repository_renders_the_llmapi_step(tmp_path):
    repo = _render_checkpoint(tmp_path, tp_size=4, pp_size=2)
    assert repo.kind == "gpu" and repo.world_size == 8
    cfg = _config(repo.path / "tensorrt_llm" / "config.pbtxt")
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert cfg.name == "tensorrt_llm" and cfg.backend == "python"
    assert params["llm_runtime"] == "tensorrt_llm" and params["model_dir"] == str(tiny_model_dir("llama3"))
    assert (params["tensor_parallel_size"], params["pipeline_parallel_size"]) == ("4", "2")
    assert params["end_ids"] == "128009 128001" and params["max_seq_len"] == "1024"
    assert "mode" not in params  # no CPU stand-in parameter on the production path
    info = json.loads((repo.path / "koserve_repo.json").read_text())
    assert info["engine_backend"] == "pytorch"


def test_llmapi_step_declares_the_cpp_backend_interface(tmp_path):
    """The same inputs and outputs (names, dtypes, dims, optional) as the C++ backend's config, so the ensemble,
    the BLS and every client are unchanged."""
    ours = _config(_render_checkpoint(tmp_path).path / "tensorrt_llm" / "config.pbtxt")
    theirs = _config(render_repository(RenderOptions(
        profile="akallama-70b", tokenizer_dir=tokenizer_dir("llama3"), out=tmp_path / "cpu", replay=True,
        max_seq_len=1024)).path / "tensorrt_llm" / "config.pbtxt")

    def shape(cfg):
        return ({i.name: (i.data_type, list(i.dims), i.optional) for i in cfg.input},
                {o.name: (o.data_type, list(o.dims)) for o in cfg.output})

    assert shape(ours) == shape(theirs)
    assert ours.model_transaction_policy.decoupled is True


@pytest.mark.parametrize("options, message", [
    (dict(engine_backend="trtllm"), "add --engine-backend pytorch"),
    (dict(tp_size=0), "tp_size must be >= 1"),
])
def test_render_refusals(tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        render_repository(RenderOptions(
            profile="akallama-70b", tokenizer_dir=tokenizer_dir("llama3"), out=tmp_path / "repo",
            checkpoint_dir=tiny_model_dir("llama3"), **{"engine_backend": "pytorch", **options}))


def test_single_node_launch_is_one_tritonserver(tmp_path, fake_mpirun, capsys):
    repo = _render_checkpoint(tmp_path, tp_size=4)
    assert main(["serve", "--repo", str(repo.path), "--print-command"]) == 0
    cmd = shlex.split(capsys.readouterr().out.strip())
    assert cmd[0] == str(fake_mpirun) and ":" not in cmd
    n = cmd.index("-n")
    assert cmd[n + 1] == "1" and cmd[n + 2] == "/opt/tritonserver/bin/tritonserver" and LLMAPI_LAUNCH not in cmd
    exported = {cmd[i + 1] for i, tok in enumerate(cmd[:n]) if tok == "-x"}
    assert {"PATH", "NCCL_SOCKET_IFNAME"} <= exported
    assert f"--model-repository={repo.path}" in cmd and sum(a.startswith("--http-port") for a in cmd) == 1


def test_multi_node_launch_wraps_tritonserver_in_trtllm_llmapi_launch(tmp_path, fake_mpirun, capsys):
    repo = _render_checkpoint(tmp_path, tp_size=4, pp_size=2)
    assert main(["serve", "--repo", str(repo.path), "--print-command", "--nodes", "2"]) == 0
    cmd = shlex.split(capsys.readouterr().out.strip())
    n = cmd.index("-n")
    upstream = CONTRACT["launch"]["multi_node"]["per_rank_prefix"]
    assert cmd[n + 1] == "8" and cmd[n + 2:n + 4] == upstream[3:5]  # trtllm-llmapi-launch, then tritonserver
    assert ":" not in cmd  # one app context: ranks > 0 run mgmn_worker_node, not tritonserver
    assert cmd.count("--disable-auto-complete-config") == 1


def test_launch_refusals(tmp_path, fake_mpirun):
    with pytest.raises(ConfigError, match="does not split over 3 nodes"):
        llmapi_command(Path("/repo"), 4, nodes=3)
    cpu = render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tokenizer_dir("llama3"),
                                          out=tmp_path / "cpu", replay=True, max_seq_len=1024))
    assert main(["serve", "--repo", str(cpu.path), "--gpu", "--print-command", "--nodes", "2"]) == 2


def test_the_stub_drops_inherited_mpi_job_variables_only():
    """`mpirun -n 1 tritonserver` gives the stub MPI job variables; the LLM API needs its own job for its workers
    (NVIDIA's llmapi model drops them too: contract 'triton_llmapi_model')."""
    from koserve.llmapi_engine.runtime import drop_mpi_job_env

    assert any("MPI job variables" in fact or "MPI_COMM" in fact or "OMPI_COMM_WORLD" in fact
               for fact in CONTRACT["triton_llmapi_model"]["facts"])
    env = {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "1", "PMIX_RANK": "0", "PMIX_NAMESPACE": "x",
           "PMI_SIZE": "1", "OMPI_MCA_btl": "^openib", "PMIX_MCA_gds": "hash", "PATH": "/usr/bin"}
    gone = drop_mpi_job_env(env)
    assert set(gone) == {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMIX_NAMESPACE", "PMI_SIZE"}
    assert env == {"OMPI_MCA_btl": "^openib", "PMIX_MCA_gds": "hash", "PATH": "/usr/bin"}


def test_repo_render_cli_takes_the_engine_backend(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["repo", "render", "--profile", "komt-13b", "--tokenizer", str(tokenizer_dir("llama2")),
                 "--engine-backend", "pytorch", "--checkpoint", str(tiny_model_dir("llama2")), "--tp", "2",
                 "--max-seq-len", "1024", "--max-num-tokens", "2048", "--out", str(out)]) == 0
    assert "(pytorch engine step)" in capsys.readouterr().out
    params = {k: v.string_value for k, v in _config(out / "tensorrt_llm" / "config.pbtxt").parameters.items()}
    assert params["tensor_parallel_size"] == "2" and params["max_num_tokens"] == "2048"
    # a TensorRT engine folder with the pytorch backend is refused with the flag to use instead
    assert main(["repo", "render", "--profile", "komt-13b", "--tokenizer", str(tokenizer_dir("llama2")),
                 "--engine-backend", "pytorch", "--engine", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "give --checkpoint DIR" in capsys.readouterr().err
