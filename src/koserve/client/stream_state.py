"""The progress of one generation without I/O: what :class:`~koserve.client.ChatStream` and
:class:`~koserve.client.AsyncChatStream` share, so the two cannot drift.

The streams read responses from their transport and hand each event here; the state says what text to show and
whether the request must be stopped, and builds the :class:`~koserve.client.ChatResult` (stop strings, deltas,
token counts and times, finish reason).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, NamedTuple

from koserve.client.errors import ClientError, ServerUnavailableError
from koserve.client.result import ChatResult, Piece, ResponseAssembler

if TYPE_CHECKING:
    from koserve.client._base import Prepared

BuildResult = Callable[["Prepared", ResponseAssembler, bool], ChatResult]


class StreamStep(NamedTuple):
    """What one response means: ``delta`` to show (may be empty) and whether the stream has ended with it (a stop
    string the server did not stop on: the caller closes the responses and stops the engine)."""

    delta: str
    ended: bool


class StreamState:
    """One generation: responses in, text deltas and the result out.

    ``engine_to_stop``: the engine a stream ending early stops by request id (``None``: the transport does that
    itself, or the target stops on its own). ``build_result(prepared, assembler, cancelled)`` makes the result.
    """

    def __init__(self, prepared: Prepared, build_result: BuildResult, engine_to_stop: str | None):
        self.prepared = prepared
        self.request_id = prepared.wire.request_id
        self.engine_to_stop = engine_to_stop
        self._build_result = build_result
        self._asm: ResponseAssembler | None = None
        self._result: ChatResult | None = None
        self._error: BaseException | None = None

    @property
    def started(self) -> bool:
        return self._asm is not None

    @property
    def done(self) -> bool:
        """Finished, closed or failed: nothing more will be read."""
        return self._result is not None or self._error is not None

    @property
    def received_any(self) -> bool:
        """Whether any response arrived (a failed request is retried only when none did)."""
        return self._asm is not None and self._asm.responses > 0

    def start(self) -> None:
        """The request is being sent."""
        self._asm = ResponseAssembler(self.prepared.params.stop_strings())

    def on_response(self, piece: Piece) -> StreamStep:
        asm = self._assembler()
        delta = asm.add(*piece)
        if asm.stopped:
            self._finish(cancelled=False)
            return StreamStep(delta, True)
        return StreamStep(delta, False)

    def on_end(self) -> str:
        """The server sent its last response: the text held back until now (may be empty)."""
        tail = self._assembler().finish()
        self._finish(cancelled=False)
        return tail

    def on_error(self, exc: BaseException) -> str | None:
        """Reading failed with ``exc``; returns the engine to stop (none when the server is unreachable)."""
        self._error = exc
        return None if isinstance(exc, ServerUnavailableError) else self.engine_to_stop

    def on_close(self) -> bool:
        """The caller ended the stream (close, cancellation); whether a request is running that must be stopped."""
        if self.done:
            return False
        running = self.started
        if not running:  # never sent: nothing to stop
            self._asm = ResponseAssembler(())
        self._finish(cancelled=True)
        return running

    def result(self, close_method: str) -> ChatResult:
        """The result; ``close_method`` names the stream's close method in the error for an unfinished stream."""
        if self._error is not None:
            raise ClientError(f"the stream failed: {self._error}")
        if self._result is None:
            raise ClientError(f"the stream has not finished: iterate it to the end or {close_method}() it first")
        return self._result

    def _assembler(self) -> ResponseAssembler:
        if self._asm is None:
            raise ClientError("the stream has not started")
        return self._asm

    def _finish(self, *, cancelled: bool) -> None:
        self._result = self._build_result(self.prepared, self._assembler(), cancelled)
