"""`koserve build run` against a fake TensorRT-LLM toolchain and a fake nvidia-smi on PATH."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from koserve.engines.commands import BuildPaths
from koserve.engines.manifest import read_engine_limits, read_manifest, sha256_file, verify_manifest
from koserve.engines.recipe import load_recipe
from koserve.engines.runner import BuildError, run_build
from koserve.cli import main

REPO = Path(__file__).resolve().parents[2]


def gpu_csv(count, name="NVIDIA H100 80GB HBM3", total=81559, free=81000, cc="9.0"):
    return "".join(f"{i}, {name}, {total}, {free}, {cc}, 570.86.15\n" for i in range(count))


def _paths(tc, recipe, tmp_path):
    return BuildPaths.for_recipe(recipe, workdir=tmp_path / "work", checkpoint_dir=tc.checkpoint,
                                 examples_dir=str(tc.examples), python=sys.executable)


def _run(recipe, paths, **kw):
    lines = []
    result = run_build(recipe, paths, echo=lines.append, heartbeat_seconds=kw.pop("heartbeat_seconds", 5), **kw)
    return result, lines


def test_full_run_orders_steps_logs_and_writes_manifest(fake_toolchain, tmp_path, monkeypatch):
    tc = fake_toolchain
    monkeypatch.setenv("FAKE_TRTLLM_SLEEP", "0.3")
    recipe = load_recipe("akallama-70b-fp8-h100-tp4")
    paths = _paths(tc, recipe, tmp_path)
    result, lines = _run(recipe, paths, heartbeat_seconds=0.1)

    calls = tc.calls()
    assert [c["tool"] for c in calls] == ["quantize.py", "trtllm-build"]
    q = calls[0]["argv"]
    assert q[q.index("--tp_size") + 1] == "4" and q[q.index("--qformat") + 1] == "fp8"
    assert calls[1]["argv"][calls[1]["argv"].index("--checkpoint_dir") + 1] == str(paths.trtllm_checkpoint_dir.resolve())
    assert "--query-gpu=index,name,memory.total,memory.free,compute_cap,driver_version" in tc.nvsmi_calls.read_text()

    text = "\n".join(lines)
    assert "[1/2] quantize: ModelOpt fp8" in text and "[2/2] build:" in text
    assert any(line.startswith("[1/2] quantize: running") for line in lines)  # heartbeat with elapsed time
    assert any(line.startswith("[1/2] quantize: done in") for line in lines)
    assert "quantize.py: starting" in (paths.workdir / "logs" / "quantize.log").read_text()
    assert "trtllm-build: 4 engine(s)" in (paths.workdir / "logs" / "build.log").read_text()

    engine = paths.engine_dir
    assert sorted(p.name for p in engine.iterdir()) == [
        "config.json", "engine_manifest.json", "rank0.engine", "rank1.engine", "rank2.engine", "rank3.engine"]
    m = read_manifest(engine)
    assert m["recipe"] == recipe.name and m["recipe_sha256"] == recipe.sha256()
    assert m["recipe_content"]["parallelism"] == {"tp": 4, "pp": 1, "gpus_per_node": None}
    assert m["versions"]["tensorrt_llm_engine"] == "1.2.1" and m["versions"]["koserve"]
    assert [s["name"] for s in m["steps"]] == ["quantize", "build"]
    assert m["steps"][0]["command"][2:] == calls[0]["argv"]
    assert m["steps"][1]["command"] == ["trtllm-build"] + calls[1]["argv"]
    assert all(s["status"] == "ran" and s["seconds"] >= 0.3 for s in m["steps"])
    assert m["build_seconds"] >= 0.6
    assert m["gpu"]["count"] == 4 and m["gpu"]["detected"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert m["limits"] == {"max_batch_size": 256, "max_input_len": 7168, "max_seq_len": 8192,
                           "max_num_tokens": 8192, "tp_size": 4, "pp_size": 1}
    assert set(m["outputs"]) == {"config.json", "rank0.engine", "rank1.engine", "rank2.engine", "rank3.engine"}
    for rel, info in m["outputs"].items():
        assert info["sha256"] == sha256_file(engine / rel)
    assert verify_manifest(engine) == []
    (engine / "rank2.engine").write_bytes(b"tampered")
    assert verify_manifest(engine) == ["rank2.engine: checksum differs from the manifest"]


def test_resume_skips_finished_steps_and_reruns_on_change(fake_toolchain, tmp_path, make_recipe, monkeypatch):
    tc = fake_toolchain
    recipe = load_recipe("komt-13b-fp8-h100-tp1")
    paths = _paths(tc, recipe, tmp_path)
    _run(recipe, paths)
    assert len(tc.calls()) == 2

    result, lines = _run(recipe, paths)  # nothing changed: both skipped
    assert len(tc.calls()) == 2
    assert [s.status for s in result.steps] == ["skipped", "skipped"]
    assert "[1/2] quantize: up to date, skipped" in lines

    # A changed build option re-runs only trtllm-build.
    bigger = make_recipe("komt-13b-fp8-h100-tp1", limits={"max_batch_size": 64})
    result, _ = _run(bigger, paths)
    assert [c["tool"] for c in tc.calls()[2:]] == ["trtllm-build"]
    assert [s.status for s in result.steps] == ["skipped", "ran"]
    assert read_engine_limits(paths.engine_dir).max_batch_size == 64

    # Changed input (the HF checkpoint): everything from quantize on re-runs.
    (tc.checkpoint / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "changed": 1}')
    _run(bigger, paths)
    assert [c["tool"] for c in tc.calls()[3:]] == ["quantize.py", "trtllm-build"]

    # A deleted output re-runs its step.
    (paths.engine_dir / "rank0.engine").unlink()
    _run(bigger, paths)
    assert [c["tool"] for c in tc.calls()[5:]] == ["trtllm-build"]

    # --force re-runs all; while the engine is rebuilt there is no manifest (serving waits for it).
    monkeypatch.setenv("FAKE_TRTLLM_FAIL", "trtllm-build")
    with pytest.raises(BuildError):
        _run(bigger, paths, force=True)
    assert not (paths.engine_dir / "engine_manifest.json").exists()
    monkeypatch.delenv("FAKE_TRTLLM_FAIL")
    _run(bigger, paths, force=True)
    assert [c["tool"] for c in tc.calls()[6:]] == ["quantize.py", "trtllm-build", "quantize.py", "trtllm-build"]
    assert read_manifest(paths.engine_dir)["limits"]["max_batch_size"] == 64


def test_failing_step_stops_the_build_with_a_clear_message(fake_toolchain, tmp_path, monkeypatch):
    tc = fake_toolchain
    monkeypatch.setenv("FAKE_TRTLLM_FAIL", "quantize.py")
    recipe = load_recipe("komt-13b-fp8-h100-tp1")
    paths = _paths(tc, recipe, tmp_path)
    with pytest.raises(BuildError) as exc:
        _run(recipe, paths)
    msg = str(exc.value)
    assert "step quantize failed" in msg and "quantize.py exited with code 3" in msg
    assert "CUDA out of memory (fake)" in msg  # the log's last lines
    assert "not run: build" in msg and str(paths.workdir.resolve() / "logs" / "quantize.log") in msg
    assert [c["tool"] for c in tc.calls()] == ["quantize.py"]
    assert not paths.engine_dir.exists()

    # Fixed: the re-run starts at quantize, then builds.
    monkeypatch.delenv("FAKE_TRTLLM_FAIL")
    monkeypatch.setenv("FAKE_TRTLLM_FAIL", "trtllm-build")
    with pytest.raises(BuildError, match="step build failed"):
        _run(recipe, paths)
    assert not (paths.engine_dir / "engine_manifest.json").exists()
    monkeypatch.delenv("FAKE_TRTLLM_FAIL")
    result, lines = _run(recipe, paths)
    assert [s.status for s in result.steps] == ["skipped", "ran"]  # quantize finished before, kept
    assert [c["tool"] for c in tc.calls()] == ["quantize.py", "quantize.py", "trtllm-build", "trtllm-build"]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda tc, mp: mp.setenv("FAKE_NVSMI_FAIL", "1"), "no GPU: nvidia-smi failed (exit 9)"),
        (lambda tc, mp: tc.set_gpus(""), "no GPU: nvidia-smi lists no"),
        (lambda tc, mp: (tc.bin / "nvidia-smi").unlink(), "no GPU: nvidia-smi is not on PATH"),
        (lambda tc, mp: tc.set_gpus(gpu_csv(2)), "wrong GPU count: this machine shows 2 GPU(s)"),
        (lambda tc, mp: tc.set_gpus(gpu_csv(4, "NVIDIA L40S", 46068, 46000, "8.9")), "wrong GPU: recipe"),
        (lambda tc, mp: tc.set_gpus(gpu_csv(4, free=20000)), "not enough free GPU memory for quantize"),
    ],
)
def test_gpu_preflight_refuses_before_any_step(fake_toolchain, tmp_path, monkeypatch, setup, message):
    tc = fake_toolchain
    setup(tc, monkeypatch)
    recipe = load_recipe("akallama-70b-fp8-h100-tp2")  # quantize needs 4 GPUs with ~53 GB free each
    with pytest.raises(BuildError) as exc:
        _run(recipe, _paths(tc, recipe, tmp_path))
    assert message in str(exc.value)
    assert tc.calls() == []


def test_gpu_count_only_counts_steps_that_will_run(fake_toolchain, tmp_path):
    tc = fake_toolchain
    recipe = load_recipe("akallama-70b-fp8-h100-tp2")
    paths = _paths(tc, recipe, tmp_path)
    _run(recipe, paths)  # on a 4-GPU box
    (paths.engine_dir / "rank1.engine").unlink()
    tc.set_gpus(gpu_csv(1, free=60000))  # a 1-GPU box can redo trtllm-build from the quantized checkpoint
    result, _ = _run(recipe, paths)
    assert [s.status for s in result.steps] == ["skipped", "ran"]


def test_dry_run_runs_nothing_and_needs_no_gpu(fake_toolchain, tmp_path, monkeypatch):
    tc = fake_toolchain
    monkeypatch.setenv("FAKE_NVSMI_FAIL", "1")
    recipe = load_recipe("akallama-70b-int4awq-h100-tp2")
    result, lines = _run(recipe, _paths(tc, recipe, tmp_path), dry_run=True)
    assert [s.status for s in result.steps] == ["would-run", "would-run"]
    assert tc.calls() == [] and not (tmp_path / "work").exists()
    assert any("--awq_block_size 128" in line for line in lines)


def test_refusals_and_missing_tools(fake_toolchain, tmp_path, make_recipe):
    tc = fake_toolchain
    bad = make_recipe("akallama-70b-fp8-h100-tp2", calibration={"num_gpus": 1})
    with pytest.raises(BuildError, match="refused by the planner"):
        _run(bad, _paths(tc, bad, tmp_path))
    recipe = load_recipe("komt-13b-fp8-h100-tp1")
    with pytest.raises(BuildError, match="is a Hugging Face id: download it first"):
        _run(recipe, BuildPaths.for_recipe(recipe, workdir=tmp_path / "w", examples_dir=str(tc.examples)))
    paths = BuildPaths.for_recipe(recipe, workdir=tmp_path / "w", checkpoint_dir=tc.checkpoint,
                                  examples_dir=str(tmp_path / "nowhere"), python=sys.executable)
    with pytest.raises(BuildError, match=r"quantize.py not found \(TensorRT-LLM v1.2.1 examples"):
        _run(recipe, paths)


def test_korean_text_file_is_prepared_as_a_step(fake_toolchain, tmp_path, make_recipe):
    tc = fake_toolchain
    corpus = tmp_path / "ko.txt"
    corpus.write_text("안녕하세요.\n\n반갑습니다.\n", encoding="utf-8")
    recipe = make_recipe("komt-13b-int4awq-l40s-tp1", calibration={"dataset": str(corpus)})
    tc.set_gpus(gpu_csv(1, "NVIDIA L40S", 46068, 46000, "8.9"))
    paths = _paths(tc, recipe, tmp_path)
    result, lines = _run(recipe, paths)
    assert [s.name for s in result.steps] == ["calibration-data", "quantize", "build"]
    rows = (paths.workdir / "calibration_data" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(r)["text"] for r in rows] == ["안녕하세요.", "반갑습니다."]
    result, _ = _run(recipe, paths)
    assert [s.status for s in result.steps] == ["skipped"] * 3


def test_cli_run_and_build_engines_script(fake_toolchain, tmp_path):
    tc = fake_toolchain
    out = tmp_path / "engines"
    env = {**os.environ, "TRTLLM_EXAMPLES": str(tc.examples), "KOSERVE_PYTHON": sys.executable,
           "RECIPE": "komt-13b-fp8-h100-tp1", "CHECKPOINT_DIR": str(tc.checkpoint), "OUTPUT_DIR": str(out),
           "WORKDIR": str(tmp_path / "jobwork"), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_engines.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[2/2] build: done in" in proc.stdout
    engine = out / "komt-13b-fp8-h100-tp1"
    assert read_manifest(engine)["recipe"] == "komt-13b-fp8-h100-tp1"
    limits = read_engine_limits(engine)
    assert (limits.max_batch_size, limits.max_input_len, limits.max_seq_len, limits.tp_size) == (128, 3072, 4096, 1)

    # The script refuses clearly without a recipe; the CLI reports a failing build with exit code 2.
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_engines.sh")], env={**env, "RECIPE": ""},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "RECIPE" in proc.stderr
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_engines.sh")], env={**env, "FAKE_TRTLLM_FAIL": "quantize.py",
                          "FORCE": "1"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "step quantize failed" in proc.stderr and "logs in" in proc.stderr
    # ENGINE_DIR names the engine folder exactly; a Hub id as CHECKPOINT_DIR is fetched with huggingface_hub
    # (a stand-in module here, returning the local snapshot folder).
    fake_hub = tmp_path / "fake_hub"
    (fake_hub / "huggingface_hub").mkdir(parents=True)
    (fake_hub / "huggingface_hub" / "__init__.py").write_text(
        "def snapshot_download(repo_id, allow_patterns=None):\n"
        f"    assert repo_id == 'davidkim205/komt-Llama-2-13b-hf'\n    return {str(tc.checkpoint)!r}\n")
    engine_dir = tmp_path / "models" / "engines" / "komt"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_engines.sh")], env={
        **env, "ENGINE_DIR": str(engine_dir), "CHECKPOINT_DIR": "davidkim205/komt-Llama-2-13b-hf",
        "WORKDIR": "", "PYTHONPATH": f"{fake_hub}{os.pathsep}{tc.site}"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"checkpoint at {tc.checkpoint}" in proc.stdout
    assert read_manifest(engine_dir)["checkpoint"] == str(tc.checkpoint)
    assert (tmp_path / "models" / "engines" / ".koserve-build" / "komt-13b-fp8-h100-tp1" / "logs" / "build.log").is_file()

    (tc.bin / "nvidia-smi").unlink()
    code = main(["build", "run", "akallama-70b-fp8-h100-tp2", "--workdir", str(tmp_path / "w2"),
                 "--checkpoint-dir", str(tc.checkpoint), "--trtllm-examples", str(tc.examples),
                 "--python", sys.executable])
    assert code == 2
