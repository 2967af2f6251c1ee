"""`koserve eval` against real CPU tritonservers (tiny Llama-3-vocabulary checkpoint, hf mode).

* pass: the same checkpoint behind the two engine renderings (the C++ backend's stand-in and the LLM API step):
  greedy answers must agree token for token;
* fail: a candidate whose weights carry noise, as a badly quantized checkpoint would: the gate must fail, naming the
  exact-match rate, and the real CLI must exit 1."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from koserve.eval.metrics import GateThresholds
from koserve.eval.run import EvalOptions, run_eval

pytestmark = pytest.mark.timeout(900)


def _perturbed_checkpoint(dest: Path, noise: float) -> Path:
    """The tiny llama3 fixture with Gaussian noise of ``noise`` x each weight matrix's std added (seeded)."""
    import torch
    from transformers import LlamaForCausalLM

    from koserve.fixtures import tiny_model_dir

    src = tiny_model_dir("llama3")
    model = LlamaForCausalLM.from_pretrained(src)
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "embed" not in name:
                param.add_(torch.randn(param.shape, generator=gen) * param.std() * noise)
    model.save_pretrained(dest)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            (dest / f.name).write_bytes(f.read_bytes())
    return dest


@contextlib.contextmanager
def _serve_checkpoint(checkpoint: Path, workdir: Path):
    from koserve.cpu_engine.pytriton_server import ServerOptions, cpu_triton_server
    from koserve.fixtures import tokenizer_dir
    from koserve.repo.render import RenderOptions, render_repository

    rendered = render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tokenizer_dir("llama3"),
                                               out=workdir / "repo", cpu_model_dir=checkpoint, force=True))
    server = cpu_triton_server(ServerOptions(rendered.path, extra_args=("--exit-timeout-secs=2",)),
                               log_path=workdir / "tritonserver.log")
    server.start(300)
    try:
        yield server.grpc_url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def noisy_candidate(tmp_path_factory):
    work = tmp_path_factory.mktemp("eval-noisy")
    with _serve_checkpoint(_perturbed_checkpoint(work / "ckpt", noise=1.0), work) as url:
        yield url


def _opts(baseline, candidate_url, **kw) -> EvalOptions:
    return EvalOptions(baseline.grpc_url, candidate_url, "akallama-70b", baseline.tokenizer_dir, limit=6,
                       max_tokens=12, timeout=120, **kw)


def test_same_checkpoint_on_both_engine_renderings_passes(triton_servers):
    trtllm = triton_servers("akallama-70b", "hf")
    pytorch = triton_servers("akallama-70b", "hf", engine_backend="pytorch")
    report = run_eval(_opts(trtllm, pytorch.grpc_url))
    assert report.ok, report.failures
    assert report.exact_match_rate == 1.0 and report.mean_first_divergence is None
    base_lp, cand_lp = report.mean_log_probs()
    assert base_lp is not None and base_lp < 0 and cand_lp == pytest.approx(base_lp, abs=1e-3)
    assert all(i.baseline_tokens == 12 == i.candidate_tokens for i in report.items)


def test_noisy_candidate_fails_the_gate(triton_akallama, noisy_candidate):
    report = run_eval(_opts(triton_akallama, noisy_candidate))
    assert not report.ok
    assert report.exact_match_rate < 0.5 and report.mean_first_divergence is not None
    assert any(f.startswith("greedy exact-match rate") for f in report.failures), report.failures
    # A threshold loose enough lets the same answers pass: the verdict follows the thresholds, not the servers.
    lenient = run_eval(_opts(triton_akallama, noisy_candidate,
                             thresholds=GateThresholds(min_exact_match_rate=0.0, max_mean_log_prob_drop=100.0,
                                                       max_ref_chrf_drop=1.0)))
    assert lenient.ok and lenient.exact_match_rate == report.exact_match_rate


def test_cli_exits_1_and_names_the_failure(triton_akallama, noisy_candidate):
    cmd = [sys.executable, "-m", "koserve", "eval", "--baseline", triton_akallama.grpc_url, "--candidate",
           noisy_candidate, "-p", "akallama-70b", "--tokenizer", str(triton_akallama.tokenizer_dir), "--limit", "4",
           "--max-tokens", "8", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] is False and data["items"] == 4 and data["candidate"] == noisy_candidate
    assert any("exact-match rate" in f for f in data["failures"])
    assert data["mean_log_prob"]["baseline"] is not None

    bad = subprocess.run(cmd[:-1] + ["--min-exact-match", "1.5"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--min-exact-match must be between 0 and 1, got 1.5" in bad.stderr
