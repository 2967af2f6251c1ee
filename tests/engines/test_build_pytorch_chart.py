"""The chart's engine.backend value (real helm, offline): pytorch renders the repository from the built Hugging Face
checkpoint for the LLM API step, the build Job runs the recipe whose quantizer exports that checkpoint, and a
backend that contradicts the recipe is refused at template time."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import _helm_binary

AKA = "models.akallama-70b"
PYTORCH = (f"{AKA}.engine.backend=pytorch", f"{AKA}.engine.recipe=akallama-70b-pytorch-fp8-h100-tp2",
           f"{AKA}.engine.tensorParallel=2", f"{AKA}.engine.dir=checkpoints/akallama-70b-pytorch-fp8-h100-tp2")


def _job(docs):
    return next(d for d in docs if d["kind"] == "Job" and "build" in d["metadata"]["name"])


def test_pytorch_backend_renders_from_the_checkpoint_and_builds_with_the_quantizer(helm_template, init_containers):
    docs = helm_template("values-akallama-70b-fp8-tp4.yaml", *PYTORCH, f"{AKA}.build.enabled=true")
    (kind, init), = [(k, c) for k, c in init_containers(docs)]
    script = init["args"][0]
    assert ('--engine-backend pytorch --checkpoint "$ENGINE_DIR" --tp 2 --pp 1 $limits' in script
            and '--engine "$ENGINE_DIR"' not in script)
    assert "koserve build preflight --engine-dir" not in script  # a HF checkpoint has no engine version to compare
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert env["ENGINE_READY_FILE"] == "checkpoint_manifest.json"  # written last by `koserve build run`
    job = _job(docs)
    job_env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert job_env["RECIPE"] == "akallama-70b-pytorch-fp8-h100-tp2"
    assert job_env["ENGINE_DIR"].endswith("checkpoints/akallama-70b-pytorch-fp8-h100-tp2")


def test_trtllm_default_is_unchanged(helm_template, init_containers):
    (kind, init), = list(init_containers(helm_template("values-akallama-70b-fp8-tp4.yaml")))
    script = init["args"][0]
    assert '--engine "$ENGINE_DIR"' in script and "--engine-backend" not in script
    assert "koserve build preflight --engine-dir" in script


@pytest.mark.parametrize("sets, message", [
    ((f"{AKA}.engine.backend=pytorch",), "engine.backend=pytorch contradicts engine.recipe akallama-70b-fp8-h100-tp4"),
    (PYTORCH[1:], "engine.backend=trtllm contradicts engine.recipe akallama-70b-pytorch-fp8-h100-tp2"),
    ((f"{AKA}.engine.backend=onnx",), "backend"),
])
def test_backend_that_contradicts_the_recipe_is_refused(sets, message):
    from pathlib import Path

    chart = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "koserve"
    args = [_helm_binary(), "template", "rel", str(chart), "-f", str(chart / "values-akallama-70b-fp8-tp4.yaml")]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_init_script_renders_with_the_recipes_limits(helm_template, init_containers, tmp_path):
    """The generated init script, run by bash with a fake `koserve` on PATH: it waits for the manifest, then renders
    with the limits `koserve build run` recorded (LLM(max_batch_size=...) etc.), and without them when absent."""
    import json
    import os
    import stat
    import sys

    (kind, init), = list(init_containers(helm_template("values-akallama-70b-fp8-tp4.yaml", *PYTORCH)))
    script = init["args"][0]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "koserve"
    fake.write_text(f"#!{sys.executable}\nimport sys\nprint('KOSERVE', *sys.argv[1:])\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    (bin_dir / "python3").symlink_to(sys.executable)
    engine = tmp_path / "ckpt"
    engine.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "ENGINE_DIR": str(engine),
           "TOKENIZER_DIR": "/tok", "ENGINE_WAIT_SECONDS": "0", "ENGINE_READY_FILE": "config.json",
           "KOSERVE_WORLD_SIZE": "2"}
    proc = subprocess.run(["bash", "-ec", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "engine not found" in proc.stderr
    (engine / "config.json").write_text("{}")
    proc = subprocess.run(["bash", "-ec", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--checkpoint " + str(engine) + " --tp 2 --pp 1 --out" in proc.stdout  # no manifest: render's defaults
    (engine / "checkpoint_manifest.json").write_text(json.dumps({"serving": {
        "max_batch_size": 128, "max_input_len": 7168, "max_seq_len": 8192, "max_num_tokens": 8192}}))
    proc = subprocess.run(["bash", "-ec", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert ("--tp 2 --pp 1 --max-batch-size 128 --max-input-len 7168 --max-seq-len 8192 --max-num-tokens 8192 --out"
            in proc.stdout)
