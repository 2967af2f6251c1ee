"""``koserve gpu-smoke``: the first thing to run on a new GPU box inside the pinned container, as the image is built
(uid 1000, no network, no npm, only the ``server`` extra on top of the image's TensorRT-LLM, transformers and torch).

1. checkpoint: ``tiny-llama3-gpu`` (koserve.smoke.fixture: the image's transformers + torch and a tokenizer built in
   code) or ``--checkpoint``; its head size must be 64 or 128;
2. build: a BF16 recipe (no calibration: convert_checkpoint.py + trtllm-build) through ``koserve build run``'s
   runner, so the version preflight and GPU checks run too; ``--engine-backend pytorch``: a BF16 ``backend: pytorch``
   recipe, whose build is the checkpoint itself (no quantization) with its manifest, for the LLM API engine step;
3. render the model repository from the engine (pytorch: from the checkpoint), serve it with ``koserve serve``
   (mpirun, one rank);
4. the checks of koserve.smoke.checks over gRPC and HTTP through ensemble and tensorrt_llm_bls;
5. a 30 s bounded concurrent load through the ensemble (koserve.smoke.load) with a 1 % error-rate limit;
6. a pass/fail table; exit 1 when anything failed.

Everything is written under the work folder (default ``$KOSERVE_CACHE/gpu-smoke``) and the checkpoint under
``$KOSERVE_CACHE/models``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from koserve.engines.commands import BuildPaths
from koserve.engines.gpus import GPUS
from koserve.engines.probe import GpuProbeError, probe_gpus
from koserve.engines.recipe import EngineRecipe, parse_recipe
from koserve.engines.runner import run_build
from koserve.engines.versions import CONTAINER_EXAMPLES_DIR, TRTLLM_VERSION
from koserve.errors import ConfigError, KoserveError
from koserve.fixtures import cache_dir
from koserve.smoke.checks import KOREAN_PROMPT, CheckResult, Target, format_table, run_checks
from koserve.smoke.fixture import HEAD_SIZES_SUPPORTED, head_size, prepare_gpu_fixture
from koserve.smoke.load import LoadSpec, check_load

BASE_PROFILE = "akallama-70b"  # Llama-3 chat format and end ids; architecture replaced by the checkpoint's
RECIPE_NAME = "gpu-smoke-bf16"
LIMITS = {"max_batch_size": 16, "max_input_len": 2048, "max_seq_len": 4096, "max_num_tokens": 4096}


def default_workdir() -> Path:
    """``$KOSERVE_CACHE/gpu-smoke``: the image sets KOSERVE_CACHE to a folder uid 1000 owns (the chart mounts it)."""
    return cache_dir() / "gpu-smoke"


@dataclass
class SmokeOptions:
    workdir: Path
    checkpoint: Path | None = None
    gpu: str | None = None  # GPU catalogue key; default: what nvidia-smi shows
    examples_dir: str = CONTAINER_EXAMPLES_DIR
    python: str = "python3"
    engine_backend: str = "trtllm"  # trtllm: a TensorRT engine and the C++ backend; pytorch: the LLM API step
    ready_timeout: float = 900.0
    request_timeout: float = 120.0
    loadtest_seconds: float = 30.0
    loadtest_concurrency: int = 4
    loadtest_prompts: str = "all"  # a prompt set of koserve.loadtest.prompts (the shipped Korean prompt sets)
    echo: Callable[[str], None] = print


@dataclass
class Endpoints:
    grpc_url: str
    http_url: str
    metrics_url: str
    max_seq_len: int = LIMITS["max_seq_len"]  # of the served engine: bounds the cancellation check's request


ServerFactory = Callable[[Path, SmokeOptions], "contextlib.AbstractContextManager[Endpoints]"]


@dataclass
class SmokeReport:
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    def table(self) -> str:
        return format_table(self.results)


# -- recipe and profile for the tiny checkpoint ----------------------------------------------------------------------

def checkpoint_config(checkpoint: Path) -> dict:
    path = checkpoint / "config.json"
    if not path.is_file() or not (checkpoint / "tokenizer.json").is_file():
        raise ConfigError(f"--checkpoint {checkpoint}: needs config.json and tokenizer.json (a HF Llama checkpoint)")
    config = json.loads(path.read_text(encoding="utf-8"))
    hs = head_size(config)
    if hs not in HEAD_SIZES_SUPPORTED:
        raise ConfigError(
            f"checkpoint {checkpoint} has head size {hs}; TensorRT-LLM's attention kernels need one of "
            f"{HEAD_SIZES_SUPPORTED} (the CPU fixture tiny-llama3 has 16: use tiny-llama3-gpu)"
        )
    return config


def write_profile(checkpoint: Path, dest: Path) -> Path:
    """The base profile with the checkpoint's architecture (so the planner sizes the tiny model, not 70B)."""
    from koserve.profiles.loader import _DATA  # noqa: PLC0415

    config = checkpoint_config(checkpoint)
    data = yaml.safe_load((_DATA / f"{BASE_PROFILE}.yaml").read_text(encoding="utf-8"))
    data["name"] = "gpu-smoke"
    data["display_name"] = f"gpu-smoke ({checkpoint.name})"
    data["architecture"] = {
        "num_layers": config["num_hidden_layers"], "hidden_size": config["hidden_size"],
        "intermediate_size": config["intermediate_size"], "num_attention_heads": config["num_attention_heads"],
        "num_kv_heads": config.get("num_key_value_heads", config["num_attention_heads"]),
        "vocab_size": config["vocab_size"], "max_position_embeddings": config["max_position_embeddings"],
        "rope_theta": float(config.get("rope_theta", 500000.0)),
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return dest


def smoke_recipe(profile_file: Path, checkpoint: Path, gpu: str, engine_backend: str = "trtllm") -> EngineRecipe:
    """A BF16, TP 1, no-calibration recipe: the shortest real TensorRT-LLM build (``pytorch``: the BF16 checkpoint
    as the LLM API loads it, no quantization)."""
    why = {
        "checkpoint": "the tiny random-weight Llama-3-vocabulary checkpoint (koserve setup fixtures shapes)",
        "gpu": "the GPU this box has",
        "parallelism.tp": "one GPU",
        "parallelism.pp": "one GPU",
        "quantization.precision": "BF16 needs no calibration: convert_checkpoint.py + trtllm-build only",
        "quantization.kv_cache_dtype": "BF16 KV cache, no calibration",
        "limits.max_batch_size": "enough for the 30 s load test",
        "limits.max_input_len": "room for the Korean prompts of the checks and the load test",
        "limits.max_seq_len": "long enough that a cancelled request has many tokens left",
        "limits.max_num_tokens": "one context of max_input_len per iteration",
        "build.gemm_plugin": "auto, TensorRT-LLM's default",
        "build.use_paged_context_fmha": "the production setting (chunked context, KV reuse)",
        "build.use_fp8_context_fmha": "BF16 engine",
        "build.use_fused_mlp": "kept for BF16 (trtllm-build keeps it when there is no quantization)",
        "build.gemm_swiglu_plugin": "FP8 only",
        "build.multiple_profiles": "one profile builds faster",
        "serving.kv_cache_free_gpu_mem_fraction": "TensorRT-LLM's default",
    }
    data = {
        "name": RECIPE_NAME, "description": "koserve gpu-smoke: BF16 tiny Llama-3 engine", "profile": str(profile_file),
        "checkpoint": str(checkpoint), "trtllm_version": TRTLLM_VERSION, "gpu": gpu,
        "parallelism": {"tp": 1, "pp": 1},
        "quantization": {"precision": "bf16", "kv_cache_dtype": "bf16"},
        "limits": dict(LIMITS),
        "build": {"gemm_plugin": "auto", "use_paged_context_fmha": "enable", "use_fp8_context_fmha": "disable",
                  "use_fused_mlp": "enable", "gemm_swiglu_plugin": "disable", "multiple_profiles": "disable"},
        "why": why,
    }
    if engine_backend == "pytorch":
        data.update(backend="pytorch", description="koserve gpu-smoke: BF16 tiny Llama-3 checkpoint for the LLM API")
        del data["build"]
        why["backend"] = "the LLM API engine step: the BF16 checkpoint is served as is, no engine build"
        for key in [k for k in why if k.startswith("build.")]:
            del why[key]
    return parse_recipe(data, "gpu-smoke recipe")


def detect_gpu_key(probe=probe_gpus) -> str:
    try:
        gpus = probe()
    except GpuProbeError as exc:
        raise ConfigError(str(exc)) from None
    spec = gpus[0].catalogue
    if spec is None:
        raise ConfigError(f"GPU 0 is {gpus[0].name}, not in koserve's catalogue ({', '.join(GPUS)}): pass --gpu KEY "
                          "of a GPU with the same architecture")
    return spec.key


def checked_gpu_key(opts: SmokeOptions, probe=probe_gpus) -> str:
    """``--gpu`` or GPU 0's catalogue key, after checking that a GPU is there: no GPU, no checkpoint build."""
    if not opts.gpu:
        return detect_gpu_key(probe)
    try:
        probe()
    except GpuProbeError as exc:
        raise ConfigError(str(exc)) from None
    return opts.gpu


# -- serving ---------------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(health_url: str, proc: subprocess.Popen, timeout: float) -> None:
    """Wait for koserve serve's own readiness: Triton ready, every stub alive, a probe through both models passed."""
    import httpx  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise KoserveError(f"koserve serve exited with code {proc.returncode} before it was ready")
        try:
            answer = httpx.get(f"{health_url}/health/ready", timeout=2.0)
            if answer.status_code == 200:
                return
            last = answer.text[:300]
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(1.0)
    raise KoserveError(f"koserve serve was not ready within {timeout:.0f} s ({health_url}/health/ready: {last})")


@contextlib.contextmanager
def koserve_serve(repo: Path, opts: SmokeOptions) -> Iterator[Endpoints]:
    """``koserve serve --repo`` (GPU: mpirun) on free loopback ports; always stopped."""
    http, grpc, metrics, health = _free_port(), _free_port(), _free_port(), _free_port()
    log = (opts.workdir / "serve.log").open("w", encoding="utf-8")
    cmd = [sys.executable, "-m", "koserve", "serve", "--repo", str(repo), "--host", "127.0.0.1",
           "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
           "--health-port", str(health), "--ready-timeout", str(int(opts.ready_timeout))]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{http}"
        _wait_ready(f"http://127.0.0.1:{health}", proc, opts.ready_timeout)
        yield Endpoints(f"127.0.0.1:{grpc}", url, f"http://127.0.0.1:{metrics}/metrics")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


# -- the run ---------------------------------------------------------------------------------------------------------

def _step(report: SmokeReport, name: str, fn, echo) -> object:
    echo(f"gpu-smoke: {name} ...")
    t0 = time.perf_counter()
    try:
        value, detail = fn()
    except Exception as exc:  # noqa: BLE001 - reported in the table, the run stops
        report.results.append(CheckResult(name, False, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0))
        raise _Stop from None
    report.results.append(CheckResult(name, True, detail, time.perf_counter() - t0))
    return value


class _Stop(Exception):
    pass


def loadtest(endpoints: Endpoints, opts: SmokeOptions) -> tuple[bool, str]:
    """The load step: koserve's own bounded concurrent streams through the ensemble (no locust in the image)."""
    return check_load(LoadSpec(endpoints.grpc_url, "ensemble", seconds=opts.loadtest_seconds,
                               concurrency=opts.loadtest_concurrency, max_tokens=32, timeout=opts.request_timeout,
                               prompts=opts.loadtest_prompts))


def run_smoke(opts: SmokeOptions, *, server: ServerFactory = koserve_serve, probe=probe_gpus) -> SmokeReport:
    """The whole acceptance run; never raises for a failing step (it is a FAIL row)."""
    from koserve.repo.render import RenderOptions, render_repository  # noqa: PLC0415
    from koserve.text import load_tokenizer  # noqa: PLC0415

    echo = opts.echo
    report = SmokeReport()
    opts.workdir.mkdir(parents=True, exist_ok=True)
    try:
        try:
            gpu_key = checked_gpu_key(opts, probe)
        except ConfigError as exc:
            report.results.append(CheckResult("GPU", False, str(exc), 0.0))
            raise _Stop from None
        checkpoint = _step(report, "checkpoint", lambda: _checkpoint(opts), echo)
        profile_file = opts.workdir / "gpu-smoke-profile.yaml"

        pytorch = opts.engine_backend == "pytorch"

        def build():
            write_profile(checkpoint, profile_file)
            recipe = smoke_recipe(profile_file, checkpoint, gpu_key, opts.engine_backend)
            paths = BuildPaths(workdir=opts.workdir / "build", checkpoint=str(checkpoint),
                               engine_dir=opts.workdir / ("checkpoint" if pytorch else "engine"),
                               examples_dir=opts.examples_dir, python=opts.python)
            result = run_build(recipe, paths, echo=echo, probe=probe)
            return result.engine_dir, f"{recipe.gpu}, {len(result.steps)} steps in {result.seconds:.0f} s"

        engine = _step(report, f"build BF16 {'checkpoint' if pytorch else 'engine'}", build, echo)

        def render():
            if pytorch:
                where = dict(engine_backend="pytorch", checkpoint_dir=engine, max_batch_size=LIMITS["max_batch_size"],
                             max_input_len=LIMITS["max_input_len"], max_seq_len=LIMITS["max_seq_len"],
                             max_num_tokens=LIMITS["max_num_tokens"])
            else:
                where = dict(engine_dir=engine)
            repo = render_repository(RenderOptions(profile=str(profile_file), tokenizer_dir=checkpoint,
                                                   out=opts.workdir / "repo", force=True, **where))
            return repo.path, f"{', '.join(repo.models)}"

        repo = _step(report, "render repository", render, echo)
        echo("gpu-smoke: serving ...")
        t0 = time.perf_counter()
        try:
            cm = server(repo, opts)
            endpoints = cm.__enter__()
        except Exception as exc:  # noqa: BLE001
            report.results.append(CheckResult("serve", False, f"{type(exc).__name__}: {exc}",
                                              time.perf_counter() - t0))
            raise _Stop from None
        try:
            report.results.append(CheckResult("serve", True, endpoints.grpc_url, time.perf_counter() - t0))
            tokenizer = load_tokenizer(checkpoint)
            prompt_ids = tokenizer.encode(KOREAN_PROMPT)
            target = Target(endpoints.grpc_url, endpoints.http_url, timeout=opts.request_timeout)
            long_tokens = min(2000, endpoints.max_seq_len - len(prompt_ids) - 1)
            for result in run_checks(target, prompt_ids, long_tokens=long_tokens):
                echo(f"gpu-smoke: {result.name}: {'PASS' if result.ok else 'FAIL'} {result.detail}")
                report.results.append(result)
            _step(report, f"loadtest {opts.loadtest_seconds:g} s",
                  lambda: (None, _ok_or_raise(loadtest(endpoints, opts))), echo)
        finally:
            cm.__exit__(None, None, None)
    except _Stop:
        pass
    return report


def _ok_or_raise(outcome: tuple[bool, str]) -> str:
    ok, detail = outcome
    if not ok:
        raise KoserveError(detail)
    return detail


def _checkpoint(opts: SmokeOptions) -> tuple[Path, str]:
    checkpoint = Path(opts.checkpoint).expanduser().resolve() if opts.checkpoint else prepare_gpu_fixture(log=opts.echo)
    config = checkpoint_config(checkpoint)
    return checkpoint, f"{checkpoint.name}: head size {head_size(config)}, vocab {config['vocab_size']}"
