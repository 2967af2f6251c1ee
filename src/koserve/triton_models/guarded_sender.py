"""A decoupled model's response sender that is never asked ``is_cancelled()`` once its final response is sent.

Triton's python backend (2.51; the newest python_backend source does the same) answers ``is_cancelled()`` in the
server with ``TRITONBACKEND_ResponseFactoryIsCancelled`` on the request's response factory, which the server frees
when the final response is sent; the stub does not check for that. A check on one thread racing the final send on
another made tritonserver die with SIGSEGV in ``TRITONBACKEND_ResponseFactoryIsCancelled`` (the BLS at 64 HTTP
streams). Sends and checks of one request are serialized here, and a check after the final send answers False
without asking.
"""

from __future__ import annotations

import threading
from typing import Any


class GuardedSender:
    """Wraps ``request.get_response_sender()``: ``send`` and ``is_cancelled`` with the same meaning, made safe to call
    from different threads."""

    __slots__ = ("_sender", "_final_flag", "_lock", "closed")

    def __init__(self, sender: Any, final_flag: int):
        self._sender = sender
        self._final_flag = final_flag
        self._lock = threading.Lock()
        self.closed = False  # the final response was sent (or its send was tried): the server may have freed it

    def send(self, response: Any = None, flags: int = 0) -> None:
        with self._lock:
            if flags & self._final_flag:
                self.closed = True  # even if the send raises, the factory may already be gone
            if response is None:
                self._sender.send(flags=flags)
            else:
                self._sender.send(response, flags=flags)

    def is_cancelled(self) -> bool:
        """The client went away (False once the final response was sent: the stream is over)."""
        with self._lock:
            if self.closed:
                return False
            return bool(self._sender.is_cancelled())
