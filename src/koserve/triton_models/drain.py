"""Refuse new requests while ``koserve serve`` drains (SIGTERM): the stub side of the drain.

``koserve serve`` gives tritonserver (and so every python stub) the environment variable ``KOSERVE_DRAIN_FILE``
and creates that file when it starts to drain. The models where a request enters (``preprocessing`` for the
ensemble, ``tensorrt_llm_bls``, the CPU engine stand-in) then answer each new request with an ``UNAVAILABLE``
error saying so, while the requests already in flight run to their end: Triton's own SIGTERM handling cannot do
that for an ensemble (it stops every model's scheduler at once, so the next step of every in-flight ensemble stream
is refused: docs/reliability.md, "Drain"). One ``stat`` per call; no file, no env: never draining.
"""

from __future__ import annotations

import os

DRAIN_FILE_ENV = "KOSERVE_DRAIN_FILE"
DRAINING_MESSAGE = (
    "server is draining (shutting down): it accepts no new requests; retry on another replica "
    "(requests already running finish)"
)


class DrainFlag:
    """Whether this server drains: the file named by ``$KOSERVE_DRAIN_FILE`` exists."""

    def __init__(self, path: str | None = None):
        self.path = path if path is not None else os.environ.get(DRAIN_FILE_ENV) or None

    def draining(self) -> bool:
        return self.path is not None and os.path.exists(self.path)


def drain_error(pb):
    """The ``UNAVAILABLE`` error of a refused request (gRPC UNAVAILABLE on unary calls, HTTP 503)."""
    code = getattr(pb.TritonError, "UNAVAILABLE", None)
    return pb.TritonError(DRAINING_MESSAGE) if code is None else pb.TritonError(DRAINING_MESSAGE, code)


def drain_response(pb):
    return pb.InferenceResponse(output_tensors=[], error=drain_error(pb))


def refuse_decoupled(pb, requests) -> None:
    """Answer every request of a decoupled model with the drain error and the FINAL flag."""
    final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    for request in requests:
        request.get_response_sender().send(drain_response(pb), flags=final)
