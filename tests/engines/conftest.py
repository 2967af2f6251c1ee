"""Fixtures for the build tests: a fake TensorRT-LLM toolchain and a fake nvidia-smi on PATH.

The fakes are small Python scripts that record their argv (``calls.jsonl``) and write the files the
real tools write (a sharded TensorRT-LLM checkpoint; ``config.json`` + ``rank{i}.engine``), so the
runner is exercised end to end without a GPU.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"

_COMMON = r'''
import json, os, sys, time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CALLS = Path(os.environ["FAKE_TRTLLM_CALLS"])

def arg(name, default=None):
    argv = sys.argv[1:]
    return argv[argv.index(name) + 1] if name in argv else default

def record(tool):
    with CALLS.open("a") as fh:
        fh.write(json.dumps({"tool": tool, "argv": sys.argv[1:]}) + "\n")
    print(f"{tool}: starting", flush=True)
    if os.environ.get("FAKE_TRTLLM_SLEEP"):
        time.sleep(float(os.environ["FAKE_TRTLLM_SLEEP"]))
    if os.environ.get("FAKE_TRTLLM_FAIL") == tool:
        print(f"{tool}: RuntimeError: CUDA out of memory (fake)", flush=True)
        sys.exit(3)
'''

_CHECKPOINT_TOOL = _COMMON + r'''
TOOL = sys.argv[0].rsplit("/", 1)[-1]
record(TOOL)
model_dir = Path(arg("--model_dir"))
assert (model_dir / "config.json").is_file(), f"no HF checkpoint in {model_dir}"
calib = arg("--calib_dataset")
if calib and calib.startswith("/"):
    assert Path(calib).is_dir(), f"calibration folder {calib} missing"
    assert any(Path(calib).iterdir())
out = Path(arg("--output_dir"))
out.mkdir(parents=True, exist_ok=True)
if arg("--export_format") == "hf":  # ModelOpt's unified HF export: the HF config, hf_quant_config.json, safetensors
    algo = {"fp8": "FP8", "int4_awq": "W4A16_AWQ", "nvfp4": "NVFP4"}[arg("--qformat")]
    kv = arg("--kv_cache_dtype")
    (out / "config.json").write_text((model_dir / "config.json").read_text())
    (out / "hf_quant_config.json").write_text(json.dumps({"producer": {"name": "modelopt"}, "quantization": {
        "quant_algo": os.environ.get("FAKE_QUANT_ALGO", algo), "kv_cache_quant_algo": kv.upper() if kv else None}}))
    (out / "model.safetensors").write_bytes(b"fake-quantized-weights")
    print(f"{TOOL}: exported a HF checkpoint to {out}", flush=True)
    sys.exit(0)
tp, pp = int(arg("--tp_size", 1)), int(arg("--pp_size", 1))
qformat = arg("--qformat")
if qformat is None:
    qformat = {"int4": "W4A16", "int8": "W8A16"}.get(arg("--weight_only_precision")) if "--use_weight_only" in sys.argv else None
quant = {"fp8": "FP8", "int4_awq": "W4A16_AWQ"}.get(qformat, qformat)
kv = arg("--kv_cache_dtype") or ("INT8" if "--int8_kv_cache" in sys.argv else None)
config = {
    "architecture": "LlamaForCausalLM", "dtype": "bfloat16",
    "quantization": {"quant_algo": quant, "kv_cache_quant_algo": kv.upper() if kv else None},
    "mapping": {"world_size": tp * pp, "tp_size": tp, "pp_size": pp},
}
(out / "config.json").write_text(json.dumps(config))
for rank in range(tp * pp):
    (out / f"rank{rank}.safetensors").write_bytes(b"fake-weights-%d" % rank)
print(f"{TOOL}: wrote {out}", flush=True)
'''

_TRTLLM_BUILD = _COMMON + r'''
record("trtllm-build")
ckpt = Path(arg("--checkpoint_dir"))
cfg = json.loads((ckpt / "config.json").read_text())
out = Path(arg("--output_dir"))
out.mkdir(parents=True, exist_ok=True)
world = cfg["mapping"]["world_size"]
engine = {
    "version": os.environ.get("FAKE_TRTLLM_VERSION", "1.2.1"),
    "pretrained_config": {**cfg, "mapping": {**cfg["mapping"], "gpus_per_node": 8, "cp_size": 1,
                                               "moe_tp_size": cfg["mapping"]["tp_size"], "moe_ep_size": 1}},
    "build_config": {
        "max_input_len": int(arg("--max_input_len")), "max_seq_len": int(arg("--max_seq_len")),
        "opt_batch_size": 8, "max_batch_size": int(arg("--max_batch_size")),
        "max_beam_width": int(arg("--max_beam_width", 1)), "max_num_tokens": int(arg("--max_num_tokens")),
        "opt_num_tokens": None, "max_prompt_embedding_table_size": 0, "kv_cache_type": "PAGED",
        "gather_context_logits": False, "gather_generation_logits": False, "strongly_typed": True,
        "plugin_config": {"gemm_plugin": arg("--gemm_plugin"), "gpt_attention_plugin": "auto",
                          "use_paged_context_fmha": arg("--use_paged_context_fmha") == "enable",
                          "use_fp8_context_fmha": arg("--use_fp8_context_fmha") == "enable",
                          "tokens_per_block": int(arg("--tokens_per_block", 32))},
    },
}
(out / "config.json").write_text(json.dumps(engine, indent=2))
for rank in range(world):
    (out / f"rank{rank}.engine").write_bytes(os.urandom(64) + b"engine-%d" % rank)
print(f"trtllm-build: {world} engine(s) in {out}", flush=True)
'''

_NVIDIA_SMI = r'''
import os, sys
from pathlib import Path
if os.environ.get("FAKE_NVSMI_FAIL"):
    print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", file=sys.stderr)
    sys.exit(9)
with open(os.environ["FAKE_NVSMI_CALLS"], "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\n")
sys.stdout.write(Path(os.environ["FAKE_NVSMI_CSV"]).read_text())
'''


def gpu_csv(count: int, name: str = "NVIDIA H100 80GB HBM3", total: int = 81559, free: int = 81000,
            cc: str = "9.0") -> str:
    return "".join(f"{i}, {name}, {total}, {free}, {cc}, 570.86.15\n" for i in range(count))


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\n{body}", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@dataclass
class FakeToolchain:
    root: Path
    bin: Path
    examples: Path
    calls_file: Path
    nvsmi_csv: Path
    nvsmi_calls: Path
    checkpoint: Path
    site: Path

    def calls(self) -> list[dict]:
        if not self.calls_file.exists():
            return []
        return [json.loads(line) for line in self.calls_file.read_text().splitlines() if line.strip()]

    def set_gpus(self, csv: str) -> None:
        self.nvsmi_csv.write_text(csv)


@pytest.fixture
def fake_toolchain(tmp_path, monkeypatch) -> FakeToolchain:
    root = tmp_path / "toolchain"
    bin_dir = root / "bin"
    examples = root / "TensorRT-LLM" / "examples"
    _script(bin_dir / "trtllm-build", _TRTLLM_BUILD)
    _script(bin_dir / "nvidia-smi", _NVIDIA_SMI)
    _script(examples / "quantization" / "quantize.py", _CHECKPOINT_TOOL)
    _script(examples / "models" / "core" / "llama" / "convert_checkpoint.py", _CHECKPOINT_TOOL)
    # A fake TensorRT-LLM install on PYTHONPATH: the preflight imports tensorrt_llm (FAKE_TRTLLM_RUNTIME_VERSION)
    # and looks for quantize.py's ModelOpt / datasets.
    site = root / "site"
    for package, body in (("tensorrt_llm", 'import os\n__version__ = os.environ.get("FAKE_TRTLLM_RUNTIME_VERSION", '
                                           '"1.2.1")\n'),
                          ("modelopt", ""), ("datasets", "")):
        (site / package).mkdir(parents=True, exist_ok=True)
        (site / package / "__init__.py").write_text(body)
    checkpoint = tmp_path / "hf-checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (checkpoint / "model-00001-of-00001.safetensors").write_bytes(b"\0" * 1024)
    tc = FakeToolchain(
        root=root, bin=bin_dir, examples=examples, calls_file=root / "calls.jsonl",
        nvsmi_csv=root / "gpus.csv", nvsmi_calls=root / "nvsmi_calls.txt", checkpoint=checkpoint,
        site=site,
    )
    tc.set_gpus(gpu_csv(4))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("FAKE_TRTLLM_CALLS", str(tc.calls_file))
    monkeypatch.setenv("FAKE_NVSMI_CSV", str(tc.nvsmi_csv))
    monkeypatch.setenv("FAKE_NVSMI_CALLS", str(tc.nvsmi_calls))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for var in ("FAKE_TRTLLM_FAIL", "FAKE_TRTLLM_SLEEP", "FAKE_NVSMI_FAIL", "FAKE_TRTLLM_VERSION",
                "FAKE_TRTLLM_RUNTIME_VERSION", "FAKE_QUANT_ALGO"):
        monkeypatch.delenv(var, raising=False)
    return tc


@pytest.fixture(scope="session")
def trtllm_flags() -> dict:
    return json.loads((DATA / "trtllm-1.2-cli-flags.json").read_text(encoding="utf-8"))


def _deep_update(data: dict, updates: dict) -> dict:
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            _deep_update(data[key], value)
        else:
            data[key] = value
    return data


@pytest.fixture(scope="session")
def make_recipe():
    """make_recipe(base_name, **section_updates) -> EngineRecipe: a validated variant of a shipped recipe."""
    from koserve.engines.recipe import load_recipe, parse_recipe

    def make(base: str, **updates):
        data = load_recipe(base).model_dump(mode="json")
        return parse_recipe(_deep_update(data, updates), f"variant of {base}")

    return make


def write_engine_dir(recipe, path: Path, *, version: str = "1.2.1") -> Path:
    """A TensorRT-LLM 1.x engine folder for ``recipe`` as trtllm-build lays it out (config.json + rank files)."""
    par, lim = recipe.parallelism, recipe.limits
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "version": version,
        "pretrained_config": {
            "architecture": "LlamaForCausalLM", "dtype": "bfloat16",
            "quantization": {"quant_algo": None, "kv_cache_quant_algo": None},
            "mapping": {"world_size": par.world_size, "tp_size": par.tp, "pp_size": par.pp, "cp_size": 1,
                        "gpus_per_node": 8},
        },
        "build_config": {
            "max_input_len": lim.max_input_len, "max_seq_len": lim.max_seq_len,
            "max_batch_size": lim.max_batch_size, "max_beam_width": lim.max_beam_width,
            "max_num_tokens": lim.max_num_tokens,
        },
    }
    (path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    for rank in range(par.world_size):
        (path / f"rank{rank}.engine").write_bytes(b"engine-%d" % rank)
    return path


@pytest.fixture(scope="session")
def backend_contract() -> dict:
    return json.loads((DATA / "trtllm-1.2.1-backend-contract.json").read_text(encoding="utf-8"))


@pytest.fixture
def engine_dir_for():
    """engine_dir_for(recipe, path, version=...) -> a fake engine folder matching the recipe."""
    return write_engine_dir


def _helm_binary() -> str:
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    cache = Path(os.environ.get("KOSERVE_CACHE", repo / ".cache" / "koserve"))
    for candidate in (cache / "bin" / "helm", shutil.which("helm")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    proc = subprocess.run(["bash", str(repo / "scripts" / "get_helm.sh")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def helm_template():
    """helm_template(values_file, *--set values) -> the rendered chart's documents (real helm, offline)."""
    import subprocess

    import yaml

    repo = Path(__file__).resolve().parents[2]
    chart = repo / "deploy" / "helm" / "koserve"
    helm = _helm_binary()

    def render(values_file: str, *sets: str) -> list[dict]:
        args = [helm, "template", "rel", str(chart), "-f", str(chart / values_file)]
        for s in sets:
            args += ["--set", s]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return [d for d in yaml.safe_load_all(proc.stdout) if d]

    return render


def render_init_containers(docs: list[dict]):
    """(kind, render-repository init container) of every Deployment / LeaderWorkerSet leader in ``docs``."""
    for doc in docs:
        if doc.get("kind") == "Deployment":
            pods = [doc["spec"]["template"]["spec"]]
        elif doc.get("kind") == "LeaderWorkerSet":
            pods = [doc["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]]
        else:
            continue
        for pod in pods:
            for c in pod.get("initContainers", []):
                if c["name"] == "render-repository":
                    yield doc["kind"], c


@pytest.fixture(scope="session")
def init_containers():
    return render_init_containers
