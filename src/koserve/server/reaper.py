"""Kill a tritonserver's process group and remove its shm regions when the launcher dies (run as a script).

``TritonServer.start`` spawns ``python reaper.py FD PGID PREFIX...`` in a session of its own, holding the write end
of a pipe whose read end is ``FD``. The launcher writes ``b"done"`` before closing it after a normal stop; when the
launcher dies instead (SIGKILL, OOM kill) the pipe reaches end of file with nothing written, and the reaper SIGKILLs
the group (tritonserver, mpirun ranks and every python stub: they share tritonserver's process group), waits until no
member is left and unlinks ``/dev/shm`` files that start with each prefix (Triton never removes a killed stub's
region). Standard library only, and not imported as part of the package: it must start fast and alone.
"""

from __future__ import annotations

import os
import signal
import sys
import time

SHM_DIR = "/dev/shm"
GONE_TIMEOUT_S = 10.0


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(name))
    return pids


def reap(pgid: int, prefixes: list[str]) -> None:
    """SIGKILL the group, wait (bounded) until it is gone, remove its shm regions."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    for name in os.listdir(SHM_DIR) if os.path.isdir(SHM_DIR) else ():
        if any(name.startswith(p) for p in prefixes):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
            except OSError:
                pass


def main(argv: list[str]) -> int:
    fd, pgid, prefixes = int(argv[0]), int(argv[1]), argv[2:]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # only the pipe decides
        signal.signal(sig, signal.SIG_IGN)
    got = b""
    while True:
        try:
            chunk = os.read(fd, 64)
        except InterruptedError:
            continue
        if not chunk:
            break
        got += chunk
    if b"done" not in got:
        reap(pgid, prefixes)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
