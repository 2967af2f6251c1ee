"""How many streamed responses Triton's HTTP frontend can queue per thread before it silently drops one.

Triton's HTTP frontend (2.51 up to at least 2.64 / 25.12) hands every response of a ``generate_stream`` request to
the connection's libevhtp thread with ``evthr_defer``: a 17-byte command sent over a non-blocking Unix socketpair.
When that socket's send buffer is full the send fails and Triton ignores the failure, so the response's write (or the
stream's start or end) never happens: the client sees a stream that closes without its last text, or one that never
starts or never ends. New connections go to the first thread with an empty queue, so at load most streams share one
thread. The buffer is the host's ``net.core.wmem_default`` (212992 bytes: 278 commands on this project's Linux 6.18
VMs, measured), and the ensemble queues one command per token per stream. docs/serving.md has the measurements.
"""

from __future__ import annotations

import socket
from pathlib import Path

from koserve.server.tritonserver import tritonserver_arg

EVHTP_COMMAND_BYTES = 17  # libevhtp's packed evthr_cmd: a stop byte, an argument and a callback pointer
WMEM_DEFAULT = Path("/proc/sys/net/core/wmem_default")
# koserve serve warns below this room: 64 ensemble streams on a busy 2-core host overflowed the default 278 and, with
# room for 5400, peaked at 235 (ten clean runs); 2048 keeps a wide margin over that peak.
MIN_SAFE_CAPACITY = 2048
RECOMMENDED_WMEM_DEFAULT = 4194304


def http_response_queue_capacity(sndbuf: int | None = None, limit: int = 100_000) -> int:
    """Commands a non-blocking Unix stream socketpair holds before ``send`` fails, as libevhtp's thread queue does.

    ``sndbuf`` sets the socket's send buffer (the kernel doubles it); None keeps the host default, which is what
    tritonserver's sockets get. Counting is bounded by ``limit``.
    """
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if sndbuf is not None:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        a.setblocking(False)
        command = b"\0" * EVHTP_COMMAND_BYTES
        for count in range(limit):
            try:
                if a.send(command) <= 0:
                    return count
            except BlockingIOError:
                return count
        return limit
    finally:
        a.close()
        b.close()


def http_allowed(extra_args: tuple[str, ...] | list[str]) -> bool:
    """False when the tritonserver arguments turn the HTTP endpoint off."""
    value = tritonserver_arg(extra_args, "--allow-http")
    return value is None or value.strip().lower() not in ("false", "0", "no", "off")


def http_stream_warning(extra_args: tuple[str, ...] | list[str] = (), capacity: int | None = None) -> str | None:
    """The warning ``koserve serve`` prints when HTTP streaming can lose responses at load; None when it cannot."""
    if not http_allowed(extra_args):
        return None
    if capacity is None:
        capacity = http_response_queue_capacity()
    if capacity >= MIN_SAFE_CAPACITY:
        return None
    try:
        wmem = WMEM_DEFAULT.read_text().strip()
    except OSError:
        wmem = "unknown"
    return (
        f"warning: Triton's HTTP frontend can queue only {capacity} streamed responses per HTTP thread on this host "
        f"(net.core.wmem_default={wmem}); beyond that it drops responses without an error, so an HTTP "
        f"generate_stream through the ensemble at high concurrency can end without its last text or never end. "
        f"Stream over gRPC, use tensorrt_llm_bls for HTTP streaming, or set net.core.wmem_default="
        f"{RECOMMENDED_WMEM_DEFAULT} on the node (a queue of about 5400). See docs/serving.md, \"Ensemble over HTTP\"."
    )
