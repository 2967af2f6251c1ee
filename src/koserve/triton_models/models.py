"""Base classes behind the thin ``model_repository/*/1/model.py`` adapters.

Each adapter subclasses one of these and sets ``pb = triton_python_backend_utils``; the logic lives in
:mod:`koserve.triton_models.preprocess`, :mod:`koserve.triton_models.postprocess` and :mod:`koserve.triton_models.bls`.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from koserve.errors import KoserveError
from koserve.triton_models.cancel_watch import CancelWatch
from koserve.triton_models.drain import DrainFlag, drain_response, refuse_decoupled
from koserve.triton_models.postprocess import Decoded, StreamRegistry, tokens_of
from koserve.triton_models.preprocess import Preprocessor
from koserve.triton_models.settings import ModelSettings
from koserve.triton_models.startsignal import StartReceiver, StartSender
from koserve.triton_models.triton_io import bytes_tensor, error_response, read_inputs

PREPROCESSING_INPUTS = Preprocessor.INPUT_TENSORS


class PreprocessingModel:
    pb = None

    def initialize(self, args):
        self.preprocessor = Preprocessor(ModelSettings.from_model_config(json.loads(args["model_config"])))
        self.start_sender = StartSender()
        self.drain = DrainFlag()

    def execute(self, requests):
        pb = self.pb
        if self.drain.draining():  # koserve serve is draining: no new ensemble request starts
            return [drain_response(pb) for _ in requests]
        responses = []
        for request in requests:
            try:
                request_id = request.request_id() or ""
                outputs, start = self.preprocessor.prepare(
                    read_inputs(pb, request, PREPROCESSING_INPUTS), request_id=request_id
                )
                # before the engine can answer: postprocessing starts a fresh stream for the id, or refuses it
                refusal = self.start_sender.started(start)
                if refusal is not None:
                    responses.append(error_response(pb, refusal))
                    continue
                responses.append(pb.InferenceResponse([pb.Tensor(k, v) for k, v in outputs.items()]))
            except (KoserveError, ValueError) as exc:
                responses.append(error_response(pb, str(exc)))
            except Exception as exc:  # noqa: BLE001 - answer, keep serving
                responses.append(error_response(pb, f"preprocessing: {type(exc).__name__}: {exc}", invalid=False))
        return responses

    def finalize(self):
        self.start_sender.close()


class PostprocessingModel:
    pb = None

    def initialize(self, args):
        settings = ModelSettings.from_model_config(json.loads(args["model_config"]))
        pre = Preprocessor(settings)
        self.registry = StreamRegistry(
            pre.tokenizer,
            pre.default_stop_words,
            idle_timeout_s=settings.stream_idle_timeout_s,
            max_streams=settings.max_streams,
        )
        try:
            self.start_receiver = StartReceiver(self.registry.start)
        except OSError as exc:  # another postprocessing of this server holds it: ids are then never reset
            logging.getLogger("koserve").warning("postprocessing: no request-start channel (%s)", exc)
            self.start_receiver = None
        self.cancel_watch = CancelWatch(self.pb)

    def execute(self, requests):
        """One response per request, in order. With dynamic batching (render option
        ``postprocessing_max_queue_delay_us``) one call carries engine responses of many streams, several of one
        stream in arrival order; they are decoded strictly in list order, so each request id's text stays in order."""
        pb = self.pb
        responses = []
        for request in requests:
            self.cancel_watch.see(request)  # a client that left the ensemble: stop the engine
            try:
                inputs = read_inputs(pb, request, ("TOKENS_BATCH", "SEQUENCE_LENGTH"))
                ids = tokens_of(inputs["TOKENS_BATCH"], inputs["SEQUENCE_LENGTH"])
                decoded = self.registry.decode_response(request.request_id(), ids)
                responses.append(pb.InferenceResponse(self.output_tensors(decoded)))
            except (KoserveError, ValueError) as exc:  # e.g. a token id outside the vocabulary: not the client's
                responses.append(error_response(pb, f"postprocessing: {exc}", invalid=False))
            except Exception as exc:  # noqa: BLE001
                responses.append(error_response(pb, f"postprocessing: {type(exc).__name__}: {exc}", invalid=False))
        return responses

    def output_tensors(self, decoded: Decoded) -> list:
        """``OUTPUT`` shaped ``[1]`` like NVIDIA's postprocessing (one string per batch item × beam), plus the token
        counts when the request asked (TensorRT-LLM 1.x ``return_num_input_tokens`` / ``return_num_output_tokens``)."""
        pb = self.pb
        tensors = [bytes_tensor(pb, "OUTPUT", decoded.text)]
        if decoded.num_input_tokens is not None:
            tensors.append(pb.Tensor("num_input_tokens", np.array([[decoded.num_input_tokens]], dtype=np.int32)))
        if decoded.num_output_tokens is not None:
            tensors.append(pb.Tensor("num_output_tokens", np.array([[decoded.num_output_tokens]], dtype=np.int32)))
        return tensors

    def finalize(self):
        self.cancel_watch.close()
        if self.start_receiver is not None:
            self.start_receiver.close()


class BlsTritonModel:
    pb = None

    def initialize(self, args):
        from koserve.triton_models.bls import BlsModel  # noqa: PLC0415

        self.model = BlsModel(self.pb, json.loads(args["model_config"]))
        self.drain = DrainFlag()

    def execute(self, requests):
        if self.drain.draining():  # koserve serve is draining: no new BLS request starts
            refuse_decoupled(self.pb, requests)
            return None
        self.model.execute(requests)
        return None

    def finalize(self):
        self.model.finalize()
