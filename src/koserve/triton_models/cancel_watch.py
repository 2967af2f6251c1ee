"""Stop the engine when a client leaves an ``ensemble`` stream: the postprocessing side.

Triton does not pass a client's cancellation to an ensemble step that is already running (the decoupled engine
keeps generating), but it marks every *later* step request of a cancelled ensemble request as cancelled
(core ``ensemble_scheduler.cc`` ``EnsembleContext::ScheduleSteps``: ``step->request_->Cancel()``, in r24.10 = Triton
2.51 and r26.04 = 2.68 alike). So the engine's next response reaches postprocessing as a cancelled request —
**only when postprocessing has no dynamic batching**: the dynamic batcher's queue drops cancelled requests without
executing them (core ``scheduler_utils.cc`` ``PolicyQueue::ApplyPolicy``). :class:`CancelWatch` then sends
TensorRT-LLM's ``stop`` for the request id to the engine (what koserve's client does itself), once per id.

``request.is_cancelled()`` is a round trip to the Triton process, so each stream is checked at most every
``period`` s: the engine stops within about ``period`` s plus one token of the client leaving. A request without
an id (a raw client that sets none) cannot be stopped this way: nothing names its engine request.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time

import numpy as np

DEFAULT_ENGINE_MODEL = "tensorrt_llm"
CHECK_PERIOD_S = 0.25
STOP_TIMEOUT_S = 5.0
MAX_TRACKED = 4096

log = logging.getLogger("koserve")


def stop_inputs(pb) -> list:
    """TensorRT-LLM's stop request: the engine's required inputs with placeholder values, plus ``stop``."""
    return [
        pb.Tensor("input_ids", np.zeros((1, 1), dtype=np.int32)),
        pb.Tensor("input_lengths", np.ones((1, 1), dtype=np.int32)),
        pb.Tensor("request_output_len", np.ones((1, 1), dtype=np.int32)),
        pb.Tensor("stop", np.ones((1, 1), dtype=np.bool_)),
    ]


class CheckSchedule:
    """Which request ids are due for a cancellation check (at most one per ``period`` s per id); pure state."""

    def __init__(self, period: float = CHECK_PERIOD_S, max_tracked: int = MAX_TRACKED):
        self.period, self.max_tracked = period, max_tracked
        self._last: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._stopped: collections.OrderedDict[str, float] = collections.OrderedDict()

    def due(self, request_id: str, now: float) -> bool:
        if not request_id or request_id in self._stopped:
            return False
        last = self._last.get(request_id)
        if last is not None and now - last < self.period:
            return False
        self._last[request_id] = now
        self._last.move_to_end(request_id)
        while len(self._last) > self.max_tracked:
            self._last.popitem(last=False)
        return True

    def mark_stopped(self, request_id: str, now: float) -> bool:
        """Record a stop; False when this id was already stopped recently (send nothing)."""
        if request_id in self._stopped and now - self._stopped[request_id] < max(10 * self.period, 2.0):
            return False
        self._stopped[request_id] = now
        while len(self._stopped) > self.max_tracked:
            self._stopped.popitem(last=False)
        self._last.pop(request_id, None)
        return True

    def forget_stopped(self, now: float) -> None:
        horizon = max(10 * self.period, 2.0)
        while self._stopped and now - next(iter(self._stopped.values())) > horizon:
            self._stopped.popitem(last=False)


class CancelWatch:
    """Called for each postprocessing request (from ``execute``: the schedule is not shared with other threads);
    sends ``stop`` to the engine from a worker thread for a request id whose ensemble request was cancelled."""

    def __init__(self, pb, engine_model: str = DEFAULT_ENGINE_MODEL, period: float = CHECK_PERIOD_S):
        self.pb, self.engine_model = pb, engine_model
        self.schedule = CheckSchedule(period)
        self.stops_sent = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="koserve-cancel-watch", daemon=True)
        self._thread.start()

    def see(self, request) -> None:
        request_id = request.request_id()
        now = time.monotonic()
        if not self.schedule.due(request_id, now):
            return
        self.schedule.forget_stopped(now)
        if request.is_cancelled() and self.schedule.mark_stopped(request_id, now):
            self._queue.put(request_id)

    def _run(self) -> None:
        while True:
            request_id = self._queue.get()
            if request_id is None:
                return
            try:
                self._stop(request_id)
                self.stops_sent += 1
            except Exception as exc:  # noqa: BLE001 - best effort: the client is gone anyway
                log.warning("postprocessing: could not stop the engine for request %r: %s", request_id, exc)

    def _stop(self, request_id: str) -> None:
        pb = self.pb
        request = pb.InferenceRequest(model_name=self.engine_model, inputs=stop_inputs(pb), request_id=request_id,
                                      requested_output_names=[], timeout=int(STOP_TIMEOUT_S * 1_000_000))
        for response in request.exec(decoupled=True):  # the engine answers a stop with one final response
            if response.has_error():
                raise RuntimeError(response.error().message())

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=STOP_TIMEOUT_S)
