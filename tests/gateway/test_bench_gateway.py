"""scripts/bench_gateway.py runs briefly (4 streams x 10 tokens, 1 and 2 workers) and prints every figure and goal
line, every stream complete and one text across all targets (the benchmark itself is not a test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_gateway.py"


def test_bench_gateway_runs_and_prints_the_goals(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--streams", "4", "--tokens", "10", "--repeat", "1",
                          "--workers", "1", "2", "--json", str(tmp_path / "rows.json")],
                         capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    for line in ("| gateway → engine | 1 |", "| gateway → ensemble | 2 |", "| gateway → tensorrt_llm_bls | 2 |",
                 "goal: server CPU per token on the direct path", "goal: gateway CPU per token",
                 "goal: tokens/s through the gateway direct / on the ensemble", "goal: capacity with 2 workers",
                 "every stream complete: True; one text across all targets and runs: True"):
        assert line in text, (line, text[-3000:])
    assert (tmp_path / "rows.json").exists()
