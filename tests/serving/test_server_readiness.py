"""A tritonserver that never gets ready (a python stub that hangs in ``initialize``) is killed at the readiness timeout,
with its stubs and shared-memory regions."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from koserve.cpu_engine.pytriton_server import ServerOptions, cpu_triton_server
from koserve.server.tritonserver import TritonStartError, leaked_shm_regions


def test_server_that_never_gets_ready_is_killed_and_cleaned(tmp_path):
    model = tmp_path / "repo" / "hang"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 0\n'
        'input [{name: "x" data_type: TYPE_INT32 dims: [1]}]\noutput [{name: "y" data_type: TYPE_INT32 dims: [1]}]\n')
    (model / "1" / "model.py").write_text(
        "import time\nclass TritonPythonModel:\n    def initialize(self, args):\n        time.sleep(3600)\n")
    opts = ServerOptions(tmp_path / "repo")
    server = cpu_triton_server(opts)
    with pytest.raises(TritonStartError, match="not ready after 8 s"):
        server.start(timeout=8)
    assert not server.is_alive()
    assert leaked_shm_regions(opts.shm_prefix) == []
    deadline = time.monotonic() + 5  # its python stubs are gone too (a killed stub can take a moment to exit)
    while _live_processes_with(opts.shm_prefix) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _live_processes_with(opts.shm_prefix) == []


def _live_processes_with(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids
