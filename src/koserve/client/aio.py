"""``AsyncChatClient``: the asyncio client, with the same methods as :class:`~koserve.client.ChatClient`."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncGenerator, Iterable

from koserve.client._base import ClientBase, Prepared, backoff_delays, retry_delay
from koserve.client.errors import ServerUnavailableError
from koserve.client.result import ChatResult, Piece
from koserve.client.transport import AsyncTransport


class AsyncChatStream:
    """Text deltas of one generation (``async for``). ``await aclose()``, leaving an ``async with`` block, or
    cancelling the task that iterates it cancels the request on the server."""

    def __init__(self, client: "AsyncChatClient", prepared: Prepared):
        self._transport: AsyncTransport = client._transport
        self._state = client.stream_state(prepared)
        self._responses: AsyncGenerator[Piece, None] | None = None
        self.request_id = self._state.request_id

    def __aiter__(self) -> "AsyncChatStream":
        return self

    async def __anext__(self) -> str:
        state = self._state
        if state.done:
            raise StopAsyncIteration
        if self._responses is None:
            state.start()
            prepared = state.prepared
            self._responses = self._transport.responses(prepared.model, prepared.wire, prepared.deadline)
        while True:
            try:
                piece = await self._responses.__anext__()
            except StopAsyncIteration:
                tail = state.on_end()
                if tail:
                    return tail
                raise
            except asyncio.CancelledError:
                # The task was cancelled: cancel the server-side request, report "cancelled", propagate.
                state.on_close()
                await self._close_responses()
                self._stop_engine_soon(state.engine_to_stop)
                raise
            except BaseException as exc:
                engine = state.on_error(exc)
                await self._close_responses()
                await self._stop_engine(engine)
                raise
            step = state.on_response(piece)
            if step.ended:  # a stop string the server did not stop on: stop it ourselves
                await self._close_responses()
                await self._stop_engine(state.engine_to_stop)
                if not step.delta:
                    raise StopAsyncIteration
            if step.delta:
                return step.delta

    @property
    def received_any(self) -> bool:
        """Whether any response arrived (a failed request is retried only when none did)."""
        return self._state.received_any

    async def _close_responses(self) -> None:
        responses, self._responses = self._responses, None
        if responses is not None:
            try:
                await responses.aclose()
            except RuntimeError:  # "aclose(): asynchronous generator is already running" after a cancellation
                pass

    async def _stop_engine(self, engine: str | None) -> None:
        if engine:
            await self._transport.stop_engine(engine, self.request_id)

    def _stop_engine_soon(self, engine: str | None) -> None:
        """From a cancelled task: stop the engine in the background (do not delay the cancellation)."""
        if engine:
            task = asyncio.get_running_loop().create_task(self._stop_engine(engine))
            _background.add(task)
            task.add_done_callback(_background.discard)

    async def aclose(self) -> None:
        """Stop the generation (cancelling it on the server) if it is still running."""
        if self._state.on_close():
            await self._close_responses()
            await self._stop_engine(self._state.engine_to_stop)

    async def __aenter__(self) -> "AsyncChatStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    @property
    def result(self) -> ChatResult:
        return self._state.result("aclose")

    async def collect(self) -> ChatResult:
        """Read the rest of the stream and return the result."""
        async for _ in self:
            pass
        return self.result


_background: set = set()


class AsyncChatClient(ClientBase):
    """The asyncio twin of :class:`~koserve.client.ChatClient` (same constructor, same methods, awaited;
    ``transport`` is an :class:`~koserve.client.transport.AsyncTransport`).

    >>> async with AsyncChatClient("127.0.0.1:8001", "komt-13b") as client:
    ...     async for delta in client.stream([{"role": "user", "content": "안녕?"}]):
    ...         print(delta, end="")
    """

    _transport: AsyncTransport

    def __init__(self, url: str | None = None, profile: Any = "akallama-70b", *,
                 transport: AsyncTransport | None = None, **kwargs: Any):
        super().__init__(url, profile, **kwargs)
        if transport is not None:
            self._transport, self.protocol = transport, transport.protocol
        else:
            self._transport = self._open_transport(asynchronous=True)

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> "AsyncChatClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def is_ready(self, timeout: float = 2.0) -> bool:
        return await self._transport.ready(self.model, timeout)

    def stream(self, messages: Iterable[Any], **params: Any) -> AsyncChatStream:
        """Generate a reply to ``messages``; ``async for`` over the result for text deltas. Not retried."""
        return AsyncChatStream(self, self.prepare_chat(messages, params, stream=True))

    async def chat(self, messages: Iterable[Any], **params: Any) -> ChatResult:
        return await self._complete(self.prepare_chat(messages, params))

    async def generate(self, prompt: str, **params: Any) -> ChatResult:
        return await self._complete(self.prepare_generate(prompt, params))

    def generate_stream(self, prompt: str, **params: Any) -> AsyncChatStream:
        return AsyncChatStream(self, self.prepare_generate(prompt, params, stream=True))

    async def _complete(self, prepared: Prepared) -> ChatResult:
        delays = backoff_delays(self.retries)
        while True:
            stream = AsyncChatStream(self, prepared)
            try:
                return await stream.collect()
            except ServerUnavailableError:
                delay = retry_delay(delays, received_any=stream.received_any, deadline=prepared.deadline)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
            finally:
                await stream.aclose()
