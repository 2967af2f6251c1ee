"""Nothing in the tree names a Triton + TensorRT-LLM container that ships another TensorRT-LLM than 1.2.1.

NVIDIA's tag -> TensorRT-LLM facts are in koserve.engines.versions (tensorrtllm_backend release branches'
dockerfile/Dockerfile.triton.trt_llm_backend; docs/build.md). Files that pick an image must pick the pinned one.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from koserve.engines.versions import (
    TAGS_SHIPPING_TRTLLM_1_2_1,
    TRITON_TRTLLM_IMAGE,
    TRITON_TRTLLM_TAG,
    TRTLLM_IMAGE_TAG_RE,
)

REPO = Path(__file__).resolve().parents[2]
# Where the project chooses its image: these must all name the pinned tag.
PINNING = ("deploy/", "src/", "recipes/", "scripts/", "model_repository/", "docs/build.md", "docs/deploy.md",
           "DEVELOPERS.md")


def _tree_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [REPO / line for line in out.splitlines() if line and (REPO / line).is_file()]


def _mentions() -> list[tuple[str, int, str]]:
    found = []
    for path in _tree_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            for match in TRTLLM_IMAGE_TAG_RE.finditer(line):
                found.append((path.relative_to(REPO).as_posix(), lineno, match.group(1)))
    return found


def test_pin_is_a_1_2_1_image():
    assert TRITON_TRTLLM_TAG in TAGS_SHIPPING_TRTLLM_1_2_1
    assert TRITON_TRTLLM_IMAGE == f"nvcr.io/nvidia/tritonserver:{TRITON_TRTLLM_TAG}-trtllm-python-py3"


def test_no_file_names_a_container_with_another_trtllm():
    mentions = _mentions()
    assert any(path == "deploy/docker/Dockerfile" for path, _, _ in mentions)  # the scan sees the tree
    wrong = [f"{p}:{n}: {tag}" for p, n, tag in mentions if tag not in TAGS_SHIPPING_TRTLLM_1_2_1]
    assert not wrong, "containers that do not ship TensorRT-LLM 1.2.1:\n" + "\n".join(wrong)


def test_the_project_picks_one_image():
    off_pin = [f"{p}:{n}: {tag}" for p, n, tag in _mentions()
               if p.startswith(PINNING) and tag != TRITON_TRTLLM_TAG]
    assert not off_pin, f"pinned image is {TRITON_TRTLLM_IMAGE}; these name another:\n" + "\n".join(off_pin)


def test_dockerfile_and_chart_use_the_pin():
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile").read_text(encoding="utf-8")
    assert f"ARG BASE_IMAGE={TRITON_TRTLLM_IMAGE}" in dockerfile
    values = (REPO / "deploy" / "helm" / "koserve" / "values.yaml").read_text(encoding="utf-8")
    assert f'-{TRITON_TRTLLM_TAG}-trtllm"' in values
    chart = (REPO / "deploy" / "helm" / "koserve" / "Chart.yaml").read_text(encoding="utf-8")
    assert TRITON_TRTLLM_IMAGE in chart


# -- the image's Python dependencies (docs/build.md, "Dependencies of the production image") ---------------------------

# Requires-Dist of tensorrt_llm 1.2.1 (PKG-INFO of its PyPI sdist, cited in the constraints file) that koserve's
# server extra meets.
TRTLLM_121_PINS = ("numpy<2", "transformers==4.57.3", "protobuf>=6.33.5", "pydantic>=2.9.1", "torch<=2.10.0a0,>=2.9.1",
                   "nvidia-modelopt~=0.37.0", "xgrammar==0.1.32", "fastapi<=0.121.3,>=0.120.1", "datasets==3.1.0",
                   "etcd-sdk-python==0.0.7", "urllib3>=2.6.3", "setuptools<80")
CONSTRAINTS = REPO / "deploy" / "docker" / "constraints-trtllm-1.2.1.txt"


def _requirements(path: Path) -> dict[str, Requirement]:
    lines = [line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    reqs = [Requirement(line) for line in lines if line]
    return {r.name.lower(): r for r in reqs}


def test_constraints_hold_tensorrt_llm_1_2_1_pins_and_the_tested_tritonclient():
    constraints = _requirements(CONSTRAINTS)
    for pin in map(Requirement, TRTLLM_121_PINS):
        assert str(constraints[pin.name.lower()].specifier) == str(pin.specifier), pin
    assert str(constraints["tritonclient"].specifier) == "==2.68.0"
    assert "075920be0b8f92ce616d04aa7f04d960f4998a8d5b2b9050703791ca38e95499" in CONSTRAINTS.read_text()
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    server = [Requirement(r) for r in extras["server"] + extras["client"]]
    tritonclient = next(r for r in server if r.name == "tritonclient")
    assert "2.68.0" in tritonclient.specifier and tritonclient.extras == {"http"}  # no grpc extra: its grpcio cap
    grpcio = next(r for r in server if r.name == "grpcio")
    assert "1.67.1" in grpcio.specifier and "1.67.0" not in grpcio.specifier  # 2.68's GRPC_GENERATED_VERSION
    names = {r.name for r in server}
    assert not names & {"nvidia-pytriton", "torch", "transformers", "locust"}, names


def _dockerfile_runs() -> list[str]:
    text = (REPO / "deploy" / "docker" / "Dockerfile").read_text(encoding="utf-8")
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line[4:] for line in joined.splitlines() if line.startswith("RUN ")]


def test_dockerfile_checks_the_image_python_before_and_after_installing():
    text = (REPO / "deploy" / "docker" / "Dockerfile").read_text(encoding="utf-8")
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "PIP_BREAK_SYSTEM_PACKAGES" not in code and "pip install -e" not in code
    spec = importlib.util.spec_from_file_location("image_pins", REPO / "deploy" / "docker" / "image_pins.py")
    image_pins = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(image_pins)
    parser = image_pins.build_parser()
    calls = []
    for run in _dockerfile_runs():
        for command in run.split(" && "):
            argv = shlex.split(command)
            if argv[:2] == ["python3", "deploy/docker/image_pins.py"]:
                calls.append(("pins", parser.parse_args(argv[2:])))
            elif argv[:4] == ["python3", "-m", "pip", "install"]:
                calls.append(("install", argv))
    assert [kind for kind, _ in calls] == ["pins", "install", "pins"]
    before, install, after = (c for _, c in calls)
    assert before.command == "before" and before.imports == ["tensorrt_llm"] and before.roots == ["tensorrt_llm"]
    assert after.command == "after" and after.state == before.state
    constraints = [install[i + 1] for i, a in enumerate(install) if a == "-c"]
    assert constraints == ["deploy/docker/constraints-trtllm-1.2.1.txt", before.constraints]
    assert install[-1].endswith("[server]") and "-e" not in install
