"""Recipes with ``backend: pytorch``: HF checkpoints for the LLM API, planned, printed and built by the real
`koserve build` CLI against the fake TensorRT-LLM toolchain and fake nvidia-smi of conftest.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from koserve.cli import main
from koserve.engines.commands import BuildPaths, build_steps
from koserve.engines.manifest import read_checkpoint_manifest, sha256_file, verify_manifest
from koserve.engines.planner import NVFP4_BLOCK, plan, weight_bytes
from koserve.engines.recipe import builtin_recipe_names, load_recipe
from koserve.errors import ConfigError
from koserve.fixtures import tokenizer_dir

from .conftest import gpu_csv

PYTORCH_RECIPES = [n for n in builtin_recipe_names() if "-pytorch-" in n]
MATRIX = "quantization.md@09d4c79b"


def test_both_models_have_pytorch_recipes_that_plan():
    assert {load_recipe(n).profile for n in PYTORCH_RECIPES} == {"akallama-70b", "komt-13b"}
    seen = set()
    for name in PYTORCH_RECIPES:
        recipe = load_recipe(name)
        assert recipe.backend == "pytorch" and recipe.builds_checkpoint
        p = plan(recipe)
        assert p.ok, (name, p.errors)
        assert p.backend == "pytorch" and p.kv_tokens > 0 and p.scenarios[0].verdict == "ok"
        seen.add((recipe.profile, recipe.quantization.precision, recipe.gpu))
    assert ("akallama-70b", "fp8", "h100-sxm-80gb") in seen and ("komt-13b", "fp8", "h100-sxm-80gb") in seen
    assert ("komt-13b", "int4_awq", "l40s-48gb") in seen  # W4A16 AWQ: LLaMA-v2 only
    assert {p for _, p, g in seen if g == "b200-180gb"} == {"nvfp4"}
    assert not any(prof == "akallama-70b" and prec == "int4_awq" for prof, prec, _ in seen)


def test_recipes_cite_the_support_matrix():
    recipes = Path(__file__).resolve().parents[2] / "recipes"
    for name in PYTORCH_RECIPES:
        assert MATRIX in (recipes / f"{name}.yaml").read_text(encoding="utf-8"), name
    awq = (recipes / "komt-13b-pytorch-int4awq-l40s-tp1.yaml").read_text(encoding="utf-8")
    assert "LLaMA-v2" in awq and 'does not mark it for "LLaMA 3"' in awq


def test_planner_refuses_what_the_matrix_does_not_mark(make_recipe):
    akallama_awq = make_recipe("akallama-70b-pytorch-fp8-h100-tp2", quantization={"precision": "int4_awq"})
    p = plan(akallama_awq)
    assert not p.ok and any("not marked for LLaMA 3" in e and MATRIX in e for e in p.errors), p.errors
    komt_awq_blackwell = make_recipe("komt-13b-pytorch-int4awq-l40s-tp1", gpu="b200-180gb")
    p = plan(komt_awq_blackwell)
    assert any("Ampere, Ada and Hopper only" in e and "Blackwell" in e for e in p.errors), p.errors
    nvfp4_hopper = make_recipe("komt-13b-pytorch-nvfp4-b200-tp1", gpu="h100-sxm-80gb")
    p = plan(nvfp4_hopper)
    assert any("NVFP4 needs Blackwell" in e and "Hopper 9.0" in e for e in p.errors), p.errors


@pytest.mark.parametrize("change, message", [
    ({"backend": "trtllm", "quantization": {"precision": "nvfp4"}}, "set backend: pytorch"),
    ({"quantization": {"precision": "int4_wo"}, "why": {}}, "int4_wo is a TensorRT-engine"),
    ({"quantization": {"kv_cache_dtype": "int8"}}, "kv_cache_dtype int8 is not offered"),
    ({"quantization": {"precision": "bf16", "kv_cache_dtype": "fp8"}}, "must be bf16"),
    ({"build": {"gemm_plugin": "fp8"}}, "remove the build: section"),
])
def test_recipe_refusals(make_recipe, change, message):
    with pytest.raises(ConfigError, match=message):
        make_recipe("komt-13b-pytorch-fp8-h100-tp1", **change)


def test_pytorch_recipe_needs_a_why_for_its_backend(make_recipe):
    from koserve.engines.recipe import parse_recipe

    data = load_recipe("komt-13b-pytorch-fp8-h100-tp1").model_dump(mode="json")
    del data["why"]["backend"]
    with pytest.raises(ConfigError, match="missing: backend"):
        parse_recipe(data, "test")


def test_nvfp4_weight_bytes_follow_the_format():
    """NVFP4: half a byte per linear weight plus one FP8 scale per 16; embeddings, lm_head and norms in BF16."""
    recipe = load_recipe("komt-13b-pytorch-nvfp4-b200-tp1")
    a = recipe.model_profile.architecture
    h, inter, vocab = a.hidden_size, a.intermediate_size, a.vocab_size
    linear = h * (a.num_attention_heads + 2 * a.num_kv_heads) * a.head_dim + h * h + 3 * h * inter
    expected = a.num_layers * (linear * (0.5 + 1 / NVFP4_BLOCK) + 2 * h * 2) + 2 * vocab * h * 2 + h * 2
    assert weight_bytes(recipe)[0] == int(expected)
    fp8 = load_recipe("komt-13b-pytorch-fp8-h100-tp1")
    assert weight_bytes(recipe)[0] < weight_bytes(fp8)[0]


def test_b200_is_in_the_catalogue():
    from koserve.engines.gpus import format_catalogue, get_gpu, match_gpu_name

    gpu = get_gpu("b200-180gb")
    assert gpu.cc_text == "10.0" and gpu.supports_nvfp4 and not gpu.supports_pytorch_int4_awq
    assert match_gpu_name("NVIDIA B200") is gpu
    assert "b200-180gb" in format_catalogue() and "nvfp4" in format_catalogue()


# -- commands ----------------------------------------------------------------------------------------------------------

def test_quantize_exports_a_whole_hf_checkpoint(tmp_path, trtllm_flags):
    from koserve.engines.commands import validate_against_flags

    recipe = load_recipe("akallama-70b-pytorch-nvfp4-b200-tp1")
    paths = BuildPaths.for_recipe(recipe, workdir=tmp_path / "w", checkpoint_dir=tmp_path)
    steps = build_steps(recipe, paths)
    assert [s.name for s in steps] == ["quantize", "checkpoint"]
    argv = list(steps[0].argv)
    assert argv[argv.index("--export_format") + 1] == "hf" and argv[argv.index("--qformat") + 1] == "nvfp4"
    assert argv[argv.index("--kv_cache_dtype") + 1] == "fp8"
    assert "--tp_size" not in argv and "--pp_size" not in argv  # the LLM API shards at load
    assert argv[argv.index("--output_dir") + 1] == str(paths.quantized_dir)
    assert paths.engine_dir == tmp_path / "w" / "checkpoint"
    assert steps[1].argv is None and steps[1].outputs == (paths.engine_dir,)
    assert validate_against_flags(steps, trtllm_flags) == []


def test_bf16_is_the_source_checkpoint(make_recipe, tmp_path):
    bf16 = make_recipe("komt-13b-pytorch-fp8-h100-tp1", quantization={"precision": "bf16", "kv_cache_dtype": "bf16"})
    steps = build_steps(bf16, BuildPaths.for_recipe(bf16, workdir=tmp_path, checkpoint_dir=tmp_path))
    assert [s.name for s in steps] == ["checkpoint"] and steps[0].gpus == 0


# -- the run -----------------------------------------------------------------------------------------------------------

def _checkpoint_with_tokenizer(tc) -> Path:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tokenizer_dir("llama2") / name, tc.checkpoint / name)
    return tc.checkpoint


def _build(tc, tmp_path, recipe: str, *extra: str) -> int:
    return main(["build", "run", recipe, "--workdir", str(tmp_path / "work"), "--checkpoint-dir",
                 str(_checkpoint_with_tokenizer(tc)), "--trtllm-examples", str(tc.examples), "--python",
                 sys.executable, "--heartbeat", "5", *extra])


def test_build_run_writes_a_checkpoint_and_its_manifest(fake_toolchain, tmp_path, capsys):
    tc = fake_toolchain
    assert _build(tc, tmp_path, "komt-13b-pytorch-fp8-h100-tp1") == 0
    out = capsys.readouterr().out
    assert "[1/2] quantize" in out and "[2/2] checkpoint" in out and "checkpoint_manifest.json" in out
    calls = tc.calls()
    assert [c["tool"] for c in calls] == ["quantize.py"]
    argv = calls[0]["argv"]
    assert argv[argv.index("--calib_dataset") + 1].endswith("recipes/calibration/ko")
    ckpt = tmp_path / "work" / "checkpoint"
    files = sorted(p.name for p in ckpt.iterdir())
    assert files == ["checkpoint_manifest.json", "config.json", "hf_quant_config.json", "model.safetensors",
                     "tokenizer.json", "tokenizer_config.json"]
    m = read_checkpoint_manifest(ckpt)
    assert m["kind"] == "checkpoint" and m["backend"] == "pytorch" and m["recipe"] == "komt-13b-pytorch-fp8-h100-tp1"
    assert m["quantization"] == {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}
    assert m["versions"]["tensorrt_llm_runtime"] == "1.2.1" == m["versions"]["tensorrt_llm_expected"]
    assert m["serving"]["tensor_parallel_size"] == 1 and m["serving"]["max_seq_len"] == 4096
    assert m["serving"]["max_input_len"] == 3072 and m["serving"]["max_batch_size"] == 128
    assert [s["name"] for s in m["steps"]] == ["quantize", "checkpoint"]
    assert m["steps"][0]["command"][2:] == argv
    assert m["outputs"]["tokenizer.json"]["sha256"] == sha256_file(tc.checkpoint / "tokenizer.json")
    assert verify_manifest(ckpt) == []
    (ckpt / "model.safetensors").unlink()  # a hard link to work/quantized: replace, do not write through
    (ckpt / "model.safetensors").write_bytes(b"tampered")
    assert verify_manifest(ckpt) == ["model.safetensors: checksum differs from the manifest"]

    # Resumable: the tampered output re-runs only the checkpoint step; nothing changed skips everything.
    assert _build(tc, tmp_path, "komt-13b-pytorch-fp8-h100-tp1") == 0
    assert len(tc.calls()) == 1 and verify_manifest(ckpt) == []
    assert _build(tc, tmp_path, "komt-13b-pytorch-fp8-h100-tp1") == 0
    assert "quantize: up to date, skipped" in capsys.readouterr().out and len(tc.calls()) == 1
    # A changed input re-runs from quantize on.
    (tc.checkpoint / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "changed": 1}')
    assert _build(tc, tmp_path, "komt-13b-pytorch-fp8-h100-tp1") == 0
    assert [c["tool"] for c in tc.calls()] == ["quantize.py", "quantize.py"]
    assert json.loads((ckpt / "config.json").read_text())["changed"] == 1


def test_bf16_build_copies_the_source_and_needs_no_quantizer(fake_toolchain, tmp_path, make_recipe, capsys):
    tc = fake_toolchain
    recipe = make_recipe("komt-13b-pytorch-fp8-h100-tp1", name="komt-bf16",
                         quantization={"precision": "bf16", "kv_cache_dtype": "bf16"})
    path = tmp_path / "komt-bf16.yaml"
    import yaml

    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), allow_unicode=True))
    assert _build(tc, tmp_path, str(path)) == 0
    assert tc.calls() == []
    ckpt = tmp_path / "work" / "checkpoint"
    assert (ckpt / "model-00001-of-00001.safetensors").read_bytes() == b"\0" * 1024
    assert read_checkpoint_manifest(ckpt)["quantization"] == {"quant_algo": None, "kv_cache_quant_algo": None}


def test_version_preflight_refuses_another_release(fake_toolchain, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_TRTLLM_RUNTIME_VERSION", "1.3.0rc2")
    assert _build(fake_toolchain, tmp_path, "komt-13b-pytorch-fp8-h100-tp1") == 2
    err = capsys.readouterr().err
    assert "tensorrt_llm.__version__ = 1.3.0rc2" in err and "trtllm_version = 1.2.1" in err
    assert fake_toolchain.calls() == []


def test_a_checkpoint_quantized_otherwise_is_refused(fake_toolchain, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_QUANT_ALGO", "FP8")
    fake_toolchain.set_gpus(gpu_csv(1, name="NVIDIA B200", total=183359, free=180000, cc="10.0"))
    assert _build(fake_toolchain, tmp_path, "komt-13b-pytorch-nvfp4-b200-tp1") == 2
    err = capsys.readouterr().err
    assert "quantized as quant_algo FP8" in err and "asks for NVFP4" in err
    assert not (tmp_path / "work" / "checkpoint" / "checkpoint_manifest.json").exists()


def test_gpu_check_warns_about_the_architecture_and_refuses_too_little_memory(fake_toolchain, tmp_path, capsys):
    """A HF checkpoint is not tied to the GPU that quantized it: an NVFP4 recipe quantized on a Hopper box is built
    with a warning naming both GPUs. Too little free memory for calibration is refused before quantize.py runs."""
    assert _build(fake_toolchain, tmp_path, "komt-13b-pytorch-nvfp4-b200-tp1") == 0
    out = capsys.readouterr().out
    assert "warning: GPU 0 is NVIDIA H100 80GB HBM3 (9.0); the checkpoint is for B200 180GB (10.0)" in out
    assert [c["tool"] for c in fake_toolchain.calls()] == ["quantize.py"]
    fake_toolchain.set_gpus(gpu_csv(1, free=20000))
    assert main(["build", "run", "komt-13b-pytorch-fp8-h100-tp1", "--workdir", str(tmp_path / "other"),
                 "--checkpoint-dir", str(fake_toolchain.checkpoint), "--trtllm-examples",
                 str(fake_toolchain.examples), "--python", sys.executable]) == 2
    assert "not enough free GPU memory for quantize" in capsys.readouterr().err
    assert len(fake_toolchain.calls()) == 1


def test_cli_plan_list_and_commands(tmp_path):
    env_cli = [sys.executable, "-m", "koserve", "build"]
    proc = subprocess.run(env_cli + ["plan", "akallama-70b-pytorch-nvfp4-b200-tp1"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "pytorch (LLM API on a HF checkpoint)" in proc.stdout and "B200 180GB" in proc.stdout
    proc = subprocess.run(env_cli + ["list"], capture_output=True, text=True, timeout=120)
    assert all(name in proc.stdout for name in PYTORCH_RECIPES)
    assert any("pytorch" in line for line in proc.stdout.splitlines() if "-pytorch-" in line)
    proc = subprocess.run(env_cli + ["commands", "komt-13b-pytorch-int4awq-l40s-tp1", "--json", "--workdir",
                                     str(tmp_path)], capture_output=True, text=True, timeout=120)
    steps = json.loads(proc.stdout)
    assert [s["step"] for s in steps] == ["quantize", "checkpoint"]
    argv = steps[0]["argv"]
    assert argv[argv.index("--qformat") + 1] == "int4_awq" and argv[argv.index("--awq_block_size") + 1] == "128"


def test_quantization_is_read_from_hf_quant_config_or_a_modelopt_quantization_config(tmp_path):
    from koserve.engines.manifest import read_checkpoint_quantization

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert read_checkpoint_quantization(tmp_path) == {}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "modelopt", "quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8", "group_size": 16}}))
    assert read_checkpoint_quantization(tmp_path) == {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8"}
    (tmp_path / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "FP8"}}))
    assert read_checkpoint_quantization(tmp_path)["quant_algo"] == "FP8"
    (tmp_path / "hf_quant_config.json").write_text(json.dumps({"producer": {}}))
    with pytest.raises(ConfigError, match="no 'quantization' object"):
        read_checkpoint_quantization(tmp_path)
