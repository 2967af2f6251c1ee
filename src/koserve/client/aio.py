"""``AsyncChatClient``: the asyncio client, with the same methods as :class:`~koserve.client.ChatClient`."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Iterable

from koserve.client._base import ClientBase, Prepared, backoff_delays
from koserve.client.errors import ClientError, ServerUnavailableError
from koserve.client.result import ChatResult, ResponseAssembler


class AsyncChatStream:
    """Text deltas of one generation (``async for``). ``await aclose()``, leaving an ``async with`` block, or
    cancelling the task that iterates it cancels the request on the server."""

    def __init__(self, client: "AsyncChatClient", prepared: Prepared):
        self._client = client
        self._prepared = prepared
        self._responses: AsyncIterator[Any] | None = None
        self._asm: ResponseAssembler | None = None
        self._result: ChatResult | None = None
        self._error: BaseException | None = None
        self.request_id = prepared.wire.request_id

    def __aiter__(self) -> "AsyncChatStream":
        return self

    def _start(self) -> None:
        self._asm = ResponseAssembler(self._prepared.params.stop_strings())
        self._responses = self._client._transport.responses(self._prepared.model, self._prepared.wire,
                                                             self._prepared.deadline)

    async def __anext__(self) -> str:
        if self._result is not None or self._error is not None:
            raise StopAsyncIteration
        if self._responses is None:
            self._start()
        asm = self._asm
        assert asm is not None and self._responses is not None
        while True:
            try:
                piece = await self._responses.__anext__()
            except StopAsyncIteration:
                tail = asm.finish()
                self._finish(cancelled=False)
                if tail:
                    return tail
                raise
            except asyncio.CancelledError:
                # The task was cancelled: cancel the server-side request, report "cancelled", propagate.
                await self._close_responses()
                self._stop_engine_soon()
                self._finish(cancelled=True)
                raise
            except BaseException as exc:
                self._error = exc
                await self._close_responses()
                if not isinstance(exc, ServerUnavailableError):
                    await self._stop_engine()
                raise
            delta = asm.add(*piece)
            if asm.stopped:
                await self._close_responses()
                await self._stop_engine()
                self._finish(cancelled=False)
                if delta:
                    return delta
                raise StopAsyncIteration
            if delta:
                return delta

    @property
    def received_any(self) -> bool:
        return self._asm is not None and self._asm.responses > 0

    async def _close_responses(self) -> None:
        responses, self._responses = self._responses, _empty()
        if responses is not None and hasattr(responses, "aclose"):
            try:
                await responses.aclose()
            except RuntimeError:  # "aclose(): asynchronous generator is already running" after a cancellation
                pass

    def _stops_itself(self) -> bool:
        return getattr(self._client._transport, "stops_on_close", False)  # gRPC: stop + drain on close

    async def _stop_engine(self) -> None:
        engine = self._client.engine_model
        if engine and not self._stops_itself():
            await self._client._transport.stop_engine(engine, self.request_id)

    def _stop_engine_soon(self) -> None:
        """From a cancelled task: stop the engine in the background (do not delay the cancellation)."""
        if self._client.engine_model and not self._stops_itself():
            task = asyncio.get_running_loop().create_task(self._stop_engine())
            _background.add(task)
            task.add_done_callback(_background.discard)

    def _finish(self, *, cancelled: bool) -> None:
        assert self._asm is not None
        self._result = self._client.build_result(self._prepared, self._asm, cancelled=cancelled)

    async def aclose(self) -> None:
        """Stop the generation (cancelling it on the server) if it is still running."""
        if self._result is not None or self._error is not None:
            return
        if self._responses is None:
            self._asm = ResponseAssembler(())
            self._responses = _empty()
        else:
            await self._close_responses()
            await self._stop_engine()
        self._finish(cancelled=True)

    async def __aenter__(self) -> "AsyncChatStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    @property
    def result(self) -> ChatResult:
        if self._error is not None:
            raise ClientError(f"the stream failed: {self._error}")
        if self._result is None:
            raise ClientError("the stream has not finished: iterate it to the end or aclose() it first")
        return self._result

    async def collect(self) -> ChatResult:
        """Read the rest of the stream and return the result."""
        async for _ in self:
            pass
        return self.result


_background: set = set()


async def _empty() -> AsyncIterator[Any]:
    return
    yield  # pragma: no cover


class AsyncChatClient(ClientBase):
    """The asyncio twin of :class:`~koserve.client.ChatClient` (same constructor, same methods, awaited).

    >>> async with AsyncChatClient("127.0.0.1:8001", "komt-13b") as client:
    ...     async for delta in client.stream([{"role": "user", "content": "안녕?"}]):
    ...         print(delta, end="")
    """

    def __init__(self, url: str | None = None, profile: Any = "akallama-70b", **kwargs: Any):
        super().__init__(url, profile, **kwargs)
        if self.protocol == "grpc":
            from koserve.client._grpc import AsyncGrpcTransport  # noqa: PLC0415

            self._transport = AsyncGrpcTransport(self.url, connect_timeout=self.connect_timeout,
                                                 headers=self.headers,
                                                 stop_model=kwargs.get("engine_model", "tensorrt_llm"))
        else:
            from koserve.client._http import AsyncHttpTransport  # noqa: PLC0415

            self._transport = AsyncHttpTransport(self.url, connect_timeout=self.connect_timeout,
                                                 headers=self.headers)

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
                if stream.received_any:
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise
                if prepared.deadline is not None and time.perf_counter() + delay >= prepared.deadline:
                    raise
                await asyncio.sleep(delay)
            finally:
                await stream.aclose()
