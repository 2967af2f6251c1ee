"""scripts/bench_stub_cpu.py runs as its own process (as bench_serving.py --cpu-per-token starts it) and writes the
figures it prints: one per path and stream count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_stub_cpu.py"


def test_bench_stub_cpu_writes_one_figure_per_path_and_streams(tmp_path):
    out = tmp_path / "figures.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--streams", "2", "3", "--tokens", "20", "--rounds", "1",
                          "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert [(f["path"], f["streams"]) for f in figures] == [
        ("postprocessing", 2), ("tensorrt_llm_bls", 2), ("postprocessing", 3), ("tensorrt_llm_bls", 3)]
    assert all(f["us_per_token"] > 0 and f["rounds"] == 1 for f in figures)
    # one token per response unless the BLS's outbox merged some (it does when sending takes a large share of time)
    assert all(f["tokens_per_response"] >= 1.0 for f in figures)
    assert [f["tokens_per_response"] for f in figures if f["path"] == "postprocessing"] == [1.0, 1.0]
    for f in figures:
        assert f"| {f['path']} | {f['streams']} | {f['us_per_token']:.1f}" in run.stdout
