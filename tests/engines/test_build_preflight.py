"""Version preflight: tensorrt_llm.__version__ (a fake tensorrt_llm package on PYTHONPATH, imported by a real
interpreter), the engine's config.json version (fake engine folders) and the recipe's trtllm_version must agree in
`koserve build run`, `koserve build preflight`, `koserve serve` (GPU) and the chart's init container."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from koserve.engines.commands import BuildPaths
from koserve.engines.preflight import (
    NOT_BUILT,
    PreflightError,
    check_versions,
    engine_dir_of_repo,
    preflight_engine,
    preflight_repo,
    probe_runtime,
    require_versions,
)
from koserve.engines.recipe import load_recipe
from koserve.engines.runner import BuildError, run_build
from koserve.cli import build_parser, main
from koserve.fixtures import tokenizer_dir
from koserve.repo.render import RenderOptions, render_repository

REPO = Path(__file__).resolve().parents[2]
RECIPE = "komt-13b-fp8-h100-tp1"


def test_probe_imports_the_real_module(fake_toolchain, monkeypatch):
    assert probe_runtime(sys.executable).version == "1.2.1"
    monkeypatch.setenv("FAKE_TRTLLM_RUNTIME_VERSION", "1.1.0")
    probe = probe_runtime(sys.executable, modules=("modelopt", "no_such_module_xyz"))
    assert probe.version == "1.1.0" and probe.missing == ("no_such_module_xyz",)
    assert probe.location.startswith(str(fake_toolchain.site))


def test_probe_reads_version_py_without_importing(monkeypatch, tmp_path):
    """Like the real package (__init__ imports torch, TensorRT...; __version__ from version.py): no import."""
    pkg = tmp_path / "tensorrt_llm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('importing TensorRT-LLM needs CUDA')\n"
                                     "from .version import __version__\n")
    (pkg / "version.py").write_text('__version__ = "1.2.1"\n')
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert probe_runtime(sys.executable).version == "1.2.1"
    (pkg / "version.py").unlink()
    probe = probe_runtime(sys.executable)
    assert probe.version is None and "needs CUDA" in probe.error


def test_probe_without_tensorrt_llm(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    probe = probe_runtime(sys.executable)
    assert probe.version is None and "No module named 'tensorrt_llm'" in probe.error
    assert probe_runtime(str(tmp_path / "no-python")).error.startswith("interpreter")


def test_mismatch_names_all_three_values(fake_toolchain, monkeypatch, tmp_path, engine_dir_for):
    recipe = load_recipe(RECIPE)
    engine = engine_dir_for(recipe, tmp_path / "engine", version="1.2.0rc8")
    monkeypatch.setenv("FAKE_TRTLLM_RUNTIME_VERSION", "1.1.0")
    check = check_versions("1.2.1", engine_dir=engine, runtime=probe_runtime(sys.executable))
    assert check.problems == ["runtime", "engine"]
    with pytest.raises(PreflightError) as exc:
        require_versions(check, what="t")
    text = str(exc.value)
    assert "tensorrt_llm.__version__ = 1.1.0" in text and "version = 1.2.0rc8" in text
    assert "recipe trtllm_version = 1.2.1" in text and "26.04-trtllm-python-py3" in text


def test_agreeing_versions_pass_and_missing_engine_is_reported(fake_toolchain, tmp_path, engine_dir_for):
    recipe = load_recipe(RECIPE)
    check = check_versions("1.2.1", engine_dir=tmp_path / "nothing", runtime=probe_runtime(sys.executable))
    assert check.ok and check.engine == NOT_BUILT
    engine = engine_dir_for(recipe, tmp_path / "engine")
    assert preflight_engine(engine, python=sys.executable).ok
    with pytest.raises(PreflightError, match="has no config.json"):
        preflight_engine(tmp_path / "nothing", python=sys.executable)
    (engine / "config.json").write_text(json.dumps({"build_config": {}}))
    with pytest.raises(PreflightError, match="has no 'version'"):
        preflight_engine(engine, python=sys.executable)


def _cli(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_preflight_cli(fake_toolchain, monkeypatch, tmp_path, engine_dir_for, capsys):
    recipe = load_recipe(RECIPE)
    engine = engine_dir_for(recipe, tmp_path / "engine")
    base = ["build", "preflight", "--engine-dir", str(engine), "--python", sys.executable]
    code, out = _cli(base + ["--recipe", RECIPE], capsys)
    assert code == 0 and "versions agree" in out
    code, out = _cli(base + ["--expect", "1.2.0"], capsys)
    assert code == 2 and "expected (--expect) = 1.2.0" in out
    # the expected version recorded by the build (engine_manifest.json) is used when none is given
    (engine / "engine_manifest.json").write_text(json.dumps({"versions": {"tensorrt_llm_expected": "1.3.0"}}))
    code, out = _cli(base, capsys)
    assert code == 2 and "recipe trtllm_version (engine_manifest.json) = 1.3.0" in out
    monkeypatch.setenv("FAKE_TRTLLM_RUNTIME_VERSION", "1.1.0")
    code, out = _cli(base + ["--recipe", RECIPE], capsys)
    assert code == 2 and "runtime tensorrt_llm.__version__ = 1.1.0" in out and f"recipe {RECIPE} trtllm_version = 1.2.1" in out


def _paths(tc, recipe, tmp_path):
    return BuildPaths.for_recipe(recipe, workdir=tmp_path / "work", checkpoint_dir=tc.checkpoint,
                                 examples_dir=str(tc.examples), python=sys.executable)


def test_build_run_refuses_a_wrong_runtime_before_any_step(fake_toolchain, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_TRTLLM_RUNTIME_VERSION", "1.1.0")
    recipe = load_recipe(RECIPE)
    with pytest.raises(BuildError) as exc:
        run_build(recipe, _paths(fake_toolchain, recipe, tmp_path), echo=lambda line: None)
    assert "tensorrt_llm.__version__ = 1.1.0" in str(exc.value) and "not built yet" in str(exc.value)
    assert fake_toolchain.calls() == []


def test_build_run_refuses_an_engine_of_another_version(fake_toolchain, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_TRTLLM_VERSION", "1.2.0")  # what the fake trtllm-build writes into config.json
    recipe = load_recipe(RECIPE)
    with pytest.raises(BuildError) as exc:
        run_build(recipe, _paths(fake_toolchain, recipe, tmp_path), echo=lambda line: None)
    text = str(exc.value)
    assert "runtime tensorrt_llm.__version__ = 1.2.1" in text and "version = 1.2.0;" in text
    assert "recipe trtllm_version = 1.2.1" in text
    assert not (tmp_path / "work" / "engine" / "engine_manifest.json").exists()  # not marked as finished


def test_build_run_needs_quantize_requirements(fake_toolchain, tmp_path):
    shutil.rmtree(fake_toolchain.site / "modelopt")
    recipe = load_recipe(RECIPE)
    with pytest.raises(BuildError, match=r"quantize.py needs modelopt .*quantization/requirements.txt"):
        run_build(recipe, _paths(fake_toolchain, recipe, tmp_path), echo=lambda line: None)
    assert fake_toolchain.calls() == []


def test_build_run_records_the_runtime_version(fake_toolchain, tmp_path):
    recipe = load_recipe(RECIPE)
    result = run_build(recipe, _paths(fake_toolchain, recipe, tmp_path), echo=lambda line: None)
    versions = json.loads(result.manifest_path.read_text())["versions"]
    assert versions["tensorrt_llm_runtime"] == versions["tensorrt_llm_engine"] == "1.2.1"


def _gpu_repo(tmp_path, engine_dir_for, version="1.2.1"):
    recipe = load_recipe(RECIPE)
    engine = engine_dir_for(recipe, tmp_path / "engine", version=version)
    render_repository(RenderOptions(profile=recipe.profile, tokenizer_dir=tokenizer_dir("llama2"),
                                    out=tmp_path / "repo", engine_dir=engine))
    return tmp_path / "repo", engine


def test_serve_checks_gpu_repositories(fake_toolchain, monkeypatch, tmp_path, engine_dir_for, capsys):
    repo, engine = _gpu_repo(tmp_path, engine_dir_for)
    assert engine_dir_of_repo(repo) == engine.resolve()
    assert preflight_repo(repo).ok
    cpu = render_repository(RenderOptions(profile="komt-13b", tokenizer_dir=tokenizer_dir("llama2"),
                                          out=tmp_path / "cpu", replay=True))
    assert engine_dir_of_repo(cpu.path) is None and preflight_repo(cpu.path) is None

    # A runtime of another release: koserve serve stops before launching mpirun/tritonserver.
    monkeypatch.setenv("FAKE_TRTLLM_RUNTIME_VERSION", "1.1.0")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))  # nothing could be launched anyway
    code, out = _cli(["serve", "--repo", str(repo), "--health-port", "0"], capsys)
    assert code == 2, out
    assert "serve" in out and "tensorrt_llm.__version__ = 1.1.0" in out and "version = 1.2.1" in out
    assert "koserve's pinned TensorRT-LLM = 1.2.1" in out


@pytest.mark.parametrize("values_file", ["values-komt-13b-fp8-tp1.yaml", "values-akallama-70b-fp8-tp4.yaml"])
def test_chart_init_container_runs_the_preflight(values_file, helm_template, init_containers):
    """The rendered init container's preflight line, parsed by koserve's own argparse parser."""
    found = list(init_containers(helm_template(values_file)))
    assert found
    for kind, container in found:
        script = container["args"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        lines = [line.strip() for line in script.splitlines() if line.strip().startswith("koserve build preflight")]
        assert len(lines) == 1, script
        argv = [a.replace("$ENGINE_DIR", env["ENGINE_DIR"]) for a in shlex.split(lines[0])]
        args = build_parser().parse_args(argv[1:])
        assert args.func.__name__ == "_preflight" and args.engine_dir == env["ENGINE_DIR"]
        # it runs before the repository is rendered, and `set -e` (bash -ec) stops the pod on a mismatch
        assert script.index("koserve build preflight") < script.index("koserve repo render")
        assert container["command"][:2] == ["/bin/bash", "-ec"]
