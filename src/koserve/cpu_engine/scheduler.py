"""The engine interface and its scheduler: one thread advances every active request by one token in turn.

``Engine.submit`` puts a request on a bounded FIFO queue; the scheduler thread admits up to ``max_batch_size``
requests and round-robins over them (each gets one step per round, so a long request never starves a short one),
checks every request for cancellation at most every ``cancel_check_period_ms`` (and before each of its steps),
applies end ids / stop words / length, and delivers :class:`EngineOutput` chunks. Subclasses say what one step is.
"""

from __future__ import annotations

import collections
import itertools
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

from koserve.errors import KoserveError
from koserve.cpu_engine.metrics import EngineStats
from koserve.cpu_engine.types import EngineOutput, EngineRequest, FinishReason


class EngineBusyError(KoserveError):
    """The engine's queue of waiting requests is full."""


class EngineClosedError(KoserveError):
    """The engine was shut down."""


class RequestHandle:
    """A submitted request: iterate its outputs, or cancel it."""

    def __init__(self, request: EngineRequest, on_output: Callable[[EngineOutput], None] | None):
        self.request = request
        self._on_output = on_output
        self._queue: queue.Queue[EngineOutput] = queue.Queue()
        self._cancel = threading.Event()
        self.done = threading.Event()
        self.submitted_at = time.monotonic()

    def cancel(self) -> None:
        """Ask the engine to stop this request (it ends with ``FinishReason.CANCELLED`` at its next step)."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def _deliver(self, out: EngineOutput) -> None:
        if self._on_output is not None:
            self._on_output(out)
        else:
            self._queue.put(out)
        if out.finished:
            self.done.set()

    def outputs(self, timeout: float = 60.0) -> Iterator[EngineOutput]:
        """Chunks as they come (only when no ``on_output`` callback was given); raises TimeoutError if a chunk takes
        longer than ``timeout`` seconds."""
        while True:
            try:
                out = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no output within {timeout} s") from None
            yield out
            if out.finished:
                return

    def result(self, timeout: float = 60.0) -> EngineOutput:
        """All chunks merged into one output."""
        merged = EngineOutput(log_probs=[] if self.request.return_log_probs else None)
        for out in self.outputs(timeout):
            merged.token_ids.extend(out.token_ids)
            if merged.log_probs is not None and out.log_probs is not None:
                merged.log_probs.extend(out.log_probs)
            merged.cum_log_prob = out.cum_log_prob
            merged.finished, merged.finish_reason, merged.error = out.finished, out.finish_reason, out.error
        return merged


class Sequence:
    """Scheduler-side state of one request: tokens so far, what is still to be sent, and whether it ended."""

    def __init__(self, request: EngineRequest, handle: RequestHandle, is_cancelled: Callable[[], bool] | None):
        self.request = request
        self.handle = handle
        self.is_cancelled = is_cancelled
        self.generated: list[int] = []
        self.log_probs: list[float] = []
        self.cum_log_prob = 0.0
        self.sent = 0  # how many generated tokens were delivered
        self.finish_reason: FinishReason | None = None
        self.error: str | None = None
        self.last_cancel_check = 0.0
        self.state: object = None  # engine-specific (KV cache, replay position, ...)
        self._end_ids = frozenset(request.end_ids)
        self._stop_words = request.stop_words

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def finish(self, reason: FinishReason, error: str | None = None) -> None:
        if self.finish_reason is None:
            self.finish_reason, self.error = reason, error

    def is_end(self, token: int) -> bool:
        return token in self._end_ids

    def accept(self, token: int, log_prob: float = 0.0) -> None:
        """Record a produced token and decide whether the sequence ends (TensorRT-LLM's rules: an end id ends it
        and is not emitted; a stop word is emitted, then ends it; then the length limit)."""
        if token in self._end_ids:
            self.finish(FinishReason.END_ID)
            return
        self.generated.append(token)
        self.log_probs.append(log_prob)
        self.cum_log_prob += log_prob
        for word in self._stop_words:
            n = len(word)
            if len(self.generated) >= n and tuple(self.generated[-n:]) == word:
                self.finish(FinishReason.STOP_WORDS)
                return
        if len(self.generated) >= self.request.max_new_tokens:
            self.finish(FinishReason.LENGTH)

    def take_output(self) -> EngineOutput | None:
        """The chunk to deliver now, if any: new tokens when streaming, everything once finished otherwise."""
        if not self.request.streaming and not self.finished:
            return None
        start = self.sent if self.request.streaming else 0
        if start == len(self.generated) and not self.finished:
            return None
        tokens = self.generated[start:]
        self.sent = len(self.generated)
        out = EngineOutput(token_ids=tokens, finished=self.finished, finish_reason=self.finish_reason, error=self.error)
        if self.request.return_log_probs:
            out.log_probs = self.log_probs[start:]
            out.cum_log_prob = self.cum_log_prob
        return out


class Engine(ABC):
    """Base of the CPU engine stand-ins: a bounded queue and one scheduler thread.

    Subclasses implement :meth:`_step` (advance one sequence by one token, calling ``seq.accept``) and may
    implement :meth:`_next_due` (seconds until some sequence can step; replay pacing) and :meth:`_release`.
    """

    name = "engine"

    def __init__(self, *, max_batch_size: int = 8, max_queue_size: int = 256, cancel_check_period_ms: float = 10.0):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.max_batch_size = max_batch_size
        self.max_queue_size = max_queue_size
        self.cancel_check_period = cancel_check_period_ms / 1000.0
        self._cond = threading.Condition()
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._active: list[Sequence] = []
        self._closed = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # model steps run (tests and metrics)
        self.iterations = 0  # scheduler rounds over the active sequences (nv_trt_llm_general_metrics)
        self._ids = itertools.count()

    # -- public API ------------------------------------------------------------------------------------------
    def submit(
        self,
        request: EngineRequest,
        *,
        on_output: Callable[[EngineOutput], None] | None = None,
        is_cancelled: Callable[[], bool] | None = None,
    ) -> RequestHandle:
        """Queue ``request``. Outputs go to ``on_output`` (called from the scheduler thread) or to the handle.
        ``is_cancelled`` is polled while the request waits and runs. Raises :class:`EngineBusyError` when
        ``max_queue_size`` requests are already waiting."""
        self.validate(request)
        handle = RequestHandle(request, on_output)
        seq = Sequence(request, handle, is_cancelled)
        with self._cond:
            if self._closed:
                raise EngineClosedError(f"{self.name} engine is shut down")
            if len(self._waiting) >= self.max_queue_size:
                raise EngineBusyError(
                    f"{self.name} engine is busy: {len(self._waiting)} requests already wait "
                    f"(max_queue_size {self.max_queue_size}); retry later"
                )
            self._waiting.append(seq)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"koserve-{self.name}-engine", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return handle

    def validate(self, request: EngineRequest) -> None:
        """Engine-specific checks before queueing (raise InvalidRequestError)."""

    @property
    def num_active(self) -> int:
        return len(self._active)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def stats(self, max_seq_len: int) -> EngineStats:
        """A snapshot of the scheduler for the TensorRT-LLM metric families (:mod:`koserve.cpu_engine.metrics`)."""
        with self._cond:
            active, waiting = list(self._active), len(self._waiting)
        in_context = [s for s in active if not s.generated]
        return EngineStats(
            active=len(active), max_requests=self.max_batch_size, context=len(in_context), waiting=waiting,
            active_tokens=tuple(len(s.request.input_ids) + len(s.generated) for s in active),
            context_tokens=sum(len(s.request.input_ids) for s in in_context), iterations=self.iterations,
            max_seq_len=max_seq_len, timestamp_us=int(time.time() * 1_000_000),
        )

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel everything, deliver the final chunks and stop the scheduler thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- subclass hooks --------------------------------------------------------------------------------------
    @abstractmethod
    def _step(self, seq: Sequence) -> bool:
        """Advance ``seq`` by one token if it is due; return whether it did."""

    def _next_due(self) -> float:
        """Seconds until some active sequence can step (0: now)."""
        return 0.0

    def _release(self, seq: Sequence) -> None:
        """Free what ``seq`` holds (KV cache, ...)."""
        seq.state = None

    # -- scheduler -------------------------------------------------------------------------------------------
    def _waiting_admissible(self) -> bool:
        return bool(self._waiting) and len(self._active) < self.max_batch_size

    def _cancelled(self, seq: Sequence, now: float) -> bool:
        if seq.handle.cancel_requested:
            return True
        if seq.is_cancelled is not None and now - seq.last_cancel_check >= self.cancel_check_period:
            seq.last_cancel_check = now
            try:
                return bool(seq.is_cancelled())
            except Exception:  # noqa: BLE001 - a broken sender counts as a client that went away
                return True
        return False

    def _flush(self, seq: Sequence) -> None:
        out = seq.take_output()
        if out is None:
            return
        try:
            seq.handle._deliver(out)
        except Exception as exc:  # noqa: BLE001 - the receiver failed: stop working for it
            if out.finished:
                seq.handle.done.set()
                return
            # still tell the receiver that the request ended (Triton needs a FINAL flag to release the request)
            seq.finish(FinishReason.CANCELLED, f"output delivery failed: {exc}")
            final = seq.take_output()
            try:
                seq.handle._deliver(final)
            except Exception:  # noqa: BLE001
                seq.handle.done.set()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    break
                while self._waiting and len(self._active) < self.max_batch_size:
                    self._active.append(self._waiting.popleft())
                if not self._active:
                    self._cond.wait(0.5)
                    continue
            now = time.monotonic()
            self.iterations += 1
            for seq in list(self._active):
                if self._cancelled(seq, now):
                    seq.finish(FinishReason.CANCELLED)
                else:
                    try:
                        if self._step(seq):
                            self.steps += 1
                    except Exception as exc:  # noqa: BLE001 - one request's failure must not stop the others
                        seq.finish(FinishReason.ERROR, f"{self.name} engine failed: {type(exc).__name__}: {exc}")
                if seq.finished or seq.request.streaming:
                    self._flush(seq)
                if seq.finished:
                    self._active.remove(seq)
                    self._release(seq)
            # requests cancelled while waiting end without being admitted
            with self._cond:
                gone = [s for s in self._waiting if self._cancelled(s, now)]
                for seq in gone:
                    self._waiting.remove(seq)
            for seq in gone:  # delivered outside the lock: receivers may take their own locks
                seq.finish(FinishReason.CANCELLED)
                self._flush(seq)
            with self._cond:
                delay = self._next_due() if self._active else 0.0
                if delay > 0 and not self._closed and not self._waiting_admissible():
                    self._cond.wait(min(delay, self.cancel_check_period or delay))
        # shutdown: end every request still known
        with self._cond:
            leftovers = self._active + list(self._waiting)
            self._active, self._waiting = [], collections.deque()
        for seq in leftovers:
            seq.finish(FinishReason.CANCELLED, f"{self.name} engine shut down")
            self._flush(seq)
            self._release(seq)
