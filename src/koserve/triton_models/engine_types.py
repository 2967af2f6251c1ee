"""What the ``tensorrt_llm_bls`` model and its engine transport exchange: requests go in through
:class:`EngineTransport`, every engine response comes back to the request's :class:`EngineHandler` as an
:class:`EngineChunk`, a failure as a message with a Triton error code (``INVALID_ARG``, ``UNAVAILABLE``, …)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from koserve.errors import KoserveError


class EngineError(KoserveError):
    """The engine could not take a request; ``code`` is the Triton error code the client gets."""

    def __init__(self, message: str, code: str = "UNAVAILABLE"):
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class EngineChunk:
    """One engine response: its new token ids (+ log probs), and whether it was the engine's last."""

    ids: np.ndarray
    log_probs: np.ndarray | None = None
    cum_log_prob: np.ndarray | None = None
    final: bool = False


class EngineHandler(Protocol):
    """One request's receiver; called from the transport's reader thread."""

    def on_chunk(self, chunk: EngineChunk) -> None: ...

    def on_error(self, message: str, code: str) -> None: ...


ReaderHook = Callable[[bool], "float | None"]
"""What the transport's reader thread runs besides routing responses: called with False after each engine response
and with True whenever the reader is about to wait for the socket; returns the ``time.monotonic()`` time at which it
wants to be called again even if nothing arrives (None: not before the next response). It may pause the reader."""


class EngineTransport(Protocol):
    """How the BLS reaches the engine model of its own server."""

    def submit(self, request_id: str, tensors: dict[str, np.ndarray], outputs: list[str],
               handler: EngineHandler) -> None:
        """Send a request (``request_id`` not in flight); raises :class:`EngineError` when it cannot."""

    def stop(self, request_id: str) -> None:
        """Ask the engine to stop a request in flight (TensorRT-LLM's ``stop``); never raises."""

    def in_flight(self, request_id: str) -> bool: ...

    def close(self) -> None: ...
