"""`koserve gpu-smoke`: its checks against the real CPU stack (real tritonserver, ensemble and BLS, the CPU stand-in
declaring the 1.x engine inputs), and its orchestration with the fake TensorRT-LLM toolchain of conftest.py.

The checks are real client calls: min_tokens and seed sent as the client-facing min_length / random_seed through the
ensemble and the BLS must reach the engine under the 1.x names (the stand-in declares only min_tokens / seed, so
Triton would refuse the old names) and be honoured."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from koserve.errors import ConfigError
from koserve.fixtures import tokenizer_dir
from koserve.smoke.checks import (
    KOREAN_PROMPT,
    Target,
    check_cancellation,
    check_min_tokens,
    check_seed,
    check_stream_equals_whole,
    format_table,
)
from koserve.smoke.fixture import GPU_SHAPE, head_size
from koserve.smoke.run import Endpoints, SmokeOptions, checkpoint_config, run_smoke
from koserve.text import load_tokenizer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cpu_target(triton_akallama):
    return Target(triton_akallama.grpc_url, triton_akallama.http_url, timeout=60)


@pytest.fixture(scope="module")
def prompt_ids(triton_akallama):
    return load_tokenizer(triton_akallama.tokenizer_dir).encode(KOREAN_PROMPT)


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_min_tokens_and_seed_reach_the_engine_and_are_honoured(cpu_target, prompt_ids, model):
    r = check_min_tokens(cpu_target, model, prompt_ids)
    assert r.ok, r.detail
    r = check_seed(cpu_target, model)
    assert r.ok, r.detail


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_streamed_equals_whole(cpu_target, model, protocol):
    r = check_stream_equals_whole(cpu_target, model, protocol)
    assert r.ok, r.detail


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_cancellation_stops_the_engine(cpu_target, model, triton_akallama):
    r = check_cancellation(cpu_target, model, triton_akallama.max_seq_len - 64)
    assert r.ok, r.detail


def test_engine_rejects_the_v019_names(cpu_target, prompt_ids):
    """The stand-in takes what the 1.x backend reads: an undeclared min_length / random_seed is refused by Triton."""
    import numpy as np

    from koserve.server.triton_calls import grpc_stream

    base = {"input_ids": np.asarray([prompt_ids], np.int32),
            "input_lengths": np.asarray([[len(prompt_ids)]], np.int32),
            "request_output_len": np.asarray([[2]], np.int32)}
    ok = grpc_stream(cpu_target.grpc_url, "tensorrt_llm", {**base, "min_tokens": np.asarray([[1]], np.int32)},
                     output="output_ids", timeout=30)
    assert ok.error is None
    for name, arr in (("min_length", np.asarray([[1]], np.int32)), ("random_seed", np.asarray([[1]], np.uint64))):
        res = grpc_stream(cpu_target.grpc_url, "tensorrt_llm", {**base, name: arr}, output="output_ids", timeout=30)
        assert res.error is not None and name in res.error, res.error


def test_checks_fail_on_a_dead_server():
    target = Target("127.0.0.1:9", "http://127.0.0.1:9", timeout=3)
    r = check_stream_equals_whole(target, "ensemble", "http")
    assert not r.ok and "FAIL" in format_table([r]) and "0/1 passed" in format_table([r])


# -- the GPU checkpoint ----------------------------------------------------------------------------------------------

def test_gpu_fixture_is_built_without_npm_or_the_npm_tokenizer(tmp_path, monkeypatch):
    """As in the image: an empty KOSERVE_CACHE (no npm tokenizer fixture) and no npm on PATH. The checkpoint gets a
    kernel head size, Llama-3's vocabulary size and end ids, and its answers are Korean."""
    import torch
    from transformers import LlamaForCausalLM

    from koserve.smoke.fixture import prepare_gpu_fixture

    monkeypatch.setenv("KOSERVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    assert shutil.which("npm") is None
    logs: list[str] = []
    out = prepare_gpu_fixture(log=logs.append)
    assert out == tmp_path / "cache" / "models" / "tiny-llama3-gpu" and logs
    config = json.loads((out / "config.json").read_text())
    assert head_size(config) == 64 and config["vocab_size"] == 128256
    assert checkpoint_config(out)["num_key_value_heads"] == 2
    assert prepare_gpu_fixture(log=logs.append) == out and len(logs) == 1  # cached: not rebuilt
    tok = load_tokenizer(out)
    prompt = tok.encode(KOREAN_PROMPT)
    model = LlamaForCausalLM.from_pretrained(out)
    with torch.no_grad():
        ids = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
    answer = tok.decode(ids)
    assert len(answer) == 12 and all("\uac00" <= ch <= "\ud7a3" for ch in answer), answer


def test_gpu_smoke_tokenizer_has_llama3_ids_and_streams_korean_exactly():
    from tokenizers.decoders import DecodeStream

    from koserve.smoke.tokenizer import VOCAB_SIZE, build_tokenizer

    tok = build_tokenizer()
    assert tok.get_vocab_size() == VOCAB_SIZE == 128256
    special = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|start_header_id|>": 128006,
               "<|end_header_id|>": 128007, "<|eot_id|>": 128009}
    assert {name: tok.token_to_id(name) for name in special} == special
    text = "안녕하세요, 반갑습니다 😀 Hello"
    enc = tok.encode(text)
    assert enc.ids[0] == 128000  # BOS, as the Llama-3-8B-Instruct tokenizer adds it
    assert enc.ids[1:6] == [tok.token_to_id(tok.encode(ch, add_special_tokens=False).tokens[0]) for ch in "안녕하세요"]
    assert all(len(tok.encode(ch, add_special_tokens=False).ids) == 1 for ch in "안녕하세요반갑습니다")
    chat = "<|start_header_id|>user<|end_header_id|>\n\n안녕<|eot_id|>"
    assert tok.decode(tok.encode(chat, add_special_tokens=False).ids, skip_special_tokens=False) == chat
    stream = DecodeStream(skip_special_tokens=True)
    pieces = [stream.step(tok, i) for i in enc.ids]
    assert "".join(p for p in pieces if p) == text == tok.decode(enc.ids)
    assert not any("\ufffd" in p for p in pieces if p)


def test_cpu_fixture_head_size_is_refused(tmp_path):
    from koserve.fixtures import tiny_model_dir

    with pytest.raises(ConfigError, match="head size 16"):
        checkpoint_config(tiny_model_dir("llama3"))


# -- orchestration -----------------------------------------------------------------------------------------------------

def _fake_checkpoint(tmp_path) -> Path:
    """config.json of the GPU shape + the real Llama-3 tokenizer; the fake converter needs no weights."""
    ckpt = tmp_path / "tiny-llama3-gpu"
    ckpt.mkdir()
    config = {"architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "num_key_value_heads": 2,
              "max_position_embeddings": 8192, "rope_theta": 500000.0, **GPU_SHAPE}
    (ckpt / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tokenizer_dir("llama3") / name, ckpt / name)
    return ckpt


def test_orchestration_with_the_fake_toolchain(fake_toolchain, tmp_path, triton_akallama):
    """build (fake TensorRT-LLM) -> render -> serve -> checks -> load test -> table. Serving a GPU repository needs
    the C++ backend, so the server step hands out the real CPU stack: every check row is a real client call."""
    served = []

    @contextlib.contextmanager
    def cpu_server(repo, opts):
        cfg = (repo / "tensorrt_llm" / "config.pbtxt").read_text()
        assert 'backend: "tensorrtllm"' in cfg  # the rendered repository is the GPU one
        served.append(repo)
        yield Endpoints(triton_akallama.grpc_url, triton_akallama.http_url, triton_akallama.metrics_url,
                        max_seq_len=triton_akallama.max_seq_len)

    lines: list[str] = []
    opts = SmokeOptions(workdir=tmp_path / "smoke", checkpoint=_fake_checkpoint(tmp_path),
                        examples_dir=str(fake_toolchain.examples), python=sys.executable, loadtest_seconds=5,
                        loadtest_prompts="short", request_timeout=60, echo=lines.append)
    report = run_smoke(opts, server=cpu_server)
    table = report.table()
    assert report.ok, table
    names = [r.name for r in report.results]
    assert names[:4] == ["checkpoint", "build BF16 engine", "render repository", "serve"]
    assert names[-1] == "loadtest 5 s" and len(names) == 15
    assert served == [tmp_path / "smoke" / "repo"]
    tools = [c["tool"] for c in fake_toolchain.calls()]
    assert tools == ["convert_checkpoint.py", "trtllm-build"]  # BF16: no quantize.py, no calibration
    convert = fake_toolchain.calls()[0]["argv"]
    assert convert[convert.index("--dtype") + 1] == "bfloat16" and "--calib_dataset" not in convert
    manifest = json.loads((tmp_path / "smoke" / "engine" / "engine_manifest.json").read_text())
    assert manifest["versions"]["tensorrt_llm_runtime"] == "1.2.1"
    assert "15/15 passed" in table


def test_orchestration_pytorch_backend_with_the_fake_toolchain(fake_toolchain, tmp_path, triton_servers):
    """--engine-backend pytorch: a BF16 checkpoint (no quantizer, no trtllm-build) with its manifest, a repository
    whose engine step is the LLM API model on that checkpoint, then the same checks; served by the CPU stack rendered
    --engine-backend pytorch, so every check row runs through the LLM API step's code."""
    stack = triton_servers("akallama-70b", "hf", engine_backend="pytorch")
    served = []

    @contextlib.contextmanager
    def cpu_server(repo, opts):
        cfg = (repo / "tensorrt_llm" / "config.pbtxt").read_text()
        assert 'backend: "python"' in cfg and "tensorrt_llm" in cfg
        assert str(tmp_path / "smoke" / "checkpoint") in cfg  # LLM(model=<the built checkpoint>)
        served.append(repo)
        yield Endpoints(stack.grpc_url, stack.http_url, stack.metrics_url, max_seq_len=stack.max_seq_len)

    opts = SmokeOptions(workdir=tmp_path / "smoke", checkpoint=_fake_checkpoint(tmp_path),
                        examples_dir=str(fake_toolchain.examples), python=sys.executable, engine_backend="pytorch",
                        loadtest_seconds=5, loadtest_prompts="short", request_timeout=60, echo=lambda line: None)
    report = run_smoke(opts, server=cpu_server)
    table = report.table()
    assert report.ok, table
    names = [r.name for r in report.results]
    assert names[:4] == ["checkpoint", "build BF16 checkpoint", "render repository", "serve"] and len(names) == 15
    assert served and fake_toolchain.calls() == []  # BF16: nothing to quantize, no engine to build
    manifest = json.loads((tmp_path / "smoke" / "checkpoint" / "checkpoint_manifest.json").read_text())
    assert manifest["backend"] == "pytorch" and manifest["versions"]["tensorrt_llm_runtime"] == "1.2.1"
    assert manifest["quantization"] == {"quant_algo": None, "kv_cache_quant_algo": None}
    assert (tmp_path / "smoke" / "checkpoint" / "tokenizer.json").is_file()


def test_pytorch_smoke_refuses_another_tensorrt_llm(fake_toolchain, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRTLLM_RUNTIME_VERSION", "1.3.0rc1")

    def never(repo, opts):  # pragma: no cover - the run must stop before serving
        raise AssertionError("served after a failed build")

    report = run_smoke(SmokeOptions(workdir=tmp_path / "s", checkpoint=_fake_checkpoint(tmp_path),
                                    examples_dir=str(fake_toolchain.examples), python=sys.executable,
                                    engine_backend="pytorch", echo=lambda line: None), server=never)
    failed = [r for r in report.results if not r.ok]
    assert [r.name for r in failed] == ["build BF16 checkpoint"]
    assert "tensorrt_llm.__version__ = 1.3.0rc1" in failed[0].detail


def test_a_failing_build_fails_the_run_with_the_three_versions(fake_toolchain, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRTLLM_RUNTIME_VERSION", "1.1.0")

    def never(repo, opts):  # pragma: no cover - the run must stop before serving
        raise AssertionError("served after a failed build")

    report = run_smoke(SmokeOptions(workdir=tmp_path / "s", checkpoint=_fake_checkpoint(tmp_path),
                                    examples_dir=str(fake_toolchain.examples), python=sys.executable,
                                    echo=lambda line: None), server=never)
    assert not report.ok
    failed = [r for r in report.results if not r.ok]
    assert [r.name for r in failed] == ["build BF16 engine"]
    assert "tensorrt_llm.__version__ = 1.1.0" in failed[0].detail and "trtllm_version = 1.2.1" in failed[0].detail


def test_script_exits_non_zero_and_prints_the_table(fake_toolchain, tmp_path):
    env = {**os.environ, "FAKE_TRTLLM_RUNTIME_VERSION": "1.1.0", "KOSERVE_PYTHON": sys.executable,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_smoke.sh"), "--workdir", str(tmp_path / "w"), "--checkpoint",
         str(_fake_checkpoint(tmp_path)), "--trtllm-examples", str(fake_toolchain.examples),
         "--python", sys.executable],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "build BF16 engine" in proc.stdout and "FAIL" in proc.stdout and "1 FAILED" in proc.stdout


def test_load_step_is_bounded_and_counts_errors(cpu_target):
    """The load step (koserve's own client, no locust): bounded by its request budget; a model that does not exist
    fails every request and the step."""
    from koserve.smoke.load import LoadSpec, check_load, run_load

    done = run_load(LoadSpec(cpu_target.grpc_url, "ensemble", seconds=60, concurrency=2, max_tokens=8,
                             max_requests=4, timeout=60, prompts="short"))
    assert done.requests == 4 and done.errors == 0 and len(done.ttfts) == 4 and done.seconds < 60, done.summary()
    ok, detail = check_load(LoadSpec(cpu_target.grpc_url, "no_such_model", seconds=2, concurrency=2,
                                     max_tokens=8, max_requests=6, timeout=10, prompts="short"))
    assert not ok and "100.0%" in detail and "no_such_model" in detail, detail


def test_gpu_smoke_writes_under_koserve_cache_and_says_so(tmp_path, monkeypatch):
    from koserve.smoke.run import default_workdir

    monkeypatch.setenv("KOSERVE_CACHE", str(tmp_path))
    assert default_workdir() == tmp_path / "gpu-smoke"
    proc = subprocess.run([sys.executable, "-m", "koserve", "gpu-smoke", "--help"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    help_text = " ".join(proc.stdout.split())
    for needed in ("nvidia-smi", "convert_checkpoint.py", "trtllm-build", "torch and transformers", "no npm",
                   "$KOSERVE_CACHE/models", "default $KOSERVE_CACHE/gpu-smoke", "KOSERVE_CACHE=/var/cache/koserve"):
        assert needed in help_text, needed


@pytest.mark.timeout(240)
def test_smoke_serve_step_runs_the_real_koserve_serve_and_waits_for_its_health(tmp_path):
    """The smoke run's serve step starts the real `koserve serve` (here on a CPU repository: the same CLI the GPU box
    runs), waits for koserve's own /health/ready on a port of its own, and stops the server with the block."""
    import httpx

    from koserve.testing.faults import render_replay_repo
    from koserve.smoke.run import koserve_serve

    repo = render_replay_repo(tmp_path / "repo")
    opts = SmokeOptions(workdir=tmp_path, ready_timeout=180)
    with koserve_serve(repo, opts) as endpoints:
        assert httpx.get(f"{endpoints.http_url}/v2/health/ready", timeout=5).status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{endpoints.http_url}/v2/health/ready", timeout=2)
