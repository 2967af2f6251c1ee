"""The ``tensorrt_llm_bls`` model: text in, text out, streaming, with the engine called through BLS.

Same interface as ``ensemble``. Per request it tokenizes in-process (no hop through ``preprocessing``), calls the
engine model (decoupled) and turns its responses into text with its own :class:`TextStream` — so the text is exact
(whole characters, spaces kept, stop strings removed at the text level, the end flushed) whatever the client sends,
request id or not.

Concurrency: ``execute`` is a coroutine (the python backend runs decoupled coroutines in the background), each request
a task; the blocking ``next()`` of the engine's response iterator runs in a thread pool so one stream never blocks
another. Cancellation: Triton 2.51 does not pass a client's cancellation through a BLS call, and its python backend
has no way to cancel an inner request; so the BLS polls its own request's ``is_cancelled()`` and, when the client went
away or a stop string matched, sends the engine a **stop request** (TensorRT-LLM's ``stop`` input, same request id) —
the C++ backend and the CPU stand-in both end the running request on it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from koserve.errors import InvalidRequestError, KoserveError
from koserve.serving.params import GenerationRequest, parse_generation_request
from koserve.serving.postprocess import TextStream, tokens_of
from koserve.serving.preprocess import EngineInputs, Preprocessor
from koserve.serving.settings import ModelSettings
from koserve.serving.triton_io import bytes_tensor, error_response, read_inputs

INPUT_NAMES = (
    "text_input", "max_tokens", "bad_words", "stop_words", "end_id", "pad_id", "top_k", "top_p", "temperature",
    "length_penalty", "repetition_penalty", "presence_penalty", "frequency_penalty", "min_length", "beam_width",
    "random_seed", "stream", "exclude_input_in_output", "return_log_probs",
)
# our sampling field -> (engine tensor, numpy dtype)
ENGINE_SAMPLING = {
    "temperature": ("temperature", np.float32),
    "top_k": ("runtime_top_k", np.int32),
    "top_p": ("runtime_top_p", np.float32),
    "length_penalty": ("len_penalty", np.float32),
    "repetition_penalty": ("repetition_penalty", np.float32),
    "presence_penalty": ("presence_penalty", np.float32),
    "frequency_penalty": ("frequency_penalty", np.float32),
    "min_length": ("min_length", np.int32),
    "beam_width": ("beam_width", np.int32),
    "random_seed": ("random_seed", np.uint64),
}
CANCEL_POLL_S = 0.25
_done = object()
_ids = itertools.count()


class _LockedSender:
    """The response sender with its IPC calls serialised by ``lock`` and ``is_cancelled`` rate-limited."""

    def __init__(self, sender, lock):
        self._sender, self._lock = sender, lock
        self._checked = time.monotonic()
        self._cancelled = False

    def send(self, *args, **kwargs):
        with self._lock:
            return self._sender.send(*args, **kwargs)

    def is_cancelled(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not self._cancelled and (force or now - self._checked >= CANCEL_POLL_S):
            self._checked = now
            with self._lock:
                self._cancelled = bool(self._sender.is_cancelled())
        return self._cancelled


def _next(iterator):
    try:
        return next(iterator)
    except StopIteration:
        return _done


class BlsModel:
    """Logic of the BLS model; ``pb`` is ``triton_python_backend_utils``."""

    def __init__(self, pb, model_config, *, max_threads: int | None = None):
        self.pb = pb
        self.settings = ModelSettings.from_model_config(model_config)
        self.pre = Preprocessor(self.settings)
        self.engine = self.settings.engine_model
        self.pool = ThreadPoolExecutor(max_workers=max_threads or int(os.environ.get("KOSERVE_BLS_THREADS", "256")),
                                       thread_name_prefix="bls")
        self._background: set[asyncio.Task] = set()
        # serialises send / is_cancelled of all streams (they run on the event loop thread anyway)
        self.ipc = threading.Lock()

    # -- engine request ------------------------------------------------------------------------------------
    def engine_request(self, req: GenerationRequest, prepared: EngineInputs, request_id: str):
        pb = self.pb
        tensors = [
            pb.Tensor("input_ids", prepared.input_ids[None, :]),
            pb.Tensor("input_lengths", np.array([[prepared.input_len]], dtype=np.int32)),
            pb.Tensor("request_output_len", np.array([[prepared.max_tokens]], dtype=np.int32)),
            pb.Tensor("end_id", np.array([[prepared.end_id]], dtype=np.int32)),
            pb.Tensor("pad_id", np.array([[prepared.pad_id]], dtype=np.int32)),
            pb.Tensor("stop_words_list", prepared.stop_words_list[None, :, :]),
            pb.Tensor("bad_words_list", prepared.bad_words_list[None, :, :]),
            pb.Tensor("streaming", np.array([[True]], dtype=np.bool_)),
            # the BLS echoes the prompt text itself (exact, and never seen by the stop-string matcher)
            pb.Tensor("exclude_input_in_output", np.array([[True]], dtype=np.bool_)),
            pb.Tensor("return_log_probs", np.array([[req.return_log_probs]], dtype=np.bool_)),
        ]
        for field, (name, dtype) in ENGINE_SAMPLING.items():
            value = getattr(req.sampling, field)
            if value is not None:
                tensors.append(pb.Tensor(name, np.array([[value]], dtype=dtype)))
        outputs = ["output_ids", "sequence_length"]
        if req.return_log_probs:
            outputs += ["cum_log_probs", "output_log_probs"]
        return pb.InferenceRequest(
            model_name=self.engine, inputs=tensors, requested_output_names=outputs, request_id=request_id
        )

    def stop_request(self, request_id: str):
        pb = self.pb
        return pb.InferenceRequest(
            model_name=self.engine,
            inputs=[
                pb.Tensor("input_ids", np.zeros((1, 1), dtype=np.int32)),
                pb.Tensor("input_lengths", np.ones((1, 1), dtype=np.int32)),
                pb.Tensor("request_output_len", np.ones((1, 1), dtype=np.int32)),
                pb.Tensor("stop", np.array([[True]], dtype=np.bool_)),
            ],
            requested_output_names=["output_ids"],
            request_id=request_id,
        )

    # -- serving -------------------------------------------------------------------------------------------
    async def execute(self, requests) -> None:
        await asyncio.gather(*(self.serve(r) for r in requests))

    async def serve(self, request) -> None:
        pb = self.pb
        sender = _LockedSender(request.get_response_sender(), self.ipc)
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            req = parse_generation_request(read_inputs(pb, request, INPUT_NAMES))
            prepared = self.pre.for_request(req)
        except (KoserveError, ValueError) as exc:
            sender.send(error_response(pb, str(exc)), flags=final)
            return
        client_id = request.request_id()
        inner_id = f"{client_id or 'bls'}#{next(_ids)}-{uuid.uuid4().hex[:8]}"
        try:
            await self._generate(req, prepared, inner_id, sender)
        except Exception as exc:  # noqa: BLE001 - one request's failure must not stop the model
            try:
                sender.send(error_response(pb, f"tensorrt_llm_bls: {type(exc).__name__}: {exc}"), flags=final)
            except Exception:  # noqa: BLE001 - the response may already be complete
                pass

    async def _generate(self, req: GenerationRequest, prepared: EngineInputs, inner_id: str, sender) -> None:
        pb = self.pb
        loop = asyncio.get_running_loop()
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        stream = TextStream(self.pre.tokenizer, self.pre.stop_words(req.stop_words))
        iterator = await loop.run_in_executor(self.pool, self._exec, self.engine_request(req, prepared, inner_id))
        pieces: list[str] = [req.text] if not req.exclude_input_in_output else []
        log_probs: list[np.ndarray] = []
        cum_log_prob = None
        prefix = req.text if (req.stream and not req.exclude_input_in_output) else ""
        cancelled = stopped = False
        while True:
            pending = self.pool.submit(_next, iterator)
            future = asyncio.wrap_future(pending)
            while True:
                done, _ = await asyncio.wait({future}, timeout=CANCEL_POLL_S)
                if done:
                    break
                if sender.is_cancelled():
                    cancelled = True
                    break
            if cancelled:
                self._stop_engine(inner_id, iterator, pending=pending)
                return  # the client is gone: nothing to send
            response = future.result()
            if response is _done:
                break
            if response.has_error():
                sender.send(error_response(pb, response.error().message()), flags=final)
                return
            out = pb.get_output_tensor_by_name(response, "output_ids")
            if out is None:  # an empty (final) response
                continue
            seq = pb.get_output_tensor_by_name(response, "sequence_length")
            ids = tokens_of(out.as_numpy(), None if seq is None else seq.as_numpy())
            delta = stream.add(ids)
            if req.return_log_probs:
                lp = pb.get_output_tensor_by_name(response, "output_log_probs")
                cl = pb.get_output_tensor_by_name(response, "cum_log_probs")
                if lp is not None:
                    log_probs.append(np.asarray(lp.as_numpy(), dtype=np.float32).reshape(-1))
                if cl is not None:
                    cum_log_prob = np.asarray(cl.as_numpy(), dtype=np.float32).reshape(-1)
            if sender.is_cancelled():
                self._stop_engine(inner_id, iterator)
                return
            if req.stream:
                if delta or prefix:
                    sender.send(self._response(prefix + delta, req, log_probs, cum_log_prob))
                    prefix = ""
                    log_probs = []
            else:
                pieces.append(delta)
            if stream.stopped:
                stopped = True
                break
        if stopped:
            self._stop_engine(inner_id, iterator)
        tail = stream.finish()
        if req.stream:
            text = prefix + tail
            if text or log_probs:
                sender.send(self._response(text, req, log_probs, cum_log_prob), flags=final)
            else:
                sender.send(flags=final)
        else:
            pieces.append(tail)
            sender.send(self._response("".join(pieces), req, log_probs, cum_log_prob), flags=final)

    def _response(self, text: str, req: GenerationRequest, log_probs, cum_log_prob):
        pb = self.pb
        tensors = [bytes_tensor(pb, "text_output", text)]
        if req.return_log_probs:
            lp = np.concatenate(log_probs) if log_probs else np.zeros((0,), dtype=np.float32)
            tensors.append(pb.Tensor("output_log_probs", lp.reshape(1, -1)))
            cl = cum_log_prob if cum_log_prob is not None else np.zeros((1,), dtype=np.float32)
            tensors.append(pb.Tensor("cum_log_probs", cl.reshape(1, -1)[:, :1]))
        return pb.InferenceResponse(output_tensors=tensors)

    def _stop_engine(self, inner_id: str, iterator, pending=None) -> None:
        """Send the engine a stop request for ``inner_id`` and drain the old stream, in the background."""

        def work():
            try:
                for _ in self._exec(self.stop_request(inner_id)):
                    pass
            except Exception:  # noqa: BLE001 - an engine without `stop` support: the drain below still ends
                pass
            if pending is not None:
                try:
                    pending.result(timeout=600)
                except Exception:  # noqa: BLE001
                    return
            for _ in range(1_000_000):  # bounded: at most max_tokens responses remain
                if _next(iterator) is _done:
                    break

        self.pool.submit(work)

    def _exec(self, inference_request):
        # exec(decoupled=True) waits for the engine's first response: never hold a lock around it
        return inference_request.exec(decoupled=True)

    def finalize(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["BlsModel", "InvalidRequestError"]
