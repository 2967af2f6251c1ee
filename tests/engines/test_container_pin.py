"""Nothing in the tree names a Triton + TensorRT-LLM container that ships another TensorRT-LLM than 1.2.1.

NVIDIA's tag -> TensorRT-LLM facts are in koserve.engines.versions (tensorrtllm_backend release branches'
dockerfile/Dockerfile.triton.trt_llm_backend; docs/build.md). Files that pick an image must pick the pinned one.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from koserve.engines.versions import (
    TAGS_SHIPPING_TRTLLM_1_2_1,
    TRITON_TRTLLM_IMAGE,
    TRITON_TRTLLM_TAG,
    TRTLLM_IMAGE_TAG_RE,
)

REPO = Path(__file__).resolve().parents[2]
# Where the project chooses its image: these must all name the pinned tag.
PINNING = ("deploy/", "src/", "build/", "scripts/", "model_repository/", "docs/build.md", "docs/deploy.md",
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
