"""Several Triton addresses for one model: least-in-flight choice, health-based failover, a retry only before the
first token.

For one box with several ``koserve serve`` replicas (on Kubernetes the Gateway API Inference Extension's endpoint
picker routes instead). A replica is taken out of rotation when

- a request to it fails before its first response with a refusal — it is unreachable (gRPC ``UNAVAILABLE``,
  connection refused or lost), draining (``koserve serve`` on SIGTERM: "server is draining") or stopping
  (Triton's own "Server is stopping") — and the request is sent again to another replica: nothing reached the caller
  yet, so the caller sees one answer; or
- its Triton does not answer model-ready within the health period (a background check every ``health_period`` s).

A failed replica returns to rotation when its ready check passes again and its ``cooldown`` since the last refusal
is over (a draining Triton still answers ready: the cooldown keeps it out). Once a stream has sent a token it is
never retried: a replica that dies mid-stream ends that stream with an error.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from koserve.client import AsyncChatClient, ChatResult
from koserve.client._base import backoff_delays
from koserve.client.errors import ServerError, ServerUnavailableError

log = logging.getLogger("koserve.gateway")

DEFAULT_HEALTH_PERIOD_S = 1.0
DEFAULT_COOLDOWN_S = 5.0
# what a replica answers when it refuses a request it never started (retrying elsewhere is safe)
REFUSAL_MARKERS = ("server is draining", "Server is stopping", "server is not ready")


def is_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` (before any response) means "this replica did not take the request"."""
    if isinstance(exc, ServerUnavailableError):
        return True
    if isinstance(exc, ServerError):
        message = exc.server_message or str(exc)
        return any(m in message for m in REFUSAL_MARKERS)
    return False


class NoReplicaError(ServerUnavailableError):
    """Every replica of a model is out of rotation."""


@dataclass
class Replica:
    url: str
    client: AsyncChatClient
    in_flight: int = 0
    healthy: bool = True
    down_until: float = 0.0  # monotonic time before which a refusal keeps it out
    reason: str = ""
    served: int = 0  # requests started on it
    refused: int = 0  # requests it refused (sent again elsewhere)


@dataclass
class ReplicaSet:
    """The replicas of one model; all methods run on the event loop (no locks)."""

    replicas: list[Replica]
    cooldown_s: float = DEFAULT_COOLDOWN_S
    retries: int = 0  # rounds over all replicas after every one was unreachable (backoff between rounds)
    clock: Callable[[], float] = time.monotonic
    _turn: Any = field(default_factory=itertools.count, repr=False)

    def available(self, now: float | None = None) -> list[Replica]:
        now = self.clock() if now is None else now
        return [r for r in self.replicas if r.healthy and now >= r.down_until]

    def acquire(self, exclude: tuple[Replica, ...] = ()) -> Replica:
        """The available replica with the fewest requests in flight (ties in turn); counts the request. When none is
        available the others are tried anyway (a replica may be back before its check says so; failing without
        trying helps nobody)."""
        candidates = [r for r in self.available() if r not in exclude] or \
            [r for r in self.replicas if r not in exclude]
        if not candidates:
            states = "; ".join(f"{r.url}: {r.reason or 'out of rotation'}" for r in self.replicas)
            raise NoReplicaError(f"no replica of this model is available ({states})")
        least = min(r.in_flight for r in candidates)
        tied = [r for r in candidates if r.in_flight == least]
        chosen = tied[next(self._turn) % len(tied)]
        chosen.in_flight += 1
        chosen.served += 1
        return chosen

    @staticmethod
    def release(replica: Replica) -> None:
        replica.in_flight -= 1

    def refused(self, replica: Replica, why: str) -> None:
        replica.refused += 1
        replica.down_until = self.clock() + self.cooldown_s
        replica.reason = why[:300]
        log.warning("replica %s out of rotation for %.0f s: %s", replica.url, self.cooldown_s, why[:300])

    def health(self, replica: Replica, ready: bool) -> None:
        if ready != replica.healthy:
            log.warning("replica %s is %s", replica.url, "ready again" if ready else "not ready")
        replica.healthy = ready
        if not ready:
            replica.reason = "not ready (health check)"
        elif self.clock() >= replica.down_until:
            replica.reason = ""

    async def check(self, model_timeout: float = 1.0) -> None:
        """One health round: every replica's Triton model-ready, concurrently."""
        results = await asyncio.gather(*(r.client.is_ready(timeout=model_timeout) for r in self.replicas),
                                       return_exceptions=True)
        for replica, ready in zip(self.replicas, results):
            self.health(replica, ready is True)

    def stream(self, open_stream: Callable[[AsyncChatClient], Any]) -> "FailoverStream":
        return FailoverStream(self, open_stream)

    async def complete(self, open_stream: Callable[[AsyncChatClient], Any]) -> ChatResult:
        stream = FailoverStream(self, open_stream)
        try:
            async for _ in stream:
                pass
            return stream.result
        finally:
            await stream.aclose()


class FailoverStream:
    """Text deltas like :class:`~koserve.client.aio.AsyncChatStream`, from the first replica that takes the request.

    ``open_stream(client)`` makes the client's stream; it is called again for another replica when one refuses the
    request before its first response (each replica is tried at most once)."""

    def __init__(self, replicas: ReplicaSet, open_stream: Callable[[AsyncChatClient], Any]):
        self._set, self._open = replicas, open_stream
        self._stream: Any = None
        self._replica: Replica | None = None
        self._tried: list[Replica] = []
        self._done = False
        self.attempts = 0
        self._delays = backoff_delays(replicas.retries)

    def __aiter__(self) -> "FailoverStream":
        return self

    def _finish(self) -> None:
        if self._replica is not None:
            self._set.release(self._replica)
            self._replica = None

    async def __anext__(self) -> str:
        if self._done:
            raise StopAsyncIteration
        while True:
            if self._stream is None:
                self._replica = self._set.acquire(tuple(self._tried))
                self._tried.append(self._replica)
                self.attempts += 1
                self._stream = self._open(self._replica.client)
            try:
                return await self._stream.__anext__()
            except StopAsyncIteration:
                self._done = True
                self._finish()
                raise
            except BaseException as exc:
                replica = self._replica
                started = getattr(self._stream, "received_any", True)
                if isinstance(exc, Exception) and not started and is_refusal(exc) and replica is not None:
                    self._set.refused(replica, str(exc))
                    self._finish()
                    await self._stream.aclose()
                    self._stream = None
                    if any(r not in self._tried for r in self._set.replicas):
                        continue  # nothing reached the caller: send it to another replica
                    delay = next(self._delays, None)
                    if delay is not None and isinstance(exc, ServerUnavailableError):
                        await asyncio.sleep(delay)  # every replica refused: the client's backoff, then again
                        replica.down_until = 0.0
                        self._tried.clear()
                        continue
                self._done = True
                self._finish()
                raise

    @property
    def received_any(self) -> bool:
        return self._stream is not None and self._stream.received_any

    @property
    def result(self) -> ChatResult:
        return self._stream.result

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
        self._done = True
        self._finish()
