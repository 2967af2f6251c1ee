"""The ``tensorrt_llm_bls`` model: text in, text out, streaming, calling the engine model of its own server.

Same interface as ``ensemble`` (plus ``num_output_tokens``). Per request it tokenizes in-process (no hop through
``preprocessing``), sends the engine model ``tensorrt_llm`` a streaming request and turns its responses into text
with its own :class:`TextStream` — so the text is exact (whole characters, spaces kept, stop strings removed at the
text level) whatever the client sends, request id or not.

Three parts: :class:`~koserve.triton_models.bls_config.BlsConfig` (the model config, read once),
:class:`~koserve.triton_models.bls_stream.BlsStream` (one request's pure state: ids in, text and due times out) and
this module, the Triton edge. Threads, no asyncio: ``execute`` (Triton's) admits requests and returns; the engine
transport's reader thread (:mod:`koserve.triton_models.engine_h2`) hands each engine response to the request's
:class:`_Run` and runs the outbox (:class:`~koserve.triton_models.outbox.StreamOutbox`), which sends the responses
that are due on that thread; a watch thread polls cancellation.

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
import threading
import time
import uuid

import numpy as np

from koserve.errors import InvalidRequestError, KoserveError
from koserve.triton_models.bls_config import BlsConfig
from koserve.triton_models.bls_stream import BlsStream
from koserve.triton_models.engine_h2 import H2EngineClient
from koserve.triton_models.engine_types import EngineChunk, EngineError, EngineTransport
from koserve.triton_models.guarded_sender import GuardedSender
from koserve.triton_models.outbox import StreamOutbox, StreamReply
from koserve.triton_models.params import GENERATION_INPUTS, GenerationRequest, parse_generation_request
from koserve.triton_models.postprocess import TextStream
from koserve.triton_models.preprocess import EngineInputs, Preprocessor, draw_seed
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
_ids = itertools.count()


def engine_tensors(req: GenerationRequest, prepared: EngineInputs, engine_streams: bool = True
                   ) -> tuple[dict[str, np.ndarray], list[str]]:
    """The ``tensorrt_llm`` request for a parsed and tokenized BLS request: tensors and requested outputs."""
    tensors = {
        "input_ids": prepared.input_ids[None, :],
        "input_lengths": np.array([[prepared.input_len]], dtype=np.int32),
        "request_output_len": np.array([[prepared.max_tokens]], dtype=np.int32),
        "end_id": np.array([[prepared.end_id]], dtype=np.int32),
        "pad_id": np.array([[prepared.pad_id]], dtype=np.int32),
        "stop_words_list": prepared.stop_words_list[None, :, :],
        "bad_words_list": prepared.bad_words_list[None, :, :],
        "streaming": np.array([[engine_streams]], dtype=np.bool_),
        # the BLS echoes the prompt text itself (exact, and never seen by the stop-string matcher)
        "exclude_input_in_output": np.array([[True]], dtype=np.bool_),
        "return_log_probs": np.array([[req.return_log_probs]], dtype=np.bool_),
    }
    if req.guided is not None:  # NVIDIA's names, as the C++ backend reads them
        tensors["guided_decoding_guide_type"] = np.array([[req.guided.guide_type.encode()]], dtype=np.object_)
        if req.guided.guide:
            tensors["guided_decoding_guide"] = np.array([[req.guided.guide.encode()]], dtype=np.object_)
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


class _Run:
    """One request in flight at the Triton edge: engine responses in (reader thread) to its
    :class:`~koserve.triton_models.bls_stream.BlsStream`, responses out through its :class:`StreamReply`."""

    __slots__ = ("model", "req", "sender", "engine_id", "state", "reply", "_lock", "_last_chunk_at", "_final_flag",
                 "_text_only")

    def __init__(self, model: "BlsModel", req: GenerationRequest, sender, engine_id: str, prompt_ids=None):
        self.model, self.req, self.sender, self.engine_id = model, req, sender, engine_id
        text = TextStream(model.pre.tokenizer, model.pre.stop_words(req.stop_words))
        prefix = ""
        if not req.exclude_input_in_output and not req.stream and prompt_ids is not None:
            # the prompt's decoded ids, as the ensemble (and NVIDIA's BLS) give it; never stop-matched. A streamed
            # answer never starts with the prompt (TensorRT-LLM streams new tokens only).
            prefix = text.detokenizer.add(prompt_ids)
        self.state = BlsStream(text, prefix)
        self.reply = StreamReply(self._build, self._send, state=self.state)
        self._lock = self.reply.lock
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
        state = self.state
        with self._lock:
            if state.ended:
                return
            ended = state.add_ids(chunk.ids, chunk.log_probs, chunk.cum_log_prob, chunk.final)
        if ended:
            self.model.forget(self)
            if state.stop_early:
                self.model.engine.stop(self.engine_id)  # a stop string matched: the engine stops
        if ended or self.req.stream:
            outbox.post(self.reply)

    def on_error(self, message: str, code: str) -> None:
        with self._lock:
            failed = self.state.fail(error_response(self.model.pb, message, invalid=False, code=code),
                                     keep_text=self.req.stream)
        if failed:
            self.model.forget(self)
            self.model.outbox.post(self.reply)

    def cancel(self) -> None:
        """The client went away: send nothing more, stop the engine request."""
        with self._lock:
            abandoned = self.state.abandon()
        if abandoned:
            self.model.forget(self)
            self.model.engine.stop(self.engine_id)


class BlsModel:
    """The Triton edge of the BLS model; ``pb`` is ``triton_python_backend_utils``."""

    def __init__(self, pb, model_config, *, engine: EngineTransport | None = None):
        self.pb = pb
        is_decoupled = getattr(pb, "using_decoupled_model_transaction_policy", None)
        decoupled = True if is_decoupled is None else bool(is_decoupled(model_config))
        self.config = config = BlsConfig.from_model_config(model_config, decoupled=decoupled)
        self.settings = config.settings
        self.pre = Preprocessor(config.settings)
        self._runs: set[_Run] = set()
        self._runs_lock = threading.Lock()
        self.outbox = StreamOutbox(config.send_share, config.max_interval_s, lambda: len(self._runs),
                                   config.max_wait_gaps)
        self.engine = engine or H2EngineClient(config.engine_grpc_url, config.settings.engine_model,
                                               hook=self.outbox.on_reader)
        self._stopping = threading.Event()
        self._watch = None
        if config.cancel_poll_s:
            self._watch = threading.Thread(target=self._watch_cancellation, name="koserve-bls-watch", daemon=True)
            self._watch.start()

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
        # every send and is_cancelled() of this request goes through one lock (koserve.triton_models.guarded_sender)
        sender = GuardedSender(request.get_response_sender(), final)
        try:
            req = parse_generation_request(read_inputs(pb, request, INPUT_NAMES))
            if req.stream and not self.config.decoupled:
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
            tensors, outputs = engine_tensors(req, prepared, self.config.engine_streams)
            with self._runs_lock:
                self._runs.add(run)
            self.engine.submit(run.engine_id, tensors, outputs, run)
        except Exception as exc:  # noqa: BLE001 - one request's failure must not stop the model
            if run is not None:
                self.forget(run)
            code = exc.code if isinstance(exc, EngineError) else "UNAVAILABLE"
            sender.send(error_response(pb, f"tensorrt_llm_bls: {exc}", invalid=False, code=code), flags=final)

    def forget(self, run: _Run) -> None:
        with self._runs_lock:
            self._runs.discard(run)

    def _watch_cancellation(self) -> None:
        while not self._stopping.wait(self.config.cancel_poll_s):
            with self._runs_lock:
                runs = list(self._runs)
            for run in runs:
                try:
                    if not run.state.ended and run.sender.is_cancelled():  # False once the final response is sent
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
