"""The ``tensorrt_llm_bls`` model: text in, text out, streaming, calling the engine model of its own server.

Same interface as ``ensemble`` (plus ``num_output_tokens``). Per request it tokenizes in-process (no hop through
``preprocessing``), sends the engine model ``tensorrt_llm`` a streaming request and turns its responses into text
with its own :class:`TextStream` — so the text is exact (whole characters, spaces kept, stop strings removed at the
text level) whatever the client sends, request id or not.

Threads, no asyncio: ``execute`` (Triton's) admits requests and returns; the engine client's reader thread
(:mod:`koserve.triton_models.engine_h2`) turns each engine response into text on the request's :class:`_Run` and sends
the responses that are due (:class:`~koserve.triton_models.outbox.StreamOutbox`; over gRPC the reader is also its timer:
it sends what falls due while it would wait for the socket); a watch thread polls cancellation.

Responses: with ``stream=true`` a response carries the text of one engine response — or of several, when this
model is behind (see :mod:`koserve.triton_models.outbox`); ``num_output_tokens`` says how many generated tokens it covers,
so clients count tokens and tell ``length`` from ``stop`` exactly. A response may have empty text (a byte-fallback
piece of a Hangul syllable, a held-back stop-string prefix). Text still held back at the end goes into the last
response. When generation stops in the middle of a character (``max_tokens``) the incomplete character is dropped —
never U+FFFD, never partial UTF-8 — the same text as ``ensemble`` gives.

Cancellation: Triton 2.51 does not pass a client's cancellation through a BLS model, so a watch thread asks every
request's ``is_cancelled()`` every ``cancel_poll_s`` (parameter or ``KOSERVE_BLS_CANCEL_POLL_S``; default 0.25 s,
0 = off) and stops the engine request of a client that went away (TensorRT-LLM's ``stop``); a matched stop string
stops it the same way. The engine request carries the client's request id when it set one (and no other request of
this model uses it at the moment), so a TensorRT-LLM ``stop`` for that id stops generation too, as through
``ensemble``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
import time
import uuid

import numpy as np

from koserve.errors import InvalidRequestError, KoserveError
from koserve.triton_models.engine_client import (
    EngineChunk,
    EngineError,
    PbEngineClient,
    grpc_url_from_cmdline,
    own_grpc_url,
)
from koserve.triton_models.engine_h2 import H2EngineClient
from koserve.triton_models.guarded_sender import GuardedSender
from koserve.triton_models.outbox import StreamOutbox, StreamReply
from koserve.triton_models.params import GENERATION_INPUTS, GenerationRequest, parse_generation_request
from koserve.triton_models.postprocess import TextStream
from koserve.triton_models.preprocess import EngineInputs, Preprocessor, draw_seed
from koserve.triton_models.settings import ModelSettings, model_parameters
from koserve.triton_models.stream_defaults import (
    DEFAULT_MAX_INTERVAL_US,
    DEFAULT_MAX_WAIT_GAPS,
    DEFAULT_SEND_SHARE,
    MAX_INTERVAL_LIMIT_US,
    MAX_WAIT_GAPS_LIMIT,
)
from koserve.triton_models.triton_io import bytes_tensor, error_response, read_inputs

log = logging.getLogger("koserve")

INPUT_NAMES = GENERATION_INPUTS  # NVIDIA's names (v0.19 and 1.2.1); unsupported ones are refused by name
# our sampling field -> (engine tensor, numpy dtype)
ENGINE_SAMPLING = {
    "temperature": ("temperature", np.float32),
    "top_k": ("runtime_top_k", np.int32),
    "top_p": ("runtime_top_p", np.float32),
    "length_penalty": ("len_penalty", np.float32),
    "repetition_penalty": ("repetition_penalty", np.float32),
    "presence_penalty": ("presence_penalty", np.float32),
    "frequency_penalty": ("frequency_penalty", np.float32),
    "min_length": ("min_tokens", np.int32),  # TensorRT-LLM 1.x engine input names
    "beam_width": ("beam_width", np.int32),
    "random_seed": ("seed", np.uint64),
}
CANCEL_POLL_S = 0.25  # how often to ask is_cancelled() when polling is on
TRANSPORTS = ("grpc", "bls")
_ids = itertools.count()


class _Run:
    """One request in flight: engine responses in (reader thread), text out through its :class:`StreamReply`."""

    __slots__ = ("model", "req", "sender", "engine_id", "text", "reply", "done", "_lock", "_last_chunk_at",
                 "_final_flag", "_text_only")

    def __init__(self, model: "BlsModel", req: GenerationRequest, sender, engine_id: str, prompt_ids=None):
        self.model, self.req, self.sender, self.engine_id = model, req, sender, engine_id
        self.text = TextStream(model.pre.tokenizer, model.pre.stop_words(req.stop_words))
        prefix = ""
        if not req.exclude_input_in_output and not req.stream and prompt_ids is not None:
            # the prompt's decoded ids, as the ensemble (and NVIDIA's BLS) give it; never stop-matched. A streamed
            # answer never starts with the prompt (TensorRT-LLM streams new tokens only).
            prefix = self.text.detokenizer.add(prompt_ids)
        self.reply = StreamReply(self._build, self._send, prefix=prefix)
        self.done = False
        self._lock = threading.Lock()
        self._last_chunk_at = 0.0
        self._final_flag = model.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        # a response of one token is text_output alone (see BlsModel.response): most streamed responses
        self._text_only = not (req.return_num_output_tokens or req.return_num_input_tokens or req.return_log_probs)

    def _build(self, text: str, tokens: int, log_probs, cum_log_prob):
        if tokens == 1 and self._text_only:
            pb = self.model.pb
            return pb.InferenceResponse(output_tensors=[bytes_tensor(pb, "text_output", text)])
        return self.model.response(text, self.req, log_probs, cum_log_prob, tokens)

    def _send(self, response, final: bool) -> None:
        self.sender.send(response, flags=self._final_flag if final else 0)

    def on_chunk(self, chunk: EngineChunk) -> None:
        now = time.monotonic()
        outbox = self.model.outbox
        if self._last_chunk_at:
            outbox.note_engine_gap(now - self._last_chunk_at)
        self._last_chunk_at = now
        ids, final = chunk.ids, chunk.final
        with self._lock:
            if self.done:
                return
            text = self.text
            delta = text.add(ids)
            ended = final or text.stopped
            if ended:
                delta += text.finish()
                self.done = True
            self.reply.add(delta, ids.size, chunk.log_probs, chunk.cum_log_prob, final=ended)
        if ended:
            self.model.forget(self)
            if not final:
                self.model.engine.stop(self.engine_id)  # a stop string matched: the engine stops
        if ended or self.req.stream:
            outbox.post(self.reply)

    def on_error(self, message: str, invalid: bool) -> None:
        with self._lock:
            if self.done:
                return
            self.done = True
            self.reply.fail(error_response(self.model.pb, message, invalid=invalid,
                                           code=None if invalid else _code_for(message)), keep_text=self.req.stream)
        self.model.forget(self)
        self.model.outbox.post(self.reply)

    def cancel(self) -> None:
        """The client went away: send nothing more, stop the engine request."""
        with self._lock:
            if self.done:
                return
            self.done = True
            self.reply.abandon()
        self.model.forget(self)
        self.model.engine.stop(self.engine_id)


def _setting(params: dict[str, str], name: str, default, kind, low, high):
    """A number from the environment (``KOSERVE_BLS_<NAME>``), the model parameters or ``default``, in [low, high]."""
    raw = os.environ.get(f"KOSERVE_BLS_{name.upper()}") or params.get(name) or str(default)
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        what = "a whole number" if kind is int else "a number"
        raise KoserveError(f"{name} must be {what} in [{low}, {high}], got {raw!r}")
    return value


def _code_for(message: str) -> str:
    return "UNAVAILABLE" if "engine stream" in message or "shutting down" in message else "INTERNAL"


class BlsModel:
    """Logic of the BLS model; ``pb`` is ``triton_python_backend_utils``."""

    def __init__(self, pb, model_config, *, transport: str | None = None):
        self.pb = pb
        self.settings = ModelSettings.from_model_config(model_config)
        self.pre = Preprocessor(self.settings)
        params = model_parameters(model_config)
        transport = transport or os.environ.get("KOSERVE_BLS_TRANSPORT") or params.get("engine_transport") or "grpc"
        if transport not in TRANSPORTS:
            raise KoserveError(f"engine_transport must be one of {TRANSPORTS}, got {transport!r}")
        url = own_grpc_url(params.get("engine_grpc_url", "")) if transport == "grpc" else None
        if transport == "grpc" and url is None:
            transport = "bls"  # no gRPC endpoint on this server (e.g. --allow-grpc=false)
        if transport == "bls":
            log.warning("tensorrt_llm_bls: calling the engine through python-backend BLS; on Triton 2.51 its stub "
                        "crashed under concurrent load (free(): double free / malloc(): unaligned chunk): keep "
                        "tritonserver's gRPC endpoint on (docs/serving.md)")
        self.transport = transport
        is_decoupled = getattr(pb, "using_decoupled_model_transaction_policy", None)
        self.decoupled = True if is_decoupled is None else bool(is_decoupled(model_config))
        # a non-decoupled tensorrt_llm refuses streaming=true: ask it for the whole answer (render option
        # engine_decoupled; the render then makes this model non-decoupled too, so no client streams)
        self.engine_streams = params.get("engine_decoupled", "true").strip().lower() not in ("false", "0", "no", "off")
        self.cancel_poll_s = _setting(params, "cancel_poll_s", CANCEL_POLL_S, float, 0.0, 3600.0)
        self._runs: set[_Run] = set()
        self._runs_lock = threading.Lock()
        share = _setting(params, "stream_send_share", DEFAULT_SEND_SHARE, float, 0.0, 1.0)
        max_interval = _setting(params, "stream_max_interval_us", DEFAULT_MAX_INTERVAL_US, int, 0,
                                MAX_INTERVAL_LIMIT_US)
        wait_gaps = _setting(params, "stream_max_wait_gaps", DEFAULT_MAX_WAIT_GAPS, float, 0.0, MAX_WAIT_GAPS_LIMIT)
        # over gRPC every post comes from the engine reader, which is also the outbox's timer (no second thread)
        self.outbox = StreamOutbox(share, max_interval / 1e6, lambda: len(self._runs), wait_gaps,
                                   own_thread=transport != "grpc")
        self.engine = (
            H2EngineClient(url, self.settings.engine_model, after_each=self.outbox.send_due,
                           hold_interval=self.outbox.interval, next_due=self.outbox.next_due,
                           on_due=self.outbox.send_all_due)
            if transport == "grpc"
            else PbEngineClient(pb, self.settings.engine_model, int(os.environ.get("KOSERVE_BLS_THREADS", "256")))
        )
        self._stopping = threading.Event()
        self._watch = None
        if self.cancel_poll_s:
            self._watch = threading.Thread(target=self._watch_cancellation, name="koserve-bls-watch", daemon=True)
            self._watch.start()

    # -- engine request ------------------------------------------------------------------------------------
    def engine_tensors(self, req: GenerationRequest, prepared: EngineInputs) -> tuple[dict[str, np.ndarray], list]:
        tensors = {
            "input_ids": prepared.input_ids[None, :],
            "input_lengths": np.array([[prepared.input_len]], dtype=np.int32),
            "request_output_len": np.array([[prepared.max_tokens]], dtype=np.int32),
            "end_id": np.array([[prepared.end_id]], dtype=np.int32),
            "pad_id": np.array([[prepared.pad_id]], dtype=np.int32),
            "stop_words_list": prepared.stop_words_list[None, :, :],
            "bad_words_list": prepared.bad_words_list[None, :, :],
            "streaming": np.array([[self.engine_streams]], dtype=np.bool_),
            # the BLS echoes the prompt text itself (exact, and never seen by the stop-string matcher)
            "exclude_input_in_output": np.array([[True]], dtype=np.bool_),
            "return_log_probs": np.array([[req.return_log_probs]], dtype=np.bool_),
        }
        for field, (name, dtype) in ENGINE_SAMPLING.items():
            value = getattr(req.sampling, field)
            if field == "random_seed":
                value = draw_seed(value)  # unseeded sampling must not repeat (TensorRT-LLM's default seed is 0)
            if value is not None:
                tensors[name] = np.array([[value]], dtype=dtype)
        outputs = ["output_ids", "sequence_length"]
        if req.return_log_probs:
            outputs += ["cum_log_probs", "output_log_probs"]
        return tensors, outputs

    def engine_id(self, request) -> str:
        """The client's id (a TensorRT-LLM ``stop`` for it then reaches the engine request), unless another request
        of this model uses it right now."""
        client_id = request.request_id() or ""
        if client_id and not self.engine.in_flight(client_id):
            return client_id
        return f"{client_id}#bls{next(_ids)}-{uuid.uuid4().hex[:8]}"

    # -- serving -------------------------------------------------------------------------------------------
    def execute(self, requests) -> None:
        for request in requests:
            self.admit(request)

    def admit(self, request) -> None:
        pb = self.pb
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        # every send and is_cancelled() of this request goes through one lock (see koserve.triton_models.guarded_sender)
        sender = GuardedSender(request.get_response_sender(), final)
        try:
            req = parse_generation_request(read_inputs(pb, request, INPUT_NAMES))
            if req.stream and not self.decoupled:
                raise InvalidRequestError(
                    "stream=true needs tensorrt_llm_bls rendered decoupled (the default); this one answers each "
                    "request in one response: send stream=false"
                )
            prepared = self.pre.for_request(req)
            if req.return_num_input_tokens:
                req = dataclasses.replace(req, input_tokens=prepared.input_len)
        except (KoserveError, ValueError) as exc:
            sender.send(error_response(pb, str(exc)), flags=final)
            return
        run = None
        try:
            run = _Run(self, req, sender, self.engine_id(request), prepared.input_ids)
            tensors, outputs = self.engine_tensors(req, prepared)
            with self._runs_lock:
                self._runs.add(run)
            self.engine.submit(run.engine_id, tensors, outputs, run)
        except Exception as exc:  # noqa: BLE001 - one request's failure must not stop the model
            if run is not None:
                self.forget(run)
            invalid = isinstance(exc, EngineError) and exc.invalid
            sender.send(error_response(pb, f"tensorrt_llm_bls: {exc}", invalid=invalid,
                                       code=None if invalid else "UNAVAILABLE"), flags=final)

    def forget(self, run: _Run) -> None:
        with self._runs_lock:
            self._runs.discard(run)

    def _watch_cancellation(self) -> None:
        while not self._stopping.wait(self.cancel_poll_s):
            with self._runs_lock:
                runs = list(self._runs)
            for run in runs:
                try:
                    if not run.done and run.sender.is_cancelled():  # False once the final response is sent
                        run.cancel()
                except Exception as exc:  # noqa: BLE001 - keep watching the others
                    log.debug("tensorrt_llm_bls: is_cancelled failed: %s", exc)

    def response(self, text: str, req: GenerationRequest, log_probs, cum_log_prob, tokens: int):
        pb = self.pb
        tensors = [bytes_tensor(pb, "text_output", text)]
        if tokens != 1 or req.return_num_output_tokens:  # absent means one: one tensor less on most responses
            tensors.append(pb.Tensor("num_output_tokens", np.full((1, 1), tokens, dtype=np.int32)))
        if req.return_num_input_tokens:
            tensors.append(pb.Tensor("num_input_tokens", np.full((1, 1), req.input_tokens, dtype=np.int32)))
        if req.return_log_probs:
            lp = np.concatenate(log_probs) if log_probs else np.zeros((0,), dtype=np.float32)
            tensors.append(pb.Tensor("output_log_probs", lp.reshape(1, -1)))
            cl = cum_log_prob if cum_log_prob is not None else np.zeros((1,), dtype=np.float32)
            tensors.append(pb.Tensor("cum_log_probs", cl.reshape(1, -1)[:, :1]))
        return pb.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        self._stopping.set()
        self.engine.close()
        self.outbox.close()


__all__ = ["BlsModel", "EngineError", "InvalidRequestError", "grpc_url_from_cmdline", "own_grpc_url"]
