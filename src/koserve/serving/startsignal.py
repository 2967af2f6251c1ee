"""``preprocessing`` → ``postprocessing``: "a request with this id starts now".

The ensemble's ``postprocessing`` keeps one text stream per request id, but Triton shows it neither a request's start
nor its end, and a step after the decoupled engine may only take tensors that come from the engine (so
``preprocessing`` cannot pass it a marker through the ensemble). A client that reuses an id for its next request
would continue the previous request's stream (e.g. one that already matched a stop word: an empty reply). So
``preprocessing`` — which runs before the engine produces anything for the request — sends the request id as a Unix
datagram to ``postprocessing`` (abstract socket named after the tritonserver process both stubs are children of),
and ``postprocessing`` resets that id's stream before it handles its next response.

Ordering is exact: ``sendto`` puts the datagram in the receiver's queue before ``preprocessing`` returns, hence
before the engine's first response for the request can reach ``postprocessing``; the receiver moves datagrams from
the socket into a set under the same lock the postprocessing step takes to read it, so a marker is always either
in the socket or in the set. Best effort only if the receiver is gone (then nothing is reset; ids must be unique).
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time

MAX_ID_BYTES = 4096


def channel_name(server_pid: int | None = None) -> bytes:
    """Abstract-namespace socket address shared by the python stubs of one tritonserver process."""
    return b"\0koserve-request-start-" + str(os.getppid() if server_pid is None else server_pid).encode()


class StartSender:
    """Used by ``preprocessing``: :meth:`started` (request id) never raises and never blocks for long."""

    def __init__(self, name: bytes | None = None, *, timeout_s: float = 1.0):
        self.name = channel_name() if name is None else name
        self.timeout_s = timeout_s
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._lock = threading.Lock()

    def started(self, request_id: str) -> bool:
        if not request_id:
            return False
        data = request_id.encode("utf-8", "surrogatepass")[:MAX_ID_BYTES]
        deadline = time.monotonic() + self.timeout_s
        with self._lock:
            while True:
                try:
                    self._sock.sendto(data, self.name)
                    return True
                except BlockingIOError:  # the receiver's queue is full: it drains continuously
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(0.0005)
                except OSError:  # no receiver (no postprocessing on this server)
                    return False

    def close(self) -> None:
        self._sock.close()


class StartReceiver:
    """Used by ``postprocessing``: :meth:`take` returns the ids whose requests started since the last call."""

    def __init__(self, name: bytes | None = None):
        self.name = channel_name() if name is None else name
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.bind(self.name)
        self._sock.setblocking(False)
        self._lock = threading.Lock()
        self._started: list[str] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="koserve-start-receiver", daemon=True)
        self._thread.start()

    def _drain(self) -> None:  # caller holds the lock
        for _ in range(100_000):
            try:
                data = self._sock.recv(MAX_ID_BYTES)
            except (BlockingIOError, OSError):
                return
            self._started.append(data.decode("utf-8", "surrogatepass"))

    def _run(self) -> None:
        while not self._closed:
            try:
                readable, _, _ = select.select([self._sock], [], [], 0.5)
            except (OSError, ValueError):
                return
            if readable:
                with self._lock:
                    self._drain()

    def take(self) -> list[str]:
        with self._lock:
            self._drain()
            started, self._started = self._started, []
        return started

    def close(self) -> None:
        self._closed = True
        self._sock.close()
