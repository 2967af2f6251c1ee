"""koserve in the production-image stand-in (tests/image/conftest.py): Python 3.12, the image's pinned versions,
koserve[server] installed from a wheel with the image's constraints.

- installing changes none of the pinned versions, pip check is clean, and the server extra brings no second Triton,
  no torch and tritonclient 2.68.0;
- a plain install (no checkout) renders a repository and plans a recipe;
- the stub-side unit tests pass on Python 3.12 with these versions;
- a real Triton (the pytriton wheel's 2.51 binary with its Python 3.12 stub, the stand-in venv first on PATH) streams
  through ``ensemble`` and ``tensorrt_llm_bls`` with koserve imported from the stand-in;
- gpu-smoke's orchestration runs in the stand-in with the fake TensorRT-LLM toolchain.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from koserve.fixtures import tokenizer_dir

REPO = Path(__file__).resolve().parents[2]
STANDIN = Path(__file__).resolve().parent / "image-standin.txt"
CONSTRAINTS = REPO / "deploy" / "docker" / "constraints-trtllm-1.2.1.txt"

pytestmark = pytest.mark.image


def _pins(path: Path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {line.split("==")[0].lower(): line.split("==")[1] for line in lines if "==" in line}


def _installed(image_env) -> dict[str, str]:
    out = image_env.run([str(image_env.python), "-m", "pip", "list", "--format=json"], timeout=120, check=True)
    return {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(out.stdout)}


def test_server_extra_keeps_the_image_pins(image_env):
    after = image_env.run([str(image_env.python), str(REPO / "deploy/docker/image_pins.py"), "after", "--state",
                           str(image_env.state)], timeout=300)
    assert after.returncode == 0, after.stdout + after.stderr
    assert "unchanged, pip check clean" in after.stdout
    installed = _installed(image_env)
    assert {name: installed.get(name) for name in _pins(STANDIN)} == _pins(STANDIN)
    assert installed["tritonclient"] == _pins(CONSTRAINTS)["tritonclient"] == "2.68.0"
    for absent in ("nvidia-pytriton", "torch", "locust", "gevent-websocket"):
        assert absent not in installed, f"the server extra installed {absent}"
    log = image_env.install_log.read_text()
    steps = [log.index(marker) for marker in ("image_pins.py before", "[server]", "image_pins.py after")]
    assert steps == sorted(steps), "the Dockerfile's order: check, install, check"


def test_the_stand_in_refuses_a_change_of_a_pinned_version(image_env, tmp_path):
    """image_pins.py after fails, naming the package, when a watched version moved (here: as recorded differently)."""
    state = json.loads(image_env.state.read_text())
    state["versions"]["grpcio"] = "1.70.0"
    moved = tmp_path / "state.json"
    moved.write_text(json.dumps(state))
    proc = image_env.run([str(image_env.python), str(REPO / "deploy/docker/image_pins.py"), "after", "--state",
                          str(moved)], timeout=300)
    assert proc.returncode == 1 and "grpcio: 1.70.0 -> 1.71.0" in proc.stderr, proc.stdout + proc.stderr


def test_before_refuses_an_interpreter_without_tensorrt_llm(image_env, tmp_path):
    proc = image_env.run([str(image_env.python), str(REPO / "deploy/docker/image_pins.py"), "before", "--import",
                          "tensorrt_llm", "--root", "numpy", "--state", str(tmp_path / "s.json"), "--constraints",
                          str(tmp_path / "c.txt")], timeout=120)
    assert proc.returncode == 1 and "cannot import tensorrt_llm" in proc.stderr
    assert not (tmp_path / "c.txt").exists()


def test_plain_install_renders_and_plans_without_a_checkout(image_env, tmp_path):
    where = image_env.run([str(image_env.python), "-c", "import koserve, koserve.repo.render as r, koserve.engines."
                           "recipe as e; print(koserve.__file__); print(r.templates_dir()); print(e.recipes_dir())"],
                          cwd=tmp_path, timeout=120, check=True).stdout.split()
    assert all(path.startswith(str(image_env.venv)) for path in where), where
    out = tmp_path / "repo"
    image_env.run([str(image_env.bin / "koserve"), "repo", "render", "-p", "akallama-70b", "--tokenizer",
                   str(tokenizer_dir("llama3")), "--replay", "--out", str(out)], cwd=tmp_path, timeout=300, check=True)
    for model in ("preprocessing", "postprocessing", "ensemble", "tensorrt_llm_bls", "tensorrt_llm"):
        assert (out / model / "config.pbtxt").is_file(), model
    plan = image_env.run([str(image_env.bin / "koserve"), "build", "plan", "komt-13b-int4awq-l40s-tp1"], cwd=tmp_path,
                         timeout=300, check=True)
    assert "verdict: buildable" in plan.stdout


def test_stub_side_unit_tests_pass_on_the_image_python(image_env):
    """tests/triton_models and tests/text with the stand-in's Python 3.12, numpy 1.26, tokenizers 0.22, protobuf
    6.33.5, grpcio 1.71 and koserve from its wheel (not the checkout: pytest's importlib mode adds no src/)."""
    proc = image_env.run([str(image_env.python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                          "tests/triton_models", "tests/text"], cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout


def _stub_pythons(shm_prefix: str) -> list[str]:
    """libpython of every python stub process of the server with this shm prefix."""
    found = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "triton_python_backend_stub" not in cmdline or shm_prefix not in cmdline:
                continue
            maps = (proc_dir / "maps").read_text(errors="replace")
        except OSError:
            continue
        libs = {line.split()[-1] for line in maps.splitlines() if "libpython3" in line}
        found.append(",".join(sorted(Path(lib).name for lib in libs)))
    return found


@pytest.mark.timeout(600)
def test_real_triton_streams_through_ensemble_and_bls_with_the_python_312_stub(image_env, tmp_path):
    """Triton 2.51 from the pytriton wheel (test machinery, in the dev venv only) with its python_backend_stubs/3.12
    stub: the stubs run the stand-in's Python 3.12 and import koserve from the stand-in venv."""
    from koserve.cpu_engine.pytriton_server import ServerOptions, cpu_command, find_pytriton, stage_backend_dir
    from koserve.cpu_engine.pytriton_server import TritonDistribution
    from koserve.server.tritonserver import TritonServer

    repo = tmp_path / "repo"
    image_env.run([str(image_env.bin / "koserve"), "repo", "render", "-p", "akallama-70b", "--tokenizer",
                   str(tokenizer_dir("llama3")), "--replay", "--out", str(repo)], cwd=tmp_path, timeout=300,
                  check=True)
    wheel = find_pytriton()
    stub = wheel.python_backend.parent.parent / "python_backend_stubs" / "3.12" / "triton_python_backend_stub"
    assert stub.is_file(), f"nvidia-pytriton 0.7.0 has no Python 3.12 stub at {stub}"
    dist = TritonDistribution(wheel.binary, wheel.lib_dirs, wheel.python_backend, stub, wheel.cache_dir)
    backend_dir = stage_backend_dir(dist, tmp_path / "backends")
    opts = ServerOptions(model_repository=repo, extra_args=("--exit-timeout-secs=2",))
    opts.resolve_ports()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*map(str, wheel.lib_dirs), image_env.libdir()])
    env["PATH"] = os.pathsep.join([str(image_env.bin), env.get("PATH", "")])
    server = TritonServer(cpu_command(dist, backend_dir, opts), env, http_url=f"http://127.0.0.1:{opts.http_port}",
                          grpc_url=f"127.0.0.1:{opts.grpc_port}",
                          metrics_url=f"http://127.0.0.1:{opts.metrics_port}/metrics",
                          shm_prefixes=(opts.shm_prefix,), log_path=tmp_path / "triton.log", stop_grace=10)
    server.start(timeout=300)
    try:
        stubs = _stub_pythons(opts.shm_prefix)
        assert stubs and all("libpython3.12" in s and "libpython3.11" not in s for s in stubs), stubs
        client = ("import json, sys\n"
                  "from koserve.server.triton_calls import grpc_stream, text_inputs\n"
                  "out = {}\n"
                  "for model in ('ensemble', 'tensorrt_llm_bls'):\n"
                  "    r = grpc_stream(sys.argv[1], model, text_inputs('안녕하세요', 24, stream=True),\n"
                  "                    request_id='image-' + model, timeout=120)\n"
                  "    out[model] = {'error': r.error, 'pieces': r.pieces}\n"
                  "print(json.dumps(out))\n")
        proc = image_env.run([str(image_env.python), "-c", client, server.grpc_url], cwd=tmp_path, timeout=300,
                             check=True)
    finally:
        server.stop()
    answers = json.loads(proc.stdout.strip().splitlines()[-1])
    for model, answer in answers.items():
        assert answer["error"] is None, f"{model}: {answer['error']}"
        text = "".join(answer["pieces"])
        assert len(answer["pieces"]) > 1 and "\ufffd" not in text and any("\uac00" <= c <= "\ud7a3" for c in text), \
            (model, answer["pieces"])
    assert "".join(answers["ensemble"]["pieces"]) == "".join(answers["tensorrt_llm_bls"]["pieces"])


_SMOKE_DRIVER = r'''
import contextlib, json, sys
from pathlib import Path
from koserve.smoke.run import Endpoints, SmokeOptions, run_smoke

args = json.loads(sys.argv[1])

@contextlib.contextmanager
def served_elsewhere(repo, opts):
    assert 'backend: "tensorrtllm"' in (repo / "tensorrt_llm" / "config.pbtxt").read_text()
    yield Endpoints(**args["endpoints"])

report = run_smoke(SmokeOptions(workdir=Path(args["workdir"]), checkpoint=Path(args["checkpoint"]),
                                examples_dir=args["examples"], python=sys.executable, loadtest_seconds=5,
                                loadtest_prompts="short", request_timeout=60, echo=lambda line: None),
                   server=served_elsewhere)
print(report.table())
sys.exit(0 if report.ok else 1)
'''


@pytest.mark.timeout(900)
def test_gpu_smoke_orchestration_in_the_stand_in(image_env, fake_toolchain, triton_akallama, tmp_path):
    """gpu-smoke from the stand-in's Python 3.12 (tritonclient 2.68, grpcio 1.71): GPU check, checkpoint, build
    (fake toolchain run by the 3.12 interpreter), render, then the checks and the load step as real client calls
    against the CPU stack (a GPU repository needs the C++ backend)."""
    ckpt = tmp_path / "tiny-llama3-gpu"
    ckpt.mkdir()
    config = {"architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "num_key_value_heads": 2,
              "max_position_embeddings": 8192, "rope_theta": 500000.0, "hidden_size": 256,
              "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4}
    (ckpt / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tokenizer_dir("llama3") / name, ckpt / name)
    args = {"workdir": str(tmp_path / "smoke"), "checkpoint": str(ckpt), "examples": str(fake_toolchain.examples),
            "endpoints": {"grpc_url": triton_akallama.grpc_url, "http_url": triton_akallama.http_url,
                          "metrics_url": triton_akallama.metrics_url, "max_seq_len": triton_akallama.max_seq_len}}
    # fake_toolchain put the fake tools on PATH and the fake tensorrt_llm on PYTHONPATH: keep both.
    env = {"PATH": os.pathsep.join([str(image_env.bin), os.environ["PATH"]]), "PYTHONPATH": str(fake_toolchain.site)}
    proc = image_env.run([str(image_env.python), "-c", _SMOKE_DRIVER, json.dumps(args)], cwd=tmp_path, timeout=800,
                         env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "FAIL" not in proc.stdout and "passed" in proc.stdout
    assert [c["tool"] for c in fake_toolchain.calls()] == ["convert_checkpoint.py", "trtllm-build"]
