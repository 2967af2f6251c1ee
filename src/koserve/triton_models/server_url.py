"""Where the BLS finds its own tritonserver's gRPC endpoint: the render option, the environment, or the command
line of the stub's parent process (the server)."""

from __future__ import annotations

import os
import re


def grpc_url_from_cmdline(argv: list[str]) -> str | None:
    """``host:port`` of the gRPC endpoint a tritonserver command line sets up (None: gRPC off or not found)."""
    host, port, allowed = "127.0.0.1", "8001", True
    args = iter(argv)
    for arg in args:
        if "=" in arg:
            key, value = arg.split("=", 1)
        else:
            key, value = arg, None
            if key in ("--grpc-port", "--grpc-address", "--allow-grpc"):
                value = next(args, None)
        if value is None:
            continue
        if key == "--grpc-port":
            port = value
        elif key == "--grpc-address":
            host = value
        elif key == "--allow-grpc":
            allowed = value.lower() not in ("false", "0", "no")
    if not allowed or not re.fullmatch(r"\d+", port):
        return None
    if host in ("0.0.0.0", "", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def own_grpc_url(explicit: str = "") -> str | None:
    """The gRPC endpoint of the tritonserver this stub belongs to: ``explicit`` (the ``engine_grpc_url`` parameter),
    else ``KOSERVE_BLS_GRPC_URL``, else read from the parent process's command line."""
    if explicit:
        return explicit
    env = os.environ.get("KOSERVE_BLS_GRPC_URL", "")
    if env:
        return env
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if not argv or "tritonserver" not in os.path.basename(argv[0]):
        return None
    return grpc_url_from_cmdline(argv[1:])
