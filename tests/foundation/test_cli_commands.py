"""First-run commands as a user types them (the real `koserve` in a subprocess): the listing commands, refusals
that come before any work, and `koserve serve`'s note about Triton's GPU messages on CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

KOSERVE = [sys.executable, "-m", "koserve"]


def run(args: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", **kw.pop("env", {})}
    return subprocess.run(KOSERVE + args, capture_output=True, text=True, timeout=timeout, env=env, **kw)


def test_profiles_lists_what_profile_takes():
    from koserve.profiles.loader import builtin_profile_names

    out = run(["profiles"])
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert names == builtin_profile_names() == ["akallama-70b", "komt-13b"]
    assert "mirlab/AkaLlama-llama3-70b-v0.1" in out.stdout and "komt" in out.stdout


def test_build_list_names_every_shipped_recipe():
    from koserve.engines.recipe import builtin_recipe_names

    out = run(["build", "list"])
    assert out.returncode == 0, out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines()] == builtin_recipe_names()


def test_demo_refuses_an_unknown_profile_before_printing_anything():
    out = run(["demo", "--profile", "foo"])
    assert out.returncode == 2
    assert out.stdout == ""  # no note, no "starting Triton for foo"
    assert out.stderr.strip() == ("koserve: error: the demo serves built-in profiles only; unknown: foo "
                                  "(known: akallama-70b, komt-13b; see `koserve profiles`)")


def test_gpu_smoke_checks_for_a_gpu_before_building_anything(tmp_path):
    """No nvidia-smi on this machine: the run stops at the GPU row; no checkpoint is built or looked for."""
    env = {"PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                   if not (Path(p) / "nvidia-smi").exists())}
    out = run(["gpu-smoke", "--workdir", str(tmp_path / "smoke")], env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith(("GPU ", "checkpoint", "build"))]
    assert len(rows) == 1 and rows[0].startswith("GPU") and "FAIL" in rows[0] and "no GPU" in rows[0], out.stdout
    assert "0/1 passed, 1 FAILED" in out.stdout
    assert not any((tmp_path / "smoke").iterdir())  # nothing built


@pytest.mark.server
@pytest.mark.timeout(300)
def test_serve_on_cpu_says_once_that_tritons_gpu_lines_are_harmless(tmp_path):
    from koserve.testing.faults import render_replay_repo

    repo = render_replay_repo(tmp_path / "repo")
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(KOSERVE + ["serve", "--repo", str(repo), "--health-port", "0"], stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "Triton is ready" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.5)
        text = log.read_text()
        assert "Triton is ready" in text, text[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    note = "koserve: CPU mode: tritonserver's lines about CUDA drivers, NVML/DCGM and pinned memory"
    assert text.count(note) == 1
    assert text.index(note) < text.index("Triton is ready")
    quiet = run(["serve", "--repo", str(repo), "--print-command"])
    assert quiet.returncode == 0 and note not in quiet.stderr  # only when the server really starts
