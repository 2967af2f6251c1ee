"""The interface between the clients and the wire: :class:`Transport` (sync) and :class:`AsyncTransport`.

:class:`~koserve.client.ChatClient` and :class:`~koserve.client.AsyncChatClient` talk to Triton only through these
(as httpx's clients do through theirs). Implemented by :class:`~koserve.client._grpc.GrpcTransport` /
:class:`~koserve.client._grpc.AsyncGrpcTransport` (``stream_infer``) and :class:`~koserve.client._http.HttpTransport`
/ :class:`~koserve.client._http.AsyncHttpTransport` (``generate`` / ``generate_stream``).
"""

from __future__ import annotations

from typing import AsyncGenerator, Generator, Protocol

from koserve.client.result import Piece
from koserve.client.wire import WireRequest


class Transport(Protocol):
    """Blocking access to one Triton server.

    ``stops_on_close``: closing :meth:`responses` before its end stops the generation on the server by itself;
    when false the caller stops the engine with :meth:`stop_engine` (an ensemble's cancellation does not reach its
    engine step inside Triton).
    """

    protocol: str
    stops_on_close: bool

    def responses(self, model: str, request: WireRequest, deadline: float | None) -> Generator[Piece, None, None]:
        """Send ``request`` to ``model`` and yield each response until the last one.

        ``deadline``: ``time.perf_counter()`` value after which :class:`RequestTimeoutError` is raised. Failures are
        :class:`~koserve.client.errors.ClientError` subclasses. ``close()`` on the generator ends the request."""
        ...

    def stop_engine(self, engine: str, request_id: str, timeout: float = 2.0) -> bool:
        """Ask ``engine`` (``tensorrt_llm``) to stop ``request_id``; whether it confirmed. Best effort, never raises."""
        ...

    def ready(self, model: str, timeout: float = 2.0) -> bool:
        """Whether the server answers and ``model`` is ready (never raises)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class AsyncTransport(Protocol):
    """The asyncio twin of :class:`Transport`: the same members, awaited."""

    protocol: str
    stops_on_close: bool

    def responses(self, model: str, request: WireRequest, deadline: float | None
                  ) -> AsyncGenerator[Piece, None]:
        """As :meth:`Transport.responses`; ``aclose()`` on the generator ends the request."""
        ...

    async def stop_engine(self, engine: str, request_id: str, timeout: float = 2.0) -> bool:
        """As :meth:`Transport.stop_engine`."""
        ...

    async def ready(self, model: str, timeout: float = 2.0) -> bool:
        """As :meth:`Transport.ready`."""
        ...

    async def close(self) -> None:
        """Release connections (waits for requests being ended in the background)."""
        ...
