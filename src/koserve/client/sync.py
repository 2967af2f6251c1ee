"""``ChatClient``: the blocking client (thread-safe)."""

from __future__ import annotations

import time
from typing import Any, Iterable, Iterator

from koserve.client._base import ClientBase, Prepared, backoff_delays
from koserve.client.errors import ClientError, ServerUnavailableError
from koserve.client.result import ChatResult, ResponseAssembler


class ChatStream:
    """Text deltas of one generation, as they arrive. Iterate it; ``close()`` (or leaving a ``with`` block, or
    breaking out and dropping it) cancels the request on the server. ``result`` is the :class:`ChatResult` once
    the stream has ended or been closed."""

    def __init__(self, client: "ChatClient", prepared: Prepared):
        self._client = client
        self._prepared = prepared
        self._responses: Iterator[Any] | None = None
        self._asm: ResponseAssembler | None = None
        self._result: ChatResult | None = None
        self._error: BaseException | None = None
        self.request_id = prepared.wire.request_id

    # -- iteration -----------------------------------------------------------------------------------------
    def __iter__(self) -> "ChatStream":
        return self

    def _start(self) -> None:
        self._asm = ResponseAssembler(self._prepared.params.stop_strings())
        self._responses = self._client._transport.responses(self._prepared.model, self._prepared.wire,
                                                             self._prepared.deadline)

    def __next__(self) -> str:
        if self._result is not None or self._error is not None:
            raise StopIteration
        if self._responses is None:
            self._start()
        asm = self._asm
        assert asm is not None and self._responses is not None
        while True:
            try:
                piece = next(self._responses)
            except StopIteration:
                tail = asm.finish()
                self._finish(cancelled=False)
                if tail:
                    return tail
                raise
            except BaseException as exc:
                self._error = exc
                self._close_responses()
                if not isinstance(exc, ServerUnavailableError):
                    self._stop_engine()
                raise
            delta = asm.add(*piece)
            if asm.stopped:  # a stop string the server did not stop on: stop it ourselves
                self._close_responses()
                self._stop_engine()
                self._finish(cancelled=False)
                if delta:
                    return delta
                raise StopIteration
            if delta:
                return delta

    @property
    def received_any(self) -> bool:
        """Whether any response arrived (a failed request is retried only when none did)."""
        return self._asm is not None and self._asm.responses > 0

    # -- ending --------------------------------------------------------------------------------------------
    def _close_responses(self) -> None:
        responses, self._responses = self._responses, iter(())
        if responses is not None and hasattr(responses, "close"):
            responses.close()

    def _stop_engine(self) -> None:
        engine = self._client.engine_model
        if engine and not getattr(self._client._transport, "stops_on_close", False):  # gRPC stops it itself
            self._client._transport.stop_engine(engine, self.request_id)

    def _finish(self, *, cancelled: bool) -> None:
        assert self._asm is not None
        self._result = self._client.build_result(self._prepared, self._asm, cancelled=cancelled)

    def close(self) -> None:
        """Stop the generation (cancelling it on the server) if it is still running."""
        if self._result is not None or self._error is not None:
            return
        if self._responses is None:  # never started: nothing was sent
            self._asm = ResponseAssembler(())
            self._responses = iter(())
        else:
            self._close_responses()
            self._stop_engine()
        self._finish(cancelled=True)

    def __enter__(self) -> "ChatStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if self._responses is not None and self._result is None:
            try:
                self._close_responses()
            except Exception:  # noqa: BLE001 - best effort at garbage collection
                pass

    @property
    def result(self) -> ChatResult:
        if self._error is not None:
            raise ClientError(f"the stream failed: {self._error}")
        if self._result is None:
            raise ClientError("the stream has not finished: iterate it to the end or close() it first")
        return self._result

    def collect(self) -> ChatResult:
        """Read the rest of the stream and return the result."""
        for _ in self:
            pass
        return self.result


class ChatClient(ClientBase):
    """Talks to a Triton ``ensemble`` / ``tensorrt_llm_bls`` serving one koserve profile.

    >>> with ChatClient("127.0.0.1:8001", "akallama-70b") as client:
    ...     print(client.chat([{"role": "user", "content": "안녕?"}]).text)

    ``url``: ``host:port`` (gRPC) or ``http://host:port`` (HTTP); ``protocol`` overrides the guess. Sampling
    parameters (``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``stop``, ``seed``, penalties, ...) default
    to the profile's and can be given per call or as ``params`` for every call. Per-call options: ``timeout``
    (seconds for the whole request), ``request_id``, ``system_prompt`` (chat only), ``server_streaming``.
    """

    def __init__(self, url: str | None = None, profile: Any = "akallama-70b", **kwargs: Any):
        super().__init__(url, profile, **kwargs)
        if self.protocol == "grpc":
            from koserve.client._grpc import GrpcTransport  # noqa: PLC0415

            self._transport = GrpcTransport(self.url, connect_timeout=self.connect_timeout, headers=self.headers,
                                            stop_model=kwargs.get("engine_model", "tensorrt_llm"))
        else:
            from koserve.client._http import HttpTransport  # noqa: PLC0415

            self._transport = HttpTransport(self.url, connect_timeout=self.connect_timeout, headers=self.headers)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> "ChatClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def is_ready(self, timeout: float = 2.0) -> bool:
        """Whether the server answers and the target model is ready."""
        return self._transport.ready(self.model, timeout)

    # -- the API -------------------------------------------------------------------------------------------
    def stream(self, messages: Iterable[Any], **params: Any) -> ChatStream:
        """Generate a reply to ``messages``; iterate the returned stream for text deltas. Not retried."""
        return ChatStream(self, self.prepare_chat(messages, params, stream=True))

    def chat(self, messages: Iterable[Any], **params: Any) -> ChatResult:
        """Generate a reply to ``messages`` and return it whole (retried while the server is unavailable)."""
        return self._complete(self.prepare_chat(messages, params))

    def generate(self, prompt: str, **params: Any) -> ChatResult:
        """Generate from a prompt that is already in the model's format (no chat template applied)."""
        return self._complete(self.prepare_generate(prompt, params))

    def generate_stream(self, prompt: str, **params: Any) -> ChatStream:
        """Like :meth:`generate`, streamed."""
        return ChatStream(self, self.prepare_generate(prompt, params, stream=True))

    def _complete(self, prepared: Prepared) -> ChatResult:
        delays = backoff_delays(self.retries)
        while True:
            stream = ChatStream(self, prepared)
            try:
                return stream.collect()
            except ServerUnavailableError:
                if stream.received_any:
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise
                if prepared.deadline is not None and time.perf_counter() + delay >= prepared.deadline:
                    raise
                time.sleep(delay)
