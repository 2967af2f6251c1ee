"""The reaper: when ``koserve serve`` vanishes (SIGKILL), it kills the server's process group and removes its
shared-memory regions; after a normal stop it leaves everything alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from koserve.server.tritonserver import SHM_DIR
from koserve.testing.faults import wait_until


REAPER = Path(__file__).resolve().parents[2] / "src" / "koserve" / "server" / "reaper.py"


def _group_with_shm(tag: str) -> tuple[subprocess.Popen, Path]:
    prefix = f"triton_python_backend_shm_region_kstest{uuid.uuid4().hex[:8]}{tag}_"
    region = SHM_DIR / f"{prefix}region"
    region.write_bytes(b"\0" * 16)
    group = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"],
                             start_new_session=True)
    return group, region


def _start_reaper(group: subprocess.Popen, prefix: str) -> tuple[subprocess.Popen, int]:
    r, w = os.pipe()
    reaper = subprocess.Popen([sys.executable, "-S", str(REAPER), str(r), str(group.pid), prefix], pass_fds=(r,),
                              start_new_session=True)
    os.close(r)
    return reaper, w


@pytest.mark.timeout(60)
@pytest.mark.skipif(not SHM_DIR.is_dir(), reason="needs /dev/shm")
def test_reaper_kills_the_group_and_removes_shm_when_the_launcher_vanishes():
    group, region = _group_with_shm("a")
    prefix = region.name[: -len("region")]
    reaper, w = _start_reaper(group, prefix)
    time.sleep(0.5)  # the group's child has started
    members = [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == group.pid]
    assert len(members) >= 2
    os.close(w)  # as when the launcher is SIGKILLed: end of file, no "done"
    assert reaper.wait(timeout=20) == 0
    assert group.wait(timeout=5) is not None
    assert wait_until(lambda: all(_pgid(p) != group.pid for p in members), 10)
    assert not region.exists()


@pytest.mark.timeout(60)
@pytest.mark.skipif(not SHM_DIR.is_dir(), reason="needs /dev/shm")
def test_reaper_leaves_everything_alone_after_a_normal_stop():
    group, region = _group_with_shm("b")
    try:
        reaper, w = _start_reaper(group, region.name[: -len("region")])
        os.write(w, b"done")
        os.close(w)
        assert reaper.wait(timeout=20) == 0
        assert group.poll() is None and region.exists()
    finally:
        os.killpg(group.pid, 9)
        group.wait()
        region.unlink(missing_ok=True)


def _pgid(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[2]) if fields[0] != "Z" else None
