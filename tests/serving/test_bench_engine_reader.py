"""scripts/bench_engine_reader.py reads real engine streams from a real tritonserver with every reader it compares
(koserve's h2 reader, grpc.aio, threaded grpc) and prints one figure per reader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_engine_reader.py"
pytestmark = pytest.mark.server


def test_every_reader_gets_every_token():
    run = subprocess.run([sys.executable, str(SCRIPT), "--streams", "3", "--tokens", "70", "--rounds", "1"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr  # it exits non-zero when a reader misses a token
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and not line.startswith("| reader")]
    assert [row.split("|")[1].strip() for row in rows] == ["h2", "grpc-aio", "grpc"]
    assert all(float(row.split("|")[2].split()[0]) > 0 for row in rows)
