"""``ChatClient``: the blocking client (thread-safe)."""

from __future__ import annotations

import time
from typing import Any, Generator, Iterable

from koserve.client._base import ClientBase, Prepared, backoff_delays, retry_delay
from koserve.client.errors import ServerUnavailableError
from koserve.client.result import ChatResult, Piece
from koserve.client.transport import Transport


class ChatStream:
    """Text deltas of one generation, as they arrive. Iterate it; ``close()`` (or leaving a ``with`` block, or
    breaking out and dropping it) cancels the request on the server. ``result`` is the :class:`ChatResult` once
    the stream has ended or been closed."""

    def __init__(self, client: "ChatClient", prepared: Prepared):
        self._transport: Transport = client._transport
        self._state = client.stream_state(prepared)
        self._responses: Generator[Piece, None, None] | None = None
        self.request_id = self._state.request_id

    # -- iteration -----------------------------------------------------------------------------------------
    def __iter__(self) -> "ChatStream":
        return self

    def __next__(self) -> str:
        state = self._state
        if state.done:
            raise StopIteration
        if self._responses is None:
            state.start()
            prepared = state.prepared
            self._responses = self._transport.responses(prepared.model, prepared.wire, prepared.deadline)
        while True:
            try:
                piece = next(self._responses)
            except StopIteration:
                tail = state.on_end()
                if tail:
                    return tail
                raise
            except BaseException as exc:
                engine = state.on_error(exc)
                self._close_responses()
                self._stop_engine(engine)
                raise
            step = state.on_response(piece)
            if step.ended:  # a stop string the server did not stop on: stop it ourselves
                self._close_responses()
                self._stop_engine(state.engine_to_stop)
                if not step.delta:
                    raise StopIteration
            if step.delta:
                return step.delta

    @property
    def received_any(self) -> bool:
        """Whether any response arrived (a failed request is retried only when none did)."""
        return self._state.received_any

    # -- ending --------------------------------------------------------------------------------------------
    def _close_responses(self) -> None:
        responses, self._responses = self._responses, None
        if responses is not None:
            responses.close()

    def _stop_engine(self, engine: str | None) -> None:
        if engine:
            self._transport.stop_engine(engine, self.request_id)

    def close(self) -> None:
        """Stop the generation (cancelling it on the server) if it is still running."""
        if self._state.on_close():
            self._close_responses()
            self._stop_engine(self._state.engine_to_stop)

    def __enter__(self) -> "ChatStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if self._responses is not None and not self._state.done:
            try:
                self._close_responses()
            except Exception:  # noqa: BLE001 - best effort at garbage collection
                pass

    @property
    def result(self) -> ChatResult:
        return self._state.result("close")

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
    ``transport``: talk through this :class:`~koserve.client.transport.Transport` instead of opening one for
    ``url`` (as httpx's ``transport=``).
    """

    _transport: Transport

    def __init__(self, url: str | None = None, profile: Any = "akallama-70b", *,
                 transport: Transport | None = None, **kwargs: Any):
        super().__init__(url, profile, **kwargs)
        if transport is not None:
            self._transport, self.protocol = transport, transport.protocol
        else:
            self._transport = self._open_transport(asynchronous=False)

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
                delay = retry_delay(delays, received_any=stream.received_any, deadline=prepared.deadline)
                if delay is None:
                    raise
                time.sleep(delay)
            finally:
                stream.close()
