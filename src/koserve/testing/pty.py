"""Reading what a program under test wrote to a pseudo-terminal (the `koserve chat` REPL tests)."""

from __future__ import annotations

import os
import select
import time


def read_until(fd: int, needle: bytes | None, timeout: float) -> bytes:
    """The bytes read from pty master ``fd`` until they hold ``needle`` (None: until the end), the program closes its
    side, or ``timeout`` seconds pass."""
    buf = b""
    deadline = time.monotonic() + timeout
    while (needle is None or needle not in buf) and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the program closed its side (EIO on Linux)
                break
            if not chunk:
                break
            buf += chunk
    return buf
