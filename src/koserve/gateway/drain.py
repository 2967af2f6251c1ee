"""The gateway's drain on SIGTERM: unready, refuse new API requests with 503 + ``Retry-After``, let the streams in
flight finish (up to a grace), then let uvicorn exit.

uvicorn's own SIGTERM handling closes the listening socket and waits ``timeout_graceful_shutdown`` for open
connections: new callers get a refused connection rather than a retryable answer, and a long stream is cut when the
timeout runs out. :class:`DrainingServer` runs the drain first and hands over to uvicorn's shutdown when nothing is
in flight. A second SIGTERM/Ctrl-C exits at once (uvicorn's behaviour).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("koserve.gateway")

RETRY_AFTER_S = 1
DRAIN_POLL_S = 0.1
DRAINING_MESSAGE = "the gateway is draining (shutting down): it accepts no new requests; retry (another replica)"


@dataclass
class DrainState:
    """Whether the gateway drains and how many API requests (``/v1/*``, streams until their last byte) run."""

    draining: bool = False
    in_flight: int = 0
    retry_after_s: int = RETRY_AFTER_S


class DrainMiddleware:
    """ASGI middleware: counts ``/v1`` requests in flight; while draining answers new ones 503 + ``Retry-After``."""

    def __init__(self, app: Callable, *, state: DrainState):
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            await self.app(scope, receive, send)
            return
        if self.state.draining:
            body = json.dumps({"error": {"message": DRAINING_MESSAGE, "type": "server_error", "param": None,
                                         "code": "draining"}}).encode()
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(self.state.retry_after_s).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        self.state.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.in_flight -= 1


def wait_drained(state: DrainState, grace_s: float, *, clock=time.monotonic, sleep=time.sleep) -> float:
    """Block until no API request is in flight or ``grace_s`` passed; returns the seconds waited."""
    start = clock()
    while state.in_flight > 0 and clock() - start < grace_s:
        sleep(DRAIN_POLL_S)
    return clock() - start


def run_gateway(app, *, host: str, port: int, log_level: str, grace_s: float, sockets: list | None = None) -> None:
    """``uvicorn.run`` with the drain on the first SIGTERM/SIGINT (``app.state.drain`` is the :class:`DrainState`);
    ``sockets``: an already bound listening socket to serve on (the workers of :mod:`koserve.gateway.workers`)."""
    import uvicorn  # noqa: PLC0415

    state: DrainState = app.state.drain

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if state.draining:  # second signal: uvicorn's own (exit now)
                super().handle_exit(sig, frame)
                return
            state.draining = True
            log.warning("draining: /health answers 503, new requests 503 + Retry-After; waiting up to %.0f s for "
                        "%d request(s) in flight", grace_s, state.in_flight)

            def finish() -> None:
                waited = wait_drained(state, grace_s)
                log.warning("drained in %.1f s (%d request(s) still in flight); exiting", waited, state.in_flight)
                self.should_exit = True

            threading.Thread(target=finish, name="koserve-gateway-drain", daemon=True).start()

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    DrainingServer(config).run(sockets=sockets)
