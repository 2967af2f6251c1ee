"""scripts/build_engines.sh installs TensorRT-LLM's quantization requirements into its interpreter's environment: in a
virtual environment (the image's python3 is /opt/venv-tritonserver) without `--user`, which pip refuses there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quantization_requirements_install_into_a_venv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    examples = tmp_path / "examples"
    (examples / "quantization").mkdir(parents=True)
    (examples / "quantization" / "quantize.py").write_text("")
    (examples / "quantization" / "requirements.txt").write_text("# nothing to install\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "KOSERVE_PYTHON": str(venv / "bin" / "python"), "RECIPE": "komt-13b-fp8-h100-tp1",
           "TRTLLM_EXAMPLES": str(examples), "OUTPUT_DIR": str(tmp_path / "engines")}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_engines.sh")], env=env, capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert "installing" in out and "modelopt/datasets missing" in out  # the install ran (the venv has no modelopt)
    assert "--user" not in out, out
    # past the install: the planner ran (the build then stops: the recipe's checkpoint is a Hub id, no GPU here)
    assert "build_engines.sh: recipe komt-13b-fp8-h100-tp1" in proc.stdout and "verdict: buildable" in proc.stdout
